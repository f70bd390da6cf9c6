import { Readable } from 'node:stream'
import t from 'tap'
import { SVG_MAX_BYTES } from '../src/upload/svg.js'
import { buildTestApp, storedFiles } from './helpers/app.js'
import { png, sha256 } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

// The worst cases below take seconds on a quiet machine, many more on a shared one.
t.setTimeout(300_000)

const SVG_ALLOWED = { ALLOWED_TYPES: 'image/png,image/svg+xml' }
const NAMESPACES = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
/** An SVG document around `body`, 40 × 30 unless `size` says otherwise. */
const svg = (body: string, size = 'width="40" height="30"') => `<svg ${NAMESPACES} ${size}>${body}</svg>`

const multipart = (document: string | Buffer) => ({
  method: 'POST' as const,
  url: '/v1/images',
  ...multipartBody([{ name: 'file', filename: 'drawing.svg', contentType: 'image/svg+xml', data: Buffer.from(document) }]),
})
const raw = (document: string | Buffer) => ({
  method: 'POST' as const,
  url: '/v1/images?filename=drawing.svg',
  headers: { 'content-type': 'image/svg+xml' },
  payload: Buffer.from(document),
})

/** What real editors write: declaration, comments, gradients, internal references, inline CSS. */
const CLEAN = `\uFEFF<?xml version="1.0" encoding="UTF-8"?>
<!-- drawn by hand -->
${svg(`
  <defs>
    <linearGradient id="g"><stop offset="0" stop-color="#c33"/><stop offset="1" stop-color="#33c"/></linearGradient>
    <circle id="dot" r="4"/>
    <style><![CDATA[ .frame { fill: url(#g); stroke: #000 } ]]></style>
  </defs>
  <rect class="frame" width="40" height="30" style="fill: url( '#g' )"/>
  <use href="#dot" x="10" y="10"/><use xlink:href="  #dot" x="30" y="20"/>
  <a href="#dot"><text x="2" y="28" fill="url(#g)">Thorgar &amp; Ø</text></a>
`)}
`

t.test('a clean SVG is stored as image/svg+xml and served sandboxed, when allowed', async (t) => {
  const { app, dataDir } = await buildTestApp(t, SVG_ALLOWED)
  for (const request of [multipart(CLEAN), raw(CLEAN)]) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 201, response.body)
    const body = response.json()
    t.match(body, {
      content_type: 'image/svg+xml',
      key: /_drawing\.svg$/,
      width: 40,
      height: 30,
      sha256: sha256(CLEAN),
      size: Buffer.byteLength(CLEAN),
    })

    const served = await app.inject({ method: 'GET', url: `/files/${body.key}` })
    t.equal(served.statusCode, 200)
    t.equal(served.headers['content-type'], 'image/svg+xml')
    t.equal(served.rawPayload.toString(), CLEAN, 'the same bytes')
    t.equal(served.headers['x-content-type-options'], 'nosniff')
    const directives = String(served.headers['content-security-policy'])
      .split(';')
      .map((directive) => directive.trim())
    t.ok(directives.includes('sandbox'), `CSP sandbox (${served.headers['content-security-policy']})`)
  }
  t.equal((await storedFiles(dataDir)).filter((file) => file.endsWith('.svg')).length, 2)

  // Sandbox is added to the app-wide policy for SVG only: a raster image has no script to contain.
  const image = await app.inject({
    method: 'POST',
    url: '/v1/images',
    ...multipartBody([{ name: 'file', filename: 'p.png', data: png() }]),
  })
  const servedPng = await app.inject({ method: 'GET', url: `/files/${image.json().key}` })
  const servedSvg = await app.inject({ method: 'GET', url: `/files/${(await app.inject(raw(CLEAN))).json().key}` })
  const rasterPolicy = servedPng.headers['content-security-policy']
  t.notMatch(String(rasterPolicy), /sandbox/)
  t.equal(
    servedSvg.headers['content-security-policy'],
    rasterPolicy ? `${rasterPolicy}; sandbox` : 'sandbox',
    'the app-wide policy is kept',
  )
})

t.test('the size comes from width and height in px or absolute units, else from the viewBox', async (t) => {
  const { app } = await buildTestApp(t, SVG_ALLOWED)
  for (const [size, width, height] of [
    ['viewBox="0 0 120 80"', 120, 80],
    ['width=" 64px " height="48.2"', 64, 49],
    ['width="1e2" height="2.5E1PX"', 100, 25],
    ['width="300" viewBox="0,0,120,80"', 300, 200],
    ['height="100%" viewBox="-10 -10 24 24"', 24, 24],
    // Absolute units are as large on screen as their size in px: 10 cm is 378 px.
    ['width="10cm" height="5cm"', 378, 189],
    ['width="1in" height="72pt" viewBox="0 0 1 1"', 96, 96],
  ] as const) {
    const response = await app.inject(raw(svg('<circle r="4"/>', size)))
    t.equal(response.statusCode, 201, size)
    t.match(response.json(), { width, height }, size)
  }
  // The last one would take minutes with a backtracking length pattern.
  for (const size of [
    '',
    'width="100%" height="100%"',
    'width="10em" height="5ex"',
    'viewBox="0 0 0 10"',
    'width="40"',
    `width="${'1'.repeat(100_000)}x" height="1"`,
  ]) {
    const response = await app.inject(raw(svg('<circle r="4"/>', size)))
    t.equal(response.statusCode, 415, `no usable size: ${size.slice(0, 40)}`)
    t.match(response.json(), { code: 'unsupported_media_type', detail: /has no size/ })
  }
})

t.test('SVG is opt-in: the default types refuse even a clean one', async (t) => {
  const { app, dataDir } = await buildTestApp(t)
  for (const request of [multipart(CLEAN), raw(CLEAN)]) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 415)
    t.match(response.json(), { code: 'unsupported_media_type', detail: /allowed: image\/jpeg, image\/png, image\/gif, image\/webp\.$/ })
  }
  t.same(await storedFiles(dataDir), [])
})

t.test('an SVG that could run script, load a resource or expand entities is refused, and not stored', async (t) => {
  const { app, dataDir } = await buildTestApp(t, SVG_ALLOWED)
  const attacks: [string, string | Buffer, RegExp][] = [
    ['script element', svg('<script>alert(document.domain)</script>'), /contains a <script> element/],
    ['<SCRIPT> in upper case', svg('<SCRIPT>alert(1)</SCRIPT>'), /contains a <script> element/],
    ['an XHTML script', svg('<h:script xmlns:h="http://www.w3.org/1999/xhtml">alert(1)</h:script>'), /contains a <script> element/],
    ['onload attribute', svg('', 'width="1" height="1" onload="alert(1)"'), /event-handler attribute: the onload attribute of <svg>/],
    [
      'ONCLICK on a child',
      svg('<rect width="9" height="9" ONCLICK="alert(1)"/>'),
      /event-handler attribute: the ONCLICK attribute of <rect>/,
    ],
    ['javascript: href', svg('<a href="javascript:alert(1)"><text>x</text></a>'), /a javascript: URL in the href attribute of <a>/],
    ['mixed case, leading space', svg('<a href=" JaVaScRiPt:alert(1)"><text>x</text></a>'), /a javascript: URL in the href attribute/],
    [
      'entity-encoded',
      svg('<a xlink:href="&#106;avascript:alert(1)"><text>x</text></a>'),
      /a javascript: URL in the xlink:href attribute of <a>/,
    ],
    [
      'hex entities and a tab inside',
      svg('<a href="&#x6A;ava&#x09;script&#x3A;alert(1)"><text>x</text></a>'),
      /a javascript: URL in the href/,
    ],
    [
      'xlink:href data: URL',
      svg('<image width="9" height="9" xlink:href="data:image/svg+xml;base64,PHN2Zy8+"/>'),
      /a data: URL in the xlink:href attribute of <image>/,
    ],
    [
      'external href',
      svg('<use href="https://evil.example/x.svg#a"/>'),
      /an external URL in the href attribute of <use>; only same-document #fragment/,
    ],
    [
      'protocol-relative href',
      svg('<image width="9" height="9" href="//evil.example/pixel.png"/>'),
      /an external URL in the href attribute of <image>/,
    ],
    ['relative href', svg('<use href="other.svg#a"/>'), /an external URL in the href attribute of <use>/],
    ['xml:base', svg('<g xml:base="https://evil.example/"><use href="#a"/></g>'), /an external URL in the xml:base attribute of <g>/],
    [
      'an animated href',
      svg('<a href="#x"><set attributeName="href" to="javascript:alert(1)"/><text>x</text></a>'),
      /animates an attribute that is refused: the attributeName attribute of <set>/,
    ],
    [
      'an animated event handler',
      svg('<rect width="9" height="9"><set attributeName="onclick" to="alert(1)"/></rect>'),
      /animates an attribute that is refused/,
    ],
    [
      'foreignObject with HTML',
      svg('<foreignObject width="40" height="30"><body xmlns="http://www.w3.org/1999/xhtml"><p>hi</p></body></foreignObject>'),
      /contains a <foreignObject> element/,
    ],
    [
      'an HTML iframe outside foreignObject',
      svg('<h:iframe xmlns:h="http://www.w3.org/1999/xhtml" srcdoc="&lt;p&gt;hi"/>'),
      /contains the HTML element <h:iframe>/,
    ],
    [
      'XXE',
      `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>${svg('<text>&xxe;</text>')}`,
      /contains a DOCTYPE declaration/,
    ],
    [
      'billion laughs',
      `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY lol "lol">${Array.from({ length: 9 }, (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i || ''};`.repeat(10)}">`).join('')}]>${svg('<text>&lol9;</text>')}`,
      /contains a DOCTYPE declaration/,
    ],
    [
      'an external stylesheet PI',
      `<?xml-stylesheet href="https://evil.example/x.css"?>${svg('')}`,
      /processing instruction <\?xml-stylesheet\?>/,
    ],
    ['@import in <style>', svg('<style>@import url(https://evil.example/x.css);</style>'), /CSS in a <style> element uses @import/],
    ['@IMPORT in capitals', svg('<style>@IMPORT "https://evil.example/x.css";</style>'), /uses @import/],
    ['@import split by CDATA', svg('<style>@im<![CDATA[port "https://evil.example/x.css";]]></style>'), /uses @import/],
    [
      'external url() in <style>',
      svg('<style>rect { fill: url(https://evil.example/p.svg#g) }</style>'),
      /CSS in a <style> element loads an external resource with url\(https:\/\/evil\.example\/p\.svg#g\)/,
    ],
    [
      'external url() in a style attribute',
      svg(`<rect width="9" height="9" style="background: URL( '//evil.example/t.png' )"/>`),
      /CSS in the style attribute of <rect> loads an external resource/,
    ],
    [
      'external url() in a presentation attribute',
      svg('<rect width="9" height="9" fill="url(https://evil.example/p.svg#g)"/>'),
      /CSS in the fill attribute of <rect> loads an external resource/,
    ],
    ['a CSS escape', svg('<style>rect { fill: u\\72l(https://evil.example/p.svg#g) }</style>'), /contains a backslash escape/],
    ['image-set()', svg('<style>rect { fill: image-set("https://evil.example/t.png" 1x) }</style>'), /uses image\(\) or image-set\(\)/],
    ['a non-SVG root', '<?xml version="1.0"?><note><to>Thorgar</to></note>', /root is <note>, not an SVG <svg> element/],
    [
      '<svg> in another namespace',
      '<svg xmlns="https://evil.example/ns" width="4" height="4"/>',
      /root is <svg> in the namespace https:\/\/evil\.example\/ns, not an SVG <svg>/,
    ],
    ['malformed XML', svg('<rect width="9" height="9">'), /not well-formed XML/],
    ['an undefined entity', svg('<text>&nbsp;</text>'), /not well-formed XML: .*undefined entity/],
    ['a second encoding', `<?xml version="1.0" encoding="ISO-2022-JP"?>${svg('')}`, /declares the encoding ISO-2022-JP; only UTF-8/],
    [
      'bytes that are not UTF-8',
      Buffer.concat([Buffer.from(svg('<text>')), Buffer.from([0xff, 0xfe]), Buffer.from('</text></svg>')]),
      /not UTF-8 text/,
    ],
  ]
  for (const [name, document, detail] of attacks) {
    for (const request of [multipart(document), raw(document)]) {
      const response = await app.inject(request)
      t.equal(response.statusCode, 415, name)
      t.match(response.json(), { code: 'unsupported_media_type', detail }, name)
    }
  }
  t.same(await storedFiles(dataDir), [], 'nothing stored')
})

t.test('an SVG is read whole, so it is capped at SVG_MAX_BYTES, and never above MAX_UPLOAD_BYTES', async (t) => {
  const { app, dataDir } = await buildTestApp(t, SVG_ALLOWED)
  const ofSize = (bytes: number) => {
    const document = svg('<!---->')
    return document.replace('<!---->', `<!--${'x'.repeat(bytes - document.length)}-->`)
  }
  const largest = ofSize(SVG_MAX_BYTES)
  t.equal(Buffer.byteLength(largest), SVG_MAX_BYTES)
  t.equal((await app.inject(raw(largest))).statusCode, 201, 'exactly at the cap')
  const before = await storedFiles(dataDir)

  // A script past the first megabyte must not slip through by being past what is read.
  const tooLarge = ofSize(SVG_MAX_BYTES + 1)
  for (const request of [multipart(tooLarge), raw(tooLarge)]) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 413)
    t.match(response.json(), { code: 'image_too_large', detail: /at most 1048576 bytes/ })
  }
  // A complete, clean document in exactly the first SVG_MAX_BYTES must not carry unchecked bytes after it.
  const smuggled = await app.inject({
    ...raw(''),
    payload: Readable.from([Buffer.from(largest), Buffer.from('<script>alert(1)</script>')]),
  })
  t.equal(smuggled.statusCode, 413, 'bytes past the cap are refused, not streamed on unchecked')
  t.same(await storedFiles(dataDir), before, 'nothing stored for the refused ones')

  const { app: small, dataDir: smallDir } = await buildTestApp(t, { ...SVG_ALLOWED, MAX_UPLOAD_BYTES: '2000' })
  t.equal((await small.inject(multipart(ofSize(1999)))).statusCode, 201)
  const response = await small.inject(multipart(ofSize(2001)))
  t.equal(response.statusCode, 413)
  t.match(response.json(), { code: 'image_too_large', detail: /limit of 2000 bytes/ })
  t.equal((await storedFiles(smallDir)).length, 1)
})

t.test('the pixel limit applies to SVG', async (t) => {
  const { app, dataDir } = await buildTestApp(t, SVG_ALLOWED)
  for (const size of ['width="100000" height="100000"', 'viewBox="0 0 100000 100000"']) {
    const response = await app.inject(raw(svg('<circle r="4"/>', size)))
    t.equal(response.statusCode, 422, size)
    t.match(response.json(), { code: 'image_too_many_pixels', detail: /100000 × 100000/ })
  }
  t.same(await storedFiles(dataDir), [])
})

/** `unit` repeated between `head` and `tail`, to as close to `bytes` as whole units allow (ASCII only). */
const filled = (head: string, unit: (index: number) => string, tail: string, bytes = SVG_MAX_BYTES) => {
  const parts = [head]
  let length = head.length + tail.length
  for (let index = 0; ; index++) {
    const next = unit(index)
    if (length + next.length > bytes) break
    parts.push(next)
    length += next.length
  }
  return parts.join('') + tail
}
const ROOT = `<svg ${NAMESPACES} width="40" height="30"`

/**
 * Measures how long the event loop is held while `work` runs: a 1 ms timer notes when it gets to run.
 * On a shared machine the process may also wait for a core, which delays the timer without any code
 * holding the loop; so each gap counts at most the CPU time the process used in it.
 */
async function eventLoopHeld<T>(work: () => Promise<T>): Promise<{ result: T; heldMs: number; delayMs: number }> {
  let heldMs = 0
  let delayMs = 0
  let last = { at: performance.now(), cpu: process.cpuUsage() }
  const probe = setInterval(() => {
    const now = { at: performance.now(), cpu: process.cpuUsage() }
    const gap = now.at - last.at
    const cpu = process.cpuUsage(last.cpu)
    heldMs = Math.max(heldMs, Math.min(gap, (cpu.user + cpu.system) / 1000))
    delayMs = Math.max(delayMs, gap)
    last = now
  }, 1)
  try {
    const result = await work()
    const cpu = process.cpuUsage(last.cpu)
    const gap = performance.now() - last.at
    return { result, heldMs: Math.max(heldMs, Math.min(gap, (cpu.user + cpu.system) / 1000)), delayMs: Math.max(delayMs, gap) }
  } finally {
    clearInterval(probe)
  }
}

t.test('no SVG within SVG_MAX_BYTES holds the event loop: worst cases are checked in slices, in linear time', async (t) => {
  const { app, dataDir } = await buildTestApp(t, SVG_ALLOWED)
  const refused = (detail: RegExp) => ({ status: 415, detail })
  // Each document is built when its turn comes: holding them all would only make garbage collection slower.
  const worstCases: [string, () => string, { status: number; detail?: RegExp }][] = [
    [
      'many elements at the depth limit',
      () => filled(`${ROOT}>${'<g>'.repeat(254)}`, () => '<g/>', `${'</g>'.repeat(254)}</svg>`),
      refused(/more than 100000 elements/),
    ],
    ['many elements', () => filled(`${ROOT}>`, () => '<g/>', '</svg>'), refused(/more than 100000 elements/)],
    ['many attributes', () => filled(ROOT, (i) => ` a${i}=""`, '/>'), refused(/more than 256 attributes/)],
    ['many prefixed attributes', () => filled(`${ROOT}><g`, (i) => ` xlink:a${i}=""`, '/></svg>'), refused(/more than 256 attributes/)],
    ['many namespace declarations', () => filled(ROOT, (i) => ` xmlns:n${i}="urn:${i}"`, '/>'), refused(/more than 256 attributes/)],
    ['huge text', () => filled(`${ROOT}><text>`, () => 'x', '</text></svg>'), { status: 201 }],
    ['character references in text', () => filled(`${ROOT}><text>`, () => '&#65;', '</text></svg>'), { status: 201 }],
    ['character references in an attribute', () => filled(`${ROOT}><rect fill="`, () => '&#x61;', '"/></svg>'), { status: 201 }],
    ['a huge style sheet', () => filled(`${ROOT}><style>`, () => 'a{fill:url(#g)}', '</style></svg>'), { status: 201 }],
    ['many style elements', () => filled(`${ROOT}>`, () => '<style>a{}</style>', '</svg>'), { status: 201 }],
    ['comments', () => filled(`${ROOT}>`, () => '<!---->', '</svg>'), { status: 201 }],
    ['a huge element name', () => filled(`${ROOT}><g`, () => 'g', '/></svg>'), { status: 201 }],
    [
      'deep nesting, closed',
      () => filled(`${ROOT}>`, (i) => (i < 65_000 ? '<g>' : '</g>'), '</svg>'),
      refused(/nests elements deeper than 256/),
    ],
    ['deep nesting', () => filled(`${ROOT}>`, () => '<g>', ''), refused(/nests elements deeper than 256/)],
    [
      'deep nesting of prefixed elements with prefixed attributes',
      () => filled(`${ROOT} xmlns:s="${'http://www.w3.org/2000/svg'}">`, () => '<s:g xlink:title="">', ''),
      refused(/nests elements deeper than 256/),
    ],
    [
      'a namespace declared at every level',
      () => filled(`${ROOT}>`, (i) => `<g xmlns:n${i}="urn:${i}">`, ''),
      refused(/nests elements deeper than 256/),
    ],
  ]
  for (const [name, build, expected] of worstCases) {
    const document = build()
    t.ok(Buffer.byteLength(document) <= SVG_MAX_BYTES, `${name}: within SVG_MAX_BYTES`)
    const started = performance.now()
    const { result: response, heldMs, delayMs } = await eventLoopHeld(() => app.inject(raw(document)))
    const elapsed = performance.now() - started
    t.equal(response.statusCode, expected.status, `${name}: ${response.body.slice(0, 200)}`)
    if (expected.detail) t.match(response.json(), { code: 'unsupported_media_type', detail: expected.detail }, name)
    const figures = `held at most ${heldMs.toFixed(0)} ms of CPU (longest timer delay ${delayMs.toFixed(0)} ms; answered in ${elapsed.toFixed(0)} ms)`
    t.ok(heldMs < 100, `${name}: the event loop was ${figures}`)
  }
  t.equal(
    (await storedFiles(dataDir)).length,
    worstCases.filter(([, , expected]) => expected.status === 201).length,
    'only the accepted ones stored',
  )
})
