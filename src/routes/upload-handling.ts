import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Gauge } from 'prom-client'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import type { Metrics } from '../plugins/metrics.js'
import type { StorageDriver } from '../storage/driver.js'
import type { StoredUpload, UploadPolicy } from '../upload/pipeline.js'

/** What every stored image is held to, uploaded or imported. */
export function uploadPolicyOf(config: Config, driver: StorageDriver): UploadPolicy {
  return {
    driver,
    maxBytes: config.maxUploadBytes,
    allowedTypes: config.allowedTypes,
    maxPixels: config.maxImagePixels,
    publicUrl: config.publicUrl,
  }
}

/**
 * Uploads and imports in flight on this instance. Each holds memory and backend connections: past
 * MAX_CONCURRENT_UPLOADS, one more is refused at once rather than queued.
 */
export class UploadSlots {
  private inFlight = 0

  constructor(
    private readonly max: number,
    private readonly gauge: Gauge,
  ) {}

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.inFlight >= this.max) {
      throw new ApiError('server_busy', `This instance is already handling ${this.max} uploads; retry shortly.`)
    }
    this.gauge.set(++this.inFlight)
    try {
      return await work()
    } finally {
      this.gauge.set(--this.inFlight)
    }
  }
}

/** Aborts backend work when the client goes away before it has its answer, or when `shutdown` aborts. */
export function uploadSignal(reply: FastifyReply, shutdown: AbortSignal): AbortSignal {
  const controller = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort(new ApiError('invalid_request', 'The client closed the connection.'))
  })
  return AbortSignal.any([controller.signal, shutdown])
}

/** A request without a valid key, or over its key's budget, is no upload attempt. */
export const REFUSED_REQUESTS: ReadonlySet<ErrorCode> = new Set(['unauthorized', 'rate_limited'])

/**
 * The onResponse hook of a route that stores uploads: every attempt is counted once, stored (by
 * answerStored, which knows the size) or refused. An answer with a code in `notAttempts` is no attempt:
 * it must not be able to move the error ratio an operator is alerted on.
 */
export function countUploadAttempts(metrics: Metrics, notAttempts: ReadonlySet<ErrorCode> = REFUSED_REQUESTS) {
  return async (request: FastifyRequest, reply: FastifyReply) => {
    const code = reply.statusCode === 201 ? undefined : (request.problemCode ?? 'internal_error')
    if (code && notAttempts.has(code)) return
    metrics.uploadLatency.observe(reply.elapsedTime / 1000)
    if (code) metrics.uploadErrors.inc({ error_type: code })
  }
}

/** The 201 answer to a stored upload, logged and counted. */
export function answerStored(request: FastifyRequest, reply: FastifyReply, metrics: Metrics, stored: StoredUpload) {
  request.log.info({ key: stored.key, size: stored.size, type: stored.content_type, sha256: stored.sha256 }, 'image stored')
  metrics.uploads.inc()
  metrics.uploadSize.observe(stored.size)
  return reply.code(201).header('location', stored.url).send(stored)
}
