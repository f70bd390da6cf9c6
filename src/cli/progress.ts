/** Where progress goes: a terminal gets a bar redrawn in place, anything else plain lines. */
export interface ProgressStream {
  isTTY?: boolean
  columns?: number
  write(text: string): unknown
}

const REDRAW_MS = 100
const LINE_EVERY_MS = 2000
const BAR_WIDTH = 30
/** A bar narrower than this says nothing the percentage does not: it is left out. */
const MIN_BAR_WIDTH = 10
/**
 * Rate and ETA are shown once this many records have ended and this much time has passed: from one
 * record answered in a millisecond (an instant 404), a rate is noise and an ETA a false promise.
 */
const ESTIMATE_AFTER_RECORDS = 5
const ESTIMATE_AFTER_MS = 3000

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
    const estimable = this.done >= ESTIMATE_AFTER_RECORDS && elapsed * 1000 >= ESTIMATE_AFTER_MS
    const rate = estimable ? this.done / elapsed : undefined
    const eta = `ETA ${rate === undefined ? '?' : duration((this.total - this.done) / rate)}`
    const share = this.total === 0 ? 1 : this.done / this.total
    const position = `${this.done}/${this.total}`
    const percentage = `${Math.floor(share * 100)} %`
    const speed = `${rate === undefined ? '?' : rate.toFixed(1)}/s`
    const tally = `${this.succeededLabel} ${this.succeeded}, failed ${this.failed}`
    // Most detailed first; the ETA is in every one, so a narrow terminal loses the rest before it.
    const texts = [
      `${position} (${percentage}), ${tally}, ${speed}, ${eta}`,
      `${position} (${percentage}), failed ${this.failed}, ${eta}`,
      `${position}, ${eta}`,
      eta,
    ]
    if (!this.stream.isTTY) {
      this.stream.write(`progress: ${texts[0]}\n`)
      return
    }
    // One cell short of the width: writing the last column makes some terminals wrap.
    const width = Math.max(1, (this.stream.columns || 80) - 1)
    const text = texts.find((candidate) => candidate.length <= width) ?? eta.slice(0, width)
    const barWidth = Math.min(BAR_WIDTH, width - text.length - 3)
    const filled = Math.round(share * barWidth)
    const bar = barWidth >= MIN_BAR_WIDTH ? `[${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}] ` : ''
    // \r and clear-line: the line is redrawn in place.
    this.stream.write(`\r\x1b[2K${bar}${text}`)
  }
}
