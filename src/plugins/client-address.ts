import type { IncomingHttpHeaders } from 'node:http'
import { isIP } from 'node:net'
import fp from 'fastify-plugin'
import type { TrustProxy } from '../config.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The client's address as the proxy in front saw it (TRUST_PROXY), else the connection's. */
    clientAddress: string
  }
}

const single = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value.join(',') : value)

/**
 * Only what the trusted proxy itself wrote: Fly's proxy sets `Fly-Client-IP`, replacing any the client
 * sent; a proxy that appends to `X-Forwarded-For` writes the entry on the right, so with n such proxies
 * the n-th from the right is the address the outermost one was reached from, and everything left of it
 * is the client's own text. When the header is missing or is no address (a request that did not come
 * through the proxy, such as Fly's health checks), the connection's address is used.
 */
export function clientAddressOf(headers: IncomingHttpHeaders, connectionAddress: string, trust: TrustProxy): string {
  if (trust === false) return connectionAddress
  let address: string | undefined
  if (trust === 'fly') address = single(headers['fly-client-ip'])?.trim()
  else {
    const entries = single(headers['x-forwarded-for'])?.split(',') ?? []
    address = entries.length >= trust ? entries[entries.length - trust]!.trim() : undefined
  }
  return address !== undefined && isIP(address) !== 0 ? address : connectionAddress
}

/** `request.clientAddress`, for the per-address throttle and on every log line of the request. */
export default fp(
  async (app, options: { trustProxy: TrustProxy }) => {
    app.decorateRequest('clientAddress', {
      getter() {
        return clientAddressOf(this.headers, this.raw.socket?.remoteAddress ?? '', options.trustProxy)
      },
    })
    app.addHook('onRequest', async (request, reply) => {
      request.log = request.log.child({ clientAddress: request.clientAddress })
      reply.log = request.log
    })
  },
  { name: 'client-address' },
)
