import type { FastifyInstance } from 'fastify'
import type { RouteFlags } from '../http/route-options.js'

/**
 * GET /v1/whoami: the calling key's name and scopes, so a client (the console) offers only what the key
 * may do. Any valid key may ask; with authentication off the name is null and every scope is granted.
 */
export default async function whoamiRoutes(app: FastifyInstance) {
  app.get('/v1/whoami', { config: { scope: 'none' } satisfies RouteFlags }, async (request) => ({
    name: request.apiKeyName ?? null,
    scopes: request.grantedScopes,
  }))
}
