import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Polls `check` every 10 ms until it holds. Fails after `timeoutMs`, naming what it waited for, where a bare
 * polling loop would wait out the whole test's timeout and say nothing.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const held = await settled(
    async () => await check(),
    (holds) => holds,
    timeoutMs,
  )
  if (!held) throw new Error(`timed out waiting for ${what}`)
}

/**
 * Reads `read()` every `intervalMs` until `done` holds of what it read, and returns the last reading, the
 * one at the deadline too: for a wait whose caller asserts on the state, so that a failure shows the state
 * it settled in rather than a timeout.
 */
export async function settled<T>(read: () => Promise<T>, done: (reading: T) => boolean, timeoutMs = 10_000, intervalMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const reading = await read()
    if (done(reading) || Date.now() > deadline) return reading
    await sleep(intervalMs)
  }
}
