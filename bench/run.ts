/**
 * Upload benchmark: the service against the limit its backend sets, in one run on one machine.
 *
 *   npm run bench            (builds dist/, then runs this file; never run by the tests or CI)
 *
 * Starts the local S3 server (s3rver) in this process, a fresh one per scenario, and measures:
 * - direct PutObject to s3rver with the service's own S3 client (same SDK, same settings): the limit;
 * - uploads through the service (built dist/server.js in a child process, R2 driver pointed at s3rver,
 *   NODE_ENV=production with an API key), raw bodies and multipart/form-data;
 * - the service's peak RSS (VmHWM, reset after the warm-up) in each scenario; each service scenario
 *   gets a fresh process.
 * Every upload must answer 201 with the SHA-256 of the bytes sent; one object per scenario is read back
 * from s3rver and hashed. Bodies are deterministic PNGs (fixed seeds), so runs differ only by the machine.
 *
 * Options (environment):
 *   BENCH_SECONDS=12        measured seconds per scenario (uploads started within it; the last ones finish after)
 *   BENCH_WARMUP_SECONDS=3  warm-up per scenario, not measured
 *   BENCH_ONLY=<regexp>     only the scenarios whose name matches (direct baselines run when a match needs them)
 *   BENCH_CPU_PROF=<dir>    run the service under `node --cpu-prof`; print where its CPU time went, by function and package
 *   BENCH_SERVICE_ENV=<json> more environment for the service, e.g. '{"MALLOC_MMAP_THRESHOLD_":"1048576"}'
 */
import type { ChildProcess } from 'node:child_process'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import { loadConfig } from '../src/config.js'
import { R2Driver } from '../src/storage/r2.js'
import { CACHE_CONTROL } from '../src/upload/pipeline.js'
import { pngOfSize, sha256 } from '../test/helpers/images.js'
import { multipartBody } from '../test/helpers/multipart.js'
import { TEST_BUCKET, r2Env, startS3 } from '../test/helpers/s3.js'
import { startService as startServiceProcess } from '../test/helpers/service-process.js'

const KB = 1000
const MiB = 1024 * 1024
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const SECONDS = Number(process.env.BENCH_SECONDS ?? 12)
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 3)
const ONLY = new RegExp(process.env.BENCH_ONLY ?? '')
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF && path.resolve(process.env.BENCH_CPU_PROF)
const SERVICE_ENV = JSON.parse(process.env.BENCH_SERVICE_ENV ?? '{}') as Record<string, string>
const API_TOKEN = 'bench-token-0123456789abcdef0123456789abcdef'

interface Scenario {
  name: string
  /**
   * put: PutObject of the whole body from this process. driver: the service's storage driver alone,
   * given the body as a stream of unknown length, as a form's file part is (> 5 MiB: a multipart
   * upload). raw, form: POST /v1/images to the service, the image as the body or as multipart/form-data.
   */
  kind: 'put' | 'driver' | 'raw' | 'form'
  bytes: number
  concurrency: number
  /** The direct PutObject scenario this one is compared with. */
  baseline?: string
}

const SCENARIOS: Scenario[] = [
  { name: 'direct PutObject 500 KB ×16', kind: 'put', bytes: 500 * KB, concurrency: 16 },
  { name: 'direct PutObject 50 MiB ×4', kind: 'put', bytes: 50 * MiB, concurrency: 4 },
  { name: 'direct PutObject 50 MiB ×16', kind: 'put', bytes: 50 * MiB, concurrency: 16 },
  { name: 'driver multipart 50 MiB ×4', kind: 'driver', bytes: 50 * MiB, concurrency: 4, baseline: 'direct PutObject 50 MiB ×4' },
  { name: 'service raw 500 KB ×16', kind: 'raw', bytes: 500 * KB, concurrency: 16, baseline: 'direct PutObject 500 KB ×16' },
  { name: 'service form 500 KB ×16', kind: 'form', bytes: 500 * KB, concurrency: 16, baseline: 'direct PutObject 500 KB ×16' },
  { name: 'service raw 50 MiB ×4', kind: 'raw', bytes: 50 * MiB, concurrency: 4, baseline: 'direct PutObject 50 MiB ×4' },
  { name: 'service raw 50 MiB ×16', kind: 'raw', bytes: 50 * MiB, concurrency: 16, baseline: 'direct PutObject 50 MiB ×16' },
]

interface Result {
  scenario: Scenario
  uploads: number
  /** Uploads that failed (not counted in the rates), and the first failure's message. */
  failures: number
  firstFailure?: string
  seconds: number
  latenciesMs: number[]
  /** CPU time over wall time: this process (s3rver and the load) and, for service scenarios, the service. */
  benchCpu: number
  serviceCpu?: number
  peakRssBytes?: number
  /** The service's own account of its memory (GET /metrics) at the highest RSS sampled. */
  memoryAtPeak?: MemorySample
  /** Driver scenarios: how long each S3 operation took, by name (ms, every attempt). */
  operationMs?: Map<string, number[]>
}

/** From the service's default Node.js metrics, in bytes. */
interface MemorySample {
  rss: number
  heapUsed: number
  heapTotal: number
  /** Off the V8 heap: Buffers, mostly. */
  external: number
}

/** One upload; resolves once it is stored and its answer checked. */
type Upload = (index: number) => Promise<void>

/** CPU seconds a process has used, user and system (Linux: /proc/<pid>/stat, in clock ticks of 1/100 s). */
async function cpuSecondsOf(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).replace(/^.*\) /s, '').split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/** The highest RSS of a process since it started or since resetPeakRss (Linux: VmHWM). */
async function peakRssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)![1]) * 1024
}

/** Resets VmHWM to the current RSS (Linux: "5" > clear_refs), so the peak read later is this scenario's. */
const resetPeakRss = (pid: number) => writeFile(`/proc/${pid}/clear_refs`, '5')

/**
 * Runs `upload` in `concurrency` closed loops: a warm-up, then new uploads for SECONDS. The measured time
 * ends when the last upload does, so every byte counted was stored in it. With `service`, its peak RSS,
 * CPU and memory samples are those of the measured part only.
 */
async function measure(scenario: Scenario, upload: Upload, service?: Service): Promise<Result> {
  const servicePid = service?.child.pid
  let next = 0
  const failures: string[] = []
  const loops = async (seconds: number, latencies: number[]) => {
    const until = performance.now() + seconds * 1000
    await Promise.all(
      Array.from({ length: scenario.concurrency }, async () => {
        while (performance.now() < until) {
          const startedAt = performance.now()
          try {
            await upload(next++)
            latencies.push(performance.now() - startedAt)
          } catch (error) {
            failures.push(error instanceof Error ? error.message : String(error))
          }
        }
      }),
    )
  }
  await loops(WARMUP_SECONDS, [])
  failures.length = 0
  if (servicePid !== undefined) await resetPeakRss(servicePid)
  const serviceCpuBefore = servicePid === undefined ? 0 : await cpuSecondsOf(servicePid)
  const benchCpuBefore = process.cpuUsage()
  const latenciesMs: number[] = []
  const startedAt = performance.now()
  const sampling = service && sampleMemory(service)
  await loops(SECONDS, latenciesMs)
  const seconds = (performance.now() - startedAt) / 1000
  const memoryAtPeak = await sampling?.stop()
  const benchCpuUs = process.cpuUsage(benchCpuBefore)
  const result: Result = {
    scenario,
    uploads: latenciesMs.length,
    failures: failures.length,
    firstFailure: failures[0],
    seconds,
    latenciesMs,
    benchCpu: (benchCpuUs.user + benchCpuUs.system) / 1e6 / seconds,
  }
  if (servicePid !== undefined) {
    result.serviceCpu = ((await cpuSecondsOf(servicePid)) - serviceCpuBefore) / seconds
    result.peakRssBytes = await peakRssOf(servicePid)
    result.memoryAtPeak = memoryAtPeak
  }
  return result
}

type S3 = Awaited<ReturnType<typeof startS3>>

async function checkStored(s3: S3, key: string, expected: string): Promise<void> {
  const stored = await s3.sha256Of(key)
  if (stored !== expected) throw new Error(`${key} was stored with SHA-256 ${stored}, sent ${expected}`)
}

/** The body in the 64 KiB pieces an HTTP request body arrives in. */
function* pieces(body: Buffer): Generator<Buffer> {
  for (let offset = 0; offset < body.length; offset += 64 * 1024) yield body.subarray(offset, offset + 64 * 1024)
}

/** From this process to s3rver: PutObject with the service's client, or the service's driver given a stream. */
async function runDirect(s3: S3, scenario: Scenario, image: Buffer): Promise<Result> {
  const { storage } = loadConfig(r2Env(s3.endpoint))
  if (storage.driver !== 'r2') throw new Error('r2Env must select the r2 driver')
  // The service's own client: same SDK, checksum settings, retries and timeouts.
  const driver = new R2Driver(storage)
  const operationMs = new Map<string, number[]>()
  driver.client.middlewareStack.add(
    (next, context) => async (args) => {
      const startedAt = performance.now()
      try {
        return await next(args)
      } finally {
        const name = (context.commandName ?? '?').replace(/Command$/, '')
        operationMs.set(name, operationMs.get(name) ?? []).get(name)!.push(performance.now() - startedAt)
      }
    },
    { step: 'finalizeRequest', name: 'benchTimeOperations' },
  )
  const prefix = scenario.name.replace(/\W+/g, '-')
  const write = { contentType: 'image/png', cacheControl: CACHE_CONTROL, metadata: { filename: 'bench.png' } }
  let lastKey = ''
  const upload: Upload = async (index) => {
    const key = `${prefix}/${index}.png`
    if (scenario.kind === 'put') {
      await driver.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: image, ContentLength: image.length, ContentType: 'image/png' }))
    } else {
      await driver.put(key, Readable.from(pieces(image), { objectMode: false }), write, new AbortController().signal)
    }
    lastKey = key
  }
  try {
    const result = await measure(scenario, upload)
    if (lastKey) await checkStored(s3, lastKey, sha256(image))
    return { ...result, operationMs }
  } finally {
    await driver.close()
  }
}

interface Service {
  child: ChildProcess
  port: number
  stop(): Promise<void>
}

/**
 * The built service (dist/server.js, as `npm start` runs it) in a process of its own. It logs as in
 * production (info: a line per upload); the bench reads nothing after the ready line.
 */
async function startService(s3: S3): Promise<Service> {
  const service = await startServiceProcess({
    entry: 'built',
    nodeArgs: CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF_DIR}`] : [],
    keepLogs: false,
    env: {
      ...r2Env(s3.endpoint),
      NODE_ENV: 'production',
      API_KEYS: `bench:${API_TOKEN}`,
      LOG_LEVEL: 'info',
      // The bench sends far more than a client's budget on purpose; a usage scan would list the bucket mid-run.
      RATE_LIMIT_PER_MINUTE: '1000000',
      USAGE_SCAN_INTERVAL_S: '0',
      // This process has printed the SDK's notice about Node 20 once already.
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      ...SERVICE_ENV,
    },
  })
  return {
    child: service.child,
    port: service.port,
    async stop() {
      const { code } = await service.stop()
      if (code !== 0) throw new Error(`the service exited with ${code}`)
    },
  }
}

/** Reads the service's memory metrics every 250 ms until stopped; keeps the sample with the highest RSS. */
function sampleMemory(service: Service) {
  let highest: MemorySample | undefined
  let sampling = true
  const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN)
  const done = (async () => {
    while (sampling) {
      const text = await new Promise<string>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: service.port, path: '/metrics', agent: false, headers: { authorization: `Bearer ${API_TOKEN}` } }, (response) => {
            let body = ''
            response.setEncoding('utf8')
            response.on('data', (chunk: string) => (body += chunk))
            response.on('end', () => resolve(body))
          })
          .on('error', reject)
      })
      const sample = {
        rss: metric(text, 'process_resident_memory_bytes'),
        heapUsed: metric(text, 'nodejs_heap_size_used_bytes'),
        heapTotal: metric(text, 'nodejs_heap_size_total_bytes'),
        external: metric(text, 'nodejs_external_memory_bytes'),
      }
      if (!highest || sample.rss > highest.rss) highest = sample
      await sleep(250)
    }
  })()
  return {
    async stop() {
      sampling = false
      await done
      return highest
    },
  }
}

function postUpload(agent: http.Agent, port: number, request: { path: string; headers: http.OutgoingHttpHeaders; body: Buffer }) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    http
      .request({ host: '127.0.0.1', port, agent, method: 'POST', path: request.path, headers: request.headers }, (response) => {
        let body = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (body += chunk))
        response.on('end', () => resolve({ status: response.statusCode!, body }))
      })
      .on('error', reject)
      .end(request.body)
  })
}

/** Through the service, in a fresh process: POST /v1/images, every answer checked. */
async function runService(s3: S3, scenario: Scenario, image: Buffer): Promise<Result> {
  const service = await startService(s3)
  // Keep-alive, one connection per concurrent upload, as an HTTP client session (the bot's) does.
  const agent = new http.Agent({ keepAlive: true, maxSockets: scenario.concurrency })
  const form = multipartBody([{ name: 'file', filename: 'bench.png', contentType: 'image/png', data: image }], 'bench-boundary-7d3f')
  const request =
    scenario.kind === 'form'
      ? { path: '/v1/images', headers: form.headers, body: form.payload }
      : { path: '/v1/images?filename=bench.png', headers: { 'content-type': 'image/png' }, body: image }
  const headers = { ...request.headers, 'content-length': String(request.body.length), authorization: `Bearer ${API_TOKEN}` }
  const expectedSha256 = sha256(image)
  let lastKey = ''
  const upload: Upload = async () => {
    const answer = await postUpload(agent, service.port, { ...request, headers })
    if (answer.status !== 201) throw new Error(`${scenario.name}: ${answer.status} ${answer.body.slice(0, 300)}`)
    const stored = JSON.parse(answer.body) as { key: string; sha256: string }
    if (stored.sha256 !== expectedSha256) throw new Error(`${scenario.name}: the service hashed ${stored.sha256}, sent ${expectedSha256}`)
    lastKey = stored.key
  }
  try {
    const result = await measure(scenario, upload, service)
    if (lastKey) await checkStored(s3, lastKey, expectedSha256)
    return result
  } finally {
    agent.destroy()
    await service.stop()
  }
}

/** The functions the service spent the most CPU in, by self time, over its newest profile. */
async function printCpuProfile(dir: string, scenario: string): Promise<void> {
  const newest = (await readdir(dir)).filter((file) => file.endsWith('.cpuprofile')).sort().at(-1)
  if (!newest) return
  interface ProfileNode {
    id: number
    callFrame: { functionName: string; url: string; lineNumber: number }
  }
  const profile = JSON.parse(await readFile(path.join(dir, newest), 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
  const byFunction = new Map<string, number>()
  const byPackage = new Map<string, number>()
  const add = (totals: Map<string, number>, name: string, us: number) => totals.set(name, (totals.get(name) ?? 0) + us)
  let totalUs = 0
  profile.samples.forEach((id, index) => {
    const { functionName, url, lineNumber } = nodes.get(id)!.callFrame
    const file = url.replace(/^file:\/\//, '').replace(ROOT, '')
    const delta = profile.timeDeltas[index] ?? 0
    add(byFunction, `${functionName || '(anonymous)'} ${file ? `${file}:${lineNumber + 1}` : ''}`.trim(), delta)
    // Where a function lives: a package, a Node.js module, the service's own code, or V8/native.
    const where =
      /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file)?.[1] ??
      (file.startsWith('node:') ? file.split('/').slice(0, 2).join('/') : file.startsWith('dist/') ? 'the service (dist/)' : functionName)
    add(byPackage, where, delta)
    totalUs += delta
  })
  const top = (totals: Map<string, number>) =>
    [...totals].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([name, us]) => `  ${((100 * us) / totalUs).toFixed(1).padStart(5)} %  ${name}`)
  console.log(`\nCPU profile of the service, ${scenario} (${newest}): ${(totalUs / 1e6).toFixed(1)} s sampled, start-up and warm-up included`)
  console.log(['By self time:', ...top(byFunction), 'By where the code lives:', ...top(byPackage)].join('\n'))
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN

function printTable(results: Result[]): void {
  const rate = (result: Result) => (result.uploads * result.scenario.bytes) / MiB / result.seconds
  const rows = results.map((result) => {
    // Its share of one core, and what one upload cost: the cost holds up better on a busy machine.
    const cpu = (share: number) => `${(100 * share).toFixed(0)} % ${((1000 * share * result.seconds) / result.uploads).toFixed(1)} ms`
    const sorted = [...result.latenciesMs].sort((a, b) => a - b)
    const baseline = results.find((other) => other.scenario.name === result.scenario.baseline)
    return [
      result.scenario.name,
      String(result.uploads),
      String(result.failures),
      (result.uploads / result.seconds).toFixed(1),
      rate(result).toFixed(1),
      percentile(sorted, 50).toFixed(0),
      percentile(sorted, 99).toFixed(0),
      result.peakRssBytes === undefined ? '—' : (result.peakRssBytes / MiB).toFixed(0),
      baseline ? (rate(result) / rate(baseline)).toFixed(2) : '—',
      cpu(result.benchCpu),
      result.serviceCpu === undefined ? '—' : cpu(result.serviceCpu),
    ]
  })
  const header = ['scenario', 'uploads', 'failed', 'uploads/s', 'MiB/s', 'p50 ms', 'p99 ms', 'service peak RSS MiB', '÷ direct', 'CPU s3rver+load, per upload', 'CPU service, per upload']
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)))
  const line = (cells: string[]) => `| ${cells.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join(' | ')} |`
  console.log(['', line(header), `|${widths.map((width, column) => (column === 0 ? '-' : '') + '-'.repeat(width + 1) + (column === 0 ? '' : ':')).join('|')}|`, ...rows.map(line)].join('\n'))
}

const chosen = SCENARIOS.filter((scenario) => ONLY.test(scenario.name))
const selected = SCENARIOS.filter((scenario) => chosen.includes(scenario) || chosen.some((other) => other.baseline === scenario.name))
const images = new Map<number, Buffer>()
// s3rver 3.7 lets one error escape: a CompleteMultipartUpload retried (after the client's idle timeout)
// while the first attempt is still concatenating the parts finds them gone. The upload then fails, and is
// counted as failed; any other uncaught error still ends the run.
process.on('uncaughtException', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'ENOENT' || !error.path?.includes('_S3rver_uploads')) throw error
  process.stderr.write(`s3rver: ${error.message}\n`)
})
const results: Result[] = []
for (const scenario of selected) {
  if (!images.has(scenario.bytes)) images.set(scenario.bytes, pngOfSize(scenario.bytes, images.size + 1))
  const image = images.get(scenario.bytes)!
  process.stderr.write(`${scenario.name}: ${WARMUP_SECONDS} s warm-up, ${SECONDS} s measured…\n`)
  // A fresh, empty s3rver for each scenario: no scenario pays for what an earlier one stored.
  const s3 = await startS3()
  const viaService = scenario.kind === 'raw' || scenario.kind === 'form'
  try {
    results.push(viaService ? await runService(s3, scenario, image) : await runDirect(s3, scenario, image))
  } finally {
    await s3.stop()
  }
  if (CPU_PROF_DIR && viaService) await printCpuProfile(CPU_PROF_DIR, scenario.name)
}
printTable(results)
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`
for (const { scenario, operationMs } of results) {
  if (operationMs?.size) {
    const timings = [...operationMs].map(([name, ms]) => `${name} ${ms.length} × median ${percentile([...ms].sort((a, b) => a - b), 50).toFixed(0)} ms`)
    console.log(`${scenario.name}, S3 operations (warm-up included): ${timings.join(', ')}`)
  }
}
for (const { scenario, failures, firstFailure } of results) {
  if (failures > 0) console.log(`${scenario.name}: ${failures} failed, the first with: ${firstFailure}`)
}
for (const { scenario, memoryAtPeak: memory } of results) {
  if (memory) {
    console.log(
      `${scenario.name}: at the highest RSS sampled (${mib(memory.rss)}), V8 heap ${mib(memory.heapUsed)} used of ${mib(memory.heapTotal)}, external (Buffers) ${mib(memory.external)}`,
    )
  }
}
console.log(`\n${SECONDS} s measured per scenario after ${WARMUP_SECONDS} s of warm-up; Node ${process.version}; s3rver in the bench process.`)
