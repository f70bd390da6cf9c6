/**
 * Import rules for src/, checked by `npm test` (npm run check:imports) before the tests run.
 * Type-only imports count: a cycle through a type is still a cycle a reader has to untangle.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'Modules form no import cycle: each can be read after the ones it imports.',
      from: {},
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
  },
}
