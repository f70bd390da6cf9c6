import type { StorageConfig } from '../config.js'
import type { StorageDriver } from './driver.js'
import { FsDriver } from './fs.js'
import { R2Driver } from './r2.js'

export async function createDriver(config: StorageConfig): Promise<StorageDriver> {
  return config.driver === 'fs' ? new FsDriver(config.dataDir).init() : new R2Driver(config)
}
