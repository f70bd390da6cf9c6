/**
 * The error catalogue: every error the service answers with, by stable code.
 * Clients branch on `code`; `title` is the same for every occurrence, `detail` says what happened this time.
 */
export const ERROR_CATALOGUE = {
  invalid_request: { status: 400, title: 'The request is malformed' },
  invalid_key: { status: 400, title: 'The object key is not valid' },
  invalid_context: { status: 400, title: 'The upload context is not valid' },
  invalid_metadata: { status: 400, title: 'The metadata is not valid' },
  empty_file: { status: 400, title: 'The file is empty' },
  import_refused: { status: 400, title: 'The import URL is not allowed' },
  unauthorized: { status: 401, title: 'A valid API key is required' },
  forbidden: { status: 403, title: 'The API key may not do this' },
  not_found: { status: 404, title: 'Not found' },
  idempotency_conflict: { status: 409, title: 'The Idempotency-Key was used for a different upload' },
  image_too_large: { status: 413, title: 'The image is too large' },
  unsupported_media_type: { status: 415, title: 'The content is not an allowed image type' },
  image_too_many_pixels: { status: 422, title: 'The image has too many pixels' },
  rate_limited: { status: 429, title: 'Too many requests for this API key' },
  storage_error: { status: 502, title: 'The storage backend failed' },
  storage_access_denied: { status: 502, title: 'The storage backend refused the credentials' },
  bucket_not_found: { status: 502, title: 'The storage bucket does not exist' },
  import_failed: { status: 502, title: 'The import source failed' },
  storage_unavailable: { status: 503, title: 'The storage backend is unreachable', retryAfterSeconds: 5 },
  server_busy: { status: 503, title: 'Too many uploads in flight on this instance', retryAfterSeconds: 1 },
  internal_error: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: number; title: string; retryAfterSeconds?: number }>

export type ErrorCode = keyof typeof ERROR_CATALOGUE

/** An error with a contract code; the problem-details plugin turns it into application/problem+json. */
export class ApiError extends Error {
  override name = 'ApiError'
  readonly status: number

  constructor(
    readonly code: ErrorCode,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${code}: ${detail}`, options)
    this.status = ERROR_CATALOGUE[code].status
  }

  get retryAfterSeconds(): number | undefined {
    const entry = ERROR_CATALOGUE[this.code]
    return 'retryAfterSeconds' in entry ? entry.retryAfterSeconds : undefined
  }
}

export const objectNotFound = (key: string): ApiError => new ApiError('not_found', `There is no object with the key "${key}".`)
