import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError } from '../errors.js'
import { routeFlagsOf } from '../http/route-options.js'
import { routeNotFound } from './problem-details.js'

/** Node's framing: a body is coming when it has a length above zero or is chunked. */
const carriesBody = (request: FastifyRequest): boolean =>
  Number(request.headers['content-length'] ?? 0) > 0 || request.headers['transfer-encoding'] !== undefined

const EXPECTS_CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i

/**
 * With `Expect: 100-continue` the client waits for `100 Continue` before it sends the body. Node would
 * send it at once, before any check; here it goes out only when something starts reading the body
 * (the upload pipeline, the multipart or JSON parser), so an answer decided from the headers alone
 * (401, 413 by Content-Length, 415 by Content-Type, 503) is sent instead of it.
 */
function continueOnFirstRead(request: FastifyRequest, reply: FastifyReply): void {
  const incoming = request.raw
  const read = incoming._read
  incoming._read = function (size: number) {
    incoming._read = read
    // An answer given first (its unread body then drained) is final: no 100 after it.
    if (request.problemCode === undefined && !reply.raw.headersSent) reply.raw.writeContinue()
    return read.call(this, size)
  }
}

/**
 * Bodies nobody reads are never read. Only the routes that read a body (`acceptsBody`) have
 * content-type parsers, added by their own plugins with limits sized to them; a body sent to any other
 * route, or to no route at all, is answered before a byte of it is read (after authentication, so a
 * /v1/* path still answers 401 first), and the answer closes the connection (problem-details).
 */
export default fp(
  async (app) => {
    // Registered before the routes, so their contexts inherit this empty set. An empty body with a
    // Content-Type (some clients send one with DELETE) is no body: nothing to parse, nothing read.
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', (_request, _payload, done) => done(null))

    // With a 'checkContinue' listener Node leaves the 100 to the application.
    app.server.on('checkContinue', (incoming, response) => app.server.emit('request', incoming, response))
    app.addHook('onRequest', async (request, reply) => {
      if (EXPECTS_CONTINUE.test(request.headers.expect ?? '')) continueOnFirstRead(request, reply)
    })

    // preParsing: after authentication (its own preParsing hook), before any parser.
    app.addHook('preParsing', async (request) => {
      if (!carriesBody(request)) return
      if (request.is404) throw routeNotFound(request)
      if (!routeFlagsOf(request).acceptsBody) {
        throw new ApiError('invalid_request', `${request.method} ${request.routeOptions.url ?? 'this path'} takes no request body.`)
      }
    })
  },
  { name: 'request-bodies', dependencies: ['problem-details', 'auth'] },
)
