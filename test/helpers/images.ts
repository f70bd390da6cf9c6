import { createHash } from 'node:crypto'
import { endianness } from 'node:os'
import { crc32, deflateSync } from 'node:zlib'

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4)
  length.writeUInt32BE(data.length)
  const typed = Buffer.concat([Buffer.from(type, 'ascii'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(typed))
  return Buffer.concat([length, typed, crc])
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

function pngHeader(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.set([8, 2, 0, 0, 0], 8) // 8-bit RGB
  return Buffer.concat([PNG_SIGNATURE, pngChunk('IHDR', ihdr)])
}

/** Only a PNG's signature, header and end: claims any size in a few dozen bytes (a pixel bomb's header). */
export function pngHeaderOnly(width: number, height: number): Buffer {
  return Buffer.concat([pngHeader(width, height), pngChunk('IEND', Buffer.alloc(0))])
}

/** A real, decodable PNG of one colour (grey unless `rgb` is given). */
export function png(width = 4, height = 3, rgb: [number, number, number] = [0x7f, 0x7f, 0x7f]): Buffer {
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => rgb).flat())])
  const pixels = Buffer.concat(Array.from({ length: height }, () => row))
  return Buffer.concat([pngHeader(width, height), pngChunk('IDAT', deflateSync(pixels)), pngChunk('IEND', Buffer.alloc(0))])
}

/** Deterministic pseudo-random bytes (xorshift), so large bodies are not trivially compressible. */
export function noise(length: number, seed = 1): Buffer {
  const out = Buffer.alloc(Math.ceil(length / 4) * 4)
  // Written a word at a time (the fault suite makes hundreds of megabytes); the words are little-endian.
  const words = new Uint32Array(out.buffer, out.byteOffset, out.length / 4)
  let x = seed >>> 0 || 1
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    words[i] = x >>> 0
  }
  if (endianness() === 'BE') out.swap32()
  return out.subarray(0, length)
}

/**
 * A PNG of exactly `size` bytes laid out as encoders write one: a valid header, then the image data (noise in
 * one IDAT chunk; not decodable), then IEND. Type detection stops at the first IDAT, as on real PNGs; with
 * `chunkType` (a private chunk, say) the noise comes first and the type is decided without an IDAT.
 */
export function pngOfSize(size: number, seed = 1, chunkType = 'IDAT'): Buffer {
  const head = pngHeader(16, 16)
  const end = pngChunk('IEND', Buffer.alloc(0))
  const payload = size - head.length - end.length - 12
  if (payload < 0) throw new Error(`a PNG needs at least ${head.length + end.length + 12} bytes`)
  return Buffer.concat([head, pngChunk(chunkType, noise(payload, seed)), end])
}

/**
 * A PNG of `size` bytes produced chunk by chunk, never held whole in memory; `sha256()` is the hash of
 * everything yielded so far (call it after the stream is consumed).
 */
export function pngStream(size: number, chunkSize = 64 * 1024) {
  const hash = createHash('sha256')
  async function* generate() {
    const head = pngHeader(16, 16)
    const chunkHeader = Buffer.alloc(8)
    chunkHeader.writeUInt32BE(size - head.length - 8, 0)
    chunkHeader.write('IDAT', 4, 'ascii')
    let first: Buffer | undefined = Buffer.concat([head, chunkHeader])
    let sent = 0
    let seed = 7
    while (sent < size) {
      const piece: Buffer = first ?? noise(Math.min(chunkSize, size - sent), seed++)
      first = undefined
      const bounded = piece.subarray(0, size - sent)
      hash.update(bounded)
      sent += bounded.length
      yield bounded
    }
  }
  return { stream: generate(), sha256: () => hash.digest('hex') }
}

/** Baseline JPEG header bytes: SOI, JFIF APP0, a quantisation table and SOF0 with the dimensions, then EOI. */
export function jpeg(width = 5, height = 7): Buffer {
  const app0 = Buffer.from([0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00])
  const dqt = Buffer.concat([Buffer.from([0xff, 0xdb, 0x00, 0x43, 0x00]), Buffer.alloc(64, 1)])
  const sof = Buffer.from([
    0xff,
    0xc0,
    0x00,
    0x11,
    0x08,
    height >> 8,
    height & 0xff,
    width >> 8,
    width & 0xff,
    0x03,
    0x01,
    0x22,
    0x00,
    0x02,
    0x11,
    0x01,
    0x03,
    0x11,
    0x01,
  ])
  return Buffer.concat([Buffer.from([0xff, 0xd8]), app0, dqt, sof, Buffer.from([0xff, 0xd9])])
}

export function gif(width = 6, height = 2): Buffer {
  const header = Buffer.alloc(13)
  header.write('GIF89a', 0, 'ascii')
  header.writeUInt16LE(width, 6)
  header.writeUInt16LE(height, 8)
  // One-pixel image data with an empty global colour table, then the trailer.
  return Buffer.concat([header, Buffer.from([0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b])])
}

/** A lossless WebP (VP8L) header carrying the dimensions. */
export function webp(width = 9, height = 8): Buffer {
  const bits = (width - 1) | ((height - 1) << 14)
  const vp8l = Buffer.alloc(5)
  vp8l[0] = 0x2f
  vp8l.writeUInt32LE(bits >>> 0, 1)
  const chunk = Buffer.concat([Buffer.from('VP8L', 'ascii'), Buffer.from([vp8l.length, 0, 0, 0]), vp8l, Buffer.alloc(1)])
  const riffSize = Buffer.alloc(4)
  riffSize.writeUInt32LE(4 + chunk.length)
  return Buffer.concat([Buffer.from('RIFF', 'ascii'), riffSize, Buffer.from('WEBP', 'ascii'), chunk])
}

export const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex')

export type GifFrame = { width: number; height: number; left?: number; top?: number; localColours?: boolean }

/**
 * A GIF89a animation that decoders play: a global colour table, a looping NETSCAPE extension, a comment,
 * and per frame a graphic control extension and image data. Frames of at most `MAX_DRAWN_PIXELS` carry
 * real LZW data (a clear code before each pixel keeps codes 3 bits wide); larger ones, pixel bombs that
 * must be refused from their descriptor, carry one pixel of it.
 */
export function animatedGif(screen: { width: number; height: number }, frames: GifFrame[]): Buffer {
  const MAX_DRAWN_PIXELS = 10_000
  const header = Buffer.alloc(13)
  header.write('GIF89a', 0, 'ascii')
  header.writeUInt16LE(screen.width, 6)
  header.writeUInt16LE(screen.height, 8)
  header[10] = 0x80 | 0x01 // a global colour table of 4 entries
  const colours = Buffer.from([0, 0, 0, 0xff, 0xff, 0xff, 0xc3, 0x33, 0x33, 0x33, 0x33, 0xcc])
  const loop = Buffer.from([0x21, 0xff, 0x0b, ...Buffer.from('NETSCAPE2.0', 'ascii'), 0x03, 0x01, 0x00, 0x00, 0x00])
  const comment = Buffer.from([0x21, 0xfe, 0x05, ...Buffer.from('hello', 'ascii'), 0x00])
  const parts: Buffer[] = [header, colours, loop, comment]
  for (const [index, frame] of frames.entries()) {
    parts.push(Buffer.from([0x21, 0xf9, 0x04, 0x04, 0x0a, 0x00, 0x00, 0x00])) // 100 ms, keep the frame
    const descriptor = Buffer.alloc(10)
    descriptor[0] = 0x2c
    descriptor.writeUInt16LE(frame.left ?? 0, 1)
    descriptor.writeUInt16LE(frame.top ?? 0, 3)
    descriptor.writeUInt16LE(frame.width, 5)
    descriptor.writeUInt16LE(frame.height, 7)
    descriptor[9] = frame.localColours ? 0x81 : 0
    parts.push(descriptor)
    if (frame.localColours) parts.push(colours)
    const pixels = frame.width * frame.height <= MAX_DRAWN_PIXELS ? frame.width * frame.height : 1
    parts.push(Buffer.from([0x02]), gifSubBlocks(lzwOneColour(pixels, index % 4)))
  }
  parts.push(Buffer.from([0x3b]))
  return Buffer.concat(parts)
}

/** LZW codes (minimum code size 2) for `count` pixels of one colour: clear, colour, … end, 3 bits each. */
function lzwOneColour(count: number, colour: number): Buffer {
  const codes = [...Array.from({ length: count }, () => [4, colour]).flat(), 5]
  const out = Buffer.alloc(Math.ceil((codes.length * 3) / 8))
  codes.forEach((code, index) => {
    for (let bit = 0; bit < 3; bit++) if (code & (1 << bit)) out[(index * 3 + bit) >> 3]! |= 1 << ((index * 3 + bit) & 7)
  })
  return out
}

/** Data cut into sub-blocks of at most 255 bytes, then the empty block that ends them. */
export function gifSubBlocks(data: Buffer): Buffer {
  const blocks: Buffer[] = []
  for (let at = 0; at < data.length; at += 255) {
    const block = data.subarray(at, at + 255)
    blocks.push(Buffer.from([block.length]), block)
  }
  return Buffer.concat([...blocks, Buffer.from([0])])
}
