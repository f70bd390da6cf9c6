/** The image types the service can recognise and store, with the key extension for each. */
export const IMAGE_EXTENSIONS = {
  'image/jpeg': 'jpg',
  'image/png': 'png',
  'image/gif': 'gif',
  'image/webp': 'webp',
} as const

export type ImageType = keyof typeof IMAGE_EXTENSIONS

export const SUPPORTED_IMAGE_TYPES = Object.keys(IMAGE_EXTENSIONS) as [ImageType, ...ImageType[]]

/** file-type reports animated PNG as image/apng; the contract stores it as image/png. */
const DETECTED_ALIASES: Record<string, ImageType> = { 'image/apng': 'image/png' }

export function asImageType(detectedMime: string | undefined): ImageType | undefined {
  if (detectedMime === undefined) return undefined
  if (detectedMime in IMAGE_EXTENSIONS) return detectedMime as ImageType
  return DETECTED_ALIASES[detectedMime]
}
