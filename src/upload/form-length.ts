import type { IncomingMessage } from 'node:http'

/**
 * The exact length of a multipart/form-data upload's file, from the request's Content-Length, so that a
 * form can go to storage in one PutObject of known length as it arrives, like a raw body.
 *
 * Every client we know of (curl, aiohttp, undici and browsers, Python requests, Go's mime/multipart) ends
 * a form with CRLF "--boundary--" CRLF and nothing after it. When the file is the last part, then:
 *
 *   file length = Content-Length − bytes before the file's data − length of that closing delimiter
 *
 * The bytes before the file's data are counted on the raw body as the parser reads it: FormFraming finds
 * delimiters and part headers with the framing rules busboy's multipart parser (dicer) applies, so that it
 * counts the same parts. The length is only a claim about the body: the pipeline sends the file with it
 * and holds back the last byte until the parser's file has ended exactly there (see storeUpload), so a
 * body framed any other way (an epilogue, no CRLF after the close, a part after the file) is refused
 * with nothing stored, never stored short or long.
 */

const CRLF_CRLF = Buffer.from('\r\n\r\n')
/** A header block longer than this is not followed: the length is then unknown (the parser refuses far smaller). */
const MAX_HEADER_BLOCK_BYTES = 128 * 1024

/** The boundary parameter of a multipart/form-data Content-Type, quoted or not. */
export function boundaryOf(contentType: string | undefined): string | undefined {
  const match = /;\s*boundary=(?:"([^"]{1,70})"|([^";\s]{1,70}))\s*(?:;|$)/i.exec(contentType ?? '')
  return match ? (match[1] ?? match[2]) : undefined
}

type Phase = 'delimiter' | 'after-delimiter' | 'header' | 'data' | 'closed' | 'lost'

/**
 * Watches a form's raw bytes in order (feed every chunk to `observe` before the parser sees it) and knows
 * where the part being read began its data. Bytes are counted as busboy does: the body is read as if it
 * began with CRLF, so a body that starts with "--boundary" opens the first part.
 */
export class FormFraming {
  /** CRLF "--" boundary: what ends the preamble and every part. */
  private readonly delimiter: Buffer
  /** CRLF "--boundary--" CRLF: the close every mainstream client sends, and nothing after it. */
  readonly closeLength: number
  private phase: Phase = 'delimiter'
  /** Unsearched bytes carried over from the previous chunk, and their offset in the stream read. */
  private carry = Buffer.alloc(0)
  private carryOffset = 0
  /** Offset (in the stream read, leading CRLF included) where the last part's data began. */
  private dataOffset = -1
  /** Offset where the header block being read began. */
  private headerOffset = 0

  constructor(
    boundary: string,
    /** The request's Content-Length. */
    private readonly contentLength: number,
  ) {
    this.delimiter = Buffer.from(`\r\n--${boundary}`)
    this.closeLength = this.delimiter.length + 4
    this.observe(Buffer.from('\r\n')) // busboy's own leading CRLF, not part of the body
  }

  /**
   * The length of the file in the last part whose data has begun (being read, or the last before the
   * close), if the body closes as every client closes it; undefined before any part's data, or when the
   * framing could not be followed.
   */
  fileLength(): number | undefined {
    if ((this.phase !== 'data' && this.phase !== 'closed') || this.dataOffset < 0) return undefined
    const dataStartInBody = this.dataOffset - 2
    const length = this.contentLength - dataStartInBody - this.closeLength
    return length >= 0 ? length : undefined
  }

  readonly observe = (chunk: Buffer): void => {
    if (this.phase === 'closed' || this.phase === 'lost') return
    const window = this.carry.length === 0 ? chunk : Buffer.concat([this.carry, chunk])
    const offset = this.carryOffset
    const keepFrom = this.scan(window, offset)
    this.carry = keepFrom < window.length ? Buffer.from(window.subarray(keepFrom)) : Buffer.alloc(0)
    this.carryOffset = offset + keepFrom
    if (this.phase === 'header' && this.carryOffset + this.carry.length - this.headerOffset > MAX_HEADER_BLOCK_BYTES) this.phase = 'lost'
  }

  /** Advances through `window` (which starts at stream offset `offset`); returns where unsearched bytes begin. */
  private scan(window: Buffer, offset: number): number {
    const { delimiter } = this
    let at = 0
    for (;;) {
      switch (this.phase) {
        case 'delimiter':
        case 'data': {
          const found = window.indexOf(delimiter, at)
          if (found < 0) return Math.max(at, window.length - (delimiter.length - 1))
          at = found + delimiter.length
          this.phase = 'after-delimiter'
          break
        }
        case 'after-delimiter': {
          if (window.length - at < 2) return at
          // Two dashes close the form (busboy then ignores everything after); anything else opens a part.
          if (window[at] === 0x2d && window[at + 1] === 0x2d) {
            this.phase = 'closed'
            return window.length
          }
          this.phase = 'header'
          this.headerOffset = offset + at
          break
        }
        case 'header': {
          // The header block ends at the first CRLF CRLF, unless a delimiter begins first (an empty part).
          const end = window.indexOf(CRLF_CRLF, at)
          const next = window.indexOf(delimiter, at)
          if (next >= 0 && (end < 0 || end + CRLF_CRLF.length > next)) {
            at = next + delimiter.length
            this.phase = 'after-delimiter'
            break
          }
          // Without a delimiter in sight, the block's end counts once none can still begin inside it (one
          // beginning with the terminator's second CRLF, as the parser sees it). Until then only the tail
          // that could still hold either is kept: a header sent a byte at a time is not copied again and
          // searched again for every byte.
          if (end < 0 || (next < 0 && end + 2 + delimiter.length > window.length)) {
            return Math.max(at, window.length - (delimiter.length + CRLF_CRLF.length))
          }
          at = end + CRLF_CRLF.length
          this.dataOffset = offset + at
          this.phase = 'data'
          break
        }
        default:
          return window.length
      }
    }
  }
}

/**
 * Starts counting a form request's bytes; call it right after the multipart parser has started reading the
 * body (its listener goes first, so it sees each chunk just before the parser). Undefined without a
 * Content-Length or a boundary: the file's length is then unknown.
 */
export function watchFormFraming(request: IncomingMessage): { fileLength(): number | undefined } | undefined {
  const contentLength = Number(request.headers['content-length'])
  const boundary = boundaryOf(request.headers['content-type'])
  if (!Number.isSafeInteger(contentLength) || boundary === undefined) return undefined
  const framing = new FormFraming(boundary, contentLength)
  request.prependListener('data', framing.observe)
  return {
    /** Called once the parser has handed over the file part: counting stops there. */
    fileLength() {
      request.off('data', framing.observe)
      return framing.fileLength()
    },
  }
}
