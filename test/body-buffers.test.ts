import { Readable } from 'node:stream'
import t from 'tap'
import { BodyBuffers } from '../src/upload/body-buffers.js'
import { checkUpload, storeUpload, type UploadPolicy, type UploadSource } from '../src/upload/pipeline.js'
import { buildTestApp } from './helpers/app.js'
import { gif, pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { until } from './helpers/wait.js'

const KiB = 1024
const MiB = 1024 * KiB

t.test('a buffer given back is lent again for a body of a similar size while loans are out, and only then', async (t) => {
  const buffers = new BodyBuffers()
  const other = buffers.lend(10) // a loan that stays out: the buffers given back are kept
  t.equal(other.length, 64 * KiB, 'sizes go up in steps of 64 KiB')

  const first = buffers.lend(500_000)
  t.equal(first.length, 512 * KiB)
  buffers.endLoan(first)
  const second = buffers.lend(450_000)
  t.equal(second, first, 'a body up to a quarter smaller gets the buffer given back')

  buffers.endLoan(second)
  const small = buffers.lend(300_000)
  t.not(small, first, 'a much smaller body gets a buffer of its own: the larger one would hold memory it does not need')
  const large = buffers.lend(600_000)
  t.not(large, first, 'a larger body gets a buffer of its own')
  const newer = buffers.lend(500_000)
  buffers.endLoan(newer)
  t.equal(buffers.lend(520_000), newer, 'of two that fit, the one given back last (the likeliest still in a cache)')

  for (const buffer of [small, large, first]) buffers.endLoan(buffer)
  buffers.endLoan(other) // the last loan ends
  t.not(buffers.lend(300_000), small, 'once no loan is out, nothing is kept')
})

t.test('the free buffers are bounded: at most 16 MiB wait for a body', async (t) => {
  const buffers = new BodyBuffers()
  buffers.lend(10)
  const lent = Array.from({ length: 6 }, () => buffers.lend(4 * MiB))
  for (const buffer of lent) buffers.endLoan(buffer)
  const again = Array.from({ length: 6 }, () => buffers.lend(4 * MiB))
  t.equal(again.filter((buffer) => lent.includes(buffer)).length, 4, 'four 4 MiB buffers were kept, the other two let go')
})

/**
 * A policy whose driver records what it is handed and stores nothing: which memory a body was in cannot be
 * seen from a storage backend. A stream is read to its end, as a backend would.
 */
function recordingPolicy(overrides: Partial<UploadPolicy> = {}) {
  /** Each body handed over whole: the memory it lives in, and a copy of its bytes then. */
  const received: { memory: ArrayBufferLike; bytes: Buffer }[] = []
  const control: { failNext: boolean; holdNext?: Promise<void> | undefined } = { failNext: false }
  const policy: UploadPolicy = {
    driver: {
      prefersKnownLength: true,
      async put(_key, body) {
        if (Buffer.isBuffer(body)) received.push({ memory: body.buffer, bytes: Buffer.from(body) })
        else for await (const _chunk of body);
        if (control.failNext) throw new Error('the write failed')
        await control.holdNext
      },
    },
    buffers: new BodyBuffers(),
    maxBytes: 10 * MiB,
    allowedTypes: ['image/png', 'image/gif', 'image/svg+xml'],
    maxPixels: 100_000_000,
    publicUrl: 'https://images.example.test',
    ...overrides,
  }
  return { policy, received, control }
}

const sourceOf = (chunks: Buffer[], declaredLength?: number): UploadSource => ({
  filename: 'p.png',
  context: 'general',
  metadata: {},
  body: Readable.from(chunks),
  declaredLength,
})
const whole = (data: Buffer) => sourceOf([data], data.length)

t.test('a body held in a buffer lent again is stored with exactly its own bytes', async (t) => {
  const { policy, received, control } = recordingPolicy()
  const store = (data: Buffer) => storeUpload(whole(data), policy, new AbortController().signal)
  const elsewhere = policy.buffers.lend(10) // another upload in flight: buffers given back are kept
  const larger = pngOfSize(500_000, 1)
  const smaller = pngOfSize(460_000, 2)
  t.same([(await store(larger)).sha256, (await store(smaller)).sha256], [sha256(larger), sha256(smaller)])
  t.equal(received[1]!.memory, received[0]!.memory, 'the second body was held in the first one’s buffer')
  t.equal(sha256(received[1]!.bytes), sha256(smaller), 'and handed on with its own bytes only, at its own length')

  control.failNext = true
  await t.rejects(store(larger), /the write failed/)
  control.failNext = false
  await store(larger)
  t.not(received[3]!.memory, received[2]!.memory, 'a buffer whose write failed is not lent again')

  let endWrite = () => {}
  control.holdNext = new Promise((resolve) => {
    endWrite = resolve
  })
  const inFlight = store(larger)
  await until('the held write to start', () => received.length >= 5)
  control.holdNext = undefined
  await store(larger)
  t.not(received[5]!.memory, received[4]!.memory, 'a buffer whose write is still in flight is not lent to another body')
  endWrite()
  await inFlight
  policy.buffers.endLoan(elsewhere)
})

/** Whether every loan has ended: then a buffer given back is let go at once, not lent again. */
function allLoansEnded(buffers: BodyBuffers): boolean {
  const probe = buffers.lend(1)
  buffers.endLoan(probe)
  const next = buffers.lend(1)
  buffers.endLoan(next)
  return next !== probe
}

t.test('every way an upload ends, ends its loans: an idle service keeps no buffer', async (t) => {
  const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="3"></svg>')
  const bigger = pngOfSize(6 * MiB, 3)
  const inPieces = (image: Buffer) =>
    Array.from({ length: Math.ceil(image.length / 50_000) }, (_, index) => image.subarray(index * 50_000, (index + 1) * 50_000))
  const cases: [string, (policy: UploadPolicy) => Promise<unknown>, Partial<UploadPolicy>?][] = [
    ['stored whole', (policy) => storeUpload(whole(pngOfSize(300_000)), policy, new AbortController().signal)],
    ['an SVG', (policy) => storeUpload(whole(svg), policy, new AbortController().signal)],
    ['a GIF', (policy) => storeUpload(whole(gif()), policy, new AbortController().signal)],
    ['checked, not stored (a retry)', (policy) => checkUpload(whole(pngOfSize(300_000)), policy, new AbortController().signal)],
    ['streamed with its length (over 5 MiB)', (policy) => storeUpload(whole(bigger), policy, new AbortController().signal)],
    ['spooled (unknown length)', (policy) => storeUpload(sourceOf([bigger]), policy, new AbortController().signal)],
    [
      'grown as it came (unknown length, a driver that takes streams)',
      (policy) => storeUpload(sourceOf(inPieces(pngOfSize(400_000))), policy, new AbortController().signal),
      { driver: { prefersKnownLength: false, put: async () => {} } },
    ],
    ['not an image', (policy) => storeUpload(whole(Buffer.from('just text')), policy, new AbortController().signal)],
    ['too many pixels', (policy) => storeUpload(whole(pngOfSize(300_000)), policy, new AbortController().signal), { maxPixels: 1 }],
    ['over the size limit', (policy) => storeUpload(sourceOf([bigger]), policy, new AbortController().signal), { maxBytes: MiB }],
    [
      'aborted in the middle of the body',
      (policy) => {
        const aborted = new AbortController()
        const body = (async function* () {
          yield pngOfSize(300_000).subarray(0, 100_000)
          aborted.abort(new Error('client gone'))
          await new Promise(() => {}) // the rest never comes
        })()
        return storeUpload({ ...whole(pngOfSize(300_000)), body }, policy, aborted.signal)
      },
    ],
  ]
  for (const [name, run, overrides] of cases) {
    const { policy } = recordingPolicy(overrides)
    await run(policy).catch(() => {}) // stored or refused: either way, no loan may stay out
    t.ok(allLoansEnded(policy.buffers), `${name}: no loan left out`)
  }
  const { policy, control } = recordingPolicy()
  control.failNext = true
  await t.rejects(storeUpload(whole(pngOfSize(300_000)), policy, new AbortController().signal), /the write failed/)
  t.ok(allLoansEnded(policy.buffers), 'a failed write: no loan left out')
})

/** Counts the buffers it lends a second time. */
class WatchedBuffers extends BodyBuffers {
  private readonly seen = new WeakSet<Buffer>()
  lentAgain = 0
  override lend(bytes: number): Buffer {
    const buffer = super.lend(bytes)
    if (this.seen.has(buffer)) this.lentAgain++
    this.seen.add(buffer)
    return buffer
  }
}

t.test('uploads of many sizes at once, in buffers lent again, are each stored byte-exact on S3', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const bodyBuffers = new WatchedBuffers()
  const { app } = await buildTestApp(t, r2Env(s3.endpoint), { bodyBuffers })
  // Six senders, each sending the next image once its last is stored, from 600 KB down to 310 KB: from the
  // seventh on, a body can have the buffer of one stored just before it, while five others are in flight.
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
  t.ok(bodyBuffers.lentAgain >= 12, `${bodyBuffers.lentAgain} of 30 bodies were held in a buffer lent before`)
  const expected = images.map(sha256)
  t.same(
    stored.map((upload) => upload.sha256),
    expected,
    'each answer names the SHA-256 of its own bytes',
  )
  t.same(await Promise.all(stored.map((upload) => s3.sha256Of(upload.key))), expected, 'and S3 holds exactly those bytes')
})
