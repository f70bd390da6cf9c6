import fs from 'node:fs/promises'
import path from 'node:path'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { RECORDS_PREFIX } from '../src/upload/keys.js'
import { buildTestApp } from './helpers/app.js'
import { conforms } from './helpers/contract.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3, TEST_BUCKET } from './helpers/s3.js'

// GET /v1/images on both drivers. s3rver runs in a process of its own: in this one it answers every
// truncated ListObjectsV2 with a 500 (see helpers/s3rver-main.ts), and paging is the point here.
// s3rver lists in its directory walk's order, which is S3's only where no key is both an object and the
// start of a longer key's directory ("a-b" before "a/b"): the shared cases use keys of one shape, and the
// local-disk driver is checked on the mixed cases alone.

const TOKEN = 'list-'.padEnd(40, 'l')
const bearer = { authorization: `Bearer ${TOKEN}` }

const s3 = await startS3({ ownProcess: true })
t.teardown(() => s3.stop())

interface Item {
  key: string
  url: string
  size: number
  last_modified: string
  etag: string
}
interface Page {
  items: Item[]
  next_cursor: string | null
}

/** A seeded object: bytes whose length and content follow from the key. */
const bodyOf = (key: string) => Buffer.from(`${key}\n`.repeat(3))

/** Objects of the shared cases: two contexts, two months, keys of one length. */
const SEEDED = [
  ...Array.from({ length: 18 }, (_, i) => `portraits/2025/0${1 + (i % 2)}/${String(i).padStart(20, 'p')}_seed.png`),
  ...Array.from({ length: 6 }, (_, i) => `general/2025/01/${String(i).padStart(20, 'g')}_seed.png`),
]

interface Driver {
  name: string
  app: FastifyInstance
  dataDir: string
  /** Stores an object as another writer would (fast: no upload pipeline). */
  seed(key: string, body: Buffer): Promise<void>
  /** The stored bytes' SHA-256, read back from the backend. */
  storedSha256(key: string): Promise<string>
  /** ListObjectsV2 requests sent so far (R2 Class A), or undefined where nothing is billed. */
  listRequests(): Promise<number | undefined>
}

async function r2Driver(t: Test): Promise<Driver> {
  const { app, dataDir } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS: `ops:${TOKEN}` })
  return {
    name: 'r2',
    app,
    dataDir,
    seed: async (key, body) => {
      await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: body }))
    },
    storedSha256: (key) => s3.sha256Of(key),
    listRequests: async () => {
      const samples = (await app.metrics.operations.get()).values
      const listing = samples.filter((sample) => sample.labels.operation === 'ListObjectsV2')
      if (listing.some((sample) => sample.labels.class !== 'A')) t.fail('ListObjectsV2 is counted as Class A', { listing })
      return listing.reduce((sum, sample) => sum + sample.value, 0)
    },
  }
}

async function fsDriver(t: Test): Promise<Driver> {
  const { app, dataDir } = await buildTestApp(t, { API_KEYS: `ops:${TOKEN}` })
  return {
    name: 'fs',
    app,
    dataDir,
    seed: (key, body) =>
      app.storage.put(key, body, { contentType: 'image/png', cacheControl: 'no-cache', metadata: {} }, new AbortController().signal),
    storedSha256: async (key) => sha256((await app.inject({ url: `/files/${key}` })).rawPayload),
    listRequests: async () => undefined,
  }
}

async function list(app: FastifyInstance, query: string): Promise<Page> {
  const answer = await app.inject({ url: `/v1/images${query}`, headers: bearer })
  if (answer.statusCode !== 200) throw new Error(`GET /v1/images${query}: ${answer.statusCode} ${answer.body}`)
  return answer.json()
}

/** Every page from the first (or from `cursor`), with `query` (which may set limit and prefix). */
async function allPages(app: FastifyInstance, query = '', from: string | null = null): Promise<Page[]> {
  const pages: Page[] = []
  let cursor = from
  do {
    const page: Page = await list(app, `?${query}${cursor === null ? '' : `&cursor=${cursor}`}`)
    pages.push(page)
    cursor = page.next_cursor
  } while (cursor !== null && pages.length < 1000)
  return pages
}

const keysOf = (pages: Page[]) => pages.flatMap((page) => page.items.map((item) => item.key))

for (const start of [r2Driver, fsDriver]) {
  t.test(`${start.name.replace('Driver', '')}: listing`, async (t) => {
    const driver = await start(t)
    const { app } = driver
    for (const key of SEEDED) await driver.seed(key, bodyOf(key))
    // Two real uploads with an Idempotency-Key each: their records are in the bucket, never in a listing.
    const uploaded: string[] = []
    for (const [index, character] of ['Thorgar', 'Ysolde'].entries()) {
      const data = pngOfSize(3000 + index, index + 7)
      const form = multipartBody([
        { name: 'context', value: 'portraits' },
        { name: 'file', filename: `${character}.png`, data },
      ])
      const created = await app.inject({
        method: 'POST',
        url: '/v1/images',
        payload: form.payload,
        headers: { ...form.headers, ...bearer, 'idempotency-key': `list-${character}` },
      })
      t.equal(created.statusCode, 201, created.body)
      uploaded.push(created.json().key)
      t.equal(await driver.storedSha256(created.json().key), sha256(data), 'the upload is stored byte-exact')
    }
    const images = [...SEEDED, ...uploaded].sort()
    if (driver.name === 'r2') {
      const records = (await s3.keys()).filter((key) => key.startsWith(RECORDS_PREFIX))
      t.equal(records.length, 2, 'the bucket holds the two idempotency records')
    }

    t.test('one page by default, in key order, described as HEAD describes each object', async (t) => {
      const answer = await app.inject({ url: '/v1/images', headers: bearer })
      t.equal(answer.statusCode, 200)
      const page = conforms(t, 'GET', '/v1/images', answer) as Page
      t.same(
        page.items.map((item) => item.key),
        images,
        'every image, in order, and no idempotency record',
      )
      t.equal(page.next_cursor, null, 'the last page says so')
      for (const key of [SEEDED[0]!, uploaded[0]!]) {
        const item = page.items.find((candidate) => candidate.key === key)!
        const head = await app.inject({ method: 'HEAD', url: `/v1/images/${key}`, headers: bearer })
        t.equal(item.size, Number(head.headers['content-length']), `${key}: size`)
        t.equal(item.etag, head.headers.etag, `${key}: etag`)
        t.equal(new Date(item.last_modified).toUTCString(), head.headers['last-modified'], `${key}: last_modified`)
        t.match(item.url, new RegExp(`/${key}$`), `${key}: url`)
      }
      t.equal(page.items.find((item) => item.key === SEEDED[1])?.size, bodyOf(SEEDED[1]!).length, 'a seeded object has its size')
      const unauthorized = await app.inject({ url: '/v1/images' })
      t.equal(unauthorized.statusCode, 401, 'a key is needed, as on every /v1 route')
    })

    t.test('pages of `limit` follow each other through next_cursor, one ListObjectsV2 each on R2', async (t) => {
      for (const limit of [1, 7, images.length, 1000]) {
        const before = await driver.listRequests()
        const pages = await allPages(app, `limit=${limit}`)
        t.same(keysOf(pages), images, `limit=${limit}: every image once, in order`)
        t.ok(
          pages.every((page) => page.items.length <= limit),
          `limit=${limit}: no page over the limit`,
        )
        t.equal(pages.at(-1)!.next_cursor, null)
        // A listing starts at ".idempotency/": on R2 the records cost at most one page of their own.
        const expectedPages = Math.max(1, Math.ceil(images.length / limit))
        t.ok(pages.length >= expectedPages && pages.length <= expectedPages + 1, `limit=${limit}: ${pages.length} pages`)
        const after = await driver.listRequests()
        if (before !== undefined) t.equal(after! - before, pages.length, `limit=${limit}: one Class A ListObjectsV2 per page`)
      }
      const first = await list(app, '?limit=5&prefix=portraits/')
      t.equal(first.items.length, 5, 'a full first page')
      t.match(first.next_cursor, /^[A-Za-z0-9_-]+$/, 'the cursor is URL-safe as it is')
    })

    t.test('prefix: a context, a month, a partial segment, or nothing stored', async (t) => {
      const cases: [string, string[]][] = [
        ['portraits/', images.filter((key) => key.startsWith('portraits/'))],
        ['portraits/2025/02/', images.filter((key) => key.startsWith('portraits/2025/02/'))],
        ['general/2025/0', images.filter((key) => key.startsWith('general/'))],
        ['portraits', images.filter((key) => key.startsWith('portraits/'))],
        ['nothing/here/', []],
        [RECORDS_PREFIX, []],
      ]
      for (const [prefix, expected] of cases) {
        t.ok(prefix === 'nothing/here/' || prefix === RECORDS_PREFIX || expected.length > 0, `${prefix}: the case has objects`)
        t.same(keysOf(await allPages(app, `prefix=${prefix}&limit=4`)), expected, `prefix=${prefix}`)
      }
    })

    t.test('a bad limit, prefix or cursor is 400, before storage is asked', async (t) => {
      const before = await driver.listRequests()
      const cases: [string, string][] = [
        ['limit=0', 'invalid_request'],
        ['limit=1001', 'invalid_request'],
        ['limit=-1', 'invalid_request'],
        ['limit=1.5', 'invalid_request'],
        ['limit=ten', 'invalid_request'],
        ['limit=', 'invalid_request'],
        ['limit=5&limit=6', 'invalid_request'],
        ['prefix=a&prefix=b', 'invalid_request'],
        ['cursor=', 'invalid_request'],
        ['cursor=not%20a%20cursor', 'invalid_request'],
        ['cursor=_w', 'invalid_request'], // decodes to a byte that is no UTF-8
        ['prefix=portraits//', 'invalid_key'],
        ['prefix=/portraits', 'invalid_key'],
        ['prefix=../portraits', 'invalid_key'],
        ['prefix=portraits/%2e%2e/x', 'invalid_key'],
        ['prefix=por%20traits', 'invalid_key'],
        [`prefix=${'x'.repeat(1025)}`, 'invalid_key'],
      ]
      for (const [query, code] of cases) {
        const answer = await app.inject({ url: `/v1/images?${query}`, headers: bearer })
        t.equal(answer.statusCode, 400, `${query.slice(0, 40)}: 400`)
        t.equal(answer.json().code, code, `${query.slice(0, 40)}: ${code}`)
        conforms(t, 'GET', '/v1/images', answer)
      }
      t.equal(await driver.listRequests(), before, 'no request reached the backend')
      t.equal((await list(app, '?limit=1000')).items.length, images.length, 'limit=1000 is allowed')
    })

    t.test('objects deleted between pages are not listed, and paging goes on', async (t) => {
      const first = await list(app, '?prefix=portraits/&limit=3')
      await app.inject({ method: 'DELETE', url: `/v1/images/${first.items[0]!.key}`, headers: bearer })
      const rest = keysOf(await allPages(app, 'prefix=portraits/&limit=3', first.next_cursor))
      const portraits = images.filter((key) => key.startsWith('portraits/'))
      t.same(rest, portraits.slice(3), 'the next pages start after the first')
      t.notOk(keysOf(await allPages(app, 'prefix=portraits/')).includes(first.items[0]!.key), 'the deleted object is gone')
    })
  })
}

t.test('local disk: S3 key order where objects and directories share a name, and only the directories a page needs', async (t) => {
  const driver = await fsDriver(t)
  const keys = ['a-b', 'a.b', 'a/b', 'a/c/d', 'a0', 'b', 'A/z', '_x', '-', 'a/b0', 'a/b.c/d', 'a/b-c']
  for (const key of keys) await driver.seed(key, bodyOf(key))
  // A record of the service's own, and names no key can have, are never listed.
  await driver.seed(`${RECORDS_PREFIX}${'0'.repeat(64)}.json`, Buffer.from('{}'))
  const sorted = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
  for (const limit of [1, 2, 5, 100]) {
    t.same(keysOf(await allPages(driver.app, `limit=${limit}`)), sorted, `limit=${limit}: S3's byte order`)
  }
  t.same(keysOf(await allPages(driver.app, 'prefix=a/&limit=2')), ['a/b', 'a/b-c', 'a/b.c/d', 'a/b0', 'a/c/d'])
  t.same(keysOf(await allPages(driver.app, 'prefix=a/b&limit=2')), ['a/b', 'a/b-c', 'a/b.c/d', 'a/b0'])
  t.same(keysOf(await allPages(driver.app, 'prefix=a')), ['a-b', 'a.b', 'a/b', 'a/b-c', 'a/b.c/d', 'a/b0', 'a/c/d', 'a0'])
})

t.test('local disk: a page reads only the directories it needs, never the whole tree', async (t) => {
  const driver = await fsDriver(t)
  for (const context of ['a', 'b', 'c'])
    for (const month of ['01', '02']) for (const n of [1, 2, 3]) await driver.seed(`${context}/2025/${month}/${n}.png`, bodyOf(`${n}`))
  // A spy that calls through: which directories the driver reads, as it reads them.
  const read: string[] = []
  const readdir = fs.readdir
  const objectsDir = path.join(driver.dataDir, 'objects')
  fs.readdir = ((directory: string, options: never) => {
    read.push(path.relative(objectsDir, directory))
    return readdir(directory, options)
  }) as typeof fs.readdir
  t.teardown(() => {
    fs.readdir = readdir
  })
  const listed = async (query: string) => {
    read.length = 0
    const page = await list(driver.app, query)
    return { keys: page.items.map((item) => item.key), read: [...read] }
  }

  t.same(await listed('?limit=2'), { keys: ['a/2025/01/1.png', 'a/2025/01/2.png'], read: ['', 'a', 'a/2025', 'a/2025/01'] })
  t.same(
    await listed('?limit=3'),
    { keys: ['a/2025/01/1.png', 'a/2025/01/2.png', 'a/2025/01/3.png'], read: ['', 'a', 'a/2025', 'a/2025/01', 'a/2025/02'] },
    'a full page reads on only as far as the key that tells another page follows',
  )
  const page = await list(driver.app, '?prefix=a/&limit=4')
  t.same(
    await listed(`?prefix=a/&limit=2&cursor=${page.next_cursor}`),
    { keys: ['a/2025/02/2.png', 'a/2025/02/3.png'], read: ['', 'a', 'a/2025', 'a/2025/02'] },
    'the next page skips the directories before its cursor',
  )
  t.same(
    await listed('?prefix=b/2025/02/'),
    { keys: ['b/2025/02/1.png', 'b/2025/02/2.png', 'b/2025/02/3.png'], read: ['', 'b', 'b/2025', 'b/2025/02'] },
    'a prefix reads only the directories on its path',
  )
})
