import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'
import problemDetails, { answerUnparsableRequest } from './plugins/problem-details.js'
import storagePlugin from './plugins/storage.js'
import fileRoutes from './routes/files.js'
import healthRoutes from './routes/health.js'
import imageRoutes from './routes/images.js'
import openapiRoutes from './routes/openapi.js'
import type { StorageDriver } from './storage/driver.js'
import { FsDriver } from './storage/fs.js'
import { createDriver } from './storage/index.js'

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export interface BuildOptions {
  /** Where logs go; defaults to pino on stdout at the configured level. */
  logger?: FastifyServerOptions['logger']
  /** A ready driver instead of the configured one (tests of what no local backend implements). */
  driver?: StorageDriver
}

/** Builds the whole app from a parsed config; no side effects beyond creating the storage directories. */
export async function buildApp(config: Config, options: BuildOptions = {}) {
  const app = Fastify({
    logger: options.logger ?? { level: config.logLevel, redact: ['req.headers.authorization'] },
    // Node's own default, which Fastify turns off: no request, body included, may take longer.
    requestTimeout: 300_000,
    clientErrorHandler: answerUnparsableRequest,
    // Honour the caller's X-Request-Id when it is sane, so one id follows a request across services.
    requestIdHeader: false,
    genReqId: (request) => {
      const sent = request.headers['x-request-id']
      return typeof sent === 'string' && REQUEST_ID.test(sent) ? sent : randomUUID()
    },
  })
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  const driver = options.driver ?? (await createDriver(config.storage))
  await app.register(problemDetails, { defaultPortraitUrl: config.defaultPortraitUrl })
  await app.register(storagePlugin, { driver })
  await app.register(healthRoutes)
  await app.register(openapiRoutes)
  await app.register(imageRoutes, { config })
  if (driver instanceof FsDriver) await app.register(fileRoutes, { driver })
  return app
}
