/**
 * How the R2 driver stores metadata: as S3 user metadata (`x-amz-meta-*` headers), so names and values
 * are made header-safe. The encoding is the bucket's, and does not follow the API's X-Meta-* headers if
 * those change.
 */
const storedNameOf = (name: string): string => name.replaceAll('_', '-')
const metadataNameOf = (storedName: string): string => storedName.toLowerCase().replaceAll('-', '_')

/**
 * Values S3 tools (awscli, boto3) can show as they are: printable ASCII without `%`, and without
 * leading, trailing or repeated spaces, which HTTP and request signing trim or fold.
 */
const STORED_AS_IS = /^[\x21-\x24\x26-\x7e]+(?: [\x21-\x24\x26-\x7e]+)*$/

/** A value as is when it is plain (`2026-12-04T16:47:26.251Z`, `plain text: ok`); otherwise percent-encoded UTF-8. */
export function encodeStoredMetadata(metadata: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(metadata).map(([name, value]) => [storedNameOf(name), STORED_AS_IS.test(value) ? value : encodeURIComponent(value)]),
  )
}

/**
 * A stored value holding `%` is percent-encoded, one without is the value itself. No marker is needed
 * to tell the two ways of storing apart: a value stored as is never holds `%`, and objects written
 * before values were stored as is had every value encoded, where a value without `%` was left
 * unchanged by the encoding. Both read the same way.
 */
export function decodeStoredMetadata(stored: Record<string, string> | undefined): Record<string, string> {
  return Object.fromEntries(
    Object.entries(stored ?? {}).map(([name, value]) => {
      // An object written by another tool may hold a `%` that is no escape: show it as stored.
      let decoded = value
      try {
        if (value.includes('%')) decoded = decodeURIComponent(value)
      } catch {}
      return [metadataNameOf(name), decoded]
    }),
  )
}
