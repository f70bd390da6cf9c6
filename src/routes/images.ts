import type { IncomingMessage } from 'node:http'
import { Readable } from 'node:stream'
import multipart, { type Multipart } from '@fastify/multipart'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import { ApiError, objectNotFound } from '../errors.js'
import { IMAGES_PREFIX, type RouteFlags, STORING_ROUTE } from '../http/route-options.js'
import type { BodyBuffers } from '../upload/body-buffers.js'
import { watchFormFraming } from '../upload/form-length.js'
import { assertValidPrefix, keyFromPath, publicUrlOf, RECORDS_PREFIX } from '../upload/keys.js'
import {
  assertQueryParameterDecodes,
  assertValidContext,
  checkedFilename,
  checkedFormFilename,
  clientMetadata,
  metadataFromRequestHeaders,
  metadataToResponseHeaders,
} from '../upload/metadata.js'
import { coalesced, type UploadSource } from '../upload/pipeline.js'
import type { UploadSlots } from '../upload/uploader.js'
import { storingRoute } from './storing-route.js'

const MAX_FORM_PARTS = 100

/**
 * Routes that read the client's body are the client's fault when it fails: a malformed form,
 * or a body that ended early. Contract errors raised on purpose pass through.
 */
function asClientError(error: unknown): unknown {
  if (error instanceof ApiError) return error
  const message = error instanceof Error ? error.message : String(error)
  return new ApiError('invalid_request', `The request body could not be read: ${message}.`)
}

async function* readClientBody(stream: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  try {
    yield* stream
  } catch (error) {
    throw asClientError(error)
  }
}

interface RawUploadQuery {
  filename?: string
  context?: string
}

/** Raw body: the image is the whole body; filename and context in the query, metadata in X-Meta-* headers. */
function rawUploadSource(request: FastifyRequest<{ Querystring: RawUploadQuery }>, maxBytes: number): UploadSource {
  const declaredLength = Number(request.headers['content-length'])
  if (declaredLength > maxBytes) {
    throw new ApiError('image_too_large', `The image is larger than the limit of ${maxBytes} bytes.`)
  }
  assertQueryParameterDecodes(request.url, 'filename')
  return {
    filename: checkedFilename(request.query.filename),
    context: assertValidContext(request.query.context),
    metadata: clientMetadata(metadataFromRequestHeaders(request.headers)),
    body: readClientBody(coalesced((request.body as Readable | undefined) ?? Readable.from([]))),
    // Absent with Transfer-Encoding: chunked (Node refuses a request that has both).
    declaredLength: Number.isSafeInteger(declaredLength) ? declaredLength : undefined,
  }
}

/** How often a pending form part is checked on; the parser has one to two of these once the body is in. */
const PARSER_CHECK_MS = 500

/**
 * `next`, or a 400 with `detail` if the whole request has arrived and `next` is still pending one to two
 * checks later. busboy (3.2.6) stops for good, with no error, when the form's last part is one it skips (no
 * Content-Disposition, padding after its boundary line) and that part's last bytes filled its buffer: its
 * write callback is never called again, so the request is not read to its end either. Such a request would
 * otherwise hold its upload slot until IDLE_TIMEOUT_MS and end with no answer. No file is being read while
 * a part is awaited, so nothing else can hold the parser back once every byte has arrived.
 */
async function unlessParserStalls<T>(next: Promise<T>, request: IncomingMessage, detail: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const stalled = new Promise<never>((_, reject) => {
    let completeBefore = false
    timer = setInterval(() => {
      if (completeBefore) reject(new ApiError('invalid_request', detail))
      completeBefore = request.complete
    }, PARSER_CHECK_MS)
  })
  try {
    return await Promise.race([next, stalled])
  } finally {
    clearInterval(timer)
  }
}

/**
 * multipart/form-data: text fields first, then exactly one file part named `file`, then nothing. With a
 * Content-Length, the file's exact length is worked out from it (see form-length.ts).
 */
async function multipartUploadSource(request: FastifyRequest, maxBytes: number): Promise<UploadSource> {
  const parts = request
    .parts({
      // One byte over the limit reaches the pipeline, which answers 413; busboy alone would only truncate.
      limits: { fileSize: maxBytes + 1, fieldSize: 2048, fieldNameSize: 100, parts: MAX_FORM_PARTS, headerPairs: 100 },
    })
    [Symbol.asyncIterator]()
  let firstPart: Promise<IteratorResult<Multipart>> | undefined = parts.next() // the parser starts reading the body
  const framing = watchFormFraming(request.raw)
  const nextPart = async (ifStalled: string): Promise<Multipart | undefined> => {
    try {
      const next = firstPart ?? parts.next()
      firstPart = undefined
      const { value, done } = await unlessParserStalls(next, request.raw, ifStalled)
      return done ? undefined : value
    } catch (error) {
      throw asClientError(error)
    }
  }
  const fields: [string, string][] = []
  let context: string | undefined
  const noFilePart = 'The form has no file part named "file" that could be read.'
  for (let part = await nextPart(noFilePart); part !== undefined; part = await nextPart(noFilePart)) {
    if (part.type === 'field') {
      if (part.fieldnameTruncated || part.valueTruncated) {
        throw new ApiError('invalid_metadata', `The form field "${part.fieldname.slice(0, 64)}" is too long.`)
      }
      if (part.fieldname === 'context') context = String(part.value)
      else fields.push([part.fieldname, String(part.value)])
      continue
    }
    if (part.fieldname !== 'file') {
      throw new ApiError('invalid_request', `The file part must be named "file", not "${part.fieldname.slice(0, 64)}".`)
    }
    // Known when the request has a Content-Length: the file then streams to storage as it arrives, in one request.
    const declaredLength = framing?.fileLength()
    if (declaredLength !== undefined && declaredLength > maxBytes) {
      throw new ApiError('image_too_large', `The image is larger than the limit of ${maxBytes} bytes.`)
    }
    const file = part.file
    return {
      filename: checkedFormFilename(part.filename),
      context: assertValidContext(context),
      metadata: clientMetadata(fields),
      body: readClientBody(coalesced(file)),
      declaredLength,
      beforeCommit: async () => {
        const following = await nextPart('A part the form parser cannot read follows the file part; send text fields first and one file.')
        if (following !== undefined) {
          const what = following.type === 'file' ? 'A second file' : `The field "${following.fieldname.slice(0, 64)}"`
          throw new ApiError('invalid_request', `${what} follows the file part; send text fields first and one file.`)
        }
      },
    }
  }
  throw new ApiError('invalid_request', 'The form has no file part named "file".')
}

/** A listing's page size: the default, and the most ListObjectsV2 returns in one request. */
const LIST_LIMIT = { default: 100, max: 1000 }

interface ListQuery {
  prefix?: string
  limit?: string
  cursor?: string
}

function listLimitOf(text: string | undefined): number {
  if (text === undefined) return LIST_LIMIT.default
  const limit = Number(text)
  if (!/^\d+$/.test(text) || limit < 1 || limit > LIST_LIMIT.max) {
    throw new ApiError('invalid_request', `limit must be a whole number from 1 to ${LIST_LIMIT.max}.`)
  }
  return limit
}

/** A page's cursor: the key the next page starts after, base64url-encoded, so that clients pass it on as it is. */
const cursorOf = (startAfter: string): string => Buffer.from(startAfter).toString('base64url')

function startAfterOf(cursor: string): string {
  const startAfter = Buffer.from(cursor, 'base64url').toString()
  // Only a cursor this service wrote decodes and encodes back to itself.
  if (cursor === '' || cursorOf(startAfter) !== cursor) {
    throw new ApiError('invalid_request', 'The cursor is not one this service gave; list again from the first page.')
  }
  return startAfter
}

const keyOf = (request: FastifyRequest): string => keyFromPath(request.url, IMAGES_PREFIX)

async function findObject(app: FastifyInstance, key: string) {
  const object = await app.storage.head(key)
  if (!object) throw objectNotFound(key)
  return object
}

/** POST /v1/images, the listing (GET /v1/images) and the per-key HEAD, GET and DELETE. */
export default async function imageRoutes(
  app: FastifyInstance,
  options: { config: Config; shutdown: AbortSignal; uploadSlots: UploadSlots; bodyBuffers: BodyBuffers },
) {
  const { config, shutdown, uploadSlots, bodyBuffers } = options
  // This context reads upload bodies only: multipart, or the raw image as an unparsed stream. Any other
  // Content-Type, or none, is a raw body (curl --data-binary declares application/x-www-form-urlencoded):
  // the content decides the type, never the declaration.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => done(null, payload))
  // A multipart body that is no form (multipart/mixed, related…) is neither of the two request forms.
  app.addContentTypeParser(/^multipart\/(?!form-data\b)/i, (request, _payload, done) =>
    done(
      new ApiError(
        'unsupported_media_type',
        `${request.headers['content-type']?.split(';')[0]} is not accepted: send multipart/form-data, or the image itself as the body.`,
      ),
    ),
  )
  await app.register(multipart, { throwFileSizeLimit: false })

  const uploads = storingRoute(app, { config, shutdown, slots: uploadSlots, bodyBuffers })
  const uploadQuery = {
    type: 'object',
    properties: { filename: { type: 'string' }, context: { type: 'string' } },
  } as const
  const uploadRoute = {
    schema: { querystring: uploadQuery },
    config: STORING_ROUTE,
    ...uploads.hooks,
  }

  app.post<{ Querystring: RawUploadQuery }>('/v1/images', uploadRoute, (request, reply) =>
    uploads.handle(request, reply, async () =>
      request.isMultipart() ? multipartUploadSource(request, config.maxUploadBytes) : rawUploadSource(request, config.maxUploadBytes),
    ),
  )

  const reading = { config: { scope: 'read' } satisfies RouteFlags }
  const listQuery = {
    type: 'object',
    properties: { prefix: { type: 'string' }, limit: { type: 'string' }, cursor: { type: 'string' } },
  } as const
  app.get<{ Querystring: ListQuery }>(
    '/v1/images',
    { ...reading, schema: { querystring: listQuery }, exposeHeadRoute: false },
    async (request) => {
      const { prefix = '', limit, cursor } = request.query
      const page = await app.storage.list({
        prefix: assertValidPrefix(prefix),
        limit: listLimitOf(limit),
        startAfter: cursor === undefined ? undefined : startAfterOf(cursor),
        hidden: RECORDS_PREFIX,
      })
      return {
        items: page.objects.map((object) => ({
          key: object.key,
          url: publicUrlOf(config.publicUrl, object.key),
          size: object.size,
          last_modified: object.lastModified.toISOString(),
          etag: object.etag,
        })),
        next_cursor: page.next === undefined ? null : cursorOf(page.next),
      }
    },
  )

  app.head(`${IMAGES_PREFIX}*`, reading, async (request, reply) => {
    const object = await findObject(app, keyOf(request))
    reply.headers({
      'content-type': object.contentType,
      'content-length': String(object.size),
      etag: object.etag,
      'last-modified': object.lastModified.toUTCString(),
      ...(object.cacheControl && { 'cache-control': object.cacheControl }),
      ...metadataToResponseHeaders(object.metadata),
    })
    return reply.send()
  })

  app.get(`${IMAGES_PREFIX}*`, { ...reading, exposeHeadRoute: false }, async (request) => {
    const key = keyOf(request)
    const object = await findObject(app, key)
    return {
      key,
      url: publicUrlOf(config.publicUrl, key),
      size: object.size,
      content_type: object.contentType,
      last_modified: object.lastModified.toISOString(),
      etag: object.etag,
      metadata: object.metadata,
    }
  })

  app.delete(`${IMAGES_PREFIX}*`, { config: { scope: 'delete' } satisfies RouteFlags }, async (request, reply) => {
    await app.storage.delete(keyOf(request))
    return reply.code(204).send()
  })
}
