import { execFile } from 'node:child_process'
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { parse as parseToml } from 'smol-toml'
import t from 'tap'
import { buildMetricsApp } from '../src/app.js'
import type { StoredImage } from '../src/client.js'
import { loadConfig } from '../src/config.js'
import { buildTestApp } from './helpers/app.js'
import { png, pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { serviceEnv, startService } from './helpers/service-process.js'

const run = promisify(execFile)
/**
 * A command line without tap's instrumentation: tap adds an --import of its own (a dev dependency, by
 * absolute path) to NODE_OPTIONS of every process a test starts; `env -u` drops it, then execs the command.
 */
const BARE = ['env', '-u', 'NODE_OPTIONS']
const bare = (command: string, args: string[]): [string, string[]] => [BARE[0]!, [...BARE.slice(1), command, ...args]]
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const MiB = 1024 * 1024
const TOKEN = 'deploy-test-token-0123456789abcdef0123456'
const API_KEYS = `bot:${TOKEN}`

// The file's own budget, not only the slow subtest's: tap's default 30 s per file ran out first whenever
// the npm install and build below shared the two cores with another heavy test file.
t.setTimeout(240_000)

const s3 = await startS3()
t.teardown(() => s3.stop())

const packageJson = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
  engines: { node: string }
  scripts: { start: string }
  dependencies: Record<string, string>
  devDependencies: Record<string, string>
}

/** How long an early answer lingers for the client to stop sending (not exported: read from the source). */
const LINGER_MS = Number(
  /const LINGER_MS = ([\d_]+)/.exec(await readFile(path.join(ROOT, 'src/plugins/problem-details.ts'), 'utf8'))![1]!.replaceAll('_', ''),
)

// ---- the Dockerfile, read as Docker does (what the tests below need of it) ------------------------

interface Copy {
  from: string | undefined
  sources: string[]
  dest: string
  /** dest ends with '/' (or there are several sources): files go into it rather than becoming it. */
  intoDirectory: boolean
}
interface Stage {
  name: string | undefined
  /** The base image, as FROM names it. */
  image: string
  workdir: string
  env: Record<string, string>
  copies: Copy[]
  runs: string[]
  expose: number[]
  healthcheck: string[] | undefined
  cmd: string[] | undefined
  /** Every instruction in order, to replay COPY and RUN in the order they are written. */
  steps: ({ kind: 'copy'; copy: Copy } | { kind: 'run'; command: string })[]
}

function parseDockerfile(text: string): Stage[] {
  const logical = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
  const stages: Stage[] = []
  for (const line of logical) {
    const [, keyword = '', rest = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? []
    const instruction = keyword.toUpperCase()
    if (instruction === 'FROM') {
      const name = /\sAS\s+(\S+)$/i.exec(rest)?.[1]
      stages.push({
        name,
        image: rest.split(/\s+/)[0]!,
        workdir: '/',
        env: {},
        copies: [],
        runs: [],
        expose: [],
        healthcheck: undefined,
        cmd: undefined,
        steps: [],
      })
      continue
    }
    const stage = stages.at(-1)
    if (!stage) throw new Error(`${instruction} before FROM`)
    if (instruction === 'WORKDIR') stage.workdir = path.posix.resolve(stage.workdir, rest)
    else if (instruction === 'ENV') {
      for (const [, key, value] of rest.matchAll(/(\w+)=("[^"]*"|\S+)/g)) stage.env[key!] = value!.replace(/^"|"$/g, '')
    } else if (instruction === 'COPY') {
      const words = rest.split(/\s+/)
      const from = words.find((word) => word.startsWith('--from='))?.slice('--from='.length)
      const paths = words.filter((word) => !word.startsWith('--'))
      const dest = paths.at(-1)!
      const copy = {
        from,
        sources: paths.slice(0, -1),
        dest: path.posix.resolve(stage.workdir, dest),
        intoDirectory: dest.endsWith('/') || paths.length > 2,
      }
      stage.copies.push(copy)
      stage.steps.push({ kind: 'copy', copy })
    } else if (instruction === 'RUN') {
      stage.runs.push(rest)
      stage.steps.push({ kind: 'run', command: rest })
    } else if (instruction === 'EXPOSE') stage.expose.push(...rest.split(/\s+/).map((port) => Number(port.replace(/\/tcp$/, ''))))
    else if (instruction === 'HEALTHCHECK') stage.healthcheck = JSON.parse(/\bCMD\s+(\[.*\])$/.exec(rest)![1]!) as string[]
    else if (instruction === 'CMD') stage.cmd = JSON.parse(rest) as string[]
  }
  return stages
}

const stages = parseDockerfile(await readFile(path.join(ROOT, 'Dockerfile'), 'utf8'))
const runtime = stages.at(-1)!

/** .dockerignore's patterns (plain names and `*` globs, what this repository uses), as tests of a context path. */
const ignorePatterns = (await readFile(path.join(ROOT, '.dockerignore'), 'utf8').catch(() => ''))
  .split('\n')
  .map((line) => line.trim())
  .filter((line) => line && !line.startsWith('#'))
  .map(
    (pattern) =>
      new RegExp(
        `^${pattern
          .replace(/\/+$/, '')
          .replace(/[.+^${}()|[\]\\]/g, '\\$&')
          .replaceAll('*', '[^/]*')}(/|$)`,
      ),
  )
const dockerignored = (contextPath: string) => ignorePatterns.some((pattern) => pattern.test(path.posix.normalize(contextPath)))

// ---- (6) the runtime stage, reproduced ------------------------------------------------------------

/** Every file under `directory`, relative to it. */
async function filesUnder(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true })
  return entries.filter((entry) => entry.isFile()).map((entry) => path.relative(directory, path.join(entry.parentPath, entry.name)))
}

const exists = (file: string) =>
  stat(file).then(
    () => true,
    () => false,
  )

/** A package name from an import specifier: `@scope/name/sub` → `@scope/name`, `name/sub` → `name`. */
const packageOf = (specifier: string) =>
  specifier
    .split('/')
    .slice(0, specifier.startsWith('@') ? 2 : 1)
    .join('/')

t.test('the Dockerfile runtime stage, reproduced: production dependencies only, and the built server stores an upload', async (t) => {
  t.setTimeout(180_000)
  const work = await mkdtemp(path.join(tmpdir(), 'deploy-'))
  t.teardown(() => rm(work, { recursive: true, force: true }))
  const stageRoots = new Map<string, { stage: Stage; dir: string }>()
  // This environment without what npm puts in it when running `npx tap` (npm_config_local_prefix is this
  // repository: `npm ci` must install into the stage, never here), as in a clean Docker build.
  const buildEnv = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name)))

  /** Where an absolute path inside a stage's filesystem lives in this reproduction (everything is under WORKDIR). */
  const inStage = (stage: Stage, dir: string, absolute: string) => {
    const relative = path.posix.relative(stage.workdir, absolute)
    if (relative.startsWith('..')) throw new Error(`${absolute} is outside ${stage.workdir}: not reproduced`)
    return path.join(dir, relative)
  }

  /** Replays a stage's COPY and RUN lines in order; `npm ci` (all dependencies) is the repository's node_modules. */
  async function reproduce(stage: Stage, index: number): Promise<string> {
    const dir = path.join(work, stage.name ?? `stage-${index}`)
    await mkdir(dir, { recursive: true })
    for (const step of stage.steps) {
      if (step.kind === 'copy') {
        const { from, sources, dest } = step.copy
        const source = from === undefined ? undefined : stageRoots.get(from)
        if (from !== undefined && !source) throw new Error(`COPY --from=${from}: no such stage reproduced`)
        for (const item of sources) {
          const origin = source ? inStage(source.stage, source.dir, item) : path.join(ROOT, item)
          if (!source) t.notOk(dockerignored(item), `COPY ${item}: not excluded by .dockerignore`)
          // COPY of a directory copies its contents to dest; a file goes into dest when dest is a directory.
          const target = inStage(stage, dir, dest)
          const whole = (await stat(origin)).isDirectory() || !step.copy.intoDirectory
          await cp(origin, whole ? target : path.join(target, path.basename(item)), { recursive: true })
        }
        continue
      }
      for (const part of step.command.split('&&').map((command) => command.trim())) {
        if (part === 'npm ci') {
          // The full install of the build stage: the same lockfile is already installed in the repository.
          await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir')
        } else if (/^npm cache clean\b/.test(part) || /^chown\b/.test(part)) {
          // Image-size hygiene and the image's user: emptying the shared npm cache here would only slow others.
        } else {
          const command = part.replaceAll(`${stage.workdir}/`, './').replaceAll(stage.workdir, '.')
          await run(...bare('sh', ['-c', command]), { cwd: dir, env: { ...buildEnv, ...stage.env }, maxBuffer: 16 * MiB })
        }
      }
    }
    if (stage.name) stageRoots.set(stage.name, { stage, dir })
    return dir
  }

  t.ok(stages.length >= 2, `a multi-stage Dockerfile (${stages.length} stages)`)
  t.match(runtime.runs.join('\n'), /npm ci\b[^&]*--omit=dev/, 'the runtime stage installs with --omit=dev')
  t.equal(runtime.env.NODE_ENV, 'production', 'the runtime stage sets NODE_ENV=production')
  const started = Date.now()
  let app = ''
  for (const [index, stage] of stages.entries()) app = await reproduce(stage, index)
  t.comment(`stages reproduced in ${((Date.now() - started) / 1000).toFixed(1)} s`)

  // What the runtime stage holds: exactly what it copies, and production dependencies only.
  const lock = JSON.parse(await readFile(path.join(app, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> }
  const devOnly = Object.entries(lock.packages)
    .filter(([location, entry]) => location.startsWith('node_modules/') && entry.dev === true)
    .map(([location]) => location)
  t.ok(devOnly.length > 0, `the lockfile marks ${devOnly.length} packages dev-only`)
  const present = []
  for (const location of devOnly) if (await exists(path.join(app, location))) present.push(location)
  t.same(present, [], 'no dev-only package is installed')
  for (const name of ['tap', 'typescript', 'tsx', 's3rver', 'pino-pretty', 'smol-toml']) {
    t.notOk(await exists(path.join(app, 'node_modules', name)), `${name} is not installed`)
  }
  const missing = []
  for (const name of Object.keys(packageJson.dependencies))
    if (!(await exists(path.join(app, 'node_modules', name, 'package.json')))) missing.push(name)
  t.same(missing, [], 'every dependency is installed')
  t.notOk(await exists(path.join(app, 'src')), 'no TypeScript source in the runtime stage')

  // Statically: every package the compiled code imports is a production dependency, installed.
  const compiled = (await filesUnder(path.join(app, 'dist'))).filter((file) => file.endsWith('.js'))
  t.ok(compiled.includes('server.js'), 'the build produced dist/server.js')
  const imported = new Set<string>()
  for (const file of compiled) {
    const code = await readFile(path.join(app, 'dist', file), 'utf8')
    for (const [, specifier] of code.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm)) {
      if (!specifier!.startsWith('.') && !specifier!.startsWith('node:')) imported.add(packageOf(specifier!))
    }
  }
  t.ok(imported.has('fastify'), `the compiled code imports ${imported.size} packages`)
  t.same(
    [...imported].filter((name) => !(name in packageJson.dependencies)),
    [],
    'every package imported at run time is in dependencies, not devDependencies',
  )

  // The image's command, as the image runs it (NODE_ENV=production from the stage), against the local S3 server.
  const [command, ...args] = runtime.cmd!
  t.equal(command, 'node', `CMD runs node directly: ${runtime.cmd!.join(' ')}`)
  t.same(runtime.cmd, packageJson.scripts.start.split(' '), "CMD is npm start's command, node options included")
  const service = await startService({
    entry: args,
    cwd: app,
    wrapper: BARE,
    env: { ...runtime.env, ...r2Env(s3.endpoint), API_KEYS },
    echoStderr: false,
  })
  t.teardown(() => service.kill())
  const { port } = service
  const base = `http://127.0.0.1:${port}`
  const environ = (await readFile(`/proc/${service.pid}/environ`, 'utf8')).split('\0')
  t.ok(environ.includes('NODE_ENV=production'), 'the server runs under NODE_ENV=production')
  t.notOk(
    environ.some((entry) => entry.startsWith('NODE_OPTIONS=')),
    'and nothing preloaded through NODE_OPTIONS',
  )
  t.ok(
    service.stdout
      .split('\n')
      .filter(Boolean)
      .every((line) => line.startsWith('{')),
    'it logs JSON lines (production logger)',
  )

  const healthz = await fetch(`${base}/healthz`)
  t.equal(healthz.status, 200, '/healthz answers 200')
  t.same(await healthz.json(), { status: 'ok' })
  const readyz = await fetch(`${base}/readyz`)
  t.same(
    { status: readyz.status, body: await readyz.json() },
    { status: 200, body: { status: 'ready', storage: 'r2' } },
    '/readyz: the local S3 server answers',
  )
  const contract = await fetch(`${base}/openapi.yaml`)
  t.equal(contract.status, 200, 'openapi.yaml is where the compiled code reads it')
  t.match(await contract.text(), /^openapi: /m)
  for (const file of ['console', 'console/console.js']) {
    const served = await fetch(`${base}/${file}`)
    t.equal(served.status, 200, `/${file}: the console's files are where the compiled code reads them`)
    await served.arrayBuffer()
  }

  const refused = await fetch(`${base}/v1/images`, {
    method: 'POST',
    headers: { 'content-type': 'image/png' },
    body: new Uint8Array(png()),
  })
  t.equal(refused.status, 401, 'without a key an upload is refused (API keys enforced)')
  await refused.arrayBuffer()

  const image = png(32, 24)
  const raw = await fetch(`${base}/v1/images?filename=deploy.png`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'image/png' },
    body: new Uint8Array(image),
  })
  const rawBody = (await raw.json()) as StoredImage
  t.equal(raw.status, 201, `a raw upload is stored: ${JSON.stringify(rawBody).slice(0, 200)}`)
  t.equal(rawBody.width, 32)
  t.equal(await s3.sha256Of(rawBody.key), sha256(image), 'byte-exact in the bucket (one PutObject)')

  // Over 5 MiB, as a form: the multipart parser, the spool file, then one PutObject of exact length.
  const large = pngOfSize(6 * MiB, 5)
  const form = multipartBody([
    { name: 'context', value: 'portraits' },
    { name: 'file', filename: 'large.png', contentType: 'image/png', data: large },
  ])
  const streamed = await fetch(`${base}/v1/images`, {
    method: 'POST',
    headers: { ...form.headers, authorization: `Bearer ${TOKEN}` },
    body: new Uint8Array(form.payload),
  })
  const streamedBody = (await streamed.json()) as StoredImage
  t.equal(streamed.status, 201, `a 6 MiB form upload is stored: ${JSON.stringify(streamedBody).slice(0, 200)}`)
  t.equal(await s3.sha256Of(streamedBody.key), sha256(large), 'byte-exact in the bucket (spooled upload)')

  const metrics = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })
  t.match(await metrics.text(), /^r2_uploads_total 2$/m, '/metrics counts both uploads')

  // The image's own HEALTHCHECK command, as Docker runs it (PORT from the environment).
  const [checkCommand, ...checkArgs] = runtime.healthcheck!
  t.equal(checkCommand, 'node')
  const check = await run(...bare(process.execPath, checkArgs), { env: serviceEnv({ PORT: String(port) }) }).then(
    () => 0,
    (error: { code: number }) => error.code,
  )
  t.equal(check, 0, 'the Dockerfile HEALTHCHECK passes')

  t.equal((await service.stop('SIGTERM')).code, 0, 'SIGTERM: exit 0')
  const errors = service.stderr
  t.notMatch(
    errors,
    /ERR_MODULE_NOT_FOUND|Cannot find (module|package)/,
    `nothing missing at run time${errors ? `: ${errors.slice(0, 500)}` : ''}`,
  )
})

t.test('every stage runs the Node the suite is also tested on (the LTS .ci/run pins), a major engines names', async (t) => {
  const pinned = /^NODE_LTS_VERSION=(\d+)\.(\d+)\.\d+$/m.exec(await readFile(path.join(ROOT, '.ci/run'), 'utf8'))
  if (!pinned) return t.fail('.ci/run sets NODE_LTS_VERSION=<major.minor.patch>')
  const [, major, minor] = pinned
  for (const stage of stages) {
    t.match(stage.image, new RegExp(`^node:${major}\\.${minor}(\\.\\d+)?-`), `${stage.name}: FROM ${stage.image} is Node ${major}.${minor}`)
  }
  const majors = packageJson.engines.node.split('||').map((range) => /^\s*\^(\d+)/.exec(range)?.[1])
  t.ok(majors.includes(major), `engines.node (${packageJson.engines.node}) names Node ${major}`)
})

// ---- (7) fly.toml against the code's defaults ---------------------------------------------------------

interface FlyToml {
  kill_signal?: string
  kill_timeout?: string | number
  env?: Record<string, string>
  http_service?: {
    internal_port?: number
    force_https?: boolean
    concurrency?: { type?: string; soft_limit?: number; hard_limit?: number }
    checks?: { method?: string; path?: string; headers?: Record<string, string>; timeout?: string }[]
  }
  metrics?: { port?: number; path?: string }
}

/** Fly durations: "30s", "1m", "500ms", or a bare number of seconds. */
function durationMs(value: string | number | undefined): number {
  if (typeof value === 'number') return value * 1000
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(value ?? '')
  if (!match) return Number.NaN
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] as 'ms' | 's' | 'm' | 'h']
}

t.test('fly.toml agrees with the code and the Dockerfile: ports, health check, metrics, signal and kill timeout', async (t) => {
  const fly = parseToml(await readFile(path.join(ROOT, 'fly.toml'), 'utf8')) as FlyToml
  const env = fly.env ?? {}
  // The secrets are set with `fly secrets set` (docs/deploy.md); placeholders stand in for them.
  const secrets = {
    R2_ACCOUNT_ID: '0123456789abcdef0123456789abcdef',
    R2_ACCESS_KEY_ID: 'id',
    R2_SECRET_ACCESS_KEY: 'secret',
    R2_PUBLIC_URL: 'https://images.example.com',
    API_KEYS,
  }
  const config = loadConfig({ ...env, ...secrets })

  t.equal(env.NODE_ENV, 'production', 'NODE_ENV=production')
  t.throws(
    () => loadConfig({ ...env, ...secrets, API_KEYS: '' }),
    { message: /API_KEYS: required under NODE_ENV=production/ },
    'the production rules apply',
  )
  t.equal(config.storage.driver, 'r2', 'it stores on R2')
  t.notMatch(config.host, /^(127\.|localhost$|::1$)/, `HOST ${config.host} is reachable by Fly's proxy (not loopback)`)

  // The API port.
  const internalPort = fly.http_service?.internal_port
  t.equal(internalPort, Number(env.PORT), 'http_service.internal_port is [env] PORT')
  t.equal(config.port, internalPort, 'the service listens on internal_port')
  t.ok(runtime.expose.includes(internalPort!), `the Dockerfile EXPOSEs ${internalPort} (EXPOSE ${runtime.expose.join(' ')})`)
  t.equal(Number(runtime.env.PORT), internalPort, 'the image defaults PORT to the same port')
  t.equal(fly.http_service?.force_https, true, 'force_https')

  // The metrics port.
  t.equal(fly.metrics?.port, Number(env.METRICS_PORT), '[metrics].port is [env] METRICS_PORT')
  t.equal(config.metricsPort, fly.metrics?.port, 'the service serves metrics on that port')
  t.ok(runtime.expose.includes(fly.metrics!.port!), `the Dockerfile EXPOSEs ${fly.metrics?.port}`)
  t.not(fly.metrics?.port, internalPort, 'metrics apart from the API port')
  t.equal(fly.metrics?.path, '/metrics', '[metrics].path is /metrics')
  const { app } = await buildTestApp(t, { ...env, ...secrets, ...r2Env(s3.endpoint) })
  const metricsApp = await buildMetricsApp(app.metricsRegistry)
  t.teardown(() => metricsApp.close())
  t.ok(metricsApp.hasRoute({ method: 'GET', url: fly.metrics!.path! }), 'the metrics server has GET [metrics].path')
  const scraped = await metricsApp.inject({ method: 'GET', url: fly.metrics!.path! })
  t.equal(scraped.statusCode, 200, 'the metrics server answers a scrape without a key')
  t.match(scraped.body, /^# TYPE r2_uploads_total counter$/m)
  t.equal(
    (await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${TOKEN}` } })).statusCode,
    404,
    'and the API port does not serve them',
  )

  // The health check.
  const checks = fly.http_service?.checks ?? []
  t.equal(checks.length, 1, 'one HTTP health check')
  const check = checks[0] ?? {}
  t.equal(check.path, '/healthz', 'the check is GET /healthz (liveness, not /readyz)')
  t.equal(check.method ?? 'GET', 'GET')
  t.equal(check.headers?.['X-Forwarded-Proto'], 'https', 'the check sends X-Forwarded-Proto: https')
  t.ok(app.hasRoute({ method: 'GET', url: check.path! }), 'the app registers GET /healthz')
  const answer = await app.inject({ method: 'GET', url: check.path!, headers: check.headers })
  t.equal(answer.statusCode, 200, 'the check, as Fly sends it (no API key), gets 200')
  t.ok(durationMs(check.timeout) > 0, `the check has a timeout (${check.timeout})`)

  // Concurrency: the proxy's soft limit is the service's own upload limit (fly.toml says so).
  t.equal(fly.http_service?.concurrency?.soft_limit, config.maxConcurrentUploads, 'soft_limit is MAX_CONCURRENT_UPLOADS')
  t.ok((fly.http_service?.concurrency?.hard_limit ?? 0) > config.maxConcurrentUploads, 'hard_limit is above it')

  // Stopping: the signal the service closes gracefully on, and time enough for that close.
  const { signalEvents } = createRequire(import.meta.url)('close-with-grace/events/signal.events.js') as { signalEvents: string[] }
  t.equal(fly.kill_signal, 'SIGTERM', 'kill_signal is SIGTERM (Fly defaults to SIGINT)')
  t.ok(signalEvents.includes(fly.kill_signal!), 'close-with-grace closes on it')
  const killTimeoutMs = durationMs(fly.kill_timeout)
  t.ok(killTimeoutMs <= 300_000, `kill_timeout ${fly.kill_timeout} is within Fly's maximum of 300 s`)
  // SHUTDOWN_TIMEOUT_MS from [env] if set there, else the code's default (config.shutdownTimeoutMs either way).
  // After it, the uploads still in flight are aborted and answered 503 at once; but an answer sent before
  // the body was read keeps its connection open up to LINGER_MS while the client still sends (closing
  // earlier would reset it and lose the answer), and the close waits for every connection: the process
  // may need SHUTDOWN_TIMEOUT_MS + LINGER_MS (measured in test/shutdown.test.ts), then a moment to exit
  // (1 s allowed here). Fly's SIGKILL must not come before that.
  const needed = config.shutdownTimeoutMs + LINGER_MS + 1000
  t.ok(
    killTimeoutMs >= needed,
    `kill_timeout (${killTimeoutMs} ms) covers SHUTDOWN_TIMEOUT_MS (${config.shutdownTimeoutMs}) + LINGER_MS (${LINGER_MS}) + 1 s to exit = ${needed} ms`,
  )
})
