import net from 'node:net'
import t, { type Test } from 'tap'
import { buildTestApp, gauge } from './helpers/app.js'
import { listen } from './helpers/http.js'
import { pngOfSize, sha256 } from './helpers/images.js'
import { r2Env, startS3 } from './helpers/s3.js'
import { until } from './helpers/wait.js'

// Uploads that find every slot taken wait for one (UPLOAD_QUEUE_WAIT_MS), in a bounded queue
// (UPLOAD_QUEUE_MAX) shared fairly between API keys. Uploads here go over real sockets to the app storing
// on s3rver; a held upload sends its headers and a first piece of its body, then waits for the test.

const ALICE = 'alice-'.padEnd(40, 'a')
const BOB = 'bob-'.padEnd(40, 'b')
const API_KEYS = `alice:${ALICE},bob:${BOB}`

const s3 = await startS3()
t.teardown(() => s3.stop())

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

interface Answer {
  status: number
  headers: string
  body: { code?: string; detail?: string; key?: string; sha256?: string }
  at: number
}

/**
 * A raw upload over its own connection, tagged with its X-Request-Id. Sends `sent` bytes of its body
 * (all by default); `finish()` sends the rest.
 */
async function upload(server: { host: string; port: number }, token: string, tag: string, body: Buffer, sent = body.length) {
  const socket = net.connect(server.port, server.host).on('error', () => {}) // the server may hang up on it
  await new Promise((resolve) => socket.once('connect', resolve))
  let text = ''
  const answer = new Promise<Answer>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8')
      const match = /^HTTP\/1\.1 (\d{3}) [^\r]*\r\n([\s\S]*?)\r\n\r\n(\{[\s\S]*\})$/.exec(text)
      if (match) resolve({ status: Number(match[1]), headers: match[2]!, body: JSON.parse(match[3]!), at: Date.now() })
    })
    socket.once('close', () => reject(new Error(`${tag}: the connection closed without a whole answer: ${JSON.stringify(text)}`)))
  })
  answer.catch(() => {}) // awaited by the tests that expect one
  socket.write(
    `POST /v1/images?filename=${tag}.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nX-Request-Id: ${tag}\r\n` +
      `Content-Type: image/png\r\nContent-Length: ${body.length}\r\n\r\n`,
  )
  socket.write(body.subarray(0, sent))
  t.teardown(() => socket.destroy())
  return { socket, answer, finish: () => socket.write(body.subarray(sent)) }
}

/** The app on s3rver, listening, with the order in which upload answers went out (by request id). */
async function startApp(t: Test, env: NodeJS.ProcessEnv) {
  const { app } = await buildTestApp(t, { ...r2Env(s3.endpoint), API_KEYS, ...env })
  const answered: string[] = []
  app.addHook('onResponse', async (request, reply) => {
    if (request.method === 'POST') answered.push(`${request.id} ${reply.statusCode}`)
  })
  return { app, server: await listen(app), answered }
}

/** The answer is a 201 whose image s3rver holds, byte for byte. */
/**
 * One slot, taken by alice's upload (held after its first 100 bytes), and bob's upload waiting for it;
 * `seed` tells the two images apart between tests.
 */
async function oneHeldOneWaiting(t: Test, seed: number, waitingTag: string) {
  const { app, server } = await startApp(t, { MAX_CONCURRENT_UPLOADS: '1' })
  const heldImage = pngOfSize(30_000, seed)
  const held = await upload(server, ALICE, 'held', heldImage, 100)
  await until('the held upload to take the slot', async () => (await gauge(app, 'uploadsInFlight')) === 1)
  const waiting = await upload(server, BOB, waitingTag, pngOfSize(30_000, seed + 1))
  await until('an upload to wait', async () => (await gauge(app, 'uploadsWaiting')) === 1)
  return { app, server, held, heldImage, waiting }
}

async function assertStored(t: Test, answer: Answer, image: Buffer, what: string) {
  t.equal(answer.status, 201, `${what}: 201 (${JSON.stringify(answer.body).slice(0, 200)})`)
  t.equal(answer.body.sha256, sha256(image), `${what}: the 201 has its SHA-256`)
  t.equal(await s3.sha256Of(answer.body.key!), sha256(image), `${what}: s3rver holds its bytes`)
}

t.test('an upload that finds no free slot waits for one, and is stored once it frees', async (t) => {
  const { app, server } = await startApp(t, { MAX_CONCURRENT_UPLOADS: '1' })
  const images = [pngOfSize(30_000, 1), pngOfSize(30_000, 2)]
  const held = await upload(server, ALICE, 'held', images[0]!, 100)
  await until('the held upload to take the slot', async () => (await gauge(app, 'uploadsInFlight')) === 1)
  const waiting = await upload(server, BOB, 'waiting', images[1]!)
  await until('the second upload to wait', async () => (await gauge(app, 'uploadsWaiting')) === 1)
  await sleep(300)
  t.equal(await gauge(app, 'uploadsWaiting'), 1, 'it is still waiting, unanswered, while the slot is held')

  held.finish()
  await assertStored(t, await held.answer, images[0]!, 'the held upload')
  await assertStored(t, await waiting.answer, images[1]!, 'the waiting upload')
  t.equal(await gauge(app, 'uploadsWaiting'), 0, 'r2_uploads_waiting is 0 again')
  t.equal(await gauge(app, 'uploadsInFlight'), 0, 'and so is r2_uploads_in_flight')
})

t.test('the wait is bounded: UPLOAD_QUEUE_WAIT_MS, then 503 server_busy; past UPLOAD_QUEUE_MAX, 503 at once', async (t) => {
  const { app, server } = await startApp(t, { MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_MAX: '1', UPLOAD_QUEUE_WAIT_MS: '800' })
  const held = await upload(server, ALICE, 'held', pngOfSize(30_000, 3), 100)
  await until('the held upload to take the slot', async () => (await gauge(app, 'uploadsInFlight')) === 1)
  const waitingSince = Date.now()
  const waiting = await upload(server, BOB, 'waiting', pngOfSize(30_000, 4))
  await until('an upload to wait', async () => (await gauge(app, 'uploadsWaiting')) === 1)

  const overSince = Date.now()
  const over = await (await upload(server, BOB, 'over', pngOfSize(30_000, 5))).answer
  t.equal(over.status, 503, 'beyond the queue bound: 503')
  t.equal(over.body.code, 'server_busy')
  t.match(over.headers, /^retry-after: 1$/im, 'Retry-After: 1')
  t.ok(over.at - overSince < 1000, `answered at once (${over.at - overSince} ms), not queued`)

  const timedOut = await waiting.answer
  t.equal(timedOut.status, 503, 'the waiting upload, once its wait is over: 503')
  t.equal(timedOut.body.code, 'server_busy')
  t.match(timedOut.body.detail, /none was free within 800 ms/)
  t.match(timedOut.headers, /^retry-after: 1$/im)
  const waited = timedOut.at - waitingSince
  t.ok(waited >= 750 && waited < 5000, `it waited about UPLOAD_QUEUE_WAIT_MS (${waited} ms)`)
  t.equal(await gauge(app, 'uploadsWaiting'), 0, 'and left the queue')
  held.socket.destroy()
})

t.test('a key flooding the queue does not stop another key: the slots go to the keys in turn', async (t) => {
  const { app, server, answered } = await startApp(t, { MAX_CONCURRENT_UPLOADS: '1', UPLOAD_QUEUE_MAX: '3' })
  // Alice holds the slot and fills the queue.
  const held = await upload(server, ALICE, 'alice-0', pngOfSize(30_000, 10), 100)
  await until('alice-0 to take the slot', async () => (await gauge(app, 'uploadsInFlight')) === 1)
  const alice = []
  for (const n of [1, 2, 3]) {
    alice.push(await upload(server, ALICE, `alice-${n}`, pngOfSize(30_000, 10 + n)))
    await until(`alice-${n} to wait`, async () => (await gauge(app, 'uploadsWaiting')) === n)
  }
  const aliceOver = await (await upload(server, ALICE, 'alice-4', pngOfSize(30_000, 14))).answer
  t.match(aliceOver, { status: 503, body: { code: 'server_busy' } }, "alice's fifth upload, past the bound: 503 at once")

  // Bob's one upload takes the place of Alice's newest waiting one.
  const bobImage = pngOfSize(30_000, 20)
  const bob = await upload(server, BOB, 'bob-1', bobImage)
  const pushedOut = await alice[2]!.answer
  t.match(pushedOut, { status: 503, body: { code: 'server_busy', detail: /gave its place/ } }, 'alice-3 gave bob its place: 503')
  t.equal(await gauge(app, 'uploadsWaiting'), 3, 'three wait: alice-1, alice-2, bob-1')

  held.finish()
  await assertStored(t, await held.answer, pngOfSize(30_000, 10), 'alice-0')
  await assertStored(t, await bob.answer, bobImage, "bob's upload")
  await assertStored(t, await alice[0]!.answer, pngOfSize(30_000, 11), 'alice-1')
  await assertStored(t, await alice[1]!.answer, pngOfSize(30_000, 12), 'alice-2')
  t.same(
    answered.filter((line) => line.endsWith(' 201')),
    ['alice-0 201', 'alice-1 201', 'bob-1 201', 'alice-2 201'],
    'after alice-1, the next slot went to bob, not to alice-2 who came first',
  )
})

t.test('a client that hangs up while it waits leaves the queue', async (t) => {
  const { app, server, held, heldImage, waiting: leaving } = await oneHeldOneWaiting(t, 30, 'leaving')
  leaving.socket.destroy()
  await until('the upload that left to leave the queue', async () => (await gauge(app, 'uploadsWaiting')) === 0)
  const closed = (await app.metrics.uploadErrors.get()).values.find((value) => value.labels.error_type === 'client_closed')
  t.equal(closed?.value, 1, 'counted once as client_closed')

  held.finish()
  await assertStored(t, await held.answer, heldImage, 'the held upload')
  const next = pngOfSize(30_000, 32)
  await assertStored(t, await (await upload(server, BOB, 'next', next)).answer, next, 'the next upload, in the freed slot')
  t.equal(await gauge(app, 'uploadsInFlight'), 0, 'no slot is left taken')
})

t.test('closing answers the waiting uploads at once (503 server_busy) and lets the one in flight finish', async (t) => {
  const { app, held, heldImage, waiting } = await oneHeldOneWaiting(t, 40, 'waiting')

  const closingSince = Date.now()
  const closed = app.close()
  const refused = await waiting.answer
  t.match(refused, { status: 503, body: { code: 'server_busy', detail: /shutting down/ } }, 'the waiting upload: 503 server_busy')
  t.ok(refused.at - closingSince < 2000, `answered ${refused.at - closingSince} ms after the close began`)
  t.match(refused.headers, /^retry-after: 1$/im)
  t.match(refused.headers, /^connection: close$/im, 'a refusal sent during the close closes its connection too')

  held.finish()
  const heldAnswer = await held.answer
  await assertStored(t, heldAnswer, heldImage, 'the upload in flight')
  // Answered during the close: its connection is not kept alive, so the close need not wait for its client.
  t.match(heldAnswer.headers, /^connection: close$/im, 'the answer closes its connection')
  const answeredAt = Date.now()
  await closed
  t.ok(Date.now() - answeredAt < 2000, `the close ended ${Date.now() - answeredAt} ms after that answer`)
})
