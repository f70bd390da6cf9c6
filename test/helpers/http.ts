import { once } from 'node:events'
import http from 'node:http'
import net from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'

/** Starts the app on a loopback port and returns its base address. */
export async function listen(app: FastifyInstance): Promise<{ host: string; port: number }> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { host: '127.0.0.1', port: (app.server.address() as net.AddressInfo).port }
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

/** The port of a 127.0.0.1 listener that has just been closed: nothing answers there. */
export async function closedPort(): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())))
  return port
}

/**
 * A 127.0.0.1 listener that accepts connections and reads everything, but never answers (a hung server),
 * until the test ends. `received()` is every byte sent to it so far.
 */
export async function silentServer(t: Test): Promise<{ port: number; received(): Buffer }> {
  const chunks: Buffer[] = []
  const connections = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    connections.add(socket)
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    server.close()
    for (const connection of connections) connection.destroy()
  })
  return { port: (server.address() as net.AddressInfo).port, received: () => Buffer.concat(chunks) }
}

/** An answer as the contract checker takes it, from inject or from a real socket. */
export interface Answer {
  statusCode: number
  headers: Record<string, string | string[] | number | undefined>
  body: string
}

/**
 * A request over a real socket. Used where inject differs from a client: inject resolves `%2e%2e` as a dot
 * segment before routing, and its request never becomes `complete`, so under inject every error answer says
 * `Connection: close` (and, once the body has been read, arrives only after the service's linger delay).
 */
export async function overSocket(
  app: FastifyInstance,
  request: { method?: string; url: string; headers?: Record<string, string>; payload?: Buffer | string },
): Promise<Answer> {
  if (!app.server.listening) await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as net.AddressInfo
  const payload = request.payload === undefined ? undefined : Buffer.from(request.payload)
  const headers = { ...request.headers, ...(payload && { 'content-length': String(payload.length) }) }
  const agent = new http.Agent({ keepAlive: true })
  return new Promise<Answer>((resolve, reject) => {
    const outgoing = http.request(
      { host: '127.0.0.1', port, method: request.method ?? 'GET', path: request.url, headers, agent },
      (response) => {
        const chunks: Buffer[] = []
        response.on('data', (chunk: Buffer) => chunks.push(chunk))
        response.on('end', () =>
          resolve({ statusCode: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }),
        )
        response.on('error', reject)
      },
    )
    outgoing.on('error', reject)
    outgoing.end(payload)
  }).finally(() => agent.destroy())
}

/** The base URL of a 127.0.0.1 server that answers every request with a 307 to the same path at `target`. */
export async function redirectingServer(t: Test, target: string): Promise<string> {
  const server = http.createServer((request, response) => {
    request.resume()
    response.writeHead(307, { location: `${target}${request.url}` }).end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
}
