import { createHash, randomUUID } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { finished, Readable, Transform } from 'node:stream'
import { fileTypeFromBuffer } from 'file-type'
import { imageSize } from 'image-size'
import { ApiError } from '../errors.js'
import { asImageType, IMAGE_EXTENSIONS, type ImageType } from '../image-types.js'
import type { ObjectWrite, StorageDriver } from '../storage/driver.js'
import { SINGLE_REQUEST_MAX_BYTES } from '../storage/driver.js'
import type { BodyBuffers } from './body-buffers.js'
import { jpegFrameSize, type Size } from './frame-size.js'
import { GifFrameInspector, gifFrameSize } from './gif.js'
import { newObjectKey, publicUrlOf } from './keys.js'
import { checkSvg, looksLikeMarkup, SVG_MAX_BYTES } from './svg.js'

/** file-type needs at most this many leading bytes to recognise any format. */
const TYPE_SNIFF_BYTES = 4100
/** JPEG dimensions can sit behind large EXIF segments; past this the header is not believable. */
const MAX_IMAGE_HEADER_BYTES = 1024 * 1024
export const CACHE_CONTROL = 'public, max-age=31536000, immutable'
/**
 * A body of unknown length is held up to this size, past it spooled to a file: 16 uploads at once then
 * hold 4 MiB, not 80. (Bodies of unknown length are rare: browsers, curl -F and aiohttp all send lengths.)
 */
const SPOOL_AFTER_BYTES = 256 * 1024
/** Bodies of unknown length are spooled to files named so in the temporary directory (TMPDIR). */
export const SPOOL_FILE_PREFIX = 'image-upload-'

export interface UploadSource {
  /** The client's filename, directory part removed. */
  filename: string | undefined
  context: string
  /** Validated client metadata (uploaded_at included). */
  metadata: Record<string, string>
  body: AsyncIterable<Buffer>
  /**
   * The body's exact length, when the client declared it: a raw body's Content-Length, or a form's file
   * length worked out from it. Held to: a body that ends anywhere else is refused and not stored.
   */
  declaredLength?: number | undefined
  /** Awaited after the body ends and before the object is committed, to reject what follows the file. */
  beforeCommit?: () => Promise<void>
}

export interface UploadPolicy {
  driver: Pick<StorageDriver, 'put' | 'prefersKnownLength'>
  /** Where a body held whole gets its buffer, and gives it back. */
  buffers: BodyBuffers
  maxBytes: number
  allowedTypes: readonly ImageType[]
  maxPixels: number
  publicUrl: string
}

/** The 201 body. */
export interface StoredUpload {
  url: string
  key: string
  size: number
  filename: string
  content_type: ImageType
  sha256: string
  width: number
  height: number
}

/**
 * Reads the upload once: sniffs the type from the first bytes and the dimensions from the header before
 * anything reaches storage, then counts, hashes and streams the rest to the driver. A body that fits one
 * request is buffered (at most SINGLE_REQUEST_MAX_BYTES) so its SHA-256 can be stored and verified with
 * it; a larger one streams, with its declared length when there is one (the driver can then send it as it
 * arrives, holding none of it). Without one, a driver that prefers a known length gets a body past
 * SPOOL_AFTER_BYTES spooled to a temporary file first; any other driver gets the stream.
 */
export async function storeUpload(source: UploadSource, policy: UploadPolicy, signal: AbortSignal): Promise<StoredUpload> {
  const reader = new CountingReader(source.body, policy.maxBytes, signal, policy.buffers)
  try {
    return await readAndStore(reader, source, policy, signal)
  } finally {
    reader.release({ reusable: false }) // what an error left held: it may still be in use, so the collector frees it
  }
}

async function readAndStore(
  reader: CountingReader,
  source: UploadSource,
  policy: UploadPolicy,
  signal: AbortSignal,
): Promise<StoredUpload> {
  // A declared length says at once whether the body fits one request: no need to read that far to know.
  // Without one, a driver that wants lengths gets a body past SPOOL_AFTER_BYTES spooled, not held.
  const spools = source.declaredLength === undefined && policy.driver.prefersKnownLength
  const holdsBody = source.declaredLength === undefined || source.declaredLength <= SINGLE_REQUEST_MAX_BYTES
  // What is held is allocated once, at its final size, before the first byte: no regrowth, and the first
  // chunk is not copied twice (a profile of 500 KB uploads showed both).
  if (holdsBody) reader.reserve(source.declaredLength ?? (spools ? SPOOL_AFTER_BYTES + 1 : 0))
  await reader.fillTo(TYPE_SNIFF_BYTES)
  if (reader.size === 0) throw new ApiError('empty_file', 'The file has no bytes.')

  const contentType = await detectType(reader.head(), policy.allowedTypes)
  const { width, height } = contentType === 'image/svg+xml' ? await readSvg(reader) : await readDimensions(reader, contentType)
  if (width * height > policy.maxPixels) {
    throw new ApiError('image_too_many_pixels', `The image is ${width} × ${height} pixels; at most ${policy.maxPixels} are accepted.`)
  }
  // An animation's later frames come with the body: each is held to the limit as its bytes pass.
  if (contentType === 'image/gif') reader.observe(new GifFrameInspector(policy.maxPixels))
  const extension = IMAGE_EXTENSIONS[contentType]
  const filename = source.filename || `image.${extension}`
  const key = newObjectKey(source.context, filename, extension)
  const metadata = { ...source.metadata, filename, width: String(width), height: String(height) }
  const write = { contentType, cacheControl: CACHE_CONTROL, metadata }

  if (holdsBody) await reader.fillTo((spools ? SPOOL_AFTER_BYTES : SINGLE_REQUEST_MAX_BYTES) + 1)
  if (reader.ended) {
    await source.beforeCommit?.()
    const sha256 = reader.sha256()
    await policy.driver.put(key, reader.head(), { ...write, metadata: { ...metadata, sha256 }, sha256 }, signal)
    // Stored: the driver is done with it. (A request it gave up, answered before it had sent all of it, may
    // still be sending it: nothing that request sends is stored.)
    reader.release({ reusable: true })
  } else if (spools) {
    await putSpooled(reader, source.beforeCommit, policy.driver, key, write, signal)
  } else {
    const body = Readable.from(reader.drain(source.declaredLength, source.beforeCommit), { objectMode: false })
    await policy.driver.put(key, body, { ...write, length: source.declaredLength }, signal)
  }
  return {
    url: publicUrlOf(policy.publicUrl, key),
    key,
    size: reader.size,
    filename,
    content_type: contentType,
    sha256: reader.sha256(),
    width,
    height,
  }
}

/**
 * A body of unknown length is written to a temporary file as it arrives, then stored with its length and
 * SHA-256 in one request: it holds a block in memory where parts would hold megabytes, and it costs one
 * write operation where a multipart upload costs two plus one per part. The file goes however this ends.
 */
async function putSpooled(
  reader: CountingReader,
  beforeCommit: UploadSource['beforeCommit'],
  driver: UploadPolicy['driver'],
  key: string,
  write: ObjectWrite,
  signal: AbortSignal,
): Promise<void> {
  const file = path.join(tmpdir(), `${SPOOL_FILE_PREFIX}${randomUUID()}`)
  try {
    // The reader answers the abort (client gone, shutdown) and the size limit. Each block is written before
    // the next is read: no write queue holds blocks (16 uploads at once peak ~10 MiB lower than with one).
    const handle = await open(file, 'wx')
    await writeFile(handle, reader.drain(undefined, beforeCommit)).finally(() => handle.close())
    const sha256 = reader.sha256()
    const body = createReadStream(file)
    await driver
      .put(key, body, { ...write, metadata: { ...write.metadata, sha256 }, sha256, length: reader.size }, signal)
      .finally(() => body.destroy())
  } finally {
    await rm(file, { force: true })
  }
}

/** Chunks at least this large go on as they are; smaller ones are copied into blocks of COALESCED_BLOCK_BYTES. */
const COALESCE_BELOW_BYTES = 16 * 1024
const COALESCED_BLOCK_BYTES = 64 * 1024

/**
 * The bytes of `source`, small chunks copied together. Node gives every HTTP chunk its own Buffer, and a
 * client sending 1-byte chunks makes one socket read a thousand of them: left queued in a stream they
 * outlive the young generation and cost the heap ~100 bytes each, a megabyte a few hundred megabytes.
 * Taken as they are emitted, they die young: chunks that arrive together (in one tick) go on as one block.
 * A failure or an early close of `source` fails the result; `source` itself is never destroyed from here
 * (the service still answers on its socket).
 */
export function coalesced(source: Readable): Readable {
  let block: Buffer | undefined
  let used = 0
  const pushBlock = (stream: Transform) => {
    if (block !== undefined && used > 0) stream.push(block.subarray(0, used))
    block = undefined
    used = 0
  }
  const blocks = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (chunk.length >= COALESCE_BELOW_BYTES || (block !== undefined && used + chunk.length > COALESCED_BLOCK_BYTES)) pushBlock(this)
      if (chunk.length >= COALESCE_BELOW_BYTES) return done(null, chunk)
      if (block === undefined) {
        block = Buffer.allocUnsafe(COALESCED_BLOCK_BYTES)
        const filling = block
        setImmediate(() => block === filling && !this.destroyed && pushBlock(this))
      }
      used += chunk.copy(block, used)
      done()
    },
    flush(done) {
      pushBlock(this)
      done()
    },
  })
  source.pipe(blocks)
  finished(source, (error) => {
    if (error) blocks.destroy(error)
  })
  return blocks
}

/** Takes the body and keeps nothing: for reading an upload through the same checks without storing it. */
const NO_STORAGE: UploadPolicy['driver'] = {
  prefersKnownLength: false,
  async put(_key, body) {
    if (!Buffer.isBuffer(body)) for await (const _chunk of body);
  },
}

/** Reads and checks an upload exactly as storeUpload does (type, size, pixels, hash), and stores nothing. */
export function checkUpload(source: UploadSource, policy: UploadPolicy, signal: AbortSignal): Promise<StoredUpload> {
  return storeUpload(source, { ...policy, driver: NO_STORAGE }, signal)
}

async function detectType(head: Buffer, allowedTypes: readonly ImageType[]): Promise<ImageType> {
  const detected = await fileTypeFromBuffer(head)
  // file-type does not know SVG, a text format (at most it says application/xml): markup goes to checkSvg.
  const svg = (detected === undefined || detected.mime === 'application/xml') && looksLikeMarkup(head)
  const type = svg ? 'image/svg+xml' : asImageType(detected?.mime)
  if (type === undefined || !allowedTypes.includes(type)) {
    const what = detected ? `is ${detected.mime}` : 'is not a recognised image'
    throw new ApiError('unsupported_media_type', `The content ${what}; allowed: ${allowedTypes.join(', ')}.`)
  }
  return type
}

/** An SVG is a document, checked whole before anything is stored: so it is read whole, up to SVG_MAX_BYTES. */
async function readSvg(reader: CountingReader): Promise<Size> {
  // The reader itself still refuses anything over the policy's maxBytes, should that be the lower limit.
  await reader.fillTo(SVG_MAX_BYTES + 1)
  if (reader.bufferedBytes > SVG_MAX_BYTES) {
    throw new ApiError('image_too_large', `An SVG is checked whole before it is stored; it may be at most ${SVG_MAX_BYTES} bytes.`)
  }
  return checkSvg(reader.head())
}

/** JPEG and GIF sizes are read strictly (see frame-size.ts); the other types through image-size. */
const STRICT_FRAME_SIZE: Partial<Record<ImageType, (header: Uint8Array) => Size | undefined>> = {
  'image/jpeg': jpegFrameSize,
  'image/gif': gifFrameSize,
}

function imageSizeOrUndefined(header: Uint8Array): Size | undefined {
  try {
    const { width, height } = imageSize(header)
    return { width, height }
  } catch {
    return undefined // the header is not complete yet, or not valid: reading on may still tell
  }
}

/** Reads more of the body until the header gives width and height, or the header is not believable. */
async function readDimensions(reader: CountingReader, type: ImageType): Promise<Size> {
  const strictReader = STRICT_FRAME_SIZE[type]
  for (;;) {
    // A copy with its own ArrayBuffer: image-size reads through the whole underlying buffer, and a
    // pooled Buffer would let a truncated header borrow another allocation's bytes.
    const header = new Uint8Array(reader.head())
    const size = strictReader ? strictReader(header) : imageSizeOrUndefined(header)
    if (size && size.width > 0 && size.height > 0) return size
    // A strict reader's answer is final; image-size may just not have seen enough yet.
    if (size && strictReader) throw new ApiError('unsupported_media_type', 'The image header declares no width or height.')
    if (reader.ended || reader.bufferedBytes >= MAX_IMAGE_HEADER_BYTES) {
      throw new ApiError('unsupported_media_type', 'The image header is corrupt: its width and height cannot be read.')
    }
    // Doubling keeps the re-parsing linear in the header size, however small the client's chunks; the last
    // step stops at the limit, so that no header past it is read.
    await reader.fillTo(Math.min(reader.bufferedBytes * 2, MAX_IMAGE_HEADER_BYTES))
  }
}

/** What a reader holds before it has reserved anything. */
const NO_BUFFER = Buffer.alloc(0)

function lengthDisagrees(length: number): ApiError {
  return new ApiError(
    'invalid_request',
    `The file does not end where the request's Content-Length puts it (after ${length} bytes), so it was not stored. ` +
      'Send a form whose file is the last part, followed only by the closing "--boundary--" and CRLF (as curl, browsers and ' +
      'common HTTP libraries do), or send it without Content-Length (chunked), or send the image as the raw request body.',
  )
}

/**
 * Pulls chunks from the body, enforcing the size limit and hashing every byte exactly once. What it holds
 * is copied into one growing buffer as it arrives, so a body of tiny chunks costs its bytes, not an object
 * per chunk (see `coalesced` for the chunks on their way).
 */
class CountingReader {
  size = 0
  ended = false
  bufferedBytes = 0
  private buffer: Buffer = NO_BUFFER
  private readonly hash = createHash('sha256')
  private observer: { write(chunk: Buffer): void } | undefined
  private readonly iterator: AsyncIterator<Buffer>

  constructor(
    body: AsyncIterable<Buffer>,
    private readonly maxBytes: number,
    private readonly signal: AbortSignal,
    private readonly buffers: BodyBuffers,
  ) {
    this.iterator = body[Symbol.asyncIterator]()
  }

  /** The next chunk, or the abort's reason: a stalled client must not hold an aborted upload (shutdown). */
  private pull(): Promise<IteratorResult<Buffer>> {
    const { signal } = this
    if (signal.aborted) return Promise.reject(signal.reason)
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason)
      signal.addEventListener('abort', onAbort, { once: true })
      const settle = () => signal.removeEventListener('abort', onAbort)
      this.iterator.next().then(
        (result) => {
          settle()
          resolve(result)
        },
        (error: unknown) => {
          settle()
          reject(error)
        },
      )
    })
  }

  private async next(): Promise<Buffer | undefined> {
    const result = await this.pull()
    if (result.done) {
      this.ended = true
      return undefined
    }
    const chunk = result.value
    this.size += chunk.length
    if (this.size > this.maxBytes) {
      throw new ApiError('image_too_large', `The image is larger than the limit of ${this.maxBytes} bytes.`)
    }
    this.hash.update(chunk)
    this.observer?.write(chunk)
    return chunk
  }

  /** Shows `observer` the bytes held so far, then every chunk as it is read, before anything else sees it. */
  observe(observer: { write(chunk: Buffer): void }): void {
    observer.write(this.head())
    this.observer = observer
  }

  /** Buffers the body until at least `bytes` are held or it ends; the buffer grows by doubling, up to `bytes`. */
  async fillTo(bytes: number): Promise<void> {
    while (!this.ended && this.bufferedBytes < bytes) {
      const chunk = await this.next()
      if (chunk === undefined) return
      const needed = this.bufferedBytes + chunk.length
      if (needed > this.buffer.length) this.reserve(Math.max(needed, Math.min(bytes, 2 * this.buffer.length)))
      chunk.copy(this.buffer, this.bufferedBytes)
      this.bufferedBytes = needed
    }
  }

  /** Makes room to hold `bytes` in all. */
  reserve(bytes: number): void {
    if (bytes <= this.buffer.length) return
    const grown = this.buffers.lend(bytes)
    this.buffer.copy(grown, 0, 0, this.bufferedBytes)
    // Not lent again: the checks were handed views of it (head()), which may still be held.
    if (this.buffer !== NO_BUFFER) this.buffers.endLoan()
    this.buffer = grown
  }

  /** Lets the held buffer go: back to `buffers` for another body when it is `reusable`, else to the collector. */
  release({ reusable }: { reusable: boolean }): void {
    if (this.buffer !== NO_BUFFER) this.buffers.endLoan(reusable ? this.buffer : undefined)
    this.buffer = NO_BUFFER
    this.bufferedBytes = 0
  }

  head(): Buffer {
    return this.buffer.subarray(0, this.bufferedBytes)
  }

  /**
   * The buffered bytes, then the rest of the body as it arrives; `beforeEnd` runs before the stream ends.
   * With `length` (announced to the backend, which commits a PUT once it has that many bytes) the body
   * must be exactly that long, and its last chunk is held back until the body has ended there and
   * `beforeEnd` has passed: a body that turns out longer, shorter or followed by more fails the PUT
   * before the backend has all of it, so nothing is stored.
   */
  async *drain(length: number | undefined, beforeEnd: (() => Promise<void>) | undefined): AsyncGenerator<Buffer> {
    if (length === undefined) {
      yield* this.remaining()
      await beforeEnd?.()
      return
    }
    let held: Buffer | undefined
    for await (const chunk of this.remaining()) {
      if (this.size > length) throw lengthDisagrees(length)
      if (chunk.length === 0) continue
      if (held) yield held
      held = chunk
    }
    if (this.size !== length) throw lengthDisagrees(length)
    await beforeEnd?.()
    if (held) yield held
  }

  /** The buffered bytes, then the rest of the body as it arrives. */
  private async *remaining(): AsyncGenerator<Buffer> {
    const held = this.head()
    this.release({ reusable: false }) // its bytes go on to storage as a chunk of the stream
    if (held.length > 0) yield held
    for (let chunk = await this.next(); chunk !== undefined; chunk = await this.next()) yield chunk
  }

  sha256(): string {
    return this.hash.copy().digest('hex')
  }
}
