/** Buffers are allocated in steps of this size, so that bodies of similar sizes can share them. */
const SIZE_STEP = 64 * 1024
/** Free buffers kept at most, in bytes: sixteen 500 KB bodies, or three of SINGLE_REQUEST_MAX_BYTES. */
const FREE_MAX_BYTES = 16 * 1024 * 1024

/** A free buffer up to a quarter (and a step) larger serves: more would hold memory the body does not need. */
const fits = (buffer: Buffer, bytes: number) => buffer.length >= bytes && buffer.length <= bytes * 1.25 + SIZE_STEP

/**
 * The buffers that hold bodies whole, lent again while uploads overlap: a fresh one costs new pages and
 * cold caches, far more than the copy into it (README, *Memory per upload*). One per app. Nothing is kept
 * once no loan is out: an idle service holds none.
 */
export class BodyBuffers {
  /** Oldest first: a loan takes the newest that fits, the likeliest to be still in a cache. */
  private free: Buffer[] = []
  private freeBytes = 0
  private lent = 0

  /** A buffer of at least `bytes`; each loan is ended once. Its bytes are not zeroed. */
  lend(bytes: number): Buffer {
    let index = this.free.length - 1
    while (index >= 0 && !fits(this.free[index]!, bytes)) index--
    let buffer: Buffer
    if (index === -1) {
      buffer = Buffer.allocUnsafe(Math.ceil(bytes / SIZE_STEP) * SIZE_STEP)
    } else {
      buffer = this.free.splice(index, 1)[0]!
      this.freeBytes -= buffer.length
    }
    this.lent++ // counted once it is out: an allocation that throws lends nothing
    return buffer
  }

  /**
   * Ends a loan. `reusable` is the buffer, given back once nothing can read or write it any more; without
   * it (a write that failed may still be reading it) the buffer is left to the garbage collector.
   */
  endLoan(reusable?: Buffer): void {
    this.lent--
    if (this.lent === 0) {
      this.free = []
      this.freeBytes = 0
    } else if (reusable !== undefined && this.freeBytes + reusable.length <= FREE_MAX_BYTES) {
      this.free.push(reusable)
      this.freeBytes += reusable.length
    }
  }
}
