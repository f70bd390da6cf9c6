import fp from 'fastify-plugin'
import type { StorageDriver } from '../storage/driver.js'

declare module 'fastify' {
  interface FastifyInstance {
    storage: StorageDriver
    /** Resolves when storage is reachable; the probe is shared and cached, not one backend call per request. */
    storageReady(): Promise<void>
  }
}

const PROBE_TTL_MS = 5000

/**
 * Decorates the app with the storage driver and a cached readiness probe; logs what a failed upload may have
 * left in the bucket, and the backend client's warnings; closes the driver with the app.
 */
export default fp(
  async (app, options: { driver: StorageDriver }) => {
    const { driver } = options
    let probe: { startedAt: number; result: Promise<void> } | undefined
    app.decorate('storage', driver)
    app.decorate('storageReady', () => {
      if (!probe || Date.now() - probe.startedAt > PROBE_TTL_MS) {
        const result = driver.checkReady()
        result.catch(() => {}) // the caller sees the failure; the cache must not leave it unhandled
        probe = { startedAt: Date.now(), result }
      }
      return probe.result
    })
    driver.onLeftBehind?.((key, err) => app.log.error({ key, err }, 'a failed upload may have left its object behind: delete it'))
    driver.onWarning?.((message) => app.log.warn({ storage: driver.name }, message))
    app.addHook('onClose', () => driver.close())
  },
  { name: 'storage' },
)
