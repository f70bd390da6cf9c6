/**
 * Upload benchmark: the service on the paths its users take, against the limit the S3 server sets and a
 * naive route that buffers every file, in one run on one machine.
 *
 *   npm run bench            (builds dist/, then runs this file; never run by the tests or CI)
 *
 * A local S3 server (s3rver, in a process of its own, a fresh one per scenario and round) and the load
 * generator share one core; each system under test runs alone in a process of its own on the other core
 * (`taskset`), a fresh process per scenario and round. The systems:
 * - direct PutObject from this process with the service's own S3 client (same SDK and settings): the limit;
 * - the service (built dist/server.js, NODE_ENV=production, R2 driver pointed at s3rver) sent a form by
 *   undici's FormData (Node's fetch), as a new user would;
 * - the service sent the very bytes of that form (undici's encoding, made once) by node:http, as curl -F
 *   would send them: the service's share without the cost of undici's FormData on the load core;
 * - the service sent a form by its own TypeScript client (src/client.ts: fetch without the body's copy for
 *   redirects, an Idempotency-Key per upload), from this process;
 * - the service sent a form by the bot's Python client (clients/python, aiohttp), driven by
 *   bench/python_load.py in a Python process on the load core;
 * - the service sent the raw body (node:http, Content-Type image/png, Content-Length), as curl --data-binary;
 * - a naive Fastify route (bench/naive-route.mjs: @fastify/multipart toBuffer() + PutObject): the peer to beat,
 *   sent the form by undici's FormData and, separately, its bytes by node:http; each service form is judged
 *   against the naive route sent alike, and raw bodies (a cheap sender) against the cheaply sent one.
 * The "load + S3 CPU s per GiB" column is what the load core spent (this process, the load generator;
 * s3rver's; the Python client's too): undici's FormData costs it several times what the service does.
 * Measured: throughput, latency p50/p99, the CPU the system under test used (utime + stime from
 * /proc/<pid>/stat) per upload and per GiB, its peak RSS (VmHWM, reset after the warm-up), and how busy
 * each core was (/proc/stat), ours and other processes'. The pinning of every process is read back from
 * /proc/<pid>/task/<tid>/status (Cpus_allowed_list) in every scenario; a mismatch fails the scenario.
 * Every upload must answer 201 with the SHA-256 of the bytes sent (the naive route and direct PutObject:
 * the S3 server's ETag, the MD5 of the bytes), and the last object of each scenario is read back from
 * s3rver and hashed. Bodies are deterministic PNGs (fixed seeds). The report is a Markdown section:
 * one table of every scenario over all rounds, the issue's targets and whether each was met in this run
 * (and in how many rounds on its own), then each scenario's rate and CPU round by round.
 *
 * Options (environment):
 *   BENCH_ROUNDS=4          times every scenario runs, in turns, in the order ABBA (RESULTS.md, ninth pass)
 *   BENCH_SECONDS=3         measured seconds per scenario and round (uploads started within it; the last ones finish after)
 *   BENCH_WARMUP_SECONDS=n  warm-up per scenario and round, not measured; by default 10 s at 500 KB, 3 s at 50 MiB
 *   BENCH_ONLY=<regexp>     only the scenarios whose name matches (the direct and naive ones a target needs run too)
 *   BENCH_CPUS=0,1          the load generator's core, then the systems' core; `none` runs unpinned
 *   BENCH_S3_DIR=/dev/shm   where s3rver stores its objects (the system's temporary directory if there is no /dev/shm)
 *   BENCH_APPEND=<file>     also append the report to this file (bench/RESULTS.md keeps every run)
 *   BENCH_NOTE=<text>       a line under the report's heading (say, what else ran on the machine)
 *   BENCH_CPU_PROF=<dir>    run each Node.js system under `node --cpu-prof`; report where its CPU time went
 *   BENCH_SERVICE_ENV=<json> more environment for the service, e.g. '{"MALLOC_MMAP_THRESHOLD_":"1048576"}'
 *   BENCH_SERVICE_NODE_OPTIONS='<options>'  the service's node options instead of npm start's (--max-semi-space-size=2)
 *   BENCH_PYTHON=/usr/bin/python3   the Python that runs the bot's client (with aiohttp)
 *   BENCH_SUT_NODE=<path>   the node binary that runs the service and the naive route (the image's Node 24, say);
 *                           by default this process's
 */
import { execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import { cpus, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import { ImageServiceClient } from '../src/client.js'
import { loadConfig } from '../src/config.js'
import { R2Driver } from '../src/storage/r2.js'
import { pngOfSize, sha256 } from '../test/helpers/images.js'
import { r2Env, startS3, TEST_BUCKET } from '../test/helpers/s3.js'
import { type LogLine, PRODUCTION_NODE_OPTIONS, startService as startServiceProcess } from '../test/helpers/service-process.js'

const KB = 1000
const MiB = 1024 * 1024
const GiB = 1024 * MiB
const ROOT = fileURLToPath(new URL('..', import.meta.url))
/**
 * The machine's speed drifts by a fifth within minutes: each scenario runs in rounds taken in turns, so
 * that those it is compared with are measured in the same stretches. The order is ABBA (forward, backward,
 * backward, forward, …): a drift steady over the run then weighs on no scenario more than another.
 */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4)
if (!Number.isInteger(ROUNDS) || ROUNDS < 1)
  throw new Error(`BENCH_ROUNDS must be a whole number of at least 1, not ${process.env.BENCH_ROUNDS}`)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3)
const WARMUP_SECONDS = process.env.BENCH_WARMUP_SECONDS === undefined ? undefined : Number(process.env.BENCH_WARMUP_SECONDS)
const ONLY = new RegExp(process.env.BENCH_ONLY ?? '')
/** tmpfs: on a disk, s3rver's CPU per PutObject followed the disk's writeback (RESULTS.md, ninth pass). */
const S3_DIR = process.env.BENCH_S3_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir())
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF && path.resolve(process.env.BENCH_CPU_PROF)
const SERVICE_ENV = JSON.parse(process.env.BENCH_SERVICE_ENV ?? '{}') as Record<string, string>
const PYTHON = process.env.BENCH_PYTHON ?? '/usr/bin/python3'
const SUT_NODE = process.env.BENCH_SUT_NODE ?? process.execPath
const SUT_NODE_VERSION = execFileSync(SUT_NODE, ['--version'], { encoding: 'utf8' }).trim()
/** The service's node options: npm start's, unless BENCH_SERVICE_NODE_OPTIONS says otherwise (an A/B run). */
const SERVICE_NODE_OPTIONS = process.env.BENCH_SERVICE_NODE_OPTIONS?.split(' ').filter(Boolean) ?? PRODUCTION_NODE_OPTIONS
const API_TOKEN = 'bench-token-0123456789abcdef0123456789abcdef'
/** The load generator's core and the systems' core, or undefined: unpinned. */
const CPUS = (() => {
  const setting = process.env.BENCH_CPUS ?? '0,1'
  if (setting === 'none') return undefined
  const [load, sut, ...rest] = setting.split(',')
  if (!/^\d+$/.test(load ?? '') || !/^\d+$/.test(sut ?? '') || load === sut || rest.length > 0) {
    throw new Error(`BENCH_CPUS must name two different cores, e.g. 0,1 (or none), not ${setting}`)
  }
  return { load: load!, sut: sut! }
})()
/** Clock ticks per second, the unit of utime and stime in /proc/<pid>/stat. */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())

type System = 'direct' | 'form' | 'formBytes' | 'client' | 'python' | 'raw' | 'naive' | 'naiveBytes'

const SYSTEMS: Record<System, string> = {
  direct: 'direct PutObject',
  form: 'service, form (undici FormData)',
  formBytes: "service, form (undici's bytes by node:http)",
  client: 'service, form (our TypeScript client)',
  python: 'service, form (Python client)',
  raw: 'service, raw body',
  naive: 'naive route (toBuffer + PutObject)',
  naiveBytes: "naive route, undici's bytes by node:http",
}

interface Scenario {
  name: string
  system: System
  bytes: number
  concurrency: number
  /**
   * Uploads for this long before the measured part. A fresh service spends 3–5 ms of CPU per 500 KB upload
   * over its first 2,000 uploads while V8 optimises it, then about 2 ms: 10 s is 1,800–3,700 uploads at the
   * judged senders' rates. At 50 MiB each upload runs the per-chunk code thousands of times.
   */
  warmupSeconds: number
  /** Sample the service's memory metrics (GET /metrics): only where peak RSS is a target, as it costs the service CPU. */
  sampleMemory: boolean
}

const sizeName = (bytes: number) => (bytes < MiB ? `${bytes / KB} KB` : `${bytes / MiB} MiB`)

const scenario = (system: System, bytes: number, concurrency: number): Scenario => ({
  name: `${SYSTEMS[system]} ${sizeName(bytes)} ×${concurrency}`,
  system,
  bytes,
  concurrency,
  warmupSeconds: WARMUP_SECONDS ?? (bytes < MiB ? 10 : 3),
  sampleMemory: system !== 'direct' && !system.startsWith('naive') && concurrency === 16 && bytes === 50 * MiB,
})

const EVERY_SYSTEM: System[] = ['direct', 'form', 'formBytes', 'client', 'python', 'raw', 'naive', 'naiveBytes']
const SCENARIOS: Scenario[] = [
  ...EVERY_SYSTEM.map((system) => scenario(system, 500 * KB, 16)),
  ...EVERY_SYSTEM.map((system) => scenario(system, 50 * MiB, 4)),
  // Peak RSS with 16 uploads of 50 MiB at once.
  ...(['form', 'formBytes', 'raw', 'naive'] as const).map((system) => scenario(system, 50 * MiB, 16)),
]

interface Result {
  scenario: Scenario
  /** Why the scenario could not be measured; nothing else is set then. */
  error?: string
  uploads: number
  /** Uploads that failed (not counted in the rates), and the first failure's message. */
  failures: number
  firstFailure?: string
  /** Uploads that failed during the warm-up: a failure there is still one of the system under test. */
  warmupFailures: number
  firstWarmupFailure?: string
  seconds: number
  latenciesMs: number[]
  /** CPU seconds over the measured part: the system under test's, and the load's (this process and the Python client). */
  sutCpuSeconds?: number
  loadCpuSeconds: number
  /** Busy share of each core over the measured part, every process's. */
  loadCoreBusy?: number
  sutCoreBusy?: number
  /** Cpus_allowed_list as read back: the load's processes, the system under test. */
  loadCpus: string
  sutCpus?: string
  peakRssBytes?: number
  /** The service's own account of its memory (GET /metrics) at the highest RSS sampled. */
  memoryAtPeak?: MemorySample
  /** The warn and error lines and the answers of 400 and above the system under test logged (the bench drops its other lines). */
  sutProblems?: LogLine[]
}

/** From the service's default Node.js metrics, in bytes. */
interface MemorySample {
  rss: number
  heapUsed: number
  heapTotal: number
  /** Off the V8 heap: Buffers, mostly. */
  external: number
}

/** CPU seconds a process has used, user and system (Linux: /proc/<pid>/stat, in clock ticks). */
async function cpuSecondsOf(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).replace(/^.*\) /s, '').split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}

/** Busy and total time of every core since boot (Linux: /proc/stat; steal counts as not ours). */
async function coreTimes(): Promise<Map<string, { busy: number; total: number }>> {
  const times = new Map<string, { busy: number; total: number }>()
  for (const line of (await readFile('/proc/stat', 'utf8')).split('\n')) {
    const match = /^cpu(\d+) (.*)/.exec(line)
    if (!match) continue
    const [user, nice, system, idle, iowait, irq, softirq, steal] = match[2]!.trim().split(/\s+/).map(Number) as number[]
    const busy = user! + nice! + system! + irq! + softirq!
    times.set(match[1]!, { busy, total: busy + idle! + iowait! + steal! })
  }
  return times
}

/** The cores every thread of a process may run on (Cpus_allowed_list), or several lists if its threads differ. */
async function cpusOf(pid: number): Promise<string> {
  const lists = new Set<string>()
  for (const task of await readdir(`/proc/${pid}/task`)) {
    const status = await readFile(`/proc/${pid}/task/${task}/status`, 'utf8').catch(() => '')
    const list = /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1]
    if (list) lists.add(list)
  }
  return [...lists].join('+')
}

/** The highest RSS of a process since it started or since resetPeakRss (Linux: VmHWM). */
async function peakRssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)![1]) * 1024
}

/** Resets VmHWM to the current RSS (Linux: "5" > clear_refs), so the peak read later is this scenario's. */
const resetPeakRss = (pid: number) => writeFile(`/proc/${pid}/clear_refs`, '5')

/** What a load generator did in the measured part. */
interface LoadRun {
  latenciesMs: number[]
  failures: string[]
  /** Failures during the warm-up (their uploads are not measured, their failures are reported). */
  warmupFailures: string[]
  /** The key of an object stored in the measured part ('' if none was), to read back. */
  lastKey: string
  seconds: number
}

/**
 * A load generator: runs the warm-up, calls `begin` as the measured part starts and `end` once its last
 * upload ended (its processes still running), and resolves with what it measured.
 */
interface Load {
  /** Processes other than this one that generate the load (their CPU is the load's, their pinning checked). */
  pids: number[]
  run(begin: () => Promise<void>, end: () => Promise<void>): Promise<LoadRun>
}

/** An error's message, and its cause's (fetch says only "fetch failed"). */
const describe = (error: unknown): string =>
  error instanceof Error ? (error.cause instanceof Error ? `${error.message}: ${describe(error.cause)}` : error.message) : String(error)

/** What failed in a scenario, measured and in the warm-up: a line each, with its first failure's message. */
const failureNotes = (result: Result): string[] => [
  ...(result.failures > 0 ? [`${result.failures} failed, the first with: ${result.firstFailure}`] : []),
  ...(result.warmupFailures > 0 ? [`${result.warmupFailures} failed in the warm-up, the first with: ${result.firstWarmupFailure}`] : []),
  ...(result.sutProblems?.length
    ? [
        `the system under test logged ${result.sutProblems.length} warn or error lines or answers of 400 and above, the first: ${logLineText(result.sutProblems[0]!)}`,
      ]
    : []),
]

/**
 * The lines that can explain a failed upload: warn and worse (pino's levels: 40 warn, 50 error, 60 fatal),
 * and the request lines of answers of 400 and above (logged as info: a client's mistake or a refusal).
 */
const isProblem = (line: LogLine) => Number(line.level) >= 40 || (line.msg === 'request' && Number(line.status) >= 400)

/** A log line as the notes show it: its JSON without the fields every line has. */
function logLineText({ time: _time, pid: _pid, hostname: _hostname, ...line }: LogLine): string {
  return JSON.stringify(line).slice(0, 1000)
}

/** One upload from this process; resolves with the stored object's key once its answer is checked. */
type Upload = () => Promise<string>

/**
 * Runs `upload` in `concurrency` closed loops: a warm-up, then new uploads for SECONDS. The measured time
 * ends when the last upload does, so every byte counted was stored in it.
 */
function closedLoops({ concurrency, warmupSeconds }: Scenario, upload: Upload): Load {
  return {
    pids: [],
    async run(begin, end) {
      const loops = async (seconds: number, failures: string[], run?: LoadRun) => {
        const until = performance.now() + seconds * 1000
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (performance.now() < until) {
              const startedAt = performance.now()
              try {
                const key = await upload()
                if (run) {
                  run.lastKey = key
                  run.latenciesMs.push(performance.now() - startedAt)
                }
              } catch (error) {
                failures.push(describe(error))
              }
            }
          }),
        )
      }
      const measured: LoadRun = { latenciesMs: [], failures: [], warmupFailures: [], lastKey: '', seconds: 0 }
      await loops(warmupSeconds, measured.warmupFailures)
      await begin()
      const startedAt = performance.now()
      await loops(SECONDS, measured.failures, measured)
      measured.seconds = (performance.now() - startedAt) / 1000
      await end()
      return measured
    },
  }
}

/** The bot's Python client in closed loops (bench/python_load.py), in a Python process on the load core. */
function pythonLoad(baseUrl: string, imagePath: string, { concurrency, warmupSeconds }: Scenario): Load {
  const args = [path.join(ROOT, 'bench/python_load.py'), baseUrl, imagePath, String(concurrency), String(warmupSeconds), String(SECONDS)]
  const [command, ...rest] = CPUS ? ['taskset', '-c', CPUS.load, PYTHON, ...args] : [PYTHON, ...args]
  // Its stdin stays open until its CPU time has been read: it exits only then.
  const child = spawn(command!, rest, { env: { PATH: process.env.PATH, BENCH_API_KEY: API_TOKEN }, stdio: ['pipe', 'pipe', 'inherit'] })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  killOnExit(child.pid!, exited)
  return {
    pids: [child.pid!],
    async run(begin, end) {
      const measured: LoadRun = { latenciesMs: [], failures: [], warmupFailures: [], lastKey: '', seconds: NaN }
      let began: Promise<void> | undefined
      let ended: Promise<void> | undefined
      try {
        for await (const text of createInterface({ input: child.stdout! })) {
          const line = JSON.parse(text) as {
            event?: string
            seconds?: number
            ms?: number
            key?: string
            error?: string
            warmup?: boolean
            python?: string
            aiohttp?: string
          }
          if (line.event === 'start') versions.python = `Python ${line.python}, aiohttp ${line.aiohttp}`
          else if (line.event === 'measuring') began = begin()
          else if (line.event === 'done') {
            measured.seconds = line.seconds!
            ended = Promise.resolve(began)
              .then(end)
              .finally(() => child.stdin!.end())
          } else if (line.error !== undefined) (line.warmup ? measured.warmupFailures : measured.failures).push(line.error)
          else {
            measured.latenciesMs.push(line.ms!)
            measured.lastKey = line.key!
          }
        }
      } catch (error) {
        // Whatever went wrong, the Python process must not wait for its stdin forever.
        child.kill('SIGKILL')
        throw error
      }
      const code = await exited
      if (code !== 0 || !began || !ended) throw new Error(`the Python load generator exited with ${code} before it was done`)
      await ended
      return measured
    },
  }
}

/** Kills a child process if this one ends first, however it ends. */
const children = new Set<number>()
function killOnExit(pid: number, exited: Promise<unknown>): void {
  children.add(pid)
  void exited.then(() => children.delete(pid))
}
process.once('exit', () => {
  for (const pid of children) process.kill(pid, 'SIGKILL')
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130))

/** A system under test: a process of its own, listening on 127.0.0.1:`port`. */
interface Sut {
  pid: number
  port: number
  /** The lines it has logged that can explain a failure (isProblem). */
  problems: LogLine[]
  stop(): Promise<void>
}

/** Where the systems under test log: files read once each has exited, removed at the end. */
const sutLogDir = await mkdtemp(path.join(tmpdir(), 'bench-logs-'))
let sutStarts = 0

/**
 * Starts a system under test with the tests' process starter: node running `entry`, alone on the systems'
 * core (`taskset` execs node, so the pid is node's), ready once it logs the port it listens on. It logs to
 * a file, read once it has exited and then only for the lines that can explain a failure: reading its log
 * as it comes would spend the load core's CPU on the system under test (eighth pass, about 0.1 ms per
 * upload). The one place the bench starts a process it measures.
 */
async function startSut(entry: string, env: NodeJS.ProcessEnv, nodeOptions: string[] = []): Promise<Sut> {
  const service = await startServiceProcess({
    logFile: path.join(sutLogDir, `${++sutStarts}.log`),
    entry: [entry],
    node: SUT_NODE,
    env,
    nodeArgs: [...nodeOptions, ...(CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF_DIR}`] : [])],
    wrapper: CPUS ? ['taskset', '-c', CPUS.sut] : [],
    // The rest (a line per upload) is dropped.
    keepLogs: isProblem,
    readyWithinMs: 30_000,
  }).catch((error: Error) => {
    throw new Error(`${entry}: ${error.message}`)
  })
  return {
    pid: service.pid,
    port: service.port,
    get problems() {
      return service.logs.filter(isProblem)
    },
    async stop() {
      const { code } = await service.stop()
      if (code !== 0) throw new Error(`${entry} exited with ${code}`)
    },
  }
}

type S3 = Awaited<ReturnType<typeof startS3>>

/** The built service (dist/server.js with npm start's node options); it logs as in production, a line per upload. */
const startService = (s3: S3) =>
  startSut(
    'dist/server.js',
    {
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
    SERVICE_NODE_OPTIONS,
  )

const startNaiveRoute = (s3: S3) =>
  startSut('bench/naive-route.mjs', { ...r2Env(s3.endpoint), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' })

/** Reads the service's memory metrics every 250 ms until stopped; keeps the sample with the highest RSS. */
function sampleMemory(port: number) {
  let highest: MemorySample | undefined
  let sampling = true
  const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN)
  const done = (async () => {
    while (sampling) {
      const text = await new Promise<string>((resolve, reject) => {
        http
          .get(
            { host: '127.0.0.1', port, path: '/metrics', agent: false, headers: { authorization: `Bearer ${API_TOKEN}` } },
            (response) => {
              let body = ''
              response.setEncoding('utf8')
              response.on('data', (chunk: string) => (body += chunk))
              response.on('end', () => resolve(body))
            },
          )
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

/** Runs `load` against `sut` (none: direct PutObject) and takes the measurements around its measured part. */
async function measure(scenario: Scenario, s3: S3, load: Load, sut?: Sut): Promise<Result & { lastKey: string }> {
  const loadPids = [process.pid, s3.pid!, ...load.pids]
  const cpuOf = async (pids: number[]) => (await Promise.all(pids.map(cpuSecondsOf))).reduce((sum, seconds) => sum + seconds, 0)
  let pinning: { load: string; sut?: string } | undefined
  let sampling: ReturnType<typeof sampleMemory> | undefined
  const snapshot = async () => ({ load: await cpuOf(loadPids), sut: sut ? await cpuSecondsOf(sut.pid) : 0, cores: await coreTimes() })
  let before: Awaited<ReturnType<typeof snapshot>> | undefined
  let after: Awaited<ReturnType<typeof snapshot>> | undefined
  const run = await load.run(
    async () => {
      pinning = { load: [...new Set(await Promise.all(loadPids.map(cpusOf)))].join('+'), sut: sut && (await cpusOf(sut.pid)) }
      if (sut) await resetPeakRss(sut.pid)
      before = await snapshot()
      if (sut && scenario.sampleMemory) sampling = sampleMemory(sut.port)
    },
    async () => {
      after = await snapshot()
    },
  )
  const memoryAtPeak = await sampling?.stop()
  if (!before || !after || !pinning) throw new Error('the load generator did not report its measured part')
  if (CPUS && (pinning.load !== CPUS.load || (sut && pinning.sut !== CPUS.sut))) {
    throw new Error(`pinning not as asked: load on ${pinning.load}, system under test on ${pinning.sut ?? '—'}`)
  }
  const busy = (core: string | undefined) => {
    const [start, end] = [core && before!.cores.get(core), core && after!.cores.get(core)]
    return start && end ? (end.busy - start.busy) / (end.total - start.total) : undefined
  }
  return {
    scenario,
    uploads: run.latenciesMs.length,
    failures: run.failures.length,
    firstFailure: run.failures[0],
    warmupFailures: run.warmupFailures.length,
    firstWarmupFailure: run.warmupFailures[0],
    seconds: run.seconds,
    latenciesMs: run.latenciesMs,
    loadCpuSeconds: after.load - before.load,
    sutCpuSeconds: sut && after.sut - before.sut,
    loadCoreBusy: busy(CPUS?.load),
    sutCoreBusy: busy(CPUS?.sut),
    loadCpus: pinning.load,
    sutCpus: pinning.sut,
    peakRssBytes: sut && (await peakRssOf(sut.pid)),
    memoryAtPeak,
    lastKey: run.lastKey,
  }
}

const md5 = (data: Buffer) => createHash('md5').update(data).digest('hex')

/** Sends one upload with Node's fetch (undici) and checks its 201 answer; resolves with the stored key. */
async function post(
  url: string,
  init: RequestInit,
  check: (answer: { key: string; sha256?: string; etag?: string }) => string | undefined,
): Promise<string> {
  const response = await fetch(url, { ...init, method: 'POST' })
  const text = await response.text()
  if (response.status !== 201) throw new Error(`${response.status} ${text.slice(0, 300)}`)
  const answer = JSON.parse(text) as { key: string; sha256?: string; etag?: string }
  const wrong = check(answer)
  if (wrong) throw new Error(wrong)
  return answer.key
}

/**
 * Sends one upload with node:http (a kept-alive connection per loop, the body in one write, as curl does) and
 * checks its 201 answer; resolves with the stored key. Its CPU per byte is a fraction of fetch's.
 */
function postBytes(
  url: string,
  headers: http.OutgoingHttpHeaders,
  body: Buffer,
  agent: http.Agent,
  check: (answer: { key: string; sha256?: string; etag?: string }) => string | undefined,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method: 'POST', agent, headers: { ...headers, 'content-length': body.length } }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('error', reject)
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        if (response.statusCode !== 201) return reject(new Error(`${response.statusCode} ${text.slice(0, 300)}`))
        const answer = JSON.parse(text) as { key: string; sha256?: string; etag?: string }
        const wrong = check(answer)
        if (wrong) reject(new Error(wrong))
        else resolve(answer.key)
      })
    })
    request.on('error', reject)
    request.end(body)
  })
}

/** Image files for the Python client, written once per size. */
let imageDir: string | undefined
async function imageFile(image: Buffer): Promise<string> {
  imageDir ??= await mkdtemp(path.join(tmpdir(), 'bench-images-'))
  const file = path.join(imageDir, `${image.length}.png`)
  await writeFile(file, image)
  return file
}

/** One scenario: the system under test in a fresh process (if it has one), the load, the checks. */
async function runScenario(s3: S3, scenario: Scenario, image: Buffer): Promise<Result> {
  const expectedSha256 = sha256(image)
  const expectedMd5 = md5(image)
  const blob = new Blob([new Uint8Array(image)], { type: 'image/png' })
  const form = () => {
    const body = new FormData()
    body.append('file', blob, 'bench.png')
    return body
  }
  /** undici's own encoding of the form, made once: the same bytes on the wire as a FormData upload. */
  const formBytes = async () => {
    const encoded = new Response(form())
    return { contentType: encoded.headers.get('content-type')!, body: Buffer.from(await encoded.arrayBuffer()) }
  }
  const authorization = `Bearer ${API_TOKEN}`
  const sameSha256 = (answer: { sha256?: string }) =>
    answer.sha256 === expectedSha256 ? undefined : `the service hashed ${answer.sha256}, sent ${expectedSha256}`
  const sameEtag = (answer: { etag?: string }) =>
    answer.etag?.replaceAll('"', '') === expectedMd5 ? undefined : `the S3 server's ETag is ${answer.etag}, the MD5 sent ${expectedMd5}`

  const agent = new http.Agent({ keepAlive: true })
  let sut: Sut | undefined
  let driver: R2Driver | undefined
  let load: Load
  switch (scenario.system) {
    case 'direct': {
      const { storage } = loadConfig(r2Env(s3.endpoint))
      if (storage.driver !== 'r2') throw new Error('r2Env must select the r2 driver')
      // The service's own client: same SDK, checksum settings, retries and timeouts.
      driver = new R2Driver(storage)
      const client = driver.client
      let next = 0
      load = closedLoops(scenario, async () => {
        const key = `direct/${next++}.png`
        const stored = await client.send(
          new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: image, ContentLength: image.length, ContentType: 'image/png' }),
        )
        const wrong = sameEtag({ etag: stored.ETag })
        if (wrong) throw new Error(wrong)
        return key
      })
      break
    }
    case 'naive':
      sut = await startNaiveRoute(s3)
      load = closedLoops(scenario, () => post(`http://127.0.0.1:${sut!.port}/upload`, { body: form() }, sameEtag))
      break
    case 'naiveBytes': {
      const { contentType, body } = await formBytes()
      sut = await startNaiveRoute(s3)
      const url = `http://127.0.0.1:${sut.port}/upload`
      load = closedLoops(scenario, () => postBytes(url, { 'content-type': contentType }, body, agent, sameEtag))
      break
    }
    case 'form':
      sut = await startService(s3)
      load = closedLoops(scenario, () =>
        post(`http://127.0.0.1:${sut!.port}/v1/images`, { headers: { authorization }, body: form() }, sameSha256),
      )
      break
    case 'formBytes': {
      const { contentType, body } = await formBytes()
      sut = await startService(s3)
      const url = `http://127.0.0.1:${sut.port}/v1/images`
      load = closedLoops(scenario, () => postBytes(url, { authorization, 'content-type': contentType }, body, agent, sameSha256))
      break
    }
    case 'raw': {
      sut = await startService(s3)
      const url = `http://127.0.0.1:${sut.port}/v1/images?filename=bench.png`
      load = closedLoops(scenario, () => postBytes(url, { authorization, 'content-type': 'image/png' }, image, agent, sameSha256))
      break
    }
    case 'client': {
      sut = await startService(s3)
      const images = new ImageServiceClient({
        baseUrl: `http://127.0.0.1:${sut.port}`,
        apiKey: API_TOKEN,
        maxRetries: 0,
        timeoutMs: 600_000,
      })
      load = closedLoops(scenario, async () => {
        const stored = await images.upload(image, 'bench.png')
        const wrong = sameSha256(stored)
        if (wrong) throw new Error(wrong)
        return stored.key
      })
      break
    }
    case 'python':
      sut = await startService(s3)
      load = pythonLoad(`http://127.0.0.1:${sut.port}`, await imageFile(image), scenario)
      break
  }
  let measured: Result
  try {
    const { lastKey, ...result } = await measure(scenario, s3, load, sut)
    if (lastKey) {
      const stored = await s3.sha256Of(lastKey)
      if (stored !== expectedSha256) throw new Error(`${lastKey} was stored with SHA-256 ${stored}, sent ${expectedSha256}`)
    }
    measured = result
  } finally {
    agent.destroy()
    await driver?.close()
    await sut?.stop()
  }
  // Read once it has exited: every line it wrote is in.
  return { ...measured, sutProblems: sut?.problems }
}

/** Runs a scenario against an S3 server of its own; a scenario that could not run is a result with its error. */
async function runInFreshS3(candidate: Scenario, image: Buffer): Promise<Result> {
  // A fresh S3 server per scenario and round: none pays for what an earlier one stored, and S3_DIR (memory,
  // on tmpfs) holds one scenario's objects at a time. In a process of its own, as an S3 server is: sharing
  // this one's event loop, it stopped reading for seconds while undici encoded 16 forms of 50 MiB, and
  // uploads failed on it.
  const s3 = await startS3({ ownProcess: true, under: S3_DIR })
  try {
    return await runScenario(s3, candidate, image)
  } catch (error) {
    process.stderr.write(`  not measured: ${error instanceof Error ? error.stack : String(error)}\n`)
    return {
      scenario: candidate,
      error: error instanceof Error ? error.message : String(error),
      uploads: 0,
      failures: 0,
      warmupFailures: 0,
      seconds: 0,
      latenciesMs: [],
      loadCpuSeconds: 0,
      loadCpus: '',
    }
  } finally {
    await s3.stop()
  }
}

/**
 * A scenario's rounds as one result: the totals (so rates and CPU per upload weigh each round by its time
 * and uploads), every latency, the highest peak RSS. A round that could not run makes the whole scenario so.
 */
function pooled(results: Result[]): Result {
  const unmeasured = results.find((result) => result.error)
  if (unmeasured) return unmeasured
  const sum = (figure: (result: Result) => number) => results.reduce((total, result) => total + figure(result), 0)
  const seconds = sum((result) => result.seconds)
  const share = (figure: (result: Result) => number | undefined) =>
    results.every((result) => figure(result) !== undefined) ? sum((result) => figure(result)! * result.seconds) / seconds : undefined
  const distinct = (figure: (result: Result) => string | undefined) => [...new Set(results.map(figure))].join(', ')
  const peak = results.reduce((highest, result) => ((result.peakRssBytes ?? 0) > (highest.peakRssBytes ?? 0) ? result : highest))
  return {
    scenario: results[0]!.scenario,
    uploads: sum((result) => result.uploads),
    failures: sum((result) => result.failures),
    firstFailure: results.find((result) => result.failures > 0)?.firstFailure,
    warmupFailures: sum((result) => result.warmupFailures),
    firstWarmupFailure: results.find((result) => result.warmupFailures > 0)?.firstWarmupFailure,
    seconds,
    latenciesMs: results.flatMap((result) => result.latenciesMs),
    sutCpuSeconds: results[0]!.sutCpuSeconds === undefined ? undefined : sum((result) => result.sutCpuSeconds!),
    loadCpuSeconds: sum((result) => result.loadCpuSeconds),
    loadCoreBusy: share((result) => result.loadCoreBusy),
    sutCoreBusy: share((result) => result.sutCoreBusy),
    loadCpus: distinct((result) => result.loadCpus),
    sutCpus: results[0]!.sutCpus === undefined ? undefined : distinct((result) => result.sutCpus),
    peakRssBytes: peak.peakRssBytes,
    memoryAtPeak: peak.memoryAtPeak,
    sutProblems: results.flatMap((result) => result.sutProblems ?? []),
  }
}

/** The functions a system spent the most CPU in, by self time, over its newest profile. */
async function cpuProfile(dir: string, scenario: string): Promise<string[]> {
  const newest = (await readdir(dir))
    .filter((file) => file.endsWith('.cpuprofile'))
    .sort()
    .at(-1)
  if (!newest) return []
  interface ProfileNode {
    id: number
    callFrame: { functionName: string; url: string; lineNumber: number }
  }
  const profile = JSON.parse(await readFile(path.join(dir, newest), 'utf8')) as {
    nodes: ProfileNode[]
    samples: number[]
    timeDeltas: number[]
  }
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
    [...totals]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([name, us]) => `  ${((100 * us) / totalUs).toFixed(1).padStart(5)} %  ${name}`)
  return [
    `CPU profile, ${scenario} (${newest}): ${(totalUs / 1e6).toFixed(1)} s sampled, start-up and warm-up included`,
    'By self time:',
    ...top(byFunction),
    'By where the code lives:',
    ...top(byPackage),
    '',
  ]
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN
const fixed = (value: number | undefined, digits: number) => (value === undefined || !Number.isFinite(value) ? '—' : value.toFixed(digits))
const mibPerSecond = (result: Result) => (result.uploads * result.scenario.bytes) / MiB / result.seconds
const uploadsPerSecond = (result: Result) => result.uploads / result.seconds
const cpuMsPerUpload = (result: Result) => (result.sutCpuSeconds === undefined ? undefined : (1000 * result.sutCpuSeconds) / result.uploads)
const cpuSecondsPerGiB = (result: Result) =>
  result.sutCpuSeconds === undefined ? undefined : result.sutCpuSeconds / ((result.uploads * result.scenario.bytes) / GiB)
const peakRssMiB = (result: Result) => (result.peakRssBytes === undefined ? undefined : result.peakRssBytes / MiB)
/** A share of one core as a percentage; the rest of a busy core, other processes'. */
const percent = (share: number | undefined) => fixed(share === undefined ? undefined : 100 * share, 0)

function markdownTable(header: string[], rows: string[][]): string[] {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)))
  const line = (cells: string[]) =>
    `| ${widths.map((width, column) => (column === 0 ? (cells[column] ?? '').padEnd(width) : (cells[column] ?? '').padStart(width))).join(' | ')} |`
  return [
    line(header),
    `|${widths.map((width, column) => (column === 0 ? '-' : '') + '-'.repeat(width + 1) + (column === 0 ? '' : ':')).join('|')}|`,
    ...rows.map(line),
  ]
}

function resultsTable(results: Result[]): string[] {
  const rows = results.map((result) => {
    if (result.error)
      return [result.scenario.name, `not measured: ${result.error.replaceAll('|', '/').replaceAll('\n', ' ').slice(0, 200)}`]
    const sorted = [...result.latenciesMs].sort((a, b) => a - b)
    const direct = results.find(
      (other) =>
        !other.error &&
        other.scenario.system === 'direct' &&
        other.scenario.bytes === result.scenario.bytes &&
        other.scenario.concurrency === result.scenario.concurrency,
    )
    const sutSeconds = result.seconds
    const sutShare = result.sutCpuSeconds === undefined ? undefined : result.sutCpuSeconds / sutSeconds
    const loadShare = result.loadCpuSeconds / sutSeconds
    const others = (busy: number | undefined, ours: number | undefined) =>
      busy === undefined ? '—' : `${percent(ours ?? 0)} / ${percent(Math.max(0, busy - (ours ?? 0)))}`
    return [
      result.scenario.name,
      String(result.uploads),
      `${result.failures} / ${result.warmupFailures}`,
      fixed(uploadsPerSecond(result), uploadsPerSecond(result) < 10 ? 2 : 1),
      fixed(mibPerSecond(result), 1),
      direct && result !== direct ? fixed(mibPerSecond(result) / mibPerSecond(direct), 2) : '—',
      fixed(percentile(sorted, 50), 0),
      fixed(percentile(sorted, 99), 0),
      fixed(cpuMsPerUpload(result), 2),
      fixed(cpuSecondsPerGiB(result), 2),
      fixed(result.loadCpuSeconds / ((result.uploads * result.scenario.bytes) / GiB), 2),
      fixed(peakRssMiB(result), 0),
      others(result.loadCoreBusy, loadShare),
      others(result.sutCoreBusy, sutShare),
      `${result.loadCpus} / ${result.sutCpus ?? '—'}`,
    ]
  })
  return markdownTable(
    [
      'scenario',
      'uploads',
      'failed (measured / warm-up)',
      'uploads/s',
      'MiB/s',
      '÷ direct',
      'p50 ms',
      'p99 ms',
      'SUT CPU ms per upload',
      'SUT CPU s per GiB',
      'load + S3 CPU s per GiB',
      'SUT peak RSS MiB',
      'load core % (ours / others)',
      'SUT core % (SUT / others)',
      'CPUs (load / SUT)',
    ],
    rows,
  )
}

/**
 * The systems the issue's targets judge: the form as undici's FormData sends it, the same bytes sent
 * cheaply (undici's encoding costs the shared load core more CPU than the service spends), and raw bodies.
 */
const JUDGED = ['form', 'formBytes', 'raw'] as const
const JUDGED_NAMES: Record<(typeof JUDGED)[number], string> = { form: 'form (FormData)', formBytes: "form (undici's bytes)", raw: 'raw' }
/** The naive route sent by the same kind of client: a cheap sender leaves the shared core to the S3 server. */
const NAIVE_PEER: Record<(typeof JUDGED)[number], System> = { form: 'naive', formBytes: 'naiveBytes', raw: 'naiveBytes' }

/** A target judged: its figure (none when there is none to show: not measured, or no upload succeeded), the verdict, and whether it was met. */
interface Judged {
  text: string
  figure?: string
  verdict: string
  met: boolean
}

/** The issue's targets, each judged from the figures of `results`. */
function judgeTargets(results: Result[]): Judged[] {
  const find = (system: System, bytes: number, concurrency: number) =>
    results.find(
      (result) => result.scenario.system === system && result.scenario.bytes === bytes && result.scenario.concurrency === concurrency,
    )
  /** A target over some scenarios: the figure shown, and whether it was met; unsettled if any scenario is missing or had failures. */
  const target = (
    text: string,
    scenarios: (Result | undefined)[],
    judge: (...results: Result[]) => { figure: string; met: boolean },
  ): Judged => {
    if (scenarios.some((result) => !result || result.error)) return { text, verdict: 'not measured in this run', met: false }
    const measured = scenarios as Result[]
    if (measured.some((result) => result.uploads === 0)) return { text, verdict: '**no**: no upload succeeded', met: false }
    const { figure, met } = judge(...measured)
    const failed = measured.reduce((sum, result) => sum + result.failures + result.warmupFailures, 0)
    if (failed > 0) return { text, figure, verdict: `**no**: failed uploads (${failed})`, met: false }
    return { text, figure, verdict: met ? 'yes' : '**no**', met }
  }
  const rows: Judged[] = []
  const throughputs = [
    { what: '50 MiB ×4', bytes: 50 * MiB, concurrency: 4, rate: mibPerSecond, unit: 'MiB/s' },
    { what: '500 KB ×16', bytes: 500 * KB, concurrency: 16, rate: uploadsPerSecond, unit: 'uploads/s' },
  ]
  for (const { what, bytes, concurrency, rate, unit } of throughputs) {
    for (const system of JUDGED) {
      rows.push(
        target(
          `${what}, ${JUDGED_NAMES[system]}: ≥ 0.90 × direct (${unit})`,
          [find(system, bytes, concurrency), find('direct', bytes, concurrency)],
          (sut, direct) => {
            const ratio = rate(sut) / rate(direct)
            return { figure: `${ratio.toFixed(2)} ×`, met: ratio >= 0.9 }
          },
        ),
      )
    }
  }
  for (const system of JUDGED) {
    rows.push(
      target(
        `500 KB ×16, ${JUDGED_NAMES[system]}: more uploads/s than the naive route (same sender)`,
        [find(system, 500 * KB, 16), find(NAIVE_PEER[system], 500 * KB, 16)],
        (sut, naive) => ({
          figure: `${uploadsPerSecond(sut).toFixed(1)} vs ${uploadsPerSecond(naive).toFixed(1)}`,
          met: uploadsPerSecond(sut) > uploadsPerSecond(naive),
        }),
      ),
    )
  }
  const cpuCosts = [
    { what: 'CPU per 500 KB upload', bytes: 500 * KB, concurrency: 16, cost: cpuMsPerUpload, unit: 'ms' },
    { what: 'CPU per GiB (50 MiB ×4)', bytes: 50 * MiB, concurrency: 4, cost: cpuSecondsPerGiB, unit: 's' },
  ]
  for (const { what, bytes, concurrency, cost, unit } of cpuCosts) {
    for (const system of JUDGED) {
      rows.push(
        target(
          `${what}, ${JUDGED_NAMES[system]}: ≤ the naive route's (same sender)`,
          [find(system, bytes, concurrency), find(NAIVE_PEER[system], bytes, concurrency)],
          (sut, naive) => ({
            figure: `${cost(sut)!.toFixed(2)} vs ${cost(naive)!.toFixed(2)} ${unit}`,
            met: cost(sut)! <= cost(naive)!,
          }),
        ),
      )
    }
  }
  for (const system of JUDGED) {
    rows.push(
      target(`Peak RSS, 16 × 50 MiB at once, ${JUDGED_NAMES[system]}: ≤ 200 MiB`, [find(system, 50 * MiB, 16)], (sut) => ({
        figure: `${peakRssMiB(sut)!.toFixed(0)} MiB`,
        met: peakRssMiB(sut)! <= 200,
      })),
    )
  }
  return rows
}

/** The targets judged on the whole run (every round's totals), and in how many rounds each was met on its own. */
function targetsTable(results: Result[], rounds: Result[][]): string[] {
  const byRound = rounds.map(judgeTargets)
  const roundsMet = (index: number) =>
    byRound.every((judged) => judged[index]!.figure === undefined)
      ? '—'
      : `${byRound.filter((judged) => judged[index]!.met).length} of ${rounds.length}`
  const rows = judgeTargets(results).map(({ text, figure, verdict }, index) => [
    text,
    figure ?? '—',
    verdict,
    ...(rounds.length > 1 ? [roundsMet(index)] : []),
  ])
  return markdownTable(['target (issue #10)', 'this run', 'met', ...(rounds.length > 1 ? ['rounds met'] : [])], rows)
}

/** Each scenario's rate and CPU round by round: how far the machine drifted, and whether a comparison held. */
function roundsTable(rounds: Result[][]): string[] {
  const cell = (result: Result) => {
    if (result.error) return 'not measured'
    const small = result.scenario.bytes < MiB
    const rate = fixed(small ? uploadsPerSecond(result) : mibPerSecond(result), 1)
    const cpu = small ? cpuMsPerUpload(result) : cpuSecondsPerGiB(result)
    return cpu === undefined ? rate : `${rate} · ${fixed(cpu, 2)}`
  }
  return markdownTable(
    [
      'scenario: uploads/s (500 KB) or MiB/s (50 MiB) · SUT CPU ms per upload or s per GiB',
      ...rounds.map((_, index) => `round ${index + 1}`),
    ],
    rounds[0]!.map((first, index) => [first.scenario.name, ...rounds.map((round) => cell(round[index]!))]),
  )
}

/** Versions and the state of the code and machine, for the report's heading. */
const versions: { python?: string } = {}
const git = (...args: string[]) => {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return undefined
  }
}
const loadAverage = () =>
  loadavg()
    .map((value) => value.toFixed(1))
    .join(', ')

function command(): string {
  const options = Object.keys(process.env)
    .filter((name) => name.startsWith('BENCH_'))
    .sort()
    .map((name) => `${name}=${/^[\w.,/:-]*$/.test(process.env[name]!) ? process.env[name] : `'${process.env[name]}'`}`)
  return [...options, process.env.npm_lifecycle_event === 'bench' ? 'npm run bench' : 'npx tsx bench/run.ts'].join(' ')
}

// ---- the run ----

if (CPUS) {
  // Every thread of this process (the load generator, its thread pool) on the load core; threads started
  // later inherit it, and so do the processes it starts for the load side (s3rver, the Python client).
  execFileSync('taskset', ['-a', '-p', '-c', CPUS.load, String(process.pid)], { stdio: 'ignore' })
}
const chosen = SCENARIOS.filter((candidate) => ONLY.test(candidate.name))
// A target compares with direct PutObject and the naive route at the same size and concurrency: they run too.
const selected = SCENARIOS.filter(
  (candidate) =>
    chosen.includes(candidate) ||
    ((candidate.system === 'direct' || candidate.system.startsWith('naive')) &&
      chosen.some((other) => other.bytes === candidate.bytes && other.concurrency === candidate.concurrency)),
)
const startedAt = new Date()
const loadBefore = loadAverage()
// The code that runs: read now, as the checkout may change while the bench runs.
const commit = git('rev-parse', '--short', 'HEAD') ?? 'unknown'
const dirty = git('status', '--porcelain', '--untracked-files=no') ? ' with uncommitted changes' : ''
const images = new Map<number, Buffer>()
/** Each round's results, in the order of `selected`. */
const rounds: Result[][] = []
const profiles: string[] = []
try {
  for (let round = 1; round <= ROUNDS; round++) {
    const results = new Map<Scenario, Result>()
    const backward = round % 4 === 2 || round % 4 === 3
    for (const candidate of backward ? [...selected].reverse() : selected) {
      if (!images.has(candidate.bytes)) images.set(candidate.bytes, pngOfSize(candidate.bytes, images.size + 1))
      process.stderr.write(`round ${round} of ${ROUNDS}, ${candidate.name}: ${candidate.warmupSeconds} s warm-up, ${SECONDS} s measured…\n`)
      const result = await runInFreshS3(candidate, images.get(candidate.bytes)!)
      results.set(candidate, result.error ? { ...result, error: `round ${round}: ${result.error}` } : result)
      for (const line of failureNotes(result)) process.stderr.write(`  ${line}\n`)
      if (CPU_PROF_DIR && candidate.system !== 'direct')
        profiles.push(...(await cpuProfile(CPU_PROF_DIR, `${candidate.name}, round ${round}`)))
    }
    rounds.push(selected.map((candidate) => results.get(candidate)!))
  }
} finally {
  if (imageDir) await rm(imageDir, { recursive: true, force: true })
  await rm(sutLogDir, { recursive: true, force: true })
}
/** Every scenario over all its rounds. */
const results = selected.map((_, index) => pooled(rounds.map((round) => round[index]!)))

const cpuModel = cpus()[0]?.model.trim() ?? 'unknown CPU'
const report = [
  `### Run of ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC: \`${command()}\``,
  '',
  ...(process.env.BENCH_NOTE ? [process.env.BENCH_NOTE, ''] : []),
  `- Code: commit \`${commit}\`${dirty}. Node.js ${process.version} (load generator), ${SUT_NODE_VERSION} (systems under test); the service run with \`node ${[...SERVICE_NODE_OPTIONS, 'dist/server.js'].join(' ')}\`; ${versions.python ?? 'Python client not run'}; ${cpus().length} × ${cpuModel}.`,
  CPUS
    ? `- Pinned with \`taskset\`: the load generator (this process; the Python client's process in its scenarios) and s3rver (its own process) on CPU ${CPUS.load}, each system under test alone on CPU ${CPUS.sut}; read back from every process's threads (Cpus_allowed_list) in every scenario, column "CPUs". Other processes on the machine are not pinned: the core columns show their share.`
    : '- **Not pinned** (BENCH_CPUS=none): every process may run on every core.',
  `- ${ROUNDS} round${ROUNDS > 1 ? 's' : ''} of every scenario, in turns (in the order ABBA); in each, ${SECONDS} s measured after a warm-up of ${[...new Set(selected.map((candidate) => `${candidate.warmupSeconds} s at ${sizeName(candidate.bytes)}`))].join(', ')}, with a fresh s3rver (storing under ${S3_DIR}) and a fresh process for the system under test. The first table and the targets add up every round; the last table shows each round. Load average (1, 5, 15 min) before: ${loadBefore}; after: ${loadAverage()}.`,
  '',
  ...resultsTable(results),
  '',
  ...targetsTable(results, rounds),
  '',
  ...(ROUNDS > 1 ? [...roundsTable(rounds), ''] : []),
]
const notes = [
  ...results.flatMap((result) => failureNotes(result).map((line) => `${result.scenario.name}: ${line}`)),
  ...results.flatMap(({ scenario, memoryAtPeak: memory }) =>
    memory
      ? [
          `${scenario.name}: at the highest RSS sampled (${(memory.rss / MiB).toFixed(0)} MiB), V8 heap ${(memory.heapUsed / MiB).toFixed(0)} MiB used of ${(memory.heapTotal / MiB).toFixed(0)} MiB, external (Buffers) ${(memory.external / MiB).toFixed(0)} MiB`,
        ]
      : [],
  ),
  ...profiles,
]
if (notes.length > 0) report.push('```', ...notes, '```', '')
const text = report.join('\n')
process.stdout.write(`\n${text}`)
if (process.env.BENCH_APPEND) {
  await appendFile(process.env.BENCH_APPEND, `\n${text}`)
  process.stderr.write(`appended to ${process.env.BENCH_APPEND}\n`)
}
