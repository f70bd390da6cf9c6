/**
 * Finds the stored images no one references any more, and deletes them on request:
 * `npm run reconcile -- --keep live.txt --prefix portraits/ --url … [--older-than 24h] [--delete]`.
 * See the README, "Removing orphans", for the whole behaviour.
 */
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { ImageServiceClient, ImageServiceError, type ListedImage } from '../client.js'
import { assertValidKey } from '../upload/keys.js'
import {
  EXIT_FAILED,
  EXIT_INTERRUPTED,
  EXIT_USAGE,
  finish,
  runTool,
  type ServiceCallOptions,
  serviceCallArguments,
  serviceCallOptionsOf,
  UsageError,
} from './arguments.js'
import { StartPacer } from './pacer.js'
import { Progress } from './progress.js'

const USAGE = `Usage: npm run reconcile -- --keep <live.txt> --prefix <prefix> --url <service URL> [options]

Lists the stored objects under --prefix that --keep does not name (orphans). A dry run unless
--delete is given.

  --keep <file>          what the bot still references: keys, or the service's public URLs of
                         them, one a line (blank lines and lines starting with # are ignored)
  --prefix <prefix>      the objects to look at: keys starting with this, e.g. portraits/
  --url <url>            the service's base URL (default: $IMAGE_SERVICE_URL)
  --api-key <token>      an API key of the service (default: $IMAGE_SERVICE_API_KEY, which keeps it
                         out of the process list)
  --older-than <age>     an orphan stored less than this long ago is kept: an upload in flight may
                         not be in the bot's database yet (default 24h; s, m, h or d; 0s: any age)
  --delete               delete the orphans (without it nothing is deleted)
  --concurrency <n>      deletes in flight at once (default 4)
  --rate <n/s|n/min>     most requests started per second or minute (default 2/s, the service's
                         default budget of 120 requests a minute per key)
  --timeout <seconds>    for one request (default 30)
  --retries <n>          tries again after 429, 503 or no answer (default 3)
  --help`

/** A page of the listing: the most the service gives at once. */
const PAGE_LIMIT = 1000
const DURATION_UNITS_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

/** The keep file cannot be used as it is: nothing was deleted. */
class KeepFileError extends Error {}

interface Options extends ServiceCallOptions {
  keep: string
  prefix: string
  olderThanMs: number
  olderThanText: string
  delete: boolean
}

function durationMs(text: string, name: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(text)
  if (!match) throw new UsageError(`--${name} must be a whole number and a unit, s, m, h or d (24h, 90m, 0s)`)
  return Number(match[1]) * DURATION_UNITS_MS[match[2] as keyof typeof DURATION_UNITS_MS]
}

function optionsOf(argv: string[], env: NodeJS.ProcessEnv): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      keep: { type: 'string' },
      prefix: { type: 'string' },
      'older-than': { type: 'string', default: '24h' },
      delete: { type: 'boolean', default: false },
      ...serviceCallArguments(30),
    },
    strict: true,
  })
  if (values.help) return undefined
  if (!values.keep) throw new UsageError('--keep is required')
  if (!values.prefix) throw new UsageError('--prefix is required (the objects the keep file speaks for, e.g. portraits/)')
  return {
    keep: values.keep,
    prefix: values.prefix,
    ...serviceCallOptionsOf(values, env),
    olderThanMs: durationMs(values['older-than'], 'older-than'),
    olderThanText: values['older-than'],
    delete: values.delete,
  }
}

/** The keep file's lines: keys as they are, URLs to be turned into keys once the public URL is known. */
interface KeepList {
  keys: Set<string>
  urls: { line: number; url: URL }[]
}

async function readKeepFile(file: string): Promise<KeepList> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    throw new KeepFileError(`cannot be read (${(error as NodeJS.ErrnoException).code ?? error})`)
  }
  const keep: KeepList = { keys: new Set(), urls: [] }
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    if (/^https?:\/\//i.test(line)) {
      if (!URL.canParse(line)) throw new KeepFileError(`line ${index + 1}: not a URL: ${line.slice(0, 200)}`)
      keep.urls.push({ line: index + 1, url: new URL(line) })
      continue
    }
    try {
      keep.keys.add(assertValidKey(line))
    } catch {
      throw new KeepFileError(`line ${index + 1}: neither a key nor an http(s) URL: ${line.slice(0, 200)}`)
    }
  }
  // An empty export (the bot's query failed) would make every object an orphan.
  if (keep.keys.size === 0 && keep.urls.length === 0)
    throw new KeepFileError('names no key and no URL; refusing to treat everything as an orphan')
  return keep
}

/** The public URL an object's `url` is made of: the base, then the key with each segment percent-encoded. */
function publicBaseOf(item: ListedImage): URL {
  const encodedKey = item.key.split('/').map(encodeURIComponent).join('/')
  if (!item.url.endsWith(`/${encodedKey}`))
    throw new Error(`The service listed ${item.key} with the URL ${item.url}, which does not end in its key.`)
  return new URL(item.url.slice(0, -encodedKey.length))
}

/**
 * The keys the keep file's URLs name, under the service's public URL (query and fragment ignored). A URL
 * elsewhere (another host, a CDN in front) cannot be matched to an object, and every object would look
 * like an orphan: it stops the run.
 */
function keysOfUrls(urls: KeepList['urls'], base: URL): string[] {
  const keys: string[] = []
  const foreign: string[] = []
  for (const { line, url } of urls) {
    const key =
      url.origin === base.origin && url.pathname.startsWith(base.pathname) ? keyOfPath(url.pathname.slice(base.pathname.length)) : undefined
    if (key === undefined) foreign.push(`line ${line}: ${url.href}`)
    else keys.push(key)
  }
  if (foreign.length > 0) {
    throw new KeepFileError(
      `${foreign.length} URL(s) are not under the service's public URL ${base.href}, so they match no object:\n  ${foreign.slice(0, 5).join('\n  ')}`,
    )
  }
  return keys
}

function keyOfPath(encoded: string): string | undefined {
  try {
    return encoded.split('/').map(decodeURIComponent).join('/')
  } catch {
    return undefined // malformed percent-encoding
  }
}

const formatBytes = (bytes: number) => `${bytes} bytes (${(bytes / 1e6).toFixed(1)} MB)`

interface Scan {
  listed: number
  referenced: number
  young: number
  orphans: ListedImage[]
}

/** Lists every object under the prefix, page by page, printing each orphan as it is found. */
async function scan(
  options: Options,
  keep: KeepList,
  client: ImageServiceClient,
  pacer: StartPacer,
  stopping: () => boolean,
): Promise<Scan> {
  const result: Scan = { listed: 0, referenced: 0, young: 0, orphans: [] }
  const youngerThan = Date.now() - options.olderThanMs
  let cursor: string | undefined
  let urlsMapped = keep.urls.length === 0
  do {
    const page = await pacer.call(() => client.list({ prefix: options.prefix, limit: PAGE_LIMIT, cursor }), options.retries)
    for (const item of page.items) {
      if (!urlsMapped) {
        for (const key of keysOfUrls(keep.urls, publicBaseOf(item))) keep.keys.add(key)
        urlsMapped = true
      }
      result.listed++
      if (keep.keys.has(item.key)) result.referenced++
      else if (Date.parse(item.last_modified) > youngerThan) result.young++
      else {
        result.orphans.push(item)
        console.log(`${item.key}\t${item.size}\t${item.last_modified}`)
      }
    }
    cursor = page.next_cursor ?? undefined
  } while (cursor !== undefined && !stopping())
  return result
}

async function run(options: Options): Promise<number> {
  const keep = await readKeepFile(options.keep)
  let stopping = false
  const stop = () => {
    if (stopping) process.exit(EXIT_INTERRUPTED) // a second signal: stop at once (deletes are idempotent)
    stopping = true
    console.error('\nStopping: finishing the requests in flight; a second signal stops at once.')
  }
  process.on('SIGINT', stop).on('SIGTERM', stop)
  const client = new ImageServiceClient({ baseUrl: options.url, apiKey: options.apiKey, timeoutMs: options.timeoutMs })
  const pacer = new StartPacer(options.intervalMs)

  console.error(`Listing ${options.url} under "${options.prefix}"; ${keep.keys.size + keep.urls.length} references kept.`)
  const found = await scan(options, keep, client, pacer, () => stopping)
  const orphanBytes = found.orphans.reduce((sum, orphan) => sum + orphan.size, 0)
  const listedWhat = `${found.listed} objects under "${options.prefix}"${stopping ? ' (listing stopped early)' : ''}`
  console.log(
    `Orphans: ${found.orphans.length}, ${formatBytes(orphanBytes)}, of ${listedWhat}: ${found.referenced} referenced, ` +
      `${found.young} unreferenced but younger than ${options.olderThanText} (kept).`,
  )
  if (!options.delete || stopping) {
    if (!options.delete) console.log('Dry run: nothing was deleted. Run again with --delete to delete the orphans.')
    return stopping ? EXIT_INTERRUPTED : 0
  }

  console.error(`Deleting ${found.orphans.length} orphans, ${options.concurrency} at a time.`)
  const progress = new Progress(found.orphans.length, process.stderr, Date.now, 'deleted')
  const failures: { key: string; error: string }[] = []
  let deletedBytes = 0
  let next = 0
  const worker = async () => {
    while (!stopping && next < found.orphans.length) {
      const orphan = found.orphans[next++]!
      try {
        await pacer.call(() => client.delete(orphan.key), options.retries)
        deletedBytes += orphan.size
        progress.record('succeeded')
      } catch (error) {
        if (!(error instanceof Error)) throw error
        failures.push({ key: orphan.key, error: error instanceof ImageServiceError ? error.message.trim() : error.message })
        progress.record('failed')
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(options.concurrency, found.orphans.length) }, worker))
  progress.finish()
  process.off('SIGINT', stop).off('SIGTERM', stop)

  const notAttempted = found.orphans.length - progress.done
  console.log(
    `Deleted ${progress.succeeded} of ${found.orphans.length} orphans, ${formatBytes(deletedBytes)}; failed ${failures.length}` +
      `${notAttempted > 0 ? `, not attempted ${notAttempted}` : ''}.`,
  )
  const listed = failures.map(({ key, error }) => ({ what: key, error }))
  return finish(listed, notAttempted, stopping, { more: '', runAgain: 'Run the same command again to delete what is left.' })
}

process.exitCode = await runTool(USAGE, optionsOf, run, (error, options) => {
  if (error instanceof KeepFileError) {
    console.error(`${options.keep}: ${error.message}`)
    return EXIT_USAGE
  }
  // The listing failed (its retries spent): nothing was deleted.
  if (error instanceof ImageServiceError && error.status === 400) {
    console.error(`The service refused the listing: ${error.message}`)
    return EXIT_USAGE
  }
  console.error(`The listing failed, nothing was deleted: ${(error as Error).message}`)
  return EXIT_FAILED
})
