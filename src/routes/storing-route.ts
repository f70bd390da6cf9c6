import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import { ApiError, type ErrorCode } from '../errors.js'
import { CLIENT_CLOSED, onUnfinishedResponse } from '../http/response-lifecycle.js'
import type { BodyBuffers } from '../upload/body-buffers.js'
import type { UploadSource } from '../upload/pipeline.js'
import { Uploader, type UploadOutcome, type UploadSlots } from '../upload/uploader.js'

/** Aborts when the client goes away before it has its answer (also when it has already gone). */
function clientGoneSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  const abort = () => controller.abort(new ApiError('invalid_request', 'The client closed the connection.'))
  if (reply.raw.destroyed) abort()
  else onUnfinishedResponse(reply, abort)
  return controller.signal
}

export interface StoringRouteOptions {
  config: Config
  /** Aborted once uploads in flight have had SHUTDOWN_TIMEOUT_MS to finish. */
  shutdown: AbortSignal
  slots: UploadSlots
  bodyBuffers: BodyBuffers
  /** Answers that are no upload attempt (see Uploader). */
  notAttempts?: ReadonlySet<ErrorCode>
}

/**
 * The HTTP side of a route that stores images (an upload, an import): the Uploader does the work, this
 * answers 201 and tells it when an attempt has ended, so that every attempt is counted exactly once.
 */
export function storingRoute(app: FastifyInstance, options: StoringRouteOptions) {
  const uploader = new Uploader({ ...options, driver: app.storage, metrics: app.metrics })

  const answeredCode = (request: FastifyRequest, reply: FastifyReply) =>
    reply.statusCode === 201 ? undefined : (request.problemCode ?? 'internal_error')

  /** Route hooks: an answered attempt is counted here, a stored one also by the uploader (which knows the size). */
  const hooks = {
    onResponse: async (request: FastifyRequest, reply: FastifyReply) =>
      uploader.countAttempt(reply.elapsedTime, answeredCode(request, reply)),
    // An answer cut off by the client (a reset while an early 413 lingers) has no onResponse either.
    // Cut off before any answer was sent, `handle` counts it, once it knows how the upload ended.
    onRequest: async (request: FastifyRequest, reply: FastifyReply) =>
      onUnfinishedResponse(reply, () => reply.raw.headersSent && uploader.countAttempt(reply.elapsedTime, answeredCode(request, reply))),
  }

  /** Stores the image `sourceOf` opens and answers 201 (see Uploader.store). */
  async function handle(
    request: FastifyRequest,
    reply: FastifyReply,
    sourceOf: (signal: AbortSignal) => Promise<UploadSource>,
    requestFingerprint?: string,
  ) {
    // Watched from the moment the upload asks for a slot: a client may leave while it waits for one.
    let clientGone: AbortSignal | undefined
    let stored = false
    try {
      const outcome = await uploader.store(
        {
          headers: request.headers,
          scope: request.apiKeyName ?? 'anonymous',
          watchClientGone: () => (clientGone = clientGoneSignal(reply)),
          log: request.log,
          logStored: (fields) => request.addToLogLine(fields) || request.log.info(fields, 'image stored'),
        },
        sourceOf,
        requestFingerprint,
      )
      stored = true
      return created(reply, outcome)
    } finally {
      // Its answer will never go out, so no onResponse: counted here. Stored all the same (the client
      // left after sending the whole body), it counts as stored.
      if (clientGone?.aborted) uploader.countAttempt(reply.elapsedTime, stored ? undefined : CLIENT_CLOSED.code)
    }
  }

  return { policy: uploader.policy, hooks, handle }
}

function created(reply: FastifyReply, { upload, replayed }: UploadOutcome) {
  if (replayed) reply.header('idempotent-replayed', 'true')
  return reply.code(201).header('location', upload.url).send(upload)
}
