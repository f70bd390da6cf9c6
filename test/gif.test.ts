import t from 'tap'
import type { ApiError } from '../src/errors.js'
import { GifFrameInspector, gifFrameSize } from '../src/upload/gif.js'
import { animatedGif, type GifFrame, gif } from './helpers/images.js'

const MAX_PIXELS = 10_000
const SCREEN = { width: 40, height: 30 }
const FRAMES: GifFrame[] = [
  { width: 40, height: 30 },
  { width: 10, height: 8, left: 5, top: 4, localColours: true },
  { width: 40, height: 30 },
]

/** Feeds `data` in pieces of `size` bytes; returns the inspector, or the error with how many bytes were fed. */
function feed(data: Buffer, size: number, maxPixels = MAX_PIXELS) {
  const inspector = new GifFrameInspector(maxPixels)
  for (let at = 0; at < data.length; at += size) {
    try {
      inspector.write(data.subarray(at, at + size))
    } catch (error) {
      return { inspector, error: error as ApiError, fed: Math.min(at + size, data.length) }
    }
  }
  return { inspector, error: undefined, fed: data.length }
}

t.test('a real animation passes, whatever the chunks it arrives in', async (t) => {
  const animation = animatedGif(SCREEN, FRAMES)
  for (const size of [1, 2, 7, 255, animation.length]) {
    const { inspector, error } = feed(animation, size)
    t.equal(error, undefined, `in ${size}-byte chunks`)
    t.equal(inspector.frameCount, 3, `every frame seen in ${size}-byte chunks`)
    t.same(inspector.firstFrame, SCREEN)
  }
  t.same(gifFrameSize(gif(6, 2)), { width: 6, height: 2 }, 'the one-frame GIF of the other tests')
  t.equal(gifFrameSize(animatedGif(SCREEN, FRAMES).subarray(0, 60)), undefined, 'not known before the first descriptor')
})

t.test('a later frame over the limit is refused from its descriptor, naming the frame', async (t) => {
  const bomb = animatedGif(SCREEN, [...FRAMES, { width: 200, height: 100 }, { width: 4, height: 4 }])
  const descriptorEnd = bomb.indexOf(Buffer.from([0x2c, 0, 0, 0, 0, 200, 0, 100, 0])) + 10
  for (const size of [1, 64, bomb.length]) {
    const { error, fed } = feed(bomb, size)
    t.match(
      error,
      {
        code: 'image_too_many_pixels',
        detail: /^Frame 4 of the GIF \(200 × 100 at 0, 0\) needs a canvas of 200 × 100 pixels; at most 10000/,
      },
      `in ${size}-byte chunks`,
    )
    if (size === 1) t.equal(fed, descriptorEnd, 'as soon as the descriptor has passed, before its image data')
  }
  // A small frame placed far out grows the canvas a decoder draws on.
  const far = feed(animatedGif(SCREEN, [FRAMES[0]!, { width: 2, height: 2, left: 60_000, top: 60_000 }]), 16)
  t.match(far.error, { code: 'image_too_many_pixels', detail: /Frame 2 .* needs a canvas of 60002 × 60002 pixels/ })
  t.match(feed(animatedGif({ width: 101, height: 100 }, FRAMES), 5).error, {
    code: 'image_too_many_pixels',
    detail: /logical screen is 101 × 100 pixels/,
  })
  t.match(feed(animatedGif(SCREEN, [{ width: 101, height: 100 }]), 5).error, { code: 'image_too_many_pixels', detail: /^Frame 1 / })
})

t.test('a corrupt structure is refused where it breaks', async (t) => {
  const animation = animatedGif(SCREEN, FRAMES)
  const trailer = animation.length - 1
  const cases: [string, Buffer, RegExp][] = [
    ['another signature', Buffer.concat([Buffer.from('GIF88a'), animation.subarray(6)]), /does not start with GIF87a or GIF89a/],
    [
      'an unknown block',
      Buffer.concat([animation.subarray(0, trailer), Buffer.from([0x99, 0x3b])]),
      new RegExp(`an unknown block at offset ${trailer}`),
    ],
    ['no frame', Buffer.concat([animation.subarray(0, 13 + 12), Buffer.from([0x3b])]), /ends before any frame/],
  ]
  for (const [name, data, detail] of cases) {
    t.match(feed(data, 3).error, { code: 'unsupported_media_type', detail }, name)
  }
  const trailing = feed(Buffer.concat([animation, Buffer.from('anything after the trailer')]), 4)
  t.equal(trailing.error, undefined, 'bytes after the trailer are ignored, as decoders do')
})

t.test('its state does not grow with the body: a long animation streams through in linear time', async (t) => {
  const single = animatedGif(SCREEN, [FRAMES[0]!])
  const preamble = 13 + 12 + 19 + 9 // header, colour table, loop and comment extensions
  const header = single.subarray(0, preamble)
  const frame = single.subarray(preamble, -1) // control extension, descriptor, image data
  const inspector = new GifFrameInspector(MAX_PIXELS)
  inspector.write(header)
  const before = process.memoryUsage().heapUsed
  for (let index = 0; index < 20_000; index++) inspector.write(frame)
  t.equal(inspector.frameCount, 20_000)
  t.ok(process.memoryUsage().heapUsed - before < 16 * 1024 * 1024, 'no per-frame memory kept')
})
