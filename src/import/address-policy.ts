import net from 'node:net'

/**
 * Which addresses an import may connect to: public unicast only. Every range below is refused, by name,
 * so a refusal can say why. IPv4 rules also catch their IPv4-mapped IPv6 forms (`::ffff:127.0.0.1`,
 * which BlockList maps itself) and their NAT64 forms (`64:ff9b::7f00:1`, added below); IPv6 outside
 * 2000::/3 (global unicast) is refused whatever it is.
 */
const IPV4_RANGES: [reason: string, network: string, prefix: number][] = [
  // Cloud metadata services, named first: each also lies in a range below except Azure's, which is public.
  ['a cloud metadata address', '169.254.169.254', 32],
  ['a cloud metadata address', '169.254.170.2', 32],
  ['a cloud metadata address', '100.100.100.200', 32],
  ['a cloud metadata address', '168.63.129.16', 32],
  ['an unspecified address', '0.0.0.0', 8],
  ['a private address', '10.0.0.0', 8],
  ['a CGNAT (shared) address', '100.64.0.0', 10],
  ['a loopback address', '127.0.0.0', 8],
  ['a link-local address', '169.254.0.0', 16],
  ['a private address', '172.16.0.0', 12],
  ['a reserved address', '192.0.0.0', 24],
  ['a documentation address', '192.0.2.0', 24],
  ['a reserved address', '192.88.99.0', 24],
  ['a private address', '192.168.0.0', 16],
  ['a benchmarking address', '198.18.0.0', 15],
  ['a documentation address', '198.51.100.0', 24],
  ['a documentation address', '203.0.113.0', 24],
  ['a multicast address', '224.0.0.0', 4],
  ['a reserved address', '240.0.0.0', 4],
]

const IPV6_RANGES: [reason: string, network: string, prefix: number][] = [
  ['a cloud metadata address', 'fd00:ec2::254', 128],
  ['an unspecified address', '::', 128],
  ['a loopback address', '::1', 128],
  ['a private address', 'fc00::', 7],
  ['a link-local address', 'fe80::', 10],
  ['a multicast address', 'ff00::', 8],
  // Inside 2000::/3 but not plain public unicast: protocol assignments (Teredo, ORCHID), documentation,
  // 6to4 (which tunnels to an IPv4 address of anyone's choosing).
  ['a reserved address', '2001::', 23],
  ['a documentation address', '2001:db8::', 32],
  ['a reserved address', '2002::', 16],
  ['a documentation address', '3fff::', 20],
  ['a private address', '64:ff9b:1::', 48],
]

const NAT64_PREFIX = '64:ff9b::'

const refusals = new Map<string, net.BlockList>()
function listFor(reason: string): net.BlockList {
  let list = refusals.get(reason)
  if (!list) {
    list = new net.BlockList()
    refusals.set(reason, list)
  }
  return list
}
for (const [reason, network, prefix] of IPV4_RANGES) {
  listFor(reason).addSubnet(network, prefix, 'ipv4')
  listFor(reason).addSubnet(`${NAT64_PREFIX}${network}`, 96 + prefix, 'ipv6')
}
for (const [reason, network, prefix] of IPV6_RANGES) listFor(reason).addSubnet(network, prefix, 'ipv6')

/** IPv6 an import may reach: global unicast, and IPv4 in its mapped and NAT64 forms (checked as IPv4 above). */
const reachableIpv6 = new net.BlockList()
reachableIpv6.addSubnet('2000::', 3, 'ipv6')
reachableIpv6.addSubnet('::ffff:0:0', 96, 'ipv6')
reachableIpv6.addSubnet(NAT64_PREFIX, 96, 'ipv6')

/** Why an import may not connect to `address` (e.g. "a loopback address"), or undefined when it may. */
export function addressRefusal(address: string): string | undefined {
  const family = net.isIP(address)
  // A zone (`fe80::1%eth0`) is only ever link-local, and BlockList does not understand one.
  if (family === 0 || address.includes('%')) return 'not a plain IP address'
  const type = family === 4 ? 'ipv4' : 'ipv6'
  for (const [reason, list] of refusals) if (list.check(address, type)) return reason
  if (type === 'ipv6' && !reachableIpv6.check(address, 'ipv6')) return 'a reserved address'
  return undefined
}
