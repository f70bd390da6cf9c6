import { setDefaultHighWaterMark } from 'node:stream'
import closeWithGrace from 'close-with-grace'
import { buildApp, buildMetricsApp } from './app.js'
import { ConfigError, loadConfig } from './config.js'

// Node 22 raised every stream's default buffer from 16 to 64 KiB. An upload's bytes pass through about
// ten streams (socket, request, form parser, file part…), each of which may then hold that much: back at
// Node 20's 16 KiB, 16 uploads of 50 MiB at once peak ~10 MiB lower on Node 24 (README, memory per upload).
setDefaultHighWaterMark(false, 16 * 1024)

async function start() {
  const config = loadConfig(process.env)
  const app = await buildApp(config)
  const metricsApp = config.metricsPort === undefined ? undefined : await buildMetricsApp(app.metricsRegistry)

  // On SIGTERM/SIGINT: stop accepting, let uploads in flight finish for SHUTDOWN_TIMEOUT_MS, then abort
  // the rest (nothing partial is stored) and exit 0. close-with-grace exits 1 if even that hangs.
  closeWithGrace({ delay: config.shutdownTimeoutMs + 10_000 }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an uncaught error')
    else app.log.info({ signal, shutdownTimeoutMs: config.shutdownTimeoutMs }, 'closing: finishing uploads in flight')
    const abortLate = setTimeout(() => {
      app.log.warn('closing: aborting the uploads still in flight')
      app.abortUploads()
    }, config.shutdownTimeoutMs)
    await Promise.all([app.close(), metricsApp?.close()])
    clearTimeout(abortLate)
    app.log.info('closed')
  })

  const address = await app.listen({ port: config.port, host: config.host })
  if (metricsApp) await metricsApp.listen({ port: config.metricsPort, host: config.host })
  app.log.info(
    { address, storage: config.storage.driver, publicUrl: config.publicUrl, metricsPort: config.metricsPort },
    'image-upload-service ready',
  )
}

try {
  await start()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(error.message)
  process.exit(1)
}
