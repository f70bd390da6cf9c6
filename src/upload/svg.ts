import { setImmediate as nextTurn } from 'node:timers/promises'
import { type SaxesAttributeNS, SaxesParser, type SaxesTagNS } from 'saxes'
import { ApiError } from '../errors.js'
import type { Size } from './frame-size.js'

/** An SVG is checked whole before anything is stored, so it is held in memory: at most this much. */
export const SVG_MAX_BYTES = 1024 * 1024
/**
 * What a document may count, so that no count makes checking it costly: resolving a namespace walks the
 * open elements (deep nesting made checking quadratic), and an element's attributes are held until its
 * tag ends. 256 levels is also where browsers' XML parser (libxml2) stops; drawings nest a few dozen.
 */
export const SVG_MAX_DEPTH = 256
export const SVG_MAX_ATTRIBUTES = 256
export const SVG_MAX_ELEMENTS = 100_000
/** Characters parsed between turns of the event loop: a few milliseconds of work on a busy machine. */
const SLICE_CHARACTERS = 8 * 1024

const SVG_NAMESPACE = 'http://www.w3.org/2000/svg'
const XHTML_NAMESPACE = 'http://www.w3.org/1999/xhtml'
/** Attributes that load or link a resource, compared by local name so `xlink:href` and `xml:base` are included. */
const URL_ATTRIBUTES = new Set(['href', 'src', 'base'])
/** A length in user units, unitless or px (matched on the trimmed value: no backtracking over long input). */
const LENGTH = /^((?:\d+(?:\.\d+)?|\.\d+)(?:e[+-]?\d+)?)([a-z%]*)$/i
/** CSS pixels per absolute unit: a size in cm is as large on screen as in px (a pixel bomb in disguise). */
const PIXELS_PER_UNIT: Record<string, number> = { '': 1, px: 1, in: 96, cm: 96 / 2.54, mm: 96 / 25.4, q: 96 / 101.6, pt: 4 / 3, pc: 16 }

function refuse(detail: string): never {
  throw new ApiError('unsupported_media_type', detail)
}

/** Optional UTF-8 BOM and whitespace, then markup: text that only checkSvg can tell apart from an SVG. */
export function looksLikeMarkup(head: Buffer): boolean {
  return /^\uFEFF?[\t\n\r ]*</.test(head.toString('utf8'))
}

/**
 * Parses the whole document with a conforming XML parser, which decodes character references before the
 * checks see a value, and refuses what could run script or load another resource when the SVG is opened
 * (served as image/svg+xml it is a document, not a picture). Returns the size the root declares.
 * The parser is fed in slices, yielding between them, so other requests are served while a large
 * document is checked.
 */
export async function checkSvg(document: Buffer): Promise<Size> {
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(document)
  } catch {
    refuse('The SVG is not UTF-8 text.')
  }
  const parser = new SaxesParser({ xmlns: true })
  let size: Size | undefined
  let styleDepth = 0
  let css = ''
  let depth = 0
  let elements = 0
  let attributes = 0
  // Counted as the parser meets them, before it does any per-element work that the counts would multiply.
  parser.on('opentagstart', () => {
    if (++depth > SVG_MAX_DEPTH) refuse(`The SVG nests elements deeper than ${SVG_MAX_DEPTH} levels.`)
    if (++elements > SVG_MAX_ELEMENTS) refuse(`The SVG has more than ${SVG_MAX_ELEMENTS} elements.`)
    attributes = 0
  })
  parser.on('attribute', () => {
    if (++attributes > SVG_MAX_ATTRIBUTES) refuse(`The SVG has an element with more than ${SVG_MAX_ATTRIBUTES} attributes.`)
  })
  // A browser honours the declared encoding; parsing as UTF-8 what it reads otherwise could hide markup.
  parser.on('xmldecl', ({ encoding }) => {
    if (encoding !== undefined && !/^utf-?8$/i.test(encoding)) refuse(`The SVG declares the encoding ${encoding}; only UTF-8 is accepted.`)
  })
  parser.on('doctype', () => refuse('The SVG contains a DOCTYPE declaration, where entities could read files or expand without bound.'))
  parser.on('processinginstruction', ({ target }) => refuse(`The SVG contains the processing instruction <?${target}?>.`))
  parser.on('opentag', (tag) => {
    checkElement(tag)
    size ??= rootSize(tag)
    if (tag.local.toLowerCase() === 'style') styleDepth++
  })
  const readCss = (content: string) => {
    if (styleDepth > 0) css += content
  }
  parser.on('text', readCss)
  parser.on('cdata', readCss)
  parser.on('closetag', (tag) => {
    depth--
    // The whole element at once: comments or CDATA sections could split "@import" across events.
    if (tag.local.toLowerCase() === 'style' && --styleDepth === 0) {
      checkCss(css, 'a <style> element')
      css = ''
    }
  })
  try {
    for (let at = 0; at < text.length; ) {
      let end = Math.min(at + SLICE_CHARACTERS, text.length)
      const last = text.charCodeAt(end - 1)
      if (last >= 0xd800 && last <= 0xdbff) end++ // a surrogate pair stays in one slice
      parser.write(text.slice(at, end))
      at = end
      await nextTurn()
    }
    parser.close()
  } catch (error) {
    if (error instanceof ApiError) throw error
    refuse(`The SVG is not well-formed XML: ${(error as Error).message}`)
  }
  return size! // the parser refuses a document without a root element
}

function rootSize(root: SaxesTagNS): Size {
  if (root.local !== 'svg' || (root.uri !== SVG_NAMESPACE && root.uri !== '')) {
    refuse(`The document's root is <${root.name}>${root.uri && ` in the namespace ${root.uri}`}, not an SVG <svg> element.`)
  }
  let width = pixels(root.attributes.width?.value)
  let height = pixels(root.attributes.height?.value)
  const box = (root.attributes.viewBox?.value ?? '')
    .trim()
    .split(/[\s,]+/)
    .map(Number)
  const [boxWidth = NaN, boxHeight = NaN] = box.length === 4 && box.every(Number.isFinite) ? box.slice(2) : []
  // A missing width or height follows from the other and the viewBox's aspect ratio, as a browser draws it.
  if (boxWidth > 0 && boxHeight > 0) {
    width ??= height === undefined ? boxWidth : (height * boxWidth) / boxHeight
    height ??= (width * boxHeight) / boxWidth
  }
  if (width === undefined || height === undefined)
    refuse('The SVG has no size: give its root width and height in px (or another absolute unit), or a viewBox.')
  return { width: Math.ceil(width), height: Math.ceil(height) }
}

/** A length in CSS pixels; relative ones (%, em…) depend on where the SVG is drawn: the viewBox decides. */
function pixels(value: string | undefined): number | undefined {
  const match = value === undefined ? undefined : LENGTH.exec(value.trim())
  const perUnit = match ? PIXELS_PER_UNIT[match[2]!.toLowerCase()] : undefined
  const number = perUnit === undefined ? NaN : Number(match![1]) * perUnit
  return number > 0 && Number.isFinite(number) ? number : undefined
}

function checkElement(tag: SaxesTagNS): void {
  const name = tag.local.toLowerCase()
  if (name === 'script') refuse('The SVG contains a <script> element.')
  if (name === 'foreignobject') refuse('The SVG contains a <foreignObject> element, which can embed HTML.')
  // HTML elements act even outside foreignObject: an <iframe srcdoc> loads, a <meta> refreshes.
  if (tag.uri === XHTML_NAMESPACE) refuse(`The SVG contains the HTML element <${tag.name}>.`)
  for (const attribute of Object.values(tag.attributes)) checkAttribute(tag.name, attribute)
}

function checkAttribute(element: string, attribute: SaxesAttributeNS): void {
  const name = attribute.local.toLowerCase()
  const where = `the ${attribute.name} attribute of <${element}>`
  if (name.startsWith('on')) refuse(`The SVG has an event-handler attribute: ${where}.`)
  // Only same-document references: a browser strips leading whitespace, so "\t#x" is one too.
  if (URL_ATTRIBUTES.has(name) && !/^[\t\n\r ]*#/.test(attribute.value)) {
    refuse(`The SVG has ${urlKind(attribute.value)} in ${where}; only same-document #fragment references are accepted.`)
  }
  // <set attributeName="href" to="javascript:…"/> would bring back at run time what is refused above.
  const animated = name === 'attributename' ? (attribute.value.trim().toLowerCase().split(':').pop() ?? '') : ''
  if (animated.startsWith('on') || URL_ATTRIBUTES.has(animated)) refuse(`The SVG animates an attribute that is refused: ${where}.`)
  // SVG reads CSS from unprefixed attributes: style, and presentation attributes such as fill or cursor.
  if (attribute.uri === '') checkCss(attribute.value, where)
}

/** Names what a refused reference is; what is refused is anything but a #fragment, however it is spelled. */
function urlKind(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: a browser skips control characters in a URL scheme, so they are removed before it is read
  const compact = value.replace(/[\u0000-\u0020]/g, '').toLowerCase()
  if (compact.startsWith('javascript:')) return 'a javascript: URL'
  if (compact.startsWith('data:')) return 'a data: URL'
  return 'an external URL'
}

/** Refuses CSS that loads another resource: @import, or url() / image-set() that does not point into the document. */
function checkCss(css: string, where: string): void {
  const lower = css.toLowerCase()
  // Escapes (u\72l, @\69mport) would hide what is looked for below; SVG artwork does not need them.
  if (lower.includes('\\')) refuse(`The SVG's CSS in ${where} contains a backslash escape.`)
  if (lower.includes('@import')) refuse(`The SVG's CSS in ${where} uses @import, which loads an external stylesheet.`)
  if (/image(-set)?\(/.test(lower)) refuse(`The SVG's CSS in ${where} uses image() or image-set(), which load external images.`)
  for (const [, target = ''] of lower.matchAll(/(?:url|src)\(\s*['"]?([^'")]*)/g)) {
    if (!target.trimStart().startsWith('#')) refuse(`The SVG's CSS in ${where} loads an external resource with url(${target.trim()}).`)
  }
}
