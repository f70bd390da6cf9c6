import type { IncomingHttpHeaders } from 'node:http'
import type { Counter, Gauge, Histogram } from 'prom-client'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import { provesNothingWritten, type StorageDriver } from '../storage/driver.js'
import type { BodyBuffers } from './body-buffers.js'
import { fingerprintOf, type IdempotencyRecord, IdempotencyRecords, idempotencyKeyOf, type RecordKey } from './idempotency.js'
import { checkUpload, type StoredUpload, storeUpload, type UploadPolicy, type UploadSource } from './pipeline.js'

/** What every stored image is held to, uploaded or imported. */
function uploadPolicyOf(config: Config, driver: StorageDriver, buffers: BodyBuffers): UploadPolicy {
  return {
    driver,
    buffers,
    maxBytes: config.maxUploadBytes,
    allowedTypes: config.allowedTypes,
    maxPixels: config.maxImagePixels,
    publicUrl: config.publicUrl,
  }
}

/** One upload waiting for a slot. */
interface Waiter {
  key: string
  /** Ends the wait, once: with the slot a finished upload hands over (no argument), or refused with this error. */
  settle(refused?: unknown): void
}

export interface UploadSlotSettings {
  /** MAX_CONCURRENT_UPLOADS. */
  max: number
  /** UPLOAD_QUEUE_WAIT_MS: the longest an upload waits for a slot; 0, refused at once. */
  waitMs: number
  /** UPLOAD_QUEUE_MAX: uploads waiting at once. */
  maxWaiting: number
}

const busy = (detail: string) => new ApiError('server_busy', detail)

/**
 * Uploads and imports in flight on this instance. Each holds memory and backend connections, so at most
 * MAX_CONCURRENT_UPLOADS run; one more waits, its body unread, up to UPLOAD_QUEUE_WAIT_MS for a slot, so
 * that a burst (the bot's portraits after an event) is served rather than refused. The wait is fair
 * between API keys: each key has its own queue (first come, first served), and a freed slot goes to the
 * keys in turn. When UPLOAD_QUEUE_MAX uploads wait, a newcomer whose key has fewer waiting than the key
 * with the most takes the place of that key's newest one (longest queue drop), which is refused; so one
 * key flooding the queue delays only itself. (No queue library shares a bound between keys this way.)
 */
export class UploadSlots {
  private inFlight = 0
  private waiting = 0
  /** The waiting uploads of each key; the map's order is the order in which keys take their turn. */
  private readonly queues = new Map<string, Waiter[]>()
  private closed = false

  constructor(
    private readonly settings: UploadSlotSettings,
    private readonly gauges: { inFlight: Gauge; waiting: Gauge },
  ) {}

  /** Runs `work` in a slot, once `key` has one; the wait ends early (thrown) when `signal` aborts. */
  async run<T>(key: string, signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    await this.acquire(key, signal)
    try {
      return await work()
    } finally {
      this.release()
    }
  }

  /** The service is closing: the waiting uploads are refused (another instance will answer), and no more wait. */
  close(): void {
    this.closed = true
    for (const queue of [...this.queues.values()]) {
      for (const waiter of [...queue]) waiter.settle(busy('This instance is shutting down; retry (another instance will answer).'))
    }
  }

  private acquire(key: string, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted()
    if (this.inFlight < this.settings.max) {
      this.gauges.inFlight.set(++this.inFlight)
      return Promise.resolve()
    }
    const { waitMs, maxWaiting, max } = this.settings
    const refusal = `This instance is already handling ${max} uploads`
    if (this.closed || waitMs === 0) return Promise.reject(busy(`${refusal}; retry shortly.`))
    const queue = this.queues.get(key) ?? []
    if (this.waiting >= maxWaiting) {
      const longest = this.longestQueue()
      if (longest === undefined || longest.length <= queue.length) {
        return Promise.reject(busy(`${refusal} and ${this.waiting} are waiting; retry shortly.`))
      }
      longest.at(-1)!.settle(busy(`${refusal}; this upload gave its place in the queue to another API key's. Retry shortly.`))
    }
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => waiter.settle(busy(`${refusal}; none was free within ${waitMs} ms. Retry shortly.`)), waitMs)
      const onAbort = () => waiter.settle(signal.reason)
      let settled = false
      const waiter: Waiter = {
        key,
        settle: (refused) => {
          if (settled) return
          settled = true
          clearTimeout(timer)
          signal.removeEventListener('abort', onAbort)
          this.remove(waiter, refused === undefined)
          if (refused === undefined) resolve()
          else reject(refused)
        },
      }
      signal.addEventListener('abort', onAbort, { once: true })
      queue.push(waiter)
      if (!this.queues.has(key)) this.queues.set(key, queue)
      this.gauges.waiting.set(++this.waiting)
    })
  }

  /** A freed slot goes to the first key in turn, which then goes to the back of the line; else it is free. */
  private release(): void {
    const next = this.queues.values().next()
    if (next.done) {
      this.gauges.inFlight.set(--this.inFlight)
      return
    }
    next.value[0]!.settle()
  }

  /** Takes a waiter out of its queue; a key whose turn came (`served`) takes its next one after the other keys. */
  private remove(waiter: Waiter, served: boolean): void {
    const queue = this.queues.get(waiter.key)!
    queue.splice(queue.indexOf(waiter), 1)
    this.gauges.waiting.set(--this.waiting)
    if (served || queue.length === 0) this.queues.delete(waiter.key)
    if (served && queue.length > 0) this.queues.set(waiter.key, queue)
  }

  private longestQueue(): Waiter[] | undefined {
    let longest: Waiter[] | undefined
    for (const queue of this.queues.values()) if (queue.length > (longest?.length ?? 0)) longest = queue
    return longest
  }
}

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
  /** Logs what was stored: in the request's own log line if it is still to be written, else in one of its own. */
  logStored(fields: { key: string; size: number; type: string; sha256: string }): void
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
  /** The app's buffers for bodies held whole. */
  bodyBuffers: BodyBuffers
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
    this.policy = uploadPolicyOf(options.config, options.driver, options.bodyBuffers)
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
    // Watched from the start: a client that leaves while its upload waits for a slot leaves the queue.
    const clientGone = request.watchClientGone()
    return this.options.slots.run(request.scope, clientGone, async () => {
      const signal = AbortSignal.any([clientGone, this.options.shutdown])
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
      // A signal of its own, never aborted: one shared by every claim would hold each claim's listener (the
      // SDK's, per request) at once, and Node warns on stderr past ten.
      return await this.records.claim(recordKey, fingerprint, stored, new AbortController().signal)
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
    request.logStored({ key: stored.key, size: stored.size, type: stored.content_type, sha256: stored.sha256 })
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
