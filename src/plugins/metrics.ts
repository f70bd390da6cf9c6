import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import { answeredStatus, onUnfinishedResponse } from '../http/response-lifecycle.js'
import type { RouteFlags } from '../http/route-options.js'

const KiB = 1024

/** Every metric of one app, in a registry of its own (several apps in one process do not clash). */
function createMetrics(registry: Registry) {
  const registers = [registry]
  return {
    uploads: new Counter({ name: 'r2_uploads_total', help: 'Uploads stored (201).', registers }),
    uploadErrors: new Counter({
      name: 'r2_upload_errors_total',
      help: 'Uploads answered with an error, by contract error code; client_closed: the client left before its answer.',
      labelNames: ['error_type'] as const,
      registers,
    }),
    uploadSize: new Histogram({
      name: 'r2_upload_size_bytes',
      help: 'Size of stored uploads.',
      // 1 KiB to 128 MiB, doubling.
      buckets: Array.from({ length: 18 }, (_, i) => KiB * 2 ** i),
      registers,
    }),
    uploadLatency: new Histogram({
      name: 'r2_upload_latency_seconds',
      help: 'Time to answer an upload, from its first byte to the answer.',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120],
      registers,
    }),
    httpDuration: new Histogram({
      name: 'http_request_duration_seconds',
      help: 'Time to answer HTTP requests, by route pattern.',
      labelNames: ['method', 'route', 'status_code'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    operations: new Counter({
      name: 'r2_operations_total',
      help: 'R2 API requests sent by this instance, by operation and pricing class (A, B or free).',
      labelNames: ['operation', 'class'] as const,
      registers,
    }),
    uploadsInFlight: new Gauge({ name: 'r2_uploads_in_flight', help: 'Uploads being handled now.', registers }),
    uploadsWaiting: new Gauge({ name: 'r2_uploads_waiting', help: 'Uploads waiting for a free upload slot.', registers }),
    storageBytes: new Gauge({ name: 'r2_storage_bytes', help: 'Bytes stored in the bucket, at the last usage scan.', registers }),
    storageObjects: new Gauge({ name: 'r2_storage_objects', help: 'Objects in the bucket, at the last usage scan.', registers }),
    usageLastScan: new Gauge({
      name: 'r2_usage_last_scan_timestamp_seconds',
      help: 'When the last usage scan of the bucket completed (Unix time); 0 until the first one.',
      registers,
    }),
  }
}

export type Metrics = ReturnType<typeof createMetrics>

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
    metricsRegistry: Registry
  }
}

/** Adds GET /metrics to an app: on the public port (behind an API key) or on a metrics-only server. */
export function serveMetrics(app: FastifyInstance, registry: Registry, requiresApiKey: boolean): void {
  app.get('/metrics', { config: { requiresApiKey } satisfies RouteFlags }, async (_request, reply) =>
    reply.type(registry.contentType).send(await registry.metrics()),
  )
}

/** One answer in the request histogram; the route label is the pattern, never a key. */
export function observeResponse(metrics: Metrics, request: FastifyRequest, reply: FastifyReply): void {
  metrics.httpDuration.observe(
    { method: request.method, route: request.routeOptions.url ?? 'unmatched', status_code: String(answeredStatus(reply)) },
    reply.elapsedTime / 1000,
  )
}

/** The app's metrics and the HTTP request histogram. */
export default fp(
  async (app) => {
    const registry = new Registry()
    collectDefaultMetrics({ register: registry })
    // Gauges named like counters, which `promtool check metrics` refuses; their sums are already there,
    // by type, in nodejs_active_handles, nodejs_active_requests and nodejs_active_resources.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      registry.removeSingleMetric(name)
    }
    app.decorate('metricsRegistry', registry)
    app.decorate('metrics', createMetrics(registry))
    app.addHook('onRequest', async (request, reply) => onUnfinishedResponse(reply, () => observeResponse(app.metrics, request, reply)))
    app.addHook('onResponse', async (request, reply) => observeResponse(app.metrics, request, reply))
  },
  { name: 'metrics' },
)
