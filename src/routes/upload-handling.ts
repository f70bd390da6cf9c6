import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Gauge } from 'prom-client'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import { CLIENT_CLOSED, onUnfinishedResponse } from '../plugins/metrics.js'
import { provesNothingWritten, type StorageDriver } from '../storage/driver.js'
import { IdempotencyRecords, fingerprintOf, idempotencyKeyOf, type IdempotencyRecord, type RecordKey } from '../upload/idempotency.js'
import { checkUpload, storeUpload, type StoredUpload, type UploadPolicy, type UploadSource } from '../upload/pipeline.js'

/** What every stored image is held to, uploaded or imported. */
function uploadPolicyOf(config: Config, driver: StorageDriver): UploadPolicy {
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

/** Aborts when the client goes away before it has its answer (also when it has already gone). */
function clientGoneSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  const abort = () => controller.abort(new ApiError('invalid_request', 'The client closed the connection.'))
  if (reply.raw.destroyed) abort()
  else onUnfinishedResponse(reply, abort)
  return controller.signal
}

const NEVER_ABORTED = new AbortController().signal

/** A request without a valid key, or over its key's budget, is no upload attempt. */
export const REFUSED_REQUESTS: ReadonlySet<ErrorCode> = new Set(['unauthorized', 'rate_limited'])

export interface UploadHandlingOptions {
  config: Config
  /** Aborted once uploads in flight have had SHUTDOWN_TIMEOUT_MS to finish. */
  shutdown: AbortSignal
  slots: UploadSlots
  /** Answers that are no upload attempt: they must not be able to move the error ratio an operator is alerted on. */
  notAttempts?: ReadonlySet<ErrorCode>
}

/**
 * What a route that stores images (an upload, an import) does around reading its source: a slot, a
 * signal that aborts the backend work when the client leaves or the service shuts down, Idempotency-Key,
 * the 201, and counting every attempt exactly once.
 */
export function uploadHandling(app: FastifyInstance, options: UploadHandlingOptions) {
  const { metrics } = app
  const policy = uploadPolicyOf(options.config, app.storage)
  const records = new IdempotencyRecords(app.storage, options.config.idempotencySecret)
  const notAttempts = options.notAttempts ?? REFUSED_REQUESTS

  function countAttempt(reply: FastifyReply, code: string | undefined): void {
    if (code && notAttempts.has(code as ErrorCode)) return
    metrics.uploadLatency.observe(reply.elapsedTime / 1000)
    if (code) metrics.uploadErrors.inc({ error_type: code })
  }
  const answeredCode = (request: FastifyRequest, reply: FastifyReply) =>
    reply.statusCode === 201 ? undefined : (request.problemCode ?? 'internal_error')

  /** Route hooks: an answered attempt is counted here, a stored one also in `store` (which knows the size). */
  const hooks = {
    onResponse: async (request: FastifyRequest, reply: FastifyReply) => countAttempt(reply, answeredCode(request, reply)),
    // An answer cut off by the client (a reset while an early 413 lingers) has no onResponse either.
    // Cut off before any answer was sent, `handle` counts it, once it knows how the upload ended.
    onRequest: async (request: FastifyRequest, reply: FastifyReply) =>
      onUnfinishedResponse(reply, () => reply.raw.headersSent && countAttempt(reply, answeredCode(request, reply))),
  }

  /**
   * Stores the image `sourceOf` opens and answers 201; a retry with the same Idempotency-Key gets the first
   * 201. `requestFingerprint` identifies a request without its bytes (an import: its source URL and
   * fields), so that a retry is answered without fetching the image again.
   */
  async function handle(
    request: FastifyRequest,
    reply: FastifyReply,
    sourceOf: (signal: AbortSignal) => Promise<UploadSource>,
    requestFingerprint?: string,
  ) {
    return options.slots.run(async () => {
      const clientGone = clientGoneSignal(reply)
      let stored = false
      try {
        const signal = AbortSignal.any([clientGone, options.shutdown])
        const answer = await storeOnce(request, reply, sourceOf, requestFingerprint, signal)
        stored = true
        return answer
      } finally {
        // Its answer will never go out, so no onResponse: counted here. Stored all the same (the client
        // left after sending the whole body), it counts as stored.
        if (clientGone.aborted) countAttempt(reply, stored ? undefined : CLIENT_CLOSED.code)
      }
    })
  }

  async function storeOnce(
    request: FastifyRequest,
    reply: FastifyReply,
    sourceOf: (signal: AbortSignal) => Promise<UploadSource>,
    requestFingerprint: string | undefined,
    signal: AbortSignal,
  ) {
    const idempotencyKey = idempotencyKeyOf(request.headers)
    if (idempotencyKey === undefined) return created(reply, await store(request, await sourceOf(signal), signal))

    // A retry: the same key from the same API key (by name, so it survives a token rotation).
    const recordKey = records.recordKey(request.apiKeyName ?? 'anonymous', idempotencyKey)
    const earlier = await records.find(recordKey)
    if (earlier && requestFingerprint !== undefined) return replay(reply, earlier, requestFingerprint)
    const source = await sourceOf(signal)
    if (earlier) {
      // The retried bytes go through every check and are not stored: they must match the first upload's.
      const retried = await checkUpload(source, policy, signal)
      return replay(reply, earlier, fingerprintOf(source, retried.filename, retried.sha256))
    }
    const stored = await store(request, source, signal)
    const fingerprint = requestFingerprint ?? fingerprintOf(source, stored.filename, stored.sha256)
    const holder = await claimRecord(request, recordKey, fingerprint, stored)
    if (holder.response.key === stored.key) return created(reply, stored)
    // A request with this key (the original of this retry) stored its image first: this copy goes.
    await withdraw(request, stored.key)
    return replay(reply, holder, fingerprint)
  }

  /**
   * The record that holds the key once this upload has claimed it. The image is stored, so the claim is
   * not aborted when the client leaves or the service shuts down: the bookkeeping is finished.
   */
  async function claimRecord(request: FastifyRequest, recordKey: RecordKey, fingerprint: string, stored: StoredUpload) {
    try {
      return await records.claim(recordKey, fingerprint, stored, NEVER_ABORTED)
    } catch (error) {
      // The record may have landed though its answer was lost: then the upload stands.
      const found = await records.find(recordKey).catch(() => undefined)
      if (found) return found
      // It may still land after this look: a record must never name a withdrawn image, so the image is
      // withdrawn only when the backend refused the write outright (an orphan at worst, otherwise).
      if (provesNothingWritten(error)) await withdraw(request, stored.key)
      throw error
    }
  }

  async function store(request: FastifyRequest, source: UploadSource, signal: AbortSignal): Promise<StoredUpload> {
    const stored = await storeUpload(source, policy, signal)
    request.log.info({ key: stored.key, size: stored.size, type: stored.content_type, sha256: stored.sha256 }, 'image stored')
    metrics.uploads.inc()
    metrics.uploadSize.observe(stored.size)
    return stored
  }

  function created(reply: FastifyReply, stored: StoredUpload) {
    return reply.code(201).header('location', stored.url).send(stored)
  }

  function replay(reply: FastifyReply, record: IdempotencyRecord, fingerprint: string) {
    if (record.fingerprint !== fingerprint) {
      throw new ApiError(
        'idempotency_conflict',
        `This Idempotency-Key was used at ${record.created_at} for a different upload (other bytes, context, filename or metadata).`,
      )
    }
    reply.log.info({ key: record.response.key }, 'idempotent retry: first answer replayed')
    return created(reply.header('idempotent-replayed', 'true'), record.response)
  }

  async function withdraw(request: FastifyRequest, key: string) {
    try {
      await app.storage.delete(key)
      request.log.info({ key }, 'image withdrawn')
    } catch (error) {
      request.log.error({ err: error, key }, 'image could not be withdrawn: an orphan remains')
    }
  }

  return { policy, hooks, handle }
}
