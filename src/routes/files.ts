import type { FastifyInstance } from 'fastify'
import { objectNotFound } from '../errors.js'
import { FILES_PREFIX } from '../http/route-options.js'
import type { FileServingDriver } from '../storage/driver.js'
import { keyFromPath } from '../upload/keys.js'

/** If-None-Match: `*` or a list of tags, weak ones compared weakly (RFC 9110 §13.1.2). */
function matchesEtag(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false
  return ifNoneMatch.split(',').some((tag) => {
    const trimmed = tag.trim()
    return trimmed === '*' || trimmed.replace(/^W\//, '') === etag
  })
}

/**
 * GET and HEAD /files/{key}: the public bytes of a driver that serves its own (local disk), as a CDN would
 * serve them. HEAD is written here rather than derived by Fastify, which gives a body-less answer
 * `Content-Length: 0`: false on a 304, whose Content-Length may only be the representation's.
 */
export default async function fileRoutes(app: FastifyInstance, options: { driver: FileServingDriver }) {
  app.route({
    method: ['GET', 'HEAD'],
    url: `${FILES_PREFIX}*`,
    exposeHeadRoute: false,
    handler: async (request, reply) => {
      const key = keyFromPath(request.url, FILES_PREFIX)
      const found = await options.driver.open(key)
      if (!found) throw objectNotFound(key)
      const { object, handle } = found
      // X-Content-Type-Options: nosniff comes with every answer (http-hardening).
      // An SVG opened directly is a document that could run script: sandbox it, on top of any app-wide policy.
      // Raster types are not sandboxed: they cannot script, and a browser's image viewer needs nothing relaxed.
      const policy = reply.getHeader('content-security-policy')
      reply.headers({
        'content-type': object.contentType,
        etag: object.etag,
        'last-modified': object.lastModified.toUTCString(),
        ...(object.cacheControl && { 'cache-control': object.cacheControl }),
        ...(object.contentType === 'image/svg+xml' && { 'content-security-policy': policy ? `${String(policy)}; sandbox` : 'sandbox' }),
      })
      // A 304 carries no Content-Length: it has no content, and the representation's is not needed.
      if (matchesEtag(request.headers['if-none-match'], object.etag)) {
        await handle.close()
        return reply.code(304).send()
      }
      reply.header('content-length', String(object.size))
      if (request.method === 'GET') return reply.send(handle.createReadStream())
      await handle.close()
      return reply.send()
    },
  })
}
