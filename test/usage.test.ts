import { stat } from 'node:fs/promises'
import path from 'node:path'
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3'
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { R2Driver } from '../src/storage/r2.js'
import { buildTestApp, gauge, storedFiles } from './helpers/app.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2DriverOf, r2Env, recordCommands, startS3, TEST_BUCKET } from './helpers/s3.js'
import { settled } from './helpers/wait.js'

const T1 = 'usage-'.padEnd(40, 'u')
const bearer = { authorization: `Bearer ${T1}` }
const LIMITS = { storage_bytes: 10e9, class_a_operations: 1e6, class_b_operations: 1e7 }

// One s3rver for the file: its bucket is shared by every test here, so each compares with a listing taken
// at the same moment as the report, not with what it uploaded alone.
const s3 = await startS3()
t.teardown(() => s3.stop())

/** The bucket as the helper's own client lists it, page by page: bytes and objects. */
async function listBucket(): Promise<{ bytes: number; objects: number }> {
  let bytes = 0
  let objects = 0
  let token: string | undefined
  do {
    const page = await s3.client.send(new ListObjectsV2Command({ Bucket: TEST_BUCKET, ContinuationToken: token }))
    for (const object of page.Contents ?? []) {
      bytes += object.Size ?? 0
      objects++
    }
    token = page.NextContinuationToken
  } while (token)
  return { bytes, objects }
}

function uploadRequest(data: Buffer, headers: Record<string, string> = {}) {
  const form = multipartBody([{ name: 'file', filename: 'p.png', contentType: 'image/png', data }])
  return { method: 'POST' as const, url: '/v1/images', payload: form.payload, headers: { ...form.headers, ...headers } }
}

const round2 = (value: number) => Math.round(value * 100) / 100
const currentMonth = () => new Date().toISOString().slice(0, 7)

t.test('GET /v1/usage after uploads matches the bucket, states the limits and percentages, and rescans only when asked', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `ops:${T1}`, USAGE_RESCAN_INTERVAL_S: '0' })
  const commands = recordCommands(r2DriverOf(app))
  const sent = () => commands.map((command) => command.name)
  const classA = () => sent().filter((name) => name === 'PutObject' || name === 'ListObjectsV2').length

  const sizes = [700, 4096, 150_000, 1_200_000]
  for (const [index, size] of sizes.entries()) {
    const image = pngOfSize(size, index + 1)
    const response = await app.inject(uploadRequest(image, bearer))
    t.equal(response.statusCode, 201, `${size} bytes stored`)
    t.equal(response.json().size, size)
    t.equal(await s3.sha256Of(response.json().key), sha256(image), `${size} bytes: byte-exact`)
  }
  t.equal(await gauge(app, 'storageBytes'), 0, 'no scan has run on its own (USAGE_SCAN_INTERVAL_S=0)')
  t.notOk(sent().includes('ListObjectsV2'), 'nor listed the bucket')

  const refused = await app.inject('/v1/usage?rescan=true')
  t.equal(refused.statusCode, 401, '/v1/usage needs the API key')

  const beforeScan = Date.now()
  const response = await app.inject({ url: '/v1/usage?rescan=true', headers: bearer })
  const afterScan = Date.now()
  const listed = await listBucket() // nothing writes between the report and this listing
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  const report = response.json()
  t.equal(report.storage_bytes, listed.bytes, `storage_bytes is the sum of the listed sizes (${listed.bytes})`)
  t.equal(report.object_count, listed.objects, `object_count is the listed count (${listed.objects})`)
  t.ok(listed.objects >= sizes.length, 'the listing holds at least these uploads')
  t.ok(listed.bytes >= sizes.reduce((sum, size) => sum + size, 0))
  t.same(report.limits, LIMITS, "the limits are R2's free tier")
  t.equal(report.month, currentMonth(), 'counted for this month (UTC)')
  const scannedAt = Date.parse(report.scanned_at)
  t.ok(scannedAt >= beforeScan - 1 && scannedAt <= afterScan + 1, `scanned_at ${report.scanned_at} is the time of this request`)

  t.same(sent(), [...sizes.map(() => 'PutObject'), 'ListObjectsV2'], 'one PutObject per upload, one ListObjectsV2 for the scan')
  t.equal(report.class_a_operations, classA(), `class_a_operations is the PutObject + ListObjectsV2 count (${classA()})`)
  t.equal(report.class_a_operations, sizes.length + 1)
  t.equal(report.class_b_operations, 0)
  t.same(
    report.percentages,
    {
      storage_bytes: round2((listed.bytes / 10e9) * 100),
      class_a_operations: round2((classA() / 1e6) * 100),
      class_b_operations: 0,
    },
    'percentages of the limits, rounded to 2 decimals',
  )
  t.equal(await gauge(app, 'storageBytes'), listed.bytes, 'the scan set r2_storage_bytes')
  t.equal(await gauge(app, 'storageObjects'), listed.objects, 'and r2_storage_objects')

  // Without rescan: the last scan, even though the bucket has changed since; operations are counted live.
  const extraImage = pngOfSize(33_333, 9)
  const extra = await app.inject(uploadRequest(extraImage, bearer))
  t.equal(extra.statusCode, 201)
  t.equal(await s3.sha256Of(extra.json().key), sha256(extraImage), 'stored byte-exact')
  const cached = (await app.inject({ url: '/v1/usage', headers: bearer })).json()
  t.equal(cached.scanned_at, report.scanned_at, 'scanned_at unchanged')
  t.equal(cached.storage_bytes, report.storage_bytes, 'storage_bytes of the last scan')
  t.equal(cached.object_count, report.object_count)
  t.equal(cached.class_a_operations, classA(), 'the new PutObject is counted at once')
  t.equal(cached.class_a_operations, sizes.length + 2)
  t.equal(sent().filter((name) => name === 'ListObjectsV2').length, 1, 'no listing without rescan')

  // rescan=false is the same as no rescan.
  const notRescanned = (await app.inject({ url: '/v1/usage?rescan=false', headers: bearer })).json()
  t.equal(notRescanned.scanned_at, report.scanned_at)

  await new Promise((resolve) => setTimeout(resolve, 5)) // scanned_at has millisecond resolution
  const rescanned = (await app.inject({ url: '/v1/usage?rescan=true', headers: bearer })).json()
  const relisted = await listBucket()
  t.equal(rescanned.storage_bytes, relisted.bytes)
  t.equal(rescanned.object_count, relisted.objects)
  t.equal(rescanned.storage_bytes - report.storage_bytes, 33_333, 'the new object is in the rescan')
  t.equal(rescanned.object_count - report.object_count, 1)
  t.ok(Date.parse(rescanned.scanned_at) > scannedAt, 'scanned_at moved on')
  t.equal(rescanned.class_a_operations, classA())
  t.equal(rescanned.class_a_operations, sizes.length + 3)

  t.equal((await app.inject({ url: '/v1/usage?rescan=maybe', headers: bearer })).statusCode, 400, 'rescan must be a boolean')
})

/** The r2 driver on s3rver, reporting a bucket far larger than a test can fill (the listing is still sent). */
class LargeBucketDriver extends R2Driver {
  override async usage() {
    const listed = await super.usage()
    return { bytes: 2_518_765_432, objects: listed.objects }
  }
}

t.test('percentages are of the free tier, rounded (not truncated) to 2 decimals', async (t) => {
  const env = r2Env(s3.endpoint)
  const storage = loadConfig({ ...env, LOG_LEVEL: 'silent' }).storage
  if (storage.driver !== 'r2') throw new Error('expected r2 settings')
  const driver = new LargeBucketDriver(storage)
  const { app } = await buildTestApp(t, env, { driver })
  // 70 Class A (ListObjectsV2) and 700 Class B (HeadBucket): 0.007 % of each limit, which rounds to 0.01.
  for (let i = 0; i < 69; i++) await driver.usage()
  for (let batch = 0; batch < 35; batch++) await Promise.all(Array.from({ length: 20 }, () => driver.checkReady()))
  const report = (await app.inject('/v1/usage?rescan=true')).json()
  t.equal(report.storage_bytes, 2_518_765_432)
  t.equal(report.class_a_operations, 70)
  t.equal(report.class_b_operations, 700)
  t.same(report.percentages, { storage_bytes: 25.19, class_a_operations: 0.01, class_b_operations: 0.01 })
  t.same(report.limits, LIMITS)
})

t.test('the periodic scan sets r2_storage_bytes and r2_storage_objects on its own', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), USAGE_SCAN_INTERVAL_S: '1' })
  const commands = recordCommands(r2DriverOf(app))
  const sent = () => commands.map((command) => command.name)
  // Something stored, so the gauges cannot be right by staying at 0.
  await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: 'periodic/first.bin', Body: Buffer.alloc(4321, 1) }))

  /** Waits up to 2.5 s for both gauges to show `expected`; returns what they showed then, and after how long. */
  const settles = async (expected: { bytes: number; objects: number }) => {
    const started = Date.now()
    const gauges = await settled(
      async () => ({ bytes: await gauge(app, 'storageBytes'), objects: await gauge(app, 'storageObjects') }),
      ({ bytes, objects }) => bytes === expected.bytes && objects === expected.objects,
      2500,
      50,
    )
    return { gauges, ms: Date.now() - started }
  }

  const first = await listBucket()
  t.ok(first.bytes > 0)
  await app.ready() // the first scan starts when the app is ready
  const firstAfter = await settles(first)
  t.same(firstAfter.gauges, first, `the first scan set the gauges to ${JSON.stringify(first)} (in ${firstAfter.ms} ms)`)

  // Then the bucket changes behind the app's back: only the next periodic scan can notice.
  await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: 'periodic/second.bin', Body: Buffer.alloc(6789, 2) }))
  const second = await listBucket()
  t.equal(second.bytes - first.bytes, 6789)
  const secondAfter = await settles(second)
  t.same(secondAfter.gauges, second, `a periodic scan set the gauges to ${JSON.stringify(second)} within 2.5 s (in ${secondAfter.ms} ms)`)
  t.ok(sent().filter((name) => name === 'ListObjectsV2').length >= 2, 'by listing the bucket again')

  const metrics = (await app.inject('/metrics')).body
  t.match(metrics, new RegExp(`^r2_storage_bytes ${second.bytes}$`, 'm'), 'exposed on /metrics')
  t.match(metrics, new RegExp(`^r2_storage_objects ${second.objects}$`, 'm'))
})

t.test('the first scan runs when the app is ready, not one interval later', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), USAGE_SCAN_INTERVAL_S: '3600' })
  const commands = recordCommands(r2DriverOf(app))
  const sent = () => commands.map((command) => command.name)
  const listed = await listBucket()
  t.ok(listed.objects > 0, 'the bucket holds objects')
  t.equal(await gauge(app, 'storageBytes'), 0, 'nothing scanned before ready')
  t.equal(await gauge(app, 'usageLastScan'), 0, 'r2_usage_last_scan_timestamp_seconds says so: 0')
  await app.ready()
  const started = Date.now()
  await settled(
    () => gauge(app, 'usageLastScan'),
    (lastScan) => lastScan !== 0,
    2500,
    20,
  )
  t.equal(await gauge(app, 'storageObjects'), listed.objects, `r2_storage_objects set in ${Date.now() - started} ms`)
  t.equal(await gauge(app, 'storageBytes'), listed.bytes, 'r2_storage_bytes too')
  t.same(sent(), ['ListObjectsV2'], 'by one listing')
  const scannedAt = (await app.inject({ url: '/v1/usage' })).json().scanned_at as string
  t.equal(
    await gauge(app, 'usageLastScan'),
    Date.parse(scannedAt) / 1000,
    "r2_usage_last_scan_timestamp_seconds: the scan's time, as /v1/usage says it",
  )
  t.ok(Date.parse(scannedAt) >= started - 50 && Date.parse(scannedAt) <= Date.now(), 'which is now')
  t.match((await app.inject('/metrics')).body, /^r2_usage_last_scan_timestamp_seconds \d{10}\.?\d*$/m, 'exposed on /metrics')
})

t.test('the local-disk driver: /v1/usage?rescan=true counts its stored files', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { USAGE_RESCAN_INTERVAL_S: '0' })
  const sizes = [1234, 56_789, 200_000]
  const keys: string[] = []
  for (const [index, size] of sizes.entries()) {
    const response = await app.inject(uploadRequest(pngOfSize(size, 40 + index)))
    t.equal(response.statusCode, 201)
    keys.push(response.json().key)
  }
  const onDisk = async () => {
    const files = await storedFiles(dataDir)
    const bytes = (await Promise.all(files.map(async (file) => (await stat(path.join(dataDir, 'objects', file))).size))).reduce(
      (a, b) => a + b,
      0,
    )
    return { bytes, objects: files.length }
  }

  const report = (await app.inject('/v1/usage?rescan=true')).json()
  const files = await onDisk()
  t.equal(files.objects, 3)
  t.equal(report.object_count, files.objects, 'object_count is the number of stored files')
  t.equal(report.storage_bytes, files.bytes, 'storage_bytes is the sum of their sizes')
  t.equal(
    report.storage_bytes,
    sizes.reduce((sum, size) => sum + size, 0),
    'metadata sidecars are not counted',
  )
  t.equal(report.class_a_operations, 0, 'no R2 operations on local disk')
  t.equal(report.class_b_operations, 0)
  t.same(report.limits, LIMITS)
  t.equal(report.percentages.storage_bytes, round2((files.bytes / 10e9) * 100))

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${keys[1]}` })).statusCode, 204)
  const after = (await app.inject('/v1/usage?rescan=true')).json()
  t.equal(after.object_count, 2, 'a deleted file is no longer counted')
  t.equal(after.storage_bytes, sizes[0]! + sizes[2]!)
  t.same({ bytes: after.storage_bytes, objects: after.object_count }, await onDisk())
})

t.test('rescans are rate-limited per instance: one listing per USAGE_RESCAN_INTERVAL_S, the others answered from it', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `ops:${T1}` })
  const commands = recordCommands(r2DriverOf(app))
  const listings = () => commands.filter((command) => command.name === 'ListObjectsV2').length
  const rescan = async () => (await app.inject({ url: '/v1/usage?rescan=true', headers: bearer })).json()
  t.ok((await listBucket()).objects < 1000, 'the bucket lists in one page, so one listing is one ListObjectsV2')

  const together = await Promise.all(Array.from({ length: 5 }, rescan))
  const after = []
  for (let i = 0; i < 5; i++) after.push(await rescan())
  t.comment(`10 rescans in a row: ${listings()} listings`)
  t.equal(listings(), 1, 'ten rescans within a minute, five of them at once, list the bucket once')
  const scannedAt = new Set([...together, ...after].map((report) => report.scanned_at))
  t.equal(scannedAt.size, 1, 'every answer gives that scan, and its time')
  t.equal(after[4].storage_bytes, together[0].storage_bytes)

  const other = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `ops:${T1}`, USAGE_RESCAN_INTERVAL_S: '1' })
  const otherCommands = recordCommands(r2DriverOf(other.app))
  const otherRescan = async () => (await other.app.inject({ url: '/v1/usage?rescan=true', headers: bearer })).json()
  const first = await otherRescan()
  t.equal((await otherRescan()).scanned_at, first.scanned_at, 'another instance lists for itself, then answers from that')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  t.not((await otherRescan()).scanned_at, first.scanned_at, 'once USAGE_RESCAN_INTERVAL_S has passed, a rescan lists again')
  t.equal(otherCommands.filter((command) => command.name === 'ListObjectsV2').length, 2)
})
