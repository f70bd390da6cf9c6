import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import puppeteer, { type Browser, type ElementHandle, type Page } from 'puppeteer-core'
import t from 'tap'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { png, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'
import { r2Env } from './helpers/s3.js'
import { CHROMIUM, haveChromium } from './helpers/system-tools.js'

t.setTimeout(240_000)

/** Where each step's screenshot goes (ignored by git; docs/console-grid.png is a copy of the grid's). */
const SCREENSHOTS = fileURLToPath(new URL('../.screenshots/console/', import.meta.url))
const TOKENS = { admin: 'admin-'.padEnd(40, 'a'), viewer: 'viewer-'.padEnd(40, 'v') }
const WRONG_TOKEN = 'wrong-'.padEnd(40, 'w')
const CHARACTER = 'Thorgar Ø 永久'
async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

t.test('GET /console: the page and its files under a strict Content-Security-Policy that allows the bucket for images', async (t) => {
  const { app } = await buildTestApp(t, { ...r2Env('http://127.0.0.1:9'), R2_PUBLIC_URL: 'https://images.example.com/portraits' })
  const page = await app.inject('/console')
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  const policy = String(page.headers['content-security-policy'])
  for (const directive of [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' https://images.example.com",
    "connect-src 'self'",
    "frame-ancestors 'none'",
  ]) {
    t.ok(policy.split('; ').includes(directive), `the policy has ${directive}`)
  }
  t.notMatch(policy, /unsafe-inline|unsafe-eval/, 'no inline script or style, no eval')
  t.notMatch(page.body, /<script(?![^>]*\bsrc=)[^>]*>|\sstyle=|\son[a-z]+=/i, 'the page holds no inline script, style or handler')
  for (const [file, type] of [
    ['console.js', /^text\/javascript/],
    ['api.js', /^text\/javascript/],
    ['console.css', /^text\/css/],
  ] as const) {
    const served = await app.inject(`/console/${file}`)
    t.equal(served.statusCode, 200, file)
    t.match(served.headers['content-type'], type, `${file}: its type`)
    t.equal(served.headers['content-security-policy'], policy, `${file}: the same policy`)
  }
  const missing = await app.inject('/console/../src/config.ts')
  t.equal(missing.statusCode, 404, 'nothing else is served from there')
  t.equal((await app.inject('/console/secret.js')).statusCode, 404)
})

if (haveChromium(t)) {
  t.test('the console in headless Chromium, on the local-disk driver', async (t) => {
    await mkdir(SCREENSHOTS, { recursive: true })
    const port = await freePort()
    const origin = `http://127.0.0.1:${port}`
    const { app, dataDir } = await buildTestApp(t, {
      PORT: String(port),
      R2_PUBLIC_URL: `${origin}/files`,
      API_KEYS: `admin:${TOKENS.admin},viewer:${TOKENS.viewer}`,
      API_KEY_SCOPES: 'viewer:read',
    })
    await app.listen({ host: '127.0.0.1', port })

    // Images the bot stored, with the metadata the console shows; the last one is opened below.
    const seed = async (character: string, image: Buffer) => {
      const form = multipartBody([
        { name: 'context', value: 'portraits' },
        { name: 'character_name', value: character },
        { name: 'uploader_id', value: '1234567890' },
        { name: 'file', filename: 'portrait.png', data: image },
      ])
      const response = await app.inject({
        method: 'POST',
        url: '/v1/images',
        payload: form.payload,
        headers: { ...form.headers, authorization: `Bearer ${TOKENS.admin}` },
      })
      t.equal(response.statusCode, 201)
      const { key } = response.json() as { key: string }
      t.equal(sha256(await readFile(path.join(dataDir, 'objects', key))), sha256(image), 'stored byte-exact')
      return key
    }
    const olderFirst = [await seed('Ysolde', png(48, 48, [0x8a, 0x3b, 0x5c])), await seed('Brannoc', png(48, 48, [0x3c, 0x7a, 0x4e]))]
    const others = olderFirst.reverse() // newest first, as the grid shows them
    const seeded = png(60, 40, [0x2d, 0x5b, 0x8a])
    const seededKey = await seed(CHARACTER, seeded)

    const files = await mkdtemp(path.join(tmpdir(), 'console-files-'))
    t.teardown(() => rm(files, { recursive: true, force: true }))
    const portrait = png(50, 70, [0xc0, 0x6a, 0x2a])
    await writeFile(path.join(files, 'portrait.png'), portrait)
    await writeFile(path.join(files, 'notes.png'), 'just some text, not an image')

    const browser: Browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    })
    t.teardown(() => browser.close())

    const problems: string[] = []
    /** A fresh tab in a fresh profile (its own sessionStorage), watched for page errors and CSP violations. */
    async function openConsole(name: string): Promise<Page> {
      const context = await browser.createBrowserContext()
      const page = await context.newPage()
      await page.setViewport({ width: 1100, height: 800 })
      page.on('pageerror', (error) => problems.push(`${name}: page error: ${String(error)}`))
      page.on('console', (message) => {
        if (/Content.Security.Policy/i.test(message.text())) problems.push(`${name}: ${message.text()}`)
      })
      await page.evaluateOnNewDocument(() => {
        document.addEventListener('securitypolicyviolation', (event) => {
          console.error(`Content Security Policy violation: ${event.violatedDirective} ${event.blockedURI}`)
        })
      })
      const response = await page.goto(`${origin}/console`, { waitUntil: 'networkidle0' })
      t.equal(response?.status(), 200, `${name}: the console loads`)
      return page
    }
    const shoot = (page: Page, step: string) => page.screenshot({ path: path.join(SCREENSHOTS, `${step}.png`), fullPage: true })
    const signIn = async (page: Page, token: string) => {
      await page.type('#token', token)
      await page.click('#sign-in button[type=submit]')
    }
    const visible = (page: Page, selector: string) => page.$eval(selector, (element) => !(element as HTMLElement).closest('[hidden]'))
    const gridKeys = (page: Page) => page.$$eval('#grid li', (items) => items.map((item) => (item as HTMLElement).dataset.key))
    const waitForGrid = (page: Page, test: string, key: string) =>
      page.waitForFunction(
        (want: string, k: string) => {
          const has = [...document.querySelectorAll('#grid li')].some((item) => (item as HTMLElement).dataset.key === k)
          return want === 'present' ? has : !has
        },
        { timeout: 30_000 },
        test,
        key,
      )

    // ---- log in; see the gauges
    const page = await openConsole('admin')
    await signIn(page, TOKENS.admin)
    await page.waitForSelector('#console:not([hidden])')
    await page.waitForFunction(() => [...document.querySelectorAll('.gauge .figures')].every((figures) => figures.textContent !== ''))
    const gauges = await page.$$eval('.gauge', (all) =>
      all.map((gauge) => ({
        measure: (gauge as HTMLElement).dataset.measure,
        high: gauge.querySelector('meter')?.getAttribute('high'),
        figures: gauge.querySelector('.figures')?.textContent,
      })),
    )
    t.same(
      gauges.map((gauge) => gauge.measure),
      ['storage_bytes', 'class_a_operations', 'class_b_operations'],
    )
    t.ok(
      gauges.every((gauge) => gauge.high === '80'),
      'each gauge marks 80 %',
    )
    t.match(gauges[0]?.figures, /of 10\.0 GB/, 'storage against the free tier')
    t.equal(await page.evaluate(() => sessionStorage.getItem('image-upload-service.token')), TOKENS.admin, 'the token is in sessionStorage')
    t.equal(await page.evaluate(() => document.cookie), '', 'and in no cookie')
    t.notMatch(page.url(), TOKENS.admin, 'nor in the URL')
    t.ok(await visible(page, '#upload'), 'a key with upload is offered the upload control')
    await shoot(page, '1-signed-in')

    // ---- the context's month: the seeded image, with its details
    await page.$eval('#context', (input) => {
      ;(input as HTMLInputElement).value = 'portraits'
    })
    await page.click('#browse button[type=submit]')
    await waitForGrid(page, 'present', seededKey)

    // ---- upload a PNG through the file input; see it in the grid, newest first
    const input = (await page.$('#file')) as ElementHandle<HTMLInputElement>
    await input.uploadFile(path.join(files, 'portrait.png'))
    await page.waitForFunction(() => /^Stored as /.test(document.getElementById('upload-status')?.textContent ?? ''), { timeout: 30_000 })
    const uploadedKey = (await page.$eval('#upload-status', (status) => status.textContent))!.match(/^Stored as (\S+) /)![1]!
    t.match(uploadedKey, /^portraits\/\d{4}\/\d{2}\/[a-z]{20}_portrait\.png$/)
    await waitForGrid(page, 'present', uploadedKey)
    t.same(await gridKeys(page), [uploadedKey, seededKey, ...others], 'the grid shows the month newest first')
    const stored = path.join(dataDir, 'objects', uploadedKey)
    t.equal(sha256(await readFile(stored)), sha256(portrait), 'the stored object is the file the browser sent')
    t.ok((await storedFiles(dataDir)).includes(uploadedKey))
    await page.waitForFunction(
      () => [...document.querySelectorAll<HTMLImageElement>('#grid img')].every((image) => image.complete && image.naturalWidth > 0),
      { timeout: 30_000 },
    )
    t.ok(await page.$eval('#grid img', (image) => (image as HTMLImageElement).loading === 'lazy'), 'thumbnails load lazily')
    await shoot(page, '2-grid')

    // ---- a refused upload shows the problem's detail
    await input.uploadFile(path.join(files, 'notes.png'))
    await page.waitForFunction(() => /^Refused: /.test(document.getElementById('upload-status')?.textContent ?? ''), { timeout: 30_000 })
    t.match(
      await page.$eval('#upload-status', (status) => status.textContent),
      /^Refused: The content is not a recognised image.*\(415 unsupported_media_type\)$/,
    )
    await shoot(page, '3-refused')

    // ---- open the seeded image: its metadata
    await page.click(`#grid li[data-key="${seededKey}"] button`)
    await page.waitForFunction(() => document.getElementById('details-fields')?.textContent?.includes('Character name'))
    const details = await page.$eval('#details-fields', (fields) => fields.textContent)
    t.match(details, CHARACTER, 'character name')
    t.match(details, '1234567890', 'uploader')
    t.match(details, '60 × 40 px', 'dimensions')
    t.match(details, sha256(seeded), 'SHA-256')
    t.match(details, /Uploaded at\d{4}-\d{2}-\d{2}T/, 'uploaded at')
    await shoot(page, '4-details')
    await page.click('#close-details')

    // ---- open the uploaded one; delete it, confirming; see it gone
    await page.click(`#grid li[data-key="${uploadedKey}"] button`)
    await page.waitForFunction(() => document.getElementById('details-fields')?.textContent?.includes('SHA-256'))
    t.match(await page.$eval('#details-fields', (fields) => fields.textContent), sha256(portrait))
    await page.click('#delete')
    await page.waitForSelector('#confirm-delete[open]')
    t.equal(await page.$eval('#confirm-key', (key) => key.textContent), uploadedKey, 'the confirmation names the object')
    await shoot(page, '5-confirm-delete')
    await page.click('#confirm-yes')
    await waitForGrid(page, 'absent', uploadedKey)
    t.same(await gridKeys(page), [seededKey, ...others])
    t.notOk((await storedFiles(dataDir)).includes(uploadedKey), 'deleted from storage')
    await shoot(page, '6-deleted')

    // ---- still signed in after a reload (sessionStorage), gone after signing out
    await page.reload({ waitUntil: 'networkidle0' })
    await page.waitForSelector('#console:not([hidden])')
    await page.click('#sign-out')
    t.equal(await page.evaluate(() => sessionStorage.getItem('image-upload-service.token')), null, 'signing out forgets the token')

    // ---- a read-only token: neither upload nor delete is offered
    const viewer = await openConsole('viewer')
    await signIn(viewer, TOKENS.viewer)
    await viewer.waitForSelector('#console:not([hidden])')
    await viewer.$eval('#context', (field) => {
      ;(field as HTMLInputElement).value = 'portraits'
    })
    await viewer.click('#browse button[type=submit]')
    await waitForGrid(viewer, 'present', seededKey)
    t.notOk(await visible(viewer, '#upload'), 'no upload control for a read-only key')
    t.notOk(await visible(viewer, '#file'), 'no file input either')
    await viewer.click(`#grid li[data-key="${seededKey}"] button`)
    await viewer.waitForFunction(() => document.getElementById('details-fields')?.textContent?.includes('Character name'))
    t.notOk(await visible(viewer, '#delete'), 'no delete button for a read-only key')
    await shoot(viewer, '7-read-only')

    // ---- a wrong token: an error, not a blank page
    const stranger = await openConsole('wrong token')
    await signIn(stranger, WRONG_TOKEN)
    await stranger.waitForSelector('#error:not([hidden])')
    t.match(await stranger.$eval('#error', (error) => error.textContent), /not valid.*401 unauthorized/)
    t.notOk(await visible(stranger, '#console'), 'nothing else is shown')
    t.equal(await stranger.evaluate(() => sessionStorage.getItem('image-upload-service.token')), null, 'a wrong token is not kept')
    await shoot(stranger, '8-wrong-token')

    t.same(problems, [], 'no page error and no Content-Security-Policy violation')
  })
}
