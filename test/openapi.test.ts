import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { readFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import SwaggerParser from '@apidevtools/swagger-parser'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { ERROR_CATALOGUE } from '../src/errors.js'
import { OPENAPI_PATH } from '../src/routes/openapi.js'
import { FsDriver } from '../src/storage/fs.js'
import { assertValidKey } from '../src/upload/keys.js'
import { buildTestApp } from './helpers/app.js'
import { png } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

type Schema = Record<string, unknown>
interface HeaderObject {
  required?: boolean
  schema?: Schema
}
interface ResponseObject {
  description: string
  headers?: Record<string, HeaderObject>
  content?: Record<string, { schema?: Schema }>
}
interface Operation {
  responses: Record<string, ResponseObject>
}
interface OpenApiDocument {
  openapi: string
  info: { version: string }
  paths: Record<string, Record<string, unknown>>
  components: { schemas: Record<string, Schema> }
}

/** What the conformance check needs of an answer, from inject or from a real socket. */
interface Answer {
  statusCode: number
  headers: Record<string, string | string[] | number | undefined>
  body: string
}

const HTTP_METHODS = ['get', 'head', 'post', 'put', 'delete', 'patch', 'options', 'trace'] as const
/** HEAD routes the contract names; Fastify's automatic HEAD for other GET routes need not be documented. */
const CONTRACT_HEAD_ROUTES = ['HEAD /v1/images/{key}', 'HEAD /files/{key}']

const documentText = await readFile(OPENAPI_PATH, 'utf8')
const rawDocument = parse(documentText) as OpenApiDocument
// Every $ref resolved, so each response's schema can be compiled on its own.
const spec = (await SwaggerParser.dereference(structuredClone(rawDocument) as never)) as unknown as OpenApiDocument

const ajv = new Ajv2020({ allErrors: true, strict: true })
addFormats.default(ajv)
const validators = new Map<Schema, ValidateFunction>()
function validatorFor(schema: Schema): ValidateFunction {
  let validate = validators.get(schema)
  if (!validate) {
    validate = ajv.compile(schema)
    validators.set(schema, validate)
  }
  return validate
}

function operationsOf(document: OpenApiDocument): { method: string; path: string; operation: Operation }[] {
  return Object.entries(document.paths).flatMap(([path, item]) =>
    HTTP_METHODS.filter((method) => item[method] !== undefined).map((method) => ({
      method: method.toUpperCase(),
      path,
      operation: item[method] as Operation,
    })),
  )
}

/** `/v1/images/{key}` ↔ Fastify's `/v1/images/*`. */
const asFastifyUrl = (specPath: string) => specPath.replace(/\{key\}$/, '*')
const asSpecPath = (fastifyUrl: string) => fastifyUrl.replace(/\*$/, '{key}')

function headerValue(answer: Answer, name: string): string | undefined {
  const value = answer.headers[name.toLowerCase()]
  return value === undefined ? undefined : Array.isArray(value) ? value.join(', ') : String(value)
}

/**
 * Asserts that an answer is one the spec describes for this route: its status is documented, every required
 * header is present, every documented header present has a valid value, and the body has a documented media type
 * and (for JSON) matches the schema. Returns the parsed JSON body, if any.
 */
function conforms(t: Test, method: string, specPath: string, answer: Answer): unknown {
  const label = `${method} ${specPath} ${answer.statusCode}`
  const operation = spec.paths[specPath]?.[method.toLowerCase()] as Operation | undefined
  if (!t.ok(operation, `${method} ${specPath} is in the spec`) || !operation) return undefined
  const response = operation.responses[String(answer.statusCode)]
  if (!t.ok(response, `${label} is a documented status`) || !response) return undefined

  for (const [name, header] of Object.entries(response.headers ?? {})) {
    const value = headerValue(answer, name)
    if (value === undefined) {
      t.notOk(header.required, `${label}: required header ${name} is sent`)
      continue
    }
    if (!header.schema) continue
    const instance = header.schema.type === 'integer' && /^-?\d+$/.test(value) ? Number(value) : value
    const validate = validatorFor(header.schema)
    t.ok(validate(instance), `${label}: header ${name}: ${value} matches its schema`, { errors: validate.errors })
  }

  if (method === 'HEAD' || !response.content) {
    t.equal(answer.body, '', `${label}: no body`)
    return undefined
  }
  const mediaType = (headerValue(answer, 'content-type') ?? '').split(';')[0]!.trim().toLowerCase()
  const documented = Object.keys(response.content).find(
    (key) => key === mediaType || (key.endsWith('/*') && mediaType.startsWith(key.slice(0, -1))),
  )
  if (!t.ok(documented, `${label}: Content-Type ${mediaType} is documented`, { documented: Object.keys(response.content) }) || !documented) {
    return undefined
  }
  if (!/[/+]json$/.test(documented)) return undefined
  const body: unknown = JSON.parse(answer.body)
  const schema = response.content[documented]!.schema
  if (!t.ok(schema, `${label}: the JSON body has a schema`) || !schema) return body
  const validate = validatorFor(schema)
  t.ok(validate(body), `${label}: body matches the schema`, { body, errors: validate.errors })
  return body
}

/** Builds the app as the tests do, recording every route Fastify registers (automatic HEAD routes included). */
async function buildRecordingRoutes(t: Test, env: NodeJS.ProcessEnv = {}) {
  const routes = new Set<string>()
  const onInit = (message: unknown) => {
    const { fastify } = message as { fastify: FastifyInstance }
    fastify.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) routes.add(`${method} ${route.url}`)
    })
  }
  subscribe('fastify.initialization', onInit)
  try {
    const built = await buildTestApp(t, env)
    return { ...built, routes }
  } finally {
    unsubscribe('fastify.initialization', onInit)
  }
}

/** Compares the routes an app registers with the spec's operations, both ways. */
function assertRoutesMatch(t: Test, app: FastifyInstance, registered: Set<string>, documented: string[]) {
  t.ok(registered.size > 0, 'routes were recorded')
  const registeredSpecRoutes = new Set([...registered].map((route) => asSpecPath(route)))
  for (const route of documented) {
    t.ok(registeredSpecRoutes.has(route), `the app registers ${route}, which the spec documents`)
    const [method, specPath] = route.split(' ') as [string, string]
    t.ok(app.hasRoute({ method: method as 'GET', url: asFastifyUrl(specPath) }), `hasRoute ${route}`)
  }
  for (const route of registeredSpecRoutes) {
    const [method, specPath] = route.split(' ') as [string, string]
    const automaticHead = method === 'HEAD' && registeredSpecRoutes.has(`GET ${specPath}`) && !CONTRACT_HEAD_ROUTES.includes(route)
    if (automaticHead) continue
    t.ok(documented.includes(route), `the spec documents ${route}, which the app registers`)
  }
}

/**
 * A request over a real socket. Used where inject differs from a client: inject resolves `%2e%2e` as a dot
 * segment before routing, and its request never becomes `complete`, so under inject every error answer says
 * `Connection: close` (and, once the body has been read, arrives only after the service's linger delay).
 */
async function overSocket(
  app: FastifyInstance,
  request: { method?: string; url: string; headers?: Record<string, string>; payload?: Buffer | string },
): Promise<Answer> {
  if (!app.server.listening) await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const payload = request.payload === undefined ? undefined : Buffer.from(request.payload)
  const headers = { ...request.headers, ...(payload && { 'content-length': String(payload.length) }) }
  const agent = new http.Agent({ keepAlive: true })
  return new Promise<Answer>((resolve, reject) => {
    const outgoing = http.request({ host: '127.0.0.1', port, method: request.method ?? 'GET', path: request.url, headers, agent }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () =>
        resolve({ statusCode: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }),
      )
      response.on('error', reject)
    })
    outgoing.on('error', reject)
    outgoing.end(payload)
  }).finally(() => agent.destroy())
}

const upload = (filename = 'portrait.png', data = png()) => multipartBody([{ name: 'file', filename, data }])

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

  t.test('every response documents X-Request-Id as required, and every 503 Retry-After', async (t) => {
    for (const { method, path, operation } of operationsOf(spec)) {
      for (const [status, response] of Object.entries(operation.responses)) {
        t.equal(response.headers?.['X-Request-Id']?.required, true, `${method} ${path} ${status}: X-Request-Id`)
        if (status === '503') t.equal(response.headers?.['Retry-After']?.required, true, `${method} ${path} 503: Retry-After`)
      }
    }
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
      t.equal(validate(key), accepted, `${JSON.stringify(key.length > 40 ? `${key.slice(0, 20)}…(${key.length})` : key)}: ${accepted ? 'valid' : 'invalid'}`)
    }
  })

  t.test('the schemas are strict enough to catch a wrong body', async (t) => {
    const created = (spec.paths['/v1/images']!.post as Operation).responses['201']!.content!['application/json']!.schema!
    const body = { url: 'http://x.test/files/general/2025/05/abcdefghijklmnopqrst_a.png', key: 'general/2025/05/abcdefghijklmnopqrst_a.png', size: 1, filename: 'a.png', content_type: 'image/png', sha256: 'a'.repeat(64), width: 1, height: 1 }
    t.ok(validatorFor(created)(body), 'a well-formed 201 body passes')
    const { sha256: _, ...withoutHash } = body
    t.notOk(validatorFor(created)(withoutHash), 'a 201 body without sha256 fails')
    t.notOk(validatorFor(created)({ ...body, extra: 1 }), 'a 201 body with an undocumented member fails')
    const notFound = (spec.paths['/v1/images/{key}']!.get as Operation).responses['404']!.content!['application/problem+json']!.schema!
    const problem = { type: 'urn:image-upload-service:problem:not_found', title: 'No such object', status: 404, detail: 'x', code: 'not_found', request_id: 'r1' }
    t.ok(validatorFor(notFound)(problem), 'a well-formed 404 problem passes')
    t.notOk(validatorFor(notFound)({ ...problem, code: 'invalid_key' }), 'a 404 problem with another code fails')
    t.notOk(validatorFor(notFound)({ ...problem, fallback_url: 'https://x.test/a.png' }), 'fallback_url is for upload errors only')
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
    assertRoutesMatch(t, app, routes, documented.filter((route) => !route.includes(' /files/')))
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
    const stored = conforms(t, 'POST', '/v1/images', created) as { url: string; key: string; filename: string }
    t.equal(created.headers.location, stored.url, 'Location is the url')
    t.equal(stored.filename, 'Thorgar.png', 'the filename without its directory')
    t.match(stored.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{16,}_Thorgar\.png$/, 'the key format')
    const formMetadata = await app.inject({ url: `/v1/images/${stored.key}` })
    const formRead = conforms(t, 'GET', '/v1/images/{key}', formMetadata) as { metadata: Record<string, string> } | undefined
    t.equal(formRead?.metadata.uploader_id, '1234', 'form fields are metadata, names case-folded')

    const raw = await app.inject({
      method: 'POST',
      url: '/v1/images?context=bot',
      headers: { 'content-type': 'application/octet-stream', 'x-meta-character-name': encodeURIComponent('Thorgar Ø 永久') },
      payload: png(8, 8),
    })
    t.equal(raw.statusCode, 201)
    const rawStored = conforms(t, 'POST', '/v1/images', raw) as { key: string; filename: string; sha256: string }
    t.equal(rawStored.filename, 'image.png', 'the default filename')
    t.match(rawStored.key, /^bot\/\d{4}\/\d{2}\/[a-z]{16,}_image\.png$/)

    const metadata = await app.inject({ url: `/v1/images/${rawStored.key}` })
    t.equal(metadata.statusCode, 200)
    const read = conforms(t, 'GET', '/v1/images/{key}', metadata) as { metadata: Record<string, string> }
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
      ['a bad context', raw('/v1/images?context=Bad!', { 'content-type': 'image/png' }, png()), 400, 'invalid_context'],
      ['service-owned metadata', raw('/v1/images', { 'content-type': 'image/png', 'x-meta-sha256': 'x' }, png()), 400, 'invalid_metadata'],
      ['an empty file', form([{ name: 'file', filename: 'a.png', data: Buffer.alloc(0) }]), 400, 'empty_file'],
      ['no file part', form([{ name: 'character_name', value: 'x' }]), 400, 'invalid_request'],
    ]
    for (const [what, request, status, code] of cases) {
      const res = await overSocket(app, request)
      t.equal(res.statusCode, status, `${what}: ${status}`)
      const problem = conforms(t, 'POST', '/v1/images', res) as { code: string; fallback_url?: string } | undefined
      t.equal(problem?.code, code, `${what}: ${code}`)
      t.equal(problem?.fallback_url, undefined, `${what}: no fallback_url without DEFAULT_PORTRAIT_URL`)
    }
  })

  t.test('413 with fallback_url and Connection: close', async (t) => {
    const fallback = 'https://cdn.example.test/default-portrait.png'
    const { app } = await buildTestApp(t, { MAX_UPLOAD_BYTES: '32', DEFAULT_PORTRAIT_URL: fallback })
    const answers = [
      ['multipart, while streaming', await overSocket(app, { method: 'POST', url: '/v1/images', ...upload() })],
      ['raw, from Content-Length', await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: png() })],
    ] as const
    for (const [what, res] of answers) {
      t.equal(res.statusCode, 413, what)
      const problem = conforms(t, 'POST', '/v1/images', res) as { code: string; fallback_url?: string } | undefined
      t.equal(problem?.code, 'image_too_large', what)
      t.equal(problem?.fallback_url, fallback, `${what}: fallback_url`)
      t.equal(res.headers.connection, 'close', `${what}: Connection: close`)
    }
    // The control: an error answered after the whole body was read keeps the connection.
    const unsupported = await overSocket(app, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'image/png' }, payload: 'not png' })
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

  t.test('GET /openapi.yaml serves this file', async (t) => {
    const { app } = await buildTestApp(t)
    const res = await app.inject({ url: '/openapi.yaml' })
    t.equal(res.statusCode, 200)
    conforms(t, 'GET', '/openapi.yaml', res)
    t.ok(res.rawPayload.equals(await readFile(OPENAPI_PATH)), 'the same bytes as openapi.yaml')
  })
})
