import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Duplex, PassThrough } from 'node:stream'
import type { Test } from 'tap'
import { type ConnectTarget, directConnector, type ImportNetwork } from '../../src/import/source.js'

export const LOOPBACK = '127.0.0.1'

/** An HTTP response as raw bytes, for a fake source answering over an in-memory connection. */
export type FakeSource = (requestHead: string) => string | Buffer

export interface NetworkSpy {
  network: ImportNetwork
  /** Every name the import asked to resolve. */
  resolved: string[]
  /** Every connection the import attempted, in order. */
  connections: ConnectTarget[]
  /** The request heads the fake sources received. */
  requests: string[]
}

/**
 * An import network that never leaves the machine, whatever the code under test does. Names resolve
 * only through `names` (anything else is ENOTFOUND); a connection is recorded, then served in memory by
 * `fakes[address]` when there is one, made for real only to 127.0.0.1 when `loopback` allows it, and
 * refused otherwise, without a socket.
 */
export function spyNetwork(
  options: { names?: Record<string, string[]>; fakes?: Record<string, FakeSource>; loopback?: boolean } = {},
): NetworkSpy {
  const spy: NetworkSpy = {
    resolved: [],
    connections: [],
    requests: [],
    network: {
      resolve: async (hostname) => {
        spy.resolved.push(hostname)
        const addresses = options.names?.[hostname]
        if (!addresses) throw Object.assign(new Error(`test resolver: no address for ${hostname}`), { code: 'ENOTFOUND' })
        return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }))
      },
      connect: async (target, signal) => {
        spy.connections.push(target)
        const fake = options.fakes?.[target.address]
        if (fake) return inMemoryConnection(fake, spy.requests)
        if (options.loopback && target.address === LOOPBACK) return directConnector(target, signal)
        throw Object.assign(new Error(`test connector: refused ${target.address}`), { code: 'ECONNREFUSED' })
      },
    },
  }
  return spy
}

/** A connection whose other end is `fake`: it reads the request head and writes the whole response. */
function inMemoryConnection(fake: FakeSource, requests: string[]): Duplex {
  const toSource = new PassThrough()
  const toService = new PassThrough()
  let head = ''
  toSource.on('data', (chunk: Buffer) => {
    if (head.includes('\r\n\r\n')) return
    head += chunk.toString('latin1')
    if (!head.includes('\r\n\r\n')) return
    requests.push(head)
    toService.end(fake(head))
  })
  return Duplex.from({ readable: toService, writable: toSource })
}

/** A raw HTTP/1.1 response. */
export function rawResponse(status: number, headers: Record<string, string>, body: Buffer | string = ''): Buffer {
  const lines = Object.entries({ ...headers, 'content-length': String(Buffer.byteLength(body)), connection: 'close' }).map(
    ([name, value]) => `${name}: ${value}\r\n`,
  )
  return Buffer.concat([Buffer.from(`HTTP/1.1 ${status} X\r\n${lines.join('')}\r\n`, 'latin1'), Buffer.from(body)])
}

/** A source server on 127.0.0.1 for one test; `url(path)` addresses it. */
export async function startSource(t: Test, handler: http.RequestListener) {
  const server = http.createServer(handler)
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const { port } = server.address() as AddressInfo
  return { server, port, url: (path: string) => `http://${LOOPBACK}:${port}${path}` }
}

/** The environment that lets imports fetch from a local source server: the test-only setting. */
export const LOCAL_SOURCE_ENV = { IMPORT_ALLOW_INSECURE_LOCAL_SOURCES: 'true', IMPORT_ALLOWED_HOSTS: LOOPBACK }
