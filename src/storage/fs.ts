import { createHash, randomUUID } from 'node:crypto'
import { constants, createReadStream, createWriteStream, type ReadStream } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { ApiError } from '../errors.js'
import type { ObjectWrite, StorageDriver, StoredObject } from './driver.js'

interface Sidecar {
  contentType: string
  cacheControl: string
  metadata: Record<string, string>
  etag: string
}

/**
 * Local-disk storage under one root: objects/<key> holds the bytes, meta/<key>.json the headers and
 * metadata. Writes go to tmp/ first and are linked into place, which is atomic and fails if the name
 * exists, so a reader never sees a half-written file and no object is overwritten.
 */
export class FsDriver implements StorageDriver {
  readonly name = 'fs'
  private readonly objectsDir: string
  private readonly metaDir: string
  private readonly tmpDir: string

  constructor(root: string) {
    this.objectsDir = path.join(root, 'objects')
    this.metaDir = path.join(root, 'meta')
    this.tmpDir = path.join(root, 'tmp')
  }

  async init(): Promise<this> {
    await Promise.all([this.objectsDir, this.metaDir, this.tmpDir].map((dir) => fs.mkdir(dir, { recursive: true })))
    return this
  }

  /** Resolves a key below a directory; the route already checked the key, this refuses to leave the root anyway. */
  private pathIn(dir: string, key: string, suffix = ''): string {
    const resolved = path.resolve(dir, key + suffix)
    if (!resolved.startsWith(dir + path.sep)) throw new ApiError('invalid_key', 'The key leaves the storage root.')
    return resolved
  }

  async put(key: string, body: Buffer | Readable, write: ObjectWrite, signal: AbortSignal): Promise<void> {
    const objectPath = this.pathIn(this.objectsDir, key)
    const metaPath = this.pathIn(this.metaDir, key, '.json')
    const tmpObject = path.join(this.tmpDir, randomUUID())
    const tmpMeta = `${tmpObject}.json`
    try {
      const hash = createHash('sha256')
      const hashing = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          hash.update(chunk)
          done(null, chunk)
        },
      })
      const source = Buffer.isBuffer(body) ? Readable.from([body]) : body
      await pipeline(source, hashing, createWriteStream(tmpObject, { flags: 'wx' }), { signal })
      const sidecar: Sidecar = {
        contentType: write.contentType,
        cacheControl: write.cacheControl,
        metadata: write.metadata,
        etag: `"${hash.digest('hex')}"`,
      }
      await fs.writeFile(tmpMeta, JSON.stringify(sidecar), { flag: 'wx' })
      await Promise.all([fs.mkdir(path.dirname(objectPath), { recursive: true }), fs.mkdir(path.dirname(metaPath), { recursive: true })])
      // Metadata first: an object is visible only once its metadata is in place.
      await fs.link(tmpMeta, metaPath)
      await fs.link(tmpObject, objectPath)
    } catch (error) {
      throw signal.aborted ? signal.reason : asStorageError(error)
    } finally {
      await Promise.all([fs.rm(tmpObject, { force: true }), fs.rm(tmpMeta, { force: true })])
    }
  }

  async head(key: string): Promise<StoredObject | undefined> {
    return (await this.stat(key))?.object
  }

  private async stat(key: string): Promise<{ object: StoredObject; objectPath: string } | undefined> {
    const objectPath = this.pathIn(this.objectsDir, key)
    try {
      const [stats, sidecarText] = await Promise.all([fs.stat(objectPath), fs.readFile(this.pathIn(this.metaDir, key, '.json'), 'utf8')])
      if (!stats.isFile()) return undefined
      const sidecar = JSON.parse(sidecarText) as Sidecar
      return {
        objectPath,
        object: {
          size: stats.size,
          contentType: sidecar.contentType,
          cacheControl: sidecar.cacheControl,
          etag: sidecar.etag,
          lastModified: stats.mtime,
          metadata: sidecar.metadata,
        },
      }
    } catch (error) {
      if (isMissing(error)) return undefined
      throw asStorageError(error)
    }
  }

  /** The object's bytes and headers, for serving /files. */
  async open(key: string): Promise<{ object: StoredObject; stream: ReadStream } | undefined> {
    const found = await this.stat(key)
    return found && { object: found.object, stream: createReadStream(found.objectPath) }
  }

  async delete(key: string): Promise<void> {
    try {
      await fs.rm(this.pathIn(this.objectsDir, key), { force: true })
      await fs.rm(this.pathIn(this.metaDir, key, '.json'), { force: true })
    } catch (error) {
      if (!isMissing(error)) throw asStorageError(error)
    }
  }

  async checkReady(): Promise<void> {
    try {
      await fs.access(this.tmpDir, constants.W_OK)
    } catch (error) {
      throw new ApiError('storage_unavailable', 'The data directory is not writable.', { cause: error })
    }
  }

  async close(): Promise<void> {}
}

/** No such file; a name too long for the file system cannot exist either. */
function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ENAMETOOLONG'
}

/** Errors from the body (the client's, or the pipeline's ApiError) pass through; file-system ones are ours. */
function asStorageError(error: unknown): unknown {
  if (error instanceof ApiError || !(error as NodeJS.ErrnoException).syscall) return error
  const code = (error as NodeJS.ErrnoException).code
  const detail = code === 'EEXIST' ? 'An object with this key already exists.' : `The data directory failed (${code}).`
  return new ApiError('storage_error', detail, { cause: error })
}
