import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { type BuildOptions, buildApp } from '../../src/app.js'
import { loadConfig } from '../../src/config.js'

/**
 * Builds the app for one test, on the local-disk driver in a fresh directory unless `env` says otherwise,
 * and closes it (and removes the directory) when the test ends.
 */
export async function buildTestApp(t: Test, env: NodeJS.ProcessEnv = {}, options: BuildOptions = {}) {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'images-'))
  // No periodic usage scans unless a test asks: they would add ListObjectsV2 calls at random moments.
  const config = loadConfig({ DATA_DIR: dataDir, LOG_LEVEL: 'silent', USAGE_SCAN_INTERVAL_S: '0', ...env })
  const app = await buildApp(config, { logger: false, ...options })
  t.teardown(async () => {
    await app.close()
    await rm(dataDir, { recursive: true, force: true })
  })
  return { app, config, dataDir }
}

/** Every object file the local-disk driver holds under its data directory (relative paths). */
export async function storedFiles(dataDir: string): Promise<string[]> {
  try {
    const entries = await readdir(path.join(dataDir, 'objects'), { recursive: true, withFileTypes: true })
    return entries
      .filter((entry) => entry.isFile())
      .map((entry) => path.relative(path.join(dataDir, 'objects'), path.join(entry.parentPath, entry.name)))
  } catch {
    return []
  }
}

/** One of the app's unlabelled gauges, as it reads now: undefined until it is first set. */
export async function gauge(
  app: FastifyInstance,
  name: 'uploadsInFlight' | 'uploadsWaiting' | 'storageBytes' | 'storageObjects' | 'usageLastScan',
): Promise<number | undefined> {
  return (await app.metrics[name].get()).values[0]?.value
}
