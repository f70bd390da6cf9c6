import fp from 'fastify-plugin'

/** R2's free tier, per month. */
export const FREE_TIER = { storage_bytes: 10e9, class_a_operations: 1_000_000, class_b_operations: 10_000_000 }

export interface UsageReport {
  storage_bytes: number
  object_count: number
  /** When the bucket was last listed; null before the first scan. */
  scanned_at: string | null
  /** Counted by this instance since the first of the month (UTC). */
  month: string
  class_a_operations: number
  class_b_operations: number
  limits: typeof FREE_TIER
  percentages: { storage_bytes: number; class_a_operations: number; class_b_operations: number }
}

declare module 'fastify' {
  interface FastifyInstance {
    usage: { report(options: { rescan: boolean }): Promise<UsageReport> }
  }
}

const monthOf = (date: Date) => date.toISOString().slice(0, 7)
const percent = (used: number, limit: number) => Math.round((used / limit) * 10_000) / 100

/**
 * Free-tier usage: R2 operations counted as they are sent (metrics, and this month's totals), and stored
 * bytes and objects from a periodic scan of the bucket, exported as gauges.
 */
export default fp(
  async (app, options: { scanIntervalS: number; rescanIntervalS: number }) => {
    const counted = { month: monthOf(new Date()), A: 0, B: 0 }
    /** This month's counts, started afresh when the month (UTC) has changed since the last look. */
    const thisMonth = () => {
      const month = monthOf(new Date())
      if (month !== counted.month) Object.assign(counted, { month, A: 0, B: 0 })
      return counted
    }
    app.storage.observeOperations?.((operation, pricingClass) => {
      app.metrics.operations.inc({ operation, class: pricingClass })
      if (pricingClass !== 'free') thisMonth()[pricingClass]++
    })

    let last: { bytes: number; objects: number; at: Date } | undefined
    /** The listing under way: requests that arrive meanwhile wait for it rather than start another. */
    let scanning: Promise<void> | undefined
    const list = async () => {
      const { bytes, objects } = await app.storage.usage()
      last = { bytes, objects, at: new Date() }
      app.metrics.storageBytes.set(bytes)
      app.metrics.storageObjects.set(objects)
      app.metrics.usageLastScan.set(last.at.getTime() / 1000)
    }
    const scan = () => (scanning ??= list().finally(() => (scanning = undefined)))
    // A listing costs a Class A operation per 1000 objects: any key asking for one on every request
    // would spend the free tier, so a rescan sooner than this after the last scan gets that scan.
    const rescanDue = (scannedAt: Date) => Date.now() - scannedAt.getTime() >= options.rescanIntervalS * 1000
    if (options.scanIntervalS > 0) {
      const scanQuietly = () => scan().catch((err: unknown) => app.log.warn({ err }, 'usage scan failed'))
      app.addHook('onReady', async () => {
        void scanQuietly()
      })
      const timer = setInterval(scanQuietly, options.scanIntervalS * 1000).unref()
      app.addHook('onClose', async () => clearInterval(timer))
    }

    app.decorate('usage', {
      async report({ rescan }: { rescan: boolean }): Promise<UsageReport> {
        if (!last || (rescan && rescanDue(last.at))) await scan()
        const { month, A, B } = thisMonth()
        const storageBytes = last?.bytes ?? 0
        return {
          storage_bytes: storageBytes,
          object_count: last?.objects ?? 0,
          scanned_at: last?.at.toISOString() ?? null,
          month,
          class_a_operations: A,
          class_b_operations: B,
          limits: FREE_TIER,
          percentages: {
            storage_bytes: percent(storageBytes, FREE_TIER.storage_bytes),
            class_a_operations: percent(A, FREE_TIER.class_a_operations),
            class_b_operations: percent(B, FREE_TIER.class_b_operations),
          },
        }
      },
    })
  },
  { name: 'usage', dependencies: ['metrics', 'storage'] },
)
