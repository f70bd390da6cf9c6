/**
 * A raw HTTP/1.1 client: writes exactly the bytes given, reads whatever comes back, never half-closes unless
 * told to (Node aborts a request whose client half-closed, so a half-close is a hostile act of its own).
 */
import net from 'node:net'

export type Target = { host: string; port: number }

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: Buffer
}

export interface Exchange {
  /** The first complete response, if one arrived. */
  response?: RawResponse
  /** Bytes after the first response (a second response written onto the same connection would show here). */
  trailing: Buffer
  /** Everything received. */
  received: Buffer
  /** A socket error seen before any response (a reset, for instance). */
  error?: string
  timedOut: boolean
}

/** How the client ends its side: wait for the answer, half-close (FIN) after writing, or hang up (abandon). */
export type Ending = 'wait' | 'half-close' | 'abandon'

/** Parses one response from the start of `data`; undefined while incomplete. */
function parseResponse(data: Buffer, noBody: boolean, closed: boolean): { response: RawResponse; rest: Buffer } | undefined {
  const end = data.indexOf('\r\n\r\n')
  if (end < 0) return undefined
  const lines = data.subarray(0, end).toString('latin1').split('\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? NaN)
  const headers: Record<string, string> = {}
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value
  }
  let rest = data.subarray(end + 4)
  if (noBody || status === 204 || status === 304 || (status >= 100 && status < 200)) {
    return { response: { status, headers, body: Buffer.alloc(0) }, rest }
  }
  if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length'])
    if (rest.length < length) return undefined
    return { response: { status, headers, body: rest.subarray(0, length) }, rest: rest.subarray(length) }
  }
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const chunks: Buffer[] = []
    for (;;) {
      const lineEnd = rest.indexOf('\r\n')
      if (lineEnd < 0) return undefined
      const size = parseInt(rest.subarray(0, lineEnd).toString('latin1'), 16)
      if (rest.length < lineEnd + 2 + size + 2) return undefined
      if (size === 0) {
        const trailerEnd = rest.indexOf('\r\n\r\n', lineEnd - 2)
        if (trailerEnd < 0) return undefined
        return { response: { status, headers, body: Buffer.concat(chunks) }, rest: rest.subarray(trailerEnd + 4) }
      }
      chunks.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size))
      rest = rest.subarray(lineEnd + 2 + size + 2)
    }
  }
  // No framing: the body runs to the end of the connection.
  return closed ? { response: { status, headers, body: rest }, rest: Buffer.alloc(0) } : undefined
}

/**
 * Sends `pieces` one after the other (pausing `pauseMs` between them so the server sees them apart), keeps
 * reading while writing (the service may answer and stop reading before the body is sent), then ends as told.
 */
export function exchange(
  target: Target,
  pieces: Buffer[],
  options: { ending?: Ending; head?: boolean; pauseMs?: number; timeoutMs?: number } = {},
): Promise<Exchange> {
  const { ending = 'wait', head = false, pauseMs = 0, timeoutMs = 8000 } = options
  return new Promise((resolve) => {
    const socket = net.connect(target.port, target.host)
    const received: Buffer[] = []
    let error: string | undefined
    let settled = false
    let grace: NodeJS.Timeout | undefined
    const finish = (timedOut: boolean) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      clearTimeout(grace)
      socket.destroy()
      const data = Buffer.concat(received)
      const parsed = parseResponse(data, head, true)
      resolve({ response: parsed?.response, trailing: parsed?.rest ?? Buffer.alloc(0), received: data, error, timedOut })
    }
    const timer = setTimeout(() => finish(true), timeoutMs)
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk)
      // A complete answer: wait a little for anything that should not follow it, then stop.
      if (grace === undefined && parseResponse(Buffer.concat(received), head, false)) grace = setTimeout(() => finish(false), 150)
    })
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (received.length === 0) error ??= e.code ?? e.message
    })
    socket.on('close', () => finish(false))
    socket.once('connect', async () => {
      for (const [index, piece] of pieces.entries()) {
        if (socket.destroyed || !socket.writable) break
        if (index > 0 && pauseMs > 0) await new Promise((wait) => setTimeout(wait, pauseMs))
        if (socket.destroyed || !socket.writable) break
        await new Promise<void>((written) => socket.write(piece, () => written()))
      }
      if (ending === 'half-close' && !socket.destroyed) socket.end()
      if (ending === 'abandon') {
        // Give the server a moment to start on what it got, then hang up without a word.
        setTimeout(() => finish(false), 40)
      }
    })
  })
}

/** The head of a request; header values may be raw bytes. Connection: close, so the server ends the exchange. */
export function requestHead(method: string, target: string | Buffer, headers: [string, string | Buffer][] = []): Buffer {
  const lines: Buffer[] = [
    Buffer.from(`${method} `),
    Buffer.isBuffer(target) ? target : Buffer.from(target, 'latin1'),
    Buffer.from(' HTTP/1.1\r\n'),
  ]
  for (const [name, value] of [['Host', '127.0.0.1'], ...headers] as [string, string | Buffer][]) {
    lines.push(Buffer.from(`${name}: `), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n'))
  }
  lines.push(Buffer.from('\r\n'))
  return Buffer.concat(lines)
}
