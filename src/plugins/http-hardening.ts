import cors from '@fastify/cors'
import helmet from '@fastify/helmet'
import rateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import { ApiError } from '../errors.js'

export interface HardeningOptions {
  corsOrigins: string[]
  rateLimitPerMinute: number
}

/** Security headers on every response, CORS for the listed origins only, and a request budget per API key. */
export default fp(
  async (app, options: HardeningOptions) => {
    await app.register(helmet, {
      // An API and public images: nothing here may run scripts or be framed.
      contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
      // Images under /files are meant to be embedded by other sites, like a CDN's.
      crossOriginResourcePolicy: { policy: 'cross-origin' },
    })
    if (options.corsOrigins.length > 0) {
      await app.register(cors, {
        origin: options.corsOrigins,
        methods: ['GET', 'HEAD', 'POST', 'DELETE'],
        exposedHeaders: ['Location', 'X-Request-Id', 'Retry-After', 'ETag'],
        maxAge: 600,
      })
    }
    await app.register(rateLimit, {
      max: options.rateLimitPerMinute,
      timeWindow: 60_000,
      // After authentication, so the budget is the key's; the public routes are not counted.
      hook: 'preHandler',
      allowList: (request) => !request.url.startsWith('/v1/'),
      keyGenerator: (request) => request.apiKeyName ?? request.ip,
      errorResponseBuilder: (_request, context) =>
        new ApiError('rate_limited', `At most ${context.max} requests a minute per API key; retry in ${Math.ceil(context.ttl / 1000)} s.`),
    })
  },
  { name: 'http-hardening' },
)
