/**
 * DNS SRV discovery, as `etcd gateway --discovery-srv` does it (same names, same order, same
 * error shape), but with what etcd's docs promise and its code never did: `_etcd-client-ssl`
 * records are verified with a real TLS handshake against `--trusted-ca-file` (or the system CAs)
 * with the discovery domain as server name.
 *
 * @module
 */
import { formatHostPort, type EndpointSpec } from "../addresses.ts";
import { readFileOffLoop } from "../limits.ts";
import type { Logger } from "../log.ts";
import { dialErrorText, lookupErrorText, readErrorText } from "../neterror.ts";
import { resolve, type DnsRecord } from "./dns.ts";

export interface SrvOptions {
  domain: string;
  /** `--discovery-srv-name`: `_etcd-client-ssl-<name>._tcp` / `_etcd-client-<name>._tcp`. */
  serviceName: string | null;
  /** `--insecure-discovery`: keep plain records, verify nothing. */
  insecure: boolean;
  trustedCaFile: string | null;
  /** "host:port" of the resolver for SRV and target A/AAAA records. */
  dnsServer: string;
  /** Resolve targets with `dnsServer` and dial the IPs (needed when it is not the system's resolver). */
  resolveTargets: boolean;
  timeoutMs: number;
}

export interface SrvResult {
  endpoints: EndpointSpec[];
  /** The smallest TTL of the records used, in seconds: when to ask again. */
  ttl: number;
}

/** Discovery could not produce endpoints; the message is etcd's where etcd has one. */
export class DiscoveryError extends Error {
  override name = "DiscoveryError";
}

/** The two SRV names etcd queries, TLS first. */
export function srvNames(domain: string, serviceName: string | null): { ssl: string; plain: string } {
  const suffix = serviceName ? `-${serviceName}` : "";
  return { ssl: `_etcd-client-ssl${suffix}._tcp.${domain}`, plain: `_etcd-client${suffix}._tcp.${domain}` };
}

/**
 * Queries both SRV names and turns the records into endpoints (RFC 2782 priority and weight kept;
 * a "." target means no service and is skipped).
 *
 * @throws {DiscoveryError} `dns lookup errors: <ssl error> and <plain error>` when both lookups
 * fail (etcd's shape), or when no endpoint survives validation (never a silent fallback).
 */
export async function discoverSrv(opts: SrvOptions, log: Logger): Promise<SrvResult> {
  const names = srvNames(opts.domain, opts.serviceName);
  const dnsOpts = { timeoutMs: opts.timeoutMs, tries: 2 };
  const [ssl, plain] = await Promise.allSettled([
    resolve(opts.dnsServer, names.ssl, "SRV", dnsOpts),
    resolve(opts.dnsServer, names.plain, "SRV", dnsOpts),
  ]);
  if (ssl.status === "rejected" && plain.status === "rejected") {
    throw new DiscoveryError(`dns lookup errors: ${lookupErrorText(ssl.reason, names.ssl)} and ${lookupErrorText(plain.reason, names.plain)}`);
  }
  const records: { r: Extract<DnsRecord, { type: "SRV" }>; tls: boolean }[] = [];
  if (ssl.status === "fulfilled") for (const r of ssl.value) if (r.type === "SRV") records.push({ r, tls: true });
  if (plain.status === "fulfilled") for (const r of plain.value) if (r.type === "SRV") records.push({ r, tls: false });
  let ttl = Math.min(...records.map(({ r }) => r.ttl), 300);

  let endpoints: EndpointSpec[] = [];
  for (const { r, tls } of records) {
    if (r.target === "." || r.target === "") continue;
    if (!opts.insecure && !tls) {
      log.warn("ignoring insecure SRV record (use --insecure-discovery to accept it)", { record: names.plain, endpoint: formatHostPort(r.target, r.port) });
      continue;
    }
    let dialHost = r.target;
    if (opts.resolveTargets) {
      try {
        const found = await resolveAddress(opts.dnsServer, r.target, dnsOpts);
        dialHost = found.address;
        ttl = Math.min(ttl, found.ttl);
      } catch (e) {
        log.warn("cannot resolve SRV target", { target: r.target, error: lookupErrorText(e, r.target) });
        continue;
      }
    }
    endpoints.push({ host: r.target, port: r.port, address: formatHostPort(r.target, r.port), priority: r.priority, weight: r.weight, tls, dialHost });
  }
  // Lower priority first, then by weight: the order logs, `ordered` and rotation follow.
  endpoints.sort((a, b) => (a.priority ?? 0) - (b.priority ?? 0) || (b.weight ?? 0) - (a.weight ?? 0));
  log.info("discovered cluster from SRV", { "srv-server": opts.domain, endpoints: endpoints.map((e) => `${e.tls ? "https" : "http"}://${e.address}`) });

  if (!opts.insecure) {
    log.info("validating discovered SRV endpoints", { "srv-server": opts.domain, endpoints: endpoints.map((e) => e.address) });
    const ca = opts.trustedCaFile === null ? undefined : await readFileOffLoop(opts.trustedCaFile);
    const verdicts = await Promise.all(endpoints.map((e) => verifyTLS(e, opts.domain, ca, opts.timeoutMs)));
    const failed = endpoints.filter((e, i) => {
      const reason = verdicts[i];
      if (reason !== null) log.warn("failed to validate discovered endpoint", { "srv-server": opts.domain, endpoint: e.address, error: reason });
      return reason !== null;
    });
    endpoints = endpoints.filter((_, i) => verdicts[i] === null);
    if (failed.length === 0) log.info("using validated discovered SRV endpoints", { "srv-server": opts.domain, endpoints: endpoints.map((e) => e.address) });
    else log.warn("failed to validate discovered endpoints", { "srv-server": opts.domain, endpoints: endpoints.map((e) => e.address), failed: failed.map((e) => e.address) });
  }
  if (endpoints.length === 0) {
    throw new DiscoveryError(`no usable endpoints from SRV records of ${names.ssl} and ${names.plain}${opts.insecure ? "" : " (only TLS-verified _etcd-client-ssl records are used without --insecure-discovery)"}`);
  }
  return { endpoints, ttl: Math.max(ttl, 0) };
}

/** First A record of `name`, else first AAAA. */
async function resolveAddress(server: string, name: string, opts: { timeoutMs: number; tries: number }): Promise<{ address: string; ttl: number }> {
  let last: unknown = new DiscoveryError(`no address for ${name}`);
  for (const type of ["A", "AAAA"] as const) {
    try {
      const [r] = await resolve(server, name, type, opts);
      if (r !== undefined && (r.type === "A" || r.type === "AAAA")) return { address: r.address, ttl: r.ttl };
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

/**
 * A TLS handshake with `endpoint`, verifying its certificate against `ca` (or the system CAs) for
 * the discovery domain; resolves to null when it verifies, else the reason.
 */
function verifyTLS(endpoint: EndpointSpec, domain: string, ca: string | undefined, timeoutMs: number): Promise<string | null> {
  const target = { network: "tcp", address: formatHostPort(endpoint.dialHost ?? endpoint.host, endpoint.port) } as const;
  // In Go's words (src/neterror.ts): a reset during the handshake is a read, the rest a dial or TLS failure.
  const why = (err: unknown) => ((err as { code?: unknown }).code === "ECONNRESET" ? readErrorText(err, target) : dialErrorText(err, target, { serverName: domain }));
  return new Promise((done) => {
    let settled = false;
    const finish = (reason: string | null, s?: { end(): void }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s?.end();
      done(reason);
    };
    const timer = setTimeout(() => finish(`${target.address}: tls: handshake timeout after ${timeoutMs}ms`), timeoutMs);
    Bun.connect({
      hostname: endpoint.dialHost ?? endpoint.host,
      port: endpoint.port,
      tls: { ca, serverName: domain, rejectUnauthorized: true },
      socket: {
        // Trap 8: with a handshake handler, open fires before the handshake; the verdict is here.
        handshake(s, ok, err) {
          finish(ok && s.authorized ? null : why(err ?? new Error("certificate not authorized")), s);
        },
        data() {},
        close() {
          finish("connection closed during the TLS handshake");
        },
      },
    }).catch((e: unknown) => finish(why(e)));
  });
}
