import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { cp, mkdtemp, open, readFile, rm, symlink } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** `npm start`'s command, `node <options> dist/server.js` (the Dockerfile's CMD is the same): its node options. */
const startScript = (JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start
export const PRODUCTION_NODE_OPTIONS = startScript.split(' ').slice(1, -1)

/** The node arguments that run the service: its source through tsx (no build), or dist/ as `npm start` does. */
const ENTRIES = {
  source: [...PRODUCTION_NODE_OPTIONS, '--import', 'tsx', 'src/server.ts'],
  built: [...PRODUCTION_NODE_OPTIONS, 'dist/server.js'],
}

/**
 * The service compiled as the image's build stage does (`tsc -p tsconfig.build.json`), in a directory of its
 * own laid out like the image's /app (dist/, openapi.yaml, console/, package.json, node_modules): start it with
 * `entry: 'built'` and this `cwd`. What is measured is then the code production runs, without tsx.
 */
export async function buildService(): Promise<{ cwd: string; remove(): Promise<void> }> {
  const cwd = await mkdtemp(path.join(tmpdir(), 'service-build-'))
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
  await promisify(execFile)(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', path.join(cwd, 'dist')], {
    cwd: ROOT,
    env: { PATH: process.env.PATH },
  })
  // What the Dockerfile's runtime stage copies beside dist/ (test/deploy.test.ts checks the image itself).
  for (const item of ['openapi.yaml', 'package.json', 'console']) await cp(path.join(ROOT, item), path.join(cwd, item), { recursive: true })
  await symlink(path.join(ROOT, 'node_modules'), path.join(cwd, 'node_modules'), 'dir')
  return { cwd, remove: () => rm(cwd, { recursive: true, force: true }) }
}

/** The message of the line the service logs once it listens; its `address` names the port it got. */
const READY_MESSAGE = 'image-upload-service ready'

/**
 * A clean environment for the service process. Coverage is off there: tap would otherwise merge the
 * child's coverage, compiled by tsx with other source maps, into the report and garble its line numbers.
 */
export function serviceEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, _TAPJS_PROCESSINFO_COVERAGE_: '0', ...env }
}

export interface ServiceOptions {
  /** Added to a clean environment (serviceEnv), over HOST=127.0.0.1 and PORT=0 (a free port: tests never collide). */
  env?: NodeJS.ProcessEnv
  /** 'source' (the default), 'built' (dist/server.js), or the node arguments that run it (a Dockerfile's CMD). */
  entry?: keyof typeof ENTRIES | string[]
  /** Where it runs: the repository root unless given. */
  cwd?: string
  /** The node binary: this process's unless given. */
  node?: string
  /** Options for node itself, before the entry (e.g. --cpu-prof). */
  nodeArgs?: string[]
  /** A command that execs node, e.g. ['taskset', '-c', '1']: its pid stays the service's. */
  wrapper?: string[]
  /**
   * Keep every log line (the default); false drops what comes after the ready line, and a test keeps only
   * the later lines it accepts (a long benchmark).
   */
  keepLogs?: boolean | ((line: LogLine) => boolean)
  /**
   * Its stdout goes to this file, not to a pipe this process reads as the lines come: only the file is read
   * until the ready line, the rest once the process has exited. For the bench, where reading the log as it
   * comes would spend the load generator's CPU on the system under test's log.
   */
  logFile?: string
  /** Copy its stderr to this process's as it comes (the default); it is collected either way. */
  echoStderr?: boolean
  /** SIGKILL it if it still runs after this long. */
  killAfterMs?: number
  /** How long startService waits for the ready line before it kills the service and gives up (default 60 s). */
  readyWithinMs?: number
}

/** A log line: pino's JSON, or `{ msg }` for a line that is not JSON. */
export interface LogLine {
  msg?: string
  [field: string]: unknown
}

export interface ServiceExit {
  code: number | null
  signal: NodeJS.Signals | null
  /** When the process exited (Date.now()). */
  at: number
}

/** Service processes still running: killed if this process ends first (a tap timeout skips teardowns). */
const running = new Set<ChildProcess>()
let killOnExit = false

/** Starts the service in a process of its own and returns at once; `exited` settles when it ends. */
export function spawnService(options: ServiceOptions = {}) {
  const { entry = 'source', node = process.execPath, nodeArgs = [], wrapper = [], keepLogs = true, echoStderr = true } = options
  const entryArgs = typeof entry === 'string' ? ENTRIES[entry] : entry
  const [command, ...args] = [...wrapper, node, ...nodeArgs, ...entryArgs] as [string, ...string[]]
  const logFd = options.logFile === undefined ? undefined : openSync(options.logFile, 'w')
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: serviceEnv({ HOST: '127.0.0.1', PORT: '0', ...options.env }),
    stdio: ['ignore', logFd ?? 'pipe', 'pipe'],
  })
  if (logFd !== undefined) closeSync(logFd) // the child holds its own
  running.add(child)
  if (!killOnExit) {
    killOnExit = true
    process.once('exit', () => {
      for (const orphan of running) orphan.kill('SIGKILL')
    })
  }
  const killTimer = options.killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), options.killAfterMs).unref()
  // Timed at 'exit', settled at 'close': only then has every line the process wrote been read.
  let exitedAt = 0
  child.once('exit', () => {
    exitedAt = Date.now()
    clearTimeout(killTimer)
    running.delete(child)
  })
  const exited = new Promise<ServiceExit>((resolve) =>
    child.once('close', (code, signal) => {
      // A log file is read to its end first: then every line is in, as with a pipe.
      const allRead = logTail ? logTail.finish() : Promise.resolve()
      void allRead.then(() => resolve({ code, signal, at: exitedAt }))
    }),
  )

  let stdout = ''
  let stderr = ''
  // A command that cannot be run (a wrapper not installed) is reported where a failed start is.
  child.once('error', (error) => (stderr += `${error.message}\n`))
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
    if (echoStderr) process.stderr.write(chunk)
  })
  const logs: LogLine[] = []
  const waiters: { test: (line: LogLine) => boolean; resolve: (line: LogLine) => void }[] = []
  let pending = ''
  /** Which lines are kept, once the service is ready. */
  let keeps: ((line: LogLine) => boolean) | undefined
  const onLines = (chunk: string) => {
    if (!keeps) stdout += chunk
    pending += chunk
    const lines = pending.split('\n')
    pending = lines.pop()!
    for (const text of lines) {
      let line: LogLine
      try {
        line = JSON.parse(text) as LogLine
      } catch {
        line = { msg: text }
      }
      if (keeps && !keeps(line)) continue
      logs.push(line)
      for (const waiter of [...waiters]) {
        if (waiter.test(line)) {
          waiters.splice(waiters.indexOf(waiter), 1)
          waiter.resolve(line)
        }
      }
    }
  }
  child.stdout?.setEncoding('utf8').on('data', onLines)
  const logTail = options.logFile === undefined ? undefined : tailFile(options.logFile, onLines)

  /** The first log line (already written or to come) matching `test`; rejects if the process exits first. */
  const waitForLog = (test: (line: LogLine) => boolean, what: string): Promise<LogLine> => {
    const seen = logs.find(test)
    if (seen) return Promise.resolve(seen)
    return Promise.race([
      new Promise<LogLine>((resolve) => waiters.push({ test, resolve })),
      exited.then(({ code, signal }) => {
        const hint = entry === 'built' ? ' (is dist/ built? npm run build)' : ''
        throw new Error(
          `the service exited (${code ?? signal}) before logging ${what}${hint}: ${stderr.slice(-2000)}${stdout.slice(-2000)}`,
        )
      }),
    ])
  }

  /** Sends `signal` unless the process has already ended. */
  const kill = (signal: NodeJS.Signals = 'SIGKILL') => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
  }

  return {
    child,
    pid: child.pid!,
    exited,
    logs,
    /** Everything written to stdout so far (up to the ready line only, unless keepLogs is true). */
    get stdout() {
      return stdout
    },
    get stderr() {
      return stderr
    },
    waitForLog,
    kill,
    /** Resolves once the service listens, with its port (from the ready line). */
    async ready(): Promise<number> {
      const { readyWithinMs = 60_000 } = options
      let timer: NodeJS.Timeout | undefined
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          kill()
          reject(new Error(`the service was not ready within ${readyWithinMs} ms: ${stderr.slice(-2000)}${stdout.slice(-2000)}`))
        }, readyWithinMs)
      })
      const ready = waitForLog((candidate) => candidate.msg === READY_MESSAGE && typeof candidate.address === 'string', 'that it is ready')
      const line = await Promise.race([ready, late]).finally(() => clearTimeout(timer))
      logTail?.pause()
      if (keepLogs === false) {
        child.stdout?.off('data', onLines)
        child.stdout?.resume()
        logTail?.drop()
      } else if (keepLogs !== true) keeps = keepLogs
      return Number(new URL(line.address as string).port)
    },
    /** Sends `signal` (SIGTERM: a graceful close) and resolves with how the process ended. */
    async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<ServiceExit> {
      kill(signal)
      return exited
    },
  }
}

/**
 * Hands what is appended to `file` to `onText`: every 20 ms until paused, and all that is left on finish().
 * drop() skips what is left instead.
 */
function tailFile(file: string, onText: (text: string) => void) {
  let offset = 0
  let dropped = false
  const decoder = new TextDecoder()
  const buffer = Buffer.allocUnsafe(64 * 1024) // decoded before the next read reuses it
  const readOn = async () => {
    const handle = await open(file, 'r')
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset)
        if (bytesRead === 0) return
        offset += bytesRead
        onText(decoder.decode(buffer.subarray(0, bytesRead), { stream: true }))
      }
    } finally {
      await handle.close()
    }
  }
  let reading = Promise.resolve()
  // A read that fails leaves the lines unread: a start then times out waiting for its ready line.
  const readOnQuietly = () => readOn().catch(() => {})
  const timer = setInterval(() => {
    reading = reading.then(readOnQuietly)
  }, 20)
  return {
    pause: () => clearInterval(timer),
    drop: () => {
      dropped = true
    },
    finish: async () => {
      clearInterval(timer)
      await reading
      if (!dropped) await readOnQuietly()
    },
  }
}

/** Starts the service and resolves once its ready line names the port it listens on. */
export async function startService(options: ServiceOptions = {}) {
  const service = spawnService(options)
  const port = await service.ready()
  const target = { host: '127.0.0.1', port }
  return Object.assign(service, { port, target, url: `http://${target.host}:${port}` })
}
