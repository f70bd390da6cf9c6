export type FormPart =
  | { name: string; value: string }
  | { name: string; filename: string; contentType?: string; data: Buffer }

/** A multipart/form-data body built by hand, so tests control the exact order and shape of the parts. */
export function multipartBody(parts: FormPart[], boundary = `----test${Math.random().toString(16).slice(2)}`) {
  const chunks: Buffer[] = []
  for (const part of parts) {
    if ('data' in part) {
      chunks.push(
        Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"; filename="${part.filename}"\r\n` +
            `Content-Type: ${part.contentType ?? 'application/octet-stream'}\r\n\r\n`,
        ),
        part.data,
        Buffer.from('\r\n'),
      )
    } else {
      chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"\r\n\r\n${part.value}\r\n`))
    }
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`))
  return { payload: Buffer.concat(chunks), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } }
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
