/** Buffers are allocated in steps of this size, so that bodies of similar sizes can share them. */
const SIZE_STEP = 64 * 1024
/** Free buffers kept at most, in bytes: sixteen 500 KB bodies, or three of SINGLE_REQUEST_MAX_BYTES. */
const FREE_MAX_BYTES = 16 * 1024 * 1024

/**
 * The buffers that hold bodies whole, reused while uploads overlap. A fresh 500 KB Buffer costs far more
 * than copying 500 KB: new pages from the kernel, cold caches, and external memory that brings V8's next
 * collection sooner. Handing the next upload the buffer the last one has finished with took the CPU per
 * 500 KB upload from 3.6–4.5 to 3.1–3.2 ms (Node 24, alternating runs: bench/RESULTS.md, *Seventh pass*).
 * Nothing is kept once no upload holds a buffer: an idle service holds none.
 */
export class BodyBuffers {
  private free: Buffer[] = []
  private freeBytes = 0
  private lent = 0

  /** A buffer of at least `bytes`; each buffer taken is settled once. Its bytes are not zeroed. */
  take(bytes: number): Buffer {
    // A free buffer up to a quarter (and a step) larger serves: more would hold memory the body does not need.
    const index = this.free.findIndex((buffer) => buffer.length >= bytes && buffer.length <= bytes * 1.25 + SIZE_STEP)
    const buffer = index === -1 ? Buffer.allocUnsafe(Math.ceil(bytes / SIZE_STEP) * SIZE_STEP) : this.free.splice(index, 1)[0]!
    if (index !== -1) this.freeBytes -= buffer.length
    this.lent++ // counted once it is out: an allocation that throws lends nothing
    return buffer
  }

  /**
   * Ends a loan. `reusable` is the buffer, given back once nothing can read or write it any more; without
   * it (a write that failed may still be reading it) the buffer is left to the garbage collector.
   */
  settle(reusable?: Buffer): void {
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
