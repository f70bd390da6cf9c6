/**
 * s3rver in a process of its own, for startS3({ ownProcess: true }): `s3rver-main.ts <directory> <bucket>`
 * serves that bucket on a free loopback port and prints `{"msg":"s3rver ready","port":…}`. Run with
 * --openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES, which Node's
 * OpenSSL 3 has only there, so in a test's own process every truncated listing is a 500.
 */
import S3rver from 's3rver'
import { storeWritesBeforeAnswering } from './s3rver-store.js'

const [directory, bucket] = process.argv.slice(2) as [string, string]
storeWritesBeforeAnswering()
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] })
const { port } = await server.run()
process.stdout.write(`${JSON.stringify({ msg: 's3rver ready', port })}\n`)
