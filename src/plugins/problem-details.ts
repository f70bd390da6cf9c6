import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError, ERROR_CATALOGUE, type ErrorCode } from '../errors.js'
import { KEY_ROUTE_PREFIXES, routeFlagsOf } from '../http/route-options.js'
import { observeResponse } from './metrics.js'
import { logResponse } from './request-log.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The contract code of the error this request was answered with, if any. */
    problemCode?: ErrorCode
  }
}

/** How long to keep reading (and discarding) an unread request body after an early answer. */
const LINGER_MS = 5000
/** How long the client may pause meanwhile: one that trickles its body is not waited for. */
const LINGER_IDLE_MS = 1000

const FASTIFY_ERROR_CODES: Record<string, ApiError['code']> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_BODY_TOO_LARGE: 'image_too_large',
}

/** Any error as a contract error: ours as they are, a framework's 4xx as the client's mistake, the rest a bug. */
function asApiError(error: FastifyError): ApiError {
  if (error instanceof ApiError) return error
  const mapped = FASTIFY_ERROR_CODES[error.code]
  if (mapped) return new ApiError(mapped, error.message)
  const status = error.statusCode ?? 500
  if (error.validation || (status >= 400 && status < 500)) return new ApiError('invalid_request', error.message)
  return new ApiError('internal_error', 'An unexpected error occurred; it has been logged with the request id.', { cause: error })
}

const bodyRead = (incoming: IncomingMessage): boolean => incoming.complete || incoming.readableEnded

/**
 * Answering before the body has been read: the connection must close, but closing while the client is
 * still sending makes the kernel reset it, which can destroy the answer before the client reads it. So
 * the answer is written in full at once (it has a Content-Length, so the client can act on it), and the
 * response is ended, which closes the connection, only once the client stopped sending: it finished,
 * hung up, or paused for LINGER_IDLE_MS, or LINGER_MS passed. Meanwhile what it still sends is read and
 * discarded.
 */
function closeAfterAnswering(request: FastifyRequest, reply: FastifyReply): void {
  reply.header('connection', 'close')
  const incoming = request.raw
  // Stop whoever was reading (a form parser piped in, or an abandoned async iterator, whose 'readable'
  // listener would keep the stream paused) and let the rest flow into the void.
  incoming.unpipe()
  incoming.removeAllListeners('readable')
  incoming.resume()
  const response = reply.raw
  const end = response.end.bind(response)
  response.end = ((...args: Parameters<typeof end>) => {
    const [chunk] = args
    if (chunk !== undefined && typeof chunk !== 'function') response.write(chunk)
    const finish = () => {
      clearTimeout(timer)
      clearTimeout(idle)
      incoming.off('data', stillSending)
      end()
    }
    const timer = setTimeout(finish, LINGER_MS)
    const idle = setTimeout(finish, LINGER_IDLE_MS)
    const stillSending = () => idle.refresh()
    if (bodyRead(incoming) || incoming.destroyed) finish()
    else incoming.on('data', stillSending).once('end', finish).once('close', finish)
    return response
  }) as typeof response.end
}

export const routeNotFound = (request: FastifyRequest): ApiError =>
  new ApiError('not_found', `There is no route ${request.method} ${request.url.split('?')[0]}.`)

function problemOf(error: ApiError, requestId: string, fallbackUrl?: string) {
  return {
    type: `urn:image-upload-service:problem:${error.code}`,
    title: ERROR_CATALOGUE[error.code].title,
    status: error.status,
    detail: error.detail,
    code: error.code,
    request_id: requestId,
    ...(fallbackUrl !== undefined && { fallback_url: fallbackUrl }),
  }
}

export function sendProblem(request: FastifyRequest, reply: FastifyReply, error: ApiError, fallbackUrl?: string): FastifyReply {
  request.problemCode = error.code
  if (!bodyRead(request.raw)) closeAfterAnswering(request, reply)
  const retryAfter = error.retryAfterSeconds
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter))
  return reply
    .code(error.status)
    .type('application/problem+json')
    .send(problemOf(error, request.id, fallbackUrl))
}

/**
 * What Node's HTTP parser refuses before there is a request for Fastify (headers too large, broken
 * framing) is answered as problem+json too, and the connection closed.
 */
export function answerUnparsableRequest(error: NodeJS.ErrnoException, socket: Duplex): void {
  // Node's own guard: once a response has started on this connection, writing another would corrupt it
  // (a 400 inside an image being downloaded); then the connection can only be closed.
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent: boolean } })._httpMessage
  if (!socket.writable || error.code === 'ECONNRESET' || inFlight?.headersSent) {
    socket.destroy()
    return
  }
  const detail =
    error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? 'The request took longer than the server allows (REQUEST_TIMEOUT_MS, HEADERS_TIMEOUT_MS).'
      : `The request could not be parsed (${error.code ?? 'malformed'}).`
  const problem = new ApiError('invalid_request', detail)
  const requestId = randomUUID()
  const body = JSON.stringify(problemOf(problem, requestId))
  // Then close for good: a client still sending (a trickle past its timeout) must not keep the socket.
  socket.end(
    `HTTP/1.1 ${problem.status} Bad Request\r\nContent-Type: application/problem+json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\nX-Content-Type-Options: nosniff\r\n` +
      `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\nConnection: close\r\n\r\n${body}`,
    () => socket.destroy(),
  )
}

/**
 * Fastify's frameworkErrors: a path whose percent-encoding cannot be decoded never reaches a route.
 * It is answered like one that can be; no hook runs on this path, so the request id, the log line and
 * the metric are added here.
 */
export function answerFrameworkError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const keyRoute = KEY_ROUTE_PREFIXES.some((prefix) => request.url.startsWith(prefix))
  reply.raw.once('finish', () => {
    logResponse(request, reply)
    observeResponse(request.server.metrics, request, reply)
  })
  reply.header('x-request-id', request.id)
  sendProblem(request, reply, new ApiError(keyRoute ? 'invalid_key' : 'invalid_request', `The path is not valid: ${error.message}.`))
}

/** Every error, and every unknown route, answers RFC 9457 problem+json with a stable code. */
export default fp(
  async (app, options: { defaultPortraitUrl?: string | undefined }) => {
    app.setErrorHandler((error: FastifyError, request, reply) => {
      const problem = asApiError(error)
      if (problem.status >= 500) request.log.error({ err: error, code: problem.code }, problem.detail)
      else request.log.info({ code: problem.code, detail: problem.detail }, 'request refused')
      const fallbackUrl = routeFlagsOf(request).offersFallback ? options.defaultPortraitUrl : undefined
      return sendProblem(request, reply, problem, fallbackUrl)
    })
    app.setNotFoundHandler((request, reply) => sendProblem(request, reply, routeNotFound(request)))
  },
  { name: 'problem-details' },
)
