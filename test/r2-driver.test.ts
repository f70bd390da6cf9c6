import { once } from 'node:events'
import net from 'node:net'
import { ListObjectsV2Command, S3ServiceException } from '@aws-sdk/client-s3'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import type { R2Settings } from '../src/config.js'
import { R2Driver, type R2Timeouts } from '../src/storage/r2.js'
import { buildTestApp, gauge } from './helpers/app.js'
import { piecesOf, streamUpload } from './helpers/client.js'
import { buffersKeptFromNow } from './helpers/gc.js'
import { closedPort, listen, silentServer } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { type FormPart, multipartBody } from './helpers/multipart.js'
import { PROBLEM_JSON } from './helpers/problem.js'
import { HeadObjectCommand, r2DriverOf, recordCommands, r2Env as s3Env, startS3, TEST_BUCKET } from './helpers/s3.js'
import { isolatedSpoolDir } from './helpers/spool.js'
import { until } from './helpers/wait.js'

const CACHE_CONTROL = 'public, max-age=31536000, immutable'
const FALLBACK_URL = 'https://cdn.example.test/default.png'
const KiB = 1024
const MiB = 1024 * 1024

const s3 = await startS3()
t.teardown(() => s3.stop())

const addresses = new WeakMap<FastifyInstance, Promise<{ host: string; port: number }>>()

/**
 * POSTs a multipart upload over a real connection (the app listens on a loopback port on first use), in
 * network-sized pieces, and stops sending once the answer arrives. A real socket rather than app.inject:
 * an injected body reaches the pipeline as one chunk (so a 12 MiB body never crosses the limit mid-stream),
 * and an injected request never reports `complete`, which makes the early-answer linger wait on errors.
 */
async function upload(app: FastifyInstance, data: Buffer, fields: FormPart[] = [], filename = 'portrait.png') {
  const { payload, headers } = multipartBody([...fields, { name: 'file', filename, contentType: 'image/png', data }])
  if (!addresses.has(app)) addresses.set(app, listen(app))
  const target = await addresses.get(app)!
  const res = await streamUpload(target, '/v1/images', { ...headers, 'content-length': payload.length }, piecesOf(payload))
  return { ...res, statusCode: res.status, json: () => JSON.parse(res.body) }
}

t.test('uploads of 1 KiB, 500 KB and 12 MiB are stored byte-exact with their headers and metadata', async (t) => {
  const { app } = await buildTestApp(t, r2Env())
  const sent = recordCommands(r2DriverOf(app))

  for (const size of [1 * KiB, 500_000, 12 * MiB]) {
    await t.test(`${size} bytes`, async (t) => {
      const data = pngOfSize(size, size)
      const expected = sha256(data)
      sent.length = 0

      const res = await upload(app, data)
      t.equal(res.statusCode, 201, res.body.slice(0, 300))
      const body = res.json()
      t.equal(body.sha256, expected, '201 sha256 is the hash of the bytes sent')
      t.equal(body.size, size)
      t.equal(body.content_type, 'image/png')
      t.equal(body.filename, 'portrait.png')
      t.equal(body.width, 16)
      t.equal(body.height, 16)
      t.match(body.key, /^general\/\d{4}\/\d{2}\/[a-z0-9]{16,}_portrait\.png$/)
      t.equal(body.url, `https://images.example.test/${body.key}`)
      t.equal(res.headers.location, body.url)

      // Byte-exact in the backend: read back from s3rver and hashed.
      t.equal(await s3.sha256Of(body.key), expected, 'stored bytes hash to what was sent')
      t.equal(await s3.sha256Of(body.key), body.sha256, 'stored bytes hash to the 201 sha256')

      const head = await s3.client.send(new HeadObjectCommand({ Bucket: TEST_BUCKET, Key: body.key }))
      t.equal(head.ContentLength, size)
      t.equal(head.ContentType, 'image/png')
      t.equal(head.CacheControl, CACHE_CONTROL)
      const metadata = head.Metadata ?? {}
      t.equal(metadata.filename, 'portrait.png')
      t.equal(metadata.width, '16')
      t.equal(metadata.height, '16')
      t.ok(metadata['uploaded-at'], 'uploaded_at is stored')

      const commands = sent.map((command) => command.name)
      if (size <= 5 * MiB) {
        t.equal(metadata.sha256, expected, 'a single-request upload stores its sha256 as metadata')
        t.same(commands, ['PutObject'], 'one PutObject')
        t.equal(sent[0]?.input.IfNoneMatch, '*', 'PutObject never overwrites')
        t.equal(sent[0]?.input.ChecksumSHA256, Buffer.from(expected, 'hex').toString('base64'), 'PutObject carries the SHA-256 checksum')
      } else {
        // A form with Content-Length: its file's length is known, so it streams up in one request.
        t.notOk('sha256' in metadata, 'a streamed upload stores no sha256 metadata (it is known only at the end)')
        t.same(commands, ['PutObject'], 'one PutObject, no multipart upload')
        t.equal(sent[0]?.input.ContentLength, size, "of the file's exact length")
        t.equal(sent[0]?.input.IfNoneMatch, '*', 'PutObject never overwrites')
      }

      // Through the service.
      const got = await app.inject({ method: 'GET', url: `/v1/images/${body.key}` })
      t.equal(got.statusCode, 200)
      t.match(got.headers['content-type'], /^application\/json/)
      const json = got.json()
      t.equal(json.key, body.key)
      t.equal(json.url, body.url)
      t.equal(json.size, size)
      t.equal(json.content_type, 'image/png')
      t.equal(json.etag, head.ETag)
      t.equal(json.last_modified, head.LastModified?.toISOString())
      t.match(json.last_modified, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/)
      t.equal(json.metadata.filename, 'portrait.png')
      t.equal(json.metadata.width, '16')
      t.equal(json.metadata.height, '16')
      t.ok(json.metadata.uploaded_at)
      t.equal(json.metadata.sha256, size <= 5 * MiB ? expected : undefined, 'sha256 metadata: kept by a single-request upload only')

      const headed = await app.inject({ method: 'HEAD', url: `/v1/images/${body.key}` })
      t.equal(headed.statusCode, 200)
      t.equal(headed.body, '', 'HEAD has no body')
      t.equal(headed.headers['content-length'], String(size), 'Content-Length is the image size')
      t.equal(headed.headers['content-type'], 'image/png')
      t.equal(headed.headers.etag, head.ETag)
      t.ok(headed.headers.etag, 'ETag is present')
      t.equal(headed.headers['last-modified'], head.LastModified?.toUTCString())
      t.equal(headed.headers['cache-control'], CACHE_CONTROL)
      t.equal(headed.headers['x-meta-filename'], 'portrait.png')
    })
  }
})

t.test('non-ASCII metadata round-trips through the r2 driver', async (t) => {
  const { app } = await buildTestApp(t, r2Env())
  const value = 'Thorgar Ø 永久'
  const data = pngOfSize(KiB, 2)
  const res = await upload(app, data, [
    { name: 'character_name', value },
    { name: 'uploader_id', value: '1234567890' },
  ])
  t.equal(res.statusCode, 201, res.body.slice(0, 300))
  const { key, sha256: reported } = res.json()
  t.equal(reported, sha256(data))
  t.equal(await s3.sha256Of(key), sha256(data))

  const got = await app.inject({ method: 'GET', url: `/v1/images/${key}` })
  t.equal(got.statusCode, 200)
  t.equal(got.json().metadata.character_name, value, 'GET decodes the value')
  t.equal(got.json().metadata.uploader_id, '1234567890')

  const headed = await app.inject({ method: 'HEAD', url: `/v1/images/${key}` })
  t.equal(headed.statusCode, 200)
  t.equal(headed.headers['x-meta-character-name'], encodeURIComponent(value), 'HEAD percent-encodes the value')
  t.equal(decodeURIComponent(String(headed.headers['x-meta-character-name'])), value)
  t.equal(headed.headers['x-meta-uploader-id'], '1234567890')
})

t.test('DELETE is idempotent and removes the object from the backend', async (t) => {
  const { app } = await buildTestApp(t, r2Env())
  const data = pngOfSize(KiB, 3)
  const res = await upload(app, data)
  t.equal(res.statusCode, 201, res.body.slice(0, 300))
  const { key } = res.json()
  t.equal(res.json().sha256, sha256(data))
  t.equal(await s3.sha256Of(key), sha256(data))
  t.ok((await s3.keys()).includes(key), 'stored before the delete')

  const first = await app.inject({ method: 'DELETE', url: `/v1/images/${key}` })
  t.equal(first.statusCode, 204)
  t.equal(first.body, '')
  const second = await app.inject({ method: 'DELETE', url: `/v1/images/${key}` })
  t.equal(second.statusCode, 204, 'deleting again is still 204')

  const got = await app.inject({ method: 'GET', url: `/v1/images/${key}` })
  t.equal(got.statusCode, 404)
  t.match(got.headers['content-type'], PROBLEM_JSON)
  t.equal(got.json().code, 'not_found')
  t.equal(got.json().status, 404)
  const headed = await app.inject({ method: 'HEAD', url: `/v1/images/${key}` })
  t.equal(headed.statusCode, 404)
  t.notOk((await s3.keys()).includes(key), 'gone from s3rver')
})

t.test('a bucket that does not exist: 502 bucket_not_found, /readyz 503, nothing stored', async (t) => {
  const { app } = await buildTestApp(t, r2Env(s3.endpoint, 'no-such-bucket'))
  const before = await s3.keys()

  // A body sent whole (the spooled one's refusal is below).
  const res = await upload(app, pngOfSize(KiB, 4))
  t.equal(res.statusCode, 502, res.body.slice(0, 300))
  t.match(res.headers['content-type'], PROBLEM_JSON)
  t.equal(res.json().code, 'bucket_not_found')
  t.equal(res.json().status, 502)

  // Reads too: HeadObject's 404 has no body, so the driver must not report a missing bucket as a missing object.
  const got = await app.inject({ method: 'GET', url: '/v1/images/general/2025/01/abcdefghijklmnop_portrait.png' })
  t.equal(got.statusCode, 502, got.body.slice(0, 300))
  t.equal(got.json().code, 'bucket_not_found')
  const headed = await app.inject({ method: 'HEAD', url: '/v1/images/general/2025/01/abcdefghijklmnop_portrait.png' })
  t.equal(headed.statusCode, 502)

  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.match(ready.headers['content-type'], PROBLEM_JSON)
  t.equal(ready.json().code, 'storage_unavailable')
  t.same(await s3.keys(), before, 'nothing stored')
})

t.test('credentials the backend refuses: 502 storage_access_denied', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env(), R2_ACCESS_KEY_ID: 'NOT-S3RVER' })
  const before = await s3.keys()
  const res = await upload(app, pngOfSize(KiB, 5))
  t.equal(res.statusCode, 502, res.body.slice(0, 300))
  t.match(res.headers['content-type'], PROBLEM_JSON)
  t.equal(res.json().code, 'storage_access_denied')
  t.notMatch(res.body, /NOT-S3RVER|127\.0\.0\.1/, 'no credentials or internal hosts in the problem')

  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.json().code, 'storage_unavailable')
  t.same(await s3.keys(), before, 'nothing stored')
})

t.test('an unreachable backend: 503 storage_unavailable quickly, with Retry-After and fallback_url', async (t) => {
  const port = await closedPort()
  const { app } = await buildTestApp(t, {
    ...r2Env(`http://127.0.0.1:${port}`),
    DEFAULT_PORTRAIT_URL: FALLBACK_URL,
  })
  const started = performance.now()
  const res = await upload(app, pngOfSize(KiB, 6))
  const elapsed = performance.now() - started
  t.equal(res.statusCode, 503, res.body.slice(0, 300))
  t.match(res.headers['content-type'], PROBLEM_JSON)
  t.equal(res.json().code, 'storage_unavailable')
  t.equal(res.json().fallback_url, FALLBACK_URL)
  t.match(res.headers['retry-after'], /^\d+$/, 'Retry-After in seconds')
  t.ok(elapsed < 2000, `answered in ${Math.round(elapsed)} ms (< 2000)`)
  t.notMatch(res.body, new RegExp(`127\\.0\\.0\\.1|:${port}`), 'no internal host in the problem')

  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.match(ready.headers['content-type'], PROBLEM_JSON)
  t.equal(ready.json().code, 'storage_unavailable')
  t.notOk('fallback_url' in ready.json(), 'only uploads offer the fallback')
})

t.test('a form of unknown length past the limit: 413 while it is spooled, nothing sent to S3, no spool file left', async (t) => {
  const spool = await isolatedSpoolDir(t)
  const { app } = await buildTestApp(t, { ...r2Env(), MAX_UPLOAD_BYTES: String(8 * MiB) })
  const sent = recordCommands(r2DriverOf(app))
  const before = await s3.keys()

  const { payload, headers } = multipartBody([
    { name: 'file', filename: 'large.png', contentType: 'image/png', data: pngOfSize(12 * MiB, 8) },
  ])
  const res = await streamUpload(await listen(app), '/v1/images', headers, piecesOf(payload))
  t.equal(res.status, 413, res.body.slice(0, 300))
  t.match(res.headers['content-type'], PROBLEM_JSON)
  t.equal(JSON.parse(res.body).code, 'image_too_large')
  t.same(
    sent.map((command) => command.name),
    [],
    'nothing was sent to S3',
  )
  t.same(await spool.files(), [], 'the spool file is removed')
  t.same(await s3.keys(), before, 'no object left behind')
})

t.test('a raw body over 5 MiB goes up in one PutObject of its length: as it arrives when declared, spooled when chunked', async (t) => {
  const spool = await isolatedSpoolDir(t)
  const { app } = await buildTestApp(t, r2Env())
  const sent = recordCommands(r2DriverOf(app))
  const target = await listen(app)
  const data = pngOfSize(12 * MiB, 41)

  const declared = await streamUpload(
    target,
    '/v1/images?filename=declared.png',
    { 'content-type': 'image/png', 'content-length': data.length },
    piecesOf(data),
  )
  t.equal(declared.status, 201, declared.body.slice(0, 300))
  const stored = JSON.parse(declared.body) as { key: string; sha256: string; size: number }
  t.equal(stored.sha256, sha256(data), '201 sha256 is the hash of the bytes sent')
  t.equal(await s3.sha256Of(stored.key), sha256(data), 'stored byte-exact')
  t.same(
    sent.map((command) => command.name),
    ['PutObject'],
    'one PutObject, no multipart upload',
  )
  t.equal(sent[0]?.input.ContentLength, data.length, 'of the declared length')
  t.equal(sent[0]?.input.IfNoneMatch, '*', 'never overwriting')

  // Without Content-Length the length is unknown until the end: the body is spooled, then sent whole.
  sent.length = 0
  const chunked = await streamUpload(target, '/v1/images?filename=chunked.png', { 'content-type': 'image/png' }, piecesOf(data))
  t.equal(chunked.status, 201, chunked.body.slice(0, 300))
  const key = (JSON.parse(chunked.body) as { key: string }).key
  t.equal(await s3.sha256Of(key), sha256(data), 'stored byte-exact')
  t.same(
    sent.map((command) => command.name),
    ['PutObject'],
    'one PutObject (one Class A operation), no multipart upload',
  )
  t.equal(sent[0]?.input.ContentLength, data.length, 'of the exact length')
  t.equal(sent[0]?.input.ChecksumSHA256, Buffer.from(sha256(data), 'hex').toString('base64'), 'carrying its SHA-256, which R2 verifies')
  t.equal((await app.inject({ method: 'GET', url: `/v1/images/${key}` })).json().metadata.sha256, sha256(data), 'sha256 stored as metadata')
  t.same(await spool.files(), [], 'the spool file is removed')
})

t.test('a client that hangs up while its body is spooled: no spool file left, nothing sent to S3', async (t) => {
  const spool = await isolatedSpoolDir(t)
  const { app } = await buildTestApp(t, r2Env())
  const sent = recordCommands(r2DriverOf(app))
  const target = await listen(app)
  const before = await s3.keys()
  const socket = net.connect(target)
  await once(socket, 'connect')
  socket.on('error', () => {}).resume()
  socket.write(`POST /v1/images?filename=cut.png HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n`)
  const part = pngOfSize(12 * MiB, 43).subarray(0, 7 * MiB)
  socket.write(`${part.length.toString(16)}\r\n`)
  socket.write(part)
  await until('the body to be spooled', async () => (await spool.files()).length > 0)
  t.pass('the body past 5 MiB is being spooled')
  socket.destroy()
  await until('the upload to end', async () => (await gauge(app, 'uploadsInFlight')) === 0)
  t.same(await spool.files(), [], 'the spool file is removed')
  t.same(sent, [], 'nothing was sent to S3')
  t.same(await s3.keys(), before, 'nothing stored')
})

t.test('a spooled body the backend refuses: a problem, and the spool file is removed', async (t) => {
  const spool = await isolatedSpoolDir(t)
  const { app } = await buildTestApp(t, r2Env(s3.endpoint, 'no-such-bucket'))
  const sent = recordCommands(r2DriverOf(app))
  const res = await streamUpload(
    await listen(app),
    '/v1/images?filename=refused.png',
    { 'content-type': 'image/png' },
    piecesOf(pngOfSize(6 * MiB, 44)),
  )
  // s3rver answers 404 and closes while the streamed body is still being written: the SDK may see the
  // answer (bucket_not_found) or the closed socket first (storage_unavailable).
  t.match(JSON.parse(res.body), { code: /^(bucket_not_found|storage_unavailable)$/ }, res.body.slice(0, 300))
  t.same(
    sent.map((command) => command.name),
    ['PutObject'],
    'it was spooled, then sent',
  )
  t.same(await spool.files(), [], 'the spool file is removed')
})

t.test('a buffered PutObject is signed with the SHA-256 the pipeline computed, and the backend accepts it', async (t) => {
  const { app } = await buildTestApp(t, r2Env())
  // After signing (the finalizeRequest step): the request as it goes on the wire.
  const signed: { authorization: string; payloadHash: string }[] = []
  r2DriverOf(app).client.middlewareStack.add(
    (next) => async (args) => {
      const headers = (args.request as { headers: Record<string, string> }).headers
      signed.push({ authorization: headers.authorization ?? '', payloadHash: headers['x-amz-content-sha256'] ?? '' })
      return next(args)
    },
    { step: 'deserialize', name: 'testRecordSignedHeaders' },
  )
  const data = pngOfSize(500_000, 45)
  const res = await upload(app, data)
  t.equal(res.statusCode, 201, res.body.slice(0, 300))
  t.equal(await s3.sha256Of(res.json().key), sha256(data), 'stored byte-exact')
  t.equal(signed.length, 1, 'one request')
  t.equal(signed[0]?.payloadHash, sha256(data), 'x-amz-content-sha256 is the hash of the body, as the pipeline computed it')
  t.match(signed[0]?.authorization, /SignedHeaders=[^,]*x-amz-content-sha256/, 'and it is signed')
})

t.test('a client that hangs up during a streamed PutObject: the PutObject is cut short, never completed', async (t) => {
  const { app } = await buildTestApp(t, r2Env())
  const sent = recordCommands(r2DriverOf(app))
  const target = await listen(app)
  const data = pngOfSize(12 * MiB, 42)
  const socket = net.connect(target)
  await once(socket, 'connect')
  socket.on('error', () => {}).resume()
  socket.write(`POST /v1/images?filename=cut.png HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: ${data.length}\r\n\r\n`)
  socket.write(data.subarray(0, 7 * MiB))
  await until('the PutObject to be sent', () => sent.some((command) => command.name === 'PutObject'))
  socket.destroy()
  const hungUpAt = performance.now()
  await until('the upload to end', async () => (await gauge(app, 'uploadsInFlight')) === 0)
  const endedAfter = performance.now() - hungUpAt
  // Not left to the backend's idle timeout (5 s): the request is aborted with the body.
  t.ok(endedAfter < 4000, `the upload ended ${Math.round(endedAfter)} ms after the client hung up`)
  // s3rver keeps the bytes of a PUT cut short, where R2 and S3 keep nothing (a PUT shorter than its
  // Content-Length is never stored). So what is checked here is the service's part: the PUT ended short.
  const listed = await s3.client.send(new ListObjectsV2Command({ Bucket: TEST_BUCKET }))
  const cut = (listed.Contents ?? []).filter((object) => object.Key!.endsWith('_cut.png'))
  t.ok(
    cut.every((object) => object.Size! < data.length),
    `the PutObject ended before its declared ${data.length} bytes (s3rver holds ${cut.map((object) => object.Size).join(', ') || 'nothing'})`,
  )
})

t.test('PutObject sends If-None-Match: * and a 412 answers 502 storage_error (SDK-level mock)', async (t) => {
  // A mock because no local S3 server implements conditional writes: s3rver ignores If-None-Match on
  // PutObject and overwrites (see S3-TEST-BACKENDS.md). R2 answers 412 PreconditionFailed; this throws
  // the same error shape the SDK produces for it, before the request leaves the client.
  const env = r2Env()
  const driver = s3rverDriver()
  const puts: Record<string, unknown>[] = []
  driver.client.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName !== 'PutObjectCommand') return next(args)
      puts.push(args.input as Record<string, unknown>)
      throw new S3ServiceException({
        name: 'PreconditionFailed',
        $fault: 'client',
        $metadata: { httpStatusCode: 412 },
        message: 'At least one of the pre-conditions you specified did not hold',
      })
    },
    { step: 'initialize', name: 'testPreconditionFailed' },
  )
  const { app } = await buildTestApp(t, env, { driver })
  t.equal(app.storage, driver)
  const before = await s3.keys()

  const res = await upload(app, pngOfSize(KiB, 9))
  t.equal(puts.length, 1, 'one PutObject')
  t.equal(puts[0]?.IfNoneMatch, '*', 'PutObject carried If-None-Match: *')
  t.equal(res.statusCode, 502, res.body.slice(0, 300))
  t.match(res.headers['content-type'], PROBLEM_JSON)
  t.equal(res.json().code, 'storage_error')
  t.same(await s3.keys(), before, 'nothing stored')
})

t.test('a stored body is not kept by the client, whose cached middleware keeps the first command it served', async (t) => {
  // s3rver in a process of its own, so that only the driver's buffers are counted.
  const ownS3 = await startS3({ ownProcess: true })
  t.teardown(() => ownS3.stop())
  const driver = new R2Driver(r2SettingsAt(ownS3.endpoint))
  t.teardown(() => driver.close())
  const buffersKept = buffersKeptFromNow()
  const write = { contentType: 'image/png', cacheControl: 'no-cache', metadata: {} }
  await driver.put('retained.bin', Buffer.alloc(5 * MiB, 7), write, new AbortController().signal)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const held = buffersKept()
  t.equal(await ownS3.sha256Of('retained.bin'), sha256(Buffer.alloc(5 * MiB, 7)), 'stored byte-exact')
  t.ok(held < MiB, `${(held / MiB).toFixed(1)} MiB of buffers held after a 5 MiB PutObject (< 1 MiB)`)
})

/** An R2 driver on this file's s3rver, built directly so a test can watch or alter what its client sends. */
function s3rverDriver(timeouts?: ConstructorParameters<typeof R2Driver>[1]): R2Driver {
  return new R2Driver(r2SettingsAt(s3.endpoint), timeouts)
}

/** The driver's settings for the helper's environment (s3rver's keys, the test bucket) at `endpoint`. */
function r2SettingsAt(endpoint: string): R2Settings {
  const env = s3Env(endpoint)
  return {
    endpoint,
    forcePathStyle: true,
    accessKeyId: env.R2_ACCESS_KEY_ID!,
    secretAccessKey: env.R2_SECRET_ACCESS_KEY!,
    bucket: env.R2_BUCKET_NAME!,
  }
}

t.test('a write whose answer was lost is not reported as a failure (SDK-level mock)', async (t) => {
  // A mock because no local S3 server implements conditional writes. Scenario: the PutObject is stored,
  // its answer is lost, and the SDK's retry meets R2's 412 for the key it has just written. Here the first
  // send really stores the object on s3rver, then the 412 is thrown as the retry would have seen it.
  const driver = s3rverDriver()
  let sends = 0
  driver.client.middlewareStack.add(
    (next, context) => async (args) => {
      const result = await next(args)
      if (context.commandName === 'PutObjectCommand' && sends++ === 0) {
        throw new S3ServiceException({
          name: 'PreconditionFailed',
          $fault: 'client',
          $metadata: { httpStatusCode: 412 },
          message: 'precondition',
        })
      }
      return result
    },
    { step: 'initialize', name: 'testLostAnswer' },
  )
  const { app } = await buildTestApp(t, r2Env(), { driver })
  const data = pngOfSize(2 * KiB, 11)
  const res = await upload(app, data)
  t.equal(res.statusCode, 201, 'the upload succeeded: the stored object is its own')
  t.equal(await s3.sha256Of(res.json().key), sha256(data))
})

t.test('a backend that accepts connections but never answers: 503 storage_unavailable, not a hang', async (t) => {
  const { port } = await silentServer(t)
  const driver = driverAt(port, { connectMs: 500, idleMs: 300, requestMs: 1000 })
  const { app } = await buildTestApp(t, r2Env(`http://127.0.0.1:${port}`), { driver })
  const started = Date.now()
  const res = await upload(app, pngOfSize(KiB, 12))
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'storage_unavailable')
  t.ok(res.headers['retry-after'], 'Retry-After')
  t.ok(Date.now() - started < 5000, `answered in ${Date.now() - started} ms`)
  const ready = await app.inject('/readyz')
  t.equal(ready.statusCode, 503, '/readyz does not hang either')
})

/** An R2 driver for a backend on a loopback port, with short timeouts. */
function driverAt(port: number, timeouts: R2Timeouts): R2Driver {
  return new R2Driver(r2SettingsAt(`http://127.0.0.1:${port}`), timeouts)
}

/** The helper's environment, on this file's s3rver unless told otherwise. */
function r2Env(endpoint = s3.endpoint, bucket = TEST_BUCKET): NodeJS.ProcessEnv {
  return s3Env(endpoint, bucket)
}

t.test('a streamed PutObject still detects a stalled backend: one that stops reading, or never answers', async (t) => {
  // The idle timeout is off only while the body waits for the client: these backends are waited on. Both
  // let the body start (100 Continue: the SDK asks for it before a large body), then one stops reading and
  // the other reads everything and never answers.
  const backend = async (stopsReading: boolean) => {
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.once('data', () => {
        socket.write('HTTP/1.1 100 Continue\r\n\r\n')
        if (stopsReading) socket.pause()
        else socket.resume()
      })
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => {
      server.close()
      for (const socket of sockets) socket.destroy()
    })
    return (server.address() as net.AddressInfo).port
  }
  const backends = { 'stops reading mid-body': await backend(true), 'reads the whole body, never answers': await backend(false) }
  const data = pngOfSize(24 * MiB, 43)
  for (const [name, port] of Object.entries(backends)) {
    const driver = driverAt(port, { connectMs: 500, idleMs: 500, requestMs: 1000 })
    const { app } = await buildTestApp(t, r2Env(`http://127.0.0.1:${port}`), { driver })
    const started = Date.now()
    const res = await streamUpload(
      await listen(app),
      '/v1/images?filename=stalled.png',
      { 'content-type': 'image/png', 'content-length': data.length },
      piecesOf(data),
    )
    t.equal(res.status, 503, `${name}: 503 (${res.body.slice(0, 200)})`)
    t.equal(JSON.parse(res.body).code, 'storage_unavailable', `${name}: storage_unavailable`)
    t.ok(
      Date.now() - started < 10_000,
      `${name}: answered in ${Date.now() - started} ms, after ${(res.sentWhenAnswered / MiB).toFixed(1)} MiB of 24 MiB`,
    )
  }
})
