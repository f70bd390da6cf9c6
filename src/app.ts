import { randomUUID } from 'node:crypto'
import Fastify, { LogController, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import type { Registry } from 'prom-client'
import type { Config } from './config.js'
import auth from './plugins/auth.js'
import clientAddress from './plugins/client-address.js'
import httpHardening from './plugins/http-hardening.js'
import { ApiError } from './errors.js'
import { SYSTEM_NETWORK, type ImportNetwork } from './import/source.js'
import problemDetails, { answerUnparsableRequest, sendProblem } from './plugins/problem-details.js'
import requestBodies from './plugins/request-bodies.js'
import metrics, { CLIENT_CLOSED, answeredStatus, observeResponse, onUnfinishedResponse, serveMetrics } from './plugins/metrics.js'
import storagePlugin from './plugins/storage.js'
import usage from './plugins/usage.js'
import fileRoutes from './routes/files.js'
import healthRoutes from './routes/health.js'
import imageRoutes from './routes/images.js'
import importRoutes from './routes/import.js'
import openapiRoutes from './routes/openapi.js'
import { UploadSlots } from './routes/upload-handling.js'
import usageRoutes from './routes/usage.js'
import type { StorageDriver } from './storage/driver.js'
import { FsDriver } from './storage/fs.js'
import { createDriver } from './storage/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Aborts every upload still in flight (the last step of a graceful shutdown). */
    abortUploads(): void
  }
  interface FastifyContextConfig {
    /** The route reads a request body (uploads); every other route refuses one. */
    acceptsBody?: boolean
  }
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/
/** All request headers together (Node's default, stated so it is documented and tested). */
const MAX_HTTP_HEADER_BYTES = 16 * 1024
const PROBE_ROUTES = new Set(['/healthz', '/readyz'])

export interface BuildOptions {
  /** Where logs go; defaults to pino on stdout at the configured level. */
  logger?: FastifyServerOptions['logger']
  /** A ready driver instead of the configured one (tests of what no local backend implements). */
  driver?: StorageDriver
  /** How imports resolve names and connect (tests: a resolver and a connector that never leave 127.0.0.1). */
  importNetwork?: Partial<ImportNetwork>
}

/** Builds the whole app from a parsed config; no side effects beyond creating the storage directories. */
export async function buildApp(config: Config, options: BuildOptions = {}) {
  const app = Fastify({
    logger: options.logger ?? loggerOptions(config),
    // One line per request is written below, with what an operator needs on it.
    logController: new LogController({ disableRequestLogging: true }),
    // Requests arriving while the service closes are answered by the hook below, as problem+json.
    return503OnClosing: false,
    // Slow or stuck clients cannot hold a connection for ever: bounds on the whole request, on its
    // headers, and on a connection where nothing moves. Node checks them every second.
    requestTimeout: config.timeouts.requestMs,
    connectionTimeout: config.timeouts.idleMs,
    keepAliveTimeout: config.timeouts.idleMs,
    // requireHostHeader off: Node would answer a missing Host with a bare 400; the hook below says why.
    http: { headersTimeout: config.timeouts.headersMs, maxHeaderSize: MAX_HTTP_HEADER_BYTES, connectionsCheckingInterval: 1000, requireHostHeader: false },
    clientErrorHandler: answerUnparsableRequest,
    // A path whose percent-encoding cannot be decoded never reaches a route: answer it like one that can.
    // No hook runs on this path: the request id, the log line and the metric are added here.
    frameworkErrors: (error, request, reply) => {
      const keyRoute = /^\/(v1\/images|files)\//.test(request.url)
      reply.raw.once('finish', () => {
        logResponse(request, reply)
        observeResponse(app.metrics, request, reply)
      })
      reply.header('x-request-id', request.id)
      sendProblem(request, reply, new ApiError(keyRoute ? 'invalid_key' : 'invalid_request', `The path is not valid: ${error.message}.`))
    },
    // Honour the caller's X-Request-Id when it is sane, so one id follows a request across services.
    requestIdHeader: false,
    genReqId: (request) => {
      const sent = request.headers['x-request-id']
      return typeof sent === 'string' && REQUEST_ID.test(sent) ? sent : randomUUID()
    },
  })
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  // First, so that a request refused by the next hook gets its line too if its client leaves.
  app.addHook('onRequest', async (request, reply) => onUnfinishedResponse(reply, () => logResponse(request, reply)))
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
    if (closing) {
      reply.header('connection', 'close')
      throw new ApiError('server_busy', 'This instance is shutting down; retry (another instance will answer).')
    }
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
      throw new ApiError('invalid_request', 'HTTP/1.1 requests need a Host header.')
    }
  })
  app.addHook('onResponse', async (request, reply) => logResponse(request, reply))

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
  const uploadSlots = new UploadSlots(config.maxConcurrentUploads, app.metrics.uploadsInFlight)
  await app.register(imageRoutes, { config, shutdown: shutdown.signal, uploadSlots })
  await app.register(importRoutes, { config, shutdown: shutdown.signal, uploadSlots, network: { ...SYSTEM_NETWORK, ...options.importNetwork } })
  await app.register(usageRoutes)
  if (driver instanceof FsDriver) await app.register(fileRoutes, { driver })
  if (config.metricsPort === undefined) serveMetrics(app, app.metricsRegistry, true)
  return app
}

/**
 * One line per request, answered or not; the request id and the key's name are on the logger's bindings
 * (reqId, apiKey).
 */
function logResponse(request: FastifyRequest, reply: FastifyReply): void {
  const status = answeredStatus(reply)
  const code = status === CLIENT_CLOSED.status ? CLIENT_CLOSED.code : request.problemCode
  // Health probes every few seconds would drown the log: a healthy answer to one is debug.
  const probe = PROBE_ROUTES.has(request.routeOptions.url ?? '') && status === 200
  request.log[probe ? 'debug' : 'info'](
    {
      method: request.method,
      route: request.routeOptions.url ?? null,
      status,
      durationMs: Math.round(reply.elapsedTime),
      bytesIn: Number(request.headers['content-length'] ?? 0),
      bytesOut: Number(reply.getHeader('content-length') ?? 0),
      ...(code && { code }),
    },
    'request',
  )
}

/** pino JSON; Authorization never logged; readable output only when developing (pino-pretty is a dev dependency). */
function loggerOptions(config: Config): FastifyServerOptions['logger'] {
  return {
    level: config.logLevel,
    redact: ['req.headers.authorization', 'headers.authorization'],
    ...(config.development && { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } }),
  }
}

/** The metrics-only server for METRICS_PORT: GET /metrics and nothing else, no key needed. */
export async function buildMetricsApp(registry: Registry) {
  const metricsApp = Fastify({ logger: false })
  await metricsApp.register(problemDetails, {})
  serveMetrics(metricsApp, registry, false)
  return metricsApp
}
