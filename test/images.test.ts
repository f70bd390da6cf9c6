import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { InjectOptions } from 'fastify'
import t from 'tap'
import { FsDriver } from '../src/storage/fs.js'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { piecesOf, streamUpload } from './helpers/client.js'
import { listen, rawRequest } from './helpers/http.js'
import { gif, jpeg, png, pngOfSize, sha256, webp } from './helpers/images.js'
import { type FormPart, multipartBody } from './helpers/multipart.js'
import { CURL, haveCurl } from './helpers/system-tools.js'

const KEY_PATTERN = /^(?<context>[a-z0-9][a-z0-9_-]*)\/\d{4}\/\d{2}\/[a-z]{20}_(?<stem>[A-Za-z0-9_-]{1,50})\.(?<ext>jpg|png|gif|webp)$/
const filePart = (data: Buffer, filename = 'portrait.png', contentType = 'image/png'): FormPart => ({
  name: 'file',
  filename,
  contentType,
  data,
})
const form = (...parts: FormPart[]) => ({ method: 'POST' as const, url: '/v1/images', ...multipartBody(parts) })

t.test('type is decided by content, not by the name or the declared type', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const image = png(4, 3)

  const multipart = await app.inject(form(filePart(image, 'x.jpg', 'image/jpeg')))
  t.equal(multipart.statusCode, 201)
  const body = multipart.json()
  t.match(body, { content_type: 'image/png', filename: 'x.jpg', size: image.length, sha256: sha256(image), width: 4, height: 3 })
  t.match(body.key, KEY_PATTERN)
  t.match(body.key, /_x\.png$/, 'a .png key for PNG bytes named x.jpg')
  t.equal(body.url, `http://localhost:3000/files/${body.key}`)
  t.equal(multipart.headers.location, body.url)

  const raw = await app.inject({
    method: 'POST',
    url: '/v1/images?filename=x.jpg',
    headers: { 'content-type': 'image/jpeg' },
    payload: image,
  })
  t.equal(raw.statusCode, 201)
  t.match(raw.json(), { content_type: 'image/png', key: /_x\.png$/ })

  const served = await app.inject({ method: 'GET', url: `/files/${body.key}` })
  t.equal(served.statusCode, 200)
  t.equal(served.headers['content-type'], 'image/png')
  t.equal(sha256(served.rawPayload), sha256(image), 'the url serves the same bytes')

  const before = await storedFiles(dataDir)
  for (const [name, content] of [
    ['plain text', 'just some text, not an image at all'],
    ['HTML', '<!doctype html><html><body><img src=x onerror=alert(1)></body></html>'],
    ['a PDF', '%PDF-1.4\n%âãÏÓ\n1 0 obj\n<<>>\nendobj\n'],
  ] as const) {
    for (const request of [
      form(filePart(Buffer.from(content), 'x.png', 'image/png')),
      { method: 'POST' as const, url: '/v1/images?filename=x.png', headers: { 'content-type': 'image/png' }, payload: content },
    ]) {
      const refused = await app.inject(request)
      t.equal(refused.statusCode, 415, `${name} is refused`)
      t.equal(refused.headers['content-type'], 'application/problem+json; charset=utf-8')
      t.equal(refused.json().code, 'unsupported_media_type')
    }
  }
  t.same(await storedFiles(dataDir), before, 'nothing stored for the refused uploads')
})

t.test('JPEG, GIF and WebP are stored with their type, extension and dimensions', async (t) => {
  const { app } = await buildTestApp(t)
  for (const [image, type, ext, width, height] of [
    [jpeg(640, 480), 'image/jpeg', 'jpg', 640, 480],
    [gif(6, 2), 'image/gif', 'gif', 6, 2],
    [webp(300, 200), 'image/webp', 'webp', 300, 200],
  ] as const) {
    const response = await app.inject(form(filePart(image, `hero.${ext}`)))
    t.equal(response.statusCode, 201, type)
    t.match(response.json(), { content_type: type, key: new RegExp(`_hero\\.${ext}$`), width, height })
  }
})

t.test('a PNG whose first chunk is larger than the bytes read to decide its type is still a PNG', async (t) => {
  const { app } = await buildTestApp(t)
  const image = pngOfSize(300_000, 5, 'prVt') // a private chunk of 300 KB before any image data
  for (const request of [
    form(filePart(image)),
    { method: 'POST' as const, url: '/v1/images?filename=big.png', headers: { 'content-type': 'image/png' }, payload: image },
  ]) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 201)
    t.match(response.json(), { content_type: 'image/png', width: 16, height: 16, size: image.length })
    const served = await app.inject({ method: 'GET', url: `/files/${response.json().key}` })
    t.equal(sha256(served.rawPayload), sha256(image), 'stored byte-exact')
  }
})

t.test('ALLOWED_TYPES narrows what is accepted', async (t) => {
  const { app } = await buildTestApp(t, { ALLOWED_TYPES: 'image/png' })
  t.equal((await app.inject(form(filePart(png())))).statusCode, 201)
  const refused = await app.inject(form(filePart(jpeg(), 'a.jpg')))
  t.equal(refused.statusCode, 415)
  t.match(refused.json().detail, /image\/jpeg/)
})

t.test('a corrupt header is refused, not stored', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const truncated = png().subarray(0, 20) // signature and part of IHDR: recognisable, but no dimensions
  const response = await app.inject(form(filePart(truncated)))
  t.equal(response.statusCode, 415)
  t.same(await storedFiles(dataDir), [])
})

t.test("an image's header is read up to 1 MiB, however its chunks fall: a size marker past that is refused", async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const server = await listen(app)
  // A JPEG whose size marker follows 64 KiB application segments, as large EXIF blocks do. Its first 5,000
  // bytes arrive alone, so that what is read doubles from there: from 987,144 bytes, just under 1 MiB, the
  // next doubling would read on to nearly 2 MiB.
  const segment = Buffer.concat([Buffer.from([0xff, 0xe1, 0xff, 0xfe]), Buffer.alloc(0xfffc, 0x20)])
  const base = jpeg(800, 600)
  const after = (segments: number) =>
    Buffer.concat([base.subarray(0, 2), ...Array.from({ length: segments }, () => segment), base.subarray(2)])
  async function* firstAlone(image: Buffer) {
    yield image.subarray(0, 5000)
    await sleep(100)
    yield* piecesOf(image.subarray(5000))
  }
  const send = (image: Buffer) =>
    streamUpload(
      server,
      '/v1/images?filename=exif.jpg',
      { 'content-type': 'image/jpeg', 'content-length': image.length },
      firstAlone(image),
    )

  const within = after(15)
  const stored = await send(within)
  t.equal(stored.status, 201, `a size marker after ${(15 * segment.length) / 1024} KiB: 201`)
  t.equal(JSON.parse(stored.body).sha256, sha256(within))

  const past = await send(after(19))
  t.equal(past.status, 415, `a size marker after ${(19 * segment.length) / 1024} KiB: 415 (${past.body.slice(0, 200)})`)
  t.match(JSON.parse(past.body).detail, /header is corrupt/)
  t.same(await storedFiles(dataDir), [JSON.parse(stored.body).key], 'and not stored')
})

t.test('keys follow {context}/{yyyy}/{mm}/{id}_{name}.{ext}', async (t) => {
  const { app } = await buildTestApp(t)
  const now = new Date()
  const month = `${now.getUTCFullYear()}/${String(now.getUTCMonth() + 1).padStart(2, '0')}`
  const cases: [string, string | undefined, RegExp, string][] = [
    ['portraits', 'Thorgar.png', new RegExp(`^portraits/${month}/[a-z]{20}_Thorgar\\.png$`), 'Thorgar.png'],
    ['general', 'my portrait (1).png', /_my_portrait__1_\.png$/, 'my portrait (1).png'],
    ['general', '../../etc/passwd.png', /_passwd\.png$/, 'passwd.png'],
    ['general', 'C:\\Users\\me\\hero.png', /_hero\.png$/, 'hero.png'],
    ['general', '永久.png', /_image\.png$/, '永久.png'],
    ['general', `${'a'.repeat(80)}.png`, new RegExp(`_${'a'.repeat(50)}\\.png$`), `${'a'.repeat(80)}.png`],
  ]
  const keys = new Set<string>()
  for (const [context, filename, key, returnedName] of cases) {
    const parts: FormPart[] = context === 'general' ? [] : [{ name: 'context', value: context }]
    const response = await app.inject(form(...parts, filePart(png(), filename)))
    t.equal(response.statusCode, 201, `${filename}`)
    t.match(response.json(), { key, filename: returnedName })
    keys.add(response.json().key)
  }
  t.equal(keys.size, cases.length, 'every upload gets a new key')

  const unnamed = await app.inject({
    method: 'POST',
    url: '/v1/images?context=bot',
    headers: { 'content-type': 'application/octet-stream' },
    payload: png(),
  })
  t.equal(unnamed.statusCode, 201)
  t.match(unnamed.json(), { key: /^bot\/\d{4}\/\d{2}\/[a-z]{20}_image\.png$/, filename: 'image.png' })

  for (const context of ['Portraits', '-x', 'a/b', 'x'.repeat(64), '']) {
    const refused = await app.inject(form({ name: 'context', value: context }, filePart(png())))
    t.equal(refused.statusCode, 400, `context ${JSON.stringify(context)}`)
    t.equal(refused.json().code, 'invalid_context')
  }
  const longName = await app.inject(form(filePart(png(), `${'n'.repeat(300)}.png`)))
  t.equal(longName.statusCode, 400)
  t.equal(longName.json().code, 'invalid_request')
})

t.test('metadata round-trips, non-ASCII included, through GET and HEAD', async (t) => {
  const { app } = await buildTestApp(t)
  const name = 'Thorgar Ø 永久'
  const viaForm = await app.inject(form({ name: 'character_name', value: name }, { name: 'Uploader_ID', value: '1234' }, filePart(png())))
  const viaHeaders = await app.inject({
    method: 'POST',
    url: '/v1/images?filename=p.png',
    headers: { 'content-type': 'image/png', 'X-Meta-Character-Name': encodeURIComponent(name), 'x-meta-uploader-id': '1234' },
    payload: png(),
  })
  for (const upload of [viaForm, viaHeaders]) {
    t.equal(upload.statusCode, 201)
    const { key, sha256: hash, size } = upload.json()
    const metadata = await app.inject({ method: 'GET', url: `/v1/images/${key}` })
    t.equal(metadata.statusCode, 200)
    const body = metadata.json()
    t.match(body, { key, url: `http://localhost:3000/files/${key}`, size, content_type: 'image/png', etag: /^".+"$/ })
    t.ok(!Number.isNaN(Date.parse(body.last_modified)), 'last_modified is a date')
    t.match(body.metadata, { character_name: name, uploader_id: '1234', sha256: hash, width: '4', height: '3' })
    t.ok(!Number.isNaN(Date.parse(body.metadata.uploaded_at)), 'uploaded_at is set')

    const head = await app.inject({ method: 'HEAD', url: `/v1/images/${key}` })
    t.equal(head.statusCode, 200)
    t.equal(head.rawPayload.length, 0, 'no body')
    t.match(head.headers, {
      'content-type': 'image/png',
      'content-length': String(size),
      etag: body.etag,
      'last-modified': new Date(body.last_modified).toUTCString(),
      'cache-control': 'public, max-age=31536000, immutable',
      'x-meta-character-name': encodeURIComponent(name),
      'x-meta-uploader-id': '1234',
      'x-meta-sha256': hash,
    })
  }
})

t.test('metadata rules', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const kept = await app.inject(form({ name: 'uploaded_at', value: '2024-05-01T10:00:00Z' }, filePart(png())))
  t.equal((await app.inject({ method: 'GET', url: `/v1/images/${kept.json().key}` })).json().metadata.uploaded_at, '2024-05-01T10:00:00Z')
  const replaced = await app.inject(form({ name: 'uploaded_at', value: 'yesterday' }, filePart(png())))
  const replacedAt = (await app.inject({ method: 'GET', url: `/v1/images/${replaced.json().key}` })).json().metadata.uploaded_at
  t.not(replacedAt, 'yesterday')
  t.ok(Math.abs(Date.parse(replacedAt) - Date.now()) < 60_000, 'an invalid uploaded_at is replaced by the time of upload')

  const before = await storedFiles(dataDir)
  const refusals: [string, InjectOptions][] = [
    ['a name with a dash', form({ name: 'character-name', value: 'x' }, filePart(png()))],
    ['a name starting with _', form({ name: '_x', value: 'x' }, filePart(png()))],
    ['a service-owned name', form({ name: 'sha256', value: 'x' }, filePart(png()))],
    ['width', form({ name: 'Width', value: '1' }, filePart(png()))],
    ['over 2 KiB', form({ name: 'a', value: 'x'.repeat(1024) }, { name: 'b', value: 'y'.repeat(1024) }, filePart(png()))],
    ['over 2 KiB in one field', form({ name: 'a', value: 'é'.repeat(1100) }, filePart(png()))],
    [
      'bad percent-encoding in a header',
      { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png', 'x-meta-name': '%E0%A4%A' }, payload: png() },
    ],
    [
      'a reserved name in a header',
      { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png', 'x-meta-filename': 'x.png' }, payload: png() },
    ],
  ]
  for (const [what, request] of refusals) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 400, what)
    t.equal(response.json().code, 'invalid_metadata', what)
  }
  t.same(await storedFiles(dataDir), before, 'nothing stored')
})

t.test('multipart shape: text fields, then exactly one file part named file', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const cases: [string, FormPart[]][] = [
    ['a field after the file', [filePart(png()), { name: 'character_name', value: 'late' }]],
    ['a second file', [filePart(png()), filePart(png(), 'b.png')]],
    ['no file', [{ name: 'character_name', value: 'x' }]],
    ['a file part with another name', [{ name: 'image', filename: 'a.png', data: png() }]],
  ]
  for (const [what, parts] of cases) {
    const response = await app.inject(form(...parts))
    t.equal(response.statusCode, 400, what)
    t.equal(response.json().code, 'invalid_request', what)
  }
  const { payload, headers } = multipartBody([filePart(png())])
  const truncated = await app.inject({ method: 'POST', url: '/v1/images', headers, payload: payload.subarray(0, payload.length - 30) })
  t.equal(truncated.statusCode, 400, 'a truncated form')
  t.equal(truncated.json().code, 'invalid_request')
  const noBoundary = await app.inject({ method: 'POST', url: '/v1/images', headers: { 'content-type': 'multipart/form-data' }, payload })
  t.equal(noBoundary.statusCode, 400, 'no boundary')
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('raw bodies: empty bodies, and multipart types that are no form', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  for (const request of [
    { method: 'POST' as const, url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: '' },
    form(filePart(Buffer.alloc(0))),
  ]) {
    const empty = await app.inject(request)
    t.equal(empty.statusCode, 400)
    t.equal(empty.json().code, 'empty_file')
  }
  for (const contentType of ['multipart/mixed; boundary=x', 'multipart/related; boundary=x']) {
    const response = await app.inject({ method: 'POST', url: '/v1/images', headers: { 'content-type': contentType }, payload: png() })
    t.equal(response.statusCode, 415, contentType)
    t.match(response.json(), { code: 'unsupported_media_type', detail: /^multipart\/\w+ is not accepted: send multipart\/form-data/ })
  }
  t.same(await storedFiles(dataDir), [])
})

t.test('curl --data-binary: any declared type, or none, is a raw upload; the content decides, and a 415 says what it is', async (t) => {
  if (!haveCurl(t)) return
  const { app, dataDir } = await buildTestApp(t)
  const { port } = await listen(app)
  const directory = await mkdtemp(path.join(tmpdir(), 'raw-curl-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  const image = pngOfSize(30_000, 11)
  await writeFile(path.join(directory, 'portrait.png'), image)
  await writeFile(path.join(directory, 'notes.pdf'), '%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n')
  const curl = async (file: string, ...headers: string[]) => {
    const args = ['-sS', '--data-binary', `@${path.join(directory, file)}`, ...headers.flatMap((header) => ['-H', header])]
    const { stdout } = await promisify(execFile)(CURL, [...args, `http://127.0.0.1:${port}/v1/images?filename=portrait.png`])
    return JSON.parse(stdout) as { key?: string; sha256?: string; content_type?: string; status?: number; code?: string; detail?: string }
  }
  const declarations: [string, string[]][] = [
    ["curl's default, application/x-www-form-urlencoded", []],
    ['no Content-Type at all', ['Content-Type:']],
    ['text/plain', ['Content-Type: text/plain']],
    ['application/json', ['Content-Type: application/json']],
    ['a wrong image type', ['Content-Type: image/jpeg']],
    ['application/octet-stream', ['Content-Type: application/octet-stream']],
  ]
  for (const [what, headers] of declarations) {
    const answer = await curl('portrait.png', ...headers)
    t.match(answer, { content_type: 'image/png', sha256: sha256(image) }, `${what}: 201, stored as the PNG it is`)
    const served = await app.inject({ url: `/files/${answer.key}` })
    t.equal(sha256(served.rawPayload), sha256(image), `${what}: stored byte-exact`)
  }
  const stored = await storedFiles(dataDir)
  t.equal(stored.length, declarations.length)
  const refused = await curl('notes.pdf')
  t.match(
    refused,
    {
      status: 415,
      code: 'unsupported_media_type',
      detail: 'The content is application/pdf; allowed: image/jpeg, image/png, image/gif, image/webp.',
    },
    'a PDF: 415 naming the type detected and the types allowed',
  )
  t.same(await storedFiles(dataDir), stored, 'nothing more stored')
})

t.test('size: the limit is inclusive and enforced for both body kinds', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { MAX_UPLOAD_BYTES: '2000' })
  t.equal((await app.inject(form(filePart(pngOfSize(2000))))).statusCode, 201, 'exactly the limit is accepted')
  const stored = await storedFiles(dataDir)
  for (const request of [
    form(filePart(pngOfSize(2001))),
    { method: 'POST' as const, url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: pngOfSize(2001) },
  ]) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 413)
    t.equal(response.json().code, 'image_too_large')
  }
  t.same(await storedFiles(dataDir), stored, 'nothing more stored')
})

t.test('HEAD, GET and DELETE by key', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const { key } = (await app.inject(form(filePart(png())))).json()
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${key}` })).statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${key}` })).statusCode, 204, 'deleting again is 204 too')
  const gone = await app.inject({ method: 'GET', url: `/v1/images/${key}` })
  t.equal(gone.statusCode, 404)
  t.equal(gone.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(gone.json(), { code: 'not_found', status: 404, title: String, detail: String, type: String, request_id: String })
  t.equal((await app.inject({ method: 'HEAD', url: `/v1/images/${key}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/files/${key}` })).statusCode, 404)
  t.same(await storedFiles(dataDir), [])
})

t.test('invalid keys are refused before storage is touched', async (t) => {
  const calls: string[] = []
  const driver = await new FsDriver(t.testdir()).init()
  for (const method of ['head', 'delete', 'put', 'open'] as const) {
    const original = driver[method].bind(driver) as (...args: unknown[]) => unknown
    ;(driver as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
      calls.push(method)
      return original(...args)
    }
  }
  const { app } = await buildTestApp(t, {}, { driver })
  const server = await listen(app)
  const keys = ['a/../b', 'a/%2e%2e/b', '..', 'a//b', 'a/./b', 'a%2Fb', 'a%00b', 'a\\b', 'k'.repeat(1025), 'sp%20ace.png', '%C3%BC.png']
  for (const key of keys) {
    for (const [method, prefix] of [
      ['GET', '/v1/images/'],
      ['HEAD', '/v1/images/'],
      ['DELETE', '/v1/images/'],
      ['GET', '/files/'],
    ] as const) {
      const response = await rawRequest(server, method, prefix + key)
      t.equal(response.status, 400, `${method} ${prefix}${key}`)
      if (method !== 'HEAD') t.equal(JSON.parse(response.body).code, 'invalid_key')
    }
  }
  t.same(calls, [], 'the driver was never called')
})

t.test('/files serves like a CDN: stored type, cache headers, ETag and 304', async (t) => {
  const { app } = await buildTestApp(t)
  const image = gif()
  const { key } = (await app.inject(form(filePart(image, 'a.png')))).json()
  const served = await app.inject({ method: 'GET', url: `/files/${key}` })
  t.equal(served.statusCode, 200)
  t.match(served.headers, {
    'content-type': 'image/gif',
    'content-length': String(image.length),
    'cache-control': 'public, max-age=31536000, immutable',
    'x-content-type-options': 'nosniff',
    etag: `"${sha256(image)}"`,
  })
  t.same(served.rawPayload, image)
  const again = await app.inject({ method: 'GET', url: `/files/${key}`, headers: { 'if-none-match': served.headers.etag as string } })
  t.equal(again.statusCode, 304)
  t.equal(again.rawPayload.length, 0)
})

t.test("/files with curl: a 304, to GET or HEAD, carries no Content-Length; a HEAD 200 the image's", async (t) => {
  if (!haveCurl(t)) return
  const { app } = await buildTestApp(t)
  const { port } = await listen(app)
  const image = pngOfSize(40_000, 9)
  const { key } = (await app.inject(form(filePart(image, 'a.png')))).json()
  const url = `http://127.0.0.1:${port}/files/${key}`
  /** The status line and headers curl received, names lower-cased. */
  const curl = async (...args: string[]) => {
    const { stdout } = await promisify(execFile)(CURL, ['-sS', '-D', '-', '-o', '/dev/null', ...args, url])
    const [status = '', ...lines] = stdout.trim().split('\r\n')
    return {
      status,
      headers: Object.fromEntries(
        lines.map((line) => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]),
      ),
    }
  }
  const whole = await promisify(execFile)(CURL, ['-sS', url], { encoding: 'buffer' })
  t.equal(sha256(whole.stdout), sha256(image), 'GET: the stored bytes, byte-exact')
  const head = await curl('-I')
  t.match(head.status, / 200 /)
  t.equal(head.headers['content-length'], String(image.length), "HEAD 200: the image's Content-Length")
  const etag = head.headers.etag ?? ''
  t.equal(etag, `"${sha256(image)}"`)
  for (const method of [['-I'], []]) {
    const what = method.length ? 'HEAD' : 'GET'
    const answer = await curl(...method, '-H', `If-None-Match: ${etag}`)
    t.match(answer.status, / 304 /, `${what} with a matching If-None-Match: 304`)
    t.notOk('content-length' in answer.headers, `${what} 304: no Content-Length`)
    t.equal(answer.headers.etag, etag, `${what} 304: the ETag`)
  }
})

t.test('health, readiness, request ids and unknown routes', async (t) => {
  const { app } = await buildTestApp(t)
  t.same((await app.inject('/healthz')).json(), { status: 'ok' })
  t.same((await app.inject('/readyz')).json(), { status: 'ready', storage: 'fs' })
  const traced = await app.inject({ url: '/healthz', headers: { 'x-request-id': 'bot-42.a' } })
  t.equal(traced.headers['x-request-id'], 'bot-42.a', 'a sane X-Request-Id is honoured')
  const forged = await app.inject({ url: '/nope', headers: { 'x-request-id': 'evil\nline' } })
  t.not(forged.headers['x-request-id'], 'evil\nline')
  t.equal(forged.statusCode, 404)
  t.match(forged.json(), { code: 'not_found', request_id: forged.headers['x-request-id'] })
})

t.test('edge cases of the request a careful client may send', async (t) => {
  const { app } = await buildTestApp(t)
  const twice = await app.inject({
    method: 'POST',
    url: '/v1/images?filename=a.png&filename=b.png',
    headers: { 'content-type': 'image/png' },
    payload: png(),
  })
  t.equal(twice.statusCode, 400, 'a repeated query parameter is a client error, not a crash')
  t.equal(twice.json().code, 'invalid_request')

  for (const contentType of ['image/png; name=x.png', 'application/octet-stream; charset=binary', 'IMAGE/PNG']) {
    const response = await app.inject({ method: 'POST', url: '/v1/images', headers: { 'content-type': contentType }, payload: png() })
    t.equal(response.statusCode, 201, `Content-Type: ${contentType}`)
  }

  const longSegment = `a/${'b'.repeat(300)}.png` // a valid key, too long for a file name
  t.equal((await app.inject({ method: 'GET', url: `/v1/images/${longSegment}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'HEAD', url: `/v1/images/${longSegment}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/files/${longSegment}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${longSegment}` })).statusCode, 204)

  const { key } = (await app.inject(form(filePart(png())))).json()
  const { etag } = (await app.inject({ method: 'GET', url: `/files/${key}` })).headers
  for (const ifNoneMatch of [etag as string, `"other", ${etag}`, `W/${etag}`, '*']) {
    const response = await app.inject({ method: 'GET', url: `/files/${key}`, headers: { 'if-none-match': ifNoneMatch } })
    t.equal(response.statusCode, 304, `If-None-Match: ${ifNoneMatch}`)
  }
  t.equal((await app.inject({ method: 'GET', url: `/files/${key}`, headers: { 'if-none-match': '"other"' } })).statusCode, 200)
})

t.test('what the review found: prefixes, prototype names, raw UTF-8, long JPEG headers, oversized headers', async (t) => {
  const { app } = await buildTestApp(t)
  await app.inject(form({ name: 'context', value: 'portraits' }, filePart(png())))
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/images/portraits' })).statusCode, 204, 'a prefix is no object: 204')
  t.equal((await app.inject({ method: 'GET', url: '/v1/images/portraits' })).statusCode, 404)

  const constructorName = await app.inject({
    method: 'POST',
    url: '/v1/images',
    headers: { 'content-type': 'image/png', 'x-meta-constructor': 'x' },
    payload: png(),
  })
  t.equal(constructorName.statusCode, 201, 'a metadata name shared with Object.prototype is an ordinary name')

  const rawUtf8 = await app.inject({
    method: 'POST',
    url: '/v1/images',
    headers: { 'content-type': 'image/png', 'x-meta-name': 'Thorgar Ø' },
    payload: png(),
  })
  t.equal(rawUtf8.statusCode, 400, 'an unencoded non-ASCII header value is refused, not stored garbled')
  t.equal(rawUtf8.json().code, 'invalid_metadata')

  // A JPEG whose size marker follows 600 KiB of application segments, as large EXIF blocks do.
  const segment = Buffer.concat([Buffer.from([0xff, 0xe1, 0xff, 0xfe]), Buffer.alloc(0xfffc, 0x20)])
  const base = jpeg(800, 600)
  const bigHeader = Buffer.concat([base.subarray(0, 2), ...Array.from({ length: 10 }, () => segment), base.subarray(2)])
  const jpegResponse = await app.inject(form(filePart(bigHeader, 'exif.jpg')))
  t.equal(jpegResponse.statusCode, 201)
  t.match(jpegResponse.json(), { width: 800, height: 600 })

  const server = await listen(app)
  const huge = await new Promise<{ status: number; type: string | undefined; body: string }>((resolve, reject) => {
    const request = http.request(
      { ...server, method: 'GET', path: '/healthz', headers: { 'x-filler': 'a'.repeat(20_000) }, agent: false },
      (response) => {
        let body = ''
        response.on('data', (chunk: Buffer) => (body += chunk))
        response.on('end', () => resolve({ status: response.statusCode!, type: response.headers['content-type'], body }))
      },
    )
    request.on('error', reject)
    request.end()
  })
  t.equal(huge.status, 400, 'headers over the limit')
  t.match(huge.type, /^application\/problem\+json/)
  t.equal(JSON.parse(huge.body).code, 'invalid_request')
})
