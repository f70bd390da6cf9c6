import { readFile } from 'node:fs/promises'
import type { FastifyInstance, FastifyReply } from 'fastify'
import { ApiError } from '../errors.js'

/** The console's files, served as they are (no build step); the same folder from src/ and from the built dist/. */
export const CONSOLE_DIRECTORY = new URL('../../console/', import.meta.url)
const FILE_TYPES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'console.js': 'text/javascript; charset=utf-8',
  'api.js': 'text/javascript; charset=utf-8',
  'console.css': 'text/css; charset=utf-8',
  'icon.svg': 'image/svg+xml',
}

/**
 * The console's policy: its own scripts, styles and API only, and images from the public bucket. No
 * inline script or style, so markup that reached the page (an image's metadata, say) could not run.
 */
export function consolePolicy(publicUrl: string): string {
  return [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src 'self' ${new URL(publicUrl).origin}`,
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ')
}

/** GET /console and its few files, read once at start; public (the token is typed into the page, which sends it to /v1/*). */
export default async function consoleRoutes(app: FastifyInstance, options: { publicUrl: string }) {
  const files = new Map<string, Buffer>()
  for (const name of Object.keys(FILE_TYPES)) files.set(name, await readFile(new URL(name, CONSOLE_DIRECTORY)))
  const policy = consolePolicy(options.publicUrl)

  const serve = (name: string, reply: FastifyReply) =>
    reply
      .headers({
        'content-type': FILE_TYPES[name]!,
        'content-security-policy': policy,
        // Small files, revalidated each time, so a new release's console is never mixed with an old one's.
        'cache-control': 'no-cache',
      })
      .send(files.get(name))

  app.get('/console', { exposeHeadRoute: false }, async (_request, reply) => serve('index.html', reply))
  app.get<{ Params: { file: string } }>('/console/:file', { exposeHeadRoute: false }, async (request, reply) => {
    const { file } = request.params
    if (!files.has(file)) throw new ApiError('not_found', `The console has no file "${file.slice(0, 64)}".`)
    return serve(file, reply)
  })
}
