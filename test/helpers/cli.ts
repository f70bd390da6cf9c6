import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { serviceEnv } from './service-process.js'
import { until } from './wait.js'

export type CliProcess = ReturnType<typeof spawn>

/**
 * Runs one of the command-line tools (`src/cli/<tool>.ts`, through tsx) to its end with IMAGE_SERVICE_API_KEY
 * set to `token`; `whenRunning` may act on the process meanwhile (interrupt it), seeing its stderr so far.
 * If `whenRunning` fails, the tool is killed, so that it does not go on (deleting, say) after its test.
 */
export async function runCli(
  tool: string,
  token: string,
  args: string[],
  whenRunning?: (child: CliProcess, stderr: () => string) => Promise<void>,
) {
  const child = spawn(process.execPath, ['--import', 'tsx', `src/cli/${tool}.ts`, ...args], {
    env: serviceEnv({ IMAGE_SERVICE_API_KEY: token }),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  try {
    await whenRunning?.(child, () => stderr)
  } catch (error) {
    child.kill('SIGKILL')
    throw error
  }
  const [code, signal] = await exited
  return { code, signal, stdout, stderr }
}

/**
 * `until`, for a tool's test: also ends as soon as the tool exits (by code or by signal), so that the test's
 * assertion on how it exited says what happened, instead of a timeout later.
 */
export async function untilOrExit(child: CliProcess, what: string, check: () => boolean | Promise<boolean>, timeoutMs: number) {
  await until(what, async () => (await check()) || child.exitCode !== null || child.signalCode !== null, timeoutMs)
}
