import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t from 'tap'
import { ApiError } from '../src/errors.js'
import { buildTestApp } from './helpers/app.js'
import { runCli, untilOrExit } from './helpers/cli.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3, TEST_BUCKET } from './helpers/s3.js'

// `npm run reconcile` against the service on s3rver with over a thousand objects. s3rver runs in a process
// of its own: in this one it answers every truncated ListObjectsV2 with a 500 (see helpers/s3rver-main.ts).

t.setTimeout(240_000)

const TOKEN = 'reconcile-token-'.padEnd(40, 'r')
const PUBLIC_URL = 'https://images.example.test'
const DAY_MS = 86_400_000

/** Runs the CLI to its end; `whenRunning` may act on the process meanwhile (interrupt it). */
const reconcile = (args: string[], whenRunning?: Parameters<typeof runCli>[3]) => runCli('reconcile', TOKEN, args, whenRunning)

/** The orphans a run printed (one `key<TAB>size<TAB>last_modified` line each). */
const printedOrphans = (stdout: string) =>
  stdout
    .split('\n')
    .filter((line) => line.includes('\t'))
    .map((line) => line.split('\t')[0]!)

const s3 = await startS3({ ownProcess: true })
t.teardown(() => s3.stop())
/** Keys whose DELETE the service answers with 502 storage_error, as a failing backend would. */
const failingDeletes = new Set<string>()
const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `ops:${TOKEN}`, RATE_LIMIT_PER_MINUTE: '1000000' })
app.addHook('onRequest', async (request) => {
  const key = request.url.replace(/^\/v1\/images\//, '')
  if (request.method === 'DELETE' && failingDeletes.has(key)) throw new ApiError('storage_error', 'The storage backend failed (test).')
})
const { host, port } = await listen(app)
const serviceUrl = `http://${host}:${port}`

// 1,040 objects seeded straight into the bucket (as an older service would have stored them), three days
// old except 20; four uploads through the service (new); three old objects in another context.
const SEEDED = Array.from({ length: 1040 }, (_, i) => `portraits/2025/01/${String(i).padStart(20, 'p')}_seed.png`)
const sizeOf = (index: number) => 100 + (index % 50)
const YOUNG_SEEDED = new Set(SEEDED.slice(1000, 1020))
const OTHER_CONTEXT = ['general/2025/01/aaaaaaaaaaaaaaaaaaaa_a.png', 'general/2025/01/bbbbbbbbbbbbbbbbbbbb_b.png', 'general/2025/01/c.png']
const threeDaysAgo = new Date(Date.now() - 3 * DAY_MS)
const queue = [...SEEDED.map((key, index) => ({ key, size: sizeOf(index) })), ...OTHER_CONTEXT.map((key) => ({ key, size: 10 }))]
await Promise.all(
  Array.from({ length: 16 }, async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const body = Buffer.alloc(next.size, 7)
      if (YOUNG_SEEDED.has(next.key)) await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: next.key, Body: body }))
      else await s3.putStoredAt(next.key, body, threeDaysAgo)
    }
  }),
)
const uploads: { key: string; url: string; sha256: string }[] = []
for (const seed of [1, 2, 3, 4]) {
  const data = pngOfSize(2000 + seed, seed)
  const answer = await app.inject({
    method: 'POST',
    url: '/v1/images?context=portraits&filename=p.png',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'image/png' },
    payload: data,
  })
  if (answer.statusCode !== 201) throw new Error(answer.body)
  uploads.push({ ...answer.json(), sha256: sha256(data) })
}

// The bot references 600 seeded objects by key, 100 by URL, and one upload by URL (with a query).
const REFERENCED = [...SEEDED.slice(0, 700), uploads[0]!.key]
const keepText = [
  '# exported from the bot',
  ...SEEDED.slice(0, 600),
  '',
  ...SEEDED.slice(600, 700).map((key) => `${PUBLIC_URL}/${key}`),
  `  ${uploads[0]!.url}?width=64  `,
].join('\n')
const OLD_ORPHANS = SEEDED.filter((key, index) => index >= 700 && !YOUNG_SEEDED.has(key)).sort()
const YOUNG_ORPHANS = [...YOUNG_SEEDED, ...uploads.slice(1).map((upload) => upload.key)]
const dir = t.testdir()
const keepFile = path.join(dir, 'live.txt')
await writeFile(keepFile, keepText)
const baseArgs = ['--keep', keepFile, '--prefix', 'portraits/', '--url', serviceUrl]
const portraitKeys = async () => (await s3.keys('portraits/')).sort()
const allKeysAtStart = (await s3.keys()).sort()

t.test('the setup: over a thousand objects, the uploads read back byte-exact', async (t) => {
  t.equal(allKeysAtStart.length, SEEDED.length + OTHER_CONTEXT.length + uploads.length)
  t.ok(SEEDED.length + uploads.length > 1000, 'more than one page of the listing under the prefix')
  for (const upload of uploads) t.equal(await s3.sha256Of(upload.key), upload.sha256)
  t.equal(OLD_ORPHANS.length, 320)
})

t.test('usage errors and unusable keep files: exit 2, nothing deleted', async (t) => {
  const write = async (name: string, text: string) => {
    const file = path.join(dir, name)
    await writeFile(file, text)
    return file
  }
  const cases: [string, string[], RegExp][] = [
    ['no --keep', ['--prefix', 'portraits/', '--url', serviceUrl, '--delete'], /--keep is required/],
    ['no --prefix', ['--keep', keepFile, '--url', serviceUrl, '--delete'], /--prefix is required/],
    ['a bad --older-than', [...baseArgs, '--older-than', '5', '--delete'], /--older-than must be/],
    ['an unknown option', [...baseArgs, '--force'], /Unknown option/],
    [
      'a missing keep file',
      ['--keep', path.join(dir, 'missing.txt'), '--prefix', 'portraits/', '--url', serviceUrl, '--delete'],
      /cannot be read/,
    ],
    [
      'an empty keep file',
      ['--keep', await write('empty.txt', '# nothing\n\n'), '--prefix', 'portraits/', '--url', serviceUrl, '--delete'],
      /names no key/,
    ],
    [
      'a line that is neither key nor URL',
      ['--keep', await write('bad.txt', `${SEEDED[0]}\nnot a key!\n`), '--prefix', 'portraits/', '--url', serviceUrl, '--delete'],
      /line 2: neither a key nor an http\(s\) URL/,
    ],
    [
      'URLs of another host (a CDN the service does not know)',
      [
        '--keep',
        await write('cdn.txt', `${SEEDED[0]}\nhttps://cdn.example.test/${SEEDED[1]}\n`),
        '--prefix',
        'portraits/',
        '--url',
        serviceUrl,
        '--delete',
        '--older-than',
        '0s',
      ],
      /1 URL\(s\) are not under the service's public URL https:\/\/images\.example\.test\/[\s\S]*line 2: https:\/\/cdn\.example\.test/,
    ],
    ['a prefix the service refuses', ['--keep', keepFile, '--prefix', 'portraits//', '--url', serviceUrl, '--delete'], /invalid_key/],
  ]
  for (const [what, args, message] of cases) {
    const { code, stderr } = await reconcile(args)
    t.equal(code, 2, `${what}: exit 2`)
    t.match(stderr, message, what)
  }
  t.same((await s3.keys()).sort(), allKeysAtStart, 'nothing was deleted')
})

t.test('a dry run prints each old orphan and the totals, and deletes nothing', async (t) => {
  const { code, stdout } = await reconcile(baseArgs)
  t.equal(code, 0)
  t.same(printedOrphans(stdout).sort(), OLD_ORPHANS, 'exactly the unreferenced objects older than 24h')
  const orphans = new Set(OLD_ORPHANS)
  const bytes = SEEDED.reduce((sum, key, index) => sum + (orphans.has(key) ? sizeOf(index) : 0), 0)
  t.match(stdout, `Orphans: 320, ${bytes} bytes`)
  t.match(
    stdout,
    `of ${SEEDED.length + uploads.length} objects under "portraits/": ${REFERENCED.length} referenced, ${YOUNG_ORPHANS.length} unreferenced but younger than 24h (kept)`,
  )
  t.match(stdout, /Dry run: nothing was deleted/)
  t.same((await s3.keys()).sort(), allKeysAtStart, 'the bucket is as it was')
})

t.test('--delete: stopped midway, then failing deletes (exit 1), then a rerun that finishes (exit 0)', async (t) => {
  const interrupted = await reconcile([...baseArgs, '--delete', '--rate', '40/s'], async (child, stderr) => {
    await untilOrExit(child, '"Deleting 320 orphans"', () => stderr().includes('Deleting 320 orphans'), 60_000)
    await sleep(1500)
    child.kill('SIGINT')
  })
  t.equal(interrupted.code, 130, 'stopped by SIGINT: exit 130')
  const afterStop = new Set(await portraitKeys())
  const deletedFirst = OLD_ORPHANS.filter((key) => !afterStop.has(key)).length
  t.ok(deletedFirst > 0 && deletedFirst < OLD_ORPHANS.length, `some orphans were deleted before the stop (${deletedFirst})`)
  t.match(interrupted.stdout, /Run the same command again/)

  const failing = OLD_ORPHANS.filter((key) => afterStop.has(key)).slice(-2)
  for (const key of failing) failingDeletes.add(key)
  const partly = await reconcile([...baseArgs, '--delete', '--rate', '1000/s', '--concurrency', '8'])
  t.equal(partly.code, 1, 'some deletes failed: exit 1')
  t.match(partly.stdout, `Deleted ${OLD_ORPHANS.length - deletedFirst - 2} of ${OLD_ORPHANS.length - deletedFirst} orphans`)
  for (const key of failing) t.match(partly.stdout, `  ${key}: 502 storage_error`, `the failure of ${key} is listed`)
  t.match(partly.stderr, /progress: \d+\/\d+ \(100 %\), deleted \d+, failed 2/, 'a progress line (plain, not on a terminal)')
  t.same(
    (await portraitKeys()).filter((key) => OLD_ORPHANS.includes(key)),
    failing.sort(),
    'only the failed orphans are left',
  )

  failingDeletes.clear()
  const rerun = await reconcile([...baseArgs, '--delete', '--rate', '1000/s'])
  t.equal(rerun.code, 0, 'the rerun deletes what was left: exit 0')
  t.match(rerun.stdout, 'Deleted 2 of 2 orphans')
  const remaining = await portraitKeys()
  t.same(remaining, [...REFERENCED, ...YOUNG_ORPHANS].sort(), 'left: what is referenced, and the orphans younger than 24h')

  // Read back through the service: a referenced upload is intact, an orphan is gone.
  const kept = await app.inject({ url: `/v1/images/${uploads[0]!.key}`, headers: { authorization: `Bearer ${TOKEN}` } })
  t.equal(kept.statusCode, 200)
  t.equal(await s3.sha256Of(uploads[0]!.key), uploads[0]!.sha256, 'the referenced upload is byte-exact')
  const gone = await app.inject({ url: `/v1/images/${OLD_ORPHANS[0]}`, headers: { authorization: `Bearer ${TOKEN}` } })
  t.equal(gone.statusCode, 404)
  const listed = await app.inject({ url: '/v1/images?prefix=general/', headers: { authorization: `Bearer ${TOKEN}` } })
  t.same(
    listed.json().items.map((item: { key: string }) => item.key),
    [...OTHER_CONTEXT].sort(),
    'objects outside the prefix are untouched',
  )

  const again = await reconcile([...baseArgs, '--delete'])
  t.equal(again.code, 0)
  t.match(again.stdout, 'Orphans: 0, 0 bytes', 'a run with nothing left to do deletes nothing')
})

t.test('--older-than 0s lets the young orphans go too', async (t) => {
  const { code, stdout } = await reconcile([...baseArgs, '--delete', '--older-than', '0s', '--rate', '1000/s'])
  t.equal(code, 0)
  t.same(printedOrphans(stdout).sort(), [...YOUNG_ORPHANS].sort())
  t.same(await portraitKeys(), [...REFERENCED].sort(), 'only the referenced objects are left')
  t.same((await s3.keys('general/')).sort(), [...OTHER_CONTEXT].sort())
})
