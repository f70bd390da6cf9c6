import type { Readable } from 'node:stream'

/** What the service writes with every object. */
export interface ObjectWrite {
  contentType: string
  cacheControl: string
  /** Decoded metadata; each driver encodes it as its backend needs. */
  metadata: Record<string, string>
  /** Lowercase hex SHA-256 of the body, known when the body is a Buffer; the backend verifies it. */
  sha256?: string | undefined
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

/**
 * One interface, one backend per file. Drivers throw ApiError with the contract's storage codes
 * (bucket_not_found, storage_access_denied, storage_unavailable, storage_error).
 */
export interface StorageDriver {
  readonly name: 'fs' | 'r2'
  /**
   * Stores a new object and never overwrites one. A Buffer goes up in one request; a stream is written
   * as it arrives. If the stream errors or `signal` aborts, nothing is left behind and the call rejects.
   */
  put(key: string, body: Buffer | Readable, write: ObjectWrite, signal: AbortSignal): Promise<void>
  /** The object's headers and metadata, or undefined when there is no such object. */
  head(key: string): Promise<StoredObject | undefined>
  /** Deletes the object; deleting a missing object succeeds. */
  delete(key: string): Promise<void>
  /** Bytes and objects stored, counted by listing everything (R2: one Class A operation per 1000 objects). */
  usage(): Promise<{ bytes: number; objects: number }>
  /** Throws the contract error that explains why the backend cannot serve requests. */
  checkReady(): Promise<void>
  close(): Promise<void>
}

/**
 * Bodies up to this size are handed to drivers as one Buffer (one PutObject: one R2 Class A operation);
 * larger ones stream. It is also the R2 multipart part size: R2 wants equal parts and S3 at least 5 MiB.
 */
export const SINGLE_REQUEST_MAX_BYTES = 5 * 1024 * 1024
