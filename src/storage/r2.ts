import { ClientRequest } from 'node:http'
import type { Socket } from 'node:net'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  type PutObjectCommandInput,
  paginateListObjectsV2,
  S3Client,
  type S3ClientConfig,
  S3ServiceException,
} from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import type { R2Settings } from '../config.js'
import { ApiError } from '../errors.js'
import {
  KeyExistsError,
  type ListPage,
  type ListRequest,
  type ObjectWrite,
  type PricingClass,
  provesNothingWritten,
  SINGLE_REQUEST_MAX_BYTES,
  type StorageDriver,
  type StoredObject,
} from './driver.js'
import { decodeStoredMetadata, encodeStoredMetadata } from './r2-metadata.js'

/** R2's pricing: Class A mutates or lists, Class B reads, deletes and aborts are free (unknown: A, the dearer). */
const R2_PRICING_CLASS: Record<string, PricingClass> = {
  PutObject: 'A',
  CreateMultipartUpload: 'A',
  UploadPart: 'A',
  CompleteMultipartUpload: 'A',
  ListObjectsV2: 'A',
  HeadObject: 'B',
  HeadBucket: 'B',
  GetObject: 'B',
  DeleteObject: 'free',
  AbortMultipartUpload: 'free',
}

/** Sorts after every other character (UTF-8 order): `<prefix>` + this comes after every key under the prefix. */
const AFTER_EVERY_CHARACTER = '\u{10FFFF}'

/** R2 takes at most 5 GiB less 5 MiB in one request. */
const SINGLE_PUT_MAX_BYTES = 5 * 1024 ** 3 - 5 * 1024 ** 2

/** Parts in flight per multipart upload: with 5 MiB parts, an upload holds about 15 MiB. */
const PART_QUEUE_SIZE = 2

export interface R2Timeouts {
  /** Give up connecting after this long: an unreachable backend must answer the client quickly. */
  connectMs: number
  /** Give up on a request whose socket has been idle this long (a stalled backend). */
  idleMs: number
  /** Give up on any one request (at most a 5 MiB body) after this long. */
  requestMs: number
}

const DEFAULT_TIMEOUTS: R2Timeouts = { connectMs: 1000, idleMs: 5000, requestMs: 30_000 }

/**
 * A failed upload's key is deleted in the background: first after a pause, so that a write the backend may
 * still be finishing is not overtaken, then again while the backend does not answer, about a minute in all.
 */
const CLEANUP_ATTEMPTS = 15
const cleanupDelayMs = (attempt: number) => Math.min(500 * 2 ** attempt, 5000)
/** How long closing waits for clean-ups in flight before the client is destroyed under them. */
const CLOSE_CLEANUP_WAIT_MS = 3000

/** Cloudflare R2 (or any S3-compatible server) through the AWS SDK. */
export class R2Driver implements StorageDriver {
  readonly name = 'r2'
  readonly prefersKnownLength = true
  readonly client: S3Client
  private readonly bucket: string
  private readonly idleMs: number
  /** Clean-ups still running, and what cuts their pauses short when the driver closes. */
  private readonly cleanups = new Set<Promise<void>>()
  private readonly closing = new AbortController()
  private reportLeftBehind: (key: string, error: ApiError) => void = () => {}
  private reportOperation: (operation: string, pricingClass: PricingClass) => void = () => {}
  /** Until a listener is set, the console, where the SDK itself would print them. */
  private reportWarning: (message: string) => void = (message) => console.warn(message)

  constructor(settings: R2Settings, timeouts: R2Timeouts = DEFAULT_TIMEOUTS) {
    this.bucket = settings.bucket
    this.idleMs = timeouts.idleMs
    this.client = new S3Client({
      region: 'auto',
      endpoint: settings.endpoint,
      forcePathStyle: settings.forcePathStyle,
      credentials: { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey },
      // The SDK's default aws-chunked streaming checksums are stored as the object by some S3 servers
      // and were refused by R2; single puts send their own SHA-256 instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // One quick retry at most: the client is waiting, and has a fallback.
      maxAttempts: 2,
      logger: warningsOnly((message) => this.reportWarning(message)),
      // Each call without per-call options reuses its command's middleware, resolved once, where resolving
      // it per call costs ~0.2 ms of CPU (measured per PutObject): the stack is complete once built here.
      cacheMiddleware: true,
      requestHandler: {
        connectionTimeout: timeouts.connectMs,
        socketTimeout: timeouts.idleMs,
        requestTimeout: timeouts.requestMs,
        // Without this the SDK only logs a warning when requestTimeout passes, and waits on for ever.
        throwOnRequestTimeout: true,
      },
    })
    // Its logger middleware builds a record of every call's input and output, which warningsOnly drops:
    // 0.05 ms of CPU per PutObject (bench/RESULTS.md, sixth pass). The SDK's warnings do not pass through it.
    this.client.middlewareStack.remove('loggerMiddleware')
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const payloadHash = knownPayloadHash(args.input as Pick<PutObjectCommandInput, 'ChecksumSHA256' | 'Body'>)
        if (payloadHash) (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = payloadHash
        return next(args)
      },
      // Built requests are signed in the finalizeRequest step, after this one.
      { step: 'build', name: 'signPayloadWithKnownSha256' },
    )
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '')
        this.reportOperation(operation, R2_PRICING_CLASS[operation] ?? 'A')
        return next(args)
      },
      // Below the retry middleware, so each attempt is counted.
      { step: 'finalizeRequest', name: 'countR2Operations' },
    )
  }

  async put(key: string, body: Buffer | Readable, write: ObjectWrite, signal: AbortSignal): Promise<void> {
    const params: PutObjectCommandInput = {
      Bucket: this.bucket,
      Key: key,
      ContentType: write.contentType,
      CacheControl: write.cacheControl,
      Metadata: encodeStoredMetadata(write.metadata),
      // Never overwrite: R2 answers 412 if the key exists (sent on PutObject and CompleteMultipartUpload).
      IfNoneMatch: '*',
    }
    try {
      await this.write(params, body, write, signal)
    } catch (error) {
      if (isPreconditionFailed(error)) {
        // A 412 can be this write's own earlier attempt, retried after the answer was lost: then the write
        // succeeded. Otherwise the key holds another writer's object, which is never touched.
        let ownWrite: boolean
        try {
          ownWrite = await this.holdsOwnWrite(key, body, write)
        } catch (checkError) {
          // Not known; a key this upload made up holds nothing of anyone else's, so what it holds is deleted.
          if (!write.shared) this.inBackground(() => this.deleteLeftover(key))
          throw checkError
        }
        if (ownWrite) return
        throw new KeyExistsError(key, { cause: error })
      }
      // The write may have landed though it failed (its answer was lost; some servers even keep a body cut
      // short): a key of the upload's own is deleted, off the client's path.
      if (!provesNothingWritten(error) && !write.shared) this.inBackground(() => this.deleteLeftover(key))
      throw error
    }
  }

  private async holdsOwnWrite(key: string, body: Buffer | Readable, write: ObjectWrite): Promise<boolean> {
    const stored = await this.head(key)
    return (
      stored !== undefined &&
      stored.metadata.uploaded_at === write.metadata.uploaded_at &&
      stored.metadata.sha256 === write.sha256 &&
      (!Buffer.isBuffer(body) || stored.size === body.length)
    )
  }

  private async write(params: PutObjectCommandInput, body: Buffer | Readable, write: ObjectWrite, signal: AbortSignal): Promise<void> {
    // A body whose SHA-256 is known carries it, and the backend refuses the body if it does not match.
    const checksum = write.sha256 && Buffer.from(write.sha256, 'hex').toString('base64')
    if (!Buffer.isBuffer(body) && write.length !== undefined && write.length <= SINGLE_PUT_MAX_BYTES) {
      return this.putStream({ ...params, ChecksumSHA256: checksum }, body, write.length, signal)
    }
    if (Buffer.isBuffer(body)) {
      // Without per-call options, so that the client's cached middleware serves it. So `signal` does not cut it
      // short: the whole body is here and goes in one request of at most requestMs. An upload aborted meanwhile
      // fails once it is done, and what it stored is deleted as after any failed write.
      const command = new PutObjectCommand({ ...params, Body: body, ContentLength: body.length, ChecksumSHA256: checksum })
      try {
        await this.guarded(this.client.send(command))
      } finally {
        // The cached middleware's context keeps the first command it served: not its body (up to 5 MiB).
        command.input.Body = undefined
      }
      signal.throwIfAborted()
      return
    }
    // lib-storage sends equal parts (R2's rule). It would also abort the multipart upload on failure, but
    // then throws the abort's own failure instead of the cause (s3rver answers every abort 405, and R2 may
    // not answer at all when it is what failed): the abort is sent here, and the cause is what is thrown.
    let bodyError: unknown
    body.once('error', (error) => (bodyError = error))
    const destroyBody = () => body.destroy(signal.reason as Error)
    signal.addEventListener('abort', destroyBody, { once: true })
    const upload = new Upload({
      client: this.client,
      params: { ...params, Body: body },
      partSize: SINGLE_REQUEST_MAX_BYTES,
      queueSize: PART_QUEUE_SIZE,
      leavePartsOnError: true,
    })
    try {
      await upload.done()
    } catch (error) {
      const { uploadId } = upload
      if (uploadId !== undefined) this.inBackground(() => this.abortMultipartUpload(params.Key!, uploadId))
      // The body's own error (size limit, client gone: contract errors) is the real cause. Any other is
      // lib-storage letting go of the body after a part failed (an AbortError when three or more parts
      // were to come), and the cause is the part's failure.
      throw bodyError instanceof ApiError ? bodyError : storageErrorOf(error)
    } finally {
      signal.removeEventListener('abort', destroyBody)
    }
  }

  /** Drops an unfinished multipart upload's parts; a failure only leaves parts behind, which are not objects. */
  private async abortMultipartUpload(key: string, uploadId: string): Promise<void> {
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => {})
  }

  /** Deletes a failed upload's key until the backend answers; reports it if it may still be there. */
  private async deleteLeftover(key: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      // A pause cut short by closing still leaves one last attempt.
      await sleep(cleanupDelayMs(attempt), undefined, { signal: this.closing.signal }).catch(() => {})
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }))
        return
      } catch (error) {
        if (attempt === CLEANUP_ATTEMPTS || this.closing.signal.aborted) {
          this.reportLeftBehind(key, storageErrorOf(error))
          return
        }
      }
    }
  }

  /** Runs work the client does not wait for, tracked so that closing can wait for it. */
  private inBackground(work: () => Promise<void>): void {
    const running = work()
    this.cleanups.add(running)
    void running.finally(() => this.cleanups.delete(running))
  }

  /** Called with the key of a failed upload whose object could not be deleted and may still be stored. */
  onLeftBehind(listener: (key: string, error: ApiError) => void): void {
    this.reportLeftBehind = listener
  }

  /** Called with the SDK's warnings: for one, each streamed PutObject that fails (it is never retried). */
  onWarning(listener: (message: string) => void): void {
    this.reportWarning = listener
  }

  /**
   * A body of known length goes up as it arrives, in one PutObject (R2 takes up to SINGLE_PUT_MAX_BYTES,
   * about 5 GiB, in one): nothing of it is held in memory, there is no multipart upload to complete, and it
   * costs one Class A operation. It goes at the client's pace, so without a request timeout and without
   * the idle timeout while the client is the one pausing (the client's own timeouts end it, through
   * `signal`); see pacedByClient. The SDK never retries a streamed body, which could not be sent again.
   */
  private async putStream(params: PutObjectCommandInput, body: Readable, length: number, signal: AbortSignal): Promise<void> {
    // The SDK pipes the body into the request, which a failing body would leave hanging: abort it.
    const request = new AbortController()
    let bodyError: unknown
    body.once('error', (error) => {
      bodyError = error
      request.abort(error)
    })
    const destroyBody = () => body.destroy(signal.reason as Error)
    signal.addEventListener('abort', destroyBody, { once: true })
    try {
      const command = new PutObjectCommand({ ...params, Body: pacedByClient(body, this.idleMs), ContentLength: length })
      await this.client.send(command, { abortSignal: request.signal, requestTimeout: 0 })
    } catch (error) {
      // The body's own error (size limit, client gone, shutdown) is the real cause, not the aborted request.
      throw bodyError ?? storageErrorOf(error)
    } finally {
      signal.removeEventListener('abort', destroyBody)
    }
  }

  async head(key: string): Promise<StoredObject | undefined> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }))
      return {
        size: head.ContentLength ?? 0,
        contentType: head.ContentType ?? 'application/octet-stream',
        cacheControl: head.CacheControl,
        etag: head.ETag ?? '',
        lastModified: head.LastModified ?? new Date(0),
        metadata: decodeStoredMetadata(head.Metadata),
      }
    } catch (error) {
      if (error instanceof S3ServiceException && error.$metadata.httpStatusCode === 404) {
        // HeadObject's 404 has no body, so the SDK names a missing object and a missing bucket alike
        // ("NotFound"; a name check for NoSuchBucket never matched). Only on a miss, ask HeadBucket, so a
        // misconfigured bucket answers bucket_not_found rather than "no such object".
        await this.checkReady()
        return undefined
      }
      throw storageErrorOf(error)
    }
  }

  async read(key: string): Promise<Buffer | undefined> {
    try {
      const object = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }))
      return Buffer.from(await object.Body!.transformToByteArray())
    } catch (error) {
      if (error instanceof S3ServiceException && error.name === 'NoSuchKey') return undefined
      throw storageErrorOf(error)
    }
  }

  async delete(key: string): Promise<void> {
    await this.guarded(this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })))
  }

  /**
   * One ListObjectsV2 per page. Hidden keys are dropped from the page, which then holds fewer objects; a
   * page that ends among them sends the next one past them all, so a run of records costs one page, not
   * one per `limit` of them.
   */
  async list({ prefix, startAfter, limit, hidden }: ListRequest): Promise<ListPage> {
    let page: ListObjectsV2CommandOutput
    try {
      page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix || undefined, StartAfter: startAfter, MaxKeys: limit }),
      )
    } catch (error) {
      throw storageErrorOf(error)
    }
    const isHidden = (key: string) => hidden !== undefined && key.startsWith(hidden)
    const contents = page.Contents ?? []
    const objects = contents
      .filter((object) => !isHidden(object.Key!))
      .map((object) => ({
        key: object.Key!,
        size: object.Size ?? 0,
        etag: object.ETag ?? '',
        lastModified: object.LastModified ?? new Date(0),
      }))
    const last = contents.at(-1)?.Key
    if (!page.IsTruncated || last === undefined) return { objects }
    return { objects, next: isHidden(last) ? `${hidden}${AFTER_EVERY_CHARACTER}` : last }
  }

  async usage(): Promise<{ bytes: number; objects: number }> {
    let bytes = 0
    let objects = 0
    try {
      for await (const page of paginateListObjectsV2({ client: this.client }, { Bucket: this.bucket })) {
        for (const object of page.Contents ?? []) {
          bytes += object.Size ?? 0
          objects++
        }
      }
    } catch (error) {
      throw storageErrorOf(error)
    }
    return { bytes, objects }
  }

  /** Calls `listener` for every request sent to the backend (each attempt: R2 bills each one). */
  observeOperations(listener: (operation: string, pricingClass: PricingClass) => void): void {
    this.reportOperation = listener
  }

  async checkReady(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }))
    } catch (error) {
      // HeadBucket has no body, so a missing bucket is only a bare 404.
      if (error instanceof S3ServiceException && error.$metadata.httpStatusCode === 404) {
        throw new ApiError('bucket_not_found', `The bucket "${this.bucket}" does not exist.`, { cause: error })
      }
      throw storageErrorOf(error)
    }
  }

  async close(): Promise<void> {
    this.closing.abort()
    let waited: NodeJS.Timeout | undefined
    await Promise.race([Promise.all(this.cleanups), new Promise((resolve) => (waited = setTimeout(resolve, CLOSE_CLEANUP_WAIT_MS)))])
    clearTimeout(waited)
    this.client.destroy()
  }

  private async guarded<T>(call: Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await call
    } catch (error) {
      throw signal?.aborted ? signal.reason : storageErrorOf(error)
    }
  }
}

/**
 * The streamed body as the SDK sends it, with the backend connection's idle timeout (the SDK's
 * socketTimeout) off while the body waits for the client, and on again whenever the backend has something
 * to take: a chunk it has not taken yet, or the whole body sent and its answer awaited. A client that
 * pauses mid-body is then not taken for a stalled backend, and a backend that stops reading or answering
 * still is, after idleMs.
 */
function pacedByClient(body: Readable, idleMs: number): Readable {
  let socket: Socket | undefined
  let waitingOnClient = true
  const applyTimeout = () => socket?.setTimeout(waitingOnClient ? 0 : idleMs)
  const waiting = (onClient: boolean) => {
    waitingOnClient = onClient
    applyTimeout()
  }
  async function* chunks(): AsyncGenerator<Buffer> {
    waiting(true)
    for await (const chunk of body) {
      waiting(false)
      yield chunk as Buffer
      waiting(true)
    }
    waiting(false)
  }
  const paced = Readable.from(chunks(), { objectMode: false })
  // It fails only with the body's own error, which the caller handles on `body`.
  paced.on('error', () => {})
  // The SDK pipes the body into its http.ClientRequest, whose socket carries the timeout the SDK set (on
  // 'socket', or on 'connect' for a new connection: these listeners run after the SDK's).
  const pipe = paced.pipe.bind(paced)
  paced.pipe = <T extends NodeJS.WritableStream>(destination: T, options?: { end?: boolean }): T => {
    if (destination instanceof ClientRequest) {
      const onSocket = (assigned: Socket) => {
        socket = assigned
        if (assigned.connecting) assigned.once('connect', applyTimeout)
        else applyTimeout()
      }
      if (destination.socket) onSocket(destination.socket)
      else destination.once('socket', onSocket)
    }
    return pipe(destination, options)
  }
  return paced
}

/**
 * The SDK's logger. Without one it prints its warnings on the console, outside the service's log. Calls and
 * their failures the service reports itself, with the request that made them: only warnings are passed on.
 */
function warningsOnly(warn: (message: string) => void): NonNullable<S3ClientConfig['logger']> {
  const ignore = () => {}
  return { trace: ignore, debug: ignore, info: ignore, error: ignore, warn: (...content: unknown[]) => warn(content.map(String).join(' ')) }
}

/**
 * The payload hash to sign a request with: a Buffer body's SHA-256 when it carries it (ChecksumSHA256,
 * computed as the body arrived). The signer takes it from an x-amz-content-sha256 header when there is one,
 * and otherwise hashes a Buffer body itself: a second pass over every byte.
 */
function knownPayloadHash({
  ChecksumSHA256: checksum,
  Body: body,
}: Pick<PutObjectCommandInput, 'ChecksumSHA256' | 'Body'>): string | undefined {
  return checksum && Buffer.isBuffer(body) ? Buffer.from(checksum, 'base64').toString('hex') : undefined
}

const isPreconditionFailed = (error: unknown): boolean =>
  error instanceof ApiError && (error.cause as Error | undefined)?.name === 'PreconditionFailed'

const ACCESS_DENIED = new Set(['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken'])
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE'])

/** Maps what the SDK threw to the contract's storage codes. */
export function storageErrorOf(error: unknown): ApiError {
  if (error instanceof ApiError) return error
  const name = (error as Error).name
  const code = (error as NodeJS.ErrnoException).code
  const status = error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined
  if (name === 'NoSuchBucket') return new ApiError('bucket_not_found', 'The storage bucket does not exist.', { cause: error })
  if (ACCESS_DENIED.has(name) || status === 401 || status === 403) {
    return new ApiError('storage_access_denied', 'The storage backend refused the service’s credentials.', { cause: error })
  }
  if (name === 'TimeoutError' || (code !== undefined && UNREACHABLE.has(code)) || status === 503) {
    return new ApiError('storage_unavailable', 'The storage backend is unreachable or timing out.', { cause: error })
  }
  if (name === 'PreconditionFailed') {
    return new ApiError('storage_error', 'An object with this key already exists.', { cause: error })
  }
  return new ApiError('storage_error', `The storage backend failed (${name}).`, { cause: error })
}
