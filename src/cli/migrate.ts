/**
 * Migrates images to the service: `npm run migrate -- --input records.csv --map map.jsonl --url …`.
 * Each record is imported with the client's import (POST /v1/images/import); the outcome is appended to
 * the map, which the bot applies to its database. See the README, "Migrating images", for the whole behaviour.
 */
import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { ImageServiceClient, ImageServiceError, ImageServiceUnreachableError, type StoredImage } from '../client.js'
import {
  EXIT_INTERRUPTED,
  EXIT_USAGE,
  finish,
  runTool,
  type ServiceCallOptions,
  serviceCallArguments,
  serviceCallOptionsOf,
  UsageError,
} from './arguments.js'
import { isMigrated, type MapLine, MigrationMap } from './migration-map.js'
import { RETRY_STATUSES, retryDelayMs, StartPacer } from './pacer.js'
import { Progress } from './progress.js'
import { formatOfPath, InputError, type InputFormat, type MigrationRecord, readRecords } from './records.js'

const USAGE = `Usage: npm run migrate -- --input <records.csv|records.jsonl> --map <map.jsonl> --url <service URL> [options]

  --input <file>       records: CSV with a header row (id, url, optional context and filename,
                       any other column a metadata entry) or JSON lines
                       ({"id","url","context"?,"filename"?,"metadata"?})
  --map <file>         the output map, JSON lines, one per id; created if missing. Ids already
                       migrated there are skipped, failed ones are tried again
  --url <url>          the service's base URL (default: $IMAGE_SERVICE_URL)
  --api-key <token>    an API key of the service (default: $IMAGE_SERVICE_API_KEY, which keeps it
                       out of the process list)
  --concurrency <n>    imports in flight at once (default 4)
  --rate <n/s|n/min>   most imports started per second or minute (default 2/s, the service's
                       default budget of 120 requests a minute per key)
  --context <context>  for records without one (default general)
  --format <csv|jsonl> the input's format (default: from its extension)
  --timeout <seconds>  for one import request (default 120)
  --retries <n>        tries again after 429, 503 or no answer (default 3)
  --help`

interface Options extends ServiceCallOptions {
  input: string
  map: string
  rateText: string
  context: string
  format: InputFormat
}

function optionsOf(argv: string[], env: NodeJS.ProcessEnv): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      input: { type: 'string' },
      map: { type: 'string' },
      context: { type: 'string', default: 'general' },
      format: { type: 'string' },
      ...serviceCallArguments(120),
    },
    strict: true,
  })
  if (values.help) return undefined
  if (!values.input) throw new UsageError('--input is required')
  if (!values.map) throw new UsageError('--map is required')
  const serviceCall = serviceCallOptionsOf(values, env)
  const format = values.format ?? formatOfPath(values.input)
  if (format !== 'csv' && format !== 'jsonl') throw new UsageError('--format must be csv or jsonl (or the input named .csv or .jsonl)')
  return { input: values.input, map: values.map, ...serviceCall, rateText: values.rate, context: values.context, format }
}

/**
 * The Idempotency-Key of a record's tries: `migrate-<hash of the id>-<n>`. `n` goes up after every error
 * answer from the service (nothing was stored under that key, and a service that remembers answers must
 * not replay the error when the source is fixed), and stays after a try that got no answer (the service
 * may have stored the image: the same key lets it say so rather than store it twice).
 */
function idempotencyKey(id: string, n: number): string {
  return `migrate-${createHash('sha256').update(id).digest('hex').slice(0, 32)}-${n}`
}

/** The key number a record starts at: from its failed line in the map, else 0. */
function firstKeyNumber(record: MigrationRecord, previous: MapLine | undefined): number {
  if (previous === undefined || isMigrated(previous)) return 0
  const match = /^(migrate-[0-9a-f]{32})-(\d+)$/.exec(previous.retry_idempotency_key ?? '')
  return match && `${match[1]}-0` === idempotencyKey(record.id, 0) ? Number(match[2]) : 0
}

async function migrateOne(
  record: MigrationRecord,
  options: Options,
  client: ImageServiceClient,
  pacer: StartPacer,
  keyNumber: number,
): Promise<MapLine> {
  const failed = (error: string, status?: number): MapLine => ({
    id: record.id,
    old_url: record.url,
    error,
    ...(status !== undefined && { status }),
    retry_idempotency_key: idempotencyKey(record.id, keyNumber),
  })
  for (let tries = 0; ; tries++) {
    await pacer.wait()
    let image: StoredImage | undefined
    try {
      image = await client.import(record.url, {
        context: record.context ?? options.context,
        ...(record.filename !== undefined && { filename: record.filename }),
        ...(record.metadata !== undefined && { metadata: record.metadata }),
        idempotencyKey: idempotencyKey(record.id, keyNumber),
      })
    } catch (error) {
      if (error instanceof ImageServiceUnreachableError) {
        if (tries >= options.retries) return failed(`no answer from the service: ${error.message}`)
        await sleep(retryDelayMs(tries))
        continue
      }
      if (!(error instanceof ImageServiceError)) throw error
      // A success answer the client could not read falls through to the check below.
      if (error.status >= 400) {
        keyNumber++
        if (!RETRY_STATUSES.has(error.status) || tries >= options.retries) return failed(error.message.trim(), error.status)
        await sleep(retryDelayMs(tries, error.retryAfter))
        continue
      }
    }
    // Stored, but the answer is unreadable: no status, so a retry keeps the key (and the service can tell).
    if (typeof image?.url !== 'string') return failed('the service answered 201 without a readable body')
    return { id: record.id, old_url: record.url, new_url: image.url }
  }
}

async function run(options: Options): Promise<number> {
  const records = await readRecords(options.input, options.format)
  const { map, unreadableLines } = await MigrationMap.open(options.map)
  if (unreadableLines > 0)
    console.error(`The map had ${unreadableLines} unreadable line(s) (a run cut short while writing); they were dropped.`)
  const pending = records.filter((record) => !isMigrated(map.get(record.id)))
  const skipped = records.length - pending.length
  console.error(
    `Migrating ${pending.length} of ${records.length} records (${skipped} already in the map) to ${options.url}, ` +
      `${options.concurrency} at a time, at most ${options.rateText}.`,
  )

  let stopping = false
  const stop = () => {
    if (stopping) process.exit(EXIT_INTERRUPTED) // a second signal: stop at once (the map stays readable)
    stopping = true
    console.error('\nStopping: finishing the imports in flight; a second signal stops at once.')
  }
  process.on('SIGINT', stop).on('SIGTERM', stop)

  const started = Date.now()
  const progress = new Progress(pending.length, process.stderr)
  const pacer = new StartPacer(options.intervalMs)
  // maxRetries 0: the tool paces and retries itself (--rate, --retries), each answered error under a new key.
  const client = new ImageServiceClient({ baseUrl: options.url, apiKey: options.apiKey, timeoutMs: options.timeoutMs, maxRetries: 0 })
  const failures: { id: string; error: string }[] = []
  let next = 0
  const worker = async () => {
    while (!stopping && next < pending.length) {
      const record = pending[next++]!
      const line = await migrateOne(record, options, client, pacer, firstKeyNumber(record, map.get(record.id)))
      await map.append(line)
      if (isMigrated(line)) progress.record('succeeded')
      else {
        failures.push({ id: line.id, error: line.error })
        progress.record('failed')
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(options.concurrency, pending.length) }, worker))
  progress.finish()
  await map.compact()
  await map.close()
  process.off('SIGINT', stop).off('SIGTERM', stop)

  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  const notAttempted = pending.length - progress.done
  console.log(
    `Migrated ${progress.succeeded}, failed ${failures.length}, skipped ${skipped} (already migrated)` +
      `${notAttempted > 0 ? `, not attempted ${notAttempted}` : ''}, of ${records.length} records, in ${seconds} s.`,
  )
  console.log(`Map: ${options.map} (one line per id, its latest outcome).`)
  const listed = failures.map(({ id, error }) => ({ what: id, error }))
  return finish(listed, notAttempted, stopping, {
    more: ' (see the map)',
    runAgain: 'Run the same command again to retry what did not migrate.',
  })
}

process.exitCode = await runTool(USAGE, optionsOf, run, (error, options) => {
  if (!(error instanceof InputError)) return undefined
  console.error(`${options.input}: ${error.message}`)
  return EXIT_USAGE
})
