import path from 'node:path'
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.js'
import { spawnService } from './helpers/service-process.js'

// One test below starts the service four times (tsx compiles src/ each time, up to 20 s apiece on a loaded
// machine) and waits without blocking, so tap's default 30 s for the file would be running meanwhile.
t.setTimeout(120_000)

t.test('defaults give the local-disk driver on port 3000', async (t) => {
  const config = loadConfig({})
  t.equal(config.port, 3000)
  t.equal(config.host, '0.0.0.0')
  t.equal(config.storage.driver, 'fs')
  t.equal(config.publicUrl, 'http://localhost:3000/files')
  t.equal(config.maxUploadBytes, 104_857_600)
  t.same(config.allowedTypes, ['image/jpeg', 'image/png', 'image/gif', 'image/webp'])
  t.same(config.imports, {
    allowedHosts: ['cdn.discordapp.com', 'media.discordapp.net'],
    timeoutMs: 30_000,
    allowInsecureLocalSources: false,
  })
})

t.test('import hosts are case-folded; an empty list refuses every import', async (t) => {
  t.same(loadConfig({ IMPORT_ALLOWED_HOSTS: ' CDN.Example.com , 127.0.0.1,' }).imports.allowedHosts, ['cdn.example.com', '127.0.0.1'])
  t.same(loadConfig({ IMPORT_ALLOWED_HOSTS: '' }).imports.allowedHosts, [])
})

t.test('R2 settings select the r2 driver and its endpoint', async (t) => {
  const account = 'a'.repeat(32)
  const config = loadConfig({
    R2_ACCOUNT_ID: account,
    R2_ACCESS_KEY_ID: 'id',
    R2_SECRET_ACCESS_KEY: 'secret',
    R2_PUBLIC_URL: 'https://images.example.com/',
  })
  t.match(config.storage, {
    driver: 'r2',
    endpoint: `https://${account}.r2.cloudflarestorage.com`,
    forcePathStyle: false,
    bucket: 'azeroth-bound-images',
  })
  t.equal(config.publicUrl, 'https://images.example.com', 'trailing slash dropped')
  const custom = loadConfig({
    R2_ENDPOINT: 'http://127.0.0.1:9000',
    R2_ACCESS_KEY_ID: 'id',
    R2_SECRET_ACCESS_KEY: 's',
    R2_PUBLIC_URL: 'https://x.test',
  })
  t.match(custom.storage, { endpoint: 'http://127.0.0.1:9000', forcePathStyle: true })
})

const refusals: [string, NodeJS.ProcessEnv, RegExp][] = [
  ['MAX_UPLOAD_BYTES=abc', { MAX_UPLOAD_BYTES: 'abc' }, /MAX_UPLOAD_BYTES/],
  ['MAX_UPLOAD_BYTES=0', { MAX_UPLOAD_BYTES: '0' }, /MAX_UPLOAD_BYTES/],
  ['STORAGE_DRIVER=s4', { STORAGE_DRIVER: 's4' }, /STORAGE_DRIVER/],
  ['PORT=70000', { PORT: '70000' }, /PORT/],
  ['LOG_LEVEL=loud', { LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
  ['ALLOWED_TYPES with an unknown type', { ALLOWED_TYPES: 'image/png,image/tiff' }, /ALLOWED_TYPES.*image\/tiff/],
  ['DEFAULT_PORTRAIT_URL not a URL', { DEFAULT_PORTRAIT_URL: 'portrait.png' }, /DEFAULT_PORTRAIT_URL/],
  ['R2_ACCOUNT_ID malformed', { R2_ACCOUNT_ID: 'nope' }, /R2_ACCOUNT_ID/],
  [
    'r2 without any setting, naming each',
    { STORAGE_DRIVER: 'r2' },
    /R2_ACCOUNT_ID.*\n.*R2_ACCESS_KEY_ID.*\n.*R2_SECRET_ACCESS_KEY.*\n.*R2_PUBLIC_URL/,
  ],
  ['r2 without a public URL', { R2_ENDPOINT: 'http://127.0.0.1:1', R2_ACCESS_KEY_ID: 'id', R2_SECRET_ACCESS_KEY: 's' }, /R2_PUBLIC_URL/],
  ['production without R2 settings', { NODE_ENV: 'production' }, /NODE_ENV=production needs the R2 settings/],
  ['production without API keys', { NODE_ENV: 'production', STORAGE_DRIVER: 'fs' }, /API_KEYS: required under NODE_ENV=production/],
  ['an API key without a token', { API_KEYS: 'bot' }, /API_KEYS: the token of "bot"/],
  ['a short token', { API_KEYS: 'bot:short' }, /API_KEYS: the token of "bot" must be at least 32/],
  ['a bad key name', { API_KEYS: `Bot!:${'t'.repeat(32)}` }, /API_KEYS: a key name must match/],
  ['a repeated key name', { API_KEYS: `bot:${'a'.repeat(32)},bot:${'b'.repeat(32)}` }, /API_KEYS: "bot" repeats/],
  ['a CORS origin that is not a URL', { CORS_ORIGINS: 'example.com' }, /CORS_ORIGINS/],
  ['RATE_LIMIT_PER_MINUTE=0', { RATE_LIMIT_PER_MINUTE: '0' }, /RATE_LIMIT_PER_MINUTE/],
  ['MAX_IMAGE_PIXELS=-1', { MAX_IMAGE_PIXELS: '-1' }, /MAX_IMAGE_PIXELS/],
  ['UPLOAD_QUEUE_MAX=-1', { UPLOAD_QUEUE_MAX: '-1' }, /UPLOAD_QUEUE_MAX/],
  [
    'an upload queue wait as long as IDLE_TIMEOUT_MS',
    { UPLOAD_QUEUE_WAIT_MS: '5000', IDLE_TIMEOUT_MS: '5000' },
    /UPLOAD_QUEUE_WAIT_MS: must be below IDLE_TIMEOUT_MS and REQUEST_TIMEOUT_MS \(5000\)/,
  ],
  [
    'an import host given as a URL',
    { IMPORT_ALLOWED_HOSTS: 'https://cdn.discordapp.com' },
    /IMPORT_ALLOWED_HOSTS: "https:\/\/cdn.discordapp.com" is not a host name/,
  ],
  ['IMPORT_TIMEOUT_MS=10', { IMPORT_TIMEOUT_MS: '10' }, /IMPORT_TIMEOUT_MS/],
  [
    'TRUST_PROXY=true, which trusted what the client writes',
    { TRUST_PROXY: 'true' },
    /TRUST_PROXY: true is no longer accepted: it took the leftmost X-Forwarded-For entry.*Use fly/,
  ],
  ['USAGE_RESCAN_INTERVAL_S=-1', { USAGE_RESCAN_INTERVAL_S: '-1' }, /USAGE_RESCAN_INTERVAL_S/],
  ['a short IDEMPOTENCY_SECRET', { IDEMPOTENCY_SECRET: 'not-long-enough' }, /IDEMPOTENCY_SECRET: at least 32 characters/],
  ['TRUST_PROXY=yes', { TRUST_PROXY: 'yes' }, /TRUST_PROXY: expected false, fly, or the number of proxies/],
  ['TRUST_PROXY=11 proxies', { TRUST_PROXY: '11' }, /TRUST_PROXY/],
  [
    'the test-only import setting in production',
    { NODE_ENV: 'production', STORAGE_DRIVER: 'fs', API_KEYS: `bot:${'t'.repeat(32)}`, IMPORT_ALLOW_INSECURE_LOCAL_SOURCES: 'true' },
    /IMPORT_ALLOW_INSECURE_LOCAL_SOURCES: a test-only setting/,
  ],
]

for (const [name, env, message] of refusals) {
  t.test(`refuses ${name}`, async (t) => {
    t.throws(() => loadConfig(env), { name: ConfigError.name, message })
  })
}

t.test('the upload queue: 10 s of waiting at most, for twice as many uploads as there are slots, unless set', async (t) => {
  t.same(loadConfig({}).uploadQueue, { waitMs: 10_000, maxWaiting: 32 })
  t.equal(loadConfig({ IDLE_TIMEOUT_MS: '5000' }).uploadQueue.waitMs, 2500, 'half a shorter IDLE_TIMEOUT_MS')
  t.same(loadConfig({ MAX_CONCURRENT_UPLOADS: '4' }).uploadQueue, { waitMs: 10_000, maxWaiting: 8 })
  t.same(loadConfig({ UPLOAD_QUEUE_WAIT_MS: '0', UPLOAD_QUEUE_MAX: '0' }).uploadQueue, { waitMs: 0, maxWaiting: 0 })
})

t.test('TRUST_PROXY: false by default, fly, or a number of proxies', async (t) => {
  t.equal(loadConfig({}).trustProxy, false)
  t.equal(loadConfig({ TRUST_PROXY: 'false' }).trustProxy, false)
  t.equal(loadConfig({ TRUST_PROXY: ' Fly ' }).trustProxy, 'fly')
  t.equal(loadConfig({ TRUST_PROXY: '2' }).trustProxy, 2)
  t.equal(loadConfig({ TRUST_PROXY: '0' }).trustProxy, false, 'no proxy: the connection')
})

t.test(
  'the key naming Idempotency-Key records: IDEMPOTENCY_SECRET, else derived from the R2 secret, never the R2 secret itself',
  async (t) => {
    const r2 = (secret: string) => ({
      R2_ENDPOINT: 'http://127.0.0.1:1',
      R2_ACCESS_KEY_ID: 'id',
      R2_SECRET_ACCESS_KEY: secret,
      R2_PUBLIC_URL: 'https://x.test',
    })
    const secret = 's'.repeat(40)
    t.equal(loadConfig({ ...r2('r2-secret'), IDEMPOTENCY_SECRET: secret }).idempotencySecret, secret, 'as set')
    const derived = loadConfig(r2('r2-secret')).idempotencySecret
    t.equal(loadConfig(r2('r2-secret')).idempotencySecret, derived, 'instances sharing the R2 secret derive the same key')
    t.not(loadConfig(r2('another-r2-secret')).idempotencySecret, derived, 'another R2 secret, another key')
    t.notMatch(derived, 'r2-secret', 'the R2 secret itself is not the key')
    t.ok(loadConfig({}).idempotencySecret.length > 0, 'local disk has one too')
  },
)

t.test('production may store on local disk only when asked explicitly', async (t) => {
  t.equal(loadConfig({ NODE_ENV: 'production', STORAGE_DRIVER: 'fs', API_KEYS: `bot:${'t'.repeat(32)}` }).storage.driver, 'fs')
})

t.test('the server exits non-zero, naming the variable, on a bad value', async (t) => {
  const notADirectory = path.join(t.testdir({ file: 'x' }), 'file', 'data')
  for (const env of [{ MAX_UPLOAD_BYTES: 'abc' }, { STORAGE_DRIVER: 's4' }, { NODE_ENV: 'production' }, { DATA_DIR: notADirectory }]) {
    const service = spawnService({ env, echoStderr: false, killAfterMs: 20_000 })
    const exit = await service.exited
    t.equal(exit.code, 1, `${JSON.stringify(env)} exits 1`)
    t.match(service.stderr, Object.keys(env)[0] === 'NODE_ENV' ? /R2_ACCESS_KEY_ID/ : new RegExp(Object.keys(env)[0]!))
  }
})

t.test('API keys, origins and limits are parsed; tokens never appear in configuration errors', async (t) => {
  const token = 'x'.repeat(40)
  const config = loadConfig({
    API_KEYS: `bot:${token}, ops:${'y'.repeat(32)}`,
    CORS_ORIGINS: 'https://app.example.com/, http://localhost:5173',
  })
  const everyScope = ['read', 'upload', 'delete']
  t.same(config.apiKeys, [
    { name: 'bot', token, scopes: everyScope },
    { name: 'ops', token: 'y'.repeat(32), scopes: everyScope },
  ])
  t.same(config.corsOrigins, ['https://app.example.com', 'http://localhost:5173'])
  t.match(config, {
    rateLimitPerMinute: 120,
    maxConcurrentUploads: 16,
    maxImagePixels: 50_000_000,
    timeouts: { requestMs: 300_000, headersMs: 10_000, idleMs: 60_000 },
  })
  const secret = 'secret-but-short'
  const refusal = t.throws(() => loadConfig({ API_KEYS: `bot:${secret}` })) as Error
  t.match(refusal.message, /API_KEYS/)
  t.notMatch(refusal.message, secret)
})
