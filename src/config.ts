import { createHmac } from 'node:crypto'
import path from 'node:path'
import { z } from 'zod'
import { DEFAULT_ALLOWED_TYPES, type ImageType, SUPPORTED_IMAGE_TYPES } from './image-types.js'
import { SCOPES, type Scope } from './scopes.js'

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
  z.string().trim().regex(/^\d+$/, 'expected a whole number').transform(Number).pipe(z.number().int().min(min).max(max))

const httpUrl = z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' }).transform((url) => url.replace(/\/+$/, ''))

const allowedTypes = z
  .string()
  .transform((list) =>
    list
      .split(',')
      .map((type) => type.trim().toLowerCase())
      .filter(Boolean),
  )
  .pipe(
    z
      .array(
        z.enum(SUPPORTED_IMAGE_TYPES, {
          error: (issue) => `${String(issue.input)} is not a supported type (one of ${SUPPORTED_IMAGE_TYPES.join(', ')})`,
        }),
      )
      .min(1, 'expected at least one type'),
  )

const API_KEY_NAME = /^[a-z0-9_-]{1,32}$/
const MIN_TOKEN_LENGTH = 32
const MIN_SECRET_LENGTH = 32

export interface ApiKey {
  name: string
  token: string
  /** Every scope unless API_KEY_SCOPES names the key. */
  scopes: readonly Scope[]
}

/** `name:value,name:value` as name and value pairs (a value may hold colons; an entry without one has none). */
function namedEntries(list: string): { name: string; value: string | undefined }[] {
  return list
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean)
    .map((entry) => {
      const colon = entry.indexOf(':')
      return colon < 0 ? { name: entry, value: undefined } : { name: entry.slice(0, colon), value: entry.slice(colon + 1) }
    })
}

/** `name:token,name:token`: several live keys at once, so one can be rotated without downtime. Scopes come from API_KEY_SCOPES. */
const apiKeys = z.string().transform((list, context): Omit<ApiKey, 'scopes'>[] => {
  const keys: Omit<ApiKey, 'scopes'>[] = []
  for (const { name, value: token = '' } of namedEntries(list)) {
    // Never echo a token back: configuration errors end up in logs.
    if (!API_KEY_NAME.test(name)) context.addIssue({ code: 'custom', message: `a key name must match ${API_KEY_NAME.source}` })
    else if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
      context.addIssue({
        code: 'custom',
        message: `the token of "${name}" must be at least ${MIN_TOKEN_LENGTH} characters, without spaces`,
      })
    } else if (keys.some((key) => key.name === name || key.token === token)) {
      context.addIssue({ code: 'custom', message: `"${name}" repeats a name or a token` })
    } else keys.push({ name, token })
  }
  return keys
})

/** `name:scope+scope,…`: the keys named here get only those scopes. */
const apiKeyScopes = z.string().transform((list, context): Map<string, Scope[]> => {
  const scopesByName = new Map<string, Scope[]>()
  for (const { name, value } of namedEntries(list)) {
    const scopes = value === undefined ? [] : value.split('+')
    const unknown = scopes.find((scope) => !(SCOPES as readonly string[]).includes(scope))
    if (!API_KEY_NAME.test(name)) context.addIssue({ code: 'custom', message: `a key name must match ${API_KEY_NAME.source}` })
    else if (scopes.length === 0 || unknown !== undefined) {
      context.addIssue({
        code: 'custom',
        message: `"${name}" needs scopes joined by + from ${SCOPES.join(', ')}${unknown === undefined ? '' : `; "${unknown.slice(0, 32)}" is none of them`}`,
      })
    } else if (scopesByName.has(name)) context.addIssue({ code: 'custom', message: `"${name}" is listed twice` })
    else scopesByName.set(name, [...new Set(scopes as Scope[])])
  }
  return scopesByName
})

const origins = z
  .string()
  .transform((list) =>
    list
      .split(',')
      .map((item) => item.trim())
      .filter(Boolean),
  )
  .pipe(
    z.array(
      z.url({ protocol: /^https?$/, error: 'expected origins such as https://app.example.com' }).transform((url) => new URL(url).origin),
    ),
  )

/** Host names as a URL carries them (lower case, no port); an IPv4 literal such as 127.0.0.1 fits too. */
const HOST_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

/** Empty: every import is refused. */
const hostNames = z.string().transform((list, context): string[] => {
  const names = list
    .split(',')
    .map((item) => item.trim().toLowerCase())
    .filter(Boolean)
  for (const name of names.filter((name) => !HOST_NAME.test(name))) {
    context.addIssue({ code: 'custom', message: `"${name.slice(0, 64)}" is not a host name such as cdn.discordapp.com` })
  }
  return names
})

/** UPLOAD_QUEUE_MAX's default, per upload slot: a burst twice the slots waits rather than being refused. */
const DEFAULT_QUEUE_PER_SLOT = 2

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/**
 * Where the client's address comes from: the connection (false), Fly.io's `Fly-Client-IP` header
 * ('fly'), or the n-th `X-Forwarded-For` entry from the right, written by the nearest of n proxies that
 * each append the address they were reached from.
 */
export type TrustProxy = false | 'fly' | number
const MAX_PROXY_HOPS = 10

const trustProxy = z
  .string()
  .trim()
  .toLowerCase()
  .transform((value, context): TrustProxy => {
    if (value === 'false' || value === '0') return false
    if (value === 'fly') return 'fly'
    if (/^\d+$/.test(value) && Number(value) <= MAX_PROXY_HOPS) return Number(value)
    context.addIssue({
      code: 'custom',
      message:
        value === 'true'
          ? 'true is no longer accepted: it took the leftmost X-Forwarded-For entry, which the client writes. Use fly behind Fly.io (Fly-Client-IP), or the number of proxies in front that append to X-Forwarded-For'
          : `expected false, fly, or the number of proxies in front that append to X-Forwarded-For (1-${MAX_PROXY_HOPS})`,
    })
    return z.NEVER
  })

const environmentSchema = z.object({
  NODE_ENV: optionalString,
  PORT: wholeNumber(0, 65535).default(3000),
  HOST: z.string().trim().min(1).default('0.0.0.0'),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
  STORAGE_DRIVER: z.enum(['fs', 'r2']).optional(),
  DATA_DIR: z.string().trim().min(1).default('./data'),
  R2_ACCOUNT_ID: optionalString.pipe(
    z
      .string()
      .regex(/^[a-f0-9]{32}$/, 'expected 32 hex characters')
      .optional(),
  ),
  R2_ACCESS_KEY_ID: optionalString,
  R2_SECRET_ACCESS_KEY: optionalString,
  R2_BUCKET_NAME: z.string().trim().min(3).max(63).default('azeroth-bound-images'),
  R2_PUBLIC_URL: optionalString.pipe(httpUrl.optional()),
  R2_ENDPOINT: optionalString.pipe(httpUrl.optional()),
  MAX_UPLOAD_BYTES: wholeNumber(1, 5 * 1024 ** 3).default(104_857_600),
  ALLOWED_TYPES: allowedTypes.default(DEFAULT_ALLOWED_TYPES),
  MAX_IMAGE_PIXELS: wholeNumber(1, Number.MAX_SAFE_INTEGER).default(50_000_000),
  DEFAULT_PORTRAIT_URL: optionalString.pipe(httpUrl.optional()),
  API_KEYS: apiKeys.default([]),
  API_KEY_SCOPES: apiKeyScopes.default(new Map()),
  RATE_LIMIT_PER_MINUTE: wholeNumber(1, 1_000_000).default(120),
  MAX_CONCURRENT_UPLOADS: wholeNumber(1, 10_000).default(16),
  UPLOAD_QUEUE_WAIT_MS: optionalString.pipe(wholeNumber(0, 600_000).optional()),
  UPLOAD_QUEUE_MAX: optionalString.pipe(wholeNumber(0, 100_000).optional()),
  CORS_ORIGINS: origins.default([]),
  REQUEST_TIMEOUT_MS: wholeNumber(1000, 3_600_000).default(300_000),
  HEADERS_TIMEOUT_MS: wholeNumber(1000, 600_000).default(10_000),
  IDLE_TIMEOUT_MS: wholeNumber(1000, 3_600_000).default(60_000),
  METRICS_PORT: optionalString.pipe(wholeNumber(0, 65535).optional()),
  USAGE_SCAN_INTERVAL_S: wholeNumber(0, 7 * 24 * 3600).default(3600),
  USAGE_RESCAN_INTERVAL_S: wholeNumber(0, 24 * 3600).default(60),
  SHUTDOWN_TIMEOUT_MS: wholeNumber(0, 600_000).default(25_000),
  TRUST_PROXY: trustProxy.default(false),
  IDEMPOTENCY_SECRET: optionalString.pipe(
    z.string().min(MIN_SECRET_LENGTH, `at least ${MIN_SECRET_LENGTH} characters (openssl rand -hex 32)`).optional(),
  ),
  IMPORT_ALLOWED_HOSTS: hostNames.default(['cdn.discordapp.com', 'media.discordapp.net']),
  IMPORT_TIMEOUT_MS: wholeNumber(1000, 600_000).default(30_000),
  IMPORT_ALLOW_INSECURE_LOCAL_SOURCES: z.enum(['true', 'false']).default('false'),
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

export interface ImportSettings {
  /** The only hosts an import may fetch from (exact names, lower case). */
  allowedHosts: string[]
  /** The whole download, from the first connection to the last byte, redirects included. */
  timeoutMs: number
  /** Tests only (refused under NODE_ENV=production): http:// sources, and 127.0.0.1 as an address. */
  allowInsecureLocalSources: boolean
}

export type StorageConfig = { driver: 'fs'; dataDir: string } | ({ driver: 'r2' } & R2Settings)

export interface Config {
  /** NODE_ENV=development: readable logs. */
  development: boolean
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
  /** Empty: authentication is off (refused under NODE_ENV=production). */
  apiKeys: ApiKey[]
  rateLimitPerMinute: number
  maxConcurrentUploads: number
  /** Uploads that find every slot taken wait for one, fairly shared between API keys (see UploadSlots). */
  uploadQueue: {
    /** The longest an upload waits for a slot before 503 server_busy; 0: refused at once. */
    waitMs: number
    /** Uploads waiting at once, on the whole instance. */
    maxWaiting: number
  }
  corsOrigins: string[]
  /** When set, /metrics is served on this port only; otherwise on the public port, behind an API key. */
  metricsPort: number | undefined
  /** Seconds between usage scans of the bucket; 0: no scans. */
  usageScanIntervalS: number
  /** The shortest time between two listings a client asks for (`?rescan=true`); sooner, the last scan answers. */
  usageRescanIntervalS: number
  /** How long uploads in flight may go on after SIGTERM before they are aborted. */
  shutdownTimeoutMs: number
  /**
   * The key of the HMAC that names Idempotency-Key records, the same on every instance: IDEMPOTENCY_SECRET,
   * else derived from the R2 secret key (see idempotencySecretOf).
   */
  idempotencySecret: string
  /** Where the client's address (per-address throttle, logs) comes from: see TrustProxy. */
  trustProxy: TrustProxy
  imports: ImportSettings
  timeouts: {
    /** A whole request, body included. */
    requestMs: number
    /** Receiving the request headers. */
    headersMs: number
    /** A connection on which nothing moves in either direction. */
    idleMs: number
  }
}

/** Rules between variables, reported like any other bad value: every one of them at once. */
function checkCombinations(settings: Environment, context: z.RefinementCtx): void {
  const report = (variable: keyof Environment, message: string) => context.addIssue({ code: 'custom', path: [variable], message })
  const production = settings.NODE_ENV === 'production'
  if (production && settings.API_KEYS.length === 0) {
    report('API_KEYS', 'required under NODE_ENV=production (name:token entries); the service never runs open in production')
  }
  const idleLimit = waitLimitMs(settings)
  if (settings.UPLOAD_QUEUE_WAIT_MS !== undefined && settings.UPLOAD_QUEUE_WAIT_MS >= idleLimit) {
    report(
      'UPLOAD_QUEUE_WAIT_MS',
      `must be below IDLE_TIMEOUT_MS and REQUEST_TIMEOUT_MS (${idleLimit}): the connection of an upload waiting for a slot is idle`,
    )
  }
  const keyNames = new Set(settings.API_KEYS.map((key) => key.name))
  for (const name of settings.API_KEY_SCOPES.keys()) {
    if (!keyNames.has(name)) report('API_KEY_SCOPES', `"${name}" is not a key name in API_KEYS`)
  }
  if (production && settings.IMPORT_ALLOW_INSECURE_LOCAL_SOURCES === 'true') {
    report(
      'IMPORT_ALLOW_INSECURE_LOCAL_SOURCES',
      'a test-only setting (http and 127.0.0.1 import sources), refused under NODE_ENV=production',
    )
  }
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

/** A waiting upload's body is not read meanwhile: its connection is idle, and its request's clock runs. */
const waitLimitMs = (settings: Environment) => Math.min(settings.IDLE_TIMEOUT_MS, settings.REQUEST_TIMEOUT_MS)

/** UPLOAD_QUEUE_WAIT_MS's default: 10 s, or half the connection's idle limit when that is shorter. */
const defaultQueueWaitMs = (settings: Environment) => Math.min(10_000, Math.floor(waitLimitMs(settings) / 2))

const storageDriverOf = (settings: Environment) => settings.STORAGE_DRIVER ?? (settings.R2_ACCESS_KEY_ID ? 'r2' : 'fs')

/**
 * Records live beside the images, in a bucket served publicly on R2: their names must not be computable
 * from what a client knows (a key's name, a Discord message id), and every instance must compute the
 * same ones. Without IDEMPOTENCY_SECRET, the secret every instance already shares, R2's, gives the key
 * (derived, so the R2 secret itself is never used for anything else). The local-disk driver never serves
 * records (neither the API nor /files does), so there a fixed key does.
 */
function idempotencySecretOf(settings: Environment, storage: StorageConfig): string {
  if (settings.IDEMPOTENCY_SECRET) return settings.IDEMPOTENCY_SECRET
  const base = storage.driver === 'r2' ? storage.secretAccessKey : 'local disk'
  return createHmac('sha256', base).update('image-upload-service idempotency record names').digest('hex')
}

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
    development: settings.NODE_ENV === 'development',
    port: settings.PORT,
    host: settings.HOST,
    logLevel: settings.LOG_LEVEL,
    storage,
    publicUrl: settings.R2_PUBLIC_URL ?? `http://localhost:${settings.PORT}/files`,
    maxUploadBytes: settings.MAX_UPLOAD_BYTES,
    allowedTypes: settings.ALLOWED_TYPES,
    maxImagePixels: settings.MAX_IMAGE_PIXELS,
    defaultPortraitUrl: settings.DEFAULT_PORTRAIT_URL,
    apiKeys: settings.API_KEYS.map((key) => ({ ...key, scopes: settings.API_KEY_SCOPES.get(key.name) ?? SCOPES })),
    rateLimitPerMinute: settings.RATE_LIMIT_PER_MINUTE,
    maxConcurrentUploads: settings.MAX_CONCURRENT_UPLOADS,
    uploadQueue: {
      waitMs: settings.UPLOAD_QUEUE_WAIT_MS ?? defaultQueueWaitMs(settings),
      maxWaiting: settings.UPLOAD_QUEUE_MAX ?? DEFAULT_QUEUE_PER_SLOT * settings.MAX_CONCURRENT_UPLOADS,
    },
    corsOrigins: settings.CORS_ORIGINS,
    metricsPort: settings.METRICS_PORT,
    usageScanIntervalS: settings.USAGE_SCAN_INTERVAL_S,
    usageRescanIntervalS: settings.USAGE_RESCAN_INTERVAL_S,
    shutdownTimeoutMs: settings.SHUTDOWN_TIMEOUT_MS,
    idempotencySecret: idempotencySecretOf(settings, storage),
    trustProxy: settings.TRUST_PROXY,
    imports: {
      allowedHosts: settings.IMPORT_ALLOWED_HOSTS,
      timeoutMs: settings.IMPORT_TIMEOUT_MS,
      allowInsecureLocalSources: settings.IMPORT_ALLOW_INSECURE_LOCAL_SOURCES === 'true',
    },
    timeouts: { requestMs: settings.REQUEST_TIMEOUT_MS, headersMs: settings.HEADERS_TIMEOUT_MS, idleMs: settings.IDLE_TIMEOUT_MS },
  }
}
