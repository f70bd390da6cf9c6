import { type FileHandle, open, readFile, rename } from 'node:fs/promises'

/** A record stored by the service: the bot replaces `old_url` by `new_url`. */
export interface MigratedLine {
  id: string
  old_url: string
  new_url: string
}

/** A record that failed; a later run retries it. */
export interface FailedLine {
  id: string
  old_url: string
  /** What went wrong: `<status> <code>: <detail>` when the service answered. */
  error: string
  /** The service's HTTP status, when it answered. */
  status?: number
  /** The Idempotency-Key the next try of this record sends (see migrate.ts). */
  retry_idempotency_key: string
}

export type MapLine = MigratedLine | FailedLine

export const isMigrated = (line: MapLine | undefined): line is MigratedLine => line !== undefined && 'new_url' in line

function parseLine(text: string): MapLine | undefined {
  try {
    const value = JSON.parse(text) as Partial<MigratedLine & FailedLine>
    if (typeof value.id !== 'string' || typeof value.old_url !== 'string') return undefined
    if (typeof value.new_url === 'string') return { id: value.id, old_url: value.old_url, new_url: value.new_url }
    if (typeof value.error === 'string') return value as FailedLine
  } catch {}
  return undefined
}

/**
 * The output map: JSON lines, one per id, the latest outcome. A line is appended as each record
 * finishes (one write per line), so an interrupted run loses nothing it finished; an id tried again
 * then has more than one line until the map is compacted, which keeps the last line of each id and
 * drops a line cut short by a crash. Compaction runs when a run starts (if needed) and when it ends,
 * writing a new file and renaming it over the old one, so the map is never half-written.
 */
export class MigrationMap {
  private readonly latest = new Map<string, MapLine>()
  private file: FileHandle | undefined

  private constructor(private readonly path: string) {}

  /** Reads the map (a missing file is an empty map), compacts it if it needs it, and opens it for appending. */
  static async open(path: string): Promise<{ map: MigrationMap; unreadableLines: number }> {
    const map = new MigrationMap(path)
    let text = ''
    try {
      text = await readFile(path, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
    }
    let lines = 0
    let unreadableLines = 0
    for (const content of text.split('\n')) {
      if (content.trim() === '') continue
      lines++
      const line = parseLine(content)
      if (line) map.latest.set(line.id, line)
      else unreadableLines++
    }
    if (lines > map.latest.size) await map.compact()
    else map.file = await open(path, 'a')
    return { map, unreadableLines }
  }

  get(id: string): MapLine | undefined {
    return this.latest.get(id)
  }

  async append(line: MapLine): Promise<void> {
    this.latest.set(line.id, line)
    await this.file!.write(`${JSON.stringify(line)}\n`)
  }

  /** Rewrites the map with the latest line of each id, atomically. */
  async compact(): Promise<void> {
    await this.file?.close()
    const temporary = `${this.path}.${process.pid}.tmp`
    const out = await open(temporary, 'w')
    try {
      await out.write([...this.latest.values()].map((line) => `${JSON.stringify(line)}\n`).join(''))
      await out.sync()
    } finally {
      await out.close()
    }
    await rename(temporary, this.path)
    this.file = await open(this.path, 'a')
  }

  async close(): Promise<void> {
    await this.file?.close()
    this.file = undefined
  }
}
