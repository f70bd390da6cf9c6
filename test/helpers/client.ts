import http from 'node:http'

/** A body in network-sized pieces, as a client's socket delivers it. */
export async function* piecesOf(payload: Buffer, pieceSize = 64 * 1024): AsyncGenerator<Buffer> {
  for (let offset = 0; offset < payload.length; offset += pieceSize) yield payload.subarray(offset, offset + pieceSize)
}

export interface StreamedUploadResult {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
  /** Bytes the client had written when the response arrived. */
  sentWhenAnswered: number
  /** Bytes the client wrote in all. */
  sent: number
}

/**
 * POSTs a body produced chunk by chunk (never held whole), respecting backpressure, over a real socket.
 * Stops writing as soon as the response arrives, as a careful client does.
 */
export function streamUpload(
  target: { host: string; port: number },
  path: string,
  headers: http.OutgoingHttpHeaders,
  chunks: AsyncIterable<Buffer>,
): Promise<StreamedUploadResult> {
  return new Promise((resolve, reject) => {
    let sent = 0
    let sentWhenAnswered = -1
    const request = http.request({ ...target, method: 'POST', path, headers, agent: false }, (response) => {
      sentWhenAnswered = sent
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => (body += chunk))
      response.on('end', () => {
        request.destroy()
        resolve({ status: response.statusCode!, headers: response.headers, body, sentWhenAnswered, sent })
      })
    })
    request.on('error', (error) => {
      if (sentWhenAnswered < 0) reject(error)
    })
    void (async () => {
      for await (const chunk of chunks) {
        if (sentWhenAnswered >= 0 || request.destroyed) return
        sent += chunk.length
        if (!request.write(chunk)) {
          await new Promise<void>((drained) => {
            const done = () => {
              request.off('drain', done)
              request.off('response', done)
              request.off('close', done)
              drained()
            }
            request.on('drain', done).on('response', done).on('close', done)
          })
        }
      }
      if (sentWhenAnswered < 0 && !request.destroyed) request.end()
    })().catch(reject)
  })
}
