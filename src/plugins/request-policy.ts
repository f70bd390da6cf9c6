import fp from 'fastify-plugin'
import { ApiError } from '../errors.js'
import { routeFlagsOf } from '../http/route-options.js'

/**
 * Which requests the service takes at all, decided from the request line and headers before anything
 * reads the body: none while the instance shuts down, none over HTTP/1.1 without a Host, and a body
 * only on a route that reads one (RouteFlags.acceptsBody).
 */
export default fp(
  async (app) => {
    let closing = false
    app.addHook('preClose', async () => {
      closing = true
    })
    app.addHook('onRequest', async (request, reply) => {
      if (closing) {
        reply.header('connection', 'close')
        throw new ApiError('server_busy', 'This instance is shutting down; retry (another instance will answer).')
      }
      // Node's requireHostHeader is off (app.ts): it would answer a bare 400 without saying why.
      if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
        throw new ApiError('invalid_request', 'HTTP/1.1 requests need a Host header.')
      }
      // Only a route that reads a body gets one. Any other body is refused at once, so it cannot hold
      // the connection open, unread, until REQUEST_TIMEOUT_MS.
      const hasBody = Number(request.headers['content-length'] ?? 0) > 0 || request.headers['transfer-encoding'] !== undefined
      if (hasBody && !request.is404 && !routeFlagsOf(request).acceptsBody) {
        throw new ApiError('invalid_request', `${request.method} ${request.routeOptions.url ?? 'this path'} takes no request body.`)
      }
    })
  },
  { name: 'request-policy' },
)
