/** What the command-line tools share about their arguments and how they end. */

/** Bad arguments or input: nothing was attempted. */
export const EXIT_USAGE = 2
/** Some of the work failed; the output says which. */
export const EXIT_FAILED = 1
/** Stopped by SIGINT or SIGTERM. */
export const EXIT_INTERRUPTED = 130

/** An argument the tool cannot use: reported with the usage text, exit code EXIT_USAGE. */
export class UsageError extends Error {}

export function wholeNumber(text: string, name: string, min: number, max: number): number {
  const value = Number(text)
  if (!/^\d+$/.test(text) || value < min || value > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`)
  return value
}

/** The service's base URL, from --url or IMAGE_SERVICE_URL, without a trailing slash. */
export function serviceUrlOf(url: string | undefined, env: NodeJS.ProcessEnv): string {
  const base = (url ?? env.IMAGE_SERVICE_URL ?? '').replace(/\/+$/, '')
  if (!/^https?:\/\/[^/]/.test(base) || !URL.canParse(base)) {
    throw new UsageError("--url (or IMAGE_SERVICE_URL) must be the service's http(s) base URL")
  }
  return base
}

/** `5/s` or `120/min`: milliseconds between the starts of two requests. */
export function intervalOfRate(text: string): number {
  const rate = /^(\d+(?:\.\d+)?)\/(s|min)$/.exec(text)
  if (!rate || Number(rate[1]) <= 0) throw new UsageError('--rate must look like 5/s or 120/min')
  return (rate[2] === 's' ? 1000 : 60_000) / Number(rate[1])
}
