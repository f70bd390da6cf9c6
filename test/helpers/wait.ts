import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Polls `check` every 10 ms until it holds. Fails after `timeoutMs`, naming what it waited for, where a bare
 * polling loop would wait out the whole test's timeout and say nothing.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}
