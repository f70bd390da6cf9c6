import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t from 'tap'
import { decodeStoredMetadata, encodeStoredMetadata } from '../src/storage/r2-metadata.js'
import { buildTestApp } from './helpers/app.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env, startS3, TEST_BUCKET } from './helpers/s3.js'
import { havePythonBoto3, PYTHON } from './helpers/system-tools.js'

// Metadata as S3 tools show it: a plain value as it is, anything else percent-encoded UTF-8; and objects
// stored when every value was encoded still read right.

const s3 = await startS3()
t.teardown(() => s3.stop())

/** What boto3 (as an operator runs it) reports as the object's user metadata. */
async function boto3Metadata(key: string): Promise<Record<string, string>> {
  const script = `
import json, sys, boto3
from botocore.config import Config
s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='auto', aws_access_key_id='S3RVER',
                  aws_secret_access_key='S3RVER', config=Config(s3={'addressing_style': 'path'}))
print(json.dumps(s3.head_object(Bucket=sys.argv[2], Key=sys.argv[3])['Metadata']))`
  const { stdout } = await promisify(execFile)(PYTHON, ['-c', script, s3.endpoint, TEST_BUCKET, key], { env: { PATH: process.env.PATH } })
  return JSON.parse(stdout) as Record<string, string>
}

t.test('plain values are stored as they are and boto3 shows them so; the others are percent-encoded UTF-8', async (t) => {
  if (!havePythonBoto3(t)) return
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  const data = pngOfSize(20_000, 3)
  const values = {
    note: 'plain text: ok',
    uploader_id: '123456789012345678',
    uploaded_at: '2026-12-04T16:47:26.251Z',
    character_name: 'Thorgar Ø 永久',
    share: '100%',
    padded: ' two  spaces ',
    quote: 'say "hi"',
  }
  const form = multipartBody([
    ...Object.entries(values).map(([name, value]) => ({ name, value })),
    { name: 'file', filename: 'Thorgar Bold.png', data },
  ])
  const res = await app.inject({ method: 'POST', url: '/v1/images', ...form })
  t.equal(res.statusCode, 201, res.body.slice(0, 200))
  const { key } = res.json() as { key: string }
  t.equal(await s3.sha256Of(key), sha256(data), 'stored byte-exact')

  const shown = await boto3Metadata(key)
  t.match(
    shown,
    {
      note: 'plain text: ok',
      'uploader-id': '123456789012345678',
      'uploaded-at': '2026-12-04T16:47:26.251Z',
      quote: 'say "hi"',
      filename: 'Thorgar Bold.png',
      width: '16',
      height: '16',
      sha256: sha256(data),
    },
    'boto3 shows plain values as they are',
  )
  t.equal(shown['character-name'], encodeURIComponent(values.character_name), 'non-ASCII: percent-encoded UTF-8')
  t.equal(shown.share, '100%25', 'a value with % is encoded, so that no plain value holds one')
  t.equal(shown.padded, '%20two%20%20spaces%20', 'leading, trailing and repeated spaces, which HTTP would lose, are encoded')

  const read = (await app.inject({ url: `/v1/images/${key}` })).json() as { metadata: Record<string, string> }
  t.match(read.metadata, values, 'the service reads every value back as sent')
})

t.test('objects stored when every value was percent-encoded read as before', async (t) => {
  const { app } = await buildTestApp(t, r2Env(s3.endpoint))
  const data = pngOfSize(5000, 4)
  const key = 'portraits/2026/11/abcdefghijklmnopqrst_old.png'
  const old = {
    note: 'plain text: ok',
    character_name: 'Thorgar Ø 永久',
    share: '100%',
    uploaded_at: '2026-11-04T16:47:26.251Z',
    filename: 'Thorgar "Bold".png',
    uploader_id: '1234',
  }
  // As the service wrote them before: every value through encodeURIComponent.
  const Metadata = Object.fromEntries(Object.entries(old).map(([name, value]) => [name.replaceAll('_', '-'), encodeURIComponent(value)]))
  t.equal(Metadata['uploaded-at'], '2026-11-04T16%3A47%3A26.251Z')
  await s3.client.send(new PutObjectCommand({ Bucket: TEST_BUCKET, Key: key, Body: data, ContentType: 'image/png', Metadata }))
  t.equal(await s3.sha256Of(key), sha256(data))
  const read = (await app.inject({ url: `/v1/images/${key}` })).json() as { metadata: Record<string, string> }
  t.same(read.metadata, old, 'GET decodes every old value')
  const head = await app.inject({ method: 'HEAD', url: `/v1/images/${key}` })
  t.equal(head.headers['x-meta-character-name'], encodeURIComponent(old.character_name), 'HEAD as always')
  t.equal(head.headers['x-meta-share'], '100%25')
})

t.test('every value round-trips through the stored form; what another tool wrote with a bare % is shown as stored', async (t) => {
  const values = ['', 'a', 'plain text: ok', '100%', '%41', ' x', 'x ', 'a  b', 'tab\there', 'line\nbreak', 'Ø', '😀', '~!*()\'"<>\\']
  const metadata = Object.fromEntries(values.map((value, index) => [`v_${index}`, value]))
  const decoded = decodeStoredMetadata(encodeStoredMetadata(metadata))
  t.same(decoded, metadata, 'decode(encode(x)) is x')
  t.same(decodeStoredMetadata({ note: '50% off', other: '%E0%A4%A' }), { note: '50% off', other: '%E0%A4%A' })
})
