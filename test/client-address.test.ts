import { readFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import { parse as parseToml } from 'smol-toml'
import t, { type Test } from 'tap'
import { buildTestApp } from './helpers/app.js'

const T1 = 'address-'.padEnd(40, 'a')
const guess = (i: number) => ({ authorization: `Bearer ${`guess-${i}`.padEnd(40, 'g')}` })
/** The address Fly's proxy connects from, inside the Machine's network. */
const FLY_PROXY = '172.16.3.2'
/** The attacker's real address, and the app's own address Fly puts rightmost in X-Forwarded-For. */
const CLIENT = '203.0.113.7'
const FLY_EDGE = '198.51.100.1'

/** A request as Fly's proxy forwards it: the client's own X-Forwarded-For kept on the left, then Fly's entries. */
const throughFly = (forged: string) => ({
  remoteAddress: FLY_PROXY,
  headers: { 'x-forwarded-for': `${forged}, ${CLIENT}, ${FLY_EDGE}`, 'fly-client-ip': CLIENT },
})

const flyToml = parseToml(await readFile(new URL('../fly.toml', import.meta.url), 'utf8')) as { env: Record<string, string> }

t.test(
  'behind Fly, as fly.toml configures it, rotating the leftmost X-Forwarded-For does not escape the per-address throttle',
  async (t) => {
    const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, RATE_LIMIT_PER_MINUTE: '3', TRUST_PROXY: flyToml.env.TRUST_PROXY })
    const statuses = []
    for (let i = 0; i < 6; i++) {
      const request = throughFly(`10.0.${i}.${i + 1}`)
      statuses.push(
        (
          await app.inject({
            url: '/v1/images/a/b.png',
            remoteAddress: request.remoteAddress,
            headers: { ...request.headers, ...guess(i) },
          })
        ).statusCode,
      )
    }
    t.comment(`TRUST_PROXY=${flyToml.env.TRUST_PROXY}: ${statuses.join(', ')}`)
    t.same(statuses, [401, 401, 401, 429, 429, 429], 'the fourth guess from one client is throttled, whatever it writes on the left')
    const other = {
      remoteAddress: FLY_PROXY,
      headers: { 'x-forwarded-for': '203.0.113.99, 198.51.100.1', 'fly-client-ip': '203.0.113.99', ...guess(9) },
    }
    t.equal((await app.inject({ url: '/v1/images/a/b.png', ...other })).statusCode, 401, 'another client has a budget of its own')
  },
)

/** The clientAddress each request's log line carries, for requests as Fly would forward them. */
async function loggedAddresses(t: Test, trustProxy: string, requests: { remoteAddress: string; headers: Record<string, string> }[]) {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
      done()
    },
  })
  const { app } = await buildTestApp(t, { TRUST_PROXY: trustProxy }, { logger: { level: 'info', stream } })
  for (const request of requests) await app.inject({ url: '/nope', ...request })
  return lines.filter((line) => line.msg === 'request').map((line) => line.clientAddress)
}

t.test(
  'TRUST_PROXY says whose word the address is: the connection, Fly-Client-IP, or the n-th X-Forwarded-For entry from the right',
  async (t) => {
    const forged = throughFly('10.9.9.9')
    const direct = { remoteAddress: '192.0.2.50', headers: { 'x-forwarded-for': '10.9.9.9', 'fly-client-ip': '10.8.8.8' } }
    const malformed = { remoteAddress: FLY_PROXY, headers: { 'x-forwarded-for': 'not-an-address, also-not', 'fly-client-ip': 'nope' } }
    const bare = { remoteAddress: FLY_PROXY, headers: {} }
    t.same(await loggedAddresses(t, 'false', [forged, direct]), [FLY_PROXY, '192.0.2.50'], 'false: the connection, headers ignored')
    t.same(
      await loggedAddresses(t, 'fly', [forged, malformed, bare]),
      [CLIENT, FLY_PROXY, FLY_PROXY],
      'fly: Fly-Client-IP; without a usable one (a health check), the connection',
    )
    t.same(
      await loggedAddresses(t, '2', [forged, malformed, bare]),
      [CLIENT, FLY_PROXY, FLY_PROXY],
      '2: the second entry from the right; too few or unusable entries, the connection',
    )
    t.same(await loggedAddresses(t, '1', [forged]), [FLY_EDGE], '1: the rightmost entry')
  },
)
