import Fastify, { type FastifyServerOptions, LogController } from 'fastify'
import type { Registry } from 'prom-client'
import type { Config } from './config.js'
import { ApiError } from './errors.js'
import { type ImportNetwork, SYSTEM_NETWORK } from './import/source.js'
import auth from './plugins/auth.js'
import clientAddress from './plugins/client-address.js'
import httpHardening from './plugins/http-hardening.js'
import metrics, { serveMetrics } from './plugins/metrics.js'
import problemDetails, { answerFrameworkError, answerUnparsableRequest } from './plugins/problem-details.js'
import requestBodies from './plugins/request-bodies.js'
import requestIds, { requestIdOf } from './plugins/request-ids.js'
import requestLog, { loggerOptions } from './plugins/request-log.js'
import requestPolicy from './plugins/request-policy.js'
import storagePlugin from './plugins/storage.js'
import usage from './plugins/usage.js'
import consoleRoutes from './routes/console.js'
import fileRoutes from './routes/files.js'
import healthRoutes from './routes/health.js'
import imageRoutes from './routes/images.js'
import importRoutes from './routes/import.js'
import openapiRoutes from './routes/openapi.js'
import usageRoutes from './routes/usage.js'
import whoamiRoutes from './routes/whoami.js'
import { type StorageDriver, servesFiles } from './storage/driver.js'
import { createDriver } from './storage/index.js'
import { BodyBuffers } from './upload/body-buffers.js'
import { UploadSlots } from './upload/uploader.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Aborts every upload still in flight (the last step of a graceful shutdown). */
    abortUploads(): void
  }
}

/** All request headers together (Node's default, stated so it is documented and tested). */
const MAX_HTTP_HEADER_BYTES = 16 * 1024

export interface BuildOptions {
  /** Where logs go; defaults to pino on stdout at the configured level. */
  logger?: FastifyServerOptions['logger']
  /** A ready driver instead of the configured one (tests of what no local backend implements). */
  driver?: StorageDriver
  /** How imports resolve names and connect (tests: a resolver and a connector that never leave 127.0.0.1). */
  importNetwork?: Partial<ImportNetwork>
  /** The buffers for bodies held whole, instead of new ones (tests: ones that count their loans). */
  bodyBuffers?: BodyBuffers
}

/** Builds the whole app from a parsed config; no side effects beyond creating the storage directories. */
export async function buildApp(config: Config, options: BuildOptions = {}) {
  const app = Fastify({
    logger: options.logger ?? loggerOptions(config),
    // One line per request is written by the request-log plugin, with what an operator needs on it.
    logController: new LogController({ disableRequestLogging: true }),
    // Requests arriving while the service closes are answered by the request-policy plugin, as problem+json.
    return503OnClosing: false,
    // Slow or stuck clients cannot hold a connection for ever: bounds on the whole request, on its
    // headers, and on a connection where nothing moves. Node checks them every second.
    requestTimeout: config.timeouts.requestMs,
    connectionTimeout: config.timeouts.idleMs,
    keepAliveTimeout: config.timeouts.idleMs,
    // requireHostHeader off: Node would answer a missing Host with a bare 400; request-policy says why.
    http: {
      headersTimeout: config.timeouts.headersMs,
      maxHeaderSize: MAX_HTTP_HEADER_BYTES,
      connectionsCheckingInterval: 1000,
      requireHostHeader: false,
    },
    clientErrorHandler: answerUnparsableRequest,
    frameworkErrors: answerFrameworkError,
    // Honour the caller's X-Request-Id when it is sane, so one id follows a request across services.
    requestIdHeader: false,
    genReqId: requestIdOf,
  })
  // In this order: a request refused by request-policy still gets its log line and its X-Request-Id.
  await app.register(requestLog)
  await app.register(requestIds)
  await app.register(requestPolicy)

  // Aborted on shutdown, once uploads in flight have had SHUTDOWN_TIMEOUT_MS to finish.
  const shutdown = new AbortController()
  app.decorate('abortUploads', () => shutdown.abort(new ApiError('storage_unavailable', 'The service is shutting down; retry.')))

  const driver = options.driver ?? (await createDriver(config.storage))
  await app.register(problemDetails, { defaultPortraitUrl: config.defaultPortraitUrl })
  await app.register(metrics)
  // Hardening first: its headers must be on every answer, the 401s and 429s included.
  await app.register(httpHardening, { corsOrigins: config.corsOrigins })
  await app.register(clientAddress, { trustProxy: config.trustProxy })
  await app.register(auth, { apiKeys: config.apiKeys, rateLimitPerMinute: config.rateLimitPerMinute })
  await app.register(requestBodies)
  await app.register(storagePlugin, { driver })
  await app.register(usage, { scanIntervalS: config.usageScanIntervalS, rescanIntervalS: config.usageRescanIntervalS })
  await app.register(healthRoutes)
  await app.register(openapiRoutes)
  const uploadSlots = new UploadSlots(
    { max: config.maxConcurrentUploads, waitMs: config.uploadQueue.waitMs, maxWaiting: config.uploadQueue.maxWaiting },
    { inFlight: app.metrics.uploadsInFlight, waiting: app.metrics.uploadsWaiting },
  )
  // Closing: the uploads waiting for a slot are answered at once (503 server_busy), not when their wait ends.
  app.addHook('preClose', async () => uploadSlots.close())
  // One set for uploads and imports: a buffer one gives back, the other may use.
  const bodyBuffers = options.bodyBuffers ?? new BodyBuffers()
  await app.register(imageRoutes, { config, shutdown: shutdown.signal, uploadSlots, bodyBuffers })
  await app.register(importRoutes, {
    config,
    shutdown: shutdown.signal,
    uploadSlots,
    bodyBuffers,
    network: { ...SYSTEM_NETWORK, ...options.importNetwork },
  })
  await app.register(usageRoutes)
  await app.register(whoamiRoutes)
  await app.register(consoleRoutes, { publicUrl: config.publicUrl })
  if (servesFiles(driver)) await app.register(fileRoutes, { driver })
  if (config.metricsPort === undefined) serveMetrics(app, app.metricsRegistry, true)
  return app
}

/** The metrics-only server for METRICS_PORT: GET /metrics and nothing else, no key needed. */
export async function buildMetricsApp(registry: Registry) {
  // Request ids as on the public port: UUIDs (or the caller's X-Request-Id), named in X-Request-Id.
  const metricsApp = Fastify({ logger: false, requestIdHeader: false, genReqId: requestIdOf })
  await metricsApp.register(requestIds)
  await metricsApp.register(problemDetails, {})
  serveMetrics(metricsApp, registry, false)
  return metricsApp
}
