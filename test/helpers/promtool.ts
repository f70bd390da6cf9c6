import { existsSync } from 'node:fs'
import type { Test } from 'tap'

/** Debian's promtool (package prometheus); .ci/run installs it. */
export const PROMTOOL = '/usr/bin/promtool'

const MISSING = `${PROMTOOL} is missing: install Debian's prometheus package (apt-get install -y prometheus)`

/**
 * True when promtool is there. Without it the check fails in CI (CI=true), where it must run, and is
 * skipped elsewhere with a note, so that `npm test` passes on a machine without it.
 */
export function havePromtool(t: Test): boolean {
  if (existsSync(PROMTOOL)) return true
  if (process.env.CI) t.fail(MISSING)
  else t.skip(`${MISSING}; skipped outside CI`, () => {})
  return false
}
