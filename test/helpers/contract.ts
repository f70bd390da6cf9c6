import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { readFile } from 'node:fs/promises'
import SwaggerParser from '@apidevtools/swagger-parser'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { parse } from 'yaml'
import { OPENAPI_PATH } from '../../src/routes/openapi.js'
import { buildTestApp } from './app.js'
import type { Answer } from './http.js'

/**
 * The contract checker: openapi.yaml, loaded and dereferenced, and assertions that an answer (from inject
 * or a real socket) or an app's routes are what it documents.
 */
export type Schema = Record<string, unknown>
export interface HeaderObject {
  required?: boolean
  schema?: Schema
}
export interface ResponseObject {
  description: string
  headers?: Record<string, HeaderObject>
  content?: Record<string, { schema?: Schema }>
}
export interface Operation {
  security?: Record<string, string[]>[]
  responses: Record<string, ResponseObject>
}
export interface OpenApiDocument {
  openapi: string
  info: { version: string; description: string }
  paths: Record<string, Record<string, unknown>>
  components: { schemas: Record<string, Schema>; securitySchemes?: Record<string, Record<string, unknown>> }
}

const HTTP_METHODS = ['get', 'head', 'post', 'put', 'delete', 'patch', 'options', 'trace'] as const
/** HEAD routes the contract names; Fastify's automatic HEAD for other GET routes need not be documented. */
export const CONTRACT_HEAD_ROUTES = ['HEAD /v1/images/{key}', 'HEAD /files/{key}']
/**
 * The security headers the info section promises on every response the framework answers, as the header
 * line written there and as what an answer must carry.
 */
export const SECURITY_HEADERS: [documented: string, name: string, value: RegExp][] = [
  [
    "Content-Security-Policy: default-src 'none';frame-ancestors 'none'",
    'content-security-policy',
    /^default-src 'none';frame-ancestors 'none'(; sandbox)?$/,
  ],
  ['X-Content-Type-Options: nosniff', 'x-content-type-options', /^nosniff$/],
  ['Cross-Origin-Resource-Policy: cross-origin', 'cross-origin-resource-policy', /^cross-origin$/],
]

const documentText = await readFile(OPENAPI_PATH, 'utf8')
export const rawDocument = parse(documentText) as OpenApiDocument
// Every $ref resolved, so each response's schema can be compiled on its own.
export const spec = (await SwaggerParser.dereference(structuredClone(rawDocument) as never)) as unknown as OpenApiDocument

const ajv = new Ajv2020({ allErrors: true, strict: true })
addFormats.default(ajv)
const validators = new Map<Schema, ValidateFunction>()
export function validatorFor(schema: Schema): ValidateFunction {
  let validate = validators.get(schema)
  if (!validate) {
    validate = ajv.compile(schema)
    validators.set(schema, validate)
  }
  return validate
}

export function operationsOf(document: OpenApiDocument): { method: string; path: string; operation: Operation }[] {
  return Object.entries(document.paths).flatMap(([path, item]) =>
    HTTP_METHODS.filter((method) => item[method] !== undefined).map((method) => ({
      method: method.toUpperCase(),
      path,
      operation: item[method] as Operation,
    })),
  )
}

/** `/v1/images/{key}` ↔ Fastify's `/v1/images/*`. */
/** `{key}` (slashes included) is a wildcard route; any other path parameter a named one (`{file}` ↔ `:file`). */
export const asFastifyUrl = (specPath: string) => specPath.replace(/\{key\}$/, '*').replace(/\{(\w+)\}/g, ':$1')
export const asSpecPath = (fastifyUrl: string) => fastifyUrl.replace(/\*$/, '{key}').replace(/:(\w+)/g, '{$1}')

export function headerValue(answer: Answer, name: string): string | undefined {
  const value = answer.headers[name.toLowerCase()]
  return value === undefined ? undefined : Array.isArray(value) ? value.join(', ') : String(value)
}

/**
 * Asserts that an answer is one the spec describes for this route: its status is documented, every required
 * header is present, every documented header present has a valid value, and the body has a documented media type
 * and (for JSON) matches the schema. Returns the parsed JSON body, if any.
 */
export function conforms(t: Test, method: string, specPath: string, answer: Answer): unknown {
  const label = `${method} ${specPath} ${answer.statusCode}`
  const operation = spec.paths[specPath]?.[method.toLowerCase()] as Operation | undefined
  if (!t.ok(operation, `${method} ${specPath} is in the spec`) || !operation) return undefined
  const response = operation.responses[String(answer.statusCode)]
  if (!t.ok(response, `${label} is a documented status`) || !response) return undefined
  // A header the response documents itself (the console's own policy) is checked against that instead.
  const ownHeaders = new Set(Object.keys(response.headers ?? {}).map((name) => name.toLowerCase()))
  for (const [, name, value] of SECURITY_HEADERS) if (!ownHeaders.has(name)) t.match(headerValue(answer, name), value, `${label}: ${name}`)

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
  if (
    !t.ok(documented, `${label}: Content-Type ${mediaType} is documented`, { documented: Object.keys(response.content) }) ||
    !documented
  ) {
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
export async function buildRecordingRoutes(t: Test, env: NodeJS.ProcessEnv = {}) {
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
export function assertRoutesMatch(t: Test, app: FastifyInstance, registered: Set<string>, documented: string[]) {
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
