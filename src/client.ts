/**
 * A client for image-upload-service (HTTP contract: openapi.yaml), for Node 20 and later: it uses only
 * the built-in fetch. Imported by Node callers as `image-upload-service/client`.
 */
import type { ErrorCode } from './errors.js'

const DEFAULT_TIMEOUT_MS = 30_000
const DEFAULT_MAX_RETRIES = 6
/** Answers that say nothing was done and when to try again (Retry-After): a call retries them. */
const RETRIED_CODES: ReadonlySet<string> = new Set(['server_busy', 'rate_limited', 'storage_unavailable'])
/** The wait before a retry when an answer to retry has no usable Retry-After. */
const DEFAULT_RETRY_AFTER_S = 1
/** The key prefix sent when the caller names none: the service's own default, stated so that uploads and imports agree. */
const DEFAULT_CONTEXT = 'general'

export interface ImageServiceClientOptions {
  /** Where the service answers, e.g. `https://images.example.com` (without `/v1`); a redirect is an error. */
  baseUrl: string
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string
  /**
   * Bounds each call, every try and the waits between them included, from connecting to the last byte
   * of the answer (default 30 000).
   */
  timeoutMs?: number
  /**
   * How many times a call is tried again after 503 `server_busy`, 429 `rate_limited` or 503
   * `storage_unavailable`, each after the answer's Retry-After plus up to half as long again, and only
   * while that fits in `timeoutMs` (default 6; 0: never). An upload from a stream is never retried.
   */
  maxRetries?: number
  /** What uploadWithFallback gives when the service offers no `fallback_url` (or cannot be reached). */
  defaultFallbackUrl?: string
}

/** Bytes, or a stream of them (a Readable, or any async iterable of Uint8Array). */
export type UploadBody = Uint8Array | AsyncIterable<Uint8Array>

export interface UploadOptions {
  /** The key prefix (the service's default is `general`). */
  context?: string
  /** Stored with the object: names `^[a-z0-9][a-z0-9_]{0,63}$`, values any UTF-8. */
  metadata?: Record<string, string>
  /**
   * Sent as the `Idempotency-Key` header with every try of the call, so a retry is never stored twice
   * (default: a new UUID per call). Give your own (a message id) to make your own later retries safe too.
   */
  idempotencyKey?: string
  /**
   * `multipart` (the default for bytes) sends multipart/form-data, as the bot does; `raw` sends the bytes
   * as the body. A stream is always sent raw, as it comes, never held whole.
   */
  encoding?: 'multipart' | 'raw'
  /** Aborts the call; its reason is thrown as it is. */
  signal?: AbortSignal
}

/** What import takes besides the URL: as for an upload (no encoding: the service fetches the bytes). */
export interface ImportOptions extends Omit<UploadOptions, 'encoding'> {
  /** The stored filename; the service's default is the URL's last path segment, else `image.<ext>`. */
  filename?: string
}

/** The 201 answer of an upload or an import (field names as on the wire). */
export interface StoredImage {
  url: string
  key: string
  size: number
  filename: string
  content_type: string
  sha256: string
  width: number
  height: number
}

/** A stored object as `GET /v1/images/{key}` describes it; metadata values decoded. */
export interface ImageMetadata {
  key: string
  url: string
  size: number
  content_type: string
  /** ISO 8601. */
  last_modified: string
  etag: string
  metadata: Record<string, string>
}

/** One object of a listing (`GET /v1/images`). */
export interface ListedImage {
  key: string
  url: string
  size: number
  /** ISO 8601. */
  last_modified: string
  etag: string
}

/** One page of a listing: `next_cursor` is null on the last page. */
export interface ImagePage {
  items: ListedImage[]
  next_cursor: string | null
}

export interface ListOptions {
  /** Only keys that start with this: a key, or a key and `/` (`portraits/2025/05/`). */
  prefix?: string
  /** Items per page, 1 to 1000 (the service's default is 100). */
  limit?: number
  /** The previous page's `next_cursor`. */
  cursor?: string
  signal?: AbortSignal
}

/** What uploadWithFallback gives: the URL to use, and either the stored image or the error. */
export type UploadOutcome =
  | { url: string; image: StoredImage; error?: undefined }
  | { url: string; image?: undefined; error: ImageServiceError | ImageServiceUnreachableError }

/** The service answered with an error: `code` is the problem's, or `unexpected_response` for an answer that is not a problem. */
export class ImageServiceError extends Error {
  override name = 'ImageServiceError'
  readonly requestId: string | undefined
  /** Seconds, from `Retry-After` (429 and 503 answers). */
  readonly retryAfter: number | undefined
  /** The service's `DEFAULT_PORTRAIT_URL`, on upload errors when it is set. */
  readonly fallbackUrl: string | undefined

  constructor(
    readonly status: number,
    readonly code: ErrorCode | 'unexpected_response' | (string & {}),
    readonly detail: string,
    extra: { requestId?: string; retryAfter?: number; fallbackUrl?: string } = {},
  ) {
    super(`${status} ${code}: ${detail}`)
    this.requestId = extra.requestId
    this.retryAfter = extra.retryAfter
    this.fallbackUrl = extra.fallbackUrl
  }
}

/** No answer: the connection was refused or lost, the answer took longer than `timeoutMs`, or it was a redirect. */
export class ImageServiceUnreachableError extends Error {
  override name = 'ImageServiceUnreachableError'

  constructor(
    message: string,
    readonly timedOut: boolean,
    options: { cause: unknown },
  ) {
    super(message, options)
  }
}

const isBytes = (body: UploadBody): body is Uint8Array => body instanceof Uint8Array

/** `character_name` → `X-Meta-character-name`, the value percent-encoded (the contract's header form). */
function metadataHeaders(metadata: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(metadata).map(([name, value]) => [`x-meta-${name.replaceAll('_', '-')}`, encodeURIComponent(value)]),
  )
}

export class ImageServiceClient {
  readonly #baseUrl: string
  readonly #authorization: Record<string, string>
  readonly #timeoutMs: number
  readonly #maxRetries: number
  readonly #defaultFallbackUrl: string | undefined

  constructor(options: ImageServiceClientOptions) {
    // Parsed now, so a bad URL fails here rather than looking like an unreachable service later.
    this.#baseUrl = new URL(options.baseUrl).href.replace(/\/+$/, '')
    this.#authorization = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {}
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.#maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES
    this.#defaultFallbackUrl = options.defaultFallbackUrl
  }

  /**
   * Uploads one image; throws ImageServiceError or ImageServiceUnreachableError. Bytes are retried (see
   * `maxRetries`); a stream is sent once, as it cannot be sent again.
   */
  async upload(body: UploadBody, filename: string, options: UploadOptions = {}): Promise<StoredImage> {
    const { context, metadata = {}, idempotencyKey = crypto.randomUUID(), encoding = 'multipart', signal } = options
    if ('context' in metadata) throw new TypeError('Pass the context as options.context, not as metadata.')
    const headers: Record<string, string> = { 'idempotency-key': idempotencyKey }
    if (isBytes(body) && encoding === 'multipart') {
      // The contract wants text fields first, then the one file part.
      const form = new FormData()
      if (context !== undefined) form.append('context', context)
      for (const [name, value] of Object.entries(metadata)) form.append(name, value)
      // This cast and the raw body's: the DOM types refuse arrays that could be over a SharedArrayBuffer.
      form.append('file', new Blob([body as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }), filename)
      return (await this.#call('POST', '/v1/images', { headers, body: form }, signal)) as StoredImage
    }
    const query = new URLSearchParams({ filename, ...(context !== undefined && { context }) })
    return (await this.#call(
      'POST',
      `/v1/images?${query}`,
      {
        headers: { ...headers, ...metadataHeaders(metadata), 'content-type': 'application/octet-stream' },
        body: body as BodyInit,
        // A stream goes out as it is read; fetch requires saying so.
        ...(!isBytes(body) && { duplex: 'half' as const }),
      },
      signal,
      isBytes(body),
    )) as StoredImage
  }

  /**
   * Like upload, but any failure gives the service's `fallback_url`, else `defaultFallbackUrl`; throws only
   * when there is neither (or when `signal` aborts).
   */
  async uploadWithFallback(body: UploadBody, filename: string, options: UploadOptions = {}): Promise<UploadOutcome> {
    try {
      const image = await this.upload(body, filename, options)
      return { url: image.url, image }
    } catch (error) {
      if (!(error instanceof ImageServiceError || error instanceof ImageServiceUnreachableError)) throw error
      const url = (error instanceof ImageServiceError ? error.fallbackUrl : undefined) ?? this.#defaultFallbackUrl
      if (url === undefined) throw error
      return { url, error }
    }
  }

  /**
   * Has the service fetch the image at `sourceUrl` (a host it allows) and store it as an upload, with the
   * URL as the `migrated_from` metadata entry; throws as upload does (a failing source: 502 `import_failed`).
   */
  async import(sourceUrl: string, options: ImportOptions = {}): Promise<StoredImage> {
    const { context = DEFAULT_CONTEXT, filename, metadata, idempotencyKey = crypto.randomUUID(), signal } = options
    const body = JSON.stringify({
      source_url: sourceUrl,
      context,
      ...(filename !== undefined && { filename }),
      ...(metadata !== undefined && { metadata }),
    })
    const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': idempotencyKey }
    return (await this.#call('POST', '/v1/images/import', { headers, body }, signal)) as StoredImage
  }

  /** The stored object's size, type, dates and metadata; ImageServiceError `not_found` when there is none. */
  async metadata(key: string, options: { signal?: AbortSignal } = {}): Promise<ImageMetadata> {
    return (await this.#call('GET', imagePath(key), {}, options.signal)) as ImageMetadata
  }

  /**
   * One page of the stored objects, in key order. A page may hold fewer than `limit` items (even none)
   * while `next_cursor` is set: listPages follows the cursors for you.
   */
  async list(options: ListOptions = {}): Promise<ImagePage> {
    const { prefix, limit, cursor, signal } = options
    const query = new URLSearchParams({
      ...(prefix !== undefined && prefix !== '' && { prefix }),
      ...(limit !== undefined && { limit: String(limit) }),
      ...(cursor !== undefined && { cursor }),
    })
    const page = (await this.#call('GET', query.size > 0 ? `/v1/images?${query}` : '/v1/images', {}, signal)) as ImagePage
    return { items: page.items, next_cursor: page.next_cursor ?? null }
  }

  /** Every page from `cursor` (default: the first) to the last: `for await (const page of client.listPages({ prefix }))`. */
  async *listPages(options: ListOptions = {}): AsyncGenerator<ImagePage, void, undefined> {
    let cursor = options.cursor
    do {
      const page = await this.list({ ...options, cursor })
      yield page
      cursor = page.next_cursor ?? undefined
    } while (cursor !== undefined)
  }

  /** Deletes the object; deleting one that is already gone succeeds too. */
  async delete(key: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#call('DELETE', imagePath(key), {}, options.signal)
  }

  /**
   * One call: the decoded JSON answer (undefined when empty), or a typed error. An answer to retry is
   * retried (the same request: one Idempotency-Key for every try) while the body can be sent again,
   * tries are left, and the wait fits before the deadline; otherwise it is thrown as it is.
   */
  async #call(
    method: string,
    path: string,
    init: RequestInit & { duplex?: 'half' },
    signal: AbortSignal | undefined,
    replayable = true,
  ): Promise<unknown> {
    // Built before sending, so a bad header (a metadata name no header can carry) is a TypeError of its own.
    const headers = new Headers({ ...this.#authorization, ...(init.headers as Record<string, string>) })
    const timeout = AbortSignal.timeout(this.#timeoutMs)
    const deadline = Date.now() + this.#timeoutMs
    for (let retries = 0; ; retries++) {
      try {
        return await this.#send(method, path, { ...init, headers }, signal, timeout)
      } catch (error) {
        const waitMs = replayable && retries < this.#maxRetries ? retryWaitMs(error) : undefined
        if (waitMs === undefined || Date.now() + waitMs >= deadline) throw error
        await pause(waitMs, signal)
      }
    }
  }

  /** One try. */
  async #send(
    method: string,
    path: string,
    init: RequestInit & { duplex?: 'half' },
    signal: AbortSignal | undefined,
    timeout: AbortSignal,
  ): Promise<unknown> {
    let response: Response
    let text: string
    try {
      response = await fetch(`${this.#baseUrl}${path}`, {
        ...init,
        method,
        // No redirect is followed: a 301 or 302 would turn an upload into a GET of another URL, a 307 would
        // send it again. And only then (with `window: null`) does fetch send the body itself rather than a
        // copy: otherwise it tees every body to be able to resend it, copying each chunk and keeping every
        // chunk sent until the request ends (a stream held whole; up to twice the sender's CPU for a form).
        redirect: 'error',
        window: null,
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      })
      text = await response.text()
    } catch (error) {
      if (signal?.aborted) throw signal.reason
      if (timeout.aborted)
        throw new ImageServiceUnreachableError(`No answer from ${this.#baseUrl} within ${this.#timeoutMs} ms.`, true, { cause: error })
      const reason = error instanceof Error && error.cause instanceof Error ? error.cause.message : String(error)
      if (reason === 'unexpected redirect') {
        const detail = `${this.#baseUrl} answered with a redirect, which the client does not follow: give the address where the service answers.`
        throw new ImageServiceUnreachableError(detail, false, { cause: error })
      }
      throw new ImageServiceUnreachableError(`Could not reach ${this.#baseUrl}: ${reason}.`, false, { cause: error })
    }
    if (response.status >= 400) throw problemError(response.status, response.headers, text)
    if (text === '') return undefined
    try {
      return JSON.parse(text)
    } catch {
      throw new ImageServiceError(response.status, 'unexpected_response', 'The answer is not JSON.')
    }
  }
}

/** The wait before trying again after `error`, in ms, or undefined when it is not to be retried. */
function retryWaitMs(error: unknown): number | undefined {
  if (!(error instanceof ImageServiceError && RETRIED_CODES.has(error.code))) return undefined
  // Never sooner than the service asked; up to half as long again, so that clients refused together
  // do not all come back at the same moment.
  return (error.retryAfter ?? DEFAULT_RETRY_AFTER_S) * 1000 * (1 + Math.random() / 2)
}

/** Resolves after `ms`; rejects with the signal's reason as soon as it aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** `/v1/images/<key>`, each segment percent-encoded, so the service sees (and judges) the key as given. */
function imagePath(key: string): string {
  const segments = key.split('/')
  // A URL resolves these segments away and would name another object: refuse them as the service would.
  if (segments.some((segment) => segment === '.' || segment === '..')) {
    throw new ImageServiceError(400, 'invalid_key', `The key "${key}" has a "." or ".." segment (refused by the client).`)
  }
  return `/v1/images/${segments.map(encodeURIComponent).join('/')}`
}

function problemError(status: number, headers: Headers, text: string): ImageServiceError {
  let problem: { code?: unknown; detail?: unknown; request_id?: unknown; fallback_url?: unknown } | undefined
  try {
    problem = JSON.parse(text)
  } catch {}
  if (typeof problem?.code !== 'string') {
    return new ImageServiceError(status, 'unexpected_response', `An answer that is not a problem: ${text.slice(0, 200)}`)
  }
  const retryAfter = headers.get('retry-after')
  return new ImageServiceError(status, problem.code, String(problem.detail ?? ''), {
    ...(typeof problem.request_id === 'string' && { requestId: problem.request_id }),
    ...(retryAfter !== null && /^\d+$/.test(retryAfter) && { retryAfter: Number(retryAfter) }),
    ...(typeof problem.fallback_url === 'string' && { fallbackUrl: problem.fallback_url }),
  })
}
