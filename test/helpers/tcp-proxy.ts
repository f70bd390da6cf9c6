import { once } from 'node:events'
import net from 'node:net'

/**
 * What the proxy does to a connection:
 * - `refuse`: the connection is reset as soon as it is accepted, before a byte is forwarded;
 * - `latency`: every chunk, both ways, is delivered `ms` late (order kept);
 * - `stall`: after `afterBytes` bytes from the client, nothing more is forwarded in `direction`
 *   (`upstream` is client to backend), ends and closes included: the connection stays open, silent;
 * - `reset`: after `afterBytes` bytes from the client, both sockets are destroyed with a TCP RST.
 */
export type Fault =
  | { kind: 'none' }
  | { kind: 'refuse' }
  | { kind: 'latency'; ms: number }
  | { kind: 'stall'; direction: 'upstream' | 'downstream' | 'both'; afterBytes: number }
  | { kind: 'reset'; afterBytes: number }

export type FaultKind = Fault['kind']

/** Decides the fault of each new connection (numbered from 1). */
export type FaultPolicy = (connection: number) => Fault

export interface ProxyStats {
  connections: number
  /** Faults that took effect (a reset or stall whose byte count was never reached is not counted). */
  injected: Record<Exclude<FaultKind, 'none'>, number>
}

const HEALTHY: Fault = { kind: 'none' }

/**
 * A TCP proxy on 127.0.0.1 in front of `target`, injecting the fault its policy picks for each new
 * connection. Changing the policy drops the connections open under the old one, so the next request
 * opens a connection under the new one: lifting a fault leaves nothing faulty behind.
 */
export class FaultProxy {
  readonly stats: ProxyStats = { connections: 0, injected: { refuse: 0, latency: 0, stall: 0, reset: 0 } }
  private policy: FaultPolicy = () => HEALTHY
  private readonly open = new Set<net.Socket>()

  private constructor(
    private readonly server: net.Server,
    private readonly target: { host: string; port: number },
  ) {
    server.on('connection', (client) => this.accept(client))
  }

  /** Starts a proxy on a free loopback port forwarding to `target` (an `http://host:port` endpoint). */
  static async start(target: string): Promise<FaultProxy> {
    const { hostname, port } = new URL(target)
    // No Nagle delays (both sockets), as on Node's own HTTP sockets: a healthy proxy adds no latency.
    const proxy = new FaultProxy(net.createServer({ noDelay: true }), { host: hostname, port: Number(port) })
    proxy.server.listen(0, '127.0.0.1')
    await once(proxy.server, 'listening')
    return proxy
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`
  }

  /** One fault for every new connection, or a policy choosing per connection; drops the open connections. */
  inject(fault: Fault | FaultPolicy): void {
    this.policy = typeof fault === 'function' ? fault : () => fault
    for (const socket of this.open) socket.destroy()
  }

  lift(): void {
    this.inject(HEALTHY)
  }

  async close(): Promise<void> {
    for (const socket of this.open) socket.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private track(socket: net.Socket): void {
    this.open.add(socket)
    socket.once('close', () => this.open.delete(socket))
  }

  private accept(client: net.Socket): void {
    const fault = this.policy(++this.stats.connections)
    this.track(client)
    client.on('error', () => {})
    if (fault.kind === 'refuse') {
      this.stats.injected.refuse++
      client.resetAndDestroy()
      return
    }
    const backend = net.connect({ ...this.target, noDelay: true })
    this.track(backend)
    backend.on('error', () => {})

    if (fault.kind === 'latency') this.stats.injected.latency++
    const delay = fault.kind === 'latency' ? fault.ms : 0
    const later = (action: () => void) => (delay === 0 ? action() : void setTimeout(action, delay))
    const forward = (to: net.Socket, chunk: Buffer) => later(() => to.destroyed || to.write(chunk))

    const stallsUpstream = fault.kind === 'stall' && fault.direction !== 'downstream'
    const stallsDownstream = fault.kind === 'stall' && fault.direction !== 'upstream'
    // Client bytes forwarded before the cut (a reset, or a stall of the upstream), and the count that triggers the fault.
    const upstreamCut = fault.kind === 'reset' || stallsUpstream ? fault.afterBytes : Infinity
    const trigger = fault.kind === 'reset' || fault.kind === 'stall' ? fault.afterBytes : Infinity
    let fromClient = 0
    let triggered = false
    const downstreamStalled = () => triggered && stallsDownstream

    // A stalled direction is still read, so closes are noticed, but what arrives is dropped: the sender
    // waits for an answer that never comes.
    client.on('data', (chunk: Buffer) => {
      const room = upstreamCut - fromClient
      fromClient += chunk.length
      if (room > 0) forward(backend, room < chunk.length ? chunk.subarray(0, room) : chunk)
      if (fromClient < trigger || triggered) return
      triggered = true
      if (fault.kind === 'reset') {
        this.stats.injected.reset++
        client.resetAndDestroy()
        backend.resetAndDestroy()
      } else {
        this.stats.injected.stall++
      }
    })
    backend.on('data', (chunk: Buffer) => {
      if (!downstreamStalled()) forward(client, chunk)
    })

    // The service hanging up reaches the backend at once and drops what the proxy still holds for it, as a
    // torn-down connection does: nothing lands after the service gave up. The backend's answers and hang-ups
    // travel like data, late under latency and not at all through a stall; after a graceful end the client
    // socket finishes writing.
    client.once('close', () => backend.destroy())
    let backendEnded = false
    backend.on('end', () => {
      backendEnded = true
      if (!downstreamStalled()) later(() => client.end())
    })
    backend.once('close', () => backendEnded || downstreamStalled() || later(() => client.destroy()))
  }
}

/** A small seeded PRNG (mulberry32): the same seed gives the same run. Returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}
