import type { IncomingHttpHeaders } from 'node:http'
import { ApiError } from '../errors.js'
import { baseFilename } from './keys.js'

const CONTEXT_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/
const NAME_PATTERN = /^[a-z0-9][a-z0-9_]{0,63}$/
const MAX_CLIENT_METADATA_BYTES = 2048
const MAX_FILENAME_BYTES = 255
const DEFAULT_CONTEXT = 'general'
/** Metadata the service sets itself; a client may not send these (`migrated_from`: on imports only). */
const SERVICE_OWNED_METADATA = ['sha256', 'filename', 'width', 'height', 'migrated_from'] as const
type ServiceOwnedName = (typeof SERVICE_OWNED_METADATA)[number]
/**
 * What no filename may hold: controls, invisible format characters (bidirectional overrides and
 * isolates such as U+202E, which make `a\u202Egnp.exe` display as `aexe.png`; zero-width characters;
 * byte-order marks), line and paragraph separators, lone surrogates, and U+FFFD, which is what bytes
 * that are not UTF-8 decode to: the name the client meant is already lost.
 */
const UNSHOWABLE_IN_FILENAME = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}\ufffd]/u
const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/
const HEADER_PREFIX = 'x-meta-'

export function assertValidContext(context: string | undefined): string {
  if (context === undefined) return DEFAULT_CONTEXT
  if (!CONTEXT_PATTERN.test(context)) {
    throw new ApiError('invalid_context', 'context must match ^[a-z0-9][a-z0-9_-]{0,62}$.')
  }
  return context
}

/** The client's filename without its directory part, refused when too long or not text as it displays. */
export function checkedFilename(filename: string | undefined): string | undefined {
  if (filename === undefined) return undefined
  const base = baseFilename(filename)
  if (Buffer.byteLength(base) > MAX_FILENAME_BYTES) {
    throw new ApiError('invalid_request', `The filename is longer than ${MAX_FILENAME_BYTES} bytes.`)
  }
  if (UNSHOWABLE_IN_FILENAME.test(base)) {
    throw new ApiError('invalid_request', 'The filename must be UTF-8 text without control, bidirectional or invisible format characters.')
  }
  return base
}

/** The escapes the WHATWG multipart/form-data rules write in a part's filename (browsers, curl, undici). */
const FORM_FILENAME_ESCAPES: Readonly<Record<string, string>> = { '%22': '"', '%0D': '\r', '%0A': '\n' }

/**
 * A form's file part's filename as its client named it: `%22`, `%0D` and `%0A` decoded, and nothing
 * else. Those three are the only encodings in it; any other `%` is the name's own text (`100% real.png`,
 * `a%20b.png`, even `%zz`), since clients do not escape `%` itself. A decoded CR or LF is then refused
 * like any control character.
 */
export function checkedFormFilename(filename: string | undefined): string | undefined {
  return checkedFilename(filename?.replace(/%(?:22|0D|0A)/g, (sequence) => FORM_FILENAME_ESCAPES[sequence] ?? sequence))
}

/**
 * Refuses a query parameter whose percent-encoding does not decode to UTF-8 (`%zz`, `%FF`, a cut
 * sequence): the query parser keeps such text as it was sent, which would be stored as a name the
 * client never meant.
 */
export function assertQueryParameterDecodes(url: string, parameter: string): void {
  const query = url.indexOf('?') < 0 ? '' : url.slice(url.indexOf('?') + 1)
  const decodes = (text: string) => {
    try {
      return decodeURIComponent(text)
    } catch {
      return undefined
    }
  }
  for (const pair of query.split('&')) {
    const equals = pair.indexOf('=')
    if (equals < 0 || decodes(pair.slice(0, equals)) !== parameter) continue
    if (decodes(pair.slice(equals + 1)) === undefined) {
      throw new ApiError('invalid_request', `The query parameter ${parameter} is not valid percent-encoded UTF-8.`)
    }
  }
}

/**
 * Validates the client's metadata (names case-folded) and adds `uploaded_at` unless the client sent a
 * valid ISO 8601 one. The service-owned entries are added later, when the bytes have been seen, except
 * `serviceSet`: entries the service sets from the client's text (an import's `migrated_from`, its source
 * URL), which count against the client's budget.
 */
export function clientMetadata(
  entries: Iterable<[string, string]>,
  serviceSet: Partial<Record<ServiceOwnedName, string>> = {},
  now = new Date(),
): Record<string, string> {
  const metadata: Record<string, string> = {}
  let bytes = 0
  const add = (name: string, value: string) => {
    bytes += Buffer.byteLength(name) + Buffer.byteLength(value)
    if (bytes > MAX_CLIENT_METADATA_BYTES) {
      throw new ApiError('invalid_metadata', `Metadata names and values total more than ${MAX_CLIENT_METADATA_BYTES} bytes of UTF-8.`)
    }
    metadata[name] = value
  }
  for (const [rawName, value] of entries) {
    const name = rawName.toLowerCase()
    if (!NAME_PATTERN.test(name)) {
      throw new ApiError('invalid_metadata', `Metadata name "${rawName.slice(0, 64)}" must match ^[a-z0-9][a-z0-9_]{0,63}$.`)
    }
    if ((SERVICE_OWNED_METADATA as readonly string[]).includes(name)) {
      throw new ApiError('invalid_metadata', `Metadata "${name}" is set by the service and may not be sent.`)
    }
    if (Object.hasOwn(metadata, name)) throw new ApiError('invalid_metadata', `Metadata "${name}" is sent twice.`)
    add(name, value)
  }
  for (const [name, value] of Object.entries(serviceSet)) add(name, value)
  const sent = metadata.uploaded_at
  if (sent === undefined || !ISO_8601.test(sent) || Number.isNaN(Date.parse(sent))) {
    metadata.uploaded_at = now.toISOString()
  }
  return metadata
}

/** `character_name` ↔ `character-name`: the form metadata names take in X-Meta-* headers. */
const headerNameOf = (name: string): string => name.replaceAll('_', '-')
const metadataNameOf = (headerName: string): string => headerName.toLowerCase().replaceAll('-', '_')

function decodeValue(name: string, value: string): string {
  // Raw non-ASCII would arrive as Latin-1 and be stored garbled: only the percent-encoded form is accepted.
  if (!/^[\x20-\x7e]*$/.test(value)) {
    throw new ApiError('invalid_metadata', `Metadata "${name}" must be percent-encoded UTF-8 (printable ASCII on the wire).`)
  }
  try {
    return decodeURIComponent(value)
  } catch {
    throw new ApiError('invalid_metadata', `Metadata "${name}" is not valid percent-encoded UTF-8.`)
  }
}

/** `X-Meta-*` request headers (raw-body uploads) as metadata entries, values percent-decoded. */
export function metadataFromRequestHeaders(headers: IncomingHttpHeaders): [string, string][] {
  const entries: [string, string][] = []
  for (const [header, value] of Object.entries(headers)) {
    if (!header.startsWith(HEADER_PREFIX) || value === undefined) continue
    const name = metadataNameOf(header.slice(HEADER_PREFIX.length))
    const single = Array.isArray(value) ? value.join(', ') : value
    entries.push([name, decodeValue(name, single)])
  }
  return entries
}

/** Metadata as `X-Meta-Character-Name: Thorgar%20%C3%98` response headers. */
export function metadataToResponseHeaders(metadata: Record<string, string>): Record<string, string> {
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(metadata)) {
    const title = headerNameOf(name).replace(/(^|-)([a-z])/g, (_, dash: string, letter: string) => dash + letter.toUpperCase())
    headers[`X-Meta-${title}`] = encodeURIComponent(value)
  }
  return headers
}
