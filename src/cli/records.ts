import { readFile } from 'node:fs/promises'

/** One image to migrate, as the input file gives it. */
export interface MigrationRecord {
  id: string
  url: string
  context?: string | undefined
  filename?: string | undefined
  metadata?: Record<string, string> | undefined
  /** Where it is in the input (1-based), for messages. */
  line: number
}

/** The input cannot be migrated as it is; the message says where and why. */
export class InputError extends Error {
  override name = 'InputError'
}

export type InputFormat = 'csv' | 'jsonl'

/** The format a file name implies: .csv, or .jsonl / .ndjson / .json (one JSON object per line). */
export function formatOfPath(path: string): InputFormat | undefined {
  if (/\.csv$/i.test(path)) return 'csv'
  if (/\.(jsonl|ndjson|json)$/i.test(path)) return 'jsonl'
  return undefined
}

export async function readRecords(path: string, format: InputFormat): Promise<MigrationRecord[]> {
  const text = (await readFile(path, 'utf8')).replace(/^\uFEFF/, '')
  const records = format === 'csv' ? recordsFromCsv(text) : recordsFromJsonLines(text)
  const seen = new Map<string, number>()
  for (const record of records) {
    const first = seen.get(record.id)
    if (first !== undefined)
      throw new InputError(`line ${record.line}: id "${record.id}" already appears on line ${first}; ids must be unique`)
    seen.set(record.id, record.line)
  }
  return records
}

/**
 * RFC 4180 CSV: fields separated by commas, optionally in double quotes (which may hold commas, line
 * breaks and `""` for a quote); lines end in CRLF or LF. Returns each row with the line it starts on.
 */
export function parseCsv(text: string): { fields: string[]; line: number }[] {
  const rows: { fields: string[]; line: number }[] = []
  let fields: string[] = []
  let field = ''
  let line = 1
  let rowLine = 1
  let i = 0
  const endField = () => {
    fields.push(field)
    field = ''
  }
  const endRow = () => {
    endField()
    rows.push({ fields, line: rowLine })
    fields = []
  }
  while (i < text.length) {
    const char = text[i]!
    if (char === '"' && field === '') {
      // A quoted field: up to the closing quote, which must end the field.
      const start = line
      i++
      for (;;) {
        if (i >= text.length) throw new InputError(`line ${start}: a quoted field is not closed`)
        const quotedChar = text[i]!
        if (quotedChar === '"') {
          if (text[i + 1] === '"') {
            field += '"'
            i += 2
            continue
          }
          i++
          break
        }
        if (quotedChar === '\n') line++
        field += quotedChar
        i++
      }
      const next = text[i]
      if (next !== undefined && next !== ',' && next !== '\n' && next !== '\r') {
        throw new InputError(`line ${line}: only a comma or a line break may follow a quoted field`)
      }
      if (next === undefined) {
        endRow()
        return rows
      }
      continue
    }
    if (char === ',') {
      endField()
      i++
    } else if (char === '\n' || char === '\r') {
      endRow()
      i += char === '\r' && text[i + 1] === '\n' ? 2 : 1
      line++
      rowLine = line
    } else {
      field += char
      i++
    }
  }
  if (field !== '' || fields.length > 0) endRow()
  return rows
}

const RECORD_COLUMNS = ['id', 'url', 'context', 'filename']

/** CSV with a header row: `id` and `url` required, `context` and `filename` optional, any other column a metadata entry. */
function recordsFromCsv(text: string): MigrationRecord[] {
  const rows = parseCsv(text).filter((row) => !(row.fields.length === 1 && row.fields[0] === ''))
  const header = rows.shift()
  if (!header) throw new InputError('the CSV file is empty: it needs a header row with at least id and url')
  const columns = header.fields.map((name) => name.trim())
  for (const required of ['id', 'url']) {
    if (!columns.includes(required)) throw new InputError(`line ${header.line}: the header row has no "${required}" column`)
  }
  const repeated = columns.find((name, index) => columns.indexOf(name) !== index)
  if (repeated !== undefined) throw new InputError(`line ${header.line}: the column "${repeated}" appears twice`)
  return rows.map(({ fields, line }) => {
    if (fields.length !== columns.length)
      throw new InputError(`line ${line}: ${fields.length} fields where the header has ${columns.length}`)
    const cells = new Map(columns.map((name, index) => [name, fields[index]!]))
    const metadata = Object.fromEntries(
      columns.filter((name) => !RECORD_COLUMNS.includes(name) && cells.get(name) !== '').map((name) => [name, cells.get(name)!]),
    )
    return checkedRecord(
      {
        id: cells.get('id'),
        url: cells.get('url'),
        context: cells.get('context') || undefined,
        filename: cells.get('filename') || undefined,
        metadata,
      },
      line,
    )
  })
}

/** One JSON object per line, `{"id", "url", "context"?, "filename"?, "metadata"?}`; blank lines are skipped. */
function recordsFromJsonLines(text: string): MigrationRecord[] {
  const records: MigrationRecord[] = []
  text.split(/\r?\n/).forEach((content, index) => {
    if (content.trim() === '') return
    let value: unknown
    try {
      value = JSON.parse(content)
    } catch {
      throw new InputError(`line ${index + 1}: not valid JSON`)
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      throw new InputError(`line ${index + 1}: expected a JSON object`)
    const { id, ...rest } = value as Record<string, unknown>
    // Numeric ids (a database's) are taken as their decimal text.
    records.push(checkedRecord({ ...rest, id: typeof id === 'number' && Number.isSafeInteger(id) ? String(id) : id }, index + 1))
  })
  return records
}

function checkedRecord(value: Record<string, unknown>, line: number): MigrationRecord {
  const { id, url, context, filename, metadata, ...unknown } = value
  const problem = (message: string) => new InputError(`line ${line}: ${message}`)
  const extra = Object.keys(unknown)[0]
  if (extra !== undefined) throw problem(`"${extra}" is not a record field (id, url, context, filename, metadata)`)
  if (typeof id !== 'string' || id.trim() === '') throw problem('id is missing')
  if (typeof url !== 'string' || url.trim() === '') throw problem('url is missing')
  if (context !== undefined && typeof context !== 'string') throw problem('context must be a string')
  if (filename !== undefined && typeof filename !== 'string') throw problem('filename must be a string')
  const isStringMap = (entries: unknown): entries is Record<string, string> =>
    typeof entries === 'object' &&
    entries !== null &&
    !Array.isArray(entries) &&
    Object.values(entries).every((entry) => typeof entry === 'string')
  if (metadata !== undefined && !isStringMap(metadata)) throw problem('metadata must be an object of string values')
  const hasMetadata = metadata !== undefined && Object.keys(metadata).length > 0
  return { id, url: url.trim(), context, filename, metadata: hasMetadata ? metadata : undefined, line }
}
