import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { ImageServiceClient } from '../src/client.js'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { havePythonAiohttp, PYTHON } from './helpers/system-tools.js'

// The bot's burst: 40 portraits at once against MAX_CONCURRENT_UPLOADS=4, from each client with its
// default retries, to the service storing on s3rver. Every portrait must be stored exactly once and none
// may fall back: the service queues what it can, the clients retry the rest after Retry-After, each call
// with one Idempotency-Key for all its tries.

const PORTRAITS = 40
const TOKEN = 'burst-test-token-0123456789abcdef012345'
const FALLBACK = 'https://cdn.example.test/default.png'
const CLIENT_DIR = fileURLToPath(new URL('../clients/python', import.meta.url))
const CHECK = fileURLToPath(new URL('./python/client_check.py', import.meta.url))

const s3 = await startS3()
t.teardown(() => s3.stop())

/** Small portraits (the queue and the retries are under test, not the bytes), each different. */
const portraits = Array.from({ length: PORTRAITS }, (_, n) => pngOfSize(20_000, 500 + n))

/** Each try of an upload, as the service answered it. */
interface Try {
  idempotencyKey: string
  status: number
  code: string | undefined
}

async function startService(t: Test) {
  const { app } = await buildTestApp(t, {
    ...r2Env(s3.endpoint),
    API_KEYS: `bot:${TOKEN}`,
    MAX_CONCURRENT_UPLOADS: '4',
    DEFAULT_PORTRAIT_URL: FALLBACK,
    // The budget per key is not under test here: 40 uploads and their retries may exceed the default 120.
    RATE_LIMIT_PER_MINUTE: '10000',
  })
  const tries: Try[] = []
  app.addHook('onResponse', async (request, reply) => {
    if (request.method !== 'POST') return
    tries.push({ idempotencyKey: String(request.headers['idempotency-key']), status: reply.statusCode, code: request.problemCode })
  })
  const { port } = await listen(app)
  return { baseUrl: `http://127.0.0.1:${port}`, tries }
}

/**
 * What every burst must show: each call stored its portrait (no fallback), the bucket holds each portrait
 * exactly once with its bytes, and each call sent one Idempotency-Key for all its tries, which ended in
 * exactly one 201 after 503 server_busy answers only.
 */
async function assertEveryPortraitStoredOnce(
  t: Test,
  calls: { url: string; key: string | undefined; sha256: string | undefined }[],
  context: string,
  tries: Try[],
) {
  t.equal(calls.length, PORTRAITS)
  t.same(
    calls.filter((call) => call.key === undefined),
    [],
    'no call fell back',
  )
  for (const [n, call] of calls.entries()) t.equal(call.sha256, sha256(portraits[n]!), `portrait ${n}: the 201 has its SHA-256`)

  const stored = await s3.keys(`${context}/`)
  t.equal(stored.length, PORTRAITS, `the bucket holds ${PORTRAITS} objects under ${context}/`)
  t.same([...stored].sort(), calls.map((call) => call.key).sort(), 'exactly the keys the calls were answered with')
  const storedHashes = await Promise.all(stored.map((key) => s3.sha256Of(key)))
  t.same(storedHashes.sort(), portraits.map((portrait) => sha256(portrait)).sort(), 'each portrait once, byte for byte')

  const byKey = new Map<string, Try[]>()
  for (const attempt of tries) byKey.set(attempt.idempotencyKey, [...(byKey.get(attempt.idempotencyKey) ?? []), attempt])
  t.equal(byKey.size, PORTRAITS, 'one Idempotency-Key per call, for all of its tries')
  for (const [key, attempts] of byKey) {
    const answers = attempts.map((attempt) => (attempt.status === 201 ? '201' : `${attempt.status} ${attempt.code}`))
    if (
      answers.filter((answer) => answer === '201').length !== 1 ||
      answers.some((answer) => answer !== '201' && answer !== '503 server_busy')
    ) {
      t.fail(`the tries with Idempotency-Key ${key}: ${answers.join(', ')}`)
    }
  }
  const refused = tries.filter((attempt) => attempt.status === 503).length
  t.ok(refused > 0, `the burst overflowed the queue: ${refused} tries were answered 503 server_busy, then retried`)
  t.comment(`${tries.length} tries for ${PORTRAITS} portraits`)
}

t.test('40 portraits at once from the TypeScript client, 4 upload slots: all stored, once each', async (t) => {
  const { baseUrl, tries } = await startService(t)
  const client = new ImageServiceClient({ baseUrl, apiKey: TOKEN, defaultFallbackUrl: FALLBACK })
  const outcomes = await Promise.all(
    portraits.map((portrait, n) => client.uploadWithFallback(portrait, `portrait-${n}.png`, { context: 'burst-ts' })),
  )
  const calls = outcomes.map((outcome) => ({ url: outcome.url, key: outcome.image?.key, sha256: outcome.image?.sha256 }))
  await assertEveryPortraitStoredOnce(t, calls, 'burst-ts', tries)
})

if (havePythonAiohttp(t)) {
  t.test("40 portraits at once from the bot's Python client, 4 upload slots: all stored, once each", async (t) => {
    const { baseUrl, tries } = await startService(t)
    const directory = await mkdtemp(path.join(tmpdir(), 'burst-'))
    t.teardown(() => rm(directory, { recursive: true, force: true }))
    await Promise.all(portraits.map((portrait, n) => writeFile(path.join(directory, `portrait-${n}.png`), portrait)))

    const { stdout } = await promisify(execFile)(PYTHON, [CHECK, 'burst', baseUrl, TOKEN, directory, String(PORTRAITS), FALLBACK], {
      env: { PATH: process.env.PATH, PYTHONPATH: CLIENT_DIR, PYTHONDONTWRITEBYTECODE: '1' },
      timeout: 90_000,
    })
    const results = JSON.parse(stdout) as {
      url: string
      fell_back: boolean
      sent_sha256: string
      image: { key: string; sha256: string } | null
    }[]
    for (const [n, result] of results.entries()) t.equal(result.sent_sha256, sha256(portraits[n]!), `Python read portrait ${n} as written`)
    const calls = results.map((result) => ({ url: result.url, key: result.image?.key, sha256: result.image?.sha256 }))
    await assertEveryPortraitStoredOnce(t, calls, 'burst-python', tries)
  })
}
