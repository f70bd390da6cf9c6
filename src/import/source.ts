import dns from 'node:dns/promises'
import http, { type IncomingMessage } from 'node:http'
import net from 'node:net'
import type { Duplex } from 'node:stream'
import tls from 'node:tls'
import { ApiError } from '../errors.js'
import { addressRefusal } from './address-policy.js'

export interface ResolvedAddress {
  address: string
  family: number
}

/** Every address a host name resolves to. */
export type Resolver = (hostname: string) => Promise<ResolvedAddress[]>

export interface ConnectTarget {
  /** The address that was checked: the connection goes there and nowhere else. */
  address: string
  port: number
  /** The URL's host name, for TLS SNI and the certificate check. */
  servername: string
  tls: boolean
}

/** Opens a connection to exactly `target.address`, TLS established when `target.tls`. */
export type Connector = (target: ConnectTarget, signal: AbortSignal) => Promise<Duplex>

/** The two points where an import touches the network; tests replace both. */
export interface ImportNetwork {
  resolve: Resolver
  connect: Connector
}

export const systemResolver: Resolver = (hostname) => dns.lookup(hostname, { all: true, verbatim: true })

export const directConnector: Connector = (target, signal) =>
  new Promise((resolve, reject) => {
    // SNI may not carry an IP address (RFC 6066); the certificate is then checked against the address.
    const servername = net.isIP(target.servername) ? undefined : target.servername
    const socket = target.tls
      ? tls.connect({ host: target.address, port: target.port, servername, ALPNProtocols: ['http/1.1'] })
      : net.connect({ host: target.address, port: target.port })
    const onAbort = () => socket.destroy(signal.reason as Error)
    const settle = () => {
      signal.removeEventListener('abort', onAbort)
      socket.off('error', reject)
    }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', reject)
    socket.once(target.tls ? 'secureConnect' : 'connect', () => {
      settle()
      resolve(socket)
    })
  })

export const SYSTEM_NETWORK: ImportNetwork = { resolve: systemResolver, connect: directConnector }

export interface SourceRules {
  /** Exact host names, lower case (IMPORT_ALLOWED_HOSTS). */
  allowedHosts: ReadonlySet<string>
  /** Tests only: http:// sources, and 127.0.0.1 as an address (IMPORT_ALLOW_INSECURE_LOCAL_SOURCES). */
  allowInsecureLocal: boolean
  /** The whole download, redirects included (IMPORT_TIMEOUT_MS). */
  timeoutMs: number
}

export interface OpenedSource {
  /** The image bytes; any failure while they arrive is an `import_failed` error (or the abort's reason). */
  body: AsyncIterable<Buffer>
  /** The Content-Length the source declared, if any. */
  declaredLength: number | undefined
  /** Ends the download and its deadline; call it once the import is over, however it ended. */
  close(): void
}

export const MAX_REDIRECTS = 3
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308])
const LOCAL_ADDRESS = '127.0.0.1'
const USER_AGENT = 'image-upload-service (import)'

const refused = (detail: string) => new ApiError('import_refused', detail)

interface Destination {
  hostname: string
  port: number
  tls: boolean
  /** The host as the Host header carries it. */
  host: string
  path: string
}

/** The checks a URL passes before any name is resolved: scheme, credentials, host. */
function destinationOf(url: URL, rules: SourceRules): Destination {
  const tlsScheme = url.protocol === 'https:'
  if (!tlsScheme && !(url.protocol === 'http:' && rules.allowInsecureLocal)) {
    throw refused(`Only https:// URLs may be imported, not ${url.protocol}//.`)
  }
  if (url.username || url.password) throw refused('An import URL may not carry credentials.')
  // URL lower-cases the name and normalises IP literals (`0x7f.1` is 127.0.0.1); IPv6 comes in brackets.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '')
  if (net.isIP(hostname)) {
    const refusal = refusalOf(hostname, rules)
    if (refusal) throw refused(`${hostname} is ${refusal}; imports reach public addresses only.`)
  }
  if (!rules.allowedHosts.has(hostname)) throw refused(`${hostname} is not a host imports may fetch from (IMPORT_ALLOWED_HOSTS).`)
  const port = url.port ? Number(url.port) : tlsScheme ? 443 : 80
  const host = `${net.isIP(hostname) === 6 ? `[${hostname}]` : hostname}${url.port ? `:${url.port}` : ''}`
  return { hostname, port, tls: tlsScheme, host, path: `${url.pathname}${url.search}` }
}

function refusalOf(address: string, rules: SourceRules): string | undefined {
  if (rules.allowInsecureLocal && address === LOCAL_ADDRESS) return undefined
  return addressRefusal(address)
}

function parseUrl(text: string): URL {
  try {
    return new URL(text)
  } catch {
    throw refused('The source URL is not a valid absolute URL.')
  }
}

/** Resolves the name and checks every address it gives: one refused address refuses the host. */
async function addressesOf(destination: Destination, rules: SourceRules, resolve: Resolver): Promise<string[]> {
  const { hostname } = destination
  let addresses: string[]
  if (net.isIP(hostname)) addresses = [hostname]
  else {
    try {
      addresses = (await resolve(hostname)).map((resolved) => resolved.address)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      throw new ApiError('import_failed', `The source host ${hostname} could not be resolved${code ? ` (${code})` : ''}.`, { cause: error })
    }
    if (addresses.length === 0) throw new ApiError('import_failed', `The source host ${hostname} has no address.`)
  }
  for (const address of addresses) {
    const refusal = refusalOf(address, rules)
    if (refusal) throw refused(`${hostname} resolves to ${refusal}; imports reach public addresses only.`)
  }
  // The test-only setting lets plain http reach 127.0.0.1 and nothing else.
  if (!destination.tls && addresses.some((address) => address !== LOCAL_ADDRESS)) {
    throw refused(`Plain http:// is allowed only to ${LOCAL_ADDRESS} (IMPORT_ALLOW_INSECURE_LOCAL_SOURCES).`)
  }
  return addresses
}

/** One GET over a connection that is already open (to the checked address). */
function get(socket: Duplex, destination: Destination): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = http.request({
      createConnection: () => socket as net.Socket,
      method: 'GET',
      path: destination.path,
      headers: { host: destination.host, 'user-agent': USER_AGENT, accept: 'image/*', 'accept-encoding': 'identity', connection: 'close' },
    })
    request.once('response', resolve)
    request.once('error', reject)
    request.end()
  })
}

/**
 * Opens the image at `sourceUrl` for reading, by the import's rules: https only, an allowed host, every
 * address it resolves to public, the connection made to the address that was checked (so a second DNS
 * answer cannot swap it), at most MAX_REDIRECTS redirects each checked the same way, and one deadline for
 * the whole download. Refusals are `import_refused`; a source that fails is `import_failed`.
 */
export async function openSource(
  sourceUrl: string,
  rules: SourceRules,
  network: ImportNetwork,
  signal: AbortSignal,
): Promise<OpenedSource> {
  const deadline = new AbortController()
  const timer = setTimeout(
    () =>
      deadline.abort(
        new ApiError('import_failed', `The source did not deliver the image within ${rules.timeoutMs} ms (IMPORT_TIMEOUT_MS).`),
      ),
    rules.timeoutMs,
  )
  const aborted = AbortSignal.any([deadline.signal, signal])
  let socket: Duplex | undefined
  const onAbort = () => socket?.destroy(aborted.reason as Error)
  aborted.addEventListener('abort', onAbort, { once: true })
  const close = () => {
    clearTimeout(timer)
    aborted.removeEventListener('abort', onAbort)
    socket?.destroy()
  }
  /** What a failure means: the abort's reason once aborted; a contract error as it is; else the source failed. */
  const failureOf = (error: unknown): unknown => {
    if (aborted.aborted) return aborted.reason
    if (error instanceof ApiError) return error
    const code = (error as NodeJS.ErrnoException).code
    return new ApiError('import_failed', `The source could not be read${code ? ` (${code})` : ''}.`, { cause: error })
  }

  try {
    let url = parseUrl(sourceUrl)
    for (let redirects = 0; ; redirects++) {
      const destination = destinationOf(url, rules)
      // A name server that never answers must not outlast the deadline.
      const addresses = await untilAborted(addressesOf(destination, rules, network.resolve), aborted)
      socket = await connectToFirst(addresses, destination, network.connect, aborted)
      const response = await get(socket, destination)
      const status = response.statusCode ?? 0
      const location = response.headers.location
      if (REDIRECT_STATUSES.has(status) && location !== undefined) {
        socket.destroy()
        if (redirects === MAX_REDIRECTS) throw new ApiError('import_failed', `The source redirected more than ${MAX_REDIRECTS} times.`)
        if (!URL.canParse(location, url)) throw new ApiError('import_failed', 'The source redirected to a URL that is not valid.')
        url = new URL(location, url)
        continue
      }
      if (status < 200 || status > 299) throw new ApiError('import_failed', `The source answered ${status}.`)
      const declared = Number(response.headers['content-length'])
      return { body: readBody(response, failureOf), declaredLength: Number.isSafeInteger(declared) ? declared : undefined, close }
    }
  } catch (error) {
    close()
    throw failureOf(error)
  }
}

function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error)
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error)
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/** Tries the addresses in order (all of them checked), as a browser does when one does not answer. */
async function connectToFirst(addresses: string[], destination: Destination, connect: Connector, signal: AbortSignal): Promise<Duplex> {
  let lastError: unknown
  for (const address of addresses) {
    if (signal.aborted) break
    try {
      return await connect({ address, port: destination.port, servername: destination.hostname, tls: destination.tls }, signal)
    } catch (error) {
      lastError = error
    }
  }
  const code = (lastError as NodeJS.ErrnoException | undefined)?.code
  throw new ApiError('import_failed', `The source host ${destination.hostname} could not be reached${code ? ` (${code})` : ''}.`, {
    cause: lastError,
  })
}

async function* readBody(response: IncomingMessage, failureOf: (error: unknown) => unknown): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of response) yield chunk as Buffer
  } catch (error) {
    throw failureOf(error)
  }
}
