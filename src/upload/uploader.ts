import type { IncomingHttpHeaders } from 'node:http'
import type { Counter, Gauge, Histogram } from 'prom-client'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import { provesNothingWritten, type StorageDriver } from '../storage/driver.js'
import { fingerprintOf, type IdempotencyRecord, IdempotencyRecords, idempotencyKeyOf, type RecordKey } from './idempotency.js'
import { checkUpload, type StoredUpload, storeUpload, type UploadPolicy, type UploadSource } from './pipeline.js'

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

const NEVER_ABORTED = new AbortController().signal

/** A request without a valid key, or over its key's budget, is no upload attempt. */
export const REFUSED_REQUESTS: ReadonlySet<ErrorCode> = new Set(['unauthorized', 'rate_limited'])

/** The app's upload metrics (prom-client), by the names the metrics plugin gives them. */
export interface UploadMetrics {
  uploads: Counter
  uploadErrors: Counter<'error_type'>
  uploadSize: Histogram
  uploadLatency: Histogram
}

/** The request's logger. */
export interface UploadLog {
  info(fields: object, message: string): void
  error(fields: object, message: string): void
}

/** One request to store an image, as the uploader needs it. */
export interface UploadRequest {
  /** Its headers: Idempotency-Key is read from them. */
  headers: IncomingHttpHeaders
  /** Whose Idempotency-Keys these are: the API key's name (by name, so it survives a token rotation). */
  scope: string
  /** Starts watching for the client to go away before it has its answer: the signal aborts when it does. */
  watchClientGone(): AbortSignal
  log: UploadLog
}

export interface UploadOutcome {
  /** The 201 body. */
  upload: StoredUpload
  /** The first answer to this Idempotency-Key, given again. */
  replayed: boolean
}

export interface UploaderOptions {
  config: Config
  driver: StorageDriver
  metrics: UploadMetrics
  slots: UploadSlots
  /** Aborted once uploads in flight have had SHUTDOWN_TIMEOUT_MS to finish. */
  shutdown: AbortSignal
  /** Answers that are no upload attempt: they must not be able to move the error ratio an operator is alerted on. */
  notAttempts?: ReadonlySet<ErrorCode>
}

/**
 * What storing an image (an upload, an import) takes around reading its source: a slot, a signal that
 * aborts the backend work when the client leaves or the service shuts down, Idempotency-Key, and the
 * rule for counting an attempt. The route answers and decides when an attempt has ended.
 */
export class Uploader {
  readonly policy: UploadPolicy
  private readonly records: IdempotencyRecords
  private readonly notAttempts: ReadonlySet<ErrorCode>

  constructor(private readonly options: UploaderOptions) {
    this.policy = uploadPolicyOf(options.config, options.driver)
    this.records = new IdempotencyRecords(options.driver, options.config.idempotencySecret)
    this.notAttempts = options.notAttempts ?? REFUSED_REQUESTS
  }

  /** Counts an ended attempt, once: its time and, unless the image was stored, the code it ended with. */
  countAttempt(elapsedMs: number, code: string | undefined): void {
    if (code && this.notAttempts.has(code as ErrorCode)) return
    this.options.metrics.uploadLatency.observe(elapsedMs / 1000)
    if (code) this.options.metrics.uploadErrors.inc({ error_type: code })
  }

  /**
   * Stores the image `sourceOf` opens; a retry with the same Idempotency-Key gets the first upload. A
   * `requestFingerprint` identifies a request without its bytes (an import: its source URL and fields),
   * so that a retry is answered without fetching the image again.
   */
  async store(
    request: UploadRequest,
    sourceOf: (signal: AbortSignal) => Promise<UploadSource>,
    requestFingerprint?: string,
  ): Promise<UploadOutcome> {
    return this.options.slots.run(async () => {
      const signal = AbortSignal.any([request.watchClientGone(), this.options.shutdown])
      return this.storeOnce(request, sourceOf, requestFingerprint, signal)
    })
  }

  private async storeOnce(
    request: UploadRequest,
    sourceOf: (signal: AbortSignal) => Promise<UploadSource>,
    requestFingerprint: string | undefined,
    signal: AbortSignal,
  ): Promise<UploadOutcome> {
    const idempotencyKey = idempotencyKeyOf(request.headers)
    if (idempotencyKey === undefined) return { upload: await this.storeSource(request, await sourceOf(signal), signal), replayed: false }

    // A retry: the same key from the same API key.
    const recordKey = this.records.recordKey(request.scope, idempotencyKey)
    const earlier = await this.records.find(recordKey)
    if (earlier && requestFingerprint !== undefined) return this.replay(request, earlier, requestFingerprint)
    const source = await sourceOf(signal)
    if (earlier) {
      // The retried bytes go through every check and are not stored: they must match the first upload's.
      const retried = await checkUpload(source, this.policy, signal)
      return this.replay(request, earlier, fingerprintOf(source, retried.filename, retried.sha256))
    }
    const stored = await this.storeSource(request, source, signal)
    const fingerprint = requestFingerprint ?? fingerprintOf(source, stored.filename, stored.sha256)
    const holder = await this.claimRecord(request, recordKey, fingerprint, stored)
    if (holder.response.key === stored.key) return { upload: stored, replayed: false }
    // A request with this key (the original of this retry) stored its image first: this copy goes.
    await this.withdraw(request, stored.key)
    return this.replay(request, holder, fingerprint)
  }

  /**
   * The record that holds the key once this upload has claimed it. The image is stored, so the claim is
   * not aborted when the client leaves or the service shuts down: the bookkeeping is finished.
   */
  private async claimRecord(request: UploadRequest, recordKey: RecordKey, fingerprint: string, stored: StoredUpload) {
    try {
      return await this.records.claim(recordKey, fingerprint, stored, NEVER_ABORTED)
    } catch (error) {
      // The record may have landed though its answer was lost: then the upload stands.
      const found = await this.records.find(recordKey).catch(() => undefined)
      if (found) return found
      // It may still land after this look: a record must never name a withdrawn image, so the image is
      // withdrawn only when the backend refused the write outright (an orphan at worst, otherwise).
      if (provesNothingWritten(error)) await this.withdraw(request, stored.key)
      throw error
    }
  }

  private async storeSource(request: UploadRequest, source: UploadSource, signal: AbortSignal): Promise<StoredUpload> {
    const stored = await storeUpload(source, this.policy, signal)
    request.log.info({ key: stored.key, size: stored.size, type: stored.content_type, sha256: stored.sha256 }, 'image stored')
    this.options.metrics.uploads.inc()
    this.options.metrics.uploadSize.observe(stored.size)
    return stored
  }

  private replay(request: UploadRequest, record: IdempotencyRecord, fingerprint: string): UploadOutcome {
    if (record.fingerprint !== fingerprint) {
      throw new ApiError(
        'idempotency_conflict',
        `This Idempotency-Key was used at ${record.created_at} for a different upload (other bytes, context, filename or metadata).`,
      )
    }
    request.log.info({ key: record.response.key }, 'idempotent retry: first answer replayed')
    return { upload: record.response, replayed: true }
  }

  private async withdraw(request: UploadRequest, key: string) {
    try {
      await this.options.driver.delete(key)
      request.log.info({ key }, 'image withdrawn')
    } catch (error) {
      request.log.error({ err: error, key }, 'image could not be withdrawn: an orphan remains')
    }
  }
}
