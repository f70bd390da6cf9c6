import type { FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { answeredStatus, CLIENT_CLOSED, onUnfinishedResponse } from '../http/response-lifecycle.js'

const PROBE_ROUTES = new Set(['/healthz', '/readyz'])

/** pino JSON; Authorization never logged; readable output only when developing (pino-pretty is a dev dependency). */
export function loggerOptions(config: Config): FastifyServerOptions['logger'] {
  return {
    level: config.logLevel,
    redact: ['req.headers.authorization', 'headers.authorization'],
    ...(config.development && { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } }),
  }
}

/** Each request's count of body bytes that have arrived (after any chunked framing is removed). */
const bodyBytesRead = new WeakMap<FastifyRequest['raw'], () => number>()

/**
 * Counts body bytes as Node hands them to the request stream: a chunked body has no Content-Length to
 * go by, and a body cut short or left unread is less than its Content-Length. Bytes already buffered
 * when counting starts are in the stream, unread (nothing reads before the first hook).
 */
function countBodyBytes(request: FastifyRequest): () => number {
  const incoming = request.raw
  let bytes = incoming.readableLength
  const push = incoming.push
  incoming.push = function (chunk: unknown, encoding?: BufferEncoding) {
    if (typeof chunk === 'string') bytes += Buffer.byteLength(chunk, encoding)
    else if (chunk instanceof Uint8Array) bytes += chunk.byteLength
    return push.call(this, chunk, encoding)
  }
  return () => bytes
}

/** Fields a route adds to its request's line (an upload: what it stored), and the requests whose line is written. */
const addedFields = new WeakMap<FastifyRequest, object>()
const lineWritten = new WeakSet<FastifyRequest>()

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * Adds `fields` to this request's log line: an upload costs one line, not two (a profile of 500 KB
     * uploads showed each line's write). False once the line has been written (its client left before
     * the answer): the caller then logs them in a line of their own.
     */
    addToLogLine(fields: object): boolean
  }
}

function addToLogLine(this: FastifyRequest, fields: object): boolean {
  if (lineWritten.has(this)) return false
  addedFields.set(this, { ...addedFields.get(this), ...fields })
  return true
}

/**
 * One line per request, answered or not; the request id and the key's name are on the logger's bindings
 * (reqId, apiKey).
 */
export function logResponse(request: FastifyRequest, reply: FastifyReply): void {
  lineWritten.add(request)
  const status = answeredStatus(reply)
  const code = status === CLIENT_CLOSED.status ? CLIENT_CLOSED.code : request.problemCode
  // Health probes every few seconds would drown the log: a healthy answer to one is debug.
  const probe = PROBE_ROUTES.has(request.routeOptions.url ?? '') && status === 200
  request.log[probe ? 'debug' : 'info'](
    {
      method: request.method,
      route: request.routeOptions.url ?? null,
      status,
      durationMs: Math.round(reply.elapsedTime),
      bytesIn: bodyBytesRead.get(request.raw)?.() ?? 0,
      bytesOut: Number(reply.getHeader('content-length') ?? 0),
      ...(code && { code }),
      ...addedFields.get(request),
    },
    'request',
  )
}

/**
 * The request log, in place of Fastify's own two lines a request: one line when it is answered, or
 * when its client leaves first. Registered first, so that a request refused by a later hook gets its
 * line too if its client leaves.
 */
export default fp(
  async (app) => {
    app.decorateRequest('addToLogLine', addToLogLine)
    app.addHook('onRequest', async (request, reply) => {
      bodyBytesRead.set(request.raw, countBodyBytes(request))
      onUnfinishedResponse(reply, () => logResponse(request, reply))
    })
    app.addHook('onResponse', async (request, reply) => logResponse(request, reply))
  },
  { name: 'request-log' },
)
