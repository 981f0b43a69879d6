/**
 * The self-loop guard: an endpoint that resolves to the gateway's own listen address would make it
 * dial itself until it runs out of file descriptors.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import type { EndpointSpec, HostPort, ListenAddress } from "./addresses.ts";
import { ConfigError } from "./flags.ts";
import { lookupErrorText } from "./neterror.ts";

/** All addresses `host` resolves to (itself when it is an IP literal). */
async function resolveAll(host: string): Promise<string[]> {
  if (isIP(host)) return [host];
  const found = await lookup(host, { all: true });
  return found.map((a) => a.address);
}

/**
 * One spelling per address, as Go's `IP.Equal` compares them: an IPv4-mapped IPv6 address in any
 * spelling (`::ffff:127.0.0.1`, `::ffff:7f00:1`, `0:0:0:0:0:ffff:7f00:0001`) is its IPv4 address;
 * every other IPv6 address is its eight groups, uncompressed, in lower-case hex.
 *
 * @example canonicalIP("::FFFF:7f00:1") // "127.0.0.1"
 * @example canonicalIP("::1") // "0:0:0:0:0:0:0:1"
 */
export function canonicalIP(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  const groups = ipv6Groups(ip);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi, lo] = [groups[6]!, groups[7]!];
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return groups.map((g) => g.toString(16)).join(":");
}

/** The eight 16-bit groups of a valid IPv6 address (an embedded IPv4 tail counts as two). */
function ipv6Groups(ip: string): number[] {
  const [head, tail] = ip.includes("::") ? ip.split("::") : [ip, undefined];
  const parse = (part: string | undefined): number[] =>
    part === undefined || part === ""
      ? []
      : part.split(":").flatMap((g) => {
          if (!g.includes(".")) return [parseInt(g, 16)];
          const [a, b, c, d] = g.split(".").map(Number);
          return [(a! << 8) | b!, (c! << 8) | d!];
        });
  const front = parse(head);
  const back = parse(tail);
  return [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back];
}

const WILDCARD = new Set(["0.0.0.0", canonicalIP("::")]);
const LOOPBACK6 = canonicalIP("::1");

/** Addresses (canonical) a connection to which would arrive at this host. */
function isLocal(ip: string): boolean {
  if (ip.startsWith("127.") || ip === LOOPBACK6 || WILDCARD.has(ip)) return true;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (canonicalIP(a.address) === ip) return true;
  }
  return false;
}

/**
 * Refuses endpoints that resolve to one of the gateway's TCP listen addresses and ports, including
 * a wildcard listen (`0.0.0.0`, `::`) with a loopback or local endpoint on the same port, which
 * etcd's gateway misses.
 *
 * @throws {ConfigError} naming the endpoint, or the listen address when its host does not resolve.
 */
export async function checkSelfLoops(listeners: readonly ListenAddress[], endpoints: readonly EndpointSpec[]): Promise<void> {
  for (const l of listeners) if (l.kind === "tcp") await checkSelfLoop(l.tcp, endpoints);
}

async function checkSelfLoop(listen: HostPort, endpoints: readonly EndpointSpec[]): Promise<void> {
  let listenIPs: string[];
  try {
    listenIPs = (await resolveAll(listen.host)).map(canonicalIP);
  } catch (e) {
    throw new ConfigError("listen-addr", listen.address, `failed to resolve listen host ${JSON.stringify(listen.host)}: ${lookupErrorText(e, listen.host)}`);
  }
  const wildcard = listenIPs.some((ip) => WILDCARD.has(ip));
  for (const ep of endpoints) {
    let ips: string[];
    try {
      ips = (await resolveAll(ep.dialHost ?? ep.host)).map(canonicalIP);
    } catch (e) {
      throw new ConfigError("endpoints", ep.address, `failed to resolve endpoint host ${JSON.stringify(ep.host)}: ${lookupErrorText(e, ep.dialHost ?? ep.host)}`);
    }
    if (ep.port !== listen.port) continue;
    for (const ip of ips) {
      const loops = wildcard ? isLocal(ip) : listenIPs.includes(ip) || (WILDCARD.has(ip) && listenIPs.some(isLocal));
      if (loops) {
        throw new ConfigError("endpoints", ep.address, `endpoint (${ep.address}->${ip}:${ep.port}) should not resolve to the gateway listen addr (${listen.address})`);
      }
    }
  }
}
