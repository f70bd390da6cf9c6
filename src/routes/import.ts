import type { FastifyInstance } from 'fastify'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import { STORING_ROUTE } from '../http/route-options.js'
import { type ImportNetwork, openSource, type SourceRules } from '../import/source.js'
import type { BodyBuffers } from '../upload/body-buffers.js'
import { fingerprintOf } from '../upload/idempotency.js'
import { assertValidContext, checkedFilename, clientMetadata } from '../upload/metadata.js'
import { REFUSED_REQUESTS, type UploadSlots } from '../upload/uploader.js'
import { storingRoute } from './storing-route.js'

/** Long enough for any CDN URL with its signature; it is also stored, as `migrated_from`. */
const MAX_SOURCE_URL_LENGTH = 2048
const MEMBERS = ['source_url', 'context', 'filename', 'metadata']
/** The whole request is a small JSON object: the image itself comes from the source. */
const MAX_REQUEST_BYTES = 16 * 1024
/** The source's failures and refusals are not failed uploads: they must not move the upload error ratio. */
const NOT_UPLOAD_ATTEMPTS: ReadonlySet<ErrorCode> = new Set([...REFUSED_REQUESTS, 'import_refused', 'import_failed'])

interface ImportRequest {
  sourceUrl: string
  context: string
  filename: string | undefined
  metadata: Record<string, string>
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

/** Checks the JSON body strictly: an unknown member is a mistake worth hearing about, not something to drop. */
function importRequestOf(body: unknown): ImportRequest {
  const shape = 'The body is a JSON object {"source_url", "context"?, "filename"?, "metadata"?}'
  if (!isObject(body)) throw new ApiError('invalid_request', `${shape}.`)
  const unknown = Object.keys(body).find((member) => !MEMBERS.includes(member))
  if (unknown !== undefined) throw new ApiError('invalid_request', `${shape}; "${unknown.slice(0, 64)}" is not one of its members.`)
  const { source_url: sourceUrl, context, filename, metadata = {} } = body
  if (typeof sourceUrl !== 'string' || sourceUrl.length === 0 || sourceUrl.length > MAX_SOURCE_URL_LENGTH) {
    throw new ApiError('invalid_request', `source_url is required: a URL of at most ${MAX_SOURCE_URL_LENGTH} characters.`)
  }
  // Absent, it defaults to `general`, as for an upload; sent, it is a string like an upload's.
  if (context !== undefined && typeof context !== 'string') {
    throw new ApiError('invalid_context', 'context, when sent, is a string matching ^[a-z0-9][a-z0-9_-]{0,62}$.')
  }
  if (filename !== undefined && typeof filename !== 'string') throw new ApiError('invalid_request', 'filename, when sent, is a string.')
  if (!isObject(metadata) || Object.values(metadata).some((value) => typeof value !== 'string')) {
    throw new ApiError('invalid_metadata', 'metadata, when sent, is an object of string values.')
  }
  return {
    sourceUrl,
    context: assertValidContext(context),
    filename: checkedFilename(filename) || filenameInUrl(sourceUrl),
    // Where the image came from, set by the service (a client may not send it) from the client's text.
    metadata: clientMetadata(Object.entries(metadata) as [string, string][], { migrated_from: sourceUrl }),
  }
}

/** The last path segment of the URL (`…/portrait.png?ex=…` gives `portrait.png`), when it is a usable filename. */
function filenameInUrl(sourceUrl: string): string | undefined {
  try {
    return checkedFilename(decodeURIComponent(new URL(sourceUrl).pathname.split('/').pop() ?? '')) || undefined
  } catch {
    return undefined // no usable name there: the filename is image.<ext>, as for an upload without one
  }
}

/**
 * POST /v1/images/import: the service downloads the image from an allowed source and stores it through
 * the upload pipeline (same type, size, pixel and key rules, same 201 answer), with `migrated_from`.
 */
export default async function importRoutes(
  app: FastifyInstance,
  options: { config: Config; shutdown: AbortSignal; uploadSlots: UploadSlots; bodyBuffers: BodyBuffers; network: ImportNetwork },
) {
  const { config, shutdown, uploadSlots, bodyBuffers, network } = options
  const imports = storingRoute(app, { config, shutdown, slots: uploadSlots, bodyBuffers, notAttempts: NOT_UPLOAD_ATTEMPTS })
  const rules: SourceRules = {
    allowedHosts: new Set(config.imports.allowedHosts),
    allowInsecureLocal: config.imports.allowInsecureLocalSources,
    timeoutMs: config.imports.timeoutMs,
  }
  if (rules.allowInsecureLocal)
    app.log.warn('IMPORT_ALLOW_INSECURE_LOCAL_SOURCES is on: imports may fetch http:// URLs from 127.0.0.1 (tests only)')

  // The one body this context reads: a small JSON object (the default parser, prototype poisoning refused).
  app.removeAllContentTypeParsers()
  app.addContentTypeParser(
    'application/json',
    { parseAs: 'string', bodyLimit: MAX_REQUEST_BYTES },
    app.getDefaultJsonParser('error', 'error'),
  )
  const route = {
    bodyLimit: MAX_REQUEST_BYTES,
    config: STORING_ROUTE,
    ...imports.hooks,
  }

  app.post('/v1/images/import', route, async (request, reply) => {
    const { sourceUrl, context, filename, metadata } = importRequestOf(request.body)
    let source: Awaited<ReturnType<typeof openSource>> | undefined
    try {
      // The request names its image (the source URL is in the metadata): a retry is answered without fetching it.
      const requestFingerprint = fingerprintOf({ context, metadata }, filename, 'import')
      return await imports.handle(
        request,
        reply,
        async (signal) => {
          source = await openSource(sourceUrl, rules, network, signal)
          if (source.declaredLength !== undefined && source.declaredLength > imports.policy.maxBytes) {
            throw new ApiError(
              'image_too_large',
              `The source declares ${source.declaredLength} bytes; the limit is ${imports.policy.maxBytes}.`,
            )
          }
          return { filename, context, metadata, body: source.body }
        },
        requestFingerprint,
      )
    } finally {
      source?.close()
    }
  })
}
