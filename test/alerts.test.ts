import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { havePromtool, PROMTOOL } from './helpers/system-tools.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const RULES = fileURLToPath(new URL('../prometheus/alerts.yml', import.meta.url))
const RULE_TESTS = ['alerts.test.yml', 'alerts-30d.test.yml'].map((file) =>
  fileURLToPath(new URL(`../prometheus/${file}`, import.meta.url)),
)

// The 30-day tests make promtool evaluate every rule every 10 minutes over 720 hours: about 8 s on an
// idle machine, more on a busy one. tap's default of 30 s per file is too short for a busy one.
const PROMTOOL_TIMEOUT_MS = 120_000
t.setTimeout(2 * PROMTOOL_TIMEOUT_MS + 30_000)

function promtool(t: Test, args: string[]) {
  const command = `promtool ${args.join(' ')}`
  const result = spawnSync(PROMTOOL, args, { cwd: ROOT, encoding: 'utf8', timeout: PROMTOOL_TIMEOUT_MS })
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`
  // On failure tap prints these fields under the assertion: promtool's own report of what failed.
  const diagnostics = { error: result.error?.message, signal: result.signal, output }
  t.equal(result.status, 0, `${command} exits 0`, diagnostics)
  // Lint findings (duplicate rules) print FAILED but exit 0 unless --lint-fatal: refuse them too.
  t.notMatch(output, /FAILED/, `${command} reports no failure`, diagnostics)
}

if (havePromtool(t)) {
  t.test('the alerting rules are valid (promtool check rules)', async (t) => {
    promtool(t, ['check', 'rules', RULES])
  })

  t.test('the alerting rules pass their unit tests (promtool test rules)', async (t) => {
    promtool(t, ['test', 'rules', ...RULE_TESTS])
  })
}
