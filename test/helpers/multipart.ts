export type FormPart = { name: string; value: string } | { name: string; filename: string; contentType?: string; data: Buffer }

/**
 * The pieces of a multipart/form-data body with this boundary, for tests that assemble a form themselves
 * (in any order, cut short, or with a filename of bytes that are not UTF-8).
 */
export function formPieces(boundary: string) {
  return {
    contentType: `multipart/form-data; boundary=${boundary}`,
    file(
      data: Buffer,
      {
        name = 'file',
        filename = 'portrait.png',
        contentType = 'application/octet-stream',
      }: { name?: string; filename?: string | Buffer; contentType?: string } = {},
    ): Buffer {
      return Buffer.concat([
        Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="`),
        Buffer.isBuffer(filename) ? filename : Buffer.from(filename, 'utf8'),
        Buffer.from(`"\r\nContent-Type: ${contentType}\r\n\r\n`),
        data,
        Buffer.from('\r\n'),
      ])
    },
    field: (name: string, value: string) =>
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`, 'utf8'),
    closing: () => Buffer.from(`--${boundary}--\r\n`),
  }
}

/** A multipart/form-data body built by hand, so tests control the exact order and shape of the parts. */
export function multipartBody(parts: FormPart[], boundary = `----test${Math.random().toString(16).slice(2)}`) {
  const form = formPieces(boundary)
  const chunks = parts.map((part) => ('data' in part ? form.file(part.data, part) : form.field(part.name, part.value)))
  return { payload: Buffer.concat([...chunks, form.closing()]), headers: { 'content-type': form.contentType } }
}

/** A multipart/form-data body whose file part is streamed from `file`, never held whole in memory. */
export function multipartStream(
  filename: string,
  file: AsyncIterable<Buffer>,
  boundary = `----stream${Math.random().toString(16).slice(2)}`,
) {
  async function* generate() {
    yield Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\nContent-Type: image/png\r\n\r\n`,
    )
    yield* file
    yield Buffer.from(`\r\n--${boundary}--\r\n`)
  }
  return { stream: generate(), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } }
}

const randomHex = (length: number) => Array.from({ length }, () => Math.floor(Math.random() * 16).toString(16)).join('')
const randomDigits = (length: number) => Array.from({ length }, () => Math.floor(Math.random() * 10)).join('')
const randomAlphanumeric = (length: number) => {
  const letters = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
  return Array.from({ length }, () => letters[Math.floor(Math.random() * letters.length)]).join('')
}

interface ClientFraming {
  boundary(): string
  fieldHeaders(name: string): string[]
  fileHeaders(name: string, filename: string, type: string): string[]
}

const disposition = (name: string, filename?: string) =>
  `Content-Disposition: form-data; name="${name}"${filename === undefined ? '' : `; filename="${filename}"`}`

/**
 * How each mainstream client frames a form, byte for byte (captured from curl 7.88, aiohttp 3.8, Python
 * requests 2.28 / urllib3 1.26 and Node's undici; Chromium's and Go's from their sources): each part is
 * "--boundary" CRLF, headers, CRLF, the value, CRLF; the form ends "--boundary--" CRLF. They differ in the
 * boundary and in the part headers and their order.
 */
export const CLIENT_FRAMINGS: Record<string, ClientFraming> = {
  curl: {
    boundary: () => `${'-'.repeat(24)}${randomHex(16)}`,
    fieldHeaders: (name) => [disposition(name)],
    fileHeaders: (name, filename, type) => [disposition(name, filename), `Content-Type: ${type}`],
  },
  aiohttp: {
    boundary: () => randomHex(32),
    fieldHeaders: (name) => ['Content-Type: text/plain; charset=utf-8', disposition(name)],
    fileHeaders: (name, filename, type) => [`Content-Type: ${type}`, disposition(name, filename)],
  },
  'undici FormData': {
    boundary: () => `----formdata-undici-0${randomDigits(11)}`,
    fieldHeaders: (name) => [disposition(name)],
    fileHeaders: (name, filename, type) => [disposition(name, filename), `Content-Type: ${type}`],
  },
  'Chromium FormData': {
    boundary: () => `----WebKitFormBoundary${randomAlphanumeric(16)}`,
    fieldHeaders: (name) => [disposition(name)],
    fileHeaders: (name, filename, type) => [disposition(name, filename), `Content-Type: ${type}`],
  },
  'Python requests': {
    boundary: () => randomHex(32),
    fieldHeaders: (name) => [disposition(name)],
    fileHeaders: (name, filename, type) => [disposition(name, filename), `Content-Type: ${type}`],
  },
  // CreateFormFile: headers sorted by name, and application/octet-stream whatever the file.
  'Go mime/multipart': {
    boundary: () => randomHex(60),
    fieldHeaders: (name) => [disposition(name)],
    fileHeaders: (name, filename) => [disposition(name, filename), 'Content-Type: application/octet-stream'],
  },
}

/** A form framed as `client` frames it: text fields, then the file. */
export function clientForm(client: string, fields: [string, string][], file: { filename: string; type: string; data: Buffer }) {
  const framing = CLIENT_FRAMINGS[client]!
  const boundary = framing.boundary()
  const part = (headers: string[], value: Buffer) => [
    Buffer.from(`--${boundary}\r\n${headers.join('\r\n')}\r\n\r\n`),
    value,
    Buffer.from('\r\n'),
  ]
  const payload = Buffer.concat([
    ...fields.flatMap(([name, value]) => part(framing.fieldHeaders(name), Buffer.from(value))),
    ...part(framing.fileHeaders('file', file.filename, file.type), file.data),
    Buffer.from(`--${boundary}--\r\n`),
  ])
  return { payload, boundary, headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } }
}
