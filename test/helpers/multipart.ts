export type FormPart =
  | { name: string; value: string }
  | { name: string; filename: string; contentType?: string; data: Buffer }

/**
 * The pieces of a multipart/form-data body with this boundary, for tests that assemble a form themselves
 * (in any order, cut short, or with a filename of bytes that are not UTF-8).
 */
export function formPieces(boundary: string) {
  return {
    contentType: `multipart/form-data; boundary=${boundary}`,
    file(data: Buffer, { name = 'file', filename = 'portrait.png', contentType = 'application/octet-stream' }: { name?: string; filename?: string | Buffer; contentType?: string } = {}): Buffer {
      return Buffer.concat([
        Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="`),
        Buffer.isBuffer(filename) ? filename : Buffer.from(filename, 'utf8'),
        Buffer.from(`"\r\nContent-Type: ${contentType}\r\n\r\n`),
        data,
        Buffer.from('\r\n'),
      ])
    },
    field: (name: string, value: string) => Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`, 'utf8'),
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
export function multipartStream(filename: string, file: AsyncIterable<Buffer>, boundary = `----stream${Math.random().toString(16).slice(2)}`) {
  async function* generate() {
    yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\nContent-Type: image/png\r\n\r\n`)
    yield* file
    yield Buffer.from(`\r\n--${boundary}--\r\n`)
  }
  return { stream: generate(), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } }
}
