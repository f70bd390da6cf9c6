import { readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import type { FailedLine, MapLine, MigratedLine } from '../src/cli/migration-map.js'
import { Progress } from '../src/cli/progress.js'
import { parseCsv } from '../src/cli/records.js'
import { buildTestApp } from './helpers/app.js'
import { runCli, untilOrExit } from './helpers/cli.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { LOCAL_SOURCE_ENV, spyNetwork, startSource } from './helpers/import.js'
import { r2Env, startS3 } from './helpers/s3.js'

t.setTimeout(40_000)

const TOKEN = 'migration-token-'.padEnd(40, 'x')
const AUTHORIZATION = { authorization: `Bearer ${TOKEN}` }
const RECORDS = 50

/** A line of the map as the CLI writes it, each field readable without first telling which kind it is. */
type ReadLine = MapLine & Partial<MigratedLine & FailedLine>

/** Runs the CLI to its end; `whenRunning` may act on the process meanwhile (interrupt it). */
const migrate = (args: string[], whenRunning?: Parameters<typeof runCli>[3]) => runCli('migrate', TOKEN, args, whenRunning)

async function readMap(file: string): Promise<ReadLine[]> {
  const text = await readFile(file, 'utf8').catch(() => '')
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as ReadLine)
}

const keyOfUrl = (url: string) => new URL(url).pathname.slice(1)

/**
 * The service (on the local S3 server) and a source of RECORDS images on 127.0.0.1. `broken` ids
 * answer 404 at the source; `delayMs` slows every answer.
 */
async function setUp(t: Test) {
  const s3 = await startS3()
  t.teardown(() => s3.stop())
  const images = Array.from({ length: RECORDS }, (_, i) => pngOfSize(3000 + 17 * i, i + 1))
  const broken = new Set<string>()
  const fetched: string[] = []
  const source = { broken, fetched, delayMs: 0 }
  const server = await startSource(t, async (req, res) => {
    const id = /^\/img\/(rec-\d+)\.png$/.exec(req.url ?? '')?.[1]
    const image = id === undefined ? undefined : images[Number(id.slice(4))]
    if (source.delayMs) await sleep(source.delayMs)
    if (id === undefined || image === undefined || broken.has(id)) return res.writeHead(404).end()
    fetched.push(id)
    res.writeHead(200, { 'content-type': 'image/png' }).end(image)
  })
  const { app } = await buildTestApp(
    t,
    { ...r2Env(s3.endpoint), ...LOCAL_SOURCE_ENV, API_KEYS: `migrator:${TOKEN}`, RATE_LIMIT_PER_MINUTE: '100000' },
    {
      importNetwork: spyNetwork({ loopback: true }).network,
    },
  )
  const idempotencyKeys: string[] = []
  app.addHook('onRequest', async (request) => {
    if (request.url === '/v1/images/import') idempotencyKeys.push(String(request.headers['idempotency-key']))
  })
  const { host, port } = await listen(app)
  const dir = t.testdir()
  const records = images.map((image, i) => ({ id: `rec-${i}`, url: server.url(`/img/rec-${i}.png`), sha256: sha256(image) }))
  return { s3, app, source, records, idempotencyKeys, serviceUrl: `http://${host}:${port}`, dir }
}

/** Every stored object is one the map names, byte-exact, with migrated_from; returns the keys. */
async function checkStored(
  t: Test,
  app: FastifyInstance,
  s3: Awaited<ReturnType<typeof startS3>>,
  map: ReadLine[],
  records: { id: string; sha256: string }[],
) {
  const bySha = new Map(records.map((record) => [record.id, record.sha256]))
  for (const line of map.filter((line) => line.new_url)) {
    const key = keyOfUrl(line.new_url!)
    t.equal(await s3.sha256Of(key), bySha.get(line.id), `${line.id}: stored byte-exact`)
    const metadata = (await app.inject({ url: `/v1/images/${key}`, headers: AUTHORIZATION })).json().metadata as Record<string, string>
    t.equal(metadata.migrated_from, line.old_url, `${line.id}: migrated_from is the old URL`)
  }
}

t.test('CSV parsing: quotes, commas and line breaks in fields, CRLF, and the errors', async (t) => {
  const text = 'id,url,name\r\n1,"https://x.test/a,b.png","Thorgar, the ""Bold""\nØ 永久"\r\n2,u,\n"",u2,x\n'
  t.same(parseCsv(text), [
    { fields: ['id', 'url', 'name'], line: 1 },
    { fields: ['1', 'https://x.test/a,b.png', 'Thorgar, the "Bold"\nØ 永久'], line: 2 },
    { fields: ['2', 'u', ''], line: 4 },
    { fields: ['', 'u2', 'x'], line: 5 },
  ])
  t.same(parseCsv('a,b'), [{ fields: ['a', 'b'], line: 1 }], 'no line break at the end')
  t.throws(() => parseCsv('a,"b\n'), { message: /line 1: a quoted field is not closed/ })
  t.throws(() => parseCsv('a,"b"c\n'), { message: /only a comma or a line break may follow/ })
})

t.test('progress: a bar redrawn in place on a terminal, plain lines otherwise; no rate or ETA before they mean something', async (t) => {
  let now = 0
  const terminal = { isTTY: true, columns: 120, written: '', write: (text: string) => (terminal.written += text) }
  const bar = new Progress(20, terminal, () => now)
  now = 100
  bar.record('failed') // an instant 404
  t.match(
    terminal.written,
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the terminal's escape sequence is what is checked
    /^\r\x1b\[2K\[#{2}\.{28}\] 1\/20 \(5 %\), migrated 0, failed 1, \?\/s, ETA \?$/,
    'one instant answer: no rate, no ETA',
  )
  for (now = 200; now <= 500; now += 100) bar.record('succeeded')
  t.match(terminal.written, /\] 5\/20 \(25 %\), migrated 4, failed 1, \?\/s, ETA \?$/, '5 records in half a second: still none')
  now = 5000
  bar.record('succeeded')
  bar.finish()
  t.match(
    terminal.written,
    /\[#{9}\.{21}\] 6\/20 \(30 %\), migrated 5, failed 1, 1\.2\/s, ETA 0:12\n$/,
    'then rate and ETA; the last drawing ends the line',
  )
  const log = { written: '', write: (text: string) => (log.written += text) }
  const lines = new Progress(2, log, () => now)
  lines.record('succeeded')
  lines.record('succeeded')
  t.equal(log.written, 'progress: 1/2 (50 %), migrated 1, failed 0, ?/s, ETA ?\nprogress: 2/2 (100 %), migrated 2, failed 0, ?/s, ETA ?\n')
})

t.test('progress on a terminal fits its width, whatever the counts, and keeps the ETA', async (t) => {
  for (const columns of [24, 40, 60, 80, 100, 200]) {
    for (const total of [20, 123_456]) {
      let now = 0
      const terminal = { isTTY: true, columns, written: '', write: (text: string) => (terminal.written += text) }
      const progress = new Progress(total, terminal, () => now)
      for (let record = 1; record <= 7; record++) {
        now = record * 1000
        progress.record(record % 3 ? 'succeeded' : 'failed')
      }
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the terminal's escape sequence is what is split on
      const drawn = terminal.written.split(/\r\x1b\[2K/).at(-1) ?? ''
      t.ok(drawn.length <= columns - 1, `${columns} columns, ${total} records: ${drawn.length} characters, under the width (${drawn})`)
      t.match(drawn, /ETA \d+:\d{2}(:\d{2})?$/, `${columns} columns, ${total} records: the ETA is shown`)
      if (columns >= 80) t.match(drawn, /^\[[#.]+\] 7\//, `${columns} columns, ${total} records: with a bar and the counts`)
    }
  }
})

t.test(
  `${RECORDS} records, some failing at the source: the map, a non-zero exit, then a rerun that migrates only the failures`,
  async (t) => {
    const { s3, app, source, records, idempotencyKeys, serviceUrl, dir } = await setUp(t)
    const failing = ['rec-3', 'rec-17', 'rec-18', 'rec-29', 'rec-41', 'rec-49']
    for (const id of failing) source.broken.add(id)
    // A CSV as a spreadsheet writes it: quoted fields with commas, quotes and non-ASCII; context empty for some.
    const quote = (text: string) => `"${text.replaceAll('"', '""')}"`
    const rows = records.map(({ id, url }, i) =>
      [id, url, i % 2 ? 'portraits' : '', i === 0 ? 'Thorgar.png' : '', quote(`Thorgar, the "Bold" Ø 永久 ${i}`), String(1000 + i)].join(
        ',',
      ),
    )
    const input = path.join(dir, 'records.csv')
    await writeFile(input, `id,url,context,filename,character_name,uploader_id\r\n${rows.join('\r\n')}\r\n`)
    const mapFile = path.join(dir, 'map.jsonl')
    const args = ['--input', input, '--map', mapFile, '--url', serviceUrl, '--rate', '500/s']

    const first = await migrate(args)
    t.equal(first.code, 1, 'exits 1: some records failed')
    t.match(
      first.stdout,
      `Migrated ${RECORDS - failing.length}, failed ${failing.length}, skipped 0 (already migrated), of ${RECORDS} records`,
    )
    for (const id of failing) t.match(first.stdout, `  ${id}: 502 import_failed: The source answered 404.`, `the summary lists ${id}`)
    t.match(
      first.stderr,
      `progress: ${RECORDS}/${RECORDS} (100 %), migrated ${RECORDS - failing.length}, failed ${failing.length}`,
      'plain progress lines, not on a terminal',
    )
    const firstMap = await readMap(mapFile)
    t.same(firstMap.map((line) => line.id).sort(), records.map((record) => record.id).sort(), 'one map line per id')
    for (const line of firstMap) {
      const fails = failing.includes(line.id)
      t.equal(line.old_url, records.find((record) => record.id === line.id)?.url, `${line.id}: old_url`)
      if (fails)
        t.match(
          line,
          { error: '502 import_failed: The source answered 404.', status: 502, retry_idempotency_key: /^migrate-[0-9a-f]{32}-1$/ },
          `${line.id}: the error`,
        )
      else t.match(line.new_url, /^https:\/\/images\.example\.test\/(general|portraits)\/\d{4}\/\d{2}\/[a-z]{16,}_/, `${line.id}: new_url`)
    }
    await checkStored(t, app, s3, firstMap, records)
    const thorgar = firstMap.find((line) => line.id === 'rec-0')!
    t.match(
      thorgar.new_url,
      /\/general\/\d{4}\/\d{2}\/[a-z]+_Thorgar\.png$/,
      'an empty context is --context (general); the filename column is used',
    )
    const metadata = (await app.inject({ url: `/v1/images/${keyOfUrl(thorgar.new_url!)}`, headers: AUTHORIZATION })).json()
      .metadata as Record<string, string>
    t.match(
      metadata,
      { character_name: 'Thorgar, the "Bold" Ø 永久 0', uploader_id: '1000' },
      'the other columns are metadata, quoted fields intact',
    )
    t.equal((await s3.imageKeys()).length, RECORDS - failing.length, 'one object per migrated record')
    t.equal(new Set(idempotencyKeys).size, RECORDS, 'each record sent its own Idempotency-Key')

    source.broken.clear()
    source.fetched.length = 0
    idempotencyKeys.length = 0
    const rerun = await migrate(args)
    t.equal(rerun.code, 0, 'the rerun exits 0')
    t.match(rerun.stdout, `Migrated ${failing.length}, failed 0, skipped ${RECORDS - failing.length} (already migrated)`)
    t.same(source.fetched.sort(), [...failing].sort(), 'only the failed records are fetched again')
    t.ok(
      idempotencyKeys.every((key) => key.endsWith('-1')),
      'a record the service answered with an error is retried under a new key',
    )
    const finalMap = await readMap(mapFile)
    t.same(finalMap.map((line) => line.id).sort(), records.map((record) => record.id).sort(), 'still one line per id')
    t.ok(
      finalMap.every((line) => line.new_url && !line.error),
      'every record migrated',
    )
    for (const line of firstMap.filter((line) => line.new_url)) {
      t.equal(finalMap.find((final) => final.id === line.id)?.new_url, line.new_url, `${line.id}: kept from the first run`)
    }
    const keys = await s3.imageKeys()
    t.equal(keys.length, RECORDS, 'no duplicate objects')
    t.same(keys.sort(), finalMap.map((line) => keyOfUrl(line.new_url!)).sort(), 'exactly the objects the map names')
    await checkStored(
      t,
      app,
      s3,
      finalMap.filter((line) => failing.includes(line.id)),
      records,
    )
  },
)

t.test('a run killed midway and restarted ends with every id exactly once in the map', async (t) => {
  const { s3, app, source, records, serviceUrl, dir } = await setUp(t)
  source.delayMs = 60
  const input = path.join(dir, 'records.jsonl')
  await writeFile(
    input,
    records.map(({ id, url }) => JSON.stringify({ id, url, context: 'portraits', metadata: { uploader_id: id } })).join('\n'),
  )
  const mapFile = path.join(dir, 'map.jsonl')
  const args = ['--input', input, '--map', mapFile, '--url', serviceUrl, '--rate', '500/s']

  let linesAtKill = 0
  const killed = await migrate(args, async (child) => {
    await untilOrExit(
      child,
      '12 map lines',
      async () => {
        linesAtKill = (await readMap(mapFile)).length
        return linesAtKill >= 12
      },
      20_000,
    )
    child.kill('SIGKILL')
  })
  t.equal(killed.signal, 'SIGKILL', `killed after ${linesAtKill} map lines`)
  const partial = await readMap(mapFile)
  t.ok(partial.length >= 12 && partial.length < RECORDS, `the map holds ${partial.length} lines`)

  const resumed = await migrate(args)
  t.equal(resumed.code, 0, 'the restarted run exits 0')
  t.match(resumed.stdout, `Migrated ${RECORDS - partial.length}, failed 0, skipped ${partial.length} (already migrated)`)
  const map = await readMap(mapFile)
  t.equal(map.length, RECORDS, `${RECORDS} lines`)
  t.same(map.map((line) => line.id).sort(), records.map((record) => record.id).sort(), 'every id exactly once')
  t.ok(
    map.every((line) => line.new_url),
    'all migrated',
  )
  for (const line of partial)
    t.equal(map.find((final) => final.id === line.id)?.new_url, line.new_url, `${line.id}: the line written before the kill stands`)
  // Imports in flight at the kill were retried with the same Idempotency-Key: replayed, or stored only then.
  t.equal((await s3.imageKeys()).length, RECORDS, `${RECORDS} images stored for ${RECORDS} records, none twice`)
  await checkStored(t, app, s3, map, records)
  t.same((await readdir(dir)).sort(), ['map.jsonl', 'records.jsonl'], 'no temporary files left')
})

t.test('SIGINT stops the run after the imports in flight, with a compacted map and exit 130', async (t) => {
  const { s3, app, source, records, serviceUrl, dir } = await setUp(t)
  source.delayMs = 100
  const input = path.join(dir, 'records.jsonl')
  await writeFile(input, records.map(({ id, url }) => JSON.stringify({ id, url })).join('\n'))
  const mapFile = path.join(dir, 'map.jsonl')
  const stopped = await migrate(['--input', input, '--map', mapFile, '--url', serviceUrl, '--rate', '500/s'], async (child) => {
    await untilOrExit(child, '8 map lines', async () => (await readMap(mapFile)).length >= 8, 20_000)
    child.kill('SIGINT')
  })
  t.equal(stopped.code, 130, 'exit 130')
  t.match(stopped.stderr, 'Stopping: finishing the imports in flight')
  const map = await readMap(mapFile)
  t.ok(map.length >= 8 && map.length < RECORDS, `${map.length} records migrated before it stopped`)
  t.ok(
    map.every((line) => line.new_url),
    'the imports in flight finished and were written',
  )
  t.match(
    stopped.stdout,
    `Migrated ${map.length}, failed 0, skipped 0 (already migrated), not attempted ${RECORDS - map.length}, of ${RECORDS} records`,
  )
  t.equal(source.fetched.length, map.length, 'nothing was fetched that the map does not name')
  await checkStored(t, app, s3, map, records)
})

t.test('the map is compacted: superseded and cut-off lines go; migrated ids are skipped', async (t) => {
  const { records, serviceUrl, dir } = await setUp(t)
  const [a, b] = records as [(typeof records)[0], (typeof records)[0]]
  const input = path.join(dir, 'records.jsonl')
  await writeFile(input, [a, b].map(({ id, url }) => JSON.stringify({ id, url })).join('\n'))
  const mapFile = path.join(dir, 'map.jsonl')
  const lines = [
    { id: a.id, old_url: a.url, error: '502 import_failed: The source answered 404.', status: 502, retry_idempotency_key: 'x' },
    { id: a.id, old_url: a.url, new_url: 'https://images.example.test/a.png' },
    { id: b.id, old_url: b.url, new_url: 'https://images.example.test/b.png' },
    { id: 'not-in-this-input', old_url: 'https://cdn.example/x.png', new_url: 'https://images.example.test/x.png' },
  ]
  await writeFile(mapFile, `${lines.map((line) => JSON.stringify(line)).join('\n')}\n{"id":"rec-2","old_u`)
  const run = await migrate(['--input', input, '--map', mapFile, '--url', serviceUrl])
  t.equal(run.code, 0)
  t.match(run.stdout, 'Migrated 0, failed 0, skipped 2 (already migrated), of 2 records')
  t.match(run.stderr, 'The map had 1 unreadable line(s)')
  t.same(await readMap(mapFile), lines.slice(1), 'the latest line of each id, other ids kept')
})

t.test('bad input is refused before anything is imported, with exit code 2', async (t) => {
  const { serviceUrl, dir, idempotencyKeys } = await setUp(t)
  const cases: [string, string, string, RegExp][] = [
    ['a repeated id', 'dup.csv', 'id,url\na,https://x.test/1.png\na,https://x.test/2.png\n', /line 3: id "a" already appears on line 2/],
    ['a record without url', 'nourl.jsonl', '{"id":"a","url":"https://x.test/1.png"}\n{"id":"b"}\n', /line 2: url is missing/],
    ['a row with too many fields', 'wide.csv', 'id,url\na,https://x.test/1.png,extra\n', /line 2: 3 fields where the header has 2/],
  ]
  for (const [what, name, content, message] of cases) {
    const input = path.join(dir, name)
    await writeFile(input, content)
    const run = await migrate(['--input', input, '--map', path.join(dir, 'map.jsonl'), '--url', serviceUrl])
    t.equal(run.code, 2, `${what}: exit 2`)
    t.match(run.stderr, message, `${what}: the message says where`)
  }
  const usage = await migrate(['--input', 'records.csv', '--url', serviceUrl])
  t.equal(usage.code, 2, 'a missing --map: exit 2')
  t.match(usage.stderr, /--map is required[\s\S]*Usage: npm run migrate/)
  t.same(idempotencyKeys, [], 'nothing was sent to the service')
  t.same(await readMap(path.join(dir, 'map.jsonl')), [], 'no map written')
})
