import { once } from 'node:events'
import net from 'node:net'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import t from 'tap'
import requestLog from '../src/plugins/request-log.js'
import { buildTestApp } from './helpers/app.js'
import { piecesOf, streamUpload } from './helpers/client.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { until } from './helpers/wait.js'

t.test('the request log: bytesIn counts the body bytes read, chunked or of declared length', async (t) => {
  const { lines, stream } = logCapture()
  const { app } = await buildTestApp(t, {}, { logger: { level: 'info', stream } })
  const service = await listen(app)
  const data = pngOfSize(300_000, 7)
  const form = multipartBody([{ name: 'file', filename: 'portrait.png', data }])

  const uploads: [string, Record<string, string>, Buffer][] = [
    // Without a content-length header, Node's client sends Transfer-Encoding: chunked.
    ['a chunked raw body', { 'content-type': 'image/png' }, data],
    ['a chunked form', form.headers, form.payload],
    ['a raw body of declared length', { 'content-type': 'image/png', 'content-length': String(data.length) }, data],
  ]
  for (const [what, headers, body] of uploads) {
    const first = lines.length
    const answer = await streamUpload(service, '/v1/images', headers, piecesOf(body, 16 * 1024))
    t.equal(answer.status, 201, `${what}: 201`)
    const { key } = JSON.parse(answer.body) as { key: string }
    const served = await app.inject({ url: `/files/${key}` })
    t.equal(sha256(served.rawPayload), sha256(data), `${what}: stored byte-exact`)
    const logged = lines.slice(first).find((line) => line.msg === 'request' && line.route === '/v1/images')
    t.equal(logged?.bytesIn, body.length, `${what}: bytesIn is the ${body.length} bytes sent`)
    t.match(
      logged,
      { status: 201, key, size: data.length, type: 'image/png', sha256: sha256(data) },
      `${what}: the request's line names what was stored`,
    )
    t.notOk(
      lines.slice(first).some((line) => line.msg === 'image stored'),
      `${what}: and is the upload's only line`,
    )
  }
})

t.test("fields added to a request's line: in it until it is written, refused after", async (t) => {
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(requestLog)
  const added: boolean[] = []
  app.get('/answered', async (request) => {
    added.push(request.addToLogLine({ key: 'a/b.png' }))
    return { ok: true }
  })
  // Answers only once its client has gone: its line is written (499) before it adds anything.
  let leftArrived = false
  app.get('/left', async (request, reply) => {
    leftArrived = true
    await once(reply.raw, 'close')
    added.push(request.addToLogLine({ key: 'c/d.png' }))
    return { ok: true }
  })
  const service = await listen(app)

  await app.inject({ url: '/answered' })
  t.match(
    lines.find((line) => line.route === '/answered'),
    { msg: 'request', status: 200, key: 'a/b.png' },
    'added before the answer: in the line',
  )

  const socket = net.connect(service.port, service.host)
  socket.write('GET /left HTTP/1.1\r\nHost: x\r\n\r\n')
  await until('the request to arrive', () => leftArrived)
  socket.destroy()
  await until('the route to add its fields', () => added.length === 2)
  const left = lines.find((line) => line.route === '/left')
  t.match(left, { msg: 'request', status: 499, code: 'client_closed' }, 'a client that left: its line is written at once')
  t.notOk(left && 'key' in left, 'without what was added after it')
  t.same(added, [true, false], 'adding said so: true, then false (the caller logs the fields itself)')
})

/** A log stream that keeps each JSON line, parsed. */
function logCapture() {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { lines, stream }
}
