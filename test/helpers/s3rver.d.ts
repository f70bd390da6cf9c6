// s3rver ships no types; this is the part the tests use.
declare module 's3rver' {
  import type { AddressInfo } from 'node:net'

  interface S3rverOptions {
    address?: string
    port?: number
    silent?: boolean
    directory: string
    resetOnClose?: boolean
    configureBuckets?: { name: string }[]
  }
  export default class S3rver {
    constructor(options: S3rverOptions)
    run(): Promise<AddressInfo>
    close(): Promise<void>
  }
}

// Its file store, whose writes s3rver-store.ts replaces.
declare module 's3rver/lib/stores/filesystem.js' {
  import type { Readable } from 'node:stream'

  export default class FilesystemStore {
    getResourcePath(bucket: string, key: string | undefined, resource: string): string
    putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>
    putObject(object: {
      bucket: string
      key: string
      content: Readable | Buffer
      metadata: Record<string, string>
    }): Promise<{ size: number; md5: string }>
    putPart(bucket: string, uploadId: string, partNumber: string, content: Readable): Promise<{ size: number; md5: string }>
  }
}
