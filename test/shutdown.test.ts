import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { StoredImage } from '../src/client.js'
import { SPOOL_FILE_PREFIX } from '../src/upload/pipeline.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { PROBLEM_JSON } from './helpers/problem.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { startService } from './helpers/service-process.js'
import { until } from './helpers/wait.js'

const KiB = 1024
const MiB = 1024 * 1024
/** How long an early answer waits for the client to stop sending before closing (not exported: read from the source). */
const LINGER_MS = Number(
  /const LINGER_MS = ([\d_]+)/
    .exec(await readFile(new URL('../src/plugins/problem-details.ts', import.meta.url), 'utf8'))![1]!
    .replaceAll('_', ''),
)

// Three services start in turn (tsx compiles src/ in each): generous on a loaded machine.
t.setTimeout(120_000)

const s3 = await startS3()
t.teardown(() => s3.stop())

/** The service in a process of its own (src/server.ts, as in production), so it can be sent SIGTERM. */
async function startShutdownService(t: Test, env: NodeJS.ProcessEnv) {
  const service = await startService({ env: { ...r2Env(s3.endpoint), LOG_LEVEL: 'info', USAGE_SCAN_INTERVAL_S: '0', ...env } })
  t.teardown(() => service.kill())
  return service
}

type Outcome =
  | { kind: 'response'; status: number; headers: http.IncomingHttpHeaders; body: string; at: number }
  | { kind: 'closed'; error: string; at: number }

/**
 * A POST whose body the test writes piece by piece, when it wants (a slow or stalled client). Like a
 * careful client it stops writing once the answer arrives, and hangs up once the answer is read.
 */
function openUpload(target: { host: string; port: number }, path: string, headers: http.OutgoingHttpHeaders) {
  const request = http.request({ ...target, method: 'POST', path, headers, agent: false })
  let answered = false
  let sent = 0
  const outcome = new Promise<Outcome>((resolve) => {
    request.on('response', (response) => {
      answered = true
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => (body += chunk))
      response.on('end', () => {
        resolve({ kind: 'response', status: response.statusCode!, headers: response.headers, body, at: Date.now() })
        request.destroy()
      })
      response.on('error', (error) => resolve({ kind: 'closed', error: error.message, at: Date.now() }))
    })
    request.on('error', (error: NodeJS.ErrnoException) => resolve({ kind: 'closed', error: error.code ?? error.message, at: Date.now() }))
    request.on('close', () => resolve({ kind: 'closed', error: 'closed without an answer', at: Date.now() }))
  })
  return {
    outcome,
    get sent() {
      return sent
    },
    get stopped() {
      return answered || request.destroyed
    },
    /** Writes one piece, waiting for the socket to take it; does nothing once the exchange is over. */
    async write(piece: Buffer): Promise<void> {
      if (answered || request.destroyed) return
      sent += piece.length
      if (!request.write(piece)) {
        await new Promise<void>((drained) => {
          const done = () => {
            request.off('drain', done).off('response', done).off('close', done)
            drained()
          }
          request.on('drain', done).on('response', done).on('close', done)
        })
      }
    },
    end() {
      if (!answered && !request.destroyed) request.end()
    },
  }
}

function pieces(buffer: Buffer, size: number): Buffer[] {
  const out: Buffer[] = []
  for (let offset = 0; offset < buffer.length; offset += size) out.push(buffer.subarray(offset, offset + size))
  return out
}

/**
 * Tries to open a new connection every 25 ms until one is refused (the listener is closed) or `withinMs`
 * passes; says how long the refusal took, so a slow close on a loaded machine shows up as a figure.
 */
async function refusedWithin(target: { host: string; port: number }, withinMs: number): Promise<{ result: string; afterMs: number }> {
  const startedAt = Date.now()
  for (;;) {
    const result = await new Promise<string>((resolve) => {
      const socket = net.connect(target)
      socket.once('connect', () => {
        socket.destroy()
        resolve('connected')
      })
      socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message))
    })
    const afterMs = Date.now() - startedAt
    if (result !== 'connected' || afterMs >= withinMs) return { result, afterMs }
    await sleep(25)
  }
}

/** GET on a fresh connection (no keep-alive pool that shutdown would have to wait for). */
function get(target: { host: string; port: number }, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ ...target, path, agent: false }, (response) => {
        let body = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (body += chunk))
        response.on('end', () => resolve(body))
      })
      .on('error', reject)
  })
}

/** A sample of the service's own Prometheus text (METRICS_PORT unset and no API keys: /metrics is open). */
async function metric(target: { host: string; port: number }, series: string): Promise<number> {
  const text = await get(target, '/metrics')
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

t.test('SIGTERM during a slow upload: it finishes with 201 and a byte-exact object, new connections are refused, exit 0', async (t) => {
  // Long enough for the rest of the upload (about 0.8 s after the signal): the abort must never fire here.
  const SHUTDOWN_TIMEOUT_MS = 10_000
  const service = await startShutdownService(t, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS) })
  const keysBefore = await s3.keys()

  const image = pngOfSize(2 * MiB, 11)
  const upload = openUpload(service.target, '/v1/images?filename=slow.png', {
    'content-type': 'image/png',
    'content-length': String(image.length),
  })
  // 16 pieces of 128 KiB, 60 ms apart: about a second in all; SIGTERM after the fourth.
  let signalledAt = 0
  let refusal: Promise<{ result: string; afterMs: number }> | undefined
  for (const [index, piece] of pieces(image, 128 * KiB).entries()) {
    await upload.write(piece)
    if (index === 3) {
      t.equal(upload.stopped, false, 'the upload is still being sent when SIGTERM is sent')
      signalledAt = Date.now()
      service.child.kill('SIGTERM')
      await service.waitForLog((line) => line.msg === 'closing: finishing uploads in flight', 'the shutdown')
      // Probed while the upload goes on: on a loaded machine the close can take a while, and the body must not wait for it.
      refusal = refusedWithin(service.target, 4000)
    }
    await sleep(60)
  }
  upload.end()
  t.equal(upload.sent, image.length, 'the whole body was sent after SIGTERM went out')
  const { result, afterMs } = await refusal!
  t.equal(result, 'ECONNREFUSED', `a new connection after SIGTERM is refused (${afterMs} ms after the shutdown began)`)

  const outcome = await upload.outcome
  const status = outcome.kind === 'response' ? outcome.status : outcome.error
  const body = outcome.kind === 'response' ? outcome.body : ''
  t.equal(status, 201, `the upload in flight finishes: ${body.slice(0, 200)}`)
  t.ok(outcome.at - signalledAt > 500, `answered ${outcome.at - signalledAt} ms after SIGTERM, having received the rest of the body`)
  const newKeys = (await s3.keys()).filter((key) => !keysBefore.includes(key))
  if (status === 201) {
    const stored = JSON.parse(body) as StoredImage
    t.equal(stored.size, image.length, 'the whole body was stored')
    t.equal(stored.sha256, sha256(image), 'the service hashed exactly the bytes sent')
    t.equal(await s3.sha256Of(stored.key), sha256(image), 'the stored object is byte-exact')
    t.same(newKeys, [stored.key], 'exactly that object was stored')
  }

  const exit = await service.exited
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'the process exits 0')
  t.ok(
    exit.at - signalledAt < SHUTDOWN_TIMEOUT_MS,
    `it exits ${exit.at - signalledAt} ms after SIGTERM, once the upload is done (not at the timeout)`,
  )
  t.notOk(
    service.logs.some((line) => line.msg === 'closing: aborting the uploads still in flight'),
    'nothing was aborted',
  )
  t.ok(
    service.logs.some((line) => line.msg === 'closed'),
    'it logged that it closed',
  )
})

t.test(
  'SIGTERM with uploads that stall past SHUTDOWN_TIMEOUT_MS: they end, nothing is stored, no spool file is left, exit 0',
  async (t) => {
    const SHUTDOWN_TIMEOUT_MS = 2000
    // The service's temporary directory, where a body of unknown length is spooled.
    const spoolDir = await mkdtemp(path.join(tmpdir(), 'spool-'))
    t.teardown(() => rm(spoolDir, { recursive: true, force: true }))
    const spoolFiles = async () => (await readdir(spoolDir)).filter((name) => name.startsWith(SPOOL_FILE_PREFIX))
    const service = await startShutdownService(t, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS), TMPDIR: spoolDir })
    const keysBefore = await s3.keys()
    const headers = (size: number) => ({ 'content-type': 'image/png', 'content-length': String(size) })

    // Single-request size (<= 5 MiB: buffered, then one PutObject): half the body, then nothing.
    const small = pngOfSize(2 * MiB, 21)
    const stalledSmall = openUpload(service.target, '/v1/images?filename=stalled-small.png', headers(small.length))
    await stalledSmall.write(small.subarray(0, MiB))

    // Over 5 MiB of undeclared length (chunked: spooled to a temporary file): 7 of 12 MiB, then nothing.
    // (With a Content-Length it would be one streamed PutObject, which s3rver, unlike R2, would keep cut
    // short: "nothing stored" could not be checked here.)
    const large = pngOfSize(12 * MiB, 22)
    const stalledLarge = openUpload(service.target, '/v1/images?filename=stalled-large.png', { 'content-type': 'image/png' })
    await stalledLarge.write(large.subarray(0, 7 * MiB))

    // A trickle far slower than the timeout allows (1 KiB every 100 ms of 2 MiB), still going at the abort.
    const trickled = pngOfSize(2 * MiB, 23)
    const trickle = openUpload(service.target, '/v1/images?filename=trickle.png', headers(trickled.length))
    let trickling = true
    const trickler = (async () => {
      await trickle.write(trickled.subarray(0, 64 * KiB))
      for (let offset = 64 * KiB; trickling && !trickle.stopped && offset < trickled.length; offset += KiB) {
        await sleep(100)
        await trickle.write(trickled.subarray(offset, offset + KiB))
      }
    })()

    // All three are in the handler, and the large one really is being spooled, before the signal.
    await until('three uploads in flight', async () => (await metric(service.target, 'r2_uploads_in_flight')) === 3)
    await until('the large upload to be spooled', async () => (await spoolFiles()).length === 1)
    t.pass('three uploads are in flight, the large one being spooled')

    const signalledAt = Date.now()
    service.child.kill('SIGTERM')

    const uploads = { 'single-request size, stalled': stalledSmall, 'spooled size, stalled': stalledLarge, trickling: trickle }
    for (const [name, upload] of Object.entries(uploads)) {
      const outcome = await upload.outcome
      const after = outcome.at - signalledAt
      // Either answer ends the upload: a 503 problem, or (had the answer been lost) a closed connection.
      if (outcome.kind === 'response') {
        t.equal(outcome.status, 503, `${name}: 503 (${outcome.body.slice(0, 200)})`)
        t.match(outcome.headers['content-type'], PROBLEM_JSON, `${name}: a problem document`)
        t.equal((JSON.parse(outcome.body) as { code: string }).code, 'storage_unavailable', `${name}: storage_unavailable, retry`)
      } else {
        t.pass(`${name}: the connection was closed (${outcome.error})`)
      }
      t.ok(after >= SHUTDOWN_TIMEOUT_MS - 100, `${name}: it had the grace period (ended ${after} ms after SIGTERM)`)
      t.ok(after < SHUTDOWN_TIMEOUT_MS + 2000, `${name}: it ended ${after} ms after SIGTERM, soon after the timeout`)
    }
    trickling = false
    await trickler

    const exit = await service.exited
    t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'the process exits 0')
    t.ok(
      exit.at - signalledAt < SHUTDOWN_TIMEOUT_MS + 3000,
      `it exits ${exit.at - signalledAt} ms after SIGTERM (timeout ${SHUTDOWN_TIMEOUT_MS} ms)`,
    )
    t.ok(
      service.logs.some((line) => line.msg === 'closing: aborting the uploads still in flight'),
      'the late uploads were aborted',
    )
    t.notOk(
      service.logs.some((line) => line.msg === 'image stored' || line.sha256 !== undefined),
      'no log line reports a stored image',
    )
    t.same(
      (await s3.keys()).filter((key) => !keysBefore.includes(key)),
      [],
      'no object was stored',
    )
    t.same(await spoolFiles(), [], 'the spool file is removed')
  },
)

t.test('a client that neither reads the 503 nor hangs up holds the exit for LINGER_MS at most', async (t) => {
  // What fly.toml's kill_timeout must allow for beyond SHUTDOWN_TIMEOUT_MS (test/deploy.test.ts checks it).
  const SHUTDOWN_TIMEOUT_MS = 2000
  const service = await startShutdownService(t, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS) })
  const keysBefore = await s3.keys()
  const image = pngOfSize(2 * MiB, 31)
  const socket = net.connect(service.target)
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.on('error', () => {})
  socket.pause() // never reads the answer
  socket.write(
    `POST /v1/images?filename=deaf.png HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: ${image.length}\r\n\r\n`,
  )
  socket.write(image.subarray(0, 256 * KiB))
  let offset = 256 * KiB
  const trickle = setInterval(() => {
    if (socket.destroyed || offset >= image.length) return
    socket.write(image.subarray(offset, offset + KiB))
    offset += KiB
  }, 100)
  t.teardown(() => {
    clearInterval(trickle)
    socket.destroy()
  })
  await until('the upload to be in flight', async () => (await metric(service.target, 'r2_uploads_in_flight')) === 1)

  const signalledAt = Date.now()
  service.child.kill('SIGTERM')
  const exit = await service.exited
  const after = exit.at - signalledAt
  t.comment(`exited ${after} ms after SIGTERM (SHUTDOWN_TIMEOUT_MS ${SHUTDOWN_TIMEOUT_MS}, LINGER_MS ${LINGER_MS})`)
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'the process exits 0')
  t.ok(after >= SHUTDOWN_TIMEOUT_MS - 100, `the upload had its grace period (exit after ${after} ms)`)
  t.ok(after < SHUTDOWN_TIMEOUT_MS + LINGER_MS + 2000, `exit within SHUTDOWN_TIMEOUT_MS + LINGER_MS (+2 s): ${after} ms`)
  t.same(
    (await s3.keys()).filter((key) => !keysBefore.includes(key)),
    [],
    'no object was stored',
  )
})
