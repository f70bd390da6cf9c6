import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import type { Test } from 'tap'

/** Debian's curl, as operators use it; .ci/run installs it. */
export const CURL = '/usr/bin/curl'

/** Debian's promtool (package prometheus); .ci/run installs it. */
export const PROMTOOL = '/usr/bin/promtool'

/**
 * Debian's Python, by absolute path: a python3 earlier on PATH (pyenv, a virtualenv) may lack the
 * python3-aiohttp and python3-boto3 packages that .ci/run installs.
 */
export const PYTHON = '/usr/bin/python3'

/**
 * True when a tool the tests run is installed. Without it the check fails in CI (CI=true), where it must
 * run, and is skipped elsewhere with a note, so that `npm test` passes on a machine without it.
 */
function haveTool(t: Test, installed: boolean, missing: string): boolean {
  if (installed) return true
  if (process.env.CI) t.fail(missing)
  else t.skip(`${missing}; skipped outside CI`, () => {})
  return false
}

export function havePromtool(t: Test): boolean {
  return haveTool(t, existsSync(PROMTOOL), `${PROMTOOL} is missing: install Debian's prometheus package (apt-get install -y prometheus)`)
}

/** True when Debian's Python can import aiohttp, the Python client's one dependency. */
export function havePythonAiohttp(t: Test): boolean {
  const imported = spawnSync(PYTHON, ['-c', 'import aiohttp'], { stdio: 'ignore' }).status === 0
  return haveTool(
    t,
    imported,
    `${PYTHON} cannot import aiohttp: install Debian's python3-aiohttp package (apt-get install -y python3-aiohttp)`,
  )
}

/** True when Debian's Python can import boto3, the AWS SDK operators read the bucket with. */
export function havePythonBoto3(t: Test): boolean {
  const imported = spawnSync(PYTHON, ['-c', 'import boto3'], { stdio: 'ignore' }).status === 0
  return haveTool(t, imported, `${PYTHON} cannot import boto3: install Debian's python3-boto3 package (apt-get install -y python3-boto3)`)
}

export function haveCurl(t: Test): boolean {
  return haveTool(t, existsSync(CURL), `${CURL} is missing: install Debian's curl package (apt-get install -y curl)`)
}

/** Debian's Chromium (package chromium), driven headless by the console's browser test; .ci/run installs it. */
export const CHROMIUM = '/usr/bin/chromium'

export function haveChromium(t: Test): boolean {
  return haveTool(t, existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)`)
}
