import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import t from 'tap'
import { ImageServiceClient, ImageServiceError } from '../src/client.js'
import { ConfigError, loadConfig } from '../src/config.js'
import auth from '../src/plugins/auth.js'
import clientAddress from '../src/plugins/client-address.js'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { png, sha256 } from './helpers/images.js'
import { LOCAL_SOURCE_ENV, spyNetwork, startSource } from './helpers/import.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { havePythonAiohttp, PYTHON } from './helpers/system-tools.js'

const TOKENS = {
  reader: 'reader-'.padEnd(40, 'r'),
  uploader: 'uploader-'.padEnd(40, 'u'),
  deleter: 'deleter-'.padEnd(40, 'd'),
  /** Not named in API_KEY_SCOPES: every scope. */
  bot: 'bot-'.padEnd(40, 'b'),
}
type KeyName = keyof typeof TOKENS
const API_KEYS = Object.entries(TOKENS)
  .map(([name, token]) => `${name}:${token}`)
  .join(',')
const API_KEY_SCOPES = 'reader:read,uploader:upload,deleter:delete'
const bearer = (name: KeyName) => ({ authorization: `Bearer ${TOKENS[name]}` })
t.test('API_KEY_SCOPES: an unknown scope or key name stops the start, naming the variable', async (t) => {
  const keys = `viewer:${'v'.repeat(40)},ops:${'o'.repeat(40)}`
  const scoped = loadConfig({ API_KEYS: keys, API_KEY_SCOPES: 'viewer:read, ops:read+delete' }).apiKeys
  t.same(
    scoped.map(({ name, scopes }) => ({ name, scopes })),
    [
      { name: 'viewer', scopes: ['read'] },
      { name: 'ops', scopes: ['read', 'delete'] },
    ],
  )
  t.same(loadConfig({ API_KEYS: keys }).apiKeys[0]?.scopes, ['read', 'upload', 'delete'], 'a key not listed has every scope')
  for (const [value, message] of [
    ['viewer:read+admin', /API_KEY_SCOPES: "viewer" needs scopes .*"admin" is none of them/],
    ['viewer', /API_KEY_SCOPES: "viewer" needs scopes joined by \+/],
    ['viewer:', /API_KEY_SCOPES: "viewer" needs scopes/],
    ['stranger:read', /API_KEY_SCOPES: "stranger" is not a key name in API_KEYS/],
    ['viewer:read,viewer:delete', /API_KEY_SCOPES: "viewer" is listed twice/],
    ['Viewer:read', /API_KEY_SCOPES: a key name must match/],
  ] as const) {
    t.throws(() => loadConfig({ API_KEYS: keys, API_KEY_SCOPES: value }), { name: ConfigError.name, message }, value)
  }
})

t.test('each scope on each route: 403 forbidden without it, the route works with it', async (t) => {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const portrait = png(5, 7)
  const source = await startSource(t, (_request, response) => response.writeHead(200, { 'content-type': 'image/png' }).end(portrait))
  const { app } = await buildTestApp(
    t,
    { ...r2Env(s3.endpoint), ...LOCAL_SOURCE_ENV, API_KEYS, API_KEY_SCOPES },
    { importNetwork: spyNetwork({ loopback: true }).network },
  )
  const upload = (name: KeyName) => {
    const { payload, headers } = multipartBody([{ name: 'file', filename: 'p.png', data: portrait }])
    return app.inject({ method: 'POST', url: '/v1/images', payload, headers: { ...headers, ...bearer(name) } })
  }
  const importFrom = (name: KeyName) =>
    app.inject({
      method: 'POST',
      url: '/v1/images/import',
      payload: { source_url: source.url('/p.png'), context: 'portraits' },
      headers: bearer(name),
    })
  /** An upload by the full key: the object the other routes act on. */
  const stored = async () => {
    const response = await upload('bot')
    t.equal(response.statusCode, 201)
    t.equal(await s3.sha256Of(response.json().key), sha256(portrait), 'stored byte-exact')
    return response.json().key as string
  }
  const key = await stored()

  const routes: { route: string; scope: 'read' | 'upload' | 'delete'; send: (name: KeyName) => ReturnType<typeof upload>; ok: number }[] = [
    { route: 'POST /v1/images', scope: 'upload', send: upload, ok: 201 },
    { route: 'POST /v1/images/import', scope: 'upload', send: importFrom, ok: 201 },
    {
      route: 'GET /v1/images/{key}',
      scope: 'read',
      send: (name) => app.inject({ url: `/v1/images/${key}`, headers: bearer(name) }),
      ok: 200,
    },
    {
      route: 'HEAD /v1/images/{key}',
      scope: 'read',
      send: (name) => app.inject({ method: 'HEAD', url: `/v1/images/${key}`, headers: bearer(name) }),
      ok: 200,
    },
    {
      route: 'GET /v1/images (list)',
      scope: 'read',
      send: (name) => app.inject({ url: '/v1/images?prefix=general/', headers: bearer(name) }),
      ok: 200,
    },
    { route: 'GET /v1/usage', scope: 'read', send: (name) => app.inject({ url: '/v1/usage', headers: bearer(name) }), ok: 200 },
    {
      route: 'DELETE /v1/images/{key}',
      scope: 'delete',
      send: async (name) => app.inject({ method: 'DELETE', url: `/v1/images/${await stored()}`, headers: bearer(name) }),
      ok: 204,
    },
  ]
  const holders: Record<string, KeyName> = { read: 'reader', upload: 'uploader', delete: 'deleter' }
  for (const { route, scope, send, ok } of routes) {
    for (const name of ['reader', 'uploader', 'deleter', 'bot'] as const) {
      const allowed = name === 'bot' || holders[scope] === name
      const response = await send(name)
      if (allowed) {
        t.equal(response.statusCode, ok, `${route}: ${name} has "${scope}"`)
        if (ok === 201) {
          const created = response.json()
          t.equal(await s3.sha256Of(created.key), sha256(portrait), `${route}: what ${name} stored reads back byte-exact`)
        }
        continue
      }
      t.equal(response.statusCode, 403, `${route}: ${name} lacks "${scope}"`)
      if (route.startsWith('HEAD')) continue // no body
      t.match(response.headers['content-type'], /^application\/problem\+json/)
      t.match(response.json(), { code: 'forbidden', status: 403, detail: new RegExp(`"${name}".*"${scope}"`) })
    }
  }
  t.ok((await s3.imageKeys()).includes(key), 'the object every refused DELETE aimed at is still stored')
})

t.test('GET /v1/whoami: the calling key and its scopes; a wrong token is 401', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS, API_KEY_SCOPES: 'reader:read+delete' })
  t.same((await app.inject({ url: '/v1/whoami', headers: bearer('reader') })).json(), { name: 'reader', scopes: ['read', 'delete'] })
  t.same((await app.inject({ url: '/v1/whoami', headers: bearer('bot') })).json(), { name: 'bot', scopes: ['read', 'upload', 'delete'] })
  const wrong = await app.inject({ url: '/v1/whoami', headers: { authorization: `Bearer ${'w'.repeat(40)}` } })
  t.equal(wrong.statusCode, 401)

  const open = await buildTestApp(t)
  t.same(
    (await open.app.inject('/v1/whoami')).json(),
    { name: null, scopes: ['read', 'upload', 'delete'] },
    'authentication off: everything',
  )
})

t.test('rotation with scopes: the new token of a scoped key keeps its scopes, the old one is refused', async (t) => {
  const old = 'viewer-old-'.padEnd(40, 'o')
  const next = 'viewer-new-'.padEnd(40, 'n')
  const during = await buildTestApp(t, { API_KEYS: `viewer:${old},viewer2:${next}`, API_KEY_SCOPES: 'viewer:read,viewer2:read' })
  for (const token of [old, next]) {
    const headers = { authorization: `Bearer ${token}` }
    t.equal((await during.app.inject({ url: '/v1/usage', headers })).statusCode, 200, 'both tokens read while both are live')
    t.equal((await during.app.inject({ method: 'DELETE', url: '/v1/images/a/b.png', headers })).statusCode, 403, 'neither deletes')
  }
  const after = await buildTestApp(t, { API_KEYS: `viewer2:${next}`, API_KEY_SCOPES: 'viewer2:read' })
  t.equal(
    (await after.app.inject({ url: '/v1/usage', headers: { authorization: `Bearer ${old}` } })).statusCode,
    401,
    'the old token is gone',
  )
  t.equal((await after.app.inject({ url: '/v1/usage', headers: { authorization: `Bearer ${next}` } })).statusCode, 200)
})

t.test('a /v1/* route that declares no scope is refused when it is registered', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(clientAddress, { trustProxy: false })
  await app.register(auth, { apiKeys: [], rateLimitPerMinute: 10 })
  app.get('/v1/declared', { config: { scope: 'read' } }, async () => ({}))
  t.throws(() => app.get('/v1/forgotten', async () => ({})), /GET \/v1\/forgotten declares no scope/)
})

t.test('both clients raise their typed forbidden error for a key without the scope', async (t) => {
  const { app } = await buildTestApp(t, { API_KEYS, API_KEY_SCOPES })
  const { port } = await listen(app)
  const baseUrl = `http://127.0.0.1:${port}`

  const reader = new ImageServiceClient({ baseUrl, apiKey: TOKENS.reader })
  const refused = await reader.delete('general/2026/01/abcdefghijklmnopqrst_a.png').catch((error: unknown) => error)
  t.ok(refused instanceof ImageServiceError, 'TypeScript: an ImageServiceError')
  t.match(refused, { status: 403, code: 'forbidden', detail: /"reader".*"delete"/ })

  if (!havePythonAiohttp(t)) return
  const script = `
import asyncio, json, sys
from image_service_client import ImageServiceClient, ForbiddenError
async def main():
    async with ImageServiceClient(sys.argv[1], api_key=sys.argv[2]) as client:
        try:
            await client.delete("general/2026/01/abcdefghijklmnopqrst_a.png")
        except ForbiddenError as error:
            print(json.dumps({"class": type(error).__name__, "status": error.status, "code": error.code}))
asyncio.run(main())
`
  const { stdout } = await promisify(execFile)(PYTHON, ['-c', script, baseUrl, TOKENS.reader], {
    env: { PATH: process.env.PATH, PYTHONPATH: fileURLToPath(new URL('../clients/python', import.meta.url)), PYTHONDONTWRITEBYTECODE: '1' },
    timeout: 60_000,
  })
  t.same(JSON.parse(stdout), { class: 'ForbiddenError', status: 403, code: 'forbidden' }, 'Python: ForbiddenError')
})
