/** The service's HTTP API, as the console uses it: same origin, the token in the Authorization header only. */

/** An answer that is an error: the problem's `code` and `detail` (RFC 9457), or a description of what came back instead. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.detail = detail
  }
}

/** A key's path: its segments are [A-Za-z0-9._-], encoded anyway so nothing else could change the path. */
const keyPath = (key) => `/v1/images/${key.split('/').map(encodeURIComponent).join('/')}`

export function createApi(token) {
  async function call(method, path, body) {
    let response
    try {
      response = await fetch(path, { method, body, cache: 'no-store', credentials: 'omit', headers: { authorization: `Bearer ${token}` } })
    } catch {
      throw new ApiError(0, 'unreachable', 'The service cannot be reached.')
    }
    if (response.ok) return response.status === 204 ? undefined : response.json()
    const problem = await response.json().catch(() => undefined)
    throw new ApiError(
      response.status,
      problem?.code ?? 'unexpected_response',
      problem?.detail ?? `The service answered ${response.status} ${response.statusText}.`,
    )
  }

  return {
    whoami: () => call('GET', '/v1/whoami'),
    usage: () => call('GET', '/v1/usage'),
    /** One page of the objects under `prefix`, in key order. */
    list: (prefix, limit, cursor) => {
      const query = new URLSearchParams({ prefix, limit: String(limit) })
      if (cursor) query.set('cursor', cursor)
      return call('GET', `/v1/images?${query}`)
    },
    metadata: (key) => call('GET', keyPath(key)),
    remove: (key) => call('DELETE', keyPath(key)),
    /** A multipart upload as any client sends it: the text field first, then the file. */
    upload: (file, context) => {
      const form = new FormData()
      form.append('context', context)
      form.append('file', file, file.name)
      return call('POST', '/v1/images', form)
    },
  }
}
