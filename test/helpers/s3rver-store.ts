/**
 * s3rver 3.7.1 answers a PutObject or an UploadPart once its hashing stream has seen the whole body, but
 * before its write of that body to the file has ended. A read right after the answer can then find the
 * object empty or short: once in CI a 201's object read back as 0 bytes, and once an object backdated
 * right after its PutObject came out young (the late write reset its mtime). R2 and S3 are read-after-write
 * consistent, so the tests' server must be: these writes answer only once the file holds the body.
 * Everything else is s3rver's own code. One more difference: a body cut off mid-way now fails the request
 * (s3rver's own left it pending for ever, its file open); its partial file is still left, as before.
 */
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { type Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import FilesystemStore from 's3rver/lib/stores/filesystem.js'

/** Writes `content` to `file`, hashing it on the way; resolves once the file is written and closed. */
async function writeHashed(content: Readable | Buffer, file: string): Promise<{ size: number; md5: string }> {
  await mkdir(path.dirname(file), { recursive: true })
  const md5 = createHash('md5')
  let size = 0
  const hashing = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      md5.update(chunk)
      size += chunk.length
      done(null, chunk)
    },
  })
  await pipeline(Buffer.isBuffer(content) ? [content] : content, hashing, createWriteStream(file))
  return { size, md5: md5.digest('hex') }
}

/** Makes s3rver's file store (in this process) answer its writes only once they are on disk. */
export function storeWritesBeforeAnswering(): void {
  FilesystemStore.prototype.putObject = async function putObject(object) {
    const written = await writeHashed(object.content, this.getResourcePath(object.bucket, object.key, 'object'))
    await this.putMetadata(object.bucket, object.key, object.metadata, written.md5)
    return written
  }
  FilesystemStore.prototype.putPart = async function putPart(bucket, uploadId, partNumber, content) {
    const file = path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId, partNumber)
    const written = await writeHashed(content, file)
    await writeFile(`${file}.md5`, written.md5)
    return written
  }
}
