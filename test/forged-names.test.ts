import t from 'tap'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { png } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

const rawUpload = (url: string, headers: Record<string, string> = {}) => ({
  method: 'POST' as const,
  url,
  headers: { 'content-type': 'image/png', ...headers },
  payload: png(),
})
const formUpload = (filename: string, fields: { name: string; value: string }[] = []) => {
  const { payload, headers } = multipartBody([...fields, { name: 'file', filename, data: png() }])
  return { method: 'POST' as const, url: '/v1/images', headers, payload }
}

t.test('migrated_from is the service’s: an upload that sends it is 400 invalid_metadata', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const forged = {
    'a form field': formUpload('p.png', [{ name: 'migrated_from', value: 'https://cdn.discordapp.com/attachments/1/2/p.png' }]),
    'an X-Meta header': rawUpload('/v1/images', { 'x-meta-migrated-from': 'https%3A%2F%2Fcdn.discordapp.com%2Fp.png' }),
    'another case': formUpload('p.png', [{ name: 'Migrated_From', value: 'x' }]),
  }
  for (const [what, request] of Object.entries(forged)) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 400, `${what}: 400`)
    t.equal(response.json().code, 'invalid_metadata')
    t.match(response.json().detail, /migrated_from/)
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('filenames that display as something else, or whose percent-encoding is broken, are 400 invalid_request', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  const unshowable: [string, string][] = [
    ['a right-to-left override (a\u202Egnp.exe shows as aexe.png)', 'a\u202Egnp.exe'],
    ['a left-to-right override', 'a\u202Dx.png'],
    ['a right-to-left isolate', '\u2067x.png'],
    ['a pop directional isolate', 'x\u2069.png'],
    ['a zero-width space', 'por\u200Btrait.png'],
    ['a right-to-left mark', 'x\u200F.png'],
    ['a byte-order mark', '\uFEFFportrait.png'],
    ['a soft hyphen', 'por\u00ADtrait.png'],
    ['a C1 control', 'x\u0085.png'],
    ['a line separator', 'x\u2028.png'],
    ['an invisible tag character', 'x\u{E0041}.png'],
  ]
  for (const [what, name] of unshowable) {
    const raw = await app.inject(rawUpload(`/v1/images?filename=${encodeURIComponent(name)}`))
    t.equal(raw.statusCode, 400, `raw ?filename= with ${what}: 400`)
    t.equal(raw.json().code, 'invalid_request')
    const form = await app.inject(formUpload(name))
    t.equal(form.statusCode, 400, `multipart filename with ${what}: 400`)
    t.equal(form.json().code, 'invalid_request')
  }
  const broken: [string, string][] = [
    ['an escape without hex digits', 'por%zztrait.png'],
    ['a cut escape', 'portrait.png%2'],
    ['escapes that are not UTF-8', 'p%E9re.png'],
    ['a cut UTF-8 sequence', 'p%C3.png'],
    ['a lone surrogate, percent-encoded', 'p%ED%A0%80.png'],
  ]
  for (const [what, query] of broken) {
    const response = await app.inject(rawUpload(`/v1/images?filename=${query}`))
    t.equal(response.statusCode, 400, `raw ?filename= with ${what}: 400`)
    t.equal(response.json().code, 'invalid_request')
    t.match(response.json().detail, /percent-encoded/)
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')

  // What people name their portraits is still fine, written in any script.
  for (const name of ['Thorgar Ø 永久.png', 'حسن.png', 'Ελένη.png', '100% real.png']) {
    const raw = await app.inject(rawUpload(`/v1/images?filename=${encodeURIComponent(name)}`))
    t.equal(raw.statusCode, 201, `raw: ${name}`)
    t.equal(raw.json().filename, name)
    const form = await app.inject(formUpload(name))
    t.equal(form.statusCode, 201, `multipart: ${name}`)
    t.equal(form.json().filename, name)
  }
})
