import { once } from 'node:events'
import { readFile, writeFile } from 'node:fs/promises'
import net from 'node:net'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { buildTestApp } from './helpers/app.js'
import { piecesOf, streamUpload } from './helpers/client.js'
import { buffersKeptFromNow } from './helpers/gc.js'
import { png, pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { buildService, startService as startServiceProcess } from './helpers/service-process.js'

// Memory is measured where it is spent: the peak RSS of the service in a process of its own.
t.setTimeout(600_000)

const KiB = 1024
const MiB = 1024 * 1024

const s3 = await startS3()
t.teardown(() => s3.stop())

/** Starts src/server.ts on the local S3 server, in a process of its own (its memory is what is measured). */
async function startService(t: Test, env: NodeJS.ProcessEnv = {}, built?: { cwd: string }) {
  const service = await startServiceProcess({
    env: { ...r2Env(s3.endpoint), LOG_LEVEL: 'info', USAGE_SCAN_INTERVAL_S: '0', ...env },
    keepLogs: false,
    ...(built && { entry: 'built', cwd: built.cwd }),
  })
  t.teardown(() => service.kill())
  return service
}

/** The process's peak resident set (VmHWM), in bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmHWM:\s+(\d+) kB$/m.exec(status)![1]) * KiB
}

/** Starts the peak over from the current resident set (Linux: "5" to clear_refs), so a growth can be read. */
async function resetPeakRss(pid: number): Promise<number> {
  await writeFile(`/proc/${pid}/clear_refs`, '5')
  return peakRss(pid)
}

/** `body` as an HTTP/1.1 chunked body of `chunkSize`-byte chunks: Node hands the service one Buffer per chunk. */
function chunkedBody(body: Buffer, chunkSize: number): Buffer {
  const pieces: Buffer[] = []
  const sizeLine = Buffer.from(`${chunkSize.toString(16)}\r\n`)
  const crlf = Buffer.from('\r\n')
  for (let offset = 0; offset < body.length; offset += chunkSize) {
    const data = body.subarray(offset, offset + chunkSize)
    pieces.push(data.length === chunkSize ? sizeLine : Buffer.from(`${data.length.toString(16)}\r\n`), data, crlf)
  }
  pieces.push(Buffer.from('0\r\n\r\n'))
  return Buffer.concat(pieces)
}

/** POSTs `wire` (an already chunk-encoded body) in one write, and reads the answer. */
async function postChunked(target: { host: string; port: number }, path: string, contentType: string, wire: Buffer) {
  const socket = net.connect(target)
  await once(socket, 'connect')
  const head = `POST ${path} HTTP/1.1\r\nHost: ${target.host}\r\nContent-Type: ${contentType}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`
  const received: Buffer[] = []
  socket.on('data', (chunk: Buffer) => received.push(chunk))
  // Not half-closed: the service closes the connection once it has answered (Connection: close).
  socket.write(head)
  socket.write(wire)
  await once(socket, 'close')
  const answer = Buffer.concat(received).toString('utf8')
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0)
  const body = answer.slice(answer.indexOf('\r\n\r\n') + 4)
  return { status, body }
}

/** An SVG of about `size` bytes: a small drawing, the rest a comment. */
function svgOfSize(size: number): Buffer {
  const head = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect width="40" height="30"/><!-- '
  const tail = ' --></svg>'
  return Buffer.from(head + 'x'.repeat(size - head.length - tail.length) + tail)
}

const IMAGE_BYTES = MiB
const uploads = {
  raw: () => {
    const file = pngOfSize(IMAGE_BYTES)
    return { file, contentType: 'image/png', body: file }
  },
  form: () => {
    const file = pngOfSize(IMAGE_BYTES)
    const form = multipartBody([
      { name: 'context', value: 'portraits' },
      { name: 'file', filename: 'tiny-chunks.png', contentType: 'image/png', data: file },
    ])
    return { file, contentType: form.headers['content-type'], body: form.payload }
  },
  svg: () => {
    const file = svgOfSize(IMAGE_BYTES - 4 * KiB)
    return { file, contentType: 'image/svg+xml', body: file }
  },
}

const GROWTH_LIMIT = 64 * MiB

for (const [kind, make] of Object.entries(uploads)) {
  t.test(
    `a ${kind} upload of ${IMAGE_BYTES / MiB} MiB in 1-, 2- and 3-byte chunks: peak RSS grows less than 64 MiB, stored byte-exact`,
    async (t) => {
      const { file, contentType, body } = make()
      for (const chunkSize of [1, 2, 3]) {
        // A fresh process for each: memory a previous upload left committed would hide this one's growth.
        const service = await startService(t, { ALLOWED_TYPES: 'image/png,image/svg+xml' })
        // Warmed up first: the modules an upload loads on first use are not the upload's memory.
        const warmUpImage = png()
        const warmUp = await postChunked(service.target, '/v1/images', 'image/png', chunkedBody(warmUpImage, 64 * KiB))
        t.equal(warmUp.status, 201, warmUp.body)
        t.equal(await s3.sha256Of((JSON.parse(warmUp.body) as { key: string }).key), sha256(warmUpImage), 'the warm-up is byte-exact')
        const wire = chunkedBody(body, chunkSize)
        const before = await resetPeakRss(service.pid)
        const answer = await postChunked(service.target, '/v1/images', contentType, wire)
        const growth = (await peakRss(service.pid)) - before
        t.comment(
          `${kind}, ${chunkSize}-byte chunks (${Math.ceil(body.length / chunkSize)} of them): peak RSS grew ${(growth / MiB).toFixed(1)} MiB`,
        )
        t.equal(answer.status, 201, answer.body)
        const stored = JSON.parse(answer.body) as { key: string; sha256: string }
        t.equal(stored.sha256, sha256(file))
        t.equal(await s3.sha256Of(stored.key), sha256(file), 'the stored object is byte-exact')
        t.ok(growth < GROWTH_LIMIT, `peak RSS grew ${(growth / MiB).toFixed(1)} MiB (< 64 MiB)`)
      }
    },
  )
}

t.test('16 concurrent chunked form uploads of 50 MiB: each stored byte-exact, peak RSS under 200 MiB', async (t) => {
  // The service as production runs it: compiled, with npm start's node options (tsx alone adds ~15 MiB).
  const built = await buildService()
  t.teardown(() => built.remove())
  const service = await startService(t, {}, built)
  const file = pngOfSize(50 * MiB, 7)
  const { payload, headers } = multipartBody([{ name: 'file', filename: 'large.png', contentType: 'image/png', data: file }])
  // No Content-Length: Node sends the body chunked, so the service cannot know its length until it ends.
  const answers = await Promise.allSettled(
    Array.from({ length: 16 }, () => streamUpload(service.target, '/v1/images', headers, piecesOf(payload))),
  )
  const peak = await peakRss(service.pid)
  t.comment(`16 × 50 MiB chunked form uploads at once: peak RSS ${(peak / MiB).toFixed(1)} MiB`)
  for (const [index, answer] of answers.entries()) {
    if (answer.status === 'rejected') {
      t.fail(`upload ${index + 1}: ${String(answer.reason)}`)
      continue
    }
    t.equal(answer.value.status, 201, `upload ${index + 1}: ${answer.value.body.slice(0, 200)}`)
    if (answer.value.status !== 201) continue
    t.equal(await s3.sha256Of((JSON.parse(answer.value.body) as { key: string }).key), sha256(file), `upload ${index + 1}: byte-exact`)
  }
  // A part queue took 457 MiB here; spooling holds 256 KiB and a few blocks per upload. Idle, the compiled
  // service holds ~98 MiB on Node 24 (~85 on Node 20); the rest is blocks in flight and dead Buffers not yet
  // collected (README, memory per upload).
  t.ok(peak < 200 * MiB, `peak RSS ${(peak / MiB).toFixed(1)} MiB (< 200 MiB)`)
})

t.test('an answered upload holds none of its bytes, stored or refused, held whole or streamed', async (t) => {
  // Measured in this process: what an upload leaves reachable here is what the service would keep. Anything
  // left listening on an upload's abort signal is kept by the service's shutdown signal, which every
  // upload's signal depends on: a listener left there once kept every upload's body.
  // s3rver in a process of its own, so that only the service's buffers are counted.
  const ownS3 = await startS3({ ownProcess: true })
  t.teardown(() => ownS3.stop())
  // Read back from the S3 server, or through /files, which only the local-disk driver serves.
  const fromR2 = async (_app: unknown, key: string) => ownS3.sha256Of(key)
  const fromDisk = async (app: FastifyInstance, key: string) =>
    sha256((await app.inject({ method: 'GET', url: `/files/${key}` })).rawPayload)
  for (const [storage, env, size, storedSha256] of [
    ['the local disk', {}, 500 * KiB, fromDisk],
    ['R2, a body held whole', r2Env(ownS3.endpoint), 500 * KiB, fromR2],
    ['R2, a body streamed with its length', r2Env(ownS3.endpoint), 6 * MiB, fromR2],
  ] as const) {
    const { app } = await buildTestApp(t, { ...env, RATE_LIMIT_PER_MINUTE: '10000' })
    const image = pngOfSize(size, 3)
    const form = multipartBody([{ name: 'file', filename: 'portrait.png', contentType: 'image/png', data: image }])
    const notAnImage = Buffer.alloc(size, 'not an image ')
    const uploadsOf = async (count: number) => {
      const statuses: number[] = []
      const keys: string[] = []
      for (let i = 0; i < count; i++) {
        for (const request of [
          { headers: { 'content-type': 'image/png' }, payload: image },
          { headers: form.headers, payload: form.payload },
          { headers: { 'content-type': 'image/png' }, payload: notAnImage },
        ]) {
          const response = await app.inject({ method: 'POST', url: '/v1/images', ...request })
          statuses.push(response.statusCode)
          if (response.statusCode === 201) keys.push(response.json().key)
        }
      }
      return { statuses, keys }
    }
    const warmUp = await uploadsOf(2) // the modules an upload loads on first use are not its memory
    const buffersKept = buffersKeptFromNow()
    const count = Math.ceil((10 * MiB) / size)
    const { statuses, keys } = await uploadsOf(count)
    const held = buffersKept()
    t.same(new Set(statuses), new Set([201, 415]), `${storage}: stored, and refused as no image`)
    const uploaded = `${2 * count} uploads and ${count} refusals of ${size / KiB} KiB`
    t.ok(held < 2 * MiB, `${storage}: ${(held / MiB).toFixed(1)} MiB of buffers held after ${uploaded} (< 2 MiB)`)
    const stored = [...warmUp.keys, ...keys]
    t.equal(stored.length, 2 * (count + 2), `${storage}: ${stored.length} stored`)
    const exact = []
    for (const key of stored) if ((await storedSha256(app, key)) === sha256(image)) exact.push(key)
    t.same(exact, stored, `${storage}: every one stored byte-exact`)
  }
})
