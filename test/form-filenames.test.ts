import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { buildTestApp } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { HeadObjectCommand, r2Env, startS3, TEST_BUCKET } from './helpers/s3.js'
import { CURL, haveCurl, havePythonAiohttp, PYTHON } from './helpers/system-tools.js'

// A form's filename as real clients send it: browsers, curl, undici and the Python client write `"` as
// %22 and CR, LF as %0D, %0A (the WHATWG multipart/form-data rules), and leave every other character,
// `%` included, as it is. The service decodes those three escapes and nothing else.

const run = promisify(execFile)
const CLIENT_DIR = fileURLToPath(new URL('../clients/python', import.meta.url))
const BOLD = 'Thorgar "Bold".png'

const s3 = await startS3()
t.teardown(() => s3.stop())
const { app } = await buildTestApp(t, r2Env(s3.endpoint))
const { port } = await listen(app)
const url = `http://127.0.0.1:${port}/v1/images`
const directory = await mkdtemp(path.join(tmpdir(), 'form-filenames-'))
t.teardown(() => rm(directory, { recursive: true, force: true }))

interface Answer {
  status?: number
  code?: string
  key?: string
  filename?: string
  sha256?: string
}

/** A 201's filename, key, stored bytes and stored `filename` metadata; returns the stored filename. */
async function checkStored(t: Test, what: string, answer: Answer, data: Buffer, filename: string, stem: RegExp) {
  t.equal(answer.filename, filename, `${what}: the 201 names ${JSON.stringify(filename)}`)
  t.match(answer.key, stem, `${what}: the key's name is the filename's stem (${answer.key})`)
  t.notMatch(answer.key, /_22/, `${what}: no _22 in the key`)
  t.equal(await s3.sha256Of(answer.key ?? ''), sha256(data), `${what}: stored byte-exact`)
  const described = (await app.inject({ url: `/v1/images/${answer.key}` })).json() as { metadata: Record<string, string> }
  t.equal(described.metadata.filename, filename, `${what}: the filename metadata is ${JSON.stringify(filename)}`)
}

t.test('curl -F file=@"Thorgar \\"Bold\\".png": the filename as the file is named', async (t) => {
  if (!haveCurl(t)) return
  const data = pngOfSize(20_000, 1)
  const file = path.join(directory, BOLD)
  await writeFile(file, data)
  const trace = path.join(directory, 'curl-trace.txt')
  const sent = await run(CURL, [
    '-sS',
    '--trace-ascii',
    trace,
    '-F',
    'context=portraits',
    '-F',
    `file=@"${file.replaceAll('"', '\\"')}"`,
    url,
  ])
  // --trace-ascii shows what was sent in numbered lines of at most 64 characters: joined, they are the request.
  const request = [...(await readFile(trace, 'utf8')).matchAll(/^[0-9a-f]{4}: (.*)$/gm)].map((line) => line[1]).join('')
  t.match(request, /filename="Thorgar %22Bold%22\.png"/, 'curl wrote the quotes as %22')
  const answer = JSON.parse(sent.stdout) as Answer
  await checkStored(t, 'curl', answer, data, BOLD, /^portraits\/\d{4}\/\d{2}\/[a-z]{20}_Thorgar__Bold_\.png$/)
  const inBucket = await s3.client.send(new HeadObjectCommand({ Bucket: TEST_BUCKET, Key: answer.key }))
  t.equal(inBucket.Metadata?.filename, BOLD, 'in the bucket, the filename metadata is the name itself, as S3 tools show it')
})

t.test("undici's FormData: quotes decoded, other % text kept as sent, CR and LF refused", async (t) => {
  const send = async (filename: string, data: Buffer) => {
    const form = new FormData()
    form.append('file', new Blob([new Uint8Array(data)], { type: 'image/png' }), filename)
    return (await (await fetch(url, { method: 'POST', body: form })).json()) as Answer
  }
  const bold = pngOfSize(20_000, 2)
  await checkStored(t, 'undici', await send(BOLD, bold), bold, BOLD, /_Thorgar__Bold_\.png$/)
  // Not encodings: `%` is never escaped by these clients, so %20, %25 and %zz are the name's own text.
  const literal = '100% a%20b %25 %zz.png'
  const percent = pngOfSize(20_000, 3)
  await checkStored(t, 'undici, literal %', await send(literal, percent), percent, literal, /_100__a_20b__25__zz\.png$/)
  for (const name of ['Thorgar\r\nBold.png', 'Thorgar\nBold.png', 'Thorgar\rBold.png']) {
    const keysBefore = await s3.keys()
    const answer = await send(name, pngOfSize(1000, 4))
    t.match(answer, { status: 400, code: 'invalid_request' }, `${JSON.stringify(name)} (sent as %0D/%0A): 400 invalid_request`)
    t.same(await s3.keys(), keysBefore, 'nothing stored')
  }
})

t.test('aiohttp: through the Python client, and with its own FormData defaults', async (t) => {
  if (!havePythonAiohttp(t)) return
  const data = pngOfSize(20_000, 5)
  const file = path.join(directory, 'aiohttp.png')
  await writeFile(file, data)
  const python = async (script: string, ...args: string[]) =>
    JSON.parse(
      (
        await run(PYTHON, ['-c', script, url, file, ...args], {
          env: { PATH: process.env.PATH, PYTHONPATH: CLIENT_DIR, PYTHONDONTWRITEBYTECODE: '1' },
        })
      ).stdout,
    ) as Answer

  const client = await python(
    `
import asyncio, dataclasses, json, sys
from image_service_client import ImageServiceClient
async def main():
    async with ImageServiceClient(sys.argv[1].removesuffix('/v1/images'), timeout=10) as client:
        image = await client.upload(open(sys.argv[2], 'rb').read(), sys.argv[3], context='portraits')
        print(json.dumps(dataclasses.asdict(image)))
asyncio.run(main())`,
    BOLD,
  )
  await checkStored(t, 'the Python client', client, data, BOLD, /^portraits\/.*_Thorgar__Bold_\.png$/)

  // aiohttp's FormData percent-encodes the whole filename by default (quote_fields=True): only its %22
  // is an escape the service decodes; %20 stays. The Python client sends quote_fields=False for that reason.
  const plain = await python(
    `
import asyncio, sys, aiohttp
async def main():
    form = aiohttp.FormData()
    form.add_field('file', open(sys.argv[2], 'rb').read(), filename=sys.argv[3], content_type='image/png')
    async with aiohttp.ClientSession() as session:
        async with session.post(sys.argv[1], data=form) as response:
            print(await response.text())
asyncio.run(main())`,
    BOLD,
  )
  await checkStored(t, "aiohttp's default FormData", plain, data, 'Thorgar%20"Bold".png', /_Thorgar_20_Bold_\.png$/)
})
