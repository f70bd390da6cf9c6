/**
 * Import rules for src/, checked by `npm test` (npm run check:imports) before the tests run.
 *
 * Imports point one way: app → plugins and routes → upload and import → storage → config and errors.
 * Each layer below is written as what it MAY import, so a new folder is refused until it is placed.
 * Type-only imports count: a cycle or a wrong-way import through a type is still one a reader meets.
 */
const FASTIFY = '^node_modules/(fastify|fastify-plugin|@fastify/[^/]+)/'

/** Modules that import nothing of the service's: the contract's tables. */
const LEAVES = '^src/(errors|image-types|scopes)[.]ts$'

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycles: every module can be read after the ones it imports.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'leaves-import-nothing',
      severity: 'error',
      comment: 'errors.ts, image-types.ts and scopes.ts are tables everything may use; they use nothing of ours.',
      from: { path: LEAVES },
      to: { path: '^src/' },
    },
    {
      name: 'config-imports-leaves-only',
      severity: 'error',
      comment: 'config.ts parses the environment; it may use the contract tables and nothing else of ours.',
      from: { path: '^src/config[.]ts$' },
      to: { path: '^src/', pathNot: LEAVES },
    },
    {
      name: 'storage-below-upload',
      severity: 'error',
      comment: 'Storage drivers know objects, not uploads or HTTP: they import storage/, config and the leaves only.',
      from: { path: '^src/storage/' },
      to: { path: '^src/', pathNot: ['^src/storage/', '^src/config[.]ts$', LEAVES] },
    },
    {
      name: 'upload-below-routes',
      severity: 'error',
      comment: 'The upload orchestration and pipeline import upload/, storage/, config and the leaves only.',
      from: { path: '^src/upload/' },
      to: { path: '^src/', pathNot: ['^src/(upload|storage)/', '^src/config[.]ts$', LEAVES] },
    },
    {
      name: 'import-source-below-routes',
      severity: 'error',
      comment: 'Fetching an import source is networking only: import/, config and the leaves.',
      from: { path: '^src/import/' },
      to: { path: '^src/', pathNot: ['^src/import/', '^src/config[.]ts$', LEAVES] },
    },
    {
      name: 'upload-storage-import-free-of-fastify',
      severity: 'error',
      comment: 'Below the routes nothing knows Fastify: routes and plugins adapt HTTP to upload/, import/ and storage/.',
      from: { path: '^src/(upload|storage|import)/|^src/(config|errors|image-types)[.]ts$' },
      to: { path: FASTIFY },
    },
    {
      name: 'http-helpers-import-nothing-of-ours',
      severity: 'error',
      comment: 'http/ holds what plugins and routes share about requests (route flags, the response lifecycle).',
      from: { path: '^src/http/' },
      to: { path: '^src/', pathNot: ['^src/http/', LEAVES] },
    },
    {
      name: 'plugins-below-app',
      severity: 'error',
      comment: 'Plugins are cross-cutting: they may use http/, storage/ and the bottom layers, never routes/ or app.ts.',
      from: { path: '^src/plugins/' },
      to: { path: '^src/', pathNot: ['^src/(plugins|http|storage)/', '^src/config[.]ts$', LEAVES] },
    },
    {
      name: 'routes-below-app',
      severity: 'error',
      comment: 'Routes reach plugins through the app\'s decorations, not imports; they never import app.ts or server.ts.',
      from: { path: '^src/routes/' },
      to: { path: '^src/', pathNot: ['^src/(routes|http|upload|import|storage)/', '^src/config[.]ts$', LEAVES] },
    },
    {
      name: 'only-server-builds-the-app',
      severity: 'error',
      comment: 'server.ts, the one file with side effects, is imported by nothing; app.ts by server.ts only.',
      from: { path: '^src/', pathNot: '^src/server[.]ts$' },
      to: { path: '^src/(app|server)[.]ts$' },
    },
    {
      name: 'client-stands-alone',
      severity: 'error',
      comment: 'client.ts is published (image-upload-service/client): it may use the error codes and nothing else of ours.',
      from: { path: '^src/client[.]ts$' },
      to: { path: '^src/', pathNot: '^src/errors[.]ts$' },
    },
    {
      name: 'cli-stands-alone',
      severity: 'error',
      comment: 'The migration tool talks to the service over HTTP; the service does not import it.',
      from: { path: '^src/', pathNot: '^src/cli/' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'no-dev-dependencies-in-src',
      severity: 'error',
      comment: 'The image installs production dependencies only.',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
  },
}
