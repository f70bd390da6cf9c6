import { createHash, createHmac } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { ApiError } from '../errors.js'
import { KeyExistsError, type StorageDriver } from '../storage/driver.js'
import { RECORDS_PREFIX } from './keys.js'
import type { StoredUpload, UploadSource } from './pipeline.js'

/** How long an Idempotency-Key replays the first answer. */
export const IDEMPOTENCY_WINDOW_MS = 24 * 60 * 60 * 1000
/** Printable ASCII without spaces, as the IETF draft and Stripe's keys use (a UUID fits). */
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/

export interface IdempotencyRecord {
  created_at: string
  /** What makes two uploads the same request: see fingerprintOf. */
  fingerprint: string
  /** The first upload's 201 body, replayed as is. */
  response: StoredUpload
}

/** The request's Idempotency-Key, or undefined; a malformed one is refused rather than ignored. */
export function idempotencyKeyOf(headers: IncomingHttpHeaders): string | undefined {
  const key = headers['idempotency-key']
  if (key === undefined) return undefined
  if (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key)) {
    throw new ApiError('invalid_request', 'Idempotency-Key must be 1 to 255 printable ASCII characters without spaces, sent once.')
  }
  return key
}

/**
 * The same request means the same content, context, filename and metadata. `uploaded_at` is left out: a
 * client that stamps it when it sends may stamp a retry anew, and the retry is still the same upload.
 * `content` is the image's SHA-256 for an upload; an import names its source in its metadata instead.
 */
export function fingerprintOf(request: Pick<UploadSource, 'context' | 'metadata'>, filename: string | undefined, content: string): string {
  const { uploaded_at: _restamped, ...metadata } = request.metadata
  const entries = Object.entries(metadata).sort(([a], [b]) => (a < b ? -1 : 1))
  return createHash('sha256')
    .update(JSON.stringify([content, request.context, filename ?? '', entries]))
    .digest('hex')
}

/**
 * Where one (API key name, Idempotency-Key) record is written, and where one written before names were
 * keyed may still be: looked up too, until those records have expired (24 h after the upgrade), so that
 * a retry across the upgrade is still replayed. The lookup of `legacy` can go in a later release.
 */
export interface RecordKey {
  name: string
  legacy: string
}

/** Idempotency records, one small JSON object per (API key name, Idempotency-Key), written once. */
export class IdempotencyRecords {
  constructor(
    private readonly driver: Pick<StorageDriver, 'read' | 'put' | 'delete'>,
    /** IDEMPOTENCY_SECRET, or what the configuration derived: the same on every instance. */
    private readonly secret: string,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * An HMAC keyed with the server's secret, so no one can compute a record's name from the key's name
   * and the Idempotency-Key (Discord message ids are public) and read it where the bucket is public; as
   * a hash it needs no escaping, and one API key cannot name another's records.
   */
  recordKey(scope: string, idempotencyKey: string): RecordKey {
    const identity = `${scope}\n${idempotencyKey}`
    return {
      name: `${RECORDS_PREFIX}${createHmac('sha256', this.secret).update(identity).digest('hex')}.json`,
      legacy: `${RECORDS_PREFIX}${createHash('sha256').update(identity).digest('hex')}.json`,
    }
  }

  /**
   * The record if it is younger than the window; an expired or unparsable one counts as none. Both names
   * are read at once: a first upload, found under neither, waits for one backend round trip, not two.
   */
  async find(recordKey: RecordKey): Promise<IdempotencyRecord | undefined> {
    const [current, legacy] = await Promise.allSettled([this.read(recordKey.name), this.read(recordKey.legacy)])
    if (current.status === 'rejected') throw current.reason
    if (current.value) return current.value
    if (legacy.status === 'rejected') throw legacy.reason
    return legacy.value
  }

  private async read(name: string): Promise<IdempotencyRecord | undefined> {
    const bytes = await this.driver.read(name)
    if (bytes === undefined) return undefined
    try {
      const record = JSON.parse(bytes.toString('utf8')) as IdempotencyRecord
      const age = this.now() - Date.parse(record.created_at)
      return age >= 0 && age < IDEMPOTENCY_WINDOW_MS ? record : undefined
    } catch {
      return undefined
    }
  }

  /**
   * Writes the record unless a live one is there already, and returns whichever holds the key: this
   * one, or the earlier request's when two with one key raced (the write never overwrites).
   */
  async claim(recordKey: RecordKey, fingerprint: string, response: StoredUpload, signal: AbortSignal): Promise<IdempotencyRecord> {
    const record: IdempotencyRecord = { created_at: new Date(this.now()).toISOString(), fingerprint, response }
    const body = Buffer.from(JSON.stringify(record))
    const sha256 = createHash('sha256').update(body).digest('hex')
    const write = {
      contentType: 'application/json',
      cacheControl: 'no-store',
      metadata: { uploaded_at: record.created_at, sha256 },
      sha256,
      shared: true,
    }
    for (let attempt = 1; ; attempt++) {
      try {
        await this.driver.put(recordKey.name, body, write, signal)
        return record
      } catch (error) {
        if (!(error instanceof KeyExistsError) || attempt > 1) throw error
        const earlier = await this.find(recordKey)
        if (earlier) return earlier
        // Expired or unparsable: replace it, once.
        await this.driver.delete(recordKey.name)
      }
    }
  }
}
