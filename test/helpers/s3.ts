import { createHash } from 'node:crypto'
import { mkdtemp, rm, utimes } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, paginateListObjectsV2, S3Client } from '@aws-sdk/client-s3'
import type { FastifyInstance } from 'fastify'
import S3rver from 's3rver'
import { R2Driver } from '../../src/storage/r2.js'
import { RECORDS_PREFIX } from '../../src/upload/keys.js'
import { storeWritesBeforeAnswering } from './s3rver-store.js'
import { spawnService } from './service-process.js'

export const TEST_BUCKET = 'test-images'

/** Environment for an app that stores on the local S3 server through the R2 driver. */
export function r2Env(endpoint: string, bucket = TEST_BUCKET): NodeJS.ProcessEnv {
  return {
    STORAGE_DRIVER: 'r2',
    R2_ENDPOINT: endpoint,
    R2_ACCESS_KEY_ID: 'S3RVER', // the only access key s3rver accepts
    R2_SECRET_ACCESS_KEY: 'S3RVER',
    R2_BUCKET_NAME: bucket,
    R2_PUBLIC_URL: 'https://images.example.test',
  }
}

/** A local S3 protocol server with one bucket, plus an independent client. */
export interface LocalS3 {
  endpoint: string
  /** The server's process, when it runs in one of its own (`ownProcess`). */
  pid?: number
  client: S3Client
  sha256Of(key: string): Promise<string>
  keys(prefix?: string): Promise<string[]>
  /** The keys of images: everything but the service's own Idempotency-Key records. */
  imageKeys(): Promise<string[]>
  /** Stores `body` under a new `key` with Last-Modified `date` (s3rver's is its file's mtime), as if stored then. */
  putStoredAt(key: string, body: Buffer, date: Date): Promise<void>
  stop(): Promise<void>
}

/**
 * The local S3 protocol server (s3rver) on 127.0.0.1 with one bucket, plus an independent client. In this
 * process by default; `ownProcess` runs it in a child with the OpenSSL legacy provider, which it needs to
 * answer a truncated ListObjectsV2 (a bucket of more than one page; see s3rver-main.ts). Its objects are
 * stored under `under` (a directory of its own there), the system's temporary directory by default.
 */
export async function startS3(options: { ownProcess?: boolean; under?: string } = {}): Promise<LocalS3> {
  const directory = await mkdtemp(path.join(options.under ?? tmpdir(), 's3rver-'))
  let port: number
  let pid: number | undefined
  let stopServer: () => Promise<unknown>
  if (options.ownProcess) {
    const child = spawnService({
      nodeArgs: ['--openssl-legacy-provider'],
      entry: ['--import', 'tsx', fileURLToPath(new URL('./s3rver-main.ts', import.meta.url)), directory, TEST_BUCKET],
    })
    port = Number((await child.waitForLog((line) => line.msg === 's3rver ready', 'that s3rver is ready')).port)
    pid = child.pid
    stopServer = () => child.stop()
  } else {
    storeWritesBeforeAnswering()
    const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: TEST_BUCKET }] })
    port = (await server.run()).port
    stopServer = () => server.close()
  }
  const endpoint = `http://127.0.0.1:${port}`
  const client = new S3Client({
    region: 'auto',
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
  /** Every key (past ListObjectsV2's 1000 a page), or those under `prefix`. */
  const keys = async (prefix?: string): Promise<string[]> => {
    const found: string[] = []
    for await (const page of paginateListObjectsV2({ client }, { Bucket: TEST_BUCKET, Prefix: prefix })) {
      for (const object of page.Contents ?? []) found.push(object.Key!)
    }
    return found
  }
  return {
    endpoint,
    pid,
    client,
    /** Reads the stored object back and hashes it as it streams. */
    async sha256Of(key) {
      const object = await client.send(new GetObjectCommand({ Bucket: TEST_BUCKET, Key: key }))
      const hash = createHash('sha256')
      for await (const chunk of object.Body as Readable) hash.update(chunk as Buffer)
      return hash.digest('hex')
    },
    keys,
    async imageKeys() {
      return (await keys()).filter((key) => !key.startsWith(RECORDS_PREFIX))
    },
    async putStoredAt(key, body, date) {
      // Answered once the file is written (s3rver-store.ts), so no late write resets the mtime set here.
      await client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: body }))
      const segments = key.split('/')
      const file = `${segments.pop()}._S3rver_object`
      await utimes(path.join(directory, TEST_BUCKET, ...segments, file), date, date)
    },
    async stop() {
      client.destroy()
      await stopServer()
      await rm(directory, { recursive: true, force: true })
    },
  }
}

export { HeadObjectCommand }

/** One request as the driver's S3 client sent it: operation name (PutObject…) and input. */
export interface SentCommand {
  name: string
  input: Record<string, unknown>
}

/**
 * Records every request the driver's client sends (each attempt, below the SDK's retries), changing nothing.
 * Call it before the driver sends anything: the client resolves each command's middleware once
 * (cacheMiddleware), so a middleware added later may not see a command already sent.
 */
export function recordCommands(driver: R2Driver): SentCommand[] {
  const sent: SentCommand[] = []
  driver.client.middlewareStack.add(
    (next, context) => async (args) => {
      sent.push({ name: (context.commandName ?? '?').replace(/Command$/, ''), input: args.input as Record<string, unknown> })
      return next(args)
    },
    { step: 'finalizeRequest', name: 'testRecordCommands' },
  )
  return sent
}

export function r2DriverOf(app: FastifyInstance): R2Driver {
  if (!(app.storage instanceof R2Driver)) throw new Error(`expected the r2 driver, got ${app.storage.name}`)
  return app.storage
}
