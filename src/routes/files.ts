import type { FastifyInstance } from 'fastify'
import { ApiError } from '../errors.js'
import type { FsDriver } from '../storage/fs.js'
import { keyFromPath } from '../upload/keys.js'

/** GET /files/{key}: the local-disk driver's public bytes, served as a CDN would serve them. */
export default async function fileRoutes(app: FastifyInstance, options: { driver: FsDriver }) {
  app.get('/files/*', async (request, reply) => {
    const key = keyFromPath(request.url, '/files/')
    const found = await options.driver.open(key)
    if (!found) throw new ApiError('not_found', `There is no object with the key "${key}".`)
    const { object, stream } = found
    reply.headers({
      'content-type': object.contentType,
      etag: object.etag,
      'last-modified': object.lastModified.toUTCString(),
      'x-content-type-options': 'nosniff',
      ...(object.cacheControl && { 'cache-control': object.cacheControl }),
    })
    if (request.headers['if-none-match'] === object.etag) {
      stream.destroy()
      return reply.code(304).send()
    }
    return reply.header('content-length', String(object.size)).send(stream)
  })
}
