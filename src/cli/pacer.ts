import { setTimeout as sleep } from 'node:timers/promises'
import { ImageServiceError, ImageServiceUnreachableError } from '../client.js'

/** Statuses after which the same request is tried again: the service asks to come back later. */
export const RETRY_STATUSES = new Set([429, 503])
const MAX_RETRY_WAIT_S = 60

/** The pause before trying again after `tries` failed tries: the answer's Retry-After (at most a minute), else 1, 2, 4 … s. */
export const retryDelayMs = (tries: number, retryAfterS?: number): number =>
  1000 * (retryAfterS ? Math.min(retryAfterS, MAX_RETRY_WAIT_S) : 2 ** tries)

/** Starts at most one request per interval, whichever worker asks. */
export class StartPacer {
  private next = 0

  constructor(private readonly intervalMs: number) {}

  async wait(): Promise<void> {
    const now = Date.now()
    const at = Math.max(now, this.next)
    this.next = at + this.intervalMs
    if (at > now) await sleep(at - now)
  }

  /**
   * Runs `call` at the pace, tried again up to `retries` times after 429, 503 or no answer. For calls that
   * may be repeated as they are (a listing, a delete): an upload or an import needs its Idempotency-Key.
   */
  async call<T>(call: () => Promise<T>, retries: number): Promise<T> {
    for (let tries = 0; ; tries++) {
      await this.wait()
      try {
        return await call()
      } catch (error) {
        const answered = error instanceof ImageServiceError
        if (!(error instanceof ImageServiceUnreachableError || (answered && RETRY_STATUSES.has(error.status))) || tries >= retries)
          throw error
        await sleep(retryDelayMs(tries, answered ? error.retryAfter : undefined))
      }
    }
  }
}
