import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { CURL, haveCurl } from './helpers/system-tools.js'

const T1 = 'bodies-'.padEnd(40, 'b')
/** How long an answer given before its body was read may wait for the client to stop sending. */
const LINGER_MS = 5000
const MiB = 1024 * 1024

interface Trickle {
  socket: net.Socket
  answer(): string
  /** Milliseconds from the headers to the first byte of the answer; undefined while there is none. */
  answeredAfter(): number | undefined
  /** Milliseconds from the headers to the server closing the connection. */
  closedAfter: Promise<number>
}

/**
 * Sends `head` (request line and headers) and then the body one byte every `everyMs` (never, when
 * undefined, after a first byte), as an attacker holding a connection would.
 */
async function trickle(server: { host: string; port: number }, head: string, everyMs?: number): Promise<Trickle> {
  const socket = net.connect(server.port, server.host).on('error', () => {})
  await once(socket, 'connect')
  const started = Date.now()
  socket.write(`${head}\r\n\r\n"`)
  let answer = ''
  let answeredAfter: number | undefined
  socket.on('data', (chunk: Buffer) => {
    answer += chunk.toString('latin1')
    answeredAfter ??= Date.now() - started
  })
  const timer = everyMs === undefined ? undefined : setInterval(() => socket.destroyed || socket.write('x'), everyMs)
  const closedAfter = once(socket, 'close').then(() => {
    clearInterval(timer)
    return Date.now() - started
  })
  return { socket, answer: () => answer, answeredAfter: () => answeredAfter, closedAfter }
}

const connectionsOf = (server: net.Server) => new Promise<number>((resolve) => server.getConnections((_error, count) => resolve(count)))

/** Each request declares a 1 MiB JSON body, the shape the default parsers would have read and parsed. */
const REQUESTS: [what: string, head: string, status: number][] = [
  ['POST to no route', 'POST /nope HTTP/1.1', 404],
  ['POST /healthz (a public route, wrong method)', 'POST /healthz HTTP/1.1', 404],
  ['POST /files/… (a public route, wrong method)', 'POST /files/a/b.png HTTP/1.1', 404],
  ['PUT /v1/images with a valid key (wrong method)', `PUT /v1/images HTTP/1.1\r\nAuthorization: Bearer ${T1}`, 404],
  ['POST to no /v1 route without a key', 'POST /v1/nope HTTP/1.1', 401],
  ['GET /healthz with a body', 'GET /healthz HTTP/1.1', 400],
  ['DELETE /v1/images/… with a body', `DELETE /v1/images/a/b.png HTTP/1.1\r\nAuthorization: Bearer ${T1}`, 400],
]
const headOf = (requestLine: string) => `${requestLine}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${MiB}`

t.test('a body trickled where nothing reads it is answered at once, unread, and its connection closed', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, RATE_LIMIT_PER_MINUTE: '1000' })
  const server = await listen(app)
  // Three of each, in parallel, one byte every 100 ms: the client never stops sending.
  const trickles = await Promise.all(REQUESTS.flatMap(([, head]) => [1, 2, 3].map(() => trickle(server, headOf(head), 100))))
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const answered = trickles.filter((one) => (one.answeredAfter() ?? Infinity) < 1000).length
  t.comment(`${answered} of ${trickles.length} answered within 1 s; ${await connectionsOf(app.server)} connections open`)
  t.equal(answered, trickles.length, 'every one is answered within 1 s, long before its body could arrive')
  for (const [index, [what, , status]] of REQUESTS.entries()) {
    const answer = trickles[index * 3]!.answer()
    t.match(answer, new RegExp(`^HTTP/1.1 ${status} `), `${what}: ${status}`)
    t.match(answer, /\r\ncontent-type: application\/problem\+json/i, `${what}: problem+json`)
    t.match(answer, /\r\nconnection: close\r\n/i, `${what}: Connection: close`)
  }
  // The clients go on sending: the server hangs up on each once it has lingered, at most LINGER_MS.
  const closedAfter = await Promise.all(
    trickles.map((one) =>
      Promise.race([one.closedAfter, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), LINGER_MS + 2500))]),
    ),
  )
  t.comment(`closed by the server after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms`)
  t.ok(
    Math.max(...closedAfter) < LINGER_MS + 2500,
    `every connection is closed by the server within LINGER_MS (+2.5 s): ${Math.max(...closedAfter)} ms`,
  )
  t.equal(await connectionsOf(app.server), 0, 'no connection is left open')
  for (const one of trickles) one.socket.destroy()
})

t.test('a client that stops sending after the answer is disconnected within a second or two, not at REQUEST_TIMEOUT_MS', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}` })
  const server = await listen(app)
  // One byte of body, then nothing, as a client trickling one byte every 30 s would look.
  const trickles = await Promise.all(
    Array.from({ length: 20 }, (_, index) => trickle(server, headOf(REQUESTS[index % REQUESTS.length]![1]))),
  )
  const closedAfter = await Promise.all(
    trickles.map((one) => Promise.race([one.closedAfter, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), 4000))])),
  )
  const answered = trickles.filter((one) => one.answeredAfter() !== undefined).length
  t.comment(
    `${answered} of ${trickles.length} answered; closed after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms; ${await connectionsOf(app.server)} open`,
  )
  t.equal(answered, trickles.length, 'every one is answered')
  t.ok(Math.max(...closedAfter) < 3000, `and disconnected within 3 s of its last byte: ${Math.max(...closedAfter)} ms`)
  t.equal(await connectionsOf(app.server), 0, 'no connection is left open')
  for (const one of trickles) one.socket.destroy()
})

t.test('a body sent whole to no route is answered 404 unparsed, also when it is not JSON', async (t) => {
  const { app } = await buildTestApp(t)
  for (const [type, payload] of [
    ['application/json', '{"a":'],
    ['text/plain', 'x'.repeat(2 * MiB)],
    ['application/x-www-form-urlencoded', 'a=b'],
  ]) {
    const response = await app.inject({ method: 'POST', url: '/nope', headers: { 'content-type': type }, payload })
    t.equal(response.statusCode, 404, `${type}: 404, not a parse error or 413`)
    t.equal(response.json().code, 'not_found')
    t.match(response.headers['content-type'], /^application\/problem\+json/)
  }
  const empty = await app.inject({
    method: 'POST',
    url: '/healthz',
    headers: { 'content-type': 'application/json', 'content-length': '0' },
  })
  t.equal(empty.statusCode, 404, 'an empty body with a Content-Type is no body: 404, not 415')
})

t.test('the import route parses JSON only, within its own limit', async (t) => {
  const { app } = await buildTestApp(t)
  const text = await app.inject({
    method: 'POST',
    url: '/v1/images/import',
    headers: { 'content-type': 'text/plain' },
    payload: '{"source_url":"https://cdn.discordapp.com/a.png"}',
  })
  t.equal(text.statusCode, 415, 'text/plain is no import request')
  t.equal(text.json().code, 'unsupported_media_type')
  const large = await app.inject({
    method: 'POST',
    url: '/v1/images/import',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify({ source_url: 'x'.repeat(20_000) }),
  })
  t.equal(large.statusCode, 413, 'a request over 16 KiB is refused')
  t.equal(large.json().code, 'image_too_large')
})

/**
 * Sends a request's headers with `Expect: 100-continue` and waits, as curl does, for the first answer:
 * `100 Continue` (then `send` the body and read the final answer) or a final one.
 */
async function expectingContinue(server: { host: string; port: number }, head: string) {
  const socket = net.connect(server.port, server.host).on('error', () => {})
  await once(socket, 'connect')
  let received = ''
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')))
  const answerAt = (index: number) =>
    new Promise<string>((resolve) => {
      const check = () => {
        const heads = received.split('\r\n\r\n')
        if (heads.length > index + 1) resolve(heads[index]!.split('\r\n')[0]!)
        else socket.once('data', check)
      }
      check()
    })
  socket.write(`${head}\r\nHost: x\r\nExpect: 100-continue\r\n\r\n`)
  const first = await Promise.race([answerAt(0), new Promise<string>((resolve) => setTimeout(() => resolve('(nothing within 2 s)'), 2000))])
  return {
    first,
    /** Sends the body and resolves with the final answer's status line and everything received. */
    async send(body: Buffer) {
      socket.write(body)
      await answerAt(1)
      await new Promise((resolve) => setTimeout(resolve, 50))
      return received
    },
    close: () => socket.destroy(),
  }
}

t.test('Expect: 100-continue is answered with the refusal when the headers decide it, and 100 only when the body is read', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, MAX_UPLOAD_BYTES: String(4 * MiB) })
  const server = await listen(app)
  const key = `Authorization: Bearer ${T1}`
  const refusals: [string, string, RegExp][] = [
    ['no key', 'POST /v1/images HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000', /^HTTP\/1.1 401 /],
    [
      'a Content-Length over MAX_UPLOAD_BYTES',
      `POST /v1/images HTTP/1.1\r\n${key}\r\nContent-Type: image/png\r\nContent-Length: ${4 * MiB + 1}`,
      /^HTTP\/1.1 413 /,
    ],
    [
      'an import that is not JSON',
      `POST /v1/images/import HTTP/1.1\r\n${key}\r\nContent-Type: text/plain\r\nContent-Length: 100`,
      /^HTTP\/1.1 415 /,
    ],
    [
      'an import over its 16 KiB',
      `POST /v1/images/import HTTP/1.1\r\n${key}\r\nContent-Type: application/json\r\nContent-Length: 20000`,
      /^HTTP\/1.1 413 /,
    ],
    ['a method no route has', `POST /healthz HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000`, /^HTTP\/1.1 404 /],
  ]
  for (const [what, head, expected] of refusals) {
    const request = await expectingContinue(server, head)
    t.match(request.first, expected, `${what}: first answer ${request.first}`)
    request.close()
  }

  const image = pngOfSize(300_000)
  const raw = await expectingContinue(
    server,
    `POST /v1/images?filename=p.png HTTP/1.1\r\n${key}\r\nContent-Type: image/png\r\nContent-Length: ${image.length}`,
  )
  t.equal(raw.first, 'HTTP/1.1 100 Continue', 'an upload that passes every check on its headers gets 100 Continue')
  const rawAnswer = await raw.send(image)
  t.match(rawAnswer, /\r\n\r\nHTTP\/1.1 201 /, 'then its 201')
  raw.close()
  const stored = JSON.parse(rawAnswer.slice(rawAnswer.lastIndexOf('\r\n\r\n') + 4)) as { key: string }
  const readBack = await app.inject(`/files/${stored.key}`)
  t.equal(sha256(readBack.rawPayload), sha256(image), 'stored byte-exact')

  const form = multipartBody([{ name: 'file', filename: 'p.png', data: image }])
  const multipart = await expectingContinue(
    server,
    `POST /v1/images HTTP/1.1\r\n${key}\r\nContent-Type: ${form.headers['content-type']}\r\nContent-Length: ${form.payload.length}`,
  )
  t.equal(multipart.first, 'HTTP/1.1 100 Continue', 'a form too')
  t.match(await multipart.send(form.payload), /\r\n\r\nHTTP\/1.1 201 /)
  multipart.close()
})

t.test(
  'curl, which sends Expect: 100-continue with bodies over 1 MiB, gets a refusal at once and 100 Continue for an upload it may send',
  async (t) => {
    if (!haveCurl(t)) return
    const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}` })
    const server = await listen(app)
    const file = path.join(t.testdir(), 'portrait.png')
    const image = pngOfSize(2 * MiB)
    await writeFile(file, image)
    const curl = async (...headers: string[]) => {
      const started = Date.now()
      const args = ['-sv', '--data-binary', `@${file}`, '-H', 'Content-Type: image/png', ...headers.flatMap((header) => ['-H', header])]
      const { stdout, stderr } = await promisify(execFile)(CURL, [...args, `http://${server.host}:${server.port}/v1/images`])
      return { stdout, stderr, elapsed: Date.now() - started }
    }
    const refused = await curl()
    t.comment(`without a key: answered in ${refused.elapsed} ms`)
    t.match(refused.stderr, /> Expect: 100-continue/, 'curl asked for 100 Continue')
    t.notMatch(refused.stderr, /< HTTP\/1.1 100 Continue/, 'and did not get it')
    t.match(refused.stderr, /< HTTP\/1.1 401 /, 'it got the 401')
    t.notMatch(
      refused.stderr,
      /Done waiting for 100-continue/,
      "before curl's 1 s wait for 100 ran out (it would then send the body anyway)",
    )

    const uploaded = await curl(`Authorization: Bearer ${T1}`)
    t.match(uploaded.stderr, /< HTTP\/1.1 100 Continue/, 'with a key: 100 Continue')
    t.match(uploaded.stderr, /< HTTP\/1.1 201 /, 'then 201')
    const { key, sha256: reported } = JSON.parse(uploaded.stdout) as { key: string; sha256: string }
    t.equal(reported, sha256(image))
    t.equal(sha256((await app.inject(`/files/${key}`)).rawPayload), sha256(image), 'stored byte-exact')
  },
)
