import type { FastifyInstance } from 'fastify'
import { ApiError } from '../errors.js'

/** Liveness (the process answers) and readiness (storage answers, through the cached probe). */
export default async function healthRoutes(app: FastifyInstance) {
  app.get('/healthz', async () => ({ status: 'ok' }))

  app.get('/readyz', async (request) => {
    try {
      await app.storageReady()
    } catch (error) {
      const reason = error instanceof ApiError ? error.detail : 'The storage probe failed.'
      request.log.warn({ err: error }, 'storage not ready')
      throw new ApiError('storage_unavailable', reason, { cause: error })
    }
    return { status: 'ready', storage: app.storage.name }
  })
}
