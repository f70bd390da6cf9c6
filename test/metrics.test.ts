import { execFile, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { promisify } from 'node:util'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildMetricsApp } from '../src/app.js'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { CURL, haveCurl, havePromtool, PROMTOOL } from './helpers/system-tools.js'

const KiB = 1024
const MiB = 1024 * 1024
const T1 = 'metrics-'.padEnd(40, 'm')
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

const s3 = await startS3()
t.teardown(() => s3.stop())

/** One multipart upload of `data`, injected, with the token when given. */
function uploadRequest(data: Buffer, token?: string) {
  const { payload, headers } = multipartBody([{ name: 'file', filename: 'portrait.png', contentType: 'image/png', data }])
  return { method: 'POST' as const, url: '/v1/images', payload, headers: { ...headers, ...(token && bearer(token)) } }
}

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** The Prometheus text format, parsed just enough for these tests: `# TYPE` lines and samples. */
function parseMetrics(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type) {
      if (types.has(type[1]!)) throw new Error(`a second # TYPE line for ${type[1]}`)
      types.set(type[1]!, type[2]!)
      continue
    }
    if (line.startsWith('#')) continue
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!sample) throw new Error(`not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, name, value] of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name!] = value!.replace(/\\(.)/g, (_, escaped: string) => (escaped === 'n' ? '\n' : escaped))
    }
    samples.push({ name: sample[1]!, labels, value: promNumber(sample[3]!) })
  }
  return { types, samples }
}

/**
 * A number as the text format writes it: Go's float syntax, where +Inf, -Inf and NaN are case-insensitive
 * (prom-client writes NaN as "Nan", e.g. nodejs_eventloop_lag_mean_seconds before the first sample).
 */
function promNumber(text: string): number {
  if (/^\+?inf(inity)?$/i.test(text)) return Infinity
  if (/^-inf(inity)?$/i.test(text)) return -Infinity
  if (/^nan$/i.test(text)) return NaN
  const value = Number(text)
  if (Number.isNaN(value)) throw new Error(`not a number: ${text}`)
  return value
}

const sameLabels = (a: Record<string, string>, b: Record<string, string>) =>
  Object.keys(a).length === Object.keys(b).length && Object.entries(b).every(([name, value]) => a[name] === value)

/** The one sample with exactly these labels, or undefined. */
function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((sample) => sample.name === name && sameLabels(sample.labels, labels))
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)}`)
  return found[0]?.value
}

/** The sum over every sample of `name` whose labels include `labels` (0 when there is none). */
function sumOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((sample) => sample.name === name && Object.entries(labels).every(([label, value]) => sample.labels[label] === value))
    .reduce((sum, sample) => sum + sample.value, 0)
}

async function scrape(app: FastifyInstance, headers: Record<string, string> = {}) {
  const response = await app.inject({ url: '/metrics', headers })
  if (response.statusCode !== 200) throw new Error(`/metrics answered ${response.statusCode}: ${response.body.slice(0, 200)}`)
  return { text: response.body, ...parseMetrics(response.body), contentType: response.headers['content-type'] }
}

const EXPECTED_TYPES = {
  r2_uploads_total: 'counter',
  r2_upload_errors_total: 'counter',
  r2_upload_size_bytes: 'histogram',
  r2_upload_latency_seconds: 'histogram',
  http_request_duration_seconds: 'histogram',
  r2_operations_total: 'counter',
  r2_uploads_in_flight: 'gauge',
  r2_uploads_waiting: 'gauge',
  r2_storage_bytes: 'gauge',
  r2_storage_objects: 'gauge',
  r2_usage_last_scan_timestamp_seconds: 'gauge',
  // Default process metrics.
  process_cpu_user_seconds_total: 'counter',
  process_resident_memory_bytes: 'gauge',
  nodejs_heap_size_used_bytes: 'gauge',
  nodejs_eventloop_lag_seconds: 'gauge',
  // By type; their sums were also exported as *_total gauges, which promtool refuses.
  nodejs_active_handles: 'gauge',
  nodejs_active_requests: 'gauge',
  nodejs_active_resources: 'gauge',
} as const

t.test('every metric is exposed with its type, labels and buckets, and promtool parses the text', async (t) => {
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  const keys: string[] = []
  for (const [index, size] of [2 * KiB, 40 * KiB, 300 * KiB].entries()) {
    const image = pngOfSize(size, index + 1)
    const response = await app.inject(uploadRequest(image))
    t.equal(response.statusCode, 201, response.body.slice(0, 200))
    t.equal(await s3.sha256Of(response.json().key), sha256(image), `${size} bytes: stored byte-exact`)
    keys.push(response.json().key)
  }
  // Per-key routes, and a path no route matches, carrying something that must not become a label either.
  t.equal((await app.inject({ url: `/v1/images/${keys[0]}` })).statusCode, 200)
  t.equal((await app.inject({ method: 'HEAD', url: `/v1/images/${keys[1]}` })).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${keys[2]}` })).statusCode, 204)
  t.equal((await app.inject({ url: '/nothing/here/sentinel-path-7f3a' })).statusCode, 404)

  const { text, types, samples, contentType } = await scrape(app)
  t.match(contentType, /^text\/plain; version=0\.0\.4/, 'the Prometheus text format')
  for (const [name, type] of Object.entries(EXPECTED_TYPES)) {
    t.equal(types.get(name), type, `# TYPE ${name} ${type}`)
    t.ok(text.includes(`\n# TYPE ${name} ${type}\n`), `the text has the line "# TYPE ${name} ${type}"`)
  }

  t.equal(sampleValue(samples, 'r2_uploads_total'), 3)
  t.equal(sampleValue(samples, 'r2_uploads_in_flight'), 0, 'nothing in flight once the answers are sent')
  t.equal(sampleValue(samples, 'r2_uploads_waiting'), 0, 'nothing waiting for a slot')
  t.equal(sampleValue(samples, 'r2_storage_bytes'), 0, 'no usage scan has run (USAGE_SCAN_INTERVAL_S=0)')
  t.equal(sampleValue(samples, 'r2_storage_objects'), 0)
  t.equal(sampleValue(samples, 'r2_usage_last_scan_timestamp_seconds'), 0, 'which says: never scanned')
  t.ok((sampleValue(samples, 'process_cpu_user_seconds_total') ?? 0) > 0, 'process CPU time is reported')
  t.ok((sampleValue(samples, 'nodejs_heap_size_used_bytes') ?? 0) > 0, 'heap use is reported')

  // r2_upload_size_bytes: 1 KiB to 128 MiB, doubling, then +Inf.
  const bounds = samples.filter((sample) => sample.name === 'r2_upload_size_bytes_bucket').map((sample) => sample.labels.le)
  t.same(bounds, [...Array.from({ length: 18 }, (_, i) => String(KiB * 2 ** i)), '+Inf'], 'size buckets 1024 … 134217728, +Inf')
  t.equal(bounds[17], '134217728')
  t.equal(sampleValue(samples, 'r2_upload_latency_seconds_count'), 3, 'the latency histogram has its samples')
  t.ok(
    samples.some((sample) => sample.name === 'r2_upload_latency_seconds_bucket' && sample.labels.le === '+Inf'),
    'latency buckets',
  )

  // http_request_duration_seconds: labels method, route, status_code; the route is the pattern.
  const http = samples.filter((sample) => sample.name === 'http_request_duration_seconds_count')
  for (const sample of http) t.same(Object.keys(sample.labels).sort(), ['method', 'route', 'status_code'], JSON.stringify(sample.labels))
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'POST', route: '/v1/images', status_code: '201' }), 3)
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'GET', route: '/v1/images/*', status_code: '200' }), 1)
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'HEAD', route: '/v1/images/*', status_code: '200' }), 1)
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'DELETE', route: '/v1/images/*', status_code: '204' }), 1)
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'GET', route: 'unmatched', status_code: '404' }), 1)
  t.same(
    [...new Set(http.map((sample) => sample.labels.route))].sort(),
    ['/v1/images', '/v1/images/*', 'unmatched'],
    'route labels are patterns only',
  )
  for (const key of keys) {
    t.notOk(text.includes(key), `the key ${key} is nowhere in the metrics`)
    t.notOk(text.includes(key.split('/').at(-1)!), 'nor its last segment')
  }
  t.notOk(text.includes('sentinel-path-7f3a'), 'an unmatched path is not a label either')

  // r2_operations_total{operation,class}: what these requests sent.
  t.equal(sampleValue(samples, 'r2_operations_total', { operation: 'PutObject', class: 'A' }), 3)
  t.equal(sampleValue(samples, 'r2_operations_total', { operation: 'HeadObject', class: 'B' }), 2, 'GET and HEAD by key')
  t.equal(sampleValue(samples, 'r2_operations_total', { operation: 'DeleteObject', class: 'free' }), 1)

  await t.test('promtool check metrics: exit 0, nothing to report', async (t) => {
    if (!havePromtool(t)) return
    const checked = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' })
    t.equal(checked.error, undefined, 'promtool ran')
    // 0: clean; 1: the text does not parse; 3: it parses, with lint findings.
    t.equal(checked.status, 0, `exit status 0: ${checked.stdout}${checked.stderr}`)
    t.equal(`${checked.stdout}${checked.stderr}`, '', 'no lint findings')
  })
  t.notOk(/^nodejs_active_\w+_total/m.test(text), "no gauge named like a counter (prom-client's nodejs_active_*_total)")
})

t.test('after N uploads of which M were refused, the counters and histograms say exactly N and M', async (t) => {
  const MAX = 100_000
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), MAX_UPLOAD_BYTES: String(MAX) })
  // Two sizes sit on bucket bounds (le is inclusive): 1024 and 65536.
  const sizes = [600, 1024, 1025, 65_536, MAX]
  for (const [index, size] of sizes.entries()) {
    const image = pngOfSize(size, 10 + index)
    const response = await app.inject(uploadRequest(image))
    t.equal(response.statusCode, 201, `${size} bytes stored`)
    t.equal(await s3.sha256Of(response.json().key), sha256(image), `${size} bytes: byte-exact`)
  }
  const refused = [
    { data: Buffer.from('this is plain text, not an image\n'.repeat(20)), status: 415, code: 'unsupported_media_type' },
    { data: pngOfSize(MAX + 1), status: 413, code: 'image_too_large' },
    { data: Buffer.alloc(0), status: 400, code: 'empty_file' },
  ]
  for (const { data, status, code } of refused) {
    const response = await app.inject(uploadRequest(data))
    t.equal(response.statusCode, status, code)
    t.equal(response.json().code, code)
  }
  const N = sizes.length
  const M = refused.length

  const { samples } = await scrape(app)
  t.equal(sampleValue(samples, 'r2_uploads_total'), N, `r2_uploads_total is ${N}`)
  t.equal(sumOf(samples, 'r2_upload_errors_total'), M, `the errors add up to ${M}`)
  const errors = samples.filter((sample) => sample.name === 'r2_upload_errors_total')
  t.same(
    Object.fromEntries(errors.map((sample) => [sample.labels.error_type, sample.value])),
    { unsupported_media_type: 1, image_too_large: 1, empty_file: 1 },
    'one error of each type, labelled by its contract code',
  )
  t.equal(sampleValue(samples, 'r2_upload_size_bytes_count'), N, 'the size histogram counts the stored uploads only')
  t.equal(
    sampleValue(samples, 'r2_upload_size_bytes_sum'),
    sizes.reduce((sum, size) => sum + size, 0),
    'and sums their bytes',
  )
  for (const sample of samples.filter((sample) => sample.name === 'r2_upload_size_bytes_bucket')) {
    const bound = promNumber(sample.labels.le!)
    t.equal(sample.value, sizes.filter((size) => size <= bound).length, `le=${sample.labels.le}`)
  }
  t.equal(sampleValue(samples, 'r2_upload_latency_seconds_count'), N + M, 'every answered upload has a latency')
  t.ok((sampleValue(samples, 'r2_upload_latency_seconds_sum') ?? -1) > 0, 'the latencies add up to more than nothing')
  t.equal(sampleValue(samples, 'http_request_duration_seconds_count', { method: 'POST', route: '/v1/images', status_code: '201' }), N)
  for (const { status } of refused) {
    t.equal(
      sampleValue(samples, 'http_request_duration_seconds_count', { method: 'POST', route: '/v1/images', status_code: String(status) }),
      1,
    )
  }
  t.equal(sumOf(samples, 'r2_operations_total', { class: 'A' }), N, 'refused uploads never reach the bucket')
  t.equal(sampleValue(samples, 'r2_uploads_in_flight'), 0)
})

t.test('r2_operations_total: one Class A per single-part upload, HEAD is Class B, DELETE is free', async (t) => {
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  const classes = async () => {
    const { samples } = await scrape(app)
    return {
      A: sumOf(samples, 'r2_operations_total', { class: 'A' }),
      B: sumOf(samples, 'r2_operations_total', { class: 'B' }),
      free: sumOf(samples, 'r2_operations_total', { class: 'free' }),
      PutObject: sumOf(samples, 'r2_operations_total', { operation: 'PutObject' }),
    }
  }
  t.same(await classes(), { A: 0, B: 0, free: 0, PutObject: 0 }, 'nothing sent yet')

  const keys: string[] = []
  // Up to 5 MiB (the boundary included) goes up in one PutObject.
  for (const [index, size] of [1 * KiB, 100_000, 1 * MiB, 5 * MiB].entries()) {
    const before = await classes()
    const image = pngOfSize(size, 20 + index)
    const response = await app.inject(uploadRequest(image))
    t.equal(response.statusCode, 201, `${size} bytes stored`)
    t.equal(await s3.sha256Of(response.json().key), sha256(image), `${size} bytes: byte-exact`)
    keys.push(response.json().key)
    const after = await classes()
    t.equal(after.A - before.A, 1, `${size} bytes: Class A rose by exactly 1`)
    t.equal(after.PutObject - before.PutObject, 1, `${size} bytes: that one is a PutObject`)
    t.equal(after.B - before.B, 0, `${size} bytes: no Class B`)
    t.equal(after.free - before.free, 0, `${size} bytes: nothing free`)
  }

  type Classes = Awaited<ReturnType<typeof classes>>
  const classesBetween = (from: Classes, to: Classes) => ({ A: to.A - from.A, B: to.B - from.B, free: to.free - from.free })
  let before = await classes()
  t.equal((await app.inject({ method: 'HEAD', url: `/v1/images/${keys[0]}` })).statusCode, 200)
  let after = await classes()
  t.same(classesBetween(before, after), { A: 0, B: 1, free: 0 }, 'HEAD: one Class B (HeadObject)')

  before = after
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/images/${keys[0]}` })).statusCode, 204)
  after = await classes()
  t.same(classesBetween(before, after), { A: 0, B: 0, free: 1 }, 'DELETE: one free (DeleteObject)')

  before = after
  t.equal((await app.inject({ method: 'HEAD', url: `/v1/images/${keys[0]}` })).statusCode, 404)
  after = await classes()
  t.same(classesBetween(before, after), { A: 0, B: 2, free: 0 }, 'HEAD on a miss: HeadObject and HeadBucket')

  // Past 5 MiB, a form of declared length streams up in one PutObject: still one Class A operation.
  before = after
  const large = pngOfSize(6 * MiB, 30)
  const stored = await app.inject(uploadRequest(large))
  t.equal(stored.statusCode, 201)
  t.equal(await s3.sha256Of(stored.json().key), sha256(large), '6 MiB: stored byte-exact')
  after = await classes()
  t.equal(after.A - before.A, 1, '6 MiB: one Class A operation')
  t.equal(after.PutObject - before.PutObject, 1, '6 MiB: one PutObject')
})

// Fails at the time of writing: Fastify answers an undecodable path through frameworkErrors (src/app.ts)
// without running the onResponse hooks, so the request is in neither the histogram nor the request log.
t.test('a request whose path cannot be decoded is counted in http_request_duration_seconds too', async (t) => {
  const { app } = await buildTestApp(t)
  const response = await app.inject({ url: '/v1/images/secret-%E0%A4%A' })
  t.equal(response.statusCode, 400)
  t.equal(response.json().code, 'invalid_key')
  const { samples, text } = await scrape(app)
  t.equal(
    sumOf(samples, 'http_request_duration_seconds_count', { method: 'GET', status_code: '400' }),
    1,
    'the 400 is observed (route label: a pattern or "unmatched")',
  )
  t.notOk(text.includes('secret-'), 'the path is not a label')
})

t.test('r2_operations_total counts every attempt: a retried request is billed twice', async (t) => {
  // A backend that answers every request 503: the driver tries twice (maxAttempts 2), and R2 bills both.
  let received = 0
  const failing = http.createServer((request, response) => {
    received++
    request.resume()
    response.writeHead(503, { 'content-type': 'application/xml' })
    response.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>')
  })
  failing.listen(0, '127.0.0.1')
  await once(failing, 'listening')
  t.teardown(() => new Promise((resolve) => failing.close(resolve)))
  const { port } = failing.address() as AddressInfo
  const { app } = await buildTestApp(t, r2Env(`http://127.0.0.1:${port}`))

  const response = await app.inject({ method: 'HEAD', url: '/v1/images/general/2025/01/abcdefghijklmnop_x.png' })
  t.equal(response.statusCode, 503)
  t.equal(received, 2, 'the backend saw two attempts')
  const { samples } = await scrape(app)
  t.equal(sampleValue(samples, 'r2_operations_total', { operation: 'HeadObject', class: 'B' }), received, 'both are counted')
})

t.test('with API_KEYS, /metrics on the public port needs the Bearer token', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS: `ops:${T1}` })
  const without = await app.inject('/metrics')
  t.equal(without.statusCode, 401, 'no token: 401')
  t.equal(without.json().code, 'unauthorized')
  t.match(without.headers['www-authenticate'], /^Bearer/)
  t.equal((await app.inject({ url: '/metrics', headers: bearer('x'.repeat(40)) })).statusCode, 401, 'a wrong token: 401')
  const withToken = await app.inject({ url: '/metrics', headers: bearer(T1) })
  t.equal(withToken.statusCode, 200, 'the token: 200')
  t.match(withToken.body, /^# TYPE r2_uploads_total counter$/m)
})

t.test('with METRICS_PORT, the public app has no /metrics and the metrics app serves it without a key', async (t) => {
  const { app, config } = await buildTestApp(t, { API_KEYS: `ops:${T1}`, METRICS_PORT: '9464' })
  t.equal(config.metricsPort, 9464)
  t.equal((await app.inject('/metrics')).statusCode, 404, 'public port, no token: 404')
  t.equal((await app.inject({ url: '/metrics', headers: bearer(T1) })).statusCode, 404, 'public port, with the token: 404')

  t.equal((await app.inject(uploadRequest(pngOfSize(3000), T1))).statusCode, 201)
  const metricsApp = await buildMetricsApp(app.metricsRegistry)
  t.teardown(() => metricsApp.close())
  const served = await metricsApp.inject('/metrics')
  t.equal(served.statusCode, 200, 'no key needed on the metrics app')
  t.match(served.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const { samples } = parseMetrics(served.body)
  t.equal(sampleValue(samples, 'r2_uploads_total'), 1, "the metrics app serves the public app's registry")
  t.equal(sampleValue(samples, 'r2_upload_size_bytes_sum'), 3000)
  t.equal((await metricsApp.inject('/v1/usage')).statusCode, 404, 'and nothing else')
  t.equal((await metricsApp.inject('/healthz')).statusCode, 404)
})

t.test("on METRICS_PORT, curl's scrape passes promtool, and request ids are UUIDs as on the public port", async (t) => {
  if (!haveCurl(t)) return
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), METRICS_PORT: '9464' })
  const image = pngOfSize(3000, 5)
  const stored = await app.inject(uploadRequest(image))
  t.equal(stored.statusCode, 201)
  t.equal(await s3.sha256Of(stored.json().key), sha256(image), 'the upload reads back byte-exact')
  const metricsApp = await buildMetricsApp(app.metricsRegistry)
  t.teardown(() => metricsApp.close())
  const { port } = await listen(metricsApp)
  const curl = (...args: string[]) => promisify(execFile)(CURL, ['-sS', ...args])

  const scraped = (await curl(`http://127.0.0.1:${port}/metrics`)).stdout
  t.match(scraped, /^r2_uploads_total 1$/m, "curl scraped the public app's registry")
  if (havePromtool(t)) {
    const checked = spawnSync(PROMTOOL, ['check', 'metrics'], { input: scraped, encoding: 'utf8' })
    t.equal(checked.status, 0, `promtool check metrics exits 0: ${checked.stdout}${checked.stderr}`)
  }

  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
  const answers = {
    'the metrics port': await curl('-i', `http://127.0.0.1:${port}/nothing-here`),
    'the public port': await curl('-i', `http://127.0.0.1:${(await listen(app)).port}/nothing-here`),
  }
  for (const [where, { stdout }] of Object.entries(answers)) {
    const [head = '', body = ''] = stdout.split('\r\n\r\n')
    const problem = JSON.parse(body) as { status: number; request_id: string }
    t.equal(problem.status, 404, `${where}: 404`)
    t.match(problem.request_id, UUID, `${where}: the problem's request_id is a UUID (${problem.request_id})`)
    t.match(head, new RegExp(`^x-request-id: ${problem.request_id}$`, 'im'), `${where}: and X-Request-Id names it`)
  }
})

t.test("the README and openapi.yaml name every metric of the service's own; the README's opening says they are there", async (t) => {
  const { app } = await buildTestApp(t)
  const own = app.metricsRegistry
    .getMetricsAsArray()
    .map((metric) => metric.name)
    .filter((name) => !/^(process|nodejs)_/.test(name))
  t.ok(own.includes('r2_usage_last_scan_timestamp_seconds'), 'the scan time is one of them')
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const watching = readme.slice(readme.indexOf('## Watching it'), readme.indexOf('\n## ', readme.indexOf('## Watching it') + 1))
  const openapi = await readFile(new URL('../openapi.yaml', import.meta.url), 'utf8')
  const described = openapi.slice(
    openapi.indexOf('operationId: getMetrics'),
    openapi.indexOf('responses:', openapi.indexOf('operationId: getMetrics')),
  )
  for (const name of own) {
    t.ok(watching.includes(`\`${name}`), `README, Watching it: ${name}`)
    t.ok(described.includes(`\`${name}`), `openapi.yaml, GET /metrics: ${name}`)
  }
  const opening = readme.slice(0, readme.indexOf('\n## '))
  t.match(opening, /Prometheus\*\*, scraping its metrics at `\/metrics`/, 'the opening names the metrics endpoint')
  t.notMatch(opening, /later release/i, 'and promises nothing for later')
})
