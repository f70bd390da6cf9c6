/** Runs src/server.ts in a process of its own, as `npm start` would but without building. */
export const SERVICE_ARGS = ['--import', 'tsx', 'src/server.ts']

/**
 * A clean environment for the service process. Coverage is off there: tap would otherwise merge the
 * child's coverage, compiled by tsx with other source maps, into the report and garble its line numbers.
 */
export function serviceEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, _TAPJS_PROCESSINFO_COVERAGE_: '0', ...env }
}
