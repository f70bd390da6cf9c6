/**
 * Hostile input over real sockets: (A) traversal and malformed keys against HEAD, GET, DELETE and /files
 * with a sentinel next to DATA_DIR, and (B) a generated corpus of malformed upload requests. Every byte
 * goes on the wire as written here (raw `net` sockets), so nothing normalises a path or fixes the framing.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import t from 'tap'
import { FsDriver } from '../src/storage/fs.js'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { animatedGif, gif, gifSubBlocks, jpeg, noise, png, sha256, webp } from './helpers/images.js'
import { formPieces } from './helpers/multipart.js'
import { problemViolation } from './helpers/problem.js'
import { type Ending, type Exchange, exchange, requestHead } from './helpers/raw-http.js'
import { settled } from './helpers/wait.js'

const TOKEN = 'b'.repeat(40)
const AUTH_ENV = { API_KEYS: `bot:${TOKEN}` }

const AUTH: [string, string] = ['Authorization', `Bearer ${TOKEN}`]
const CLOSE: [string, string] = ['Connection', 'close']

async function filesUnder(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true })
    return entries.filter((entry) => !entry.isDirectory()).map((entry) => path.relative(dir, path.join(entry.parentPath, entry.name)))
  } catch {
    return []
  }
}

// ---------------------------------------------------------------------------------------------------------
// (A) Traversal and malformed keys
// ---------------------------------------------------------------------------------------------------------

/** `invalid`: 400 invalid_key. `missing`: a well-formed key with no object (404; DELETE 204, idempotent). `unparsable`: bytes no HTTP parser takes as a request-target, refused before routing as 400 invalid_request. */
type KeyExpectation = 'invalid' | 'missing' | 'unparsable'
/** The key variants that need nothing of the test to write down, in groups that say why each is refused; `bytes` in hex. */
const keyCorpus = JSON.parse(await readFile(new URL('./fixtures/hostile-keys.json', import.meta.url), 'utf8')) as {
  why: string
  expect: KeyExpectation
  keys: string[]
  bytes?: string[]
}[]

t.test(
  '(A) traversal and malformed keys: 400 invalid_key on HEAD, GET, DELETE and /files; the sentinel and the object untouched',
  async (t) => {
    const root = await mkdtemp(path.join(tmpdir(), 'hostile-keys-'))
    t.teardown(() => rm(root, { recursive: true, force: true }))
    const dataDir = path.join(root, 'data')
    await mkdir(dataDir)
    // Sentinels next to DATA_DIR and inside it (outside objects/): what a traversal would reach.
    const sentinels = [path.join(root, 'sentinel.txt'), path.join(root, 'secret.png'), path.join(dataDir, 'canary.png')]
    const past = new Date('2020-01-02T03:04:05Z')
    for (const file of sentinels) {
      await writeFile(file, `sentinel ${path.basename(file)}: must survive\n`)
      await utimes(file, past, past)
    }
    const recorded = await Promise.all(
      sentinels.map(async (file) => ({ file, content: await readFile(file, 'utf8'), mtimeMs: (await stat(file)).mtimeMs })),
    )

    // The driver counts its calls, so "refused before storage is touched" is checked per request.
    const driver = await new FsDriver(dataDir).init()
    let storageCalls = 0
    for (const method of ['head', 'delete', 'put', 'open'] as const) {
      const original = driver[method].bind(driver) as (...args: unknown[]) => unknown
      ;(driver as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
        storageCalls++
        return original(...args)
      }
    }
    const { app } = await buildTestApp(t, { ...AUTH_ENV, RATE_LIMIT_PER_MINUTE: '100000' }, { driver })
    const server = await listen(app)

    // One real object, which no DELETE variant below may remove.
    const image = png(5, 5)
    const uploaded = await exchange(server, [
      Buffer.concat([
        requestHead('POST', '/v1/images?context=keep&filename=real.png', [
          AUTH,
          CLOSE,
          ['Content-Type', 'image/png'],
          ['Content-Length', String(image.length)],
        ]),
        image,
      ]),
    ])
    t.equal(uploaded.response?.status, 201, 'the real object is stored')
    const realKey = String(JSON.parse(uploaded.response?.body.toString('utf8') ?? '{}').key)
    t.match(realKey, /^keep\/\d{4}\/\d{2}\/[a-z]{20}_real\.png$/)
    t.same(await storedFiles(dataDir), [realKey], 'one object on disk')

    const multiSegment1025 = `${'ab/'.repeat(341)}ab` // 341 × 3 + 2 = 1025 bytes
    const multiSegment1024 = `${'ab/'.repeat(341)}a` // 1024 bytes: the longest well-formed key
    const variants: [string | Buffer, KeyExpectation][] = [
      ...keyCorpus.flatMap(({ expect, keys, bytes = [] }) => [
        ...keys.map((key): [string, KeyExpectation] => [key, expect]),
        ...bytes.map((hex): [Buffer, KeyExpectation] => [Buffer.from(hex, 'hex'), expect]),
      ]),
      // Built here: they depend on the key limit or on the object stored above.
      ['k'.repeat(1025), 'invalid'],
      [multiSegment1025, 'invalid'],
      [`${realKey}/..`, 'invalid'],
      [`${realKey}/.`, 'invalid'],
      [`${realKey}/`, 'invalid'],
      [`./${realKey}`, 'invalid'],
      [`keep/../${realKey}`, 'invalid'],
      [`${realKey}%00`, 'invalid'],
      [`${realKey}%2f..`, 'invalid'],
      [`/${realKey}`, 'invalid'],
      ['k'.repeat(1024), 'missing'],
      [multiSegment1024, 'missing'],
    ]
    t.ok(variants.filter(([, expected]) => expected === 'invalid').length >= 30, 'at least 30 invalid variants')

    const routes = [
      ['HEAD', '/v1/images/'],
      ['GET', '/v1/images/'],
      ['DELETE', '/v1/images/'],
      ['GET', '/files/'],
    ] as const
    const counts: Record<string, number> = {}
    for (const [variant, expected] of variants) {
      const label = Buffer.isBuffer(variant)
        ? `0x${variant.toString('hex')}`
        : JSON.stringify(variant.length > 40 ? `${variant.slice(0, 20)}…(${variant.length} bytes)` : variant)
      for (const [method, prefix] of routes) {
        const what = `${method} ${prefix}${label}`
        const target = Buffer.concat([Buffer.from(prefix), Buffer.isBuffer(variant) ? variant : Buffer.from(variant, 'latin1')])
        const callsBefore = storageCalls
        const { response, error, trailing } = await exchange(server, [requestHead(method, target, [AUTH, CLOSE])], {
          head: method === 'HEAD',
        })
        if (!response) {
          t.fail(`${what}: no response (${error ?? 'closed'})`)
          continue
        }
        const wanted = expected === 'missing' ? (method === 'DELETE' ? 204 : 404) : 400
        t.equal(response.status, wanted, what)
        counts[`${expected} → ${response.status}`] = (counts[`${expected} → ${response.status}`] ?? 0) + 1
        if (expected !== 'missing') t.equal(storageCalls, callsBefore, `${what}: storage not touched`)
        if (method === 'HEAD') {
          // A HEAD the parser took is answered without a body; one it refused was never known to be a HEAD.
          if (expected !== 'unparsable') t.equal(trailing.length, 0, `${what}: no body`)
          continue
        }
        if (response.status === 204) continue
        t.equal(problemViolation(response), undefined, `${what}: a contract problem`)
        const code = JSON.parse(response.body.toString('utf8')).code
        t.equal(code, { invalid: 'invalid_key', missing: 'not_found', unparsable: 'invalid_request' }[expected], `${what}: code`)
      }
    }
    for (const [outcome, count] of Object.entries(counts)) t.comment(`(A) ${outcome}: ${count} requests`)
    t.comment(`(A) ${variants.length} variants × ${routes.length} routes = ${variants.length * routes.length} requests`)

    for (const { file, content, mtimeMs } of recorded) {
      t.equal(await readFile(file, 'utf8').catch(() => '(deleted)'), content, `${path.relative(root, file)}: content unchanged`)
      t.equal((await stat(file).catch(() => undefined))?.mtimeMs, mtimeMs, `${path.relative(root, file)}: mtime unchanged`)
    }
    t.same((await readdir(root)).sort(), ['data', 'secret.png', 'sentinel.txt'], 'nothing new next to DATA_DIR')
    t.same(await storedFiles(dataDir), [realKey], 'the real object is still the only object')
    t.same(await filesUnder(path.join(dataDir, 'meta')), [`${realKey}.json`], 'and its metadata is still there')
    const served = await exchange(server, [requestHead('GET', `/files/${realKey}`, [CLOSE])])
    t.equal(served.response?.status, 200, 'the real object is still served')
    t.same(served.response?.body, image, 'with its bytes')
  },
)

// ---------------------------------------------------------------------------------------------------------
// (B) The malformed-input corpus
// ---------------------------------------------------------------------------------------------------------

interface Case {
  category: string
  name: string
  pieces: Buffer[]
  ending?: Ending
  pauseMs?: number
  /** Statuses this case may get (all contract 4xx); default: any contract 4xx. */
  statuses?: number[]
  /** Codes this case may get; default: any code of the status. */
  codes?: string[]
}

const IMAGES = [
  { kind: 'png', type: 'image/png', data: png(6, 4) },
  { kind: 'jpeg', type: 'image/jpeg', data: jpeg(6, 4) },
  { kind: 'gif', type: 'image/gif', data: gif(6, 4) },
  { kind: 'webp', type: 'image/webp', data: webp(6, 4) },
] as const
type Image = (typeof IMAGES)[number]

const MAX_UPLOAD = 65536
const BOUNDARY = 'HostileBoundary7MA4YWxkTrZu0gW'
const NOT_AN_IMAGE = Buffer.from('this is plain text, not an image at all; it must never be stored\n')

const { file: filePart, field: fieldPart, closing } = formPieces(BOUNDARY)
const formType = (boundary = BOUNDARY): [string, string] => ['Content-Type', formPieces(boundary).contentType]

/** A POST with an honest Content-Length (unless headers already frame the body). */
function post(target: string, headers: [string, string | Buffer][], body: Buffer, options: { auth?: boolean } = {}): Buffer {
  const framed = headers.some(([name]) => /^(content-length|transfer-encoding)$/i.test(name))
  const all: [string, string | Buffer][] = [...(options.auth === false ? [] : [AUTH]), CLOSE, ...headers]
  if (!framed) all.push(['Content-Length', String(body.length)])
  return Buffer.concat([requestHead('POST', target, all), body])
}

const chunk = (data: Buffer) => Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n')])
const CHUNKED: [string, string] = ['Transfer-Encoding', 'chunked']

/** A body over MAX_UPLOAD that starts as a real image of the kind. */
const oversized = (image: Image) => Buffer.concat([image.data, noise(MAX_UPLOAD + 4096 - image.data.length, 3)])
/** A PNG header declaring 100000 × 100000 pixels (over MAX_IMAGE_PIXELS). */
function pixelBomb(): Buffer {
  const head = Buffer.from(png(1, 1))
  head.writeUInt32BE(100_000, 16)
  head.writeUInt32BE(100_000, 20)
  return head
}

const NON_UTF8_NAMES: [string, Buffer][] = [
  ['latin-1 bytes', Buffer.from([0x70, 0xe9, 0x72, 0x65, 0x2e, 0x70, 0x6e, 0x67])], // "p\xe9re.png"
  ['0xff 0xfe', Buffer.from([0xff, 0xfe, 0x2e, 0x70, 0x6e, 0x67])],
  ['a lone continuation byte', Buffer.from([0x61, 0x80, 0x62, 0x2e, 0x70, 0x6e, 0x67])],
  ['overlong "/"', Buffer.from([0x2e, 0x2e, 0xc0, 0xaf, 0x78, 0x2e, 0x70, 0x6e, 0x67])],
  ['a UTF-16 surrogate', Buffer.from([0xed, 0xa0, 0x80, 0x2e, 0x70, 0x6e, 0x67])],
  ['a truncated sequence', Buffer.from([0x61, 0xe2, 0x82, 0x2e, 0x70, 0x6e, 0x67])],
]

function corpus(): Case[] {
  const cases: Case[] = []
  const add = (category: string, name: string, pieces: Buffer | Buffer[], rest: Omit<Case, 'category' | 'name' | 'pieces'> = {}) =>
    cases.push({ category, name, pieces: Array.isArray(pieces) ? pieces : [pieces], ...rest })

  for (const image of IMAGES) {
    const form = Buffer.concat([filePart(image.data, { contentType: image.type }), closing()])
    const headersEnd = form.indexOf('\r\n\r\n') + 4

    // Truncated multipart: the HTTP body is complete (honest Content-Length), the form inside it is not.
    const cuts: [string, number][] = [
      ['inside the first boundary line', 10],
      ['inside the part headers', 60],
      ['right after the part headers', headersEnd],
      ['inside the file data', headersEnd + Math.floor(image.data.length / 2)],
      ['with no closing boundary', headersEnd + image.data.length + 2],
      ['inside the closing boundary', form.length - 8],
    ]
    for (const [where, at] of cuts) {
      add('truncated multipart', `${image.kind}: cut ${where}`, post('/v1/images', [formType()], form.subarray(0, at)), {
        statuses: [400],
        codes: ['invalid_request'],
      })
    }
    add(
      'truncated multipart',
      `${image.kind}: closing boundary without "--"`,
      post('/v1/images', [formType()], Buffer.concat([filePart(image.data), Buffer.from(`--${BOUNDARY}\r\n`)])),
      { statuses: [400], codes: ['invalid_request'] },
    )

    // Missing or mismatched boundary.
    const boundaries: [string, [string, string], Buffer][] = [
      ['no boundary parameter', ['Content-Type', 'multipart/form-data'], form],
      ['an empty boundary', ['Content-Type', 'multipart/form-data; boundary='], form],
      // (busboy takes `boundary="abc` without its closing quote as "abc": lenient, not refused, so not here)
      ['an empty quoted boundary', ['Content-Type', 'multipart/form-data; boundary=""'], form],
      ['another boundary in the body', formType('SomethingElse'), form],
      ['the boundary in another case', formType(BOUNDARY.toUpperCase()), form],
      ['a 200-character boundary not in the body', formType('x'.repeat(200)), form],
      ['only a charset parameter', ['Content-Type', 'multipart/form-data; charset=utf-8'], form],
      ['no boundary lines in the body', formType(), image.data],
    ]
    for (const [what, contentType, body] of boundaries)
      add('boundary', `${image.kind}: ${what}`, post('/v1/images', [contentType], body), { statuses: [400], codes: ['invalid_request'] })

    // Form shape: two files, fields after the file, a misnamed or missing file part.
    const other = IMAGES[(IMAGES.indexOf(image) + 1) % IMAGES.length]!
    const shapes: [string, Buffer[]][] = [
      ['two file parts named file', [filePart(image.data), filePart(image.data, { filename: 'b.png' })]],
      [
        'a second file of another type under another name',
        [filePart(image.data), filePart(other.data, { name: 'file2', filename: 'b.png' })],
      ],
      ['a second, empty file', [filePart(image.data), filePart(Buffer.alloc(0), { filename: 'empty.png' })]],
      ['a metadata field after the file', [filePart(image.data), fieldPart('character_name', 'late')]],
      ['context after the file', [filePart(image.data), fieldPart('context', 'portraits')]],
      ['a field and a second file after the file', [filePart(image.data), fieldPart('a', 'b'), filePart(image.data)]],
      ['the file part named image', [filePart(image.data, { name: 'image' })]],
      ['the file sent as a text field', [fieldPart('file', image.data.toString('latin1'))]],
      ['only fields', [fieldPart('character_name', 'Thorgar'), fieldPart('context', 'portraits')]],
      ['an empty form', []],
    ]
    for (const [what, parts] of shapes) {
      add('form shape', `${image.kind}: ${what}`, post('/v1/images', [formType()], Buffer.concat([...parts, closing()])), {
        statuses: [400],
        codes: ['invalid_request'],
      })
    }

    // Filenames: 10 KB (ASCII and not UTF-8), and bytes that are not UTF-8 with content that must be refused anyway.
    add(
      'filename',
      `${image.kind}: a 10 KB filename (multipart)`,
      post('/v1/images', [formType()], Buffer.concat([filePart(image.data, { filename: `${'n'.repeat(10_240)}.png` }), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `${image.kind}: a 10 KB filename of bytes that are not UTF-8 (multipart)`,
      post('/v1/images', [formType()], Buffer.concat([filePart(image.data, { filename: Buffer.alloc(10_240, 0xe9) }), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `${image.kind}: a 10 KB filename (raw query)`,
      post(`/v1/images?filename=${'q'.repeat(10_240)}.png`, [['Content-Type', image.type]], image.data),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `${image.kind}: a 10 KB percent-encoded non-UTF-8 filename (raw query)`,
      post(`/v1/images?filename=${'%FF'.repeat(3414)}`, [['Content-Type', image.type]], image.data),
      { statuses: [400], codes: ['invalid_request'] },
    )
  }

  // A filename that is not UTF-8 is refused (400 invalid_request) before the content is looked at: the
  // name the client meant is already lost. So is a raw ?filename= whose percent-encoding is not UTF-8 (the
  // query parser would keep it as literal text).
  for (const [what, name] of NON_UTF8_NAMES) {
    add(
      'filename',
      `a filename with ${what}, on a valid PNG`,
      post('/v1/images', [formType()], Buffer.concat([filePart(png(), { filename: name }), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `a filename with ${what}, content not an image`,
      post('/v1/images', [formType()], Buffer.concat([filePart(NOT_AN_IMAGE, { filename: name }), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `a filename with ${what}, empty file`,
      post('/v1/images', [formType()], Buffer.concat([filePart(Buffer.alloc(0), { filename: name }), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
    const encoded = [...name].map((byte) => `%${byte.toString(16).padStart(2, '0').toUpperCase()}`).join('')
    add(
      'filename',
      `a raw query filename with ${what}, content not an image`,
      post(`/v1/images?filename=${encoded}`, [['Content-Type', 'image/png']], NOT_AN_IMAGE),
      { statuses: [400], codes: ['invalid_request'] },
    )
    add(
      'filename',
      `a filename with ${what} and a field after the file`,
      post('/v1/images', [formType()], Buffer.concat([filePart(png(), { filename: name }), fieldPart('x', 'y'), closing()])),
      { statuses: [400], codes: ['invalid_request'] },
    )
  }

  for (const image of IMAGES) {
    const raw = (target: string, headers: [string, string | Buffer][] = []) =>
      post(target, [['Content-Type', image.type], ...headers], image.data)
    const formWith = (...before: Buffer[]) =>
      post('/v1/images', [formType()], Buffer.concat([...before, filePart(image.data, { contentType: image.type }), closing()]))

    // Oversized or otherwise refused metadata, as form fields and as X-Meta-* headers.
    const metadata: [string, Buffer, string[]][] = [
      ['one 2049-byte field', formWith(fieldPart('notes', 'x'.repeat(2049))), ['invalid_metadata']],
      [
        'two fields over 2 KiB together',
        formWith(fieldPart('a', 'x'.repeat(1100)), fieldPart('b', 'y'.repeat(1100))),
        ['invalid_metadata'],
      ],
      ['1100 two-byte UTF-8 characters', formWith(fieldPart('name', 'é'.repeat(1100))), ['invalid_metadata']],
      ['a 150-character field name', formWith(fieldPart('n'.repeat(150), 'x')), ['invalid_metadata']],
      [
        '120 fields (more parts than allowed)',
        formWith(...Array.from({ length: 120 }, (_, i) => fieldPart(`f${i}`, 'x'))),
        ['invalid_request', 'invalid_metadata'],
      ],
      ['a service-owned field', formWith(fieldPart('sha256', '00')), ['invalid_metadata']],
      ['a 3000-byte X-Meta header', raw('/v1/images', [['X-Meta-Notes', 'x'.repeat(3000)]]), ['invalid_metadata']],
      [
        'three 800-byte X-Meta headers',
        raw('/v1/images', [
          ['X-Meta-A', 'x'.repeat(800)],
          ['X-Meta-B', 'x'.repeat(800)],
          ['X-Meta-C', 'x'.repeat(800)],
        ]),
        ['invalid_metadata'],
      ],
      [
        'raw UTF-8 bytes in an X-Meta header',
        raw('/v1/images', [['X-Meta-Character-Name', Buffer.from('Thorgar Ø 永久', 'utf8')]]),
        ['invalid_metadata'],
      ],
      ['bad percent-encoding in an X-Meta header', raw('/v1/images', [['X-Meta-Name', '%E0%A4%A']]), ['invalid_metadata']],
      ['an X-Meta name the grammar refuses', raw('/v1/images', [['X-Meta-.bad', 'x']]), ['invalid_metadata']],
    ]
    for (const [what, request, codes] of metadata) add('metadata', `${image.kind}: ${what}`, request, { statuses: [400], codes })

    // Declared types say nothing (any of them, or none, is a raw body): text is refused by its content.
    const contentTypes = [
      'text/plain',
      'application/json',
      'application/x-www-form-urlencoded',
      'text/html; charset=utf-8',
      'multipart/mixed; boundary=x',
      'image',
      'image/',
      'x-unknown/x-unknown',
      ';',
      'application/octet-streamx',
    ]
    for (const contentType of contentTypes) {
      add(
        'content type',
        `text as ${JSON.stringify(contentType)} (with ${image.kind} tests)`,
        post('/v1/images', [['Content-Type', contentType]], NOT_AN_IMAGE),
        { statuses: [415], codes: ['unsupported_media_type'] },
      )
    }
    add('content type', `text with no Content-Type (with ${image.kind} tests)`, post('/v1/images', [], NOT_AN_IMAGE), {
      statuses: [415],
      codes: ['unsupported_media_type'],
    })
    add(
      'content type',
      `${image.kind} as multipart/mixed, which is no form`,
      post('/v1/images', [['Content-Type', 'multipart/mixed; boundary=x']], image.data),
      {
        statuses: [415],
        codes: ['unsupported_media_type'],
      },
    )
    add(
      'content type',
      `${image.kind} as image/png but the bytes are text`,
      post('/v1/images', [['Content-Type', image.type]], NOT_AN_IMAGE),
      { statuses: [415], codes: ['unsupported_media_type'] },
    )

    // Chunked bodies that stop early (the client hangs up or half-closes), and chunked framing that is broken.
    const multipart = Buffer.concat([filePart(image.data, { contentType: image.type }), closing()])
    for (const [transport, contentType, body] of [
      ['raw', ['Content-Type', image.type], image.data],
      ['multipart', formType(), multipart],
    ] as const) {
      const head = requestHead('POST', '/v1/images', [AUTH, CLOSE, contentType as [string, string], CHUNKED])
      const half = Math.floor(body.length / 2)
      const first = chunk(body.subarray(0, half))
      const early = (name: string, pieces: Buffer[], ending: Ending) =>
        add(
          'chunked, stops early',
          `${image.kind} ${transport}: ${name}, then ${ending === 'abandon' ? 'hangs up' : 'half-closes'}`,
          [head, ...pieces],
          {
            ending,
            pauseMs: 15,
            // A half-closing client still reads: the body it cut short is a malformed request, answered as one.
            ...(ending === 'half-close' && { statuses: [400], codes: ['invalid_request'] }),
          },
        )
      early('one chunk and no more', [first], 'abandon')
      early('a chunk cut in its data', [Buffer.from(`${body.length.toString(16)}\r\n`), body.subarray(0, half)], 'abandon')
      early('a chunk cut in its data', [Buffer.from(`${body.length.toString(16)}\r\n`), body.subarray(0, half)], 'half-close')
      early('every chunk but no last-chunk', [first, chunk(body.subarray(half))], 'half-close')
      early('a chunk-size line cut', [first, Buffer.from('1')], 'half-close')
      const broken = (name: string, pieces: Buffer[]) =>
        add('chunked, broken framing', `${image.kind} ${transport}: ${name}`, [head, ...pieces], {
          statuses: [400],
          codes: ['invalid_request'],
          pauseMs: 15,
        })
      broken('a chunk size that is not hex', [first, Buffer.from('zz\r\n')])
      broken('chunk data longer than its size', [Buffer.from('4\r\n'), body.subarray(0, 12), Buffer.from('\r\n0\r\n\r\n')])
      broken('a chunk size of 2^64', [first, Buffer.from('10000000000000000\r\n')])
      broken('no CRLF after the chunk data', [Buffer.concat([first.subarray(0, first.length - 2), Buffer.from('XX0\r\n\r\n')])])
    }

    // Content-Length that lies, is doubled, or fights Transfer-Encoding.
    const lying = (name: string, headers: [string, string][], body: Buffer, rest: Omit<Case, 'category' | 'name' | 'pieces'>) =>
      add(
        'content-length',
        `${image.kind}: ${name}`,
        Buffer.concat([requestHead('POST', '/v1/images', [AUTH, CLOSE, ['Content-Type', image.type], ...headers]), body]),
        rest,
      )
    const length = String(image.data.length)
    lying('a body shorter than Content-Length, then a half-close', [['Content-Length', String(image.data.length + 500)]], image.data, {
      ending: 'half-close',
      statuses: [400],
      codes: ['invalid_request'],
    })
    lying('a body shorter than Content-Length, then a hang-up', [['Content-Length', String(image.data.length + 500)]], image.data, {
      ending: 'abandon',
    })
    lying('Content-Length and Transfer-Encoding both', [['Content-Length', length], CHUNKED], chunk(image.data), {
      statuses: [400],
      codes: ['invalid_request'],
    })
    lying(
      'two different Content-Length headers',
      [
        ['Content-Length', length],
        ['Content-Length', String(image.data.length + 1)],
      ],
      image.data,
      { statuses: [400], codes: ['invalid_request'] },
    )
    lying('a Content-Length that is not a number', [['Content-Length', 'twelve']], image.data, {
      statuses: [400],
      codes: ['invalid_request'],
    })
    lying('a negative Content-Length', [['Content-Length', '-1']], image.data, { statuses: [400], codes: ['invalid_request'] })
    // The client reads the early 413, then hangs up or half-closes without sending the rest it declared:
    // either way exactly one answer (no parser error written after the 413 on the same connection).
    lying('a Content-Length over MAX_UPLOAD_BYTES', [['Content-Length', String(MAX_UPLOAD + 1)]], image.data, {
      statuses: [413],
      codes: ['image_too_large'],
    })
    lying('a Content-Length over MAX_UPLOAD_BYTES, then a half-close', [['Content-Length', String(MAX_UPLOAD + 1)]], image.data, {
      ending: 'half-close',
      statuses: [413],
      codes: ['image_too_large'],
    })
    lying('a Content-Length of 2^64', [['Content-Length', '18446744073709551616']], image.data, {
      statuses: [400, 413],
      codes: ['invalid_request', 'image_too_large'],
    })

    // Over MAX_UPLOAD_BYTES, declared or found while streaming.
    const big = oversized(image)
    add('oversized', `${image.kind}: raw, honest Content-Length`, post('/v1/images', [['Content-Type', image.type]], big), {
      statuses: [413],
      codes: ['image_too_large'],
    })
    add(
      'oversized',
      `${image.kind}: raw, chunked`,
      Buffer.concat([
        requestHead('POST', '/v1/images', [AUTH, CLOSE, ['Content-Type', image.type], CHUNKED]),
        chunk(big.subarray(0, 30_000)),
        chunk(big.subarray(30_000)),
        Buffer.from('0\r\n\r\n'),
      ]),
      { statuses: [413], codes: ['image_too_large'] },
    )
    add(
      'oversized',
      `${image.kind}: multipart`,
      post('/v1/images', [formType()], Buffer.concat([filePart(big, { contentType: image.type }), closing()])),
      { statuses: [413], codes: ['image_too_large'] },
    )

    // Zero-length bodies.
    add('zero-length', `${image.kind}: raw, Content-Length 0`, post('/v1/images', [['Content-Type', image.type]], Buffer.alloc(0)), {
      statuses: [400],
      codes: ['empty_file'],
    })
    add(
      'zero-length',
      `${image.kind}: raw, chunked with only the last-chunk`,
      Buffer.concat([requestHead('POST', '/v1/images', [AUTH, CLOSE, ['Content-Type', image.type], CHUNKED]), Buffer.from('0\r\n\r\n')]),
      { statuses: [400], codes: ['empty_file'] },
    )
    add(
      'zero-length',
      `${image.kind}: multipart, an empty file part`,
      post('/v1/images', [formType()], Buffer.concat([filePart(Buffer.alloc(0), { contentType: image.type }), closing()])),
      { statuses: [400], codes: ['empty_file'] },
    )

    // Bytes that are not an allowed image, or an image that claims too many pixels.
    // 8 bytes: the signature at most, never the dimensions (12 bytes of GIF already carry them, and are stored).
    const truncatedHeader = image.data.subarray(0, 8)
    for (const [what, body, status] of [
      ['a truncated header', truncatedHeader, 415],
      ['text', NOT_AN_IMAGE, 415],
      ['noise', noise(2000, IMAGES.indexOf(image) + 11), 415],
    ] as const) {
      add('not an image', `${image.kind} ${what} (raw)`, post('/v1/images', [['Content-Type', image.type]], body), {
        statuses: [status],
        codes: ['unsupported_media_type'],
      })
      add(
        'not an image',
        `${image.kind} ${what} (multipart)`,
        post('/v1/images', [formType()], Buffer.concat([filePart(body, { contentType: image.type }), closing()])),
        { statuses: [status], codes: ['unsupported_media_type'] },
      )
    }

    // Query and context mistakes.
    add('query', `${image.kind}: context with a slash`, raw('/v1/images?context=../etc'), { statuses: [400], codes: ['invalid_context'] })
    add('query', `${image.kind}: context in capitals`, raw('/v1/images?context=Portraits'), { statuses: [400], codes: ['invalid_context'] })
    add('query', `${image.kind}: the filename twice`, raw('/v1/images?filename=a.png&filename=b.png'), {
      statuses: [400],
      codes: ['invalid_request'],
    })
    add('query', `${image.kind}: context as a form field, 64 characters`, formWith(fieldPart('context', 'c'.repeat(64))), {
      statuses: [400],
      codes: ['invalid_context'],
    })
  }

  // Pixel bombs, raw and multipart.
  add(
    'not an image',
    'a PNG header claiming 100000 × 100000 pixels (raw)',
    post('/v1/images', [['Content-Type', 'image/png']], pixelBomb()),
    { statuses: [422], codes: ['image_too_many_pixels'] },
  )
  add(
    'not an image',
    'a PNG header claiming 100000 × 100000 pixels (multipart)',
    post('/v1/images', [formType()], Buffer.concat([filePart(pixelBomb()), closing()])),
    { statuses: [422], codes: ['image_too_many_pixels'] },
  )

  // Zero-length, whatever the shape.
  add(
    'zero-length',
    'raw application/octet-stream, Content-Length 0',
    post('/v1/images', [['Content-Type', 'application/octet-stream']], Buffer.alloc(0)),
    { statuses: [400], codes: ['empty_file'] },
  )
  add('zero-length', 'multipart, Content-Length 0', post('/v1/images', [formType()], Buffer.alloc(0)), {
    statuses: [400],
    codes: ['invalid_request'],
  })
  add(
    'zero-length',
    'multipart, chunked with only the last-chunk',
    Buffer.concat([requestHead('POST', '/v1/images', [AUTH, CLOSE, formType(), CHUNKED]), Buffer.from('0\r\n\r\n')]),
    { statuses: [400], codes: ['invalid_request'] },
  )
  add('zero-length', 'no Content-Type, no body', post('/v1/images', [], Buffer.alloc(0)), { statuses: [400], codes: ['empty_file'] })

  // Huge headers (over the 16 KiB limit) and a huge request line.
  const huge = 'h'.repeat(20_000)
  for (const [what, target, headers] of [
    ['one 20 KB header', '/v1/images', [['X-Padding', huge]]],
    ['a 20 KB X-Meta header', '/v1/images', [['X-Meta-Notes', huge]]],
    ['a 20 KB header name', '/v1/images', [[`X-${huge}`, 'x']]],
    ['a 20 KB cookie', '/v1/images', [['Cookie', `session=${huge}`]]],
    ['400 headers of 60 bytes', '/v1/images', Array.from({ length: 400 }, (_, i) => [`X-Header-${i}`, 'v'.repeat(45)])],
    ['a 20 KB query string', `/v1/images?filename=${huge}.png`, []],
    ['a 20 KB path', `/v1/images/${huge}`, []],
    ['a 20 KB Authorization', '/v1/images', [['Authorization', `Bearer ${huge}`]]],
  ] as [string, string, [string, string][]][]) {
    for (const [transport, contentType, body] of [
      ['raw', ['Content-Type', 'image/png'], png()],
      ['multipart', formType(), Buffer.concat([filePart(png()), closing()])],
    ] as [string, [string, string], Buffer][]) {
      add('huge headers', `${what} (${transport})`, post(target, [contentType, ...headers], body), {
        statuses: [400],
        codes: ['invalid_request'],
      })
    }
  }

  // Authentication: no token, or not a valid one.
  for (const [what, authorization] of [
    ['no Authorization', undefined],
    ['a wrong token', `Bearer ${'c'.repeat(40)}`],
    ['Basic credentials', `Basic ${Buffer.from(`bot:${TOKEN}`).toString('base64')}`],
    ['"Bearer" and nothing', 'Bearer '],
    ['the token with a suffix', `Bearer ${TOKEN}x`],
    ['two tokens', `Bearer ${TOKEN} ${TOKEN}`],
  ] as const) {
    const headers: [string, string][] = authorization === undefined ? [] : [['Authorization', authorization]]
    add('auth', `${what} (raw)`, post('/v1/images', [['Content-Type', 'image/png'], ...headers], png(), { auth: false }), {
      statuses: [401],
      codes: ['unauthorized'],
    })
    add(
      'auth',
      `${what} (multipart)`,
      post('/v1/images', [formType(), ...headers], Buffer.concat([filePart(png()), closing()]), { auth: false }),
      { statuses: [401], codes: ['unauthorized'] },
    )
  }

  // Broken request lines and header syntax: refused by the HTTP parser, before any route.
  const parserRefusals: [string, Buffer][] = [
    ['an unknown method', Buffer.concat([requestHead('BREW', '/v1/images', [AUTH, CLOSE, ['Content-Length', '0']])])],
    ['HTTP/9.9', Buffer.from(`POST /v1/images HTTP/9.9\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 0\r\n\r\n`)],

    [
      'a header line without a colon',
      Buffer.from(
        `POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nthis is not a header\r\nContent-Length: 0\r\n\r\n`,
      ),
    ],
    [
      'a space in a header name',
      Buffer.from(`POST /v1/images HTTP/1.1\r\nHost: x\r\nContent Type: image/png\r\nContent-Length: 0\r\n\r\n`),
    ],
    [
      'a NUL in a header value',
      Buffer.from(`POST /v1/images HTTP/1.1\r\nHost: x\r\nX-Meta-A: a\x00b\r\nContent-Length: 0\r\n\r\n`, 'latin1'),
    ],
    ['a folded header line', Buffer.from(`POST /v1/images HTTP/1.1\r\nHost: x\r\nX-Meta-A: a\r\n  folded\r\nContent-Length: 0\r\n\r\n`)],
    ['binary garbage', noise(600, 99)],
  ]
  for (const [what, bytes] of parserRefusals) add('request syntax', what, bytes, { statuses: [400], codes: ['invalid_request'] })
  // A request line without a version is taken as HTTP/0.9, which carries no headers, so no token either.
  add('request syntax', 'no HTTP version', Buffer.from('POST /v1/images\r\n\r\n'), {
    statuses: [400, 401],
    codes: ['invalid_request', 'unauthorized'],
  })
  add(
    'request syntax',
    'HTTP/1.1 without Host',
    Buffer.from(
      `POST /v1/images HTTP/1.1\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: image/png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
    ),
    {
      statuses: [400],
      codes: ['invalid_request'],
    },
  )
  return cases
}

t.test('(B) a malformed-input corpus: no crash, no 5xx, only contract problems, nothing stored', async (t) => {
  const errorLogs: string[] = []
  const { app, dataDir } = await buildTestApp(
    t,
    { ...AUTH_ENV, MAX_UPLOAD_BYTES: String(MAX_UPLOAD), RATE_LIMIT_PER_MINUTE: '100000', MAX_CONCURRENT_UPLOADS: '1000' },
    { logger: { level: 'error', stream: { write: (line: string) => void errorLogs.push(line) } } },
  )
  const server = await listen(app)
  const cases = corpus()
  t.ok(cases.length >= 200, `at least 200 requests (${cases.length})`)

  const outcomes: Record<string, number> = {}
  const byCategory: Record<string, number> = {}
  const count = (table: Record<string, number>, key: string) => (table[key] = (table[key] ?? 0) + 1)
  const results: { item: Case; result: Exchange }[] = []
  let next = 0
  const started = Date.now()
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let item = cases[next++]; item !== undefined; item = cases[next++]) {
        const result = await exchange(server, item.pieces, { ending: item.ending, pauseMs: item.pauseMs })
        results.push({ item, result })
      }
    }),
  )
  for (const { item, result } of results) {
    const what = `[${item.category}] ${item.name}`
    count(byCategory, item.category)
    if (process.env.HOSTILE_DEBUG) {
      const body = result.response?.body.toString('utf8') ?? ''
      console.error(
        what,
        '→',
        result.response?.status ?? `none (${result.error ?? (result.timedOut ? 'timeout' : 'closed')})`,
        /"code":"(\w+)"/.exec(body)?.[1] ?? body.slice(0, 100),
        result.trailing.length ? `TRAILING ${result.trailing.toString('latin1').slice(0, 60)}` : '',
      )
    }
    const { response } = result
    if (!response) {
      count(
        outcomes,
        item.ending === 'abandon'
          ? 'no response: the client hung up'
          : `no response (${result.error ?? (result.timedOut ? 'timeout' : 'closed')})`,
      )
      if (item.ending !== 'abandon')
        t.fail(`${what}: no response (${result.error ?? (result.timedOut ? 'timed out' : 'closed without a word')})`)
      continue
    }
    const code = /"code":"(\w+)"/.exec(response.body.toString('utf8'))?.[1]
    count(outcomes, `${response.status} ${code ?? '?'}`)
    const violation = problemViolation(response)
    if (violation !== undefined) {
      t.fail(`${what}: ${violation}`)
      continue
    }
    if (item.statuses && !item.statuses.includes(response.status))
      t.fail(`${what}: status ${response.status}, expected ${item.statuses.join(' or ')}`)
    else if (item.codes && !item.codes.includes(code!)) t.fail(`${what}: code ${code}, expected ${item.codes.join(' or ')}`)
    else if (result.trailing.length > 0)
      t.fail(`${what}: bytes after the answer: ${JSON.stringify(result.trailing.toString('latin1').slice(0, 80))}`)
    else t.pass(`${what}: ${response.status} ${code}`)
  }
  t.comment(`(B) ${cases.length} requests in ${Date.now() - started} ms`)
  for (const [category, n] of Object.entries(byCategory)) t.comment(`(B) category ${category}: ${n}`)
  for (const [outcome, n] of Object.entries(outcomes).sort()) t.comment(`(B) outcome ${outcome}: ${n}`)
  const answered = results.filter(({ result }) => result.response !== undefined).length
  t.comment(`(B) answered: ${answered}; abandoned by the client: ${results.length - answered}`)
  t.ok(answered >= 200, 'at least 200 requests answered')

  // Nothing stored: no object, no metadata, and tmp/ empty once the abandoned uploads have been cleaned up.
  t.same(await storedFiles(dataDir), [], 'no object stored')
  t.same(await filesUnder(path.join(dataDir, 'meta')), [], 'no metadata stored')
  const leftovers = await settled(
    () => filesUnder(path.join(dataDir, 'tmp')),
    (files) => files.length === 0,
    3000,
    100,
  )
  t.same(leftovers, [], 'tmp/ is empty')
  t.same(errorLogs, [], 'nothing was logged as an error (no 5xx, no internal error)')

  // And the service still answers normally.
  const image = png(7, 5)
  const normal = await exchange(server, [post('/v1/images?filename=after.png', [['Content-Type', 'image/png']], image)])
  t.equal(normal.response?.status, 201, 'a normal upload afterwards: 201')
  const stored = JSON.parse(normal.response?.body.toString('utf8') ?? '{}') as { key?: string; width?: number; height?: number }
  t.match(stored, { key: /^general\/\d{4}\/\d{2}\/[a-z]{20}_after\.png$/, width: 7, height: 5 })
  t.same(await storedFiles(dataDir), [stored.key], 'and it is stored')
  const served = await exchange(server, [requestHead('GET', `/files/${stored.key}`, [CLOSE])])
  t.same(served.response?.body, image, 'and served')
  t.equal((await exchange(server, [requestHead('GET', '/healthz', [CLOSE])])).response?.status, 200, '/healthz 200')
  t.equal((await exchange(server, [requestHead('GET', '/readyz', [CLOSE])])).response?.status, 200, '/readyz 200')
})

t.test('(C) every GIF frame is held to MAX_IMAGE_PIXELS as the bytes stream, not only the first', async (t) => {
  const { app, dataDir } = await buildTestApp(t, { MAX_IMAGE_PIXELS: '1000000' })
  const screen = { width: 40, height: 30 }
  const frame = { width: 40, height: 30 }
  // A long comment between the frames puts the last one past what is read before storage is written to.
  const filler = Buffer.concat([Buffer.from([0x21, 0xfe]), gifSubBlocks(noise(6 * 1024 * 1024, 11))])
  const withFiller = (data: Buffer) => {
    const second = data.indexOf(Buffer.from([0x21, 0xf9]), 60)
    return Buffer.concat([data.subarray(0, second), filler, data.subarray(second)])
  }
  const upload = (payload: Buffer | Readable) =>
    app.inject({ method: 'POST', url: '/v1/images?filename=anim.gif', headers: { 'content-type': 'image/gif' }, payload })
  const inChunks = (data: Buffer) =>
    Readable.from(Array.from({ length: Math.ceil(data.length / 65536) }, (_, index) => data.subarray(index * 65536, (index + 1) * 65536)))

  const bombs: [string, Buffer | Readable][] = [
    ['frame 3 of a small animation', animatedGif(screen, [frame, frame, { width: 60_000, height: 60_000 }, frame])],
    ['after 6 MiB, with Content-Length', withFiller(animatedGif(screen, [frame, frame, { width: 60_000, height: 60_000 }]))],
    ['after 6 MiB, chunked', inChunks(withFiller(animatedGif(screen, [frame, frame, { width: 60_000, height: 60_000 }])))],
  ]
  for (const [what, payload] of bombs) {
    const response = await upload(payload)
    t.equal(response.statusCode, 422, `${what}: ${response.body.slice(0, 200)}`)
    t.match(response.json(), { code: 'image_too_many_pixels', detail: /^Frame 3 of the GIF \(60000 × 60000 at 0, 0\)/ }, what)
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')

  const clean = withFiller(animatedGif(screen, [frame, frame, { width: 10, height: 10, left: 30, top: 20 }]))
  const stored = await upload(inChunks(clean))
  t.equal(stored.statusCode, 201, stored.body.slice(0, 200))
  t.match(stored.json(), { content_type: 'image/gif', width: 40, height: 30, sha256: sha256(clean) })
  const files = await storedFiles(dataDir)
  t.equal(files.length, 1)
  t.equal(sha256(await readFile(path.join(dataDir, 'objects', files[0]!))), sha256(clean), 'the clean animation is stored whole')
})
