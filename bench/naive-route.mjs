/**
 * The peer to beat in `npm run bench`: the upload route a newcomer writes with the service's own stack.
 * The whole file is read into memory (@fastify/multipart's toBuffer()), then stored with one PutObject.
 * It checks nothing (no type, no dimensions, no hash), logs nothing and has no authentication; it answers
 * 201 with the key and the ETag the S3 server returned, which the bench compares with the MD5 it sent.
 *
 * Plain JavaScript, so it runs as the built service does: node alone, no loader in the process measured.
 * Environment: PORT, R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET_NAME.
 */
import { randomUUID } from 'node:crypto'
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import multipart from '@fastify/multipart'
import Fastify from 'fastify'

const env = process.env
const s3 = new S3Client({
  region: 'auto',
  endpoint: env.R2_ENDPOINT,
  forcePathStyle: true,
  credentials: { accessKeyId: env.R2_ACCESS_KEY_ID ?? '', secretAccessKey: env.R2_SECRET_ACCESS_KEY ?? '' },
  // As the service's client: the local S3 server does not validate the SDK's default checksums.
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
})

const app = Fastify()
// @fastify/multipart's default file limit is 1 MiB; the service takes up to 100 MiB.
await app.register(multipart, { limits: { fileSize: 100 * 1024 * 1024, files: 1 } })

app.get('/healthz', async () => ({ status: 'ok' }))

app.post('/upload', async (request, reply) => {
  const file = await request.file()
  if (!file) return reply.code(400).send({ error: 'no file' })
  const body = await file.toBuffer()
  const key = `naive/${randomUUID()}`
  const stored = await s3.send(new PutObjectCommand({ Bucket: env.R2_BUCKET_NAME, Key: key, Body: body, ContentType: file.mimetype }))
  return reply.code(201).send({ key, etag: stored.ETag })
})

// A clean exit, so that `node --cpu-prof` writes its profile.
process.once('SIGTERM', () => void app.close().then(() => process.exit(0)))
const address = await app.listen({ host: '127.0.0.1', port: Number(env.PORT) })
// The line the service logs once it listens: the bench starts both with one process starter, which waits for it.
console.log(JSON.stringify({ msg: 'image-upload-service ready', address }))
