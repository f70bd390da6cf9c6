import type { FastifyReply } from 'fastify'

/**
 * How a request is recorded when its client disconnected before any answer was sent: no answer exists,
 * so the logs and metrics use nginx's status 499 ("client closed request") and a code of their own.
 */
export const CLIENT_CLOSED = { status: 499, code: 'client_closed' } as const

/** The status the client was answered with, or CLIENT_CLOSED's when it left before any answer. */
export function answeredStatus(reply: FastifyReply): number {
  return reply.raw.headersSent ? reply.statusCode : CLIENT_CLOSED.status
}

/**
 * Calls `listener` when the connection closed before the answer was complete (the client went away).
 * Node then emits no 'finish', so Fastify runs no onResponse hook: what one records, this must record.
 * ('finish' itself is watched: an injected response never reports writableFinished.)
 */
export function onUnfinishedResponse(reply: FastifyReply, listener: () => void): void {
  let finished = false
  reply.raw.once('finish', () => (finished = true))
  reply.raw.once('close', () => {
    if (!finished) listener()
  })
}
