/** What an API key may do: `read` (list, metadata, usage), `upload` (uploads and imports), `delete`. */
export const SCOPES = ['read', 'upload', 'delete'] as const

export type Scope = (typeof SCOPES)[number]
