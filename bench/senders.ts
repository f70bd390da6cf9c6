/**
 * What sending a 50 MiB upload costs the sender, by client: the CPU a load generator spends per GiB it
 * sends, to a server that only reads and discards (in a child process). Run it pinned to one core, as the
 * bench pins its load generator:
 *
 *   taskset -c 0 npx tsx bench/senders.ts
 *
 * The bench's load generator shares its core with the S3 server: a sender that costs more CPU per byte
 * than the service itself sets the bench's ceiling, whatever the service does.
 */
import { fork } from 'node:child_process'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'

const MiB = 1024 * 1024
const SECONDS = Number(process.env.SENDERS_SECONDS ?? 4)
const CONCURRENCY = 4

if (process.argv[2] === 'sink') {
  const server = http.createServer((request, response) => {
    request.resume()
    request.on('end', () => response.end('ok'))
  })
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port))
} else {
  const sink = fork(fileURLToPath(import.meta.url), ['sink'])
  const port = await new Promise<number>((resolve) => sink.once('message', (message) => resolve(message as number)))
  const url = `http://127.0.0.1:${port}/`
  const body = Buffer.alloc(50 * MiB, 7)
  const form = () => {
    const data = new FormData()
    data.append('file', new Blob([new Uint8Array(body)], { type: 'image/png' }), 'image.png')
    return data
  }
  const encoded = new Response(form())
  const formBytes = Buffer.from(await encoded.arrayBuffer())
  const formType = encoded.headers.get('content-type')!
  const agent = new http.Agent({ keepAlive: true })
  const nodeHttp = (payload: Buffer, contentType: string) =>
    new Promise<void>((resolve, reject) => {
      const request = http.request(url, {
        method: 'POST',
        agent,
        headers: { 'content-type': contentType, 'content-length': payload.length },
      })
      request.on('response', (response) => response.resume().on('end', resolve))
      request.on('error', reject)
      request.end(payload)
    })
  const senders: Record<string, () => Promise<unknown>> = {
    'fetch, FormData with a Blob (a new user)': () => fetch(url, { method: 'POST', body: form() }).then((answer) => answer.text()),
    // As src/client.ts sends: following no redirect, fetch sends the body itself, not a tee'd copy of it.
    "fetch, the same FormData, redirect: 'error' and window: null (our client)": () =>
      fetch(url, { method: 'POST', body: form(), redirect: 'error', window: null }).then((answer) => answer.text()),
    'fetch, the raw body (a Buffer)': () =>
      fetch(url, { method: 'POST', body: body, headers: { 'content-type': 'image/png' } }).then((answer) => answer.text()),
    "node:http, the form's bytes (as curl -F)": () => nodeHttp(formBytes, formType),
    'node:http, the raw body (as curl --data-binary)': () => nodeHttp(body, 'image/png'),
  }
  console.log(`Node.js ${process.version}; ${CONCURRENCY} concurrent 50 MiB uploads for ${SECONDS} s each, to a discarding server`)
  console.log('| sender | MiB/s | sender CPU s per GiB |')
  console.log('|---|---:|---:|')
  for (const [name, send] of Object.entries(senders)) {
    const cpuBefore = process.cpuUsage()
    const started = performance.now()
    let sent = 0
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() - started < SECONDS * 1000) {
          await send()
          sent += body.length
        }
      }),
    )
    const seconds = (performance.now() - started) / 1000
    const cpu = process.cpuUsage(cpuBefore)
    const gib = sent / (1024 * MiB)
    console.log(`| ${name} | ${(sent / MiB / seconds).toFixed(0)} | ${((cpu.user + cpu.system) / 1e6 / gib).toFixed(2)} |`)
  }
  agent.destroy()
  sink.kill()
}
