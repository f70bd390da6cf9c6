/** What the command-line tools share about their arguments and how they end. */
import type { ParseArgsConfig } from 'node:util'

/** Bad arguments or input: nothing was attempted. */
export const EXIT_USAGE = 2
/** Some of the work failed; the output says which. */
export const EXIT_FAILED = 1
/** Stopped by SIGINT or SIGTERM. */
export const EXIT_INTERRUPTED = 130

/** An argument the tool cannot use: reported with the usage text, exit code EXIT_USAGE. */
export class UsageError extends Error {}

function wholeNumber(text: string, name: string, min: number, max: number): number {
  const value = Number(text)
  if (!/^\d+$/.test(text) || value < min || value > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`)
  return value
}

/** The service's base URL, from --url or IMAGE_SERVICE_URL, without a trailing slash. */
function serviceUrlOf(url: string | undefined, env: NodeJS.ProcessEnv): string {
  const base = (url ?? env.IMAGE_SERVICE_URL ?? '').replace(/\/+$/, '')
  if (!/^https?:\/\/[^/]/.test(base) || !URL.canParse(base)) {
    throw new UsageError("--url (or IMAGE_SERVICE_URL) must be the service's http(s) base URL")
  }
  return base
}

/** `5/s` or `120/min`: milliseconds between the starts of two requests. */
function intervalOfRate(text: string): number {
  const rate = /^(\d+(?:\.\d+)?)\/(s|min)$/.exec(text)
  if (!rate || Number(rate[1]) <= 0) throw new UsageError('--rate must look like 5/s or 120/min')
  return (rate[2] === 's' ? 1000 : 60_000) / Number(rate[1])
}

/** How a tool calls the service: where, with which key, how many at once, how fast and how patiently. */
export interface ServiceCallOptions {
  url: string
  apiKey: string | undefined
  concurrency: number
  /** Milliseconds between the starts of two requests. */
  intervalMs: number
  timeoutMs: number
  retries: number
}

/** The command-line options behind ServiceCallOptions, and --help, for parseArgs; --timeout is in seconds. */
export function serviceCallArguments(timeoutSeconds: number) {
  return {
    url: { type: 'string' },
    'api-key': { type: 'string' },
    concurrency: { type: 'string', default: '4' },
    rate: { type: 'string', default: '2/s' },
    timeout: { type: 'string', default: String(timeoutSeconds) },
    retries: { type: 'string', default: '3' },
    help: { type: 'boolean', default: false },
  } as const satisfies ParseArgsConfig['options']
}

/** Reads serviceCallArguments' values: the URL or IMAGE_SERVICE_URL, the key or IMAGE_SERVICE_API_KEY, the bounds. */
export function serviceCallOptionsOf(
  values: { url?: string; 'api-key'?: string; concurrency: string; rate: string; timeout: string; retries: string },
  env: NodeJS.ProcessEnv,
): ServiceCallOptions {
  return {
    url: serviceUrlOf(values.url, env),
    apiKey: values['api-key'] ?? env.IMAGE_SERVICE_API_KEY,
    concurrency: wholeNumber(values.concurrency, 'concurrency', 1, 64),
    intervalMs: intervalOfRate(values.rate),
    timeoutMs: wholeNumber(values.timeout, 'timeout', 1, 3600) * 1000,
    retries: wholeNumber(values.retries, 'retries', 0, 100),
  }
}

/** At most this many failures are listed at the end of a run; the rest are counted. */
const LISTED_FAILURES = 20

/**
 * The end of a run: the failures (what failed, and why), the first LISTED_FAILURES of them listed, a hint
 * to run again when anything is left, and the exit code.
 */
export function finish(
  failures: { what: string; error: string }[],
  notAttempted: number,
  stopped: boolean,
  texts: { more: string; runAgain: string },
): number {
  if (failures.length > 0) {
    console.log('Failed:')
    for (const { what, error } of failures.slice(0, LISTED_FAILURES)) console.log(`  ${what}: ${error}`)
    if (failures.length > LISTED_FAILURES) console.log(`  … and ${failures.length - LISTED_FAILURES} more${texts.more}`)
  }
  if (failures.length > 0 || notAttempted > 0) console.log(texts.runAgain)
  if (stopped) return EXIT_INTERRUPTED
  return failures.length > 0 ? EXIT_FAILED : 0
}

/**
 * A tool's entry point: reads its options (unreadable: the reason and the usage, EXIT_USAGE; none, as with
 * --help: the usage, 0), then runs it. `failure` turns an error it knows into an exit code, after saying
 * what went wrong; any other error is thrown.
 */
export async function runTool<Options>(
  usage: string,
  optionsOf: (argv: string[], env: NodeJS.ProcessEnv) => Options | undefined,
  run: (options: Options) => Promise<number>,
  failure: (error: unknown, options: Options) => number | undefined,
): Promise<number> {
  let options: Options | undefined
  try {
    options = optionsOf(process.argv.slice(2), process.env)
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${usage}`)
    return EXIT_USAGE
  }
  if (!options) {
    console.log(usage)
    return 0
  }
  try {
    return await run(options)
  } catch (error) {
    const code = failure(error, options)
    if (code === undefined) throw error
    return code
  }
}
