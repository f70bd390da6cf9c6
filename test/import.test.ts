import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import type http from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import tls from 'node:tls'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { addressRefusal } from '../src/import/address-policy.js'
import { RECORDS_PREFIX } from '../src/upload/keys.js'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { png, pngOfSize, pngStream, sha256 } from './helpers/images.js'
import { LOCAL_SOURCE_ENV, LOOPBACK, rawResponse, spyNetwork, startSource } from './helpers/import.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { until } from './helpers/wait.js'

t.setTimeout(40_000)

const MiB = 1024 * 1024
/** A public address of our choosing for the allowed CDN names: never contacted, the spy answers for it in memory. */
const CDN_ADDRESS = '1.2.3.4'

function importImage(app: FastifyInstance, body: Record<string, unknown>) {
  return app.inject({ method: 'POST', url: '/v1/images/import', payload: body })
}

async function refusedWith(t: Test, app: FastifyInstance, sourceUrl: string, detail: RegExp, label = sourceUrl) {
  const res = await importImage(app, { source_url: sourceUrl, context: 'portraits' })
  t.equal(res.statusCode, 400, `${label}: 400`)
  t.match(res.json(), { code: 'import_refused', detail }, `${label}: import_refused`)
}

/** Writes `size` bytes of PNG with backpressure until done or the connection closes; returns the bytes written. */
async function streamPng(res: http.ServerResponse, size: number): Promise<number> {
  let sent = 0
  for await (const chunk of pngStream(size).stream) {
    if (res.destroyed) break
    sent += chunk.length
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done).off('close', done)
          resolve()
        }
        res.on('drain', done).on('close', done)
      })
    }
  }
  if (!res.destroyed) res.end()
  return sent
}

t.test('the address policy refuses every address that is not public unicast', async (t) => {
  const refused: [string, RegExp][] = [
    ['127.0.0.1', /loopback/],
    ['127.255.0.9', /loopback/],
    ['::1', /loopback/],
    ['::ffff:127.0.0.1', /loopback/],
    ['::ffff:7f00:1', /loopback/],
    ['64:ff9b::7f00:1', /loopback/],
    ['10.0.0.1', /private/],
    ['172.31.255.255', /private/],
    ['192.168.1.1', /private/],
    ['::ffff:192.168.1.1', /private/],
    ['fd12:3456::1', /private/],
    ['169.254.169.254', /metadata/],
    ['169.254.170.2', /metadata/],
    ['168.63.129.16', /metadata/],
    ['100.100.100.200', /metadata/],
    ['fd00:ec2::254', /metadata/],
    ['169.254.1.1', /link-local/],
    ['fe80::1', /link-local/],
    ['fe80::1%eth0', /not a plain IP/],
    ['100.64.0.1', /CGNAT/],
    ['100.127.255.254', /CGNAT/],
    ['0.0.0.0', /unspecified/],
    ['::', /unspecified/],
    ['224.0.0.1', /multicast/],
    ['ff02::1', /multicast/],
    ['255.255.255.255', /reserved/],
    ['192.0.0.8', /reserved/],
    ['198.18.0.1', /benchmarking/],
    ['192.0.2.1', /documentation/],
    ['2001:db8::1', /documentation/],
    ['2002:7f00:1::1', /reserved/], // 6to4 of 127.0.0.1
    ['2001::1', /reserved/], // Teredo
    ['::7f00:1', /reserved/], // IPv4-compatible, deprecated
    ['100::1', /reserved/], // discard-only
    ['cdn.discordapp.com', /not a plain IP/],
  ]
  for (const [address, reason] of refused) t.match(addressRefusal(address), reason, `${address} is refused`)
  for (const address of [
    '1.2.3.4',
    '162.159.128.233',
    '8.8.8.8',
    '100.63.255.255',
    '100.128.0.0',
    '2606:4700::6810:1',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808',
  ]) {
    t.equal(addressRefusal(address), undefined, `${address} is allowed`)
  }
})

t.test('with the default settings, a refused URL is 400 import_refused before any name is resolved or connection made', async (t) => {
  const spy = spyNetwork({ names: { 'cdn.discordapp.com': [CDN_ADDRESS] } })
  const { app, dataDir } = await buildTestApp(t, {}, { importNetwork: spy.network })
  const cases: [string, string, RegExp][] = [
    ['http://', 'http://cdn.discordapp.com/portrait.png', /Only https/],
    ['file:', 'file:///etc/passwd', /Only https/],
    ['a host outside the allow-list', 'https://images.example.com/portrait.png', /not a host imports may fetch from/],
    [
      'an allowed host as a subdomain of another',
      'https://cdn.discordapp.com.evil.example/portrait.png',
      /not a host imports may fetch from/,
    ],
    ['IPv4 loopback', 'https://127.0.0.1/', /127\.0\.0\.1 is a loopback address/],
    ['IPv6 loopback', 'https://[::1]/', /::1 is a loopback address/],
    ['the cloud metadata service', 'https://169.254.169.254/latest/meta-data/', /cloud metadata/],
    ['a private address', 'https://10.0.0.1/', /private/],
    ['loopback written in hex', 'https://0x7f.1/', /loopback/],
    ['loopback as one number', 'https://2130706433/', /loopback/],
    ['IPv4-mapped loopback', 'https://[::ffff:127.0.0.1]/', /loopback/],
    ['credentials in the URL', 'https://user:secret@cdn.discordapp.com/portrait.png', /credentials/],
    ['not a URL', 'cdn.discordapp.com/portrait.png', /not a valid absolute URL/],
  ]
  for (const [what, url, detail] of cases) await refusedWith(t, app, url, detail, what)
  t.same(spy.resolved, [], 'no name was resolved')
  t.same(spy.connections, [], 'no connection was attempted')
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('with the default settings, an allowed name that resolves to a refused address is 400 import_refused, unconnected', async (t) => {
  const spy = spyNetwork({ names: { 'cdn.discordapp.com': [LOOPBACK], 'media.discordapp.net': [CDN_ADDRESS, '::1'] } })
  const { app } = await buildTestApp(t, {}, { importNetwork: spy.network })
  await refusedWith(t, app, 'https://cdn.discordapp.com/portrait.png', /cdn\.discordapp\.com resolves to a loopback address/)
  await refusedWith(
    t,
    app,
    'https://media.discordapp.net/portrait.png',
    /resolves to a loopback address/,
    'one loopback address among public ones',
  )
  await refusedWith(
    t,
    app,
    'https://CDN.DISCORDAPP.COM./portrait.png',
    /resolves to a loopback address/,
    'the name in capitals with a trailing dot',
  )
  t.same(
    spy.resolved,
    ['cdn.discordapp.com', 'media.discordapp.net', 'cdn.discordapp.com'],
    'each name resolved through the injected resolver',
  )
  t.same(spy.connections, [], 'no connection was attempted')
})

t.test('with the default settings, redirects are followed at most 3 times and each target is checked again', async (t) => {
  const image = png(12, 10)
  const pathOf = (head: string) => head.split(' ')[1] ?? ''
  const redirect = (status: number, location: string) => rawResponse(status, { location })
  const answers: Record<string, Buffer> = {
    '/portrait.png?ex=1': rawResponse(200, { 'content-type': 'image/png' }, image),
    '/to-loopback': redirect(302, 'https://127.0.0.1/portrait.png'),
    '/to-loopback-name': redirect(301, 'https://media.discordapp.net/portrait.png'),
    '/to-metadata': redirect(307, 'https://169.254.169.254/latest/meta-data/'),
    '/to-http': redirect(308, 'http://cdn.discordapp.com/portrait.png'),
    '/to-elsewhere': redirect(302, 'https://images.example.com/portrait.png'),
    '/hop/1': redirect(302, '/hop/2'),
    '/hop/2': redirect(303, 'https://cdn.discordapp.com/hop/3'),
    '/hop/3': redirect(302, '/portrait.png?ex=1'),
    '/hop/0': redirect(302, '/hop/1'),
    '/to-nowhere': redirect(302, 'https://[bad'),
  }
  const spy = spyNetwork({
    names: { 'cdn.discordapp.com': [CDN_ADDRESS], 'media.discordapp.net': [LOOPBACK] },
    fakes: { [CDN_ADDRESS]: (head) => answers[pathOf(head)] ?? rawResponse(404, {}) },
  })
  const { app } = await buildTestApp(t, {}, { importNetwork: spy.network })

  const refusals: [string, RegExp][] = [
    ['/to-loopback', /127\.0\.0\.1 is a loopback address/],
    ['/to-loopback-name', /media\.discordapp\.net resolves to a loopback address/],
    ['/to-metadata', /cloud metadata/],
    ['/to-http', /Only https/],
    ['/to-elsewhere', /images\.example\.com is not a host/],
  ]
  for (const [from, detail] of refusals) await refusedWith(t, app, `https://cdn.discordapp.com${from}`, detail, `a redirect ${from}`)
  t.equal(spy.connections.length, refusals.length, 'one connection per import: the first hop')
  t.ok(
    spy.connections.every((target) => target.address === CDN_ADDRESS),
    'and only ever to the checked public address',
  )

  const threeHops = await importImage(app, { source_url: 'https://cdn.discordapp.com/hop/1', context: 'portraits' })
  t.equal(threeHops.statusCode, 201, 'three redirects are followed')
  t.equal(threeHops.json().sha256, sha256(image), 'to the image')
  const fourHops = await importImage(app, { source_url: 'https://cdn.discordapp.com/hop/0', context: 'portraits' })
  t.equal(fourHops.statusCode, 502, 'a fourth redirect is not')
  t.match(fourHops.json(), { code: 'import_failed', detail: /more than 3 times/ })
  const nowhere = await importImage(app, { source_url: 'https://cdn.discordapp.com/to-nowhere', context: 'portraits' })
  t.equal(nowhere.statusCode, 502, 'a redirect to an invalid URL is the source failing')
  t.match(nowhere.json(), { code: 'import_failed', detail: /redirected to a URL that is not valid/ })
})

t.test('the connection goes to the checked address, with the original name as Host and TLS server name', async (t) => {
  const image = png(8, 8)
  let resolutions = 0
  const spy = spyNetwork({ fakes: { [CDN_ADDRESS]: () => rawResponse(200, { 'content-type': 'image/png' }, image) } })
  // DNS rebinding: the first answer is public, every later one loopback. Only the first may be used.
  spy.network.resolve = async () => [{ address: resolutions++ === 0 ? CDN_ADDRESS : LOOPBACK, family: 4 }]
  const { app } = await buildTestApp(t, {}, { importNetwork: spy.network })
  const res = await importImage(app, {
    source_url: 'https://cdn.discordapp.com/attachments/1/2/portrait.png?ex=67&hm=ab',
    context: 'portraits',
  })
  t.equal(res.statusCode, 201)
  t.equal(resolutions, 1, 'the name is resolved once')
  t.same(
    spy.connections,
    [{ address: CDN_ADDRESS, port: 443, servername: 'cdn.discordapp.com', tls: true }],
    'one TLS connection, to the checked address',
  )
  t.match(spy.requests[0], /^GET \/attachments\/1\/2\/portrait\.png\?ex=67&hm=ab HTTP\/1\.1\r\n/, 'the path and query as given')
  t.match(spy.requests[0], /\r\nhost: cdn\.discordapp\.com\r\n/i, 'Host is the original name')
})

t.test('the system connector speaks TLS with the original name as SNI and refuses a certificate it cannot verify', async (t) => {
  if (!existsSync('/usr/bin/openssl')) {
    t.skip('/usr/bin/openssl is missing: it makes the test certificate', () => {})
    return
  }
  const dir = t.testdir()
  const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')]
  execFileSync(
    '/usr/bin/openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      '/CN=cdn.discordapp.com',
      '-addext',
      'subjectAltName=DNS:cdn.discordapp.com',
    ],
    { stdio: 'ignore' },
  )
  const context = tls.createSecureContext({ key: readFileSync(key), cert: readFileSync(cert) })
  const serverNames: string[] = []
  const server = tls.createServer({
    SNICallback: (name, done) => {
      serverNames.push(name)
      done(null, context)
    },
  })
  server.on('tlsClientError', () => {}) // the import hangs up on the untrusted certificate, as it should
  server.listen(0, LOOPBACK)
  await once(server, 'listening')
  t.teardown(() => server.close())
  const { port } = server.address() as AddressInfo

  // The test-only setting allows 127.0.0.1 as an address; the name is an allowed one, resolved to it.
  const spy = spyNetwork({ names: { 'cdn.discordapp.com': [LOOPBACK] }, loopback: true })
  const { app } = await buildTestApp(t, { IMPORT_ALLOW_INSECURE_LOCAL_SOURCES: 'true' }, { importNetwork: spy.network })
  const res = await importImage(app, { source_url: `https://cdn.discordapp.com:${port}/portrait.png`, context: 'portraits' })
  t.equal(res.statusCode, 502, 'a self-signed certificate is not trusted')
  t.match(res.json(), { code: 'import_failed', detail: /SELF_SIGNED/ })
  t.same(serverNames, ['cdn.discordapp.com'], "the TLS server name is the URL's host name, not the address")
})

t.test('imports from a local source are stored like uploads, read back byte-exact from the local S3 server', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const portrait = pngOfSize(300_000, 3)
  // Over 5 MiB: streamed from the source to one PutObject of its declared length.
  const large = pngOfSize(6 * MiB + 123, 4)
  const source = await startSource(t, (req, res) => {
    const routes: Record<string, () => void> = {
      '/attachments/1/portrait.png?ex=1': () => res.writeHead(200, { 'content-type': 'image/png' }).end(portrait),
      '/large.png': () => res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(large),
      '/moved': () => res.writeHead(302, { location: '/attachments/1/portrait.png?ex=1' }).end(),
      '/missing.png': () => res.writeHead(404, { 'content-type': 'text/html' }).end('<h1>Not found</h1>'),
      '/error.png': () => res.writeHead(500).end(),
      '/notes.png': () => res.writeHead(200, { 'content-type': 'image/png' }).end('just some text, not an image'),
      '/cut-short.png': () =>
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': '300000' }).end(portrait.subarray(0, 1000)),
    }
    const route = routes[req.url ?? '']
    if (route) route()
    else res.writeHead(404).end()
  })
  const spy = spyNetwork({ loopback: true })
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), ...LOCAL_SOURCE_ENV }, { importNetwork: spy.network })

  const sourceUrl = source.url('/attachments/1/portrait.png?ex=1')
  const res = await importImage(app, {
    source_url: sourceUrl,
    context: 'portraits',
    metadata: { character_name: 'Thorgar Ø 永久', uploader_id: '1234' },
  })
  t.equal(res.statusCode, 201, 'a PNG is imported')
  const stored = res.json() as {
    key: string
    url: string
    size: number
    sha256: string
    filename: string
    content_type: string
    width: number
  }
  t.match(stored, { size: portrait.length, sha256: sha256(portrait), filename: 'portrait.png', content_type: 'image/png', width: 16 })
  t.match(stored.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{16,}_portrait\.png$/, 'the key an upload would get')
  t.equal(res.headers.location, stored.url, 'Location is the url')
  t.equal(await s3.sha256Of(stored.key), sha256(portrait), 'the stored object is byte-exact')
  const metadata = (await app.inject({ url: `/v1/images/${stored.key}` })).json().metadata as Record<string, string>
  t.match(metadata, {
    migrated_from: sourceUrl,
    character_name: 'Thorgar Ø 永久',
    uploader_id: '1234',
    filename: 'portrait.png',
    sha256: sha256(portrait),
  })

  const largeRes = await importImage(app, { source_url: source.url('/large.png'), context: 'portraits', filename: 'Thorgar the Large.png' })
  t.equal(largeRes.statusCode, 201, 'a 6 MiB PNG is imported')
  const largeStored = largeRes.json() as { key: string; sha256: string; filename: string }
  t.equal(largeStored.filename, 'Thorgar the Large.png', "the filename sent wins over the URL's")
  t.equal(await s3.sha256Of(largeStored.key), sha256(large), 'streamed to storage byte-exact')

  // Sent without a context, as an upload may be: it defaults to `general`.
  const moved = await importImage(app, { source_url: source.url('/moved') })
  t.equal(moved.statusCode, 201, 'a redirect to an allowed source is followed')
  t.equal(moved.json().filename, 'moved', 'the filename comes from the URL the client sent')
  t.match(moved.json().key, /^general\/\d{4}\/\d{2}\/[a-z]{16,}_moved\.png$/, 'no context: the key is under general/, as an upload')
  t.equal(await s3.sha256Of(moved.json().key), sha256(portrait))

  const failures: [string, number, string, RegExp][] = [
    ['/missing.png', 502, 'import_failed', /answered 404/],
    ['/error.png', 502, 'import_failed', /answered 500/],
    ['/notes.png', 415, 'unsupported_media_type', /not a recognised image/],
    ['/cut-short.png', 502, 'import_failed', /could not be read/],
  ]
  for (const [path, status, code, detail] of failures) {
    const failed = await importImage(app, { source_url: source.url(path), context: 'portraits' })
    t.equal(failed.statusCode, status, `${path}: ${status}`)
    t.match(failed.json(), { code, detail }, `${path}: ${code}`)
  }
  const closed = await importImage(app, { source_url: `http://${LOOPBACK}:9/portrait.png`, context: 'portraits' })
  t.equal(closed.statusCode, 502, 'a source that refuses connections')
  t.match(closed.json(), { code: 'import_failed', detail: /could not be reached \(ECONNREFUSED\)/ })

  t.same((await s3.keys()).sort(), [stored.key, largeStored.key, moved.json().key].sort(), 'only the imports that succeeded are stored')
  t.ok(
    spy.connections.every((target) => target.address === LOOPBACK),
    'every connection went to 127.0.0.1',
  )

  const metrics = await app.metricsRegistry.metrics()
  t.match(metrics, /^r2_uploads_total 3$/m, 'stored imports count as uploads')
  t.match(metrics, /^r2_upload_errors_total\{error_type="unsupported_media_type"\} 1$/m, 'an import that is no image is an upload error')
  t.notMatch(metrics, /error_type="import_failed"/, 'a failing source is not')
})

t.test('the test-only setting allows http and 127.0.0.1, and nothing more', async (t) => {
  const spy = spyNetwork({ names: { 'cdn.discordapp.com': [CDN_ADDRESS], 'media.discordapp.net': ['10.0.0.8'] }, loopback: true })
  const { app } = await buildTestApp(
    t,
    { ...LOCAL_SOURCE_ENV, IMPORT_ALLOWED_HOSTS: '127.0.0.1,cdn.discordapp.com,media.discordapp.net' },
    { importNetwork: spy.network },
  )
  await refusedWith(t, app, 'https://10.0.0.1/portrait.png', /private/)
  await refusedWith(t, app, 'https://127.0.0.2/portrait.png', /loopback/)
  await refusedWith(t, app, 'https://[::1]/portrait.png', /loopback/)
  await refusedWith(t, app, 'https://media.discordapp.net/portrait.png', /resolves to a private address/)
  await refusedWith(t, app, 'http://cdn.discordapp.com/portrait.png', /Plain http:\/\/ is allowed only to 127\.0\.0\.1/)
  t.same(spy.connections, [], 'no connection was attempted')
})

t.test('the size limit applies to the source: declared or streamed, answered without reading it all', async (t) => {
  const finished: Promise<number>[] = []
  const source = await startSource(t, (req, res) => {
    const size = 64 * MiB
    res.writeHead(200, { 'content-type': 'image/png', ...(req.url === '/declared.png' && { 'content-length': String(size) }) })
    finished.push(streamPng(res, size))
  })
  const spy = spyNetwork({ loopback: true })
  const { app, dataDir } = await buildTestApp(t, { ...LOCAL_SOURCE_ENV, MAX_UPLOAD_BYTES: String(MiB) }, { importNetwork: spy.network })
  for (const path of ['/declared.png', '/streamed.png']) {
    const res = await importImage(app, { source_url: source.url(path), context: 'portraits' })
    t.equal(res.statusCode, 413, `${path}: 413`)
    t.match(res.json(), { code: 'image_too_large' })
    const sent = await finished.at(-1)!
    t.ok(sent < 16 * MiB, `${path}: the source could write ${(sent / MiB).toFixed(1)} MiB of 64 MiB before the service hung up`)
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('a slow source runs into IMPORT_TIMEOUT_MS', async (t) => {
  const closed: Promise<unknown>[] = []
  const source = await startSource(t, (req, res) => {
    closed.push(once(res, 'close'))
    if (req.url === '/slow-body.png')
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': '300000' }).write(pngOfSize(300_000).subarray(0, 5000))
    // /silent.png: never answers
  })
  const spy = spyNetwork({ loopback: true })
  // cdn.discordapp.com: a name server that never answers.
  spy.network.resolve = () => new Promise(() => {})
  const env = { ...LOCAL_SOURCE_ENV, IMPORT_ALLOWED_HOSTS: '127.0.0.1,cdn.discordapp.com', IMPORT_TIMEOUT_MS: '1000' }
  const { app, dataDir } = await buildTestApp(t, env, { importNetwork: spy.network })
  for (const url of [source.url('/silent.png'), source.url('/slow-body.png'), 'https://cdn.discordapp.com/portrait.png']) {
    const started = Date.now()
    const res = await importImage(app, { source_url: url, context: 'portraits' })
    const elapsed = Date.now() - started
    t.equal(res.statusCode, 502, `${url}: 502`)
    t.match(res.json(), { code: 'import_failed', detail: /within 1000 ms \(IMPORT_TIMEOUT_MS\)/ })
    t.ok(elapsed >= 950 && elapsed < 5000, `${url}: answered after ${elapsed} ms`)
    if (!url.startsWith('http://')) continue
    await closed.at(-1)
    t.pass(`${url}: the service closed its connection to the source`)
  }
  t.same(
    spy.connections.map((target) => target.address),
    [LOOPBACK, LOOPBACK],
    'the name that never resolved was never connected to',
  )
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('an import holds an upload slot while it downloads', async (t) => {
  let release: (() => void) | undefined
  const image = pngOfSize(200_000, 5)
  const source = await startSource(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(image.length) }).write(image.subarray(0, 1000))
    release = () => res.end(image.subarray(1000))
  })
  const spy = spyNetwork({ loopback: true })
  const { app } = await buildTestApp(
    t,
    { ...LOCAL_SOURCE_ENV, MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_MAX: '0' },
    { importNetwork: spy.network },
  )
  const held = importImage(app, { source_url: source.url('/portrait.png'), context: 'portraits' })
  await until('the source to start answering', () => release !== undefined)
  const busy = await app.inject({ method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })
  t.equal(busy.statusCode, 503, 'an upload meanwhile is refused')
  t.equal(busy.json().code, 'server_busy')
  release!()
  const imported = await held
  t.equal(imported.statusCode, 201, 'the import completes')
  t.equal(imported.json().sha256, sha256(image))
  const next = await app.inject({ method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })
  t.equal(next.statusCode, 201, 'and frees its slot')
})

t.test('the request: JSON with source_url and context, optional filename and metadata; checked before any download', async (t) => {
  const spy = spyNetwork({ names: { 'cdn.discordapp.com': [CDN_ADDRESS] } })
  const { app } = await buildTestApp(t, {}, { importNetwork: spy.network })
  const url = 'https://cdn.discordapp.com/portrait.png'
  const cases: [string, unknown, string, RegExp][] = [
    ['an array', [], 'invalid_request', /JSON object/],
    ['no source_url', { context: 'portraits' }, 'invalid_request', /source_url is required/],
    ['a source_url over 2048 characters', { source_url: `${url}?${'x'.repeat(2048)}`, context: 'portraits' }, 'invalid_request', /2048/],
    ['a context that is not a string', { source_url: url, context: 7 }, 'invalid_context', /context, when sent, is a string/],
    ['a null context', { source_url: url, context: null }, 'invalid_context', /context, when sent, is a string/],
    ['a bad context', { source_url: url, context: 'Bad!' }, 'invalid_context', /context must match/],
    [
      'an unknown member',
      { source_url: url, context: 'portraits', sourceUrl: url },
      'invalid_request',
      /"sourceUrl" is not one of its members/,
    ],
    ['a filename that is not a string', { source_url: url, context: 'portraits', filename: 7 }, 'invalid_request', /filename/],
    [
      'a filename over 255 bytes',
      { source_url: url, context: 'portraits', filename: `${'n'.repeat(300)}.png` },
      'invalid_request',
      /longer than 255/,
    ],
    [
      'metadata that is not an object',
      { source_url: url, context: 'portraits', metadata: 'x' },
      'invalid_metadata',
      /object of string values/,
    ],
    [
      'a metadata value that is not a string',
      { source_url: url, context: 'portraits', metadata: { uploader_id: 1234 } },
      'invalid_metadata',
      /object of string values/,
    ],
    [
      'migrated_from in the metadata',
      { source_url: url, context: 'portraits', metadata: { Migrated_From: 'x' } },
      'invalid_metadata',
      /set by the service and may not be sent/,
    ],
    [
      'a service-owned name',
      { source_url: url, context: 'portraits', metadata: { sha256: 'x' } },
      'invalid_metadata',
      /set by the service/,
    ],
    [
      'metadata that fits 2 KiB only without the source URL',
      { source_url: url, context: 'portraits', metadata: { notes: 'x'.repeat(2000) } },
      'invalid_metadata',
      /2048 bytes/,
    ],
  ]
  for (const [what, body, code, detail] of cases) {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/images/import',
      payload: JSON.stringify(body),
      headers: { 'content-type': 'application/json' },
    })
    t.equal(res.statusCode, 400, `${what}: 400`)
    t.match(res.json(), { code, detail }, `${what}: ${code}`)
  }
  const form = await app.inject({
    method: 'POST',
    url: '/v1/images/import',
    payload: `source_url=${url}&context=portraits`,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  })
  t.equal(form.statusCode, 415, 'a body that is not JSON: 415')
  t.equal(form.json().code, 'unsupported_media_type')
  const broken = await app.inject({
    method: 'POST',
    url: '/v1/images/import',
    payload: '{"source_url":',
    headers: { 'content-type': 'application/json' },
  })
  t.equal(broken.statusCode, 400, 'broken JSON: 400')
  t.equal(broken.json().code, 'invalid_request')
  t.same(spy.resolved, [], 'nothing was resolved')
  t.same(spy.connections, [], 'nothing was connected')
})

t.test("the filename: as sent, else the URL's last segment, else image.<ext>", async (t) => {
  const image = png()
  const source = await startSource(t, (_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end(image))
  const { app } = await buildTestApp(t, LOCAL_SOURCE_ENV, { importNetwork: spyNetwork({ loopback: true }).network })
  const cases: [string, string | undefined, string, RegExp][] = [
    ['/a/portrait.png?ex=1', 'C:\\pics\\Thorgar.png', 'Thorgar.png', /_Thorgar\.png$/],
    ['/a/Thorgar%20%C3%98.png', undefined, 'Thorgar Ø.png', /_Thorgar__\.png$/],
    ['/', undefined, 'image.png', /_image\.png$/],
    ['/a/%E0%A4%A', undefined, 'image.png', /_image\.png$/],
  ]
  for (const [path, filename, expected, key] of cases) {
    const res = await importImage(app, { source_url: source.url(path), context: 'portraits', ...(filename !== undefined && { filename }) })
    t.equal(res.statusCode, 201, `${path}: 201`)
    t.equal(res.json().filename, expected, `${path}: filename ${expected}`)
    t.match(res.json().key, key, `${path}: key`)
  }
})

t.test('an import retried with the same Idempotency-Key is answered from its record, without fetching the source again', async (t) => {
  const image = png(6, 6)
  let fetches = 0
  let sourceGone = false
  const source = await startSource(t, (_req, res) => {
    fetches++
    // A Discord link expires: the retry must not depend on it.
    if (sourceGone) res.writeHead(404).end()
    else res.writeHead(200, { 'content-type': 'image/png' }).end(image)
  })
  const { app, dataDir } = await buildTestApp(t, LOCAL_SOURCE_ENV)
  const send = (body: Record<string, unknown>) =>
    app.inject({
      method: 'POST',
      url: '/v1/images/import',
      headers: { 'idempotency-key': 'migrate-rec-1' },
      payload: { context: 'portraits', ...body },
    })

  const first = await send({ source_url: source.url('/a.png') })
  t.equal(first.statusCode, 201)
  sourceGone = true
  const retry = await send({ source_url: source.url('/a.png') })
  t.equal(retry.statusCode, 201, 'the retry is 201 although the source is gone now')
  t.same(retry.json(), first.json(), 'with the first body')
  t.equal(retry.headers['idempotent-replayed'], 'true')
  t.equal(fetches, 1, 'the source was fetched once')
  const other = await send({ source_url: source.url('/b.png') })
  t.equal(other.statusCode, 409, 'another source under the same key is 409')
  t.equal(other.json().code, 'idempotency_conflict')
  t.equal(fetches, 1, 'and is not fetched either')
  t.equal((await storedFiles(dataDir)).filter((key) => !key.startsWith(RECORDS_PREFIX)).length, 1, 'one image stored')
})
