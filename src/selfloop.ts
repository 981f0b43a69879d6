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
import { errorText } from "./log.ts";

/** All addresses `host` resolves to (itself when it is an IP literal). */
async function resolveAll(host: string): Promise<string[]> {
  if (isIP(host)) return [host];
  const found = await lookup(host, { all: true });
  return found.map((a) => a.address);
}

const WILDCARD = new Set(["0.0.0.0", "::"]);

function canonicalIP(ip: string): string {
  const lower = ip.toLowerCase();
  if (lower.startsWith("::ffff:") && isIP(lower.slice(7)) === 4) return lower.slice(7);
  if (lower === "0:0:0:0:0:0:0:0" || lower === "::0") return "::";
  if (lower === "0:0:0:0:0:0:0:1") return "::1";
  return lower;
}

/** Addresses a connection to which would arrive at this host. */
function isLocal(ip: string): boolean {
  if (ip.startsWith("127.") || ip === "::1" || WILDCARD.has(ip)) return true;
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
    throw new ConfigError("listen-addr", listen.address, `failed to resolve listen host ${JSON.stringify(listen.host)}: ${errorText(e)}`);
  }
  const wildcard = listenIPs.some((ip) => WILDCARD.has(ip));
  for (const ep of endpoints) {
    let ips: string[];
    try {
      ips = (await resolveAll(ep.dialHost ?? ep.host)).map(canonicalIP);
    } catch (e) {
      throw new ConfigError("endpoints", ep.address, `failed to resolve endpoint host ${JSON.stringify(ep.host)}: ${errorText(e)}`);
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
