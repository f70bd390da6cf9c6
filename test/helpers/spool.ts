import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import { SPOOL_FILE_PREFIX } from '../../src/upload/pipeline.js'

/**
 * Points the temporary directory (TMPDIR, where the pipeline spools bodies of unknown length) at a fresh
 * directory for the rest of test `t`, so that other test files running alongside cannot show up in it.
 */
export async function isolatedSpoolDir(t: Test): Promise<{ dir: string; files(): Promise<string[]> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'spool-'))
  const previous = process.env.TMPDIR
  process.env.TMPDIR = dir
  t.teardown(async () => {
    if (previous === undefined) delete process.env.TMPDIR
    else process.env.TMPDIR = previous
    await rm(dir, { recursive: true, force: true })
  })
  return { dir, files: async () => (await readdir(dir)).filter((name) => name.startsWith(SPOOL_FILE_PREFIX)) }
}
