/** Where progress goes: a terminal gets a bar redrawn in place, anything else plain lines. */
export interface ProgressStream {
  isTTY?: boolean
  columns?: number
  write(text: string): unknown
}

const REDRAW_MS = 100
const LINE_EVERY_MS = 2000
const BAR_WIDTH = 30

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?'
  const whole = Math.round(seconds)
  const [h, m, s] = [Math.floor(whole / 3600), Math.floor((whole % 3600) / 60), whole % 60]
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}` : `${m}:${String(s).padStart(2, '0')}`
}

/** Counts, rate and ETA of what this run attempts (records to migrate, objects to delete). */
export class Progress {
  succeeded = 0
  failed = 0
  private readonly started: number
  private lastDrawn = 0
  /** The count last drawn; -1 before the first drawing. */
  private drawnDone = -1

  constructor(
    private readonly total: number,
    private readonly stream: ProgressStream,
    private readonly now: () => number = Date.now,
    /** What a success is called on the line ("migrated", "deleted"). */
    private readonly succeededLabel = 'migrated',
  ) {
    this.started = now()
  }

  get done(): number {
    return this.succeeded + this.failed
  }

  record(outcome: 'succeeded' | 'failed'): void {
    this[outcome]++
    const interval = this.stream.isTTY ? REDRAW_MS : LINE_EVERY_MS
    if (this.now() - this.lastDrawn >= interval || this.done === this.total) this.draw()
  }

  /** Draws the final counts unless they are already shown; a terminal's line is ended. */
  finish(): void {
    if (this.drawnDone !== this.done) this.draw()
    if (this.stream.isTTY) this.stream.write('\n')
  }

  private draw(): void {
    this.lastDrawn = this.now()
    this.drawnDone = this.done
    const elapsed = (this.lastDrawn - this.started) / 1000
    const rate = elapsed > 0 ? this.done / elapsed : 0
    const eta = rate > 0 ? (this.total - this.done) / rate : Number.POSITIVE_INFINITY
    const share = this.total === 0 ? 1 : this.done / this.total
    const counts = `${this.done}/${this.total} (${Math.floor(share * 100)} %), ${this.succeededLabel} ${this.succeeded}, failed ${this.failed}, ${rate.toFixed(1)}/s, ETA ${duration(eta)}`
    if (!this.stream.isTTY) {
      this.stream.write(`progress: ${counts}\n`)
      return
    }
    const filled = Math.round(share * BAR_WIDTH)
    const line = `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${counts}`
    // \r and clear-line: the bar is redrawn in place, cut to the terminal's width so it never wraps.
    this.stream.write(`\r\x1b[2K${line.slice(0, Math.max(20, (this.stream.columns || 80) - 1))}`)
  }
}
