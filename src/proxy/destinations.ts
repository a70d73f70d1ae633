import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

/**
 * Where an upstream may send the cache: addresses of the machine itself and of its link
 * (cloud metadata services answer on 169.254.169.254) are not. An upstream that redirects a
 * blob there (or names a token realm there) would make the cache fetch from services that
 * trust whatever comes from the host, and serve their answers to whoever pulled, as a "blob"
 * or in an error's detail (server-side request forgery).
 *
 *   127.0.0.0/8, ::1          loopback
 *   169.254.0.0/16, fe80::/10 link-local
 *   0.0.0.0/8, ::             "this host": connecting to 0.0.0.0 reaches the loopback
 *
 * IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) match the IPv4 rules (BlockList does so).
 *
 * Not refused: private networks, where an upstream's own store may be, and this machine's
 * addresses on its other interfaces (found by probing: a service on 0.0.0.0 answered a
 * redirect to the host's LAN address). Refusing those would take the whole interface list,
 * and with it an upstream beside the cache at its LAN address; the README says so instead.
 */
const INTERNAL = new BlockList();
INTERNAL.addSubnet('127.0.0.0', 8, 'ipv4');
INTERNAL.addSubnet('169.254.0.0', 16, 'ipv4');
INTERNAL.addSubnet('0.0.0.0', 8, 'ipv4');
INTERNAL.addAddress('::1', 'ipv6');
INTERNAL.addAddress('::', 'ipv6');
INTERNAL.addSubnet('fe80::', 10, 'ipv6');

export function isInternalAddress(address: string): boolean {
  const family = isIP(address);
  return family !== 0 && INTERNAL.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Whether a URL's hostname (an IPv6 address in brackets, as URL keeps it) is, or resolves to,
 * an internal address: any of its addresses counts, as the connection may take any. A name
 * that does not resolve is not internal: the request to it fails on its own.
 *
 * For the upstream's own host only (is the upstream at one itself?): where the upstream sends
 * the cache is checked by the connection's own lookup (http-client.ts), since a name resolved
 * here and again to connect may resolve otherwise the second time (DNS rebinding, TTL 0).
 */
export async function isInternalHost(hostname: string): Promise<boolean> {
  const host = bareHost(hostname);
  if (isIP(host) !== 0) return isInternalAddress(host);
  try {
    const addresses = await lookup(host, { all: true, verbatim: true });
    return addresses.some((a) => isInternalAddress(a.address));
  } catch {
    return false;
  }
}

/** A URL's hostname without the brackets of an IPv6 literal (`[::1]` is `::1`), as node:net takes it. */
export function bareHost(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}
