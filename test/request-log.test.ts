import { Writable } from 'node:stream'
import t from 'tap'
import { buildTestApp } from './helpers/app.js'
import { piecesOf, streamUpload } from './helpers/client.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

t.test('the request log: bytesIn counts the body bytes read, chunked or of declared length', async (t) => {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
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
  }
})
