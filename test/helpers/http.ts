import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'

/** Starts the app on a loopback port and returns its base address. */
export async function listen(app: FastifyInstance): Promise<{ host: string; port: number }> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { host: '127.0.0.1', port: (app.server.address() as AddressInfo).port }
}

/** A request whose path goes on the wire exactly as given (no dot-segment normalisation, unlike URL). */
export function rawRequest(
  target: { host: string; port: number },
  method: string,
  path: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.request({ ...target, method, path, agent: false }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => (body += chunk))
      response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body }))
    })
    request.on('error', reject)
    request.end()
  })
}
