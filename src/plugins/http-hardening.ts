import cors from '@fastify/cors'
import helmet from '@fastify/helmet'
import fp from 'fastify-plugin'

/** Security headers on every response, and CORS for the listed origins only. */
export default fp(
  async (app, options: { corsOrigins: string[] }) => {
    await app.register(helmet, {
      // An API and public images: nothing here may run scripts or be framed.
      contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
      frameguard: { action: 'deny' },
      // Images under /files are meant to be embedded by other sites, like a CDN's.
      crossOriginResourcePolicy: { policy: 'cross-origin' },
    })
    if (options.corsOrigins.length > 0) {
      await app.register(cors, {
        origin: options.corsOrigins,
        methods: ['GET', 'HEAD', 'POST', 'DELETE'],
        exposedHeaders: [
          'Location',
          'X-Request-Id',
          'Retry-After',
          'ETag',
          'WWW-Authenticate',
          'X-RateLimit-Limit',
          'X-RateLimit-Remaining',
          'X-RateLimit-Reset',
        ],
        maxAge: 600,
        // An OPTIONS request that is no preflight goes on to the routes (a 404 problem), not a text/plain 400.
        strictPreflight: false,
      })
    }
  },
  { name: 'http-hardening' },
)
