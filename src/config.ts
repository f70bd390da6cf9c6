import path from 'node:path'
import { z } from 'zod'
import { DEFAULT_ALLOWED_TYPES, SUPPORTED_IMAGE_TYPES, type ImageType } from './upload/image-types.js'

/** Thrown when the environment does not describe a service that can start; the message names the variable. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

const optionalString = z
  .string()
  .trim()
  .transform((value) => (value === '' ? undefined : value))
  .optional()

const wholeNumber = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'expected a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))

const httpUrl = z
  .url({ protocol: /^https?$/, error: 'expected an http(s) URL' })
  .transform((url) => url.replace(/\/+$/, ''))

const allowedTypes = z
  .string()
  .transform((list) => list.split(',').map((type) => type.trim().toLowerCase()).filter(Boolean))
  .pipe(
    z
      .array(
        z.enum(SUPPORTED_IMAGE_TYPES, {
          error: (issue) =>
            `${String(issue.input)} is not a supported type (one of ${SUPPORTED_IMAGE_TYPES.join(', ')})`,
        }),
      )
      .min(1, 'expected at least one type'),
  )

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

const environmentSchema = z.object({
  NODE_ENV: optionalString,
  PORT: wholeNumber(0, 65535).default(3000),
  HOST: z.string().trim().min(1).default('0.0.0.0'),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
  STORAGE_DRIVER: z.enum(['fs', 'r2']).optional(),
  DATA_DIR: z.string().trim().min(1).default('./data'),
  R2_ACCOUNT_ID: optionalString.pipe(z.string().regex(/^[a-f0-9]{32}$/, 'expected 32 hex characters').optional()),
  R2_ACCESS_KEY_ID: optionalString,
  R2_SECRET_ACCESS_KEY: optionalString,
  R2_BUCKET_NAME: z.string().trim().min(3).max(63).default('azeroth-bound-images'),
  R2_PUBLIC_URL: optionalString.pipe(httpUrl.optional()),
  R2_ENDPOINT: optionalString.pipe(httpUrl.optional()),
  MAX_UPLOAD_BYTES: wholeNumber(1, 5 * 1024 ** 3).default(104_857_600),
  ALLOWED_TYPES: allowedTypes.default(DEFAULT_ALLOWED_TYPES),
  MAX_IMAGE_PIXELS: wholeNumber(1, Number.MAX_SAFE_INTEGER).default(50_000_000),
  DEFAULT_PORTRAIT_URL: optionalString.pipe(httpUrl.optional()),
})

type Environment = z.infer<typeof environmentSchema>

export interface R2Settings {
  endpoint: string
  /** Path-style addressing: used when R2_ENDPOINT overrides the account endpoint (jurisdictions, local S3 servers). */
  forcePathStyle: boolean
  accessKeyId: string
  secretAccessKey: string
  bucket: string
}

export type StorageConfig = { driver: 'fs'; dataDir: string } | ({ driver: 'r2' } & R2Settings)

export interface Config {
  production: boolean
  port: number
  host: string
  logLevel: (typeof LOG_LEVELS)[number]
  storage: StorageConfig
  /** Base of the public URL of every object: `${publicUrl}/${key}`. */
  publicUrl: string
  maxUploadBytes: number
  allowedTypes: ImageType[]
  /** Largest width × height accepted, decided from the header (pixel bombs). */
  maxImagePixels: number
  defaultPortraitUrl?: string | undefined
}

/** Rules between variables, reported like any other bad value: every one of them at once. */
function checkCombinations(settings: Environment, context: z.RefinementCtx): void {
  const report = (variable: keyof Environment, message: string) => context.addIssue({ code: 'custom', path: [variable], message })
  const production = settings.NODE_ENV === 'production'
  if (storageDriverOf(settings) === 'fs') {
    if (production && settings.STORAGE_DRIVER !== 'fs') {
      report(
        'R2_ACCESS_KEY_ID',
        'NODE_ENV=production needs the R2 settings (R2_ACCOUNT_ID or R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_PUBLIC_URL); set STORAGE_DRIVER=fs to store on local disk on purpose',
      )
    }
    return
  }
  if (!settings.R2_ACCOUNT_ID && !settings.R2_ENDPOINT) report('R2_ACCOUNT_ID', 'required with the r2 driver (or R2_ENDPOINT)')
  if (!settings.R2_ACCESS_KEY_ID) report('R2_ACCESS_KEY_ID', 'required with the r2 driver')
  if (!settings.R2_SECRET_ACCESS_KEY) report('R2_SECRET_ACCESS_KEY', 'required with the r2 driver')
  if (!settings.R2_PUBLIC_URL) {
    report('R2_PUBLIC_URL', 'required with the r2 driver (the public base URL of the bucket, e.g. https://images.example.com)')
  }
}

const storageDriverOf = (settings: Environment) => settings.STORAGE_DRIVER ?? (settings.R2_ACCESS_KEY_ID ? 'r2' : 'fs')

/** Parses and checks the whole environment once; throws ConfigError naming every bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const parsed = environmentSchema.superRefine(checkCombinations).safeParse(env)
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.') || 'environment'}: ${issue.message}`)
    throw new ConfigError(`Invalid configuration:\n${lines.join('\n')}`)
  }
  const settings = parsed.data
  const storage: StorageConfig =
    storageDriverOf(settings) === 'fs'
      ? { driver: 'fs', dataDir: path.resolve(settings.DATA_DIR) }
      : {
          driver: 'r2',
          endpoint: settings.R2_ENDPOINT ?? `https://${settings.R2_ACCOUNT_ID}.r2.cloudflarestorage.com`,
          forcePathStyle: settings.R2_ENDPOINT !== undefined,
          accessKeyId: settings.R2_ACCESS_KEY_ID!,
          secretAccessKey: settings.R2_SECRET_ACCESS_KEY!,
          bucket: settings.R2_BUCKET_NAME,
        }
  return {
    production: settings.NODE_ENV === 'production',
    port: settings.PORT,
    host: settings.HOST,
    logLevel: settings.LOG_LEVEL,
    storage,
    publicUrl: settings.R2_PUBLIC_URL ?? `http://localhost:${settings.PORT}/files`,
    maxUploadBytes: settings.MAX_UPLOAD_BYTES,
    allowedTypes: settings.ALLOWED_TYPES,
    maxImagePixels: settings.MAX_IMAGE_PIXELS,
    defaultPortraitUrl: settings.DEFAULT_PORTRAIT_URL,
  }
}
