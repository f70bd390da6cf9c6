import fp from 'fastify-plugin'
import { ApiError } from '../errors.js'

/**
 * Which requests the service takes at all, decided from the request line and headers before anything
 * reads the body: none while the instance shuts down, none over HTTP/1.1 without a Host; and no connection
 * kept alive once the close has begun. Which requests may carry a body is request-bodies' rule.
 */
export default fp(
  async (app) => {
    let closing = false
    app.addHook('preClose', async () => {
      closing = true
    })
    // Every answer sent once the close has begun closes its connection: the refusals below, and requests
    // still in flight, which kept alive would hold the close until the keep-alive timeout.
    app.addHook('onSend', async (_request, reply) => {
      if (closing) reply.header('connection', 'close')
    })
    app.addHook('onRequest', async (request) => {
      if (closing) throw new ApiError('server_busy', 'This instance is shutting down; retry (another instance will answer).')
      // Node's requireHostHeader is off (app.ts): it would answer a bare 400 without saying why.
      if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
        throw new ApiError('invalid_request', 'HTTP/1.1 requests need a Host header.')
      }
    })
  },
  { name: 'request-policy' },
)
