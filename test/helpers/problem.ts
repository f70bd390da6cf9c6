import { ERROR_CATALOGUE } from '../../src/errors.js'
import type { RawResponse } from './raw-http.js'

/** The media type of a problem document (RFC 9457), with or without parameters. */
export const PROBLEM_JSON = /^application\/problem\+json\b/

// The contract's 4xx statuses and the codes each may carry (409 belongs to idempotency: left out, as no request
// checked with this sends an Idempotency-Key).
const CONTRACT_4XX = [400, 401, 404, 413, 415, 422, 429]
const CODES_BY_STATUS = new Map<number, string[]>()
for (const [code, { status }] of Object.entries(ERROR_CATALOGUE)) {
  if (CONTRACT_4XX.includes(status)) CODES_BY_STATUS.set(status, [...(CODES_BY_STATUS.get(status) ?? []), code])
}
// import_refused is a 400 of the contract that errors.ts may define later: accept it too.
CODES_BY_STATUS.set(400, [...new Set([...(CODES_BY_STATUS.get(400) ?? []), 'import_refused'])])

/** Why a response is not a contract 4xx problem document, or undefined when it is one. */
export function problemViolation(response: RawResponse): string | undefined {
  if (!CONTRACT_4XX.includes(response.status)) return `status ${response.status} is not a contract 4xx`
  if (!PROBLEM_JSON.test(response.headers['content-type'] ?? '')) return `content-type ${response.headers['content-type']}`
  let problem: Record<string, unknown>
  try {
    problem = JSON.parse(response.body.toString('utf8')) as Record<string, unknown>
  } catch {
    return `body is not JSON: ${response.body.toString('latin1').slice(0, 80)}`
  }
  if (!CODES_BY_STATUS.get(response.status)?.includes(String(problem.code)))
    return `code ${String(problem.code)} with status ${response.status}`
  if (problem.status !== response.status) return `body status ${String(problem.status)} differs from ${response.status}`
  if (typeof problem.request_id !== 'string' || problem.request_id === '') return 'no request_id'
  for (const field of ['type', 'title', 'detail'] as const) if (typeof problem[field] !== 'string') return `no ${field}`
  return undefined
}
