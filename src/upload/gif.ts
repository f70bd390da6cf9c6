import { ApiError } from '../errors.js'
import { corrupt, type Size } from './frame-size.js'

type Step = 'header' | 'block' | 'descriptor' | 'label' | 'codeSize' | 'subBlock' | 'skip' | 'trailer'
/** The fixed-size fields read whole: the header with the logical screen, and an image descriptor. */
const FIELD_BYTES: Partial<Record<Step, number>> = { header: 13, descriptor: 9 }

/** Bytes in a colour table whose presence and size a packed flags byte declares. */
const colourTableBytes = (flags: number) => (flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0)

/**
 * Follows a GIF's blocks as its bytes stream past, holding a few numbers and at most 13 bytes, and
 * refuses the image as soon as the logical screen or any frame needs more than `maxPixels`: a decoder
 * allocates every frame, not only the first, and an animation may hide a huge frame deep in its body.
 * A frame is drawn on the screen grown to reach the frame's far edges, so that canvas is what is held
 * to the limit. Bytes after the trailer are ignored, as decoders do.
 */
export class GifFrameInspector {
  /** The canvas of the first frame, once its descriptor has been read: what a decoder shows. */
  firstFrame: Size | undefined
  frameCount = 0
  private step: Step = 'header'
  private afterSkip: Step = 'block'
  private remaining = 0
  private readonly field = new Uint8Array(13)
  private filled = 0
  private offset = 0
  private screen: Size = { width: 0, height: 0 }

  constructor(private readonly maxPixels: number) {}

  write(chunk: Uint8Array): void {
    let at = 0
    while (at < chunk.length && this.step !== 'trailer') {
      const fieldBytes = FIELD_BYTES[this.step]
      if (fieldBytes !== undefined) {
        const taken = Math.min(fieldBytes - this.filled, chunk.length - at)
        this.field.set(chunk.subarray(at, at + taken), this.filled)
        this.filled += taken
        at += taken
        if (this.filled < fieldBytes) break
        this.filled = 0
        if (this.step === 'header') this.readHeader()
        else this.readDescriptor()
        continue
      }
      if (this.step === 'skip') {
        const skipped = Math.min(this.remaining, chunk.length - at)
        this.remaining -= skipped
        at += skipped
        if (this.remaining === 0) this.step = this.afterSkip
        continue
      }
      const byte = chunk[at]!
      const position = this.offset + at++
      if (this.step === 'block') {
        if (byte === 0x2c) this.step = 'descriptor'
        else if (byte === 0x21) this.step = 'label'
        else if (byte === 0x3b && this.frameCount > 0) this.step = 'trailer'
        else corrupt('GIF', byte === 0x3b ? 'it ends before any frame' : `an unknown block at offset ${position}`)
      } else if (this.step === 'label' || this.step === 'codeSize') {
        this.step = 'subBlock' // then data sub-blocks until an empty one
      } else if (byte === 0) {
        this.step = 'block'
      } else {
        this.skip(byte, 'subBlock')
      }
    }
    this.offset += chunk.length
  }

  private skip(bytes: number, then: Step): void {
    this.remaining = bytes
    this.afterSkip = then
    this.step = bytes > 0 ? 'skip' : then
  }

  private readHeader(): void {
    const { field } = this
    const signature = Buffer.from(field.subarray(0, 6)).toString('latin1')
    if (signature !== 'GIF87a' && signature !== 'GIF89a') corrupt('GIF', 'it does not start with GIF87a or GIF89a')
    this.screen = { width: field[6]! | (field[7]! << 8), height: field[8]! | (field[9]! << 8) }
    const { width, height } = this.screen
    if (width * height > this.maxPixels) {
      throw new ApiError(
        'image_too_many_pixels',
        `The GIF's logical screen is ${width} × ${height} pixels; at most ${this.maxPixels} are accepted.`,
      )
    }
    this.skip(colourTableBytes(field[10]!), 'block')
  }

  private readDescriptor(): void {
    const { field, screen } = this
    const left = field[0]! | (field[1]! << 8)
    const top = field[2]! | (field[3]! << 8)
    const frame = { width: field[4]! | (field[5]! << 8), height: field[6]! | (field[7]! << 8) }
    const canvas = { width: Math.max(screen.width, left + frame.width), height: Math.max(screen.height, top + frame.height) }
    this.frameCount++
    this.firstFrame ??= canvas
    if (canvas.width * canvas.height > this.maxPixels) {
      throw new ApiError(
        'image_too_many_pixels',
        `Frame ${this.frameCount} of the GIF (${frame.width} × ${frame.height} at ${left}, ${top}) needs a canvas of ${canvas.width} × ${canvas.height} pixels; at most ${this.maxPixels} are accepted.`,
      )
    }
    this.skip(colourTableBytes(field[8]!), 'codeSize')
  }
}

/** The first frame's canvas, from the header bytes seen so far (undefined until it is known); refuses a corrupt header. */
export function gifFrameSize(header: Uint8Array): Size | undefined {
  const inspector = new GifFrameInspector(Infinity)
  inspector.write(header)
  return inspector.firstFrame
}
