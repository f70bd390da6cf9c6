import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'

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
  const closedAfter = await Promise.all(trickles.map((one) => Promise.race([one.closedAfter, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), LINGER_MS + 2500))])))
  t.comment(`closed by the server after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms`)
  t.ok(Math.max(...closedAfter) < LINGER_MS + 2500, `every connection is closed by the server within LINGER_MS (+2.5 s): ${Math.max(...closedAfter)} ms`)
  t.equal(await connectionsOf(app.server), 0, 'no connection is left open')
  for (const one of trickles) one.socket.destroy()
})

t.test('a client that stops sending after the answer is disconnected within a second or two, not at REQUEST_TIMEOUT_MS', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}` })
  const server = await listen(app)
  // One byte of body, then nothing, as a client trickling one byte every 30 s would look.
  const trickles = await Promise.all(Array.from({ length: 20 }, (_, index) => trickle(server, headOf(REQUESTS[index % REQUESTS.length]![1]))))
  const closedAfter = await Promise.all(trickles.map((one) => Promise.race([one.closedAfter, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), 4000))])))
  const answered = trickles.filter((one) => one.answeredAfter() !== undefined).length
  t.comment(`${answered} of ${trickles.length} answered; closed after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms; ${await connectionsOf(app.server)} open`)
  t.equal(answered, trickles.length, 'every one is answered')
  t.ok(Math.max(...closedAfter) < 3000, `and disconnected within 3 s of its last byte: ${Math.max(...closedAfter)} ms`)
  t.equal(await connectionsOf(app.server), 0, 'no connection is left open')
  for (const one of trickles) one.socket.destroy()
})

t.test('a body sent whole to no route is answered 404 unparsed, also when it is not JSON', async (t) => {
  const { app } = await buildTestApp(t)
  for (const [type, payload] of [['application/json', '{"a":'], ['text/plain', 'x'.repeat(2 * MiB)], ['application/x-www-form-urlencoded', 'a=b']]) {
    const response = await app.inject({ method: 'POST', url: '/nope', headers: { 'content-type': type }, payload })
    t.equal(response.statusCode, 404, `${type}: 404, not a parse error or 413`)
    t.equal(response.json().code, 'not_found')
    t.match(response.headers['content-type'], /^application\/problem\+json/)
  }
  const empty = await app.inject({ method: 'POST', url: '/healthz', headers: { 'content-type': 'application/json', 'content-length': '0' } })
  t.equal(empty.statusCode, 404, 'an empty body with a Content-Type is no body: 404, not 415')
})

t.test('the import route parses JSON only, within its own limit', async (t) => {
  const { app } = await buildTestApp(t)
  const text = await app.inject({ method: 'POST', url: '/v1/images/import', headers: { 'content-type': 'text/plain' }, payload: '{"source_url":"https://cdn.discordapp.com/a.png"}' })
  t.equal(text.statusCode, 415, 'text/plain is no import request')
  t.equal(text.json().code, 'unsupported_media_type')
  const large = await app.inject({ method: 'POST', url: '/v1/images/import', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ source_url: 'x'.repeat(20_000) }) })
  t.equal(large.statusCode, 413, 'a request over 16 KiB is refused')
  t.equal(large.json().code, 'image_too_large')
})

