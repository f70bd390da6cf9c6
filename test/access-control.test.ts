import http from 'node:http'
import net from 'node:net'
import { Writable } from 'node:stream'
import t from 'tap'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { png, pngHeaderOnly } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

const T1 = 'one-'.padEnd(40, '1')
const T2 = 'two-'.padEnd(40, '2')
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
/** A multipart upload with the token in the same header set as the body's boundary. */
function authedUpload(token: string | undefined, data = png()) {
  const { payload, headers } = multipartBody([{ name: 'file', filename: 'p.png', data }])
  return { method: 'POST' as const, url: '/v1/images', payload, headers: { ...headers, ...(token && bearer(token)) } }
}

t.test('API keys: several live at once, rotation by restart, 401 with WWW-Authenticate', async (t) => {
  const before = await buildTestApp(t, { API_KEYS: `bot:${T1},ops:${T2}` })
  for (const token of [T1, T2]) {
    const response = await before.app.inject(authedUpload(token))
    t.equal(response.statusCode, 201, 'each live key uploads')
    const { key } = response.json()
    t.equal((await before.app.inject({ url: `/v1/images/${key}`, headers: bearer(token) })).statusCode, 200)
  }

  const after = await buildTestApp(t, { API_KEYS: `ops:${T2}` }) // restarted with bot's key removed
  t.equal((await after.app.inject(authedUpload(T2))).statusCode, 201, 'the remaining key still works')
  const refusals = {
    'the rotated-out token': authedUpload(T1),
    'no token': authedUpload(undefined),
    'a wrong token of the right length': authedUpload('x'.repeat(T2.length)),
    'the right token in another scheme': {
      ...authedUpload(undefined),
      headers: { ...authedUpload(undefined).headers, authorization: `Basic ${T2}` },
    },
  }
  for (const [what, request] of Object.entries(refusals)) {
    const response = await after.app.inject(request)
    t.equal(response.statusCode, 401, what)
    t.match(response.headers['content-type'], /^application\/problem\+json/)
    t.match(response.headers['www-authenticate'], /^Bearer/)
    t.equal(response.json().code, 'unauthorized')
  }
  for (const [method, url] of [
    ['GET', '/v1/images/a/b.png'],
    ['HEAD', '/v1/images/a/b.png'],
    ['DELETE', '/v1/images/a/b.png'],
  ] as const) {
    t.equal((await after.app.inject({ method, url })).statusCode, 401, `${method} needs a key`)
  }
  const { key } = (await after.app.inject(authedUpload(T2))).json()
  for (const url of ['/healthz', '/readyz', '/openapi.yaml', `/files/${key}`]) {
    t.equal((await after.app.inject(url)).statusCode, 200, `${url} is public`)
  }
})

t.test('the log names the key and never holds the token', async (t) => {
  let logged = ''
  const stream = new Writable({
    write(chunk, _encoding, done) {
      logged += chunk
      done()
    },
  })
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1},ops:${T2}` }, { logger: { level: 'info', stream } })
  const stored = await app.inject(authedUpload(T1))
  await app.inject({ url: `/v1/images/${stored.json().key}`, headers: bearer(T1) })
  await app.inject({ method: 'DELETE', url: `/v1/images/${stored.json().key}`, headers: bearer(T2) })
  await app.inject(authedUpload('z'.repeat(40)))
  t.ok(logged.length > 0, 'something was logged')
  t.notMatch(logged, T1, 'the first token never appears')
  t.notMatch(logged, T2, 'the second token never appears')
  t.notMatch(logged, 'z'.repeat(40), 'a wrong token never appears either')
  const lines = logged
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>)
  t.ok(
    lines.some((line) => line.apiKey === 'bot' && line.msg === 'request' && line.route === '/v1/images' && line.sha256 !== undefined),
    "the upload's line, which names what it stored, names the key",
  )
  t.ok(
    lines.some((line) => line.apiKey === 'bot' && line.msg === 'request'),
    'the request line names the key',
  )
  t.ok(
    lines.some((line) => line.apiKey === 'ops'),
    'the other key is named on its requests',
  )
})

t.test('rate limit per key: 429 rate_limited with Retry-After, other keys and public routes unaffected', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1},ops:${T2}`, RATE_LIMIT_PER_MINUTE: '3' })
  for (let i = 0; i < 3; i++) t.equal((await app.inject(authedUpload(T1))).statusCode, 201)
  const limited = await app.inject(authedUpload(T1))
  t.equal(limited.statusCode, 429)
  t.match(limited.headers['content-type'], /^application\/problem\+json/)
  t.equal(limited.json().code, 'rate_limited')
  t.ok(Number(limited.headers['retry-after']) > 0, `Retry-After: ${limited.headers['retry-after']}`)
  t.equal((await app.inject(authedUpload(T2))).statusCode, 201, 'another key is served right after')
  t.equal((await app.inject('/healthz')).statusCode, 200, 'public routes are not counted')

  const guessing = await buildTestApp(t, { API_KEYS: `bot:${T1}`, RATE_LIMIT_PER_MINUTE: '3' })
  const guesses = []
  for (let i = 0; i < 4; i++) guesses.push((await guessing.app.inject(authedUpload(`guess-${i}`.padEnd(40, 'g')))).statusCode)
  t.same(guesses, [401, 401, 401, 429], 'guessing tokens is throttled too, per address')
})

t.test('an encoded path is the same route, and needs the same key', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { API_KEYS: `bot:${T1}` })
  const server = await listen(app)
  for (const path of ['/%761/images', '/v%31/images', '/%76%31/%69mages']) {
    const { payload, headers } = multipartBody([{ name: 'file', filename: 'p.png', data: png() }])
    const response = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const request = http.request(
        { ...server, method: 'POST', path, headers: { ...headers, 'content-length': payload.length }, agent: false },
        (res) => {
          let body = ''
          res.on('data', (chunk: Buffer) => (body += chunk))
          res.on('end', () => resolve({ status: res.statusCode!, body }))
        },
      )
      request.on('error', reject)
      request.end(payload)
    })
    t.equal(response.status, 401, `POST ${path} without a key`)
    t.equal(JSON.parse(response.body).code, 'unauthorized')
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

/** Starts a raw upload that sends its headers and a first piece of body, then waits. */
async function stalledUpload(server: { host: string; port: number }, token: string, body: Buffer, sent: number) {
  const socket = net.connect(server.port, server.host).on('error', () => {}) // the server may hang up on it
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(
    `POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: image/png\r\nContent-Length: ${body.length}\r\n\r\n`,
  )
  socket.write(body.subarray(0, sent))
  let answer = ''
  socket.on('data', (chunk: Buffer) => (answer += chunk))
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  return { socket, answer: () => answer, closed }
}

t.test('concurrency guard without a queue: 503 server_busy with Retry-After at once, normal service after', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_MAX: '0' })
  const server = await listen(app)
  const body = png(64, 64)
  const first = await stalledUpload(server, T1, body, 20)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const started = Date.now()
  const busy = await app.inject(authedUpload(T1))
  t.equal(busy.statusCode, 503)
  t.equal(busy.json().code, 'server_busy')
  t.ok(Number(busy.headers['retry-after']) > 0, 'Retry-After')
  t.ok(Date.now() - started < 1000, 'refused at once, not queued')
  first.socket.write(body.subarray(20))
  await new Promise<void>((resolve) => first.socket.on('data', () => first.answer().includes('\r\n\r\n{') && resolve()))
  t.match(first.answer(), /^HTTP\/1.1 201/, 'the upload in flight completes')
  first.socket.destroy()
  t.equal((await app.inject(authedUpload(T1))).statusCode, 201, 'and the next one is served')
})

t.test('a 50,000 × 50,000 PNG header is 422 image_too_many_pixels and nothing is stored', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const bomb = pngHeaderOnly(50_000, 50_000)
  t.ok(bomb.length < 100, `${bomb.length} bytes`)
  const response = await app.inject(authedUpload(undefined, bomb))
  t.equal(response.statusCode, 422)
  t.equal(response.json().code, 'image_too_many_pixels')
  t.same(await storedFiles(dataDir), [])
  const limited = await buildTestApp(t, { MAX_IMAGE_PIXELS: '100' })
  t.equal((await limited.app.inject(authedUpload(undefined, png(10, 10)))).statusCode, 201, 'exactly the limit is accepted')
  t.equal((await limited.app.inject(authedUpload(undefined, png(11, 10)))).statusCode, 422)
})

t.test('slow clients are cut off within the documented timeouts, and what they held is released', async (t) => {
  const { app } = await buildTestApp(t, {
    API_KEYS: `bot:${T1}`,
    MAX_CONCURRENT_UPLOADS: '1',
    REQUEST_TIMEOUT_MS: '2000',
    HEADERS_TIMEOUT_MS: '1000',
    IDLE_TIMEOUT_MS: '1500',
  })
  const server = await listen(app)
  const connections = () => new Promise<number>((resolve) => app.server.getConnections((_error, count) => resolve(count)))

  const body = png(64, 64)
  const trickle = await stalledUpload(server, T1, body, 1)
  const started = Date.now()
  let sent = 1
  const timer = setInterval(() => {
    if (sent < body.length && !trickle.socket.destroyed) trickle.socket.write(body.subarray(sent, ++sent))
  }, 1000)
  await trickle.closed
  clearInterval(timer)
  const elapsed = Date.now() - started
  t.ok(elapsed < 2000 + 2500, `a body at 1 byte/s is cut off after ${elapsed} ms (REQUEST_TIMEOUT_MS=2000)`)
  t.ok(sent < body.length, 'before it could finish')

  const headers = net.connect(server.port, server.host).on('error', () => {}) // the server hangs up on it
  const headersStarted = Date.now()
  headers.write('POST /v1/images HTTP/1.1\r\nHost: x\r\n')
  const headerTimer = setInterval(() => headers.destroyed || headers.write('X'), 300)
  await new Promise((resolve) => headers.once('close', resolve))
  clearInterval(headerTimer)
  t.ok(Date.now() - headersStarted < 1000 + 2500, `headers sent slowly are cut off after ${Date.now() - headersStarted} ms`)

  // Read what comes: when the headers timeout fires before the idle one, the server answers 400 and then
  // closes, and a socket that never reads that answer never sees the close (Node 24 often fires it first).
  const idle = net.connect(server.port, server.host).resume()
  const idleStarted = Date.now()
  await new Promise((resolve) => idle.once('close', resolve))
  t.ok(Date.now() - idleStarted < 1500 + 2500, `an idle connection is closed after ${Date.now() - idleStarted} ms`)

  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(await connections(), 0, 'no connection is left open')
  const next = await app.inject(authedUpload(T1))
  t.equal(next.statusCode, 201, 'the upload slot the slow client held is free again')
})

t.test('security headers on every response; CORS only for the listed origins', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, CORS_ORIGINS: 'https://app.example.com' })
  const { key } = (await app.inject(authedUpload(T1))).json()
  for (const request of [{ url: '/healthz' }, { url: '/nope' }, { url: '/v1/images/x.png' }, { url: `/files/${key}` }, authedUpload(T1)]) {
    const response = await app.inject(request)
    t.equal(response.headers['x-content-type-options'], 'nosniff', `${request.url} (${response.statusCode})`)
    t.match(response.headers['content-security-policy'], /default-src 'none'/)
    t.equal(response.headers['x-frame-options'], 'DENY')
  }
  const preflight = (origin: string) =>
    app.inject({
      method: 'OPTIONS',
      url: '/v1/images',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
    })
  const allowed = await preflight('https://app.example.com')
  t.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com', 'a listed origin is allowed')
  t.notOk((await preflight('https://evil.example')).headers['access-control-allow-origin'], 'another origin is not')
  const closed = await buildTestApp(t)
  t.notOk(
    (await closed.app.inject({ url: '/healthz', headers: { origin: 'https://app.example.com' } })).headers['access-control-allow-origin'],
    'no CORS by default',
  )
})

t.test('pixel bombs that fool a lenient header reader are still 422', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const sof = (width: number, height: number) =>
    Buffer.from([0xc0, 0x00, 0x11, 0x08, height >> 8, height & 0xff, width >> 8, width & 0xff, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
  const app0 = Buffer.from([0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00])
  // A fill byte before the real frame header (60000 × 60000), and a fake 1 × 1 one hidden in an APP15
  // segment that a resynchronising reader lands on.
  const fake = Buffer.concat([Buffer.from([0xff, 0xef, 0xc0, 0x02]), Buffer.alloc(0xc000 - 2), Buffer.from([0xff]), sof(1, 1)])
  const jpegBomb = Buffer.concat([
    Buffer.from([0xff, 0xd8]),
    app0,
    Buffer.from([0xff, 0xff]),
    sof(60_000, 60_000),
    fake,
    Buffer.from([0xff, 0xd9]),
  ])
  // A GIF whose screen says 1 × 1 and whose first frame says 60000 × 60000.
  const gifBomb = Buffer.concat([
    Buffer.from('GIF89a', 'ascii'),
    Buffer.from([1, 0, 1, 0, 0, 0, 0]),
    Buffer.from([0x2c, 0, 0, 0, 0, 0x60, 0xea, 0x60, 0xea, 0]),
    Buffer.from([0x02, 0x02, 0x44, 0x01, 0x00, 0x3b]),
  ])
  for (const [what, bomb] of [
    ['JPEG', jpegBomb],
    ['GIF', gifBomb],
  ] as const) {
    const response = await app.inject(authedUpload(undefined, bomb))
    t.equal(response.statusCode, 422, `${what}: 422`)
    t.equal(response.json().code, 'image_too_many_pixels')
  }
  const garbage = Buffer.concat([Buffer.from([0xff, 0xd8]), app0, Buffer.from('junk'), Buffer.from([0xff]), sof(10, 10)])
  t.equal((await app.inject(authedUpload(undefined, garbage))).statusCode, 415, 'bytes between JPEG segments are refused, not skipped')
  t.same(await storedFiles(dataDir), [])
})

t.test('a body where none is read is refused at once; idle keep-alive connections close', async (t) => {
  const { app } = await buildTestApp(t, { IDLE_TIMEOUT_MS: '1000' })
  const server = await listen(app)
  const socket = net.connect(server.port, server.host).on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  const started = Date.now()
  socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx')
  let answer = ''
  socket.on('data', (chunk: Buffer) => (answer += chunk))
  await new Promise((resolve) => socket.once('close', resolve))
  t.match(answer, /^HTTP\/1.1 400/, 'a GET with a body is refused')
  t.match(answer, /"code":"invalid_request"/)
  t.ok(Date.now() - started < 7000, `and its connection closed after ${Date.now() - started} ms, not at REQUEST_TIMEOUT_MS`)

  const idle = net.connect(server.port, server.host).on('error', () => {})
  await new Promise((resolve) => idle.once('connect', resolve))
  idle.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
  idle.resume() // read the answer, or the close behind it is never seen
  const idleStarted = Date.now()
  await new Promise((resolve) => idle.once('close', resolve))
  t.ok(
    Date.now() - idleStarted < 1000 + 2500,
    `a kept-alive connection left idle closes after ${Date.now() - idleStarted} ms (IDLE_TIMEOUT_MS=1000)`,
  )
})

t.test('guessing tokens on paths that match no route is throttled too', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `bot:${T1}`, RATE_LIMIT_PER_MINUTE: '3' })
  const statuses = []
  for (let i = 0; i < 4; i++)
    statuses.push((await app.inject({ url: '/v1/nope', headers: bearer(`guess-${i}`.padEnd(40, 'g')) })).statusCode)
  t.same(statuses, [401, 401, 401, 429])
  t.equal((await app.inject({ url: '/v1/nope', headers: bearer(T1) })).statusCode, 404, 'a valid key gets the 404')
})
