import { createHash, randomUUID } from 'node:crypto'
import { constants, createWriteStream, type Dirent } from 'node:fs'
import fs, { type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { ConfigError } from '../config.js'
import { ApiError } from '../errors.js'
import {
  isKeySegment,
  KeyExistsError,
  type ListedObject,
  type ListPage,
  type ListRequest,
  type ObjectWrite,
  type OpenedObject,
  type StorageDriver,
  type StoredObject,
} from './driver.js'

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
  readonly prefersKnownLength = false
  private readonly objectsDir: string
  private readonly metaDir: string
  private readonly tmpDir: string

  constructor(root: string) {
    this.objectsDir = path.join(root, 'objects')
    this.metaDir = path.join(root, 'meta')
    this.tmpDir = path.join(root, 'tmp')
  }

  /** Creates the directories and clears what an earlier, interrupted process left in tmp/. */
  async init(): Promise<this> {
    try {
      await fs.rm(this.tmpDir, { recursive: true, force: true })
      await Promise.all([this.objectsDir, this.metaDir, this.tmpDir].map((dir) => fs.mkdir(dir, { recursive: true })))
    } catch (error) {
      const { code } = error as NodeJS.ErrnoException
      throw new ConfigError(`Invalid configuration:\n  DATA_DIR: ${path.dirname(this.tmpDir)} cannot be used (${code}).`)
    }
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
      // flush: the bytes are on disk before the link makes them visible, even across a power cut.
      await pipeline(source, hashing, createWriteStream(tmpObject, { flags: 'wx', flush: true }), { signal })
      const sidecar: Sidecar = {
        contentType: write.contentType,
        cacheControl: write.cacheControl,
        metadata: write.metadata,
        etag: `"${hash.digest('hex')}"`,
      }
      await fs.writeFile(tmpMeta, JSON.stringify(sidecar), { flag: 'wx', flush: true })
      await Promise.all([fs.mkdir(path.dirname(objectPath), { recursive: true }), fs.mkdir(path.dirname(metaPath), { recursive: true })])
      // Metadata first: an object is visible only once its metadata is in place.
      await fs.link(tmpMeta, metaPath)
      await fs.link(tmpObject, objectPath)
    } catch (error) {
      if (signal.aborted) throw signal.reason
      throw (error as NodeJS.ErrnoException).code === 'EEXIST' ? new KeyExistsError(key, { cause: error }) : asStorageError(error)
    } finally {
      await Promise.all([fs.rm(tmpObject, { force: true }), fs.rm(tmpMeta, { force: true })])
    }
  }

  async head(key: string): Promise<StoredObject | undefined> {
    const found = await this.open(key)
    await found?.handle.close()
    return found?.object
  }

  /**
   * The object's headers and an open handle on its bytes (for /files). Opening first means a delete
   * landing meanwhile cannot turn a found object into a failed read.
   */
  async open(key: string): Promise<OpenedObject | undefined> {
    let handle: FileHandle | undefined
    try {
      handle = await fs.open(this.pathIn(this.objectsDir, key))
      const [stats, sidecarText] = await Promise.all([handle.stat(), fs.readFile(this.pathIn(this.metaDir, key, '.json'), 'utf8')])
      if (!stats.isFile()) throw Object.assign(new Error('not a file'), { code: 'EISDIR' })
      const sidecar = JSON.parse(sidecarText) as Sidecar
      const object = {
        size: stats.size,
        contentType: sidecar.contentType,
        cacheControl: sidecar.cacheControl,
        etag: sidecar.etag,
        lastModified: stats.mtime,
        metadata: sidecar.metadata,
      }
      return { object, handle }
    } catch (error) {
      await handle?.close()
      if (isMissing(error)) return undefined
      throw asStorageError(error)
    }
  }

  async read(key: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(this.pathIn(this.objectsDir, key))
    } catch (error) {
      if (isMissing(error)) return undefined
      throw asStorageError(error)
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await fs.rm(this.pathIn(this.objectsDir, key), { force: true })
      await fs.rm(this.pathIn(this.metaDir, key, '.json'), { force: true })
    } catch (error) {
      if (!isMissing(error)) throw asStorageError(error)
    }
  }

  /**
   * A page in the order S3 lists (see keysInOrder): the keys are walked lazily, one directory read at a
   * time, until the page is full, and one more key tells whether another page follows.
   */
  async list(request: ListRequest): Promise<ListPage> {
    const keys: string[] = []
    let more = false
    try {
      for await (const key of keysInOrder(this.objectsDir, '', request)) {
        if (keys.length === request.limit) {
          more = true
          break
        }
        keys.push(key)
      }
    } catch (error) {
      throw asStorageError(error)
    }
    const objects: ListedObject[] = []
    for (let start = 0; start < keys.length; start += HEADS_AT_ONCE) {
      const batch = keys.slice(start, start + HEADS_AT_ONCE)
      const found = await Promise.all(batch.map(async (key) => ({ key, object: await this.head(key) })))
      // An object deleted since its directory was read is left out.
      for (const { key, object } of found)
        if (object) objects.push({ key, size: object.size, etag: object.etag, lastModified: object.lastModified })
    }
    return more ? { objects, next: keys.at(-1)! } : { objects }
  }

  async usage(): Promise<{ bytes: number; objects: number }> {
    try {
      const entries = await fs.readdir(this.objectsDir, { recursive: true, withFileTypes: true })
      const sizes = await Promise.all(
        entries.filter((entry) => entry.isFile()).map(async (entry) => (await fs.stat(path.join(entry.parentPath, entry.name))).size),
      )
      return { bytes: sizes.reduce((sum, size) => sum + size, 0), objects: sizes.length }
    } catch (error) {
      throw asStorageError(error)
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

/** Objects described at once while a page is listed (each costs a file handle). */
const HEADS_AT_ONCE = 32

/**
 * The keys under `dir` (whose keys start with `base`) that `request` asks for, in S3's order: UTF-8 byte
 * order of the whole key, which for the key grammar's ASCII is the order of JavaScript strings. A
 * directory sorts as its name plus "/", the prefix every key inside shares, so a directory's keys come
 * out exactly where they belong among its siblings'. Only directories that can hold a key of the page
 * are read, one at a time, as the caller asks for more.
 */
async function* keysInOrder(dir: string, base: string, request: ListRequest): AsyncGenerator<string> {
  const { prefix, startAfter, hidden } = request
  let entries: Dirent[]
  try {
    entries = await fs.readdir(dir, { withFileTypes: true })
  } catch (error) {
    if (isMissing(error)) return
    throw error
  }
  const named = entries
    // A file the key grammar cannot name is no object a client could address.
    .filter((entry) => isKeySegment(entry.name) && (entry.isDirectory() || entry.isFile()))
    .map((entry) => ({ entry, key: base + entry.name + (entry.isDirectory() ? '/' : '') }))
    .filter(({ key }) => hidden === undefined || !key.startsWith(hidden))
    .sort((a, b) => (a.key < b.key ? -1 : 1))
  for (const { entry, key } of named) {
    if (entry.isDirectory()) {
      const mayHoldPrefix = key.startsWith(prefix) || prefix.startsWith(key)
      const mayHoldLater = startAfter === undefined || key > startAfter || startAfter.startsWith(key)
      if (mayHoldPrefix && mayHoldLater) yield* keysInOrder(path.join(dir, entry.name), key, request)
    } else if (key.startsWith(prefix) && (startAfter === undefined || key > startAfter)) {
      yield key
    }
  }
}

/**
 * No object under that key: no such file, a name too long to exist, or a directory (the key of a prefix,
 * such as "portraits", names the directory that holds its objects).
 */
const MISSING = new Set(['ENOENT', 'ENOTDIR', 'ENAMETOOLONG', 'EISDIR', 'ERR_FS_EISDIR'])
const isMissing = (error: unknown): boolean => MISSING.has((error as NodeJS.ErrnoException).code ?? '')

/** Errors from the body (the client's, or the pipeline's) are ApiErrors and pass through; the rest are ours. */
function asStorageError(error: unknown): ApiError {
  if (error instanceof ApiError) return error
  const code = (error as NodeJS.ErrnoException).code
  return new ApiError('storage_error', `The data directory failed (${code ?? 'unreadable'}).`, { cause: error })
}
