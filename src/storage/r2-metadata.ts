/**
 * How the R2 driver stores metadata: as S3 user metadata (`x-amz-meta-*` headers), so names and values
 * are made header-safe. Objects already in the bucket were written this way: the encoding is the
 * bucket's, and does not follow the API's X-Meta-* headers if those change.
 */
const storedNameOf = (name: string): string => name.replaceAll('_', '-')
const metadataNameOf = (storedName: string): string => storedName.toLowerCase().replaceAll('-', '_')

export function encodeStoredMetadata(metadata: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(metadata).map(([name, value]) => [storedNameOf(name), encodeURIComponent(value)]))
}

export function decodeStoredMetadata(stored: Record<string, string> | undefined): Record<string, string> {
  return Object.fromEntries(
    Object.entries(stored ?? {}).map(([name, value]) => {
      // An object written by another tool may hold a value that is not percent-encoded: show it as stored.
      let decoded = value
      try {
        decoded = decodeURIComponent(value)
      } catch {}
      return [metadataNameOf(name), decoded]
    }),
  )
}
