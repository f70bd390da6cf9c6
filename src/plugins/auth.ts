import { createHash, timingSafeEqual } from 'node:crypto'
import rateLimit from '@fastify/rate-limit'
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { ApiKey } from '../config.js'
import { ApiError } from '../errors.js'
import { API_PREFIX, type RouteFlags, routeFlagsOf } from '../http/route-options.js'
import { SCOPES, type Scope } from '../scopes.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The name of the API key that authenticated the request (never its token). */
    apiKeyName?: string
    /** What the caller may do: its key's scopes, or every scope with authentication off (set for every request, on arrival). */
    grantedScopes: readonly Scope[]
  }
}

const digest = (token: string): Buffer => createHash('sha256').update(token).digest()

/**
 * A /v1/* request, by the route it matched as well as by its raw path: the router decodes the path
 * (`/%761/images` is `/v1/images`), so the raw path alone would let an encoded request through. Routes
 * outside /v1/* may ask for a key too (/metrics on the public port).
 */
const needsKey = (request: FastifyRequest): boolean =>
  request.url.startsWith(API_PREFIX) ||
  (request.routeOptions.url ?? '').startsWith(API_PREFIX) ||
  routeFlagsOf(request).requiresApiKey === true

/**
 * `Authorization: Bearer <token>` on every /v1/* request (and /metrics on the public port), and a request budget per key. In order: the key
 * is identified, the budget is charged (per key, or per address for requests without a valid key, so
 * guessing tokens is throttled too), then a request without a valid key is refused, and one whose key
 * lacks the scope its route declares (RouteFlags.scope) is forbidden.
 */
export default fp(
  async (app, options: { apiKeys: ApiKey[]; rateLimitPerMinute: number }) => {
    const enforced = options.apiKeys.length > 0
    if (!enforced) app.log.warn('API_KEYS is not set: authentication is OFF and anyone who reaches this service can upload and delete')
    const keys = options.apiKeys.map((key) => ({ name: key.name, scopes: key.scopes, digest: digest(key.token) }))

    app.addHook('onRoute', (route) => {
      const { scope } = (route.config ?? {}) as RouteFlags
      if (route.url.startsWith(API_PREFIX) && scope === undefined) {
        throw new Error(`${route.method} ${route.url} declares no scope (config.scope: a scope, or 'none')`)
      }
    })

    app.addHook('onRequest', async (request, reply) => {
      request.grantedScopes = enforced ? [] : SCOPES
      if (!enforced || !needsKey(request)) return
      const presented = /^Bearer ([^\s]+)$/i.exec(request.headers.authorization ?? '')?.[1]
      if (presented === undefined) return
      // Digests compared in constant time against every key, without stopping at a match.
      const presentedDigest = digest(presented)
      let matched: (typeof keys)[number] | undefined
      for (const key of keys) if (timingSafeEqual(presentedDigest, key.digest)) matched = key
      if (matched === undefined) return
      request.apiKeyName = matched.name
      request.grantedScopes = matched.scopes
      request.log = request.log.child({ apiKey: matched.name })
      reply.log = request.log
    })

    await app.register(rateLimit, {
      max: options.rateLimitPerMinute,
      timeWindow: 60_000,
      allowList: (request) => !needsKey(request),
      keyGenerator: (request) => (request.apiKeyName ? `key:${request.apiKeyName}` : `address:${request.clientAddress}`),
      errorResponseBuilder: (_request, context) =>
        new ApiError('rate_limited', `At most ${context.max} requests a minute per API key; retry in ${Math.ceil(context.ttl / 1000)} s.`),
    })

    // The limiter hooks each route; a path that matches none (a 404) is counted here, so it cannot serve
    // to try tokens unthrottled either.
    const limitUnmatched = app.rateLimit()

    // preParsing: after every onRequest hook, the rate limiter's included; before any body is read.
    app.addHook('preParsing', async (request, reply) => {
      // CORS preflights never carry credentials.
      if (!enforced || !needsKey(request) || request.method === 'OPTIONS') return
      if (request.apiKeyName) {
        const { scope = 'none' } = routeFlagsOf(request)
        if (scope !== 'none' && !request.grantedScopes.includes(scope)) {
          throw new ApiError('forbidden', `The API key "${request.apiKeyName}" does not have the "${scope}" scope this request needs.`)
        }
        return
      }
      if (request.is404) await limitUnmatched.call(app, request, reply)
      reply.header('www-authenticate', 'Bearer realm="image-upload-service"')
      throw new ApiError(
        'unauthorized',
        request.headers.authorization ? 'The API key is not valid.' : 'Send Authorization: Bearer <token>.',
      )
    })
  },
  { name: 'auth', dependencies: ['client-address'] },
)
