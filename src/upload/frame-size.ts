import { ApiError } from '../errors.js'

/**
 * Strict readers of the size a decoder will use, for the formats where image-size can be fooled: it
 * resynchronises past garbage in a JPEG (so a real frame header can hide behind a fake one), and reads
 * only a GIF's screen size (its frames may be far larger: gif.ts reads them). Each returns undefined
 * while the bytes seen so far end before the answer, and refuses a header that is not well formed.
 */
export type Size = { width: number; height: number }

export function corrupt(format: string, why: string): never {
  throw new ApiError('unsupported_media_type', `The ${format} header is corrupt: ${why}.`)
}

/** SOF0–SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range. */
const isFrameHeader = (marker: number) => marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc

/** The first frame header's size, walking the segments one by one as a decoder does: no resynchronising. */
export function jpegFrameSize(data: Uint8Array): Size | undefined {
  if (data[0] !== 0xff || data[1] !== 0xd8) corrupt('JPEG', 'it does not start with SOI')
  let at = 2
  for (;;) {
    if (at >= data.length) return undefined
    if (data[at] !== 0xff) corrupt('JPEG', `a byte at offset ${at} is not a marker`)
    while (data[at] === 0xff) if (++at >= data.length) return undefined // fill bytes
    const marker = data[at++]!
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) continue // markers without a segment
    if (marker === 0x00 || marker === 0xd8 || marker === 0xd9 || marker === 0xda)
      corrupt('JPEG', 'the image data comes before a frame header')
    if (at + 2 > data.length) return undefined
    const length = (data[at]! << 8) | data[at + 1]!
    if (length < 2) corrupt('JPEG', 'a segment is shorter than its length field')
    if (isFrameHeader(marker)) {
      if (at + 7 > data.length) return undefined
      return { height: (data[at + 3]! << 8) | data[at + 4]!, width: (data[at + 5]! << 8) | data[at + 6]! }
    }
    at += length
  }
}
