import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/**
 * The bytes of Buffers (ArrayBuffers) reachable in this process, after two full collections: one may only
 * queue what the next frees.
 */
function buffersReachable(): number {
  gc()
  gc()
  return process.memoryUsage().arrayBuffers
}

/** Starts counting: the function returned gives the bytes of Buffers that what ran since still keeps reachable. */
export function buffersKeptFromNow(): () => number {
  const before = buffersReachable()
  return () => Math.max(0, buffersReachable() - before)
}
