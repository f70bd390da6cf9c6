import { readFile } from 'node:fs/promises'
import t from 'tap'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { streamUpload } from './helpers/client.js'
import { listen } from './helpers/http.js'
import { pngStream } from './helpers/images.js'
import { multipartStream } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { startService } from './helpers/service-process.js'

const MiB = 1024 * 1024

t.test('an oversized stream gets its 413 long before it is sent, and nothing is stored', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { MAX_UPLOAD_BYTES: String(2 * MiB) })
  const server = await listen(app)
  const bodies = {
    raw: () => ({ headers: { 'content-type': 'image/png', 'transfer-encoding': 'chunked' }, stream: pngStream(256 * MiB).stream }),
    multipart: () => multipartStream('huge.png', pngStream(256 * MiB).stream),
  }
  for (const [kind, body] of Object.entries(bodies)) {
    const { headers, stream } = body()
    const result = await streamUpload(server, '/v1/images', headers, stream)
    t.equal(result.status, 413, `${kind}: 413`)
    t.equal(JSON.parse(result.body).code, 'image_too_large')
    t.equal(result.headers.connection, 'close', `${kind}: the service closes the connection after answering`)
    t.ok(result.sentWhenAnswered < 16 * MiB, `${kind}: answered after ${(result.sentWhenAnswered / MiB).toFixed(1)} MiB of 256 MiB`)
  }

  const declared = await streamUpload(
    server,
    '/v1/images',
    { 'content-type': 'image/png', 'content-length': String(256 * MiB) },
    pngStream(256 * MiB).stream,
  )
  t.equal(declared.status, 413, 'a declared Content-Length over the limit is refused before reading')
  t.ok(declared.sentWhenAnswered < 16 * MiB, `answered after ${(declared.sentWhenAnswered / MiB).toFixed(1)} MiB`)
  t.same(await storedFiles(dataDir), [], 'nothing stored')

  const { headers, stream } = bodies.raw()
  const after = await streamUpload(
    server,
    '/v1/images',
    headers,
    (async function* () {
      for await (const chunk of stream) {
        yield chunk
        return // one chunk: a small, valid upload on the same server
      }
    })(),
  )
  t.equal(after.status, 201, 'the service serves normally afterwards')
})

/** Peak resident memory of a process (VmHWM), in bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024
}

t.test('a 100 MiB upload streams through with bounded memory and arrives byte-exact', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  // The service runs in its own process, so its memory is measured apart from the test and the S3 server.
  const service = await startService({ env: { ...r2Env(s3.endpoint), LOG_LEVEL: 'info' } })
  t.teardown(() => service.kill())
  const server = service.target

  const warmUp = pngStream(6 * MiB) // exercises the multipart path once, so the baseline includes loaded code
  const warmedUp = await streamUpload(server, '/v1/images', { 'content-type': 'image/png' }, warmUp.stream)
  t.equal(warmedUp.status, 201)
  t.equal(await s3.sha256Of(JSON.parse(warmedUp.body).key), warmUp.sha256(), 'the warm-up is byte-exact')
  const baseline = await peakRss(service.pid)

  const upload = pngStream(100 * MiB)
  const result = await streamUpload(server, '/v1/images?filename=big.png', { 'content-type': 'image/png' }, upload.stream)
  t.equal(result.status, 201, 'stored')
  t.equal(result.sent, 100 * MiB)
  const body = JSON.parse(result.body)
  t.equal(body.size, 100 * MiB)
  t.equal(body.sha256, upload.sha256(), 'the service hashed the bytes sent')
  t.equal(await s3.sha256Of(body.key), body.sha256, 'the backend holds the bytes sent')

  const growth = (await peakRss(service.pid)) - baseline
  t.comment(
    `service peak RSS: baseline ${(baseline / MiB).toFixed(1)} MiB, grew by ${(growth / MiB).toFixed(1)} MiB during the 100 MiB upload`,
  )
  t.ok(growth < 64 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB (< 64 MiB)`)
})
