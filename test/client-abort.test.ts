import net from 'node:net'
import { Writable } from 'node:stream'
import t from 'tap'
import { buildTestApp, gauge } from './helpers/app.js'
import { streamUpload } from './helpers/client.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2DriverOf, r2Env, startS3 } from './helpers/s3.js'
import { startS3Recorder } from './helpers/s3-recorder.js'
import { isolatedSpoolDir } from './helpers/spool.js'
import { until } from './helpers/wait.js'

// Clients that disconnect at 0 % (headers only), 50 % and 99 % of their body, for a one-part and a file
// over one part, raw and as a form of declared length (over one part: streamed in one PutObject), and as a
// chunked form (over one part: spooled to a temporary file, then one PutObject). Proven for each: no new
// object in the bucket (listed on the S3 server itself), no spool file left, no multipart upload left neither completed nor aborted (the recorder between the service
// and the S3 server sees every request: s3rver itself cannot list multipart uploads), the metrics and the
// log count the abort (the SDK's warning of a failed streamed PutObject included, in the log and not on
// the console), and the same instance then stores a whole upload byte-exact.

const KiB = 1024
const MiB = 1024 * 1024
const PART_BYTES = 5 * MiB // the R2 driver's part size
const WIRE_CHUNK = 64 * KiB
const MAX_CONCURRENT_UPLOADS = 2

t.setTimeout(60_000)

const s3 = await startS3()
t.teardown(() => s3.stop())
const recorder = await startS3Recorder(s3.endpoint)
t.teardown(() => recorder.stop())
const spool = await isolatedSpoolDir(t)

const logLines: Record<string, unknown>[] = []
const logStream = new Writable({
  write(chunk: Buffer, _encoding, done) {
    for (const line of chunk.toString('utf8').split('\n')) if (line) logLines.push(JSON.parse(line) as Record<string, unknown>)
    done()
  },
})
// What the service or a library it uses prints on the console, outside its log.
const consoleWarnings: unknown[][] = []
const consoleWarn = console.warn
console.warn = (...args: unknown[]) => {
  consoleWarnings.push(args)
  consoleWarn(...args)
}
t.teardown(() => {
  console.warn = consoleWarn
})
// One instance for the whole file: it must keep serving after every abort, with no slot held.
const { app } = await buildTestApp(
  t,
  { ...r2Env(recorder.endpoint), MAX_CONCURRENT_UPLOADS: String(MAX_CONCURRENT_UPLOADS) },
  { logger: { level: 'info', stream: logStream } },
)
const service = await listen(app)

async function inFlight(): Promise<number> {
  return (await gauge(app, 'uploadsInFlight')) ?? 0
}

async function uploadErrors(of = app): Promise<Record<string, number>> {
  return Object.fromEntries((await of.metrics.uploadErrors.get()).values.map((sample) => [sample.labels.error_type!, sample.value]))
}

async function abortsCounted(): Promise<number> {
  const samples = (await app.metrics.operations.get()).values.filter((sample) => sample.labels.operation === 'AbortMultipartUpload')
  return samples.reduce((sum, sample) => sum + sample.value, 0)
}

/** Upload requests measured in http_request_duration_seconds as 499: the client left before any answer. */
async function unansweredUploadsMeasured(): Promise<number> {
  const { values } = await app.metrics.httpDuration.get()
  const count = values.find(
    (sample) =>
      sample.metricName === 'http_request_duration_seconds_count' &&
      sample.labels.route === '/v1/images' &&
      sample.labels.status_code === '499',
  )
  return count?.value ?? 0
}

/**
 * Sends the request head and the first `cutAt` bytes of the body over a raw socket, waits for `beforeCut`,
 * then disconnects. Returns what the service wrote back before the cut.
 */
async function sendAndCut(
  head: string,
  body: Buffer,
  cutAt: number,
  beforeCut: () => Promise<void>,
  to: { host: string; port: number } = service,
): Promise<string> {
  const socket = net.connect(to.port, to.host)
  let answered = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => (answered += chunk))
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const write = (data: string | Buffer) =>
    new Promise<void>((resolve, reject) => socket.write(data, (error) => (error ? reject(error) : resolve())))
  await write(head)
  for (let offset = 0; offset < cutAt; offset += WIRE_CHUNK) await write(body.subarray(offset, Math.min(offset + WIRE_CHUNK, cutAt)))
  await beforeCut()
  socket.destroy()
  return answered
}

async function* piecesOf(payload: Buffer): AsyncGenerator<Buffer> {
  for (let offset = 0; offset < payload.length; offset += WIRE_CHUNK) yield payload.subarray(offset, offset + WIRE_CHUNK)
}

const requestHead = (path: string, headers: Record<string, string | number>) =>
  [
    `POST ${path} HTTP/1.1`,
    `Host: ${service.host}:${service.port}`,
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    '',
    '',
  ].join('\r\n')

const CHUNKED_FORM = 'multipart/form-data, chunked'

/** `payload` as HTTP/1.1 chunks of WIRE_CHUNK bytes, with the last chunk. */
function chunkedEncoding(payload: Buffer): Buffer {
  const pieces: Buffer[] = []
  for (let offset = 0; offset < payload.length; offset += WIRE_CHUNK) {
    const piece = payload.subarray(offset, offset + WIRE_CHUNK)
    pieces.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'))
  }
  return Buffer.concat([...pieces, Buffer.from('0\r\n\r\n')])
}

/** How a file goes up: the body with its headers, sent whole or cut by the callers. */
const ENCODINGS = {
  'raw body': (data: Buffer) => ({
    path: '/v1/images?filename=portrait.png',
    headers: { 'content-type': 'image/png', 'content-length': data.length },
    body: data,
  }),
  'multipart/form-data': (data: Buffer) => {
    const { payload, headers } = multipartBody([{ name: 'file', filename: 'portrait.png', contentType: 'image/png', data }])
    return { path: '/v1/images', headers: { ...headers, 'content-length': payload.length }, body: payload }
  },
  [CHUNKED_FORM]: (data: Buffer) => {
    const { payload, headers } = multipartBody([{ name: 'file', filename: 'portrait.png', contentType: 'image/png', data }])
    return { path: '/v1/images', headers: { ...headers, 'transfer-encoding': 'chunked' }, body: chunkedEncoding(payload), whole: payload }
  },
}

const SIZES = {
  'one-part (600 KB)': 600_000, // one PutObject, sent only once the whole body is in
  'over one part (12 MiB)': 12 * MiB, // declared length: one PutObject as the body arrives; chunked form: spooled, then one PutObject
}

for (const [sizeName, size] of Object.entries(SIZES)) {
  const data = pngOfSize(size, size % 251)
  for (const [encodingName, encode] of Object.entries(ENCODINGS)) {
    const encoded = encode(data)
    const { path, headers, body } = encoded
    for (const percent of [0, 50, 99]) {
      t.test(`${sizeName}, ${encodingName}, cut at ${percent} %`, async (t) => {
        const cutAt = Math.floor((body.length * percent) / 100)
        const keysBefore = await s3.keys()
        const errorsBefore = await uploadErrors()
        const abortsBefore = await abortsCounted()
        const unansweredBefore = await unansweredUploadsMeasured()
        const firstRequest = recorder.requests.length
        const firstLogLine = logLines.length
        const firstConsoleWarning = consoleWarnings.length
        const sentToS3 = () => recorder.requests.slice(firstRequest)
        // A body of declared length over one part (a raw body, or a form whose file length follows from its
        // Content-Length) streams to S3 as it arrives, in one PutObject, which must be under way at the cut;
        // a chunked form's file (length unknown) over one part is spooled to a file, which must exist at the
        // cut; and at 0 % the service must hold the request.
        const chunked = encodingName === CHUNKED_FORM
        const streamed = !chunked && size > PART_BYTES
        const spooled = chunked && cutAt > PART_BYTES
        const putStarted = () => sentToS3().some((request) => request.operation === 'PutObject')
        const underWay = async () => (!streamed || percent === 0 || putStarted()) && (!spooled || (await spool.files()).length === 1)

        const answered = await sendAndCut(requestHead(path, headers), body, cutAt, () =>
          until(`the upload in flight${spooled ? ', spooling' : ''}`, async () => (await inFlight()) === 1 && (await underWay())),
        )
        t.equal(answered, '', 'no answer before the cut')

        const closedAfter = (errorsBefore.client_closed ?? 0) + 1
        await until('the abort counted', async () => (await uploadErrors()).client_closed === closedAfter && (await inFlight()) === 0)
        await recorder.idle()
        const sent = sentToS3()
        t.comment(
          `sent to S3: ${sent.map((r) => `${r.operation}${r.partNumber ? ` #${r.partNumber}` : ''} → ${r.status ?? 'cut'}`).join(', ') || 'nothing'}`,
        )

        // s3rver keeps the bytes of a PUT cut short (R2 does not): the service deletes the key after any
        // failed write, in the background, which is waited for here.
        if (streamed) await until('the cut-short PutObject cleaned up', async () => (await s3.keys()).length === keysBefore.length)
        t.same(await s3.keys(), keysBefore, 'no new object in the bucket')
        t.same(await spool.files(), [], 'no spool file left')
        t.same(recorder.unfinishedMultipartUploads(), [], 'every multipart upload started was completed or aborted')
        const committed = (r: (typeof sent)[number]) =>
          (r.operation === 'PutObject' || r.operation === 'CompleteMultipartUpload') && r.status === 200
        t.notOk(sent.some(committed), 'nothing was committed')
        if (streamed)
          t.equal(
            sent.filter((r) => r.operation === 'PutObject').length,
            percent === 0 ? 0 : 1,
            'the body was being streamed in one PutObject, cut short',
          )
        else
          t.notOk(
            sent.some((r) => r.operation === 'PutObject'),
            'no PutObject was sent before the whole body was in',
          )
        const aborts = sent.filter((r) => r.operation === 'AbortMultipartUpload')
        t.same(
          sent.filter((r) => r.operation === 'CreateMultipartUpload'),
          [],
          'no multipart upload was started',
        )
        t.same(aborts, [], 'so none to abort')
        t.equal(await abortsCounted(), abortsBefore + aborts.length, 'r2_operations_total counts the abort sent')
        t.same(
          await uploadErrors(),
          { ...errorsBefore, client_closed: closedAfter },
          'r2_upload_errors_total{error_type="client_closed"} + 1, nothing else',
        )
        t.equal(await unansweredUploadsMeasured(), unansweredBefore + 1, 'http_request_duration_seconds{status_code="499"} + 1')
        const requestLines = logLines.slice(firstLogLine).filter((line) => line.msg === 'request')
        t.same(
          requestLines.map(({ route, status, code }) => ({ route, status, code })),
          [{ route: '/v1/images', status: 499, code: 'client_closed' }],
          'one request log line, status 499, code client_closed',
        )
        // The SDK warns of each streamed PutObject that fails (it never retries one): in the log, not on the console.
        t.equal(
          logLines.slice(firstLogLine).filter((line) => line.level === 40 && line.storage === 'r2').length,
          streamed && percent > 0 ? 1 : 0,
          streamed && percent > 0 ? "the SDK's warning of the failed streamed PutObject is a warn line of the log" : 'no storage warning',
        )
        t.same(consoleWarnings.slice(firstConsoleWarning), [], 'nothing printed on the console')

        // Sent again whole by Node's client, which frames it itself (chunked when no length is given).
        const { 'transfer-encoding': _framing, ...wholeHeaders } = headers as Record<string, string | number>
        const whole = await streamUpload(service, path, wholeHeaders, piecesOf('whole' in encoded ? encoded.whole : body))
        t.equal(whole.status, 201, 'then a whole upload is stored')
        t.equal(await s3.sha256Of(JSON.parse(whole.body).key), sha256(data), 'and reads back byte-exact')
      })
    }
  }
}

t.test('after every abort, no upload slot is held: as many uploads as allowed at once are stored', async (t) => {
  t.equal(await inFlight(), 0, 'r2_uploads_in_flight is 0')
  const images = Array.from({ length: MAX_CONCURRENT_UPLOADS }, (_, index) => pngOfSize(600_000, 100 + index))
  const answers = await Promise.all(
    images.map((image) => {
      const { path, headers, body } = ENCODINGS['raw body'](image)
      return streamUpload(service, path, headers, piecesOf(body))
    }),
  )
  for (const [index, answer] of answers.entries()) {
    t.equal(answer.status, 201, `upload ${index + 1} of ${MAX_CONCURRENT_UPLOADS}: 201, not 503 server_busy`)
    t.equal(await s3.sha256Of(JSON.parse(answer.body).key), sha256(images[index]!), 'byte-exact')
  }
  t.same(recorder.unfinishedMultipartUploads(), [], 'in the whole file, no multipart upload left unfinished')
})

t.test('a client that leaves while its whole body is being stored: the PutObject completes, then its object is deleted', async (t) => {
  // A body held whole (up to one part) goes in one PutObject that the upload's abort does not cut short; an
  // upload aborted meanwhile fails once it is done, and the object it stored is deleted like any failed write's.
  const { app: holding } = await buildTestApp(t, r2Env(s3.endpoint))
  let putAnswered = false
  let release!: () => void
  const released = new Promise<void>((resolve) => (release = resolve))
  // Holds the PutObject's answer (the object is stored by then) until the client has gone.
  r2DriverOf(holding).client.middlewareStack.add(
    (next, context) => async (args) => {
      const result = await next(args)
      if (context.commandName === 'PutObjectCommand') {
        putAnswered = true
        await released
      }
      return result
    },
    { step: 'initialize', name: 'testHoldPutObjectAnswer' },
  )
  const target = await listen(holding)
  const keysBefore = await s3.keys()
  const { path, headers, body } = ENCODINGS['raw body'](pngOfSize(600_000, 77))

  const answered = await sendAndCut(
    requestHead(path, headers),
    body,
    body.length,
    () => until('the PutObject answered', () => putAnswered),
    target,
  )
  t.equal(answered, '', 'no answer before the client left')
  t.equal((await s3.keys()).length, keysBefore.length + 1, 'the object was stored while the client was leaving')
  release()
  await until('the abort counted', async () => (await uploadErrors(holding)).client_closed === 1)
  await until('the object deleted', async () => (await s3.keys()).length === keysBefore.length)
  t.same(await s3.keys(), keysBefore, 'then deleted: nothing is left of an upload whose client left before its answer')
})
