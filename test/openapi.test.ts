import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import SwaggerParser from '@apidevtools/swagger-parser'
import t from 'tap'
import { buildMetricsApp } from '../src/app.js'
import type { ImageMetadata, StoredImage } from '../src/client.js'
import { loadConfig } from '../src/config.js'
import { ERROR_CATALOGUE } from '../src/errors.js'
import type { UsageReport } from '../src/plugins/usage.js'
import { FREE_TIER } from '../src/plugins/usage.js'
import { OPENAPI_PATH } from '../src/routes/openapi.js'
import { FsDriver } from '../src/storage/fs.js'
import { assertValidKey } from '../src/upload/keys.js'
import { buildTestApp } from './helpers/app.js'
import {
  assertRoutesMatch,
  buildRecordingRoutes,
  CONTRACT_HEAD_ROUTES,
  conforms,
  type Operation,
  operationsOf,
  rawDocument,
  type Schema,
  SECURITY_HEADERS,
  spec,
  validatorFor,
} from './helpers/contract.js'
import { overSocket } from './helpers/http.js'
import { png, pngHeaderOnly } from './helpers/images.js'
import { LOCAL_SOURCE_ENV, spyNetwork, startSource } from './helpers/import.js'
import { multipartBody } from './helpers/multipart.js'

/** A token of the shape API_KEYS requires, for the key named `bot`. */
const TOKEN = 'tok-'.padEnd(40, '7')
const WRONG_TOKEN = 'tok-'.padEnd(40, '8')
const API_KEYS = `bot:${TOKEN}`
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const WWW_AUTHENTICATE = 'Bearer realm="image-upload-service"'
/** bearerAuth: every /v1/* operation, and GET /metrics as served on the public port (METRICS_PORT unset). */
const isProtected = (specPath: string) => specPath.startsWith('/v1/') || specPath === '/metrics'

const upload = (filename = 'portrait.png', data = png()) => multipartBody([{ name: 'file', filename, data }])

/** The images imports fetch, from 127.0.0.1: apps built with IMPORT_ENV may import them. */
const importSource = await startSource(t, (request, reply) => {
  if (request.url === '/bomb.png') reply.writeHead(200).end(pngHeaderOnly(50_000, 50_000))
  else if (request.url === '/notes.png') reply.writeHead(200).end('not an image')
  else if (request.url === '/portrait.png') reply.writeHead(200, { 'content-type': 'image/png' }).end(png())
  else reply.writeHead(404).end()
})
const IMPORT_ENV = LOCAL_SOURCE_ENV
/** Imports reach 127.0.0.1 only, whatever the code does. */
const importOptions = () => ({ importNetwork: spyNetwork({ loopback: true }).network })
const importBody = (path = '/portrait.png') => JSON.stringify({ source_url: importSource.url(path), context: 'portraits' })

/** A request for a documented operation: an upload or an import for POST, else `{key}` (and the console's `{file}`) filled in; `headers` on top. */
function requestFor(method: string, specPath: string, key: string, headers: Record<string, string> = {}): Parameters<typeof overSocket>[1] {
  const url = specPath.replace('{key}', key).replace('{file}', 'console.js')
  if (method !== 'POST') return { method, url, headers }
  if (specPath === '/v1/images/import')
    return { method, url, payload: importBody(), headers: { 'content-type': 'application/json', ...headers } }
  const form = upload()
  return { method, url, payload: form.payload, headers: { ...form.headers, ...headers } }
}

const isSecured = (operation: Operation) => (operation.security ?? []).length > 0

t.test('the document is valid OpenAPI 3.1', async (t) => {
  t.equal(rawDocument.openapi, '3.1.0')
  await t.resolves(SwaggerParser.validate(structuredClone(rawDocument) as never), 'swagger-parser validates it')
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  t.equal(rawDocument.info.version, pkg.version, 'info.version is the package version')
})

t.test('the document agrees with the code it describes', async (t) => {
  t.test('ErrorCode is the error catalogue', async (t) => {
    t.same([...(rawDocument.components.schemas.ErrorCode!.enum as string[])].sort(), Object.keys(ERROR_CATALOGUE).sort())
  })

  t.test('each problem response names only codes of its status, and every code is documented somewhere', async (t) => {
    const seen = new Set<string>()
    for (const { method, path, operation } of operationsOf(spec)) {
      for (const [status, response] of Object.entries(operation.responses)) {
        const schema = response.content?.['application/problem+json']?.schema
        if (!schema) continue
        const narrowing = (schema.allOf as Schema[] | undefined)?.[1]?.properties as Record<string, Schema> | undefined
        const codes = narrowing?.code ? ((narrowing.code.enum as string[] | undefined) ?? [narrowing.code.const as string]) : []
        t.ok(codes.length > 0, `${method} ${path} ${status} names its codes`)
        t.equal(narrowing?.status?.const, Number(status), `${method} ${path} ${status}: status const`)
        for (const code of codes) {
          seen.add(code)
          t.equal(ERROR_CATALOGUE[code as keyof typeof ERROR_CATALOGUE]?.status, Number(status), `${method} ${path} ${status}: ${code}`)
        }
      }
    }
    t.same([...seen].sort(), Object.keys(ERROR_CATALOGUE).sort())
  })

  t.test('every response documents X-Request-Id as required, every 429 and 503 Retry-After, every 401 WWW-Authenticate', async (t) => {
    for (const { method, path, operation } of operationsOf(spec)) {
      for (const [status, response] of Object.entries(operation.responses)) {
        t.equal(response.headers?.['X-Request-Id']?.required, true, `${method} ${path} ${status}: X-Request-Id`)
        if (status === '503' || status === '429')
          t.equal(response.headers?.['Retry-After']?.required, true, `${method} ${path} ${status}: Retry-After`)
        if (status === '401') t.equal(response.headers?.['WWW-Authenticate']?.required, true, `${method} ${path} 401: WWW-Authenticate`)
      }
    }
  })

  t.test('bearerAuth on exactly the /v1/* operations and /metrics, each of which documents 401 and 429', async (t) => {
    t.equal(spec.components.securitySchemes?.bearerAuth?.type, 'http', 'bearerAuth is an http scheme')
    t.equal(spec.components.securitySchemes?.bearerAuth?.scheme, 'bearer', 'of the bearer kind')
    t.match(spec.components.securitySchemes?.bearerAuth?.description, /API_KEYS/, 'its description names API_KEYS')
    t.equal((rawDocument as { security?: unknown }).security, undefined, 'no document-wide requirement: the public routes are public')
    const operations = operationsOf(spec)
    t.ok(operations.some(({ path }) => isProtected(path)) && operations.some(({ path }) => !isProtected(path)), 'both kinds of route exist')
    for (const { method, path, operation } of operations) {
      const label = `${method} ${path}`
      if (isProtected(path)) {
        t.same(operation.security, [{ bearerAuth: [] }], `${label} requires bearerAuth`)
        t.ok(operation.responses['401'], `${label} documents 401`)
        t.ok(operation.responses['429'], `${label} documents 429`)
      } else {
        t.ok(
          operation.security === undefined || (Array.isArray(operation.security) && operation.security.length === 0),
          `${label} is public`,
        )
        t.notOk(operation.responses['401'], `${label} has no 401`)
        t.notOk(operation.responses['429'], `${label} has no 429`)
      }
    }
    const upload = (spec.paths['/v1/images']!.post as Operation).responses
    const busy = (upload['503']!.content!['application/problem+json']!.schema!.allOf as Schema[])[1]!.properties as Record<string, Schema>
    t.same(
      [...((busy.code!.enum as string[] | undefined) ?? [])].sort(),
      ['server_busy', 'storage_unavailable'],
      'POST 503 lists both codes',
    )
    t.ok(upload['422'], 'POST documents 422')
  })

  t.test('the info section documents the security headers, the limits and the timeouts', async (t) => {
    const text = rawDocument.info.description.replace(/\s+/g, ' ')
    for (const [documented] of SECURITY_HEADERS) t.ok(text.includes(documented), documented)
    const variables = [
      'API_KEYS',
      'RATE_LIMIT_PER_MINUTE',
      'MAX_CONCURRENT_UPLOADS',
      'UPLOAD_QUEUE_WAIT_MS',
      'UPLOAD_QUEUE_MAX',
      'CORS_ORIGINS',
      'MAX_IMAGE_PIXELS',
      'MAX_UPLOAD_BYTES',
      'REQUEST_TIMEOUT_MS',
      'HEADERS_TIMEOUT_MS',
      'IDLE_TIMEOUT_MS',
      'IMPORT_ALLOWED_HOSTS',
      'IMPORT_TIMEOUT_MS',
    ]
    for (const variable of [...variables, 'METRICS_PORT', 'USAGE_SCAN_INTERVAL_S', 'SHUTDOWN_TIMEOUT_MS']) {
      t.ok(text.includes(`\`${variable}\``), variable)
    }
    // The defaults stated there are the ones the service runs with: loadConfig of an empty environment
    // (buildTestApp's config would not do: it turns the periodic usage scan off).
    const config = loadConfig({})
    const defaults: [string, number][] = [
      ['RATE_LIMIT_PER_MINUTE', config.rateLimitPerMinute],
      ['MAX_CONCURRENT_UPLOADS', config.maxConcurrentUploads],
      ['UPLOAD_QUEUE_WAIT_MS', config.uploadQueue.waitMs],
      ['MAX_IMAGE_PIXELS', config.maxImagePixels],
      ['MAX_UPLOAD_BYTES', config.maxUploadBytes],
      ['REQUEST_TIMEOUT_MS', config.timeouts.requestMs],
      ['HEADERS_TIMEOUT_MS', config.timeouts.headersMs],
      ['IDLE_TIMEOUT_MS', config.timeouts.idleMs],
      ['USAGE_SCAN_INTERVAL_S', config.usageScanIntervalS],
      ['SHUTDOWN_TIMEOUT_MS', config.shutdownTimeoutMs],
      ['IMPORT_TIMEOUT_MS', config.imports.timeoutMs],
    ]
    for (const [variable, value] of defaults) t.ok(text.includes(`\`${variable}\`, default ${value}`), `${variable} default ${value}`)
    t.ok(text.includes(`\`IMPORT_ALLOWED_HOSTS\`, default \`${config.imports.allowedHosts.join(',')}\``), 'IMPORT_ALLOWED_HOSTS default')
    t.equal(config.metricsPort, undefined, 'METRICS_PORT has no default')
    t.ok(text.includes('`METRICS_PORT`, unset by default'), 'METRICS_PORT: unset by default')
    t.match(
      text,
      /## Graceful shutdown .*`SHUTDOWN_TIMEOUT_MS`.* 503 `storage_unavailable`/,
      'graceful shutdown: uploads aborted at shutdown are 503 storage_unavailable',
    )
  })

  t.test('the Key schema accepts exactly the keys the service accepts', async (t) => {
    const validate = validatorFor(spec.components.schemas.Key!)
    const samples = [
      'general/2025/05/abcdefghijklmnopqrst_portrait.png',
      'a',
      'a/b.c/d_e-f',
      '.hidden/x',
      'a..b/c',
      '...',
      'a/../b',
      '../a',
      'a/.',
      './a',
      'a//b',
      '/a',
      'a/',
      '',
      'a b',
      'a/%2e%2e/b',
      'ünï/x',
      'x'.repeat(1024),
      'x'.repeat(1025),
      `${'x/'.repeat(511)}xy`,
    ]
    for (const key of samples) {
      let accepted = true
      try {
        assertValidKey(key)
      } catch {
        accepted = false
      }
      t.equal(
        validate(key),
        accepted,
        `${JSON.stringify(key.length > 40 ? `${key.slice(0, 20)}…(${key.length})` : key)}: ${accepted ? 'valid' : 'invalid'}`,
      )
    }
  })

  t.test('the schemas are strict enough to catch a wrong body', async (t) => {
    const created = (spec.paths['/v1/images']!.post as Operation).responses['201']!.content!['application/json']!.schema!
    const body = {
      url: 'http://x.test/files/general/2025/05/abcdefghijklmnopqrst_a.png',
      key: 'general/2025/05/abcdefghijklmnopqrst_a.png',
      size: 1,
      filename: 'a.png',
      content_type: 'image/png',
      sha256: 'a'.repeat(64),
      width: 1,
      height: 1,
    }
    t.ok(validatorFor(created)(body), 'a well-formed 201 body passes')
    const { sha256: _, ...withoutHash } = body
    t.notOk(validatorFor(created)(withoutHash), 'a 201 body without sha256 fails')
    t.notOk(validatorFor(created)({ ...body, extra: 1 }), 'a 201 body with an undocumented member fails')
    const notFound = (spec.paths['/v1/images/{key}']!.get as Operation).responses['404']!.content!['application/problem+json']!.schema!
    const problem = {
      type: 'urn:image-upload-service:problem:not_found',
      title: 'No such object',
      status: 404,
      detail: 'x',
      code: 'not_found',
      request_id: 'r1',
    }
    t.ok(validatorFor(notFound)(problem), 'a well-formed 404 problem passes')
    t.notOk(validatorFor(notFound)({ ...problem, code: 'invalid_key' }), 'a 404 problem with another code fails')
    t.notOk(validatorFor(notFound)({ ...problem, fallback_url: 'https://x.test/a.png' }), 'fallback_url is for upload errors only')

    // A server_busy answer as the service builds it (the socket test below produces a real one too).
    const unavailable = (spec.paths['/v1/images']!.post as Operation).responses['503']!.content!['application/problem+json']!.schema!
    const busy = {
      type: 'urn:image-upload-service:problem:server_busy',
      title: ERROR_CATALOGUE.server_busy.title,
      status: 503,
      detail: 'x',
      code: 'server_busy',
      request_id: 'r2',
      fallback_url: 'https://x.test/a.png',
    }
    t.ok(validatorFor(unavailable)(busy), 'a server_busy problem passes')
    t.ok(validatorFor(unavailable)({ ...busy, code: 'storage_unavailable' }), 'a storage_unavailable problem passes')
    t.notOk(validatorFor(unavailable)({ ...busy, code: 'rate_limited' }), 'a 503 with a code of another status fails')
    t.notOk(validatorFor(unavailable)({ ...busy, status: 429 }), 'a 503 body with another status fails')
    t.ok(
      validatorFor(created)({ ...body, key: 'general/2025/05/abcdefghijklmnopqrst_a.svg', content_type: 'image/svg+xml' }),
      'an SVG 201 body passes',
    )
    t.notOk(validatorFor(created)({ ...body, content_type: 'image/tiff' }), 'a type the service does not store fails')

    const usage = (spec.paths['/v1/usage']!.get as Operation).responses['200']!.content!['application/json']!.schema!
    const report = {
      storage_bytes: 2_500_000_000,
      object_count: 3,
      scanned_at: '2025-05-01T12:00:00.000Z',
      month: '2025-05',
      class_a_operations: 12_345,
      class_b_operations: 0,
      limits: FREE_TIER,
      percentages: { storage_bytes: 25, class_a_operations: 1.23, class_b_operations: 0 },
    }
    t.ok(validatorFor(usage)(report), 'a well-formed usage report passes')
    t.ok(validatorFor(usage)({ ...report, scanned_at: null }), 'scanned_at may be null (before the first scan)')
    t.notOk(validatorFor(usage)({ ...report, month: '2025-5' }), 'month is YYYY-MM')
    t.notOk(validatorFor(usage)({ ...report, limits: { ...FREE_TIER, storage_bytes: 1 } }), 'the limits are the free tier')
    t.notOk(validatorFor(usage)({ ...report, percentages: { storage_bytes: 25 } }), 'every percentage is present')
    t.notOk(validatorFor(usage)({ ...report, extra: 1 }), 'a usage report with an undocumented member fails')
  })
})

t.test('the documented routes are exactly the registered routes', async (t) => {
  const documented = operationsOf(rawDocument).map(({ method, path }) => `${method} ${path}`)
  for (const route of CONTRACT_HEAD_ROUTES) t.ok(documented.includes(route), `the spec documents ${route}`)

  t.test('local-disk driver', async (t) => {
    const { app, routes } = await buildRecordingRoutes(t)
    assertRoutesMatch(t, app, routes, documented)
  })

  t.test('R2 driver: everything but /files', async (t) => {
    const { app, routes } = await buildRecordingRoutes(t, {
      STORAGE_DRIVER: 'r2',
      R2_ENDPOINT: 'http://127.0.0.1:9',
      R2_ACCESS_KEY_ID: 'test-access-key',
      R2_SECRET_ACCESS_KEY: 'test-secret-key',
      R2_PUBLIC_URL: 'https://images.example.test',
    })
    t.notOk(app.hasRoute({ method: 'GET', url: '/files/*' }), '/files is not registered')
    assertRoutesMatch(
      t,
      app,
      routes,
      documented.filter((route) => !route.includes(' /files/')),
    )
  })
})

t.test('answers conform to the document', async (t) => {
  t.test('upload, read, serve and delete', async (t) => {
    const { app } = await buildTestApp(t)

    const form = multipartBody([
      { name: 'context', value: 'portraits' },
      { name: 'Uploader_ID', value: '1234' },
      { name: 'file', filename: 'C:\\pics\\Thorgar.png', data: png() },
    ])
    const created = await app.inject({ method: 'POST', url: '/v1/images', ...form })
    t.equal(created.statusCode, 201)
    const stored = conforms(t, 'POST', '/v1/images', created) as StoredImage
    t.equal(created.headers.location, stored.url, 'Location is the url')
    t.equal(stored.filename, 'Thorgar.png', 'the filename without its directory')
    t.match(stored.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{16,}_Thorgar\.png$/, 'the key format')
    const formMetadata = await app.inject({ url: `/v1/images/${stored.key}` })
    const formRead = conforms(t, 'GET', '/v1/images/{key}', formMetadata) as ImageMetadata | undefined
    t.equal(formRead?.metadata.uploader_id, '1234', 'form fields are metadata, names case-folded')

    const raw = await app.inject({
      method: 'POST',
      url: '/v1/images?context=bot',
      headers: { 'content-type': 'application/octet-stream', 'x-meta-character-name': encodeURIComponent('Thorgar Ø 永久') },
      payload: png(8, 8),
    })
    t.equal(raw.statusCode, 201)
    const rawStored = conforms(t, 'POST', '/v1/images', raw) as StoredImage
    t.equal(rawStored.filename, 'image.png', 'the default filename')
    t.match(rawStored.key, /^bot\/\d{4}\/\d{2}\/[a-z]{16,}_image\.png$/)

    const metadata = await app.inject({ url: `/v1/images/${rawStored.key}` })
    t.equal(metadata.statusCode, 200)
    const read = conforms(t, 'GET', '/v1/images/{key}', metadata) as ImageMetadata
    t.equal(read.metadata.character_name, 'Thorgar Ø 永久', 'non-ASCII metadata round-trips')
    t.equal(read.metadata.sha256, rawStored.sha256, 'a single-request upload stores sha256')

    const head = await app.inject({ method: 'HEAD', url: `/v1/images/${rawStored.key}` })
    t.equal(head.statusCode, 200)
    conforms(t, 'HEAD', '/v1/images/{key}', head)
    t.equal(head.headers['x-meta-character-name'], encodeURIComponent('Thorgar Ø 永久'), 'X-Meta-* percent-encoded')

    const file = await app.inject({ url: `/files/${stored.key}` })
    t.equal(file.statusCode, 200)
    conforms(t, 'GET', '/files/{key}', file)
    t.same(file.rawPayload, png(), 'the stored bytes')
    const fileHead = await app.inject({ method: 'HEAD', url: `/files/${stored.key}` })
    t.equal(fileHead.statusCode, 200)
    conforms(t, 'HEAD', '/files/{key}', fileHead)
    const notModified = await app.inject({ url: `/files/${stored.key}`, headers: { 'if-none-match': String(file.headers.etag) } })
    t.equal(notModified.statusCode, 304)
    conforms(t, 'GET', '/files/{key}', notModified)

    for (const attempt of ['first', 'second']) {
      const deleted = await app.inject({ method: 'DELETE', url: `/v1/images/${stored.key}` })
      t.equal(deleted.statusCode, 204, `${attempt} DELETE is 204`)
      conforms(t, 'DELETE', '/v1/images/{key}', deleted)
    }
    const gone = await app.inject({ url: `/v1/images/${stored.key}` })
    t.equal(gone.statusCode, 404)
    t.equal((conforms(t, 'GET', '/v1/images/{key}', gone) as { code: string } | undefined)?.code, 'not_found')
    const goneHead = await app.inject({ method: 'HEAD', url: `/v1/images/${stored.key}` })
    t.equal(goneHead.statusCode, 404)
    conforms(t, 'HEAD', '/v1/images/{key}', goneHead)
    const goneFile = await app.inject({ url: `/files/${stored.key}` })
    t.equal(goneFile.statusCode, 404)
    conforms(t, 'GET', '/files/{key}', goneFile)
  })

  t.test('upload errors', async (t) => {
    const { app } = await buildTestApp(t)
    const raw = (url: string, headers: Record<string, string>, payload: Buffer | string) => ({ method: 'POST', url, headers, payload })
    const form = (parts: Parameters<typeof multipartBody>[0]) => ({ method: 'POST', url: '/v1/images', ...multipartBody(parts) })
    const cases: [string, Parameters<typeof overSocket>[1], number, string][] = [
      ['not an image', raw('/v1/images', { 'content-type': 'image/png' }, 'hello, world'), 415, 'unsupported_media_type'],
      ['a JSON body', raw('/v1/images', { 'content-type': 'application/json' }, '{}'), 415, 'unsupported_media_type'],
      [
        'a multipart body that is no form',
        raw('/v1/images', { 'content-type': 'multipart/mixed; boundary=x' }, png()),
        415,
        'unsupported_media_type',
      ],
      ['a bad context', raw('/v1/images?context=Bad!', { 'content-type': 'image/png' }, png()), 400, 'invalid_context'],
      ['service-owned metadata', raw('/v1/images', { 'content-type': 'image/png', 'x-meta-sha256': 'x' }, png()), 400, 'invalid_metadata'],
      ['an empty file', form([{ name: 'file', filename: 'a.png', data: Buffer.alloc(0) }]), 400, 'empty_file'],
      ['no file part', form([{ name: 'character_name', value: 'x' }]), 400, 'invalid_request'],
      [
        'a 50,000 × 50,000 PNG header, multipart',
        form([{ name: 'file', filename: 'bomb.png', data: pngHeaderOnly(50_000, 50_000) }]),
        422,
        'image_too_many_pixels',
      ],
      [
        'a 50,000 × 50,000 PNG header, raw',
        raw('/v1/images', { 'content-type': 'image/png' }, pngHeaderOnly(50_000, 50_000)),
        422,
        'image_too_many_pixels',
      ],
    ]
    for (const [what, request, status, code] of cases) {
      const res = await overSocket(app, request)
      t.equal(res.statusCode, status, `${what}: ${status}`)
      const problem = conforms(t, 'POST', '/v1/images', res) as { code: string; fallback_url?: string } | undefined
      t.equal(problem?.code, code, `${what}: ${code}`)
      t.equal(problem?.fallback_url, undefined, `${what}: no fallback_url without DEFAULT_PORTRAIT_URL`)
    }
  })

  t.test('imports: stored, refused, failed and the upload errors', async (t) => {
    const fallback = 'https://cdn.example.test/default-portrait.png'
    const { app } = await buildTestApp(t, { ...IMPORT_ENV, DEFAULT_PORTRAIT_URL: fallback }, importOptions())
    const json = { 'content-type': 'application/json' }
    const importOf = (body: string, headers: Record<string, string> = json) => ({
      method: 'POST',
      url: '/v1/images/import',
      headers,
      payload: body,
    })

    const created = await overSocket(app, importOf(importBody()))
    t.equal(created.statusCode, 201)
    const stored = conforms(t, 'POST', '/v1/images/import', created) as StoredImage | undefined
    t.equal(created.headers.location, stored?.url, 'Location is the url')
    t.equal(stored?.filename, 'portrait.png', 'the filename from the URL')
    const read = await overSocket(app, { url: `/v1/images/${stored?.key}` })
    const metadata = (conforms(t, 'GET', '/v1/images/{key}', read) as ImageMetadata | undefined)?.metadata
    t.equal(metadata?.migrated_from, importSource.url('/portrait.png'), 'migrated_from is the source URL')

    const body = (source_url: string, extra: Record<string, unknown> = {}) => JSON.stringify({ source_url, context: 'portraits', ...extra })
    const cases: [string, Parameters<typeof overSocket>[1], number, string][] = [
      ['a host outside the allow-list', importOf(body('https://images.example.com/a.png')), 400, 'import_refused'],
      ['a private address', importOf(body('https://10.0.0.1/a.png')), 400, 'import_refused'],
      ['an unknown member', importOf(body(importSource.url('/portrait.png'), { sourceUrl: 'x' })), 400, 'invalid_request'],
      [
        'a context that is not a string',
        importOf(JSON.stringify({ source_url: importSource.url('/portrait.png'), context: 7 })),
        400,
        'invalid_context',
      ],
      [
        'migrated_from in the metadata',
        importOf(body(importSource.url('/portrait.png'), { metadata: { migrated_from: 'x' } })),
        400,
        'invalid_metadata',
      ],
      ['a source that answers 404', importOf(importBody('/missing.png')), 502, 'import_failed'],
      ['a source that is not an image', importOf(importBody('/notes.png')), 415, 'unsupported_media_type'],
      [
        'a request that is not JSON',
        importOf('source_url=x', { 'content-type': 'application/x-www-form-urlencoded' }),
        415,
        'unsupported_media_type',
      ],
      ['a 50,000 × 50,000 PNG header at the source', importOf(importBody('/bomb.png')), 422, 'image_too_many_pixels'],
    ]
    for (const [what, request, status, code] of cases) {
      const res = await overSocket(app, request)
      t.equal(res.statusCode, status, `${what}: ${status}`)
      const problem = conforms(t, 'POST', '/v1/images/import', res) as { code: string; fallback_url?: string } | undefined
      t.equal(problem?.code, code, `${what}: ${code}`)
      t.equal(problem?.fallback_url, fallback, `${what}: fallback_url`)
    }

    const { app: small } = await buildTestApp(t, { ...IMPORT_ENV, MAX_UPLOAD_BYTES: '32' }, importOptions())
    const tooLarge = await overSocket(small, importOf(importBody()))
    t.equal(tooLarge.statusCode, 413, 'a source over MAX_UPLOAD_BYTES')
    t.equal((conforms(t, 'POST', '/v1/images/import', tooLarge) as { code: string } | undefined)?.code, 'image_too_large')
  })

  t.test('413 with fallback_url and Connection: close', async (t) => {
    const fallback = 'https://cdn.example.test/default-portrait.png'
    const { app } = await buildTestApp(t, { MAX_UPLOAD_BYTES: '32', DEFAULT_PORTRAIT_URL: fallback })
    const answers = [
      ['multipart, while streaming', await overSocket(app, { method: 'POST', url: '/v1/images', ...upload() })],
      [
        'raw, from Content-Length',
        await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() }),
      ],
    ] as const
    for (const [what, res] of answers) {
      t.equal(res.statusCode, 413, what)
      const problem = conforms(t, 'POST', '/v1/images', res) as { code: string; fallback_url?: string } | undefined
      t.equal(problem?.code, 'image_too_large', what)
      t.equal(problem?.fallback_url, fallback, `${what}: fallback_url`)
      t.equal(res.headers.connection, 'close', `${what}: Connection: close`)
    }
    // The control: an error answered after the whole body was read keeps the connection.
    const unsupported = await overSocket(app, {
      method: 'POST',
      url: '/v1/images',
      headers: { 'content-type': 'image/png' },
      payload: 'not png',
    })
    t.equal(unsupported.statusCode, 415)
    conforms(t, 'POST', '/v1/images', unsupported)
    t.equal(unsupported.headers.connection, 'keep-alive', 'a 415 after the whole body keeps the connection open')
  })

  t.test('key errors', async (t) => {
    const { app } = await buildTestApp(t)
    for (const method of ['GET', 'DELETE'] as const) {
      const res = await app.inject({ method, url: '/v1/images/a//b' })
      t.equal(res.statusCode, 400, `${method} empty segment`)
      t.equal((conforms(t, method, '/v1/images/{key}', res) as { code: string } | undefined)?.code, 'invalid_key')
    }
    const head = await app.inject({ method: 'HEAD', url: '/v1/images/a//b' })
    t.equal(head.statusCode, 400)
    conforms(t, 'HEAD', '/v1/images/{key}', head)
    const file = await app.inject({ url: '/files/a/b%20c' })
    t.equal(file.statusCode, 400)
    conforms(t, 'GET', '/files/{key}', file)
    // inject resolves `%2e%2e` as a dot segment before routing; a real client's request reaches the route.
    const dotDot = await overSocket(app, { url: '/v1/images/a/%2e%2e/b' })
    t.equal(dotDot.statusCode, 400)
    t.equal((conforms(t, 'GET', '/v1/images/{key}', dotDot) as { code: string } | undefined)?.code, 'invalid_key')
    const missing = await app.inject({ url: '/v1/images/general/2025/05/abcdefghijklmnopqrst_nothing.png' })
    t.equal(missing.statusCode, 404)
    t.equal((conforms(t, 'GET', '/v1/images/{key}', missing) as { code: string } | undefined)?.code, 'not_found')
  })

  t.test('probes, 503 with Retry-After, and request ids', async (t) => {
    const { app } = await buildTestApp(t)
    const live = await app.inject({ url: '/healthz', headers: { 'x-request-id': 'bot:42.a-b_c' } })
    t.equal(live.statusCode, 200)
    conforms(t, 'GET', '/healthz', live)
    t.equal(live.headers['x-request-id'], 'bot:42.a-b_c', 'a valid X-Request-Id is honoured')
    const ready = await app.inject({ url: '/readyz', headers: { 'x-request-id': 'not valid!' } })
    t.equal(ready.statusCode, 200)
    conforms(t, 'GET', '/readyz', ready)
    t.not(ready.headers['x-request-id'], 'not valid!', 'an invalid X-Request-Id is replaced')

    // A driver whose data directory does not exist is not ready.
    const driver = new FsDriver(path.join(tmpdir(), `missing-${process.pid}-${Date.now()}`, 'data'))
    const { app: down } = await buildTestApp(t, {}, { driver })
    const notReady = await down.inject({ url: '/readyz', headers: { 'x-request-id': 'probe-1' } })
    t.equal(notReady.statusCode, 503)
    const problem = conforms(t, 'GET', '/readyz', notReady) as { code: string; request_id: string } | undefined
    t.equal(problem?.code, 'storage_unavailable')
    t.equal(problem?.request_id, 'probe-1', 'request_id is the X-Request-Id')
  })

  t.test('401 without a token or with a wrong one, exactly on the operations the spec secures', async (t) => {
    const fallback = 'https://cdn.example.test/default-portrait.png'
    const { app } = await buildTestApp(t, { API_KEYS, DEFAULT_PORTRAIT_URL: fallback, ...IMPORT_ENV }, importOptions())
    const first = await overSocket(app, requestFor('POST', '/v1/images', '', bearer(TOKEN)))
    t.equal(first.statusCode, 201, 'the configured key uploads')
    const { key } = JSON.parse(first.body) as StoredImage

    const operations = operationsOf(spec)
    t.ok(operations.filter(({ operation }) => isSecured(operation)).length >= 4, 'the /v1/* operations are secured')
    for (const { method, path, operation } of operations) {
      if (!isSecured(operation)) {
        const res = await overSocket(app, requestFor(method, path, key))
        t.equal(res.statusCode, 200, `${method} ${path} is public: served without a token`)
        conforms(t, method, path, res)
        continue
      }
      const refusals: [string, Record<string, string>][] = [
        ['no token', {}],
        ['a wrong token', bearer(WRONG_TOKEN)],
        ['the right token in another scheme', { authorization: `Basic ${TOKEN}` }],
      ]
      for (const [what, headers] of refusals) {
        const label = `${method} ${path}, ${what}`
        const res = await overSocket(app, requestFor(method, path, key, headers))
        t.equal(res.statusCode, 401, label)
        t.equal(res.headers['www-authenticate'], WWW_AUTHENTICATE, `${label}: WWW-Authenticate`)
        const problem = conforms(t, method, path, res) as { code: string; fallback_url?: string } | undefined
        if (method === 'HEAD') continue
        t.equal(problem?.code, 'unauthorized', `${label}: unauthorized`)
        t.equal(problem?.fallback_url, method === 'POST' ? fallback : undefined, `${label}: fallback_url on upload errors only`)
      }
    }

    // The control: the same requests with the right token are served (DELETE last, as it removes the object).
    const served: Record<string, number> = { POST: 201, HEAD: 200, GET: 200, DELETE: 204 }
    const secured = operations
      .filter(({ operation }) => isSecured(operation))
      .sort((a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'))
    for (const { method, path } of secured) {
      const res = await overSocket(app, requestFor(method, path, key, bearer(TOKEN)))
      t.equal(res.statusCode, served[method], `${method} ${path} with the right token`)
      conforms(t, method, path, res)
    }
  })

  t.test('403 forbidden exactly where the key lacks the x-required-scope of the operation', async (t) => {
    const fallback = 'https://cdn.example.test/default-portrait.png'
    const lacking = { read: 'noread', upload: 'noupload', delete: 'nodelete' } as const
    const tokens = { noread: 'noread-'.padEnd(40, '1'), noupload: 'noupload-'.padEnd(40, '2'), nodelete: 'nodelete-'.padEnd(40, '3') }
    const { app } = await buildTestApp(
      t,
      {
        API_KEYS: `${API_KEYS},${Object.entries(tokens)
          .map(([name, token]) => `${name}:${token}`)
          .join(',')}`,
        API_KEY_SCOPES: 'noread:upload+delete,noupload:read+delete,nodelete:read+upload',
        DEFAULT_PORTRAIT_URL: fallback,
        ...IMPORT_ENV,
      },
      importOptions(),
    )
    const { key } = JSON.parse((await overSocket(app, requestFor('POST', '/v1/images', '', bearer(TOKEN)))).body) as StoredImage
    const served: Record<string, number> = { POST: 201, HEAD: 200, GET: 200, DELETE: 204 }
    const secured = operationsOf(spec).filter(({ path, operation }) => isSecured(operation) && path.startsWith('/v1/'))
    // DELETE last: it removes the object the others read.
    secured.sort((a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'))
    for (const { method, path, operation } of secured) {
      const scope = (operation as { 'x-required-scope'?: string })['x-required-scope']
      t.ok(scope === 'none' || scope === 'read' || scope === 'upload' || scope === 'delete', `${method} ${path} names its scope`)
      for (const [name, token] of Object.entries(tokens)) {
        const res = await overSocket(app, requestFor(method, path, key, bearer(token)))
        const label = `${method} ${path} (needs ${scope}) with ${name}`
        if (scope !== 'none' && lacking[scope as keyof typeof lacking] === name) {
          t.equal(res.statusCode, 403, label)
          const problem = conforms(t, method, path, res) as { code: string; fallback_url?: string } | undefined
          if (method === 'HEAD') continue
          t.equal(problem?.code, 'forbidden', `${label}: forbidden`)
          t.equal(problem?.fallback_url, method === 'POST' ? fallback : undefined, `${label}: fallback_url on upload errors only`)
        } else if (method !== 'DELETE') {
          t.equal(res.statusCode, served[method], label)
          conforms(t, method, path, res)
        }
      }
    }
  })

  t.test('429 with Retry-After on every /v1/* operation once the key has spent its minute', async (t) => {
    const { app } = await buildTestApp(t, { API_KEYS, RATE_LIMIT_PER_MINUTE: '1' })
    const first = await overSocket(app, requestFor('POST', '/v1/images', '', bearer(TOKEN)))
    t.equal(first.statusCode, 201, 'the first request is served')
    const stored = conforms(t, 'POST', '/v1/images', first) as StoredImage | undefined
    t.equal(first.headers['x-ratelimit-limit'], '1', 'X-RateLimit-Limit')
    t.equal(first.headers['x-ratelimit-remaining'], '0', 'X-RateLimit-Remaining')

    const secured = operationsOf(spec).filter(({ operation }) => isSecured(operation))
    t.ok(secured.length >= 4, 'the /v1/* operations')
    for (const { method, path } of secured) {
      const label = `${method} ${path}, second request`
      const res = await overSocket(app, requestFor(method, path, stored?.key ?? 'a/b.png', bearer(TOKEN)))
      t.equal(res.statusCode, 429, label)
      const problem = conforms(t, method, path, res) as { code: string } | undefined
      if (method !== 'HEAD') t.equal(problem?.code, 'rate_limited', `${label}: rate_limited`)
      const retryAfter = Number(res.headers['retry-after'])
      t.ok(retryAfter >= 1 && retryAfter <= 60, `${label}: Retry-After ${res.headers['retry-after']} is within the minute`)
    }
    const health = await overSocket(app, { url: '/healthz' })
    t.equal(health.statusCode, 200, 'the public routes are not limited')
    conforms(t, 'GET', '/healthz', health)
    t.equal(health.headers['x-ratelimit-limit'], undefined, 'nor counted')
  })

  t.test('503 server_busy with Retry-After while MAX_CONCURRENT_UPLOADS uploads are in flight and none may wait', async (t) => {
    const { app } = await buildTestApp(t, { MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_WAIT_MS: '0' })
    const arrived = new Promise<void>((resolve) => {
      app.addHook('preHandler', async (request) => {
        if (request.method === 'POST') resolve()
      })
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const { port } = app.server.address() as AddressInfo
    // A raw upload sends its headers and the first bytes, then waits: it holds the only upload slot.
    const body = png(64, 64)
    const held = net.connect(port, '127.0.0.1')
    t.teardown(() => held.destroy())
    await once(held, 'connect')
    let answer = ''
    held.on('data', (chunk: Buffer) => (answer += chunk.toString('utf8')))
    held.write(`POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: ${body.length}\r\n\r\n`)
    held.write(body.subarray(0, 20))
    await arrived
    await sleep(50) // from its last hook into the handler, which takes the slot

    const busy = await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })
    t.equal(busy.statusCode, 503, 'a second upload is refused')
    const problem = conforms(t, 'POST', '/v1/images', busy) as { code: string } | undefined
    t.equal(problem?.code, 'server_busy')
    t.equal(busy.headers['retry-after'], '1', 'Retry-After: 1')

    // The held upload was really in flight: sent in full, it is stored, and the slot is free again.
    held.write(body.subarray(20))
    const complete = /^HTTP\/1\.1 \d{3} [\s\S]*\r\n\r\n\{[\s\S]*\}$/
    const closed = once(held, 'close').then(() => {
      throw new Error(`the held upload's connection closed before a complete answer: ${JSON.stringify(answer)}`)
    })
    while (!complete.test(answer)) await Promise.race([once(held, 'data'), closed])
    closed.catch(() => {}) // the connection is destroyed at teardown, after this test is done with it
    t.match(answer, /^HTTP\/1\.1 201 /, 'the held upload completes')
    const next = await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })
    t.equal(next.statusCode, 201, 'the next upload is served')
    conforms(t, 'POST', '/v1/images', next)
  })

  t.test('SVG: stored when allowed and safe, served sandboxed; 415 otherwise', async (t) => {
    const drawing = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect width="40" height="30" fill="#c33"/></svg>'
    const scripted = drawing.replace('<rect', '<script>alert(1)</script><rect')
    const svgUpload = (document: string) => ({
      method: 'POST',
      url: '/v1/images?filename=drawing.svg',
      headers: { 'content-type': 'image/svg+xml' },
      payload: document,
    })
    const { app } = await buildTestApp(t, { ALLOWED_TYPES: 'image/png,image/svg+xml' })

    const created = await overSocket(app, svgUpload(drawing))
    t.equal(created.statusCode, 201, 'a clean SVG is stored')
    const stored = conforms(t, 'POST', '/v1/images', created) as StoredImage | undefined
    t.equal(stored?.content_type, 'image/svg+xml')
    t.match(stored?.key, /_drawing\.svg$/, 'extension svg')
    t.same([stored?.width, stored?.height], [40, 30], 'the size the root declares')

    const head = await overSocket(app, { method: 'HEAD', url: `/v1/images/${stored?.key}` })
    t.equal(head.statusCode, 200)
    conforms(t, 'HEAD', '/v1/images/{key}', head)
    t.equal(head.headers['content-type'], 'image/svg+xml')
    const file = await overSocket(app, { url: `/files/${stored?.key}` })
    t.equal(file.statusCode, 200)
    conforms(t, 'GET', '/files/{key}', file)
    t.equal(file.body, drawing, 'the same bytes')
    t.equal(file.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'; sandbox", 'served sandboxed')
    const raster = JSON.parse(
      (await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })).body,
    ) as StoredImage
    const rasterFile = await overSocket(app, { url: `/files/${raster.key}` })
    conforms(t, 'GET', '/files/{key}', rasterFile)
    t.equal(rasterFile.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'", 'a raster image is not sandboxed')

    const refused = await overSocket(app, svgUpload(scripted))
    t.equal(refused.statusCode, 415, 'an SVG with a script')
    t.match(conforms(t, 'POST', '/v1/images', refused), { code: 'unsupported_media_type', detail: /<script>/ })
    const { app: rasterOnly } = await buildTestApp(t)
    const notAllowed = await overSocket(rasterOnly, svgUpload(drawing))
    t.equal(notAllowed.statusCode, 415, 'SVG is opt-in')
    t.match(conforms(t, 'POST', '/v1/images', notAllowed), {
      code: 'unsupported_media_type',
      detail: /allowed: image\/jpeg, image\/png, image\/gif, image\/webp/,
    })
  })

  t.test('GET /v1/usage: the report, rescans, and 400 for a bad rescan', async (t) => {
    const { app } = await buildTestApp(t, { API_KEYS, USAGE_RESCAN_INTERVAL_S: '0' }) // every rescan lists
    const auth = bearer(TOKEN)
    const first = await overSocket(app, requestFor('POST', '/v1/images', '', auth))
    t.equal(first.statusCode, 201, 'an upload')
    const stored = conforms(t, 'POST', '/v1/images', first) as { size: number } | undefined

    type Report = UsageReport
    const usage = async (query: string) => {
      const res = await overSocket(app, { url: `/v1/usage${query}`, headers: auth })
      t.equal(res.statusCode, 200, `GET /v1/usage${query}`)
      return conforms(t, 'GET', '/v1/usage', res) as Report | undefined
    }
    const consistent = (report: Report | undefined, label: string) => {
      if (!t.ok(report, `${label}: a report`) || !report) return
      t.same(report.limits, FREE_TIER, `${label}: the limits are R2's free tier`)
      for (const figure of ['storage_bytes', 'class_a_operations', 'class_b_operations'] as const) {
        const exact = (100 * report[figure]) / report.limits[figure]
        t.ok(
          Math.abs(report.percentages[figure] - exact) <= 0.005 + 1e-9,
          `${label}: ${figure} ${report.percentages[figure]} % is ${exact} % to 2 decimals`,
        )
        t.equal(Math.round(report.percentages[figure] * 100), report.percentages[figure] * 100, `${label}: ${figure}: at most 2 decimals`)
      }
      t.equal(report.month, new Date().toISOString().slice(0, 7), `${label}: this UTC month`)
      t.same([report.class_a_operations, report.class_b_operations], [0, 0], `${label}: no R2 operations on local disk`)
    }

    const before = Date.now()
    const scanned = await usage('?rescan=true')
    consistent(scanned, 'rescan=true')
    t.equal(scanned?.object_count, 1, 'the one object stored')
    t.equal(scanned?.storage_bytes, stored?.size, 'its bytes')
    const scannedAt = Date.parse(scanned?.scanned_at ?? '')
    t.ok(scannedAt >= before - 1000 && scannedAt <= Date.now() + 1000, `scanned_at ${scanned?.scanned_at} is now`)

    // A second upload: the report keeps the last scan's figures until the next scan.
    t.equal((await overSocket(app, requestFor('POST', '/v1/images', '', auth))).statusCode, 201, 'a second upload')
    const cached = await usage('')
    consistent(cached, 'no rescan')
    t.equal(cached?.object_count, 1, 'without rescan: the last scan')
    t.equal(cached?.scanned_at, scanned?.scanned_at, 'without rescan: the same scanned_at')
    t.equal((await usage('?rescan=false'))?.object_count, 1, 'rescan=false: the last scan')
    const rescanned = await usage('?rescan=true')
    consistent(rescanned, 'second rescan')
    t.equal(rescanned?.object_count, 2, 'rescan=true lists the bucket again')
    t.equal(rescanned?.storage_bytes, 2 * (stored?.size ?? 0), 'both objects')

    for (const query of ['?rescan=maybe', '?rescan=1', '?rescan']) {
      const bad = await overSocket(app, { url: `/v1/usage${query}`, headers: auth })
      t.equal(bad.statusCode, 400, `${query}: 400`)
      t.match(conforms(t, 'GET', '/v1/usage', bad), { code: 'invalid_request', detail: /rescan/ }, `${query}: invalid_request`)
    }
  })

  t.test('GET /v1/usage: a backend that cannot be listed is a storage error, not a bug', async (t) => {
    const { app } = await buildTestApp(t, {
      STORAGE_DRIVER: 'r2',
      R2_ENDPOINT: 'http://127.0.0.1:9',
      R2_ACCESS_KEY_ID: 'test-access-key',
      R2_SECRET_ACCESS_KEY: 'test-secret-key',
      R2_PUBLIC_URL: 'https://images.example.test',
    })
    const res = await app.inject({ url: '/v1/usage' })
    t.equal(res.statusCode, 503, 'an unreachable backend')
    t.match(conforms(t, 'GET', '/v1/usage', res), { code: 'storage_unavailable' })
    t.equal(res.headers['retry-after'], '5', 'Retry-After: 5')
  })

  t.test('GET /metrics on the public port: Prometheus text with the key, 401 without', async (t) => {
    const { app } = await buildTestApp(t, { API_KEYS })
    t.equal((await overSocket(app, requestFor('POST', '/v1/images', '', bearer(TOKEN)))).statusCode, 201, 'an upload')

    const scraped = await overSocket(app, { url: '/metrics', headers: bearer(TOKEN) })
    t.equal(scraped.statusCode, 200, 'with the key')
    conforms(t, 'GET', '/metrics', scraped)
    t.equal(scraped.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8', 'the Prometheus text format')
    t.match(scraped.body, /^# TYPE r2_uploads_total counter$/m, 'r2_uploads_total is exported')
    t.match(scraped.body, /^r2_uploads_total 1$/m, 'and counts the upload')
    t.equal(scraped.headers['x-ratelimit-limit'], '120', 'rate-limited like /v1/*')

    for (const [what, headers] of [
      ['no token', {}],
      ['a wrong token', bearer(WRONG_TOKEN)],
    ] as const) {
      const refused = await overSocket(app, { url: '/metrics', headers })
      t.equal(refused.statusCode, 401, `${what}: 401`)
      t.equal(refused.headers['www-authenticate'], WWW_AUTHENTICATE, `${what}: WWW-Authenticate`)
      t.match(conforms(t, 'GET', '/metrics', refused), { code: 'unauthorized' }, `${what}: unauthorized`)
      t.notMatch(refused.body, /r2_uploads_total/, `${what}: no metrics`)
    }
  })

  t.test('with METRICS_PORT the public port has no /metrics; the metrics-only server serves it without a key', async (t) => {
    const { app, config } = await buildTestApp(t, { API_KEYS, METRICS_PORT: '0' })
    t.equal(config.metricsPort, 0, 'METRICS_PORT is set')
    t.notOk(app.hasRoute({ method: 'GET', url: '/metrics' }), '/metrics is not registered on the public app')
    for (const [what, headers] of [
      ['with the key', bearer(TOKEN)],
      ['without a key', {}],
    ] as const) {
      const res = await overSocket(app, { url: '/metrics', headers })
      t.equal(res.statusCode, 404, `${what}: 404`)
      t.match(conforms(t, 'GET', '/metrics', res), { code: 'not_found' }, `${what}: not_found`)
    }

    const metricsApp = await buildMetricsApp(app.metricsRegistry)
    t.teardown(() => metricsApp.close())
    const scraped = await metricsApp.inject({ url: '/metrics' })
    t.equal(scraped.statusCode, 200, 'the metrics-only server needs no key')
    t.equal(scraped.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8', 'the Prometheus text format')
    t.match(scraped.body, /^r2_uploads_total 0$/m, "the public app's metrics")
  })

  t.test('GET /openapi.yaml serves this file', async (t) => {
    const { app } = await buildTestApp(t)
    const res = await app.inject({ url: '/openapi.yaml' })
    t.equal(res.statusCode, 200)
    conforms(t, 'GET', '/openapi.yaml', res)
    t.ok(res.rawPayload.equals(await readFile(OPENAPI_PATH)), 'the same bytes as openapi.yaml')
  })
})
