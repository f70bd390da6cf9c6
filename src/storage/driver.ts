import type { FileHandle } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { ApiError, type ErrorCode } from '../errors.js'

/** What the service writes with every object. */
export interface ObjectWrite {
  contentType: string
  cacheControl: string
  /** Decoded metadata; each driver encodes it as its backend needs. */
  metadata: Record<string, string>
  /** Lowercase hex SHA-256 of the body, known when the body is a Buffer; the backend verifies it. */
  sha256?: string | undefined
  /**
   * The key is not this write's own but one other writers race for (an idempotency record): after a
   * failed write it is left alone, where a key made up for one upload would be cleaned up.
   */
  shared?: boolean
  /**
   * The exact length of a streamed body, when the client declared it (Node's HTTP parser ends the body
   * there or fails it): a driver may then send the body in one request, as it arrives.
   */
  length?: number | undefined
}

export interface StoredObject {
  size: number
  contentType: string
  cacheControl: string | undefined
  etag: string
  lastModified: Date
  metadata: Record<string, string>
}

/** One "/"-separated segment of a key, as the contract's key grammar allows it. */
export const isKeySegment = (segment: string): boolean => /^[A-Za-z0-9._-]+$/.test(segment) && segment !== '.' && segment !== '..'

/** An object as a listing describes it, without a request of its own. */
export interface ListedObject {
  key: string
  size: number
  etag: string
  lastModified: Date
}

export interface ListRequest {
  /** Only keys that start with this ('' for all). */
  prefix: string
  /** Only keys after this one, in key order (a page's `next`). */
  startAfter?: string | undefined
  /** At most this many objects (1 to 1000, as ListObjectsV2 takes). */
  limit: number
  /** Keys under this prefix are never listed: the service's own records, which share the bucket. */
  hidden?: string
}

export interface ListPage {
  /** In key order (UTF-8 byte order, as S3 lists); fewer than `limit`, even none, does not mean the last page. */
  objects: ListedObject[]
  /** Where the next page starts (its `startAfter`); absent on the last page. */
  next?: string
}

/** An object with an open handle on its bytes: a delete landing meanwhile cannot fail the read. */
export interface OpenedObject {
  object: StoredObject
  handle: FileHandle
}

/** How the backend bills a request (R2: Class A mutates or lists, Class B reads, the rest is free). */
export type PricingClass = 'A' | 'B' | 'free'

/**
 * One interface, one backend per file. Drivers throw ApiError with the contract's storage codes
 * (bucket_not_found, storage_access_denied, storage_unavailable, storage_error).
 *
 * The optional members are what only some backends do; the app asks for them instead of asking which
 * backend it has.
 */
export interface StorageDriver {
  readonly name: 'fs' | 'r2'
  /**
   * A stream of unknown length costs this backend memory and requests (a multipart upload's parts): the
   * upload pipeline spools such a body to a temporary file and hands it over with its length.
   */
  readonly prefersKnownLength: boolean
  /**
   * Stores a new object and never overwrites one. A Buffer goes up in one request; a stream is written
   * as it arrives. If the stream errors or `signal` aborts, nothing is left behind and the call rejects.
   * Rejects with KeyExistsError when the key already holds an object written by someone else.
   */
  put(key: string, body: Buffer | Readable, write: ObjectWrite, signal: AbortSignal): Promise<void>
  /** The object's headers and metadata, or undefined when there is no such object. */
  head(key: string): Promise<StoredObject | undefined>
  /** The bytes of a small object (the service's own records), or undefined when there is no such object. */
  read(key: string): Promise<Buffer | undefined>
  /** Deletes the object; deleting a missing object succeeds. */
  delete(key: string): Promise<void>
  /** One page of the objects stored, in key order (R2: one ListObjectsV2, a Class A operation). */
  list(request: ListRequest): Promise<ListPage>
  /** Bytes and objects stored, counted by listing everything (R2: one Class A operation per 1000 objects). */
  usage(): Promise<{ bytes: number; objects: number }>
  /** Throws the contract error that explains why the backend cannot serve requests. */
  checkReady(): Promise<void>
  close(): Promise<void>
  /**
   * Opens an object for the service to serve itself, under /files: a backend with no public URL of its
   * own (local disk). Absent where the bucket's public URL serves the objects.
   */
  open?(key: string): Promise<OpenedObject | undefined>
  /** Calls `listener` for every request sent to a backend that bills per request, each attempt counted. */
  observeOperations?(listener: (operation: string, pricingClass: PricingClass) => void): void
  /**
   * Calls `listener` with the key of a failed write whose object the backend may have kept and the
   * driver could not delete. Absent where a failed write never leaves an object behind.
   */
  onLeftBehind?(listener: (key: string, error: ApiError) => void): void
  /**
   * Calls `listener` with each warning of the backend's client library, which would otherwise print it
   * as bare text on the console, outside the service's log.
   */
  onWarning?(listener: (message: string) => void): void
}

/** A driver that serves its objects itself (see StorageDriver.open). */
export type FileServingDriver = StorageDriver & Required<Pick<StorageDriver, 'open'>>
export const servesFiles = (driver: StorageDriver): driver is FileServingDriver => driver.open !== undefined

/**
 * Bodies up to this size are handed to drivers as one Buffer (one PutObject: one R2 Class A operation);
 * larger ones stream. It is also the R2 multipart part size: R2 wants equal parts and S3 at least 5 MiB.
 */
export const SINGLE_REQUEST_MAX_BYTES = 5 * 1024 * 1024

/** put() found the key taken: objects are never overwritten. */
export class KeyExistsError extends ApiError {
  constructor(key: string, options?: { cause?: unknown }) {
    super('storage_error', `An object with the key "${key}" already exists.`, options)
  }
}

/**
 * Failures that prove a write never reached the bucket (the backend refused the credentials or has no
 * such bucket). After any other failure the write may have landed, its answer lost.
 */
const NOTHING_WRITTEN: ReadonlySet<ErrorCode> = new Set(['storage_access_denied', 'bucket_not_found'])
export const provesNothingWritten = (error: unknown): boolean => error instanceof ApiError && NOTHING_WRITTEN.has(error.code)
