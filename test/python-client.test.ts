import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t from 'tap'
import { ERROR_CATALOGUE } from '../src/errors.js'
import { RECORDS_PREFIX } from '../src/upload/keys.js'
import { buildTestApp } from './helpers/app.js'
import { listen, redirectingServer, silentServer } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3, TEST_BUCKET } from './helpers/s3.js'
import { havePythonAiohttp, PYTHON } from './helpers/system-tools.js'

// The bot's client (clients/python/image_service_client.py), run by Debian's Python with Debian's aiohttp,
// against the service on a loopback port storing on s3rver. test/python/client_check.py drives the client
// and prints what happened as JSON; the assertions are here.

const CLIENT_DIR = fileURLToPath(new URL('../clients/python', import.meta.url))
const CHECK = fileURLToPath(new URL('./python/client_check.py', import.meta.url))
const TOKEN = 'python-client-token-0123456789abcdef012'
const SERVICE_FALLBACK = 'https://cdn.example.test/service-default.png'
const CLIENT_FALLBACK = 'https://cdn.example.test/client-default.png'
const CHARACTER = 'Thorgar Ø 永久'

/** Runs client_check.py in one mode; its JSON output. A failing script fails the test with its traceback. */
async function runCheck(...args: string[]) {
  const { stdout } = await promisify(execFile)(PYTHON, [CHECK, ...args], {
    env: { PATH: process.env.PATH, PYTHONPATH: CLIENT_DIR, PYTHONDONTWRITEBYTECODE: '1' },
    timeout: 60_000,
  })
  return JSON.parse(stdout)
}

if (havePythonAiohttp(t)) {
  t.test('the Python client: upload, metadata, delete, typed errors and the fallbacks', async (t) => {
    const s3 = await startS3()
    t.teardown(() => s3.stop())
    const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `bot:${TOKEN}`, DEFAULT_PORTRAIT_URL: SERVICE_FALLBACK })
    const { port } = await listen(app)
    const baseUrl = `http://127.0.0.1:${port}`
    const directory = await mkdtemp(path.join(tmpdir(), 'python-client-'))
    t.teardown(() => rm(directory, { recursive: true, force: true }))
    const portrait = pngOfSize(500_000, 31)
    await writeFile(path.join(directory, 'portrait.png'), portrait)

    const live = await runCheck('live', baseUrl, TOKEN, path.join(directory, 'portrait.png'), CLIENT_FALLBACK)

    t.equal(live.sent_sha256, sha256(portrait), 'Python read the portrait as written')
    t.match(live.kept, {
      size: portrait.length,
      filename: 'Thorgar Ø portrait.png',
      content_type: 'image/png',
      width: 16,
      height: 16,
      sha256: sha256(portrait),
    })
    t.match(live.kept.key, /^portraits\/\d{4}\/\d{2}\/[a-z]{20}_Thorgar___portrait\.png$/)
    t.equal(await s3.sha256Of(live.kept.key), sha256(portrait), 'the stored bytes are the bytes the client sent')

    t.match(live.metadata, { key: live.kept.key, url: live.kept.url, size: portrait.length, content_type: 'image/png', etag: /\S/ })
    t.match(live.metadata.metadata, {
      character_name: CHARACTER,
      uploader_id: '1234567890',
      filename: 'Thorgar Ø portrait.png',
      sha256: sha256(portrait),
    })
    t.match(
      live.metadata.last_modified,
      /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00$/,
      'last_modified parsed as an aware datetime',
    )

    t.equal(live.deleted.sha256, sha256(portrait))
    t.notOk((await s3.keys()).includes(live.deleted.key), 'the deleted upload is gone from the backend')
    t.match(live.after_delete, { class: 'NotFoundError', is_service_error: true, status: 404, code: 'not_found', request_id: /\S/ })
    t.same(live.delete_again, { class: null }, 'deleting again succeeds')

    t.match(
      live.fallback_on_415,
      { url: SERVICE_FALLBACK, fell_back: true, error: { class: 'UnsupportedMediaTypeError', status: 415 } },
      "a 415 gives the service's fallback_url",
    )
    t.match(live.upload_415, {
      class: 'UnsupportedMediaTypeError',
      status: 415,
      code: 'unsupported_media_type',
      fallback_url: SERVICE_FALLBACK,
    })
    t.match(live.invalid_context, { class: 'InvalidContextError', status: 400, code: 'invalid_context' })
    t.match(
      live.dot_key,
      { class: 'InvalidKeyError', status: 400, code: 'invalid_key', request_id: null },
      'a dot segment is refused before sending',
    )
    t.match(live.wrong_key, { class: 'UnauthorizedError', status: 401, code: 'unauthorized' })
    for (const code of Object.keys(ERROR_CATALOGUE))
      t.ok(live.error_classes[code], `an exception class for ${code}: ${live.error_classes[code]}`)

    // The same address once the service has stopped, a server that accepts but never answers, and one that
    // redirects to the stopped address.
    await app.close()
    const hung = await silentServer(t)
    const moved = await redirectingServer(t, baseUrl)
    const down = await runCheck('unreachable', baseUrl, `http://127.0.0.1:${hung.port}`, moved, TOKEN, CLIENT_FALLBACK)

    t.same(
      down.stopped_fallback,
      { url: CLIENT_FALLBACK, fell_back: true, error: { class: 'ServiceUnreachableError', is_service_error: true, timed_out: false } },
      'a stopped service gives the configured default',
    )
    t.match(down.stopped_upload, { class: 'ServiceUnreachableError', timed_out: false })
    t.match(down.hung_fallback, { url: CLIENT_FALLBACK, fell_back: true, error: { class: 'ServiceUnreachableError', timed_out: true } })
    t.ok(down.hung_seconds < 2, `gave up on the hung service after ${down.hung_seconds.toFixed(2)} s (timeout 0.5)`)
    t.match(down.no_fallback_at_all, { class: 'ServiceUnreachableError' }, 'no fallback at all: the error is raised')
    t.match(
      down.moved_upload,
      {
        class: 'ServiceUnreachableError',
        timed_out: false,
        message: /answered 307, a redirect to http:\/\/127\.0\.0\.1:\d+\/v1\/images: not followed/,
      },
      'a redirect is reported, not followed',
    )

    const request = hung.received().toString('latin1')
    t.match(request, /^POST \/v1\/images HTTP\/1\.1\r\n/)
    t.match(request, new RegExp(`\\r\\nauthorization: Bearer ${TOKEN}\\r\\n`, 'i'))
    t.match(request, /\r\nidempotency-key: discord-message-1234\r\n/i)
    // Text fields first, then the one file part, as the contract requires.
    const names = [...request.matchAll(/Content-Disposition: form-data; name="([^"]+)"/g)].map((match) => match[1])
    t.same(names, ['context', 'character_name', 'file'])
  })
}

if (havePythonAiohttp(t)) {
  t.test('the Python client: list_images, and iter_image_pages over every page', async (t) => {
    // In its own process: s3rver answers truncated listings there only (see helpers/s3rver-main.ts).
    const s3 = await startS3({ ownProcess: true })
    t.teardown(() => s3.stop())
    const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `bot:${TOKEN}` })
    const { port } = await listen(app)
    const seeded = [
      ...Array.from({ length: 13 }, (_, i) => `portraits/2025/05/${String(i).padStart(20, 'p')}_seed.png`),
      'general/2025/05/gggggggggggggggggggg_seed.png',
      `${RECORDS_PREFIX}${'0'.repeat(64)}.json`,
    ]
    for (const key of seeded) await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: key }))
    const portrait = pngOfSize(2000, 5)
    const uploaded = await app.inject({
      method: 'POST',
      url: '/v1/images?context=portraits&filename=Thorgar.png',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'image/png' },
      payload: portrait,
    })
    t.equal(uploaded.statusCode, 201)
    const { key: uploadedKey } = uploaded.json()
    t.equal(await s3.sha256Of(uploadedKey), sha256(portrait), 'the upload is stored byte-exact')
    const portraits = [...seeded.filter((key) => key.startsWith('portraits/')), uploadedKey].sort()

    const listed = await runCheck('listing', `http://127.0.0.1:${port}`, TOKEN, 'portraits/', '4')

    t.same(
      listed.first.items.map((item: { key: string }) => item.key),
      portraits.slice(0, 4),
      'list_images: the first page',
    )
    t.match(listed.first.items[0], {
      url: `https://images.example.test/${portraits[0]}`,
      size: portraits[0]!.length,
      etag: /^"[0-9a-f]+"$/,
      last_modified: /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00$/,
    })
    t.same(listed.second_keys, portraits.slice(4, 8), 'list_images with the cursor: the second page')
    t.same(
      listed.pages,
      [portraits.slice(0, 4), portraits.slice(4, 8), portraits.slice(8, 12), portraits.slice(12)],
      'iter_image_pages: every page, in order',
    )
    t.equal(listed.last_cursor, null, 'the last page has no cursor')
    t.same(listed.default_page_keys, [...portraits, seeded[13]].sort(), 'no prefix, default limit: every image, no record')
    t.match(listed.limit_0, { class: 'InvalidRequestError', status: 400, code: 'invalid_request' })
    t.match(listed.bad_prefix, { class: 'InvalidKeyError', status: 400, code: 'invalid_key' })
  })
}
