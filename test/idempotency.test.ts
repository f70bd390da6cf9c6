import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { ApiError } from '../src/errors.js'
import { FsDriver } from '../src/storage/fs.js'
import { IDEMPOTENCY_WINDOW_MS, IdempotencyRecords } from '../src/upload/idempotency.js'
import { RECORDS_PREFIX } from '../src/upload/keys.js'
import type { StoredUpload } from '../src/upload/pipeline.js'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { png, pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'

const MiB = 1024 * 1024
const BOT_TOKEN = 'b'.repeat(40)
const OPS_TOKEN = 'o'.repeat(40)

function rawUpload(
  app: FastifyInstance,
  body: Buffer | Readable,
  headers: Record<string, string> = {},
  query = 'filename=hero.png&context=portraits',
) {
  return app.inject({ method: 'POST', url: `/v1/images?${query}`, headers: { 'content-type': 'image/png', ...headers }, payload: body })
}

const imageKeys = (keys: string[]) => keys.filter((key) => !key.startsWith(RECORDS_PREFIX))

t.test(
  'local disk: a retry with the same Idempotency-Key gets the first 201 body and stores nothing new, also after a restart',
  async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'idempotency-'))
    t.teardown(() => rm(dataDir, { recursive: true, force: true }))
    const image = png(12, 9)

    const { app: first } = await buildTestApp(t, { DATA_DIR: dataDir })
    const original = await rawUpload(first, image, { 'idempotency-key': 'portrait-7f3a' })
    t.equal(original.statusCode, 201)
    t.notOk(original.headers['idempotent-replayed'], 'the first answer is no replay')
    const retry = await rawUpload(first, image, { 'idempotency-key': 'portrait-7f3a' })
    t.equal(retry.statusCode, 201, 'the retry is answered 201')
    t.same(retry.json(), original.json(), 'with the first upload’s body, key included')
    t.equal(retry.headers['idempotent-replayed'], 'true', 'and says it is a replay')
    t.equal(retry.headers.location, original.headers.location)
    await first.close()

    // A new process on the same data directory: the record is in storage, not in memory.
    const { app: restarted } = await buildTestApp(t, { DATA_DIR: dataDir })
    const afterRestart = await rawUpload(restarted, image, { 'idempotency-key': 'portrait-7f3a' })
    t.equal(afterRestart.statusCode, 201)
    t.same(afterRestart.json(), original.json(), 'after a restart the retry still gets the first body')
    const other = await rawUpload(restarted, image, { 'idempotency-key': 'portrait-other' })
    t.not(other.json().key, original.json().key, 'another Idempotency-Key is another upload')
    const images = imageKeys(await storedFiles(dataDir))
    t.same(images.sort(), [original.json().key, other.json().key].sort(), 'two images stored in all: the retries stored nothing')

    const recordKey = (await storedFiles(dataDir)).find((key) => key.startsWith(RECORDS_PREFIX))!
    t.ok(recordKey, 'the record is an object in storage')
    for (const url of [`/v1/images/${recordKey}`, `/files/${recordKey}`]) {
      const response = await restarted.inject({ method: 'GET', url })
      t.equal(response.statusCode, 404, `${url.startsWith('/files') ? '/files' : '/v1/images'} does not serve the service’s own records`)
    }
  },
)

t.test('the same Idempotency-Key with a different upload is 409 idempotency_conflict, and stores nothing', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const key = { 'idempotency-key': 'f0d2c3e4-5b6a-4c7d-8e9f-001122334455' }
  const original = await rawUpload(app, png(12, 9), { ...key, 'x-meta-character-name': 'Thorgar' })
  t.equal(original.statusCode, 201)
  const before = await storedFiles(dataDir)

  const conflicts = {
    'other bytes': rawUpload(app, png(13, 9), { ...key, 'x-meta-character-name': 'Thorgar' }),
    'another context': rawUpload(app, png(12, 9), { ...key, 'x-meta-character-name': 'Thorgar' }, 'filename=hero.png&context=maps'),
    'another filename': rawUpload(
      app,
      png(12, 9),
      { ...key, 'x-meta-character-name': 'Thorgar' },
      'filename=villain.png&context=portraits',
    ),
    'other metadata': rawUpload(app, png(12, 9), { ...key, 'x-meta-character-name': 'Brunhild' }),
  }
  for (const [what, pending] of Object.entries(conflicts)) {
    const response = await pending
    t.equal(response.statusCode, 409, `${what}: 409`)
    t.match(response.headers['content-type'], /^application\/problem\+json/)
    t.equal(response.json().code, 'idempotency_conflict', `${what}: idempotency_conflict`)
  }
  const restamped = await rawUpload(app, png(12, 9), {
    ...key,
    'x-meta-character-name': 'Thorgar',
    'x-meta-uploaded-at': '2026-11-28T10:00:00Z',
  })
  t.equal(restamped.statusCode, 201, 'a retry that only stamps uploaded_at anew is the same upload')
  t.same(restamped.json(), original.json())
  t.same(await storedFiles(dataDir), before, 'nothing new was stored')
})

t.test('Idempotency-Key is scoped to the API key, works for multipart and streamed sizes, and a malformed one is refused', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { API_KEYS: `bot:${BOT_TOKEN},ops:${OPS_TOKEN}` })
  const image = pngOfSize(6 * MiB, 3) // over the single-request size: the upload streams, and so does the check of a retry
  const send = (token: string) => {
    const form = multipartBody([
      { name: 'context', value: 'portraits' },
      { name: 'character_name', value: 'Thorgar Ø' },
      { name: 'file', filename: 'big.png', contentType: 'image/png', data: image },
    ])
    return app.inject({
      method: 'POST',
      url: '/v1/images',
      headers: { ...form.headers, authorization: `Bearer ${token}`, 'idempotency-key': 'same-key' },
      payload: form.payload,
    })
  }
  const bot = await send(BOT_TOKEN)
  t.equal(bot.statusCode, 201)
  t.equal(bot.json().sha256, sha256(image))
  const botAgain = await send(BOT_TOKEN)
  t.same(botAgain.json(), bot.json(), 'the same API key replays its first answer (multipart, 6 MiB)')
  const ops = await send(OPS_TOKEN)
  t.equal(ops.statusCode, 201)
  t.not(ops.json().key, bot.json().key, 'another API key with the same Idempotency-Key is its own upload')
  t.equal(imageKeys(await storedFiles(dataDir)).length, 2, 'two images stored')

  for (const malformed of ['', 'has space', 'x'.repeat(256), 'ümlaut']) {
    const response = await rawUpload(app, png(), { authorization: `Bearer ${BOT_TOKEN}`, 'idempotency-key': malformed })
    t.equal(response.statusCode, 400, `Idempotency-Key ${JSON.stringify(malformed.slice(0, 20))} is refused`)
    t.equal(response.json().code, 'invalid_request')
  }
})

t.test('two requests with one key racing: both get the same answer and one image is stored', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const image = png(20, 20)
  // Bodies that arrive late, so both requests have looked for a record before either has stored anything.
  const slowBody = () =>
    Readable.from(
      (async function* () {
        await sleep(100)
        yield image
      })(),
    )
  const [a, b] = await Promise.all([
    rawUpload(app, slowBody(), { 'idempotency-key': 'race' }),
    rawUpload(app, slowBody(), { 'idempotency-key': 'race' }),
  ])
  t.equal(a.statusCode, 201)
  t.equal(b.statusCode, 201)
  t.same(a.json(), b.json(), 'both answers name the same stored image')
  t.equal([a, b].filter((response) => response.headers['idempotent-replayed'] === 'true').length, 1, 'one of them is the replay')
  const stored = (await app.metrics.uploads.get()).values[0]?.value
  t.equal(stored, 2, 'both stored an image (the race really happened)')
  t.same(imageKeys(await storedFiles(dataDir)), [a.json().key], 'the loser withdrew its copy')
})

t.test('records last 24 hours; an expired one is replaced', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'records-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const driver = await new FsDriver(dataDir).init()
  let now = Date.parse('2026-11-28T12:00:00Z')
  const records = new IdempotencyRecords(driver, 'a secret the test chose', () => now)
  const recordKey = records.recordKey('bot', 'k1')
  const response = (key: string) => ({ key }) as StoredUpload
  const signal = new AbortController().signal

  t.equal((await records.claim(recordKey, 'fp-1', response('first'), signal)).response.key, 'first')
  now += IDEMPOTENCY_WINDOW_MS - 1
  t.equal((await records.find(recordKey))?.response.key, 'first', 'found until the window ends')
  t.equal((await records.claim(recordKey, 'fp-2', response('second'), signal)).response.key, 'first', 'a live record is never replaced')
  now += 1
  t.equal(await records.find(recordKey), undefined, 'gone once 24 hours have passed')
  t.equal((await records.claim(recordKey, 'fp-2', response('second'), signal)).response.key, 'second', 'an expired record is replaced')
  t.equal((await records.find(recordKey))?.fingerprint, 'fp-2')
  t.not(records.recordKey('ops', 'k1').name, recordKey.name, 'another API key names another record')
})

/** Local disk whose reads take a while (as a backend's round trip does), and count how many run at once; some fail. */
class SlowReads extends FsDriver {
  inFlight = 0
  mostInFlight = 0
  readonly failing = new Set<string>()

  override async read(key: string): Promise<Buffer | undefined> {
    this.inFlight++
    this.mostInFlight = Math.max(this.mostInFlight, this.inFlight)
    try {
      await sleep(20)
      if (this.failing.has(key)) throw new ApiError('storage_unavailable', 'The backend did not answer.')
      return await super.read(key)
    } finally {
      this.inFlight--
    }
  }
}

t.test('a lookup reads both names at once: a first upload waits for one round trip, not two', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'lookups-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const driver = await new SlowReads(dataDir).init()
  const records = new IdempotencyRecords(driver, 'a secret the test chose')
  const recordKey = records.recordKey('bot', 'k1')

  t.equal(await records.find(recordKey), undefined, 'no record under either name')
  t.equal(driver.mostInFlight, 2, 'both names were read at once')

  await records.claim(recordKey, 'fp-1', { key: 'first' } as StoredUpload, new AbortController().signal)
  driver.failing.add(recordKey.legacy)
  t.equal((await records.find(recordKey))?.response.key, 'first', 'found under its name, whatever the old name gave')
  driver.failing.add(recordKey.name)
  await t.rejects(records.find(recordKey), { code: 'storage_unavailable' }, 'a failed read of the name is not taken for no record')
  driver.failing.delete(recordKey.name)
  await driver.delete(recordKey.name)
  await t.rejects(records.find(recordKey), { code: 'storage_unavailable' }, 'nor one of the old name when the name holds none')
})

t.test('R2: the record lives in the bucket, so a retry is replayed by another instance and after a restart', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const image = pngOfSize(300 * 1024, 5)
  const { app: instanceA } = await buildTestApp(t, r2Env(s3.endpoint))
  const { app: instanceB } = await buildTestApp(t, r2Env(s3.endpoint))

  const original = await rawUpload(instanceA, image, { 'idempotency-key': 'bot-msg-123' })
  t.equal(original.statusCode, 201)
  t.equal(await s3.sha256Of(original.json().key), sha256(image), 'the object read back is byte-exact')
  const onB = await rawUpload(instanceB, image, { 'idempotency-key': 'bot-msg-123' })
  t.same(onB.json(), original.json(), 'another instance replays the first body')
  await instanceA.close()
  const { app: restarted } = await buildTestApp(t, r2Env(s3.endpoint))
  const afterRestart = await rawUpload(restarted, image, { 'idempotency-key': 'bot-msg-123' })
  t.same(afterRestart.json(), original.json(), 'a restarted instance replays the first body')
  const conflict = await rawUpload(restarted, pngOfSize(300 * 1024, 6), { 'idempotency-key': 'bot-msg-123' })
  t.equal(conflict.statusCode, 409)

  const keys = await s3.keys()
  t.same(await s3.imageKeys(), [original.json().key], 'one image in the bucket')
  t.equal(keys.filter((key) => key.startsWith(RECORDS_PREFIX)).length, 1, 'and one record beside it')
})

t.test('R2: 16 uploads with Idempotency-Keys at once claim their records without a listener warning', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  // Every process warning, MaxListenersExceededWarning among them, is printed on stderr outside the log.
  const warnings: Error[] = []
  const onWarning = (warning: Error) => warnings.push(warning)
  process.on('warning', onWarning)
  t.teardown(() => {
    process.off('warning', onWarning)
  })
  const images = Array.from({ length: 16 }, (_, index) => pngOfSize(64 * 1024, 40 + index))
  const answers = await Promise.all(images.map((image, index) => rawUpload(app, image, { 'idempotency-key': `bot-burst-${index}` })))
  t.same(
    answers.map((answer) => answer.statusCode),
    images.map(() => 201),
    'all 201',
  )
  for (const [index, answer] of answers.entries())
    t.equal(await s3.sha256Of(answer.json().key), sha256(images[index]!), `upload ${index} byte-exact`)
  t.equal((await s3.keys()).filter((key) => key.startsWith(RECORDS_PREFIX)).length, 16, 'sixteen records')
  // Warnings are emitted on the next tick.
  await sleep(10)
  t.same(
    warnings.map((warning) => `${warning.name}: ${warning.message}`),
    [],
    'no process warning',
  )
})

/** Local disk whose record writes fail: after landing (the answer lost), before, or refused. What no local backend does on demand. */
class RecordWritesFail extends FsDriver {
  mode: 'landed' | 'lost' | 'refused' | 'off' = 'off'

  override async put(...args: Parameters<FsDriver['put']>): Promise<void> {
    const [key] = args
    if (!key.startsWith(RECORDS_PREFIX) || this.mode === 'off') return super.put(...args)
    if (this.mode === 'landed') await super.put(...args)
    if (this.mode === 'refused') throw new ApiError('storage_access_denied', 'The backend refused the record write.')
    throw new ApiError('storage_unavailable', 'The answer to the record write was lost.')
  }
}

t.test('a record write that fails: the bucket decides, and a record never names a withdrawn image', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'flaky-records-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const driver = await new RecordWritesFail(dataDir).init()
  const { app } = await buildTestApp(t, {}, { driver })

  driver.mode = 'landed'
  const landed = await rawUpload(app, png(7, 7), { 'idempotency-key': 'landed' })
  t.equal(landed.statusCode, 201, 'the record landed though its answer was lost: the upload stands')
  driver.mode = 'off'
  t.same((await rawUpload(app, png(7, 7), { 'idempotency-key': 'landed' })).json(), landed.json(), 'and its retry is replayed')

  driver.mode = 'lost'
  const lost = await rawUpload(app, png(8, 8), { 'idempotency-key': 'lost' })
  t.equal(lost.statusCode, 503, 'no record found: the upload fails, retryable')
  t.equal(imageKeys(await storedFiles(dataDir)).length, 2, 'its image stays (the record could still land later): an orphan at worst')

  driver.mode = 'refused'
  const refused = await rawUpload(app, png(9, 9), { 'idempotency-key': 'refused' })
  t.equal(refused.statusCode, 502, 'the backend refused the record: the upload fails')
  t.equal(imageKeys(await storedFiles(dataDir)).length, 2, 'and its image is withdrawn, since nothing can land')
  driver.mode = 'off'
  const retried = await rawUpload(app, png(9, 9), { 'idempotency-key': 'refused' })
  t.equal(retried.statusCode, 201, 'the retry stores it')
  t.notOk(retried.headers['idempotent-replayed'])
  t.equal(imageKeys(await storedFiles(dataDir)).length, 3, 'once')
})

/** How records were named before: a plain SHA-256 of what a client knows, so anyone could name them. */
const publicName = (keyName: string, idempotencyKey: string) =>
  `${RECORDS_PREFIX}${createHash('sha256').update(`${keyName}\n${idempotencyKey}`).digest('hex')}.json`
const SECRET_A = 'a'.repeat(32)
const SECRET_B = 'b'.repeat(32)

t.test('record names are keyed with the server secret: no one can compute them from the key name and the Idempotency-Key', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'keyed-records-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { DATA_DIR: dataDir, API_KEYS: `bot:${BOT_TOKEN}` }
  const bot = { authorization: `Bearer ${BOT_TOKEN}`, 'idempotency-key': 'discord-message-1180000000000000001' }
  const image = png(7, 7)
  const records = async () => (await storedFiles(dataDir)).filter((key) => key.startsWith(RECORDS_PREFIX))

  const { app: first } = await buildTestApp(t, { ...env, IDEMPOTENCY_SECRET: SECRET_A })
  const original = await rawUpload(first, image, bot)
  t.equal(original.statusCode, 201)
  const [written] = await records()
  t.comment(`record ${written}; SHA-256 of the public data: ${publicName('bot', bot['idempotency-key'])}`)
  t.not(written, publicName('bot', bot['idempotency-key']), 'the name is not a hash of the public data')

  const { app: sameSecret } = await buildTestApp(t, { ...env, IDEMPOTENCY_SECRET: SECRET_A })
  const replayed = await rawUpload(sameSecret, image, bot)
  t.equal(replayed.headers['idempotent-replayed'], 'true', 'an instance with the same secret finds the record')
  t.same(replayed.json(), original.json())

  const { app: otherSecret } = await buildTestApp(t, { ...env, IDEMPOTENCY_SECRET: SECRET_B })
  const elsewhere = await rawUpload(otherSecret, image, bot)
  t.notOk(elsewhere.headers['idempotent-replayed'], 'with another secret the name is another one')
  t.equal((await records()).length, 2, 'two records, under two names')
})

t.test(
  'R2 without IDEMPOTENCY_SECRET: every instance derives the same key from the R2 secret, and the names are still not public',
  async (t) => {
    const s3 = await startS3()
    t.teardown(() => s3.stop())
    const image = pngOfSize(2048, 11)
    const { app: instanceA } = await buildTestApp(t, r2Env(s3.endpoint))
    const { app: instanceB } = await buildTestApp(t, r2Env(s3.endpoint))
    const original = await rawUpload(instanceA, image, { 'idempotency-key': 'discord-message-77' })
    t.equal(original.statusCode, 201)
    t.equal(await s3.sha256Of(original.json().key), sha256(image), 'the image read back is byte-exact')
    t.equal(
      (await rawUpload(instanceB, image, { 'idempotency-key': 'discord-message-77' })).headers['idempotent-replayed'],
      'true',
      'another instance finds the record',
    )
    const names = await s3.keys(RECORDS_PREFIX)
    t.equal(names.length, 1)
    t.not(names[0], publicName('anonymous', 'discord-message-77'), 'its name is not a hash of the public data')
  },
)

t.test('a record written before names were keyed is still replayed within its 24 h, and not after', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'legacy-records-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const { app } = await buildTestApp(t, { DATA_DIR: dataDir, IDEMPOTENCY_SECRET: SECRET_A })
  const driver = await new FsDriver(dataDir).init()
  const image = png(9, 4)
  /** Moves the record an upload just wrote to the name the previous release gave it, as if that release wrote it. */
  const asLegacy = async (idempotencyKey: string, createdAt?: string) => {
    const [name] = (await storedFiles(dataDir)).filter((key) => key.startsWith(RECORDS_PREFIX))
    const record = JSON.parse((await driver.read(name!))!.toString('utf8')) as { created_at: string }
    if (createdAt) record.created_at = createdAt
    const body = Buffer.from(JSON.stringify(record))
    await driver.put(
      publicName('anonymous', idempotencyKey),
      body,
      { contentType: 'application/json', cacheControl: 'no-store', metadata: {}, shared: true },
      new AbortController().signal,
    )
    await driver.delete(name!)
  }

  const original = await rawUpload(app, image, { 'idempotency-key': 'before-the-upgrade' })
  await asLegacy('before-the-upgrade')
  const retry = await rawUpload(app, image, { 'idempotency-key': 'before-the-upgrade' })
  t.equal(retry.headers['idempotent-replayed'], 'true', 'a retry across the upgrade is replayed from the old record')
  t.same(retry.json(), original.json())
  t.equal(
    (await rawUpload(app, png(9, 5), { 'idempotency-key': 'before-the-upgrade' })).statusCode,
    409,
    'and a different upload with its key conflicts',
  )
  await driver.delete(publicName('anonymous', 'before-the-upgrade'))

  await rawUpload(app, image, { 'idempotency-key': 'long-before' })
  await asLegacy('long-before', new Date(Date.now() - IDEMPOTENCY_WINDOW_MS - 1000).toISOString())
  const late = await rawUpload(app, image, { 'idempotency-key': 'long-before' })
  t.equal(late.statusCode, 201)
  t.notOk(late.headers['idempotent-replayed'], 'an old record past its 24 h is not')
})
