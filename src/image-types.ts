/** The image types the service can recognise and store, with the key extension for each. */
export const IMAGE_EXTENSIONS = {
  'image/jpeg': 'jpg',
  'image/png': 'png',
  'image/gif': 'gif',
  'image/webp': 'webp',
  'image/svg+xml': 'svg',
} as const

export type ImageType = keyof typeof IMAGE_EXTENSIONS

export const SUPPORTED_IMAGE_TYPES = Object.keys(IMAGE_EXTENSIONS) as [ImageType, ...ImageType[]]

/** SVG is a document that can carry scripts: accepted only when an operator lists it in ALLOWED_TYPES. */
export const DEFAULT_ALLOWED_TYPES: ImageType[] = ['image/jpeg', 'image/png', 'image/gif', 'image/webp']

/** file-type reports animated PNG as image/apng; the contract stores it as image/png. */
const DETECTED_ALIASES: Record<string, ImageType> = { 'image/apng': 'image/png' }

export function asImageType(detectedMime: string | undefined): ImageType | undefined {
  if (detectedMime === undefined) return undefined
  if (detectedMime in IMAGE_EXTENSIONS) return detectedMime as ImageType
  return DETECTED_ALIASES[detectedMime]
}
