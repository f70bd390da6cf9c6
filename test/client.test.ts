import { once } from 'node:events'
import net from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { ImageServiceClient, ImageServiceError, ImageServiceUnreachableError } from '../src/client.js'
import { buildTestApp, gauge } from './helpers/app.js'
import { buffersKeptFromNow } from './helpers/gc.js'
import { closedPort, listen, redirectingServer, silentServer } from './helpers/http.js'
import { pngOfSize, pngStream, sha256 } from './helpers/images.js'
import { LOCAL_SOURCE_ENV, spyNetwork, startSource } from './helpers/import.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { until } from './helpers/wait.js'

// The service's own TypeScript client (src/client.ts) against the app on a loopback port, storing on
// s3rver through the R2 driver; every stored upload is read back from s3rver and its SHA-256 compared.

const TOKEN = 'client-test-token-0123456789abcdef0123'
const SERVICE_FALLBACK = 'https://cdn.example.test/service-default.png'
const CLIENT_FALLBACK = 'https://cdn.example.test/client-default.png'
const MiB = 1024 * 1024
const CHARACTER = 'Thorgar Ø 永久'

const s3 = await startS3()
t.teardown(() => s3.stop())

const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `bot:${TOKEN}`, DEFAULT_PORTRAIT_URL: SERVICE_FALLBACK })
const { port } = await listen(app)
const baseUrl = `http://127.0.0.1:${port}`
const client = new ImageServiceClient({ baseUrl, apiKey: TOKEN, timeoutMs: 10_000, defaultFallbackUrl: CLIENT_FALLBACK })

/** The error a call rejects with, or a failed assertion when it resolves. */
async function rejection(t: Test, call: Promise<unknown>): Promise<unknown> {
  try {
    await call
  } catch (error) {
    return error
  }
  t.fail('the call was expected to fail')
  return undefined
}

t.test('upload (multipart), metadata and delete', async (t) => {
  const data = pngOfSize(500_000, 21)
  const image = await client.upload(data, 'Thorgar Ø portrait.png', {
    context: 'portraits',
    metadata: { character_name: CHARACTER, uploader_id: '1234567890' },
  })
  t.match(image, {
    size: data.length,
    filename: 'Thorgar Ø portrait.png',
    content_type: 'image/png',
    width: 16,
    height: 16,
    sha256: sha256(data),
  })
  t.match(image.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{20}_Thorgar___portrait\.png$/)
  t.equal(image.url, `https://images.example.test/${image.key}`)
  t.equal(await s3.sha256Of(image.key), sha256(data), 'the stored bytes are the bytes sent')

  const described = await client.metadata(image.key)
  t.match(described, { key: image.key, url: image.url, size: data.length, content_type: 'image/png' })
  t.match(described.metadata, {
    character_name: CHARACTER,
    uploader_id: '1234567890',
    filename: 'Thorgar Ø portrait.png',
    sha256: sha256(data),
  })
  t.ok(Date.parse(described.last_modified), 'last_modified is a date')

  t.equal(await client.delete(image.key), undefined)
  t.notOk((await s3.keys()).includes(image.key), 'gone from the backend')
  const missing = await rejection(t, client.metadata(image.key))
  t.ok(missing instanceof ImageServiceError)
  t.match(missing, { status: 404, code: 'not_found', requestId: /\S/, fallbackUrl: undefined })
  await client.delete(image.key) // deleting again succeeds
})

t.test('raw uploads: bytes with metadata in headers, and a stream never held whole', async (t) => {
  const data = pngOfSize(2048, 22)
  const raw = await client.upload(data, 'raw.png', { encoding: 'raw', context: 'portraits', metadata: { character_name: CHARACTER } })
  t.match(raw, { filename: 'raw.png', size: data.length, sha256: sha256(data), key: /^portraits\/.*_raw\.png$/ })
  t.equal(await s3.sha256Of(raw.key), sha256(data))
  t.equal((await client.metadata(raw.key)).metadata.character_name, CHARACTER, 'percent-encoded X-Meta-* headers round-trip')

  // 6 MiB of unknown length: the service spools it, then stores it in one PutObject.
  const streamed = pngStream(6 * MiB)
  const image = await client.upload(Readable.from(streamed.stream), 'big.png')
  const sent = streamed.sha256()
  t.match(image, { size: 6 * MiB, key: /^general\/.*_big\.png$/ })
  t.equal(image.sha256, sent, 'the 201 hash is the hash of the streamed bytes')
  t.equal(await s3.sha256Of(image.key), sent)
})

t.test('a stream is sent as it is read: the client keeps no copy of what it has sent', async (t) => {
  // fetch by default keeps a copy of every request body to follow a redirect with (it tees the stream):
  // a stream would end up held whole, in the caller's process.
  const size = 32 * MiB
  const streamed = pngStream(size, MiB)
  let keptNearTheEnd = Number.NaN
  async function* watched() {
    const buffersKept = buffersKeptFromNow()
    let sent = 0
    for await (const chunk of streamed.stream) {
      if (sent + chunk.length === size) keptNearTheEnd = buffersKept()
      sent += chunk.length
      yield chunk
    }
  }
  const image = await client.upload(watched(), 'held.png')
  t.equal(await s3.sha256Of(image.key), streamed.sha256(), 'stored byte-exact')
  t.ok(
    keptNearTheEnd < 8 * MiB,
    `${(keptNearTheEnd / MiB).toFixed(1)} MiB of buffers reachable before the last of ${size / MiB} MiB is sent (< 8 MiB)`,
  )
})

t.test('a redirect is reported, not followed: the service answers at its own address', async (t) => {
  // Followed, a 301 or 302 would turn the upload into a GET of another URL, and a 307 would send the body again.
  const before = await s3.keys()
  const redirected = new ImageServiceClient({ baseUrl: await redirectingServer(t, baseUrl), apiKey: TOKEN })
  const refused = await rejection(t, redirected.upload(pngOfSize(2048, 25), 'moved.png'))
  t.ok(refused instanceof ImageServiceUnreachableError)
  t.match(refused, { message: /answered with a redirect, which the client does not follow/ })
  t.same(await s3.keys(), before, 'nothing stored')
})

t.test('problems become ImageServiceError with the contract code', async (t) => {
  const refused = await rejection(t, client.upload(Buffer.from('just some text, not an image'), 'notes.png'))
  t.ok(refused instanceof ImageServiceError)
  t.match(refused, { status: 415, code: 'unsupported_media_type', fallbackUrl: SERVICE_FALLBACK, requestId: /\S/, detail: /\S/ })

  const wrongKey = new ImageServiceClient({ baseUrl, apiKey: 'x'.repeat(40) })
  const unauthorized = await rejection(t, wrongKey.metadata('general/2025/01/abcdefghijklmnop_a.png'))
  t.match(unauthorized, { status: 401, code: 'unauthorized' })
  const anonymous = await rejection(t, new ImageServiceClient({ baseUrl }).upload(pngOfSize(1024), 'a.png'))
  t.match(anonymous, { status: 401, code: 'unauthorized', fallbackUrl: SERVICE_FALLBACK })

  t.match(await rejection(t, client.upload(pngOfSize(1024), 'a.png', { context: 'Not A Context' })), {
    status: 400,
    code: 'invalid_context',
  })
  t.match(
    await rejection(t, client.metadata('general/2025/01/x y.png')),
    { status: 400, code: 'invalid_key' },
    'the service judges the key as given',
  )
  // A dot segment would be resolved away by the URL and name another object: refused before sending.
  const dotted = await rejection(t, client.delete('general/../portraits/2025/01/abcdefghijklmnop_a.png'))
  t.match(dotted, { status: 400, code: 'invalid_key', requestId: undefined })
  await t.rejects(client.upload(pngOfSize(1024), 'a.png', { metadata: { context: 'portraits' } }), TypeError)
})

t.test('a backend failure is 503 storage_unavailable with Retry-After and the service fallback', async (t) => {
  const { app: broken } = await buildTestApp(t, {
    ...r2Env(`http://127.0.0.1:${await closedPort()}`),
    DEFAULT_PORTRAIT_URL: SERVICE_FALLBACK,
  })
  let tries = 0
  broken.addHook('onRequest', async () => {
    tries++
  })
  const brokenClient = new ImageServiceClient({
    baseUrl: `http://127.0.0.1:${(await listen(broken)).port}`,
    // Retry-After: 5 does not fit in it: the answer is given up on at once, not retried.
    timeoutMs: 4000,
    defaultFallbackUrl: CLIENT_FALLBACK,
  })
  const started = Date.now()
  const outcome = await brokenClient.uploadWithFallback(pngOfSize(1024), 'a.png')
  t.equal(outcome.url, SERVICE_FALLBACK, "the service's fallback_url comes first")
  t.equal(outcome.image, undefined)
  t.match(outcome.error, { status: 503, code: 'storage_unavailable', retryAfter: 5 })
  t.equal(tries, 1, 'not retried: the wait would end past the timeout')
  t.ok(Date.now() - started < 4000, `answered in ${Date.now() - started} ms, without waiting for the deadline`)
})

t.test('503 server_busy: bytes are retried after Retry-After with one Idempotency-Key; a stream is sent once', async (t) => {
  // One upload slot, no queue: while a raw upload holds the slot, every other upload is 503 server_busy.
  const { app: busy } = await buildTestApp(t, { ...r2Env(s3.endpoint), MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_MAX: '0' })
  const tries: { idempotencyKey: string; status: number }[] = []
  busy.addHook('onResponse', async (request, reply) => {
    if (request.method === 'POST') tries.push({ idempotencyKey: String(request.headers['idempotency-key']), status: reply.statusCode })
  })
  const server = await listen(busy)
  const busyClient = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 })
  const held = pngOfSize(30_000, 26)
  const holder = net.connect(server.port, server.host)
  t.teardown(() => holder.destroy())
  await once(holder, 'connect')
  let holderAnswer = ''
  holder.on('data', (chunk: Buffer) => (holderAnswer += chunk))
  holder.write(`POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: ${held.length}\r\n\r\n`)
  holder.write(held.subarray(0, 100))
  await until('the held upload to be in flight', async () => (await gauge(busy, 'uploadsInFlight')) === 1)

  const streamed = await rejection(t, busyClient.upload(Readable.from([pngOfSize(2048, 27)]), 'stream.png'))
  t.match(streamed, { status: 503, code: 'server_busy', retryAfter: 1 }, 'a stream cannot be sent again: its 503 is thrown')
  t.equal(tries.length, 1, 'after one try')

  const data = pngOfSize(2048, 28)
  const retried = busyClient.upload(data, 'retried.png')
  // Frees the slot once the upload has been refused twice.
  await until('the upload to be refused twice', () => tries.length >= 3)
  holder.write(held.subarray(100))
  const image = await retried
  t.equal(image.sha256, sha256(data))
  t.equal(await s3.sha256Of(image.key), sha256(data), 'stored, byte for byte')
  // The holder sent no Idempotency-Key.
  const retriedTries = tries.slice(1).filter((attempt) => attempt.idempotencyKey !== 'undefined')
  const keys = new Set(retriedTries.map((attempt) => attempt.idempotencyKey))
  t.equal(keys.size, 1, `one Idempotency-Key for its ${retriedTries.length} tries`)
  t.match([...keys][0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID the client made')
  t.same(
    retriedTries.map((attempt) => attempt.status),
    [...Array(retriedTries.length - 1).fill(503), 201],
    'refused while the slot was held, then stored',
  )
  await until("the holding upload's whole answer", () => holderAnswer.endsWith('}'))
  t.match(holderAnswer, /^HTTP\/1\.1 201 /, 'the upload that held the slot is stored too')
  const holderKey = (JSON.parse(holderAnswer.slice(holderAnswer.indexOf('\r\n\r\n') + 4)) as { key: string }).key
  t.equal(await s3.sha256Of(holderKey), sha256(held), 'byte for byte')
})

t.test('429 rate_limited whose Retry-After does not fit in the timeout is thrown at once', async (t) => {
  const { app: limited } = await buildTestApp(t, { API_KEYS: `bot:${TOKEN}`, RATE_LIMIT_PER_MINUTE: '1' })
  const limitedClient = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${(await listen(limited)).port}`, apiKey: TOKEN })
  await limitedClient.delete('general/2025/01/abcdefghijklmnop_a.png') // the minute's one request
  const started = Date.now()
  const refused = await rejection(t, limitedClient.delete('general/2025/01/abcdefghijklmnop_a.png'))
  t.match(refused, { status: 429, code: 'rate_limited' })
  t.ok((refused as ImageServiceError).retryAfter! > 30, `Retry-After ${(refused as ImageServiceError).retryAfter} s, past the 30 s timeout`)
  t.ok(Date.now() - started < 2000, `thrown after ${Date.now() - started} ms`)
})

t.test('import: the service fetches the image from an allowed source and stores it; a retry is replayed; its errors', async (t) => {
  const data = pngOfSize(40_000, 25)
  const fetched: string[] = []
  const source = await startSource(t, (req, res) => {
    fetched.push(req.url ?? '')
    if (req.url === '/cdn/portrait.png') res.writeHead(200, { 'content-type': 'image/png' }).end(data)
    else res.writeHead(404).end()
  })
  // The shared app allows no source; this one fetches from the local source server (the test-only setting).
  const { app: importer } = await buildTestApp(
    t,
    { ...r2Env(s3.endpoint), ...LOCAL_SOURCE_ENV, API_KEYS: `bot:${TOKEN}`, DEFAULT_PORTRAIT_URL: SERVICE_FALLBACK },
    {
      importNetwork: spyNetwork({ loopback: true }).network,
    },
  )
  const importClient = new ImageServiceClient({
    baseUrl: `http://127.0.0.1:${(await listen(importer)).port}`,
    apiKey: TOKEN,
    timeoutMs: 10_000,
  })
  const sourceUrl = source.url('/cdn/portrait.png')

  const image = await importClient.import(sourceUrl, {
    context: 'portraits',
    metadata: { character_name: CHARACTER },
    idempotencyKey: 'import-portrait-1',
  })
  t.match(
    image,
    { size: data.length, filename: 'portrait.png', content_type: 'image/png', width: 16, height: 16, sha256: sha256(data) },
    "the filename is the URL's",
  )
  t.match(image.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{20}_portrait\.png$/)
  t.equal(await s3.sha256Of(image.key), sha256(data), "the stored bytes are the source's")
  t.match(
    (await importClient.metadata(image.key)).metadata,
    { character_name: CHARACTER, migrated_from: sourceUrl },
    'metadata, and migrated_from set by the service',
  )

  const replayed = await importClient.import(sourceUrl, {
    context: 'portraits',
    metadata: { character_name: CHARACTER },
    idempotencyKey: 'import-portrait-1',
  })
  t.same(replayed, image, 'the same Idempotency-Key: the first answer again')
  t.same(fetched, ['/cdn/portrait.png'], 'and the source was fetched once')

  const named = await importClient.import(sourceUrl, { filename: 'Thorgar.png' })
  t.match(named.key, /^general\/\d{4}\/\d{2}\/[a-z]{20}_Thorgar\.png$/, 'the filename given; no context: general, as for an upload')
  t.equal(await s3.sha256Of(named.key), sha256(data))

  const gone = await rejection(t, importClient.import(source.url('/cdn/gone.png'), { context: 'portraits' }))
  t.ok(gone instanceof ImageServiceError)
  t.match(gone, { status: 502, code: 'import_failed', detail: /404/, fallbackUrl: SERVICE_FALLBACK, requestId: /\S/ })
  const refused = await rejection(t, importClient.import('https://elsewhere.example.test/a.png'))
  t.match(refused, { status: 400, code: 'import_refused', fallbackUrl: SERVICE_FALLBACK })
  t.match(await rejection(t, importClient.import(sourceUrl, { context: 'Not A Context' })), { status: 400, code: 'invalid_context' })

  // What goes on the wire, and the timeout: a service that never answers.
  const hung = await silentServer(t)
  const slowClient = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${hung.port}`, apiKey: TOKEN, timeoutMs: 300 })
  const unanswered = await rejection(
    t,
    slowClient.import(sourceUrl, { context: 'portraits', filename: 'a.png', metadata: { uploader_id: '7' }, idempotencyKey: 'import-2' }),
  )
  t.ok(unanswered instanceof ImageServiceUnreachableError)
  t.match(unanswered, { timedOut: true })
  const request = hung.received().toString('utf8')
  t.match(request, /^POST \/v1\/images\/import HTTP\/1\.1\r\n/)
  t.match(request, /\r\ncontent-type: application\/json\r\n/i)
  t.match(request, /\r\nauthorization: Bearer client-test-token-0123456789abcdef0123\r\n/i)
  t.match(request, /\r\nidempotency-key: import-2\r\n/i)
  t.same(JSON.parse(request.slice(request.indexOf('\r\n\r\n') + 4)), {
    source_url: sourceUrl,
    context: 'portraits',
    filename: 'a.png',
    metadata: { uploader_id: '7' },
  })
})

t.test('uploadWithFallback', async (t) => {
  const data = pngOfSize(4096, 23)
  const stored = await client.uploadWithFallback(data, 'ok.png')
  t.equal(stored.error, undefined)
  t.equal(stored.url, stored.image?.url, 'a stored upload gives its own url')
  t.equal(await s3.sha256Of(stored.image!.key), sha256(data))

  const refused = await client.uploadWithFallback(Buffer.from('<html></html>'), 'x.png')
  t.equal(refused.url, SERVICE_FALLBACK, 'a 415 gives the fallback_url the service offers')
  t.match(refused.error, { status: 415, code: 'unsupported_media_type' })

  const stopped = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${await closedPort()}`, defaultFallbackUrl: CLIENT_FALLBACK })
  const unreachable = await stopped.uploadWithFallback(data, 'a.png')
  t.equal(unreachable.url, CLIENT_FALLBACK, 'no service: the configured default')
  t.ok(unreachable.error instanceof ImageServiceUnreachableError)
  t.match(unreachable.error, { timedOut: false })

  const withoutDefault = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${await closedPort()}` })
  t.ok(
    (await rejection(t, withoutDefault.uploadWithFallback(data, 'a.png'))) instanceof ImageServiceUnreachableError,
    'no fallback at all: the error is thrown',
  )
})

t.test('a service that never answers: the timeout, the caller signal, and what the client sent', async (t) => {
  const hung = await silentServer(t)
  const slowClient = new ImageServiceClient({
    baseUrl: `http://127.0.0.1:${hung.port}`,
    apiKey: TOKEN,
    timeoutMs: 300,
    defaultFallbackUrl: CLIENT_FALLBACK,
  })
  const started = performance.now()
  const outcome = await slowClient.uploadWithFallback(pngOfSize(1024, 24), 'hung.png', {
    context: 'portraits',
    metadata: { character_name: CHARACTER },
    idempotencyKey: 'discord-message-1234',
  })
  const elapsed = performance.now() - started
  t.equal(outcome.url, CLIENT_FALLBACK)
  t.ok(outcome.error instanceof ImageServiceUnreachableError)
  t.match(outcome.error, { timedOut: true })
  t.ok(elapsed < 2000, `gave up after ${Math.round(elapsed)} ms (timeout 300)`)

  const request = hung.received().toString('latin1')
  t.match(request, /^POST \/v1\/images HTTP\/1\.1\r\n/)
  t.match(request, /\r\nauthorization: Bearer client-test-token-0123456789abcdef0123\r\n/i)
  t.match(request, /\r\nidempotency-key: discord-message-1234\r\n/i)
  // Text fields first, then the one file part, as the contract requires.
  const names = [...request.matchAll(/Content-Disposition: form-data; name="([^"]+)"/g)].map((match) => match[1])
  t.same(names, ['context', 'character_name', 'file'])
  t.match(request, 'filename="hung.png"')

  const caller = new AbortController()
  const reason = new Error('the caller gave up')
  setTimeout(() => caller.abort(reason), 50)
  const aborted = await rejection(
    t,
    new ImageServiceClient({ baseUrl: `http://127.0.0.1:${hung.port}` }).metadata('general/a.png', { signal: caller.signal }),
  )
  t.equal(aborted, reason, "the caller's abort reason is thrown as it is")
})

t.test('list and listPages: a page, then every page through the cursors', async (t) => {
  // In its own process: s3rver answers truncated listings there only (see helpers/s3rver-main.ts).
  const paging = await startS3({ ownProcess: true })
  t.teardown(() => paging.stop())
  const { app: listingApp } = await buildTestApp(t, { ...r2Env(paging.endpoint), API_KEYS: `bot:${TOKEN}` })
  const listing = new ImageServiceClient({ baseUrl: `http://127.0.0.1:${(await listen(listingApp)).port}`, apiKey: TOKEN })
  const sizes = new Map<string, number>()
  for (const seed of [1, 2, 3, 4, 5]) {
    const data = pngOfSize(1000 + seed, seed)
    const image = await listing.upload(data, `p${seed}.png`, { context: 'portraits', idempotencyKey: `list-${seed}` })
    t.equal(await paging.sha256Of(image.key), sha256(data), 'stored byte-exact')
    sizes.set(image.key, data.length)
  }
  const general = pngOfSize(900, 9)
  t.equal(await paging.sha256Of((await listing.upload(general, 'g.png', { context: 'general' })).key), sha256(general), 'stored byte-exact')
  const portraits = [...sizes.keys()].sort()

  const first = await listing.list({ prefix: 'portraits/', limit: 2 })
  t.same(
    first.items.map((item) => item.key),
    portraits.slice(0, 2),
  )
  t.match(first.items[0], {
    url: `https://images.example.test/${portraits[0]}`,
    size: sizes.get(portraits[0]!),
    etag: /\S/,
    last_modified: /^\d{4}-/,
  })
  t.type(first.next_cursor, 'string')
  const second = await listing.list({ prefix: 'portraits/', limit: 2, cursor: first.next_cursor! })
  t.same(
    second.items.map((item) => item.key),
    portraits.slice(2, 4),
  )

  const pages: string[][] = []
  for await (const page of listing.listPages({ prefix: 'portraits/', limit: 2 })) pages.push(page.items.map((item) => item.key))
  t.same(pages, [portraits.slice(0, 2), portraits.slice(2, 4), portraits.slice(4)], 'every page, in order')
  const everything: string[] = []
  for await (const page of listing.listPages()) everything.push(...page.items.map((item) => item.key))
  t.equal(everything.length, 6, 'no prefix: every image, and none of the five idempotency records')

  const refused = await rejection(t, listing.list({ limit: 1001 }))
  t.match(refused, { status: 400, code: 'invalid_request' })
  t.ok(refused instanceof ImageServiceError)
  t.match(await rejection(t, listing.list({ prefix: '../x' })), { status: 400, code: 'invalid_key' })
})
