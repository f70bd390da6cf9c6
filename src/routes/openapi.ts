import { readFile } from 'node:fs/promises'
import type { FastifyInstance } from 'fastify'

/** The contract, machine-readable; the same file from src/ and from the built dist/. */
export const OPENAPI_PATH = new URL('../../openapi.yaml', import.meta.url)

export default async function openapiRoutes(app: FastifyInstance) {
  const document = await readFile(OPENAPI_PATH, 'utf8')
  app.get('/openapi.yaml', async (_request, reply) => reply.type('application/yaml; charset=utf-8').send(document))
}
