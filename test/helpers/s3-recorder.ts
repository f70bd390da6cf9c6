import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'

/** One request that went through the recorder, as the S3 server saw it. */
export interface RecordedRequest {
  /** The S3 operation, derived from the method, the path and the query (see s3OperationOf). */
  operation: string
  /** The object key (path-style: the path after the bucket), or undefined for a bucket request. */
  key: string | undefined
  /** From the query, or from the CreateMultipartUpload answer. */
  uploadId: string | undefined
  partNumber: number | undefined
  /** The server's status, or undefined while unanswered or when the exchange broke before an answer. */
  status: number | undefined
  /** Settled: answered in full, or broken off by either side. */
  done: boolean
}

/** The operation an S3 request is, from the method and the query's subresources (the path is bucket[/key]). */
function s3OperationOf(method: string, key: string | undefined, query: URLSearchParams, headers: http.IncomingHttpHeaders): string {
  const uploadId = query.has('uploadId')
  switch (method) {
    case 'POST':
      if (query.has('uploads')) return 'CreateMultipartUpload'
      if (uploadId) return 'CompleteMultipartUpload'
      if (query.has('delete')) return 'DeleteObjects'
      break
    case 'PUT':
      if (key === undefined) return 'CreateBucket'
      if (query.has('partNumber') && uploadId) return headers['x-amz-copy-source'] ? 'UploadPartCopy' : 'UploadPart'
      if (query.has('tagging')) return 'PutObjectTagging'
      return headers['x-amz-copy-source'] ? 'CopyObject' : 'PutObject'
    case 'DELETE':
      if (key === undefined) return 'DeleteBucket'
      return uploadId ? 'AbortMultipartUpload' : 'DeleteObject'
    case 'GET':
      if (key === undefined) {
        if (query.has('uploads')) return 'ListMultipartUploads'
        return query.get('list-type') === '2' ? 'ListObjectsV2' : 'ListObjects'
      }
      return uploadId ? 'ListParts' : 'GetObject'
    case 'HEAD':
      return key === undefined ? 'HeadBucket' : 'HeadObject'
  }
  return `${method} (unknown)`
}

export interface S3Recorder {
  /** Where to point an S3 client instead of the server. */
  endpoint: string
  /** Every request in the order it arrived. */
  requests: RecordedRequest[]
  /**
   * The UploadIds of CreateMultipartUpload requests that no successful CompleteMultipartUpload and no
   * AbortMultipartUpload followed. An abort counts when it was sent, whatever the server answered: that
   * is the part the service controls (s3rver answers every AbortMultipartUpload with 405).
   */
  unfinishedMultipartUploads(): string[]
  /** Resolves once no request is in flight through the recorder. */
  idle(): Promise<void>
  stop(): Promise<void>
}

const UPLOAD_ID = /<UploadId>([^<]+)<\/UploadId>/

/**
 * An HTTP proxy in front of an S3 server (path-style requests) that records each request's operation,
 * UploadId and status. Bodies stream through in both directions, and a side that breaks off breaks the
 * other side's exchange too, so the server sees what a direct connection would have shown it.
 */
export async function startS3Recorder(target: string): Promise<S3Recorder> {
  const upstream = new URL(target)
  const requests: RecordedRequest[] = []
  let pending = 0
  const idleWaiters = new Set<() => void>()
  const settle = (record: RecordedRequest) => {
    if (record.done) return
    record.done = true
    if (--pending === 0) for (const wake of idleWaiters) wake()
  }

  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://recorder')
    const [, , ...keyPath] = url.pathname.split('/')
    const key = keyPath.length > 0 && keyPath.join('/') !== '' ? decodeURIComponent(keyPath.join('/')) : undefined
    const operation = s3OperationOf(request.method ?? 'GET', key, url.searchParams, request.headers)
    const partNumber = url.searchParams.get('partNumber')
    const record: RecordedRequest = {
      operation,
      key,
      uploadId: url.searchParams.get('uploadId') ?? undefined,
      partNumber: partNumber === null ? undefined : Number(partNumber),
      status: undefined,
      done: false,
    }
    requests.push(record)
    pending++

    const forwarded = http.request(
      { host: upstream.hostname, port: upstream.port, method: request.method, path: request.url, headers: request.headers, agent: false },
      (answer) => {
        record.status = answer.statusCode
        response.writeHead(answer.statusCode ?? 502, answer.headers)
        let createAnswer = ''
        answer.on('data', (chunk: Buffer) => {
          if (operation === 'CreateMultipartUpload') createAnswer += chunk.toString('utf8')
          response.write(chunk)
        })
        answer.on('end', () => {
          if (operation === 'CreateMultipartUpload') record.uploadId = UPLOAD_ID.exec(createAnswer)?.[1]
          response.end()
          settle(record)
        })
        answer.on('error', () => response.destroy())
      },
    )
    request.pipe(forwarded)
    // The service gave up on this request (its upload was aborted): the server must see it break off too.
    request.on('close', () => {
      if (!request.complete) forwarded.destroy()
    })
    response.on('close', () => {
      if (!response.writableFinished) forwarded.destroy()
      settle(record)
    })
    forwarded.on('error', () => {
      response.destroy()
      settle(record)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')

  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    unfinishedMultipartUploads() {
      const finished = new Set(
        requests
          .filter(
            (record) =>
              (record.operation === 'CompleteMultipartUpload' && record.status !== undefined && record.status < 300) ||
              record.operation === 'AbortMultipartUpload',
          )
          .map((record) => record.uploadId),
      )
      // A create whose answer was lost may still have started an upload on the server, that nobody can finish.
      return requests
        .map((record, index) => ({ ...record, uploadId: record.uploadId ?? `(CreateMultipartUpload #${index}, no UploadId seen)` }))
        .filter((record) => record.operation === 'CreateMultipartUpload' && !finished.has(record.uploadId))
        .map((record) => record.uploadId)
    },
    idle() {
      if (pending === 0) return Promise.resolve()
      return new Promise((resolve) => {
        const wake = () => {
          idleWaiters.delete(wake)
          resolve()
        }
        idleWaiters.add(wake)
      })
    },
    async stop() {
      server.closeAllConnections()
      server.close()
      await once(server, 'close')
    },
  }
}
