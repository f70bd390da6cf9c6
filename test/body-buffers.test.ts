import { Readable } from 'node:stream'
import t from 'tap'
import { BodyBuffers } from '../src/upload/body-buffers.js'
import { type StoredUpload, storeUpload, type UploadPolicy } from '../src/upload/pipeline.js'
import { buildTestApp } from './helpers/app.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3 } from './helpers/s3.js'

const KiB = 1024

t.test('a buffer given back serves the next body of a similar size while loans are out, and only then', async (t) => {
  const buffers = new BodyBuffers()
  const other = buffers.take(10) // a loan that stays out: the pool keeps what is given back
  t.equal(other.length, 64 * KiB, 'sizes go up in steps of 64 KiB')

  const first = buffers.take(500_000)
  t.equal(first.length, 512 * KiB)
  buffers.settle(first)
  const second = buffers.take(450_000)
  t.equal(second, first, 'a body up to a quarter smaller gets the buffer given back')

  buffers.settle(second)
  const small = buffers.take(300_000)
  t.not(small, first, 'a much smaller body gets a buffer of its own: the larger one would hold memory it does not need')
  const large = buffers.take(600_000)
  t.not(large, first, 'a larger body gets a buffer of its own')
  const again = buffers.take(520_000)
  t.equal(again, first, 'the free buffer still serves a body it fits')

  buffers.settle() // a failed write's buffer: not given back
  const afterFailure = buffers.take(500_000)
  t.not(afterFailure, again, 'a buffer settled without being given back is never handed out again')

  for (const buffer of [small, large, afterFailure]) buffers.settle(buffer)
  buffers.settle(other) // the last loan ends
  const afterIdle = buffers.take(300_000)
  t.not(afterIdle, small, 'once no loan is out, nothing is kept')
})

t.test('the free buffers are bounded: at most 16 MiB wait for a body', async (t) => {
  const buffers = new BodyBuffers()
  buffers.take(10)
  const taken = Array.from({ length: 6 }, () => buffers.take(4 * 1024 * KiB))
  for (const buffer of taken) buffers.settle(buffer)
  const reused = Array.from({ length: 6 }, () => buffers.take(4 * 1024 * KiB))
  t.equal(reused.filter((buffer) => taken.includes(buffer)).length, 4, 'four 4 MiB buffers were kept, the other two let go')
})

// What the driver is handed cannot be seen from a storage backend: a driver that records it (and stores nothing).
t.test('a body held in a reused buffer is stored with exactly its own bytes', async (t) => {
  /** Each body handed to the driver: the memory it lives in, and a copy of its bytes then. */
  const received: { memory: ArrayBufferLike; bytes: Buffer }[] = []
  let failNext = false
  /** While set, the next write stays in flight until it resolves. */
  let holdNext: Promise<void> | undefined
  const policy: UploadPolicy = {
    driver: {
      prefersKnownLength: true,
      async put(_key, body) {
        if (!Buffer.isBuffer(body)) throw new Error('a held body is expected')
        received.push({ memory: body.buffer, bytes: Buffer.from(body) })
        if (failNext) throw new Error('the write failed')
        await holdNext
      },
    },
    buffers: new BodyBuffers(),
    maxBytes: 10 * 1024 * KiB,
    allowedTypes: ['image/png'],
    maxPixels: 100_000_000,
    publicUrl: 'https://images.example.test',
  }
  const store = (data: Buffer) =>
    storeUpload(
      { filename: 'p.png', context: 'general', metadata: {}, body: Readable.from([data]), declaredLength: data.length },
      policy,
      new AbortController().signal,
    )
  const held = policy.buffers.take(10) // another upload in flight: buffers given back are kept
  const larger = pngOfSize(500_000, 1)
  const smaller = pngOfSize(460_000, 2)
  const stored: StoredUpload[] = [await store(larger), await store(smaller)]
  t.equal(received[1]!.memory, received[0]!.memory, 'the second body was held in the first one’s buffer')
  t.equal(sha256(received[1]!.bytes), sha256(smaller), 'and handed on with its own bytes only, at its own length')
  t.same(
    stored.map((upload) => upload.sha256),
    [sha256(larger), sha256(smaller)],
  )

  failNext = true
  await t.rejects(store(larger), /the write failed/)
  failNext = false
  await store(larger)
  t.not(received[3]!.memory, received[2]!.memory, 'a buffer whose write failed is not reused')

  let endWrite = () => {}
  holdNext = new Promise((resolve) => {
    endWrite = resolve
  })
  const inFlight = store(larger)
  while (received.length < 5) await new Promise((resolve) => setImmediate(resolve))
  holdNext = undefined
  await store(larger)
  t.not(received[5]!.memory, received[4]!.memory, 'a buffer whose write is still in flight is not handed to another body')
  endWrite()
  await inFlight
  policy.buffers.settle(held)
})

t.test('uploads of many sizes at once, through reused buffers, are each stored byte-exact on S3', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  // Six senders, each sending the next image once its last is stored, from 600 KB down to 310 KB: from the
  // seventh on, a body gets the buffer of one stored just before it, while five others are in flight.
  const images = Array.from({ length: 30 }, (_, index) => pngOfSize(600_000 - index * 10_000, index))
  const stored: { key: string; sha256: string }[] = []
  let next = 0
  const sender = async () => {
    for (let index = next++; index < images.length; index = next++) {
      const answer = await app.inject({
        method: 'POST',
        url: '/v1/images',
        headers: { 'content-type': 'image/png' },
        payload: images[index],
      })
      t.equal(answer.statusCode, 201, answer.body.slice(0, 200))
      stored[index] = answer.json()
    }
  }
  await Promise.all(Array.from({ length: 6 }, sender))
  const expected = images.map(sha256)
  t.same(
    stored.map((upload) => upload.sha256),
    expected,
    'each answer names the SHA-256 of its own bytes',
  )
  t.same(await Promise.all(stored.map((upload) => s3.sha256Of(upload.key))), expected, 'and S3 holds exactly those bytes')
})
