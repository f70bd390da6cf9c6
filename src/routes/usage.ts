import type { FastifyInstance } from 'fastify'
import type { RouteFlags } from '../http/route-options.js'

/**
 * GET /v1/usage: storage and R2 operations against the free tier. `?rescan=true` lists the bucket first,
 * unless it was listed less than USAGE_RESCAN_INTERVAL_S ago.
 */
export default async function usageRoutes(app: FastifyInstance) {
  app.get<{ Querystring: { rescan?: boolean } }>(
    '/v1/usage',
    {
      config: { scope: 'read' } satisfies RouteFlags,
      schema: { querystring: { type: 'object', properties: { rescan: { type: 'boolean' } }, additionalProperties: false } },
    },
    async (request) => app.usage.report({ rescan: request.query.rescan === true }),
  )
}
