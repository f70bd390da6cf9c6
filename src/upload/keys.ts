import { randomInt } from 'node:crypto'
import { ApiError, objectNotFound } from '../errors.js'
import { isKeySegment } from '../storage/driver.js'

const MAX_KEY_BYTES = 1024
const ID_LENGTH = 20
const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz'
const MAX_STEM_LENGTH = 50

/**
 * Where the service keeps its idempotency records: in the bucket, beside the images, so a retry finds
 * them after a restart and on any instance. No image key starts here (contexts start with [a-z0-9]),
 * and the routes never serve it.
 */
export const RECORDS_PREFIX = '.idempotency/'

/** Checks a client-supplied key against the contract's grammar before any storage call is made. */
export function assertValidKey(key: string): string {
  const segments = key.split('/')
  const valid = Buffer.byteLength(key) <= MAX_KEY_BYTES && segments.every(isKeySegment)
  if (!valid) {
    throw new ApiError('invalid_key', 'A key is at most 1024 bytes of "/"-separated segments of [A-Za-z0-9._-], none empty, "." or "..".')
  }
  return key
}

/** Checks a listing's prefix: empty, a key, or a key and "/" (all of a "directory"). */
export function assertValidPrefix(prefix: string): string {
  if (prefix !== '') assertValidKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix)
  return prefix
}

/**
 * The key of a `<prefix>*` route, taken from the path exactly as it came on the wire. The grammar has no
 * `%`, so a key never needs percent-encoding, and any encoded form (`%2e%2e`, `%2f`, `%00`) is refused
 * rather than decoded into something else.
 */
export function keyFromPath(url: string, prefix: string): string {
  const path = url.split('?', 1)[0] ?? ''
  const key = assertValidKey(path.startsWith(prefix) ? path.slice(prefix.length) : '')
  // The service's own records share the bucket; to a client they are no images.
  if (key.startsWith(RECORDS_PREFIX)) throw objectNotFound(key)
  return key
}

/** The client's filename without any directory part ("C:\\pics\\a.png" and "../a.png" are both "a.png"). */
export function baseFilename(filename: string): string {
  return filename.split(/[\\/]/).pop() ?? ''
}

function randomId(): string {
  let id = ''
  for (let i = 0; i < ID_LENGTH; i++) id += ID_ALPHABET[randomInt(ID_ALPHABET.length)]
  return id
}

function safeStem(filename: string): string {
  const dot = filename.lastIndexOf('.')
  const stem = dot > 0 ? filename.slice(0, dot) : filename
  const cleaned = stem.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, MAX_STEM_LENGTH)
  return /[A-Za-z0-9]/.test(cleaned) ? cleaned : 'image'
}

/**
 * `{context}/{yyyy}/{mm}/{id}_{name}.{ext}`, UTC; the random id makes every upload's key new.
 * `filename` has no directory part (baseFilename).
 */
export function newObjectKey(context: string, filename: string, extension: string, now = new Date()): string {
  const year = now.getUTCFullYear()
  const month = String(now.getUTCMonth() + 1).padStart(2, '0')
  return `${context}/${year}/${month}/${randomId()}_${safeStem(filename)}.${extension}`
}

/** Public URL of a key: the base followed by the key with each segment percent-encoded. */
export function publicUrlOf(baseUrl: string, key: string): string {
  return `${baseUrl}/${key.split('/').map(encodeURIComponent).join('/')}`
}
