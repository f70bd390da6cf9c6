import { createHash, timingSafeEqual } from 'node:crypto'
import fp from 'fastify-plugin'
import type { ApiKey } from '../config.js'
import { ApiError } from '../errors.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The name of the API key that authenticated the request (never its token). */
    apiKeyName?: string
  }
}

const PROTECTED_PREFIX = '/v1/'
const digest = (token: string): Buffer => createHash('sha256').update(token).digest()

/**
 * `Authorization: Bearer <token>` on every /v1/* request. Tokens are compared as SHA-256 digests with
 * timingSafeEqual against every key, without stopping at a match, so timing tells nothing about them.
 */
export default fp(
  async (app, options: { apiKeys: ApiKey[] }) => {
    if (options.apiKeys.length === 0) {
      app.log.warn('API_KEYS is not set: authentication is OFF and anyone who reaches this service can upload and delete')
      return
    }
    const keys = options.apiKeys.map((key) => ({ name: key.name, digest: digest(key.token) }))

    app.addHook('onRequest', async (request, reply) => {
      // CORS preflights never carry credentials.
      if (!request.url.startsWith(PROTECTED_PREFIX) || request.method === 'OPTIONS') return
      const presented = /^Bearer ([^\s]+)$/i.exec(request.headers.authorization ?? '')?.[1]
      let matched: string | undefined
      if (presented !== undefined) {
        const presentedDigest = digest(presented)
        for (const key of keys) if (timingSafeEqual(presentedDigest, key.digest)) matched = key.name
      }
      if (matched === undefined) {
        reply.header('www-authenticate', 'Bearer realm="image-upload-service"')
        throw new ApiError('unauthorized', presented === undefined ? 'Send Authorization: Bearer <token>.' : 'The API key is not valid.')
      }
      request.apiKeyName = matched
      request.log = request.log.child({ apiKey: matched })
      reply.log = request.log
    })
  },
  { name: 'auth' },
)
