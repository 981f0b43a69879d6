/**
 * Wires a gateway together from validated options: member table, health, policy, listener.
 * Tests and the CLI both start gateways through `startGateway`.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { existsSync, unlinkSync } from "node:fs";
import { connect as netConnect, isIP } from "node:net";
import { networkInterfaces } from "node:os";
import type { GatewayOptions } from "./config.ts";
import { ConfigError } from "./config.ts";
import { discoverSrv, type SrvOptions } from "./discovery/srv.ts";
import { startRefresh } from "./discovery/refresh.ts";
import { systemDnsServer } from "./discovery/dns.ts";
import type { DiscoveryStats } from "./metrics.ts";
import { openAccessLog, type AccessLog } from "./accesslog.ts";
import { MemberTable, type EndpointSpec, type HostPort, type ListenAddress, type Member } from "./endpoints.ts";
import { createMemberHealth, type MemberHealth } from "./health.ts";
import { errorText, type Logger } from "./log.ts";
import { startProxy, type Proxy } from "./proxy.ts";
import { createPolicy, type Policy } from "./select.ts";

export interface Gateway {
  readonly members: MemberTable;
  readonly policy: Policy;
  readonly health: MemberHealth;
  readonly proxy: Proxy;
  /** Applies `--close-on-member-down` to `member` (workers call it when the primary says so). */
  memberDown(member: Member): void;
  /** Re-reads `--endpoints-file` and re-runs discovery now (SIGHUP); a no-op in workers. */
  refresh(): Promise<void>;
  /** `--access-log`, or null. */
  readonly accessLog: AccessLog | null;
  /** The options in force (a reload changes the live ones). */
  readonly options: GatewayOptions;
  /** Applies a reloaded configuration: what can change live, and the names of what needs a restart. */
  reconfigure(next: GatewayOptions): Promise<{ applied: string[]; restart: string[] }>;
  readonly discoveryStats: DiscoveryStats;
  /** The bound port (differs from the option when it was 0 in tests). */
  readonly port: number;
  /**
   * Stops accepting, waits up to `timeoutMs` for open connections to finish, then resets the rest.
   * Resolves to the number of connections that had to be reset.
   */
  drain(timeoutMs: number): Promise<number>;
}

/** How a process takes part in a multi-process gateway (src/workers.ts); absent for a single one. */
export interface GatewayRole {
  /** Share the listen port with the other processes (SO_REUSEPORT). */
  reusePort: boolean;
  /** A worker's member health, which defers to the primary; absent in the primary. */
  health?: (members: MemberTable) => MemberHealth;
  /** The primary's hook, called after every member state change. */
  onChange?: () => void;
}

/**
 * Checks the endpoints against the listen address (unless a worker, whose primary did), then listens.
 * The caller logs `ready to proxy client requests`.
 *
 * @throws {ConfigError} when the listen host or an endpoint host does not resolve, or an endpoint
 * resolves to the gateway's own listen address (a self-loop), or the address cannot be bound.
 */
export async function startGateway(opts: GatewayOptions, log: Logger, role?: GatewayRole): Promise<Gateway> {
  const primary = role?.health === undefined;
  // Discovery and its checks run in the primary (or single) process; workers get the set from it.
  const srv = primary && opts.discoverySrv !== null ? srvOptions(opts) : null;
  let initialTtl = 0;
  if (srv !== null) {
    try {
      const found = await discoverSrv(srv, log);
      opts = { ...opts, endpoints: found.endpoints };
      initialTtl = found.ttl;
    } catch (e) {
      throw new ConfigError("discovery-srv", srv.domain, errorText(e));
    }
  }
  if (primary) await checkSelfLoops(opts.listenAddrs, opts.endpoints);
  if (primary) for (const a of opts.listenAddrs) if (a.kind === "unix") await clearStaleSocket(a.path);
  const members = new MemberTable(opts.endpoints);
  let proxy: Proxy | undefined;
  const health =
    role?.health?.(members) ??
    createMemberHealth({
      members,
      health: opts.health,
      log,
      onChange: (m, _from, to) => {
        if (to !== "up") memberDown(m);
        role?.onChange?.();
      },
    });
  /**
   * `--close-on-member-down`: reset the connections of a member that went down, so gRPC clients
   * reconnect through the gateway now instead of after their keepalive; only when a usable member
   * exists to take them (else they would come straight back to the same member).
   */
  const memberDown = (m: Member) => {
    if (!opts.closeOnMemberDown || proxy === undefined || !members.list.some((o) => o.active)) return;
    const closed = proxy.closeMember(m);
    if (closed > 0) log.warn("closed connections to a member that went down", { address: m.address, state: m.state, connections: closed });
  };
  let policy = createPolicy(opts.policy, members);
  let accessLog: AccessLog | null = null;
  if (opts.accessLog !== null) {
    try {
      accessLog = openAccessLog(opts.accessLog);
    } catch (e) {
      throw new ConfigError("access-log", opts.accessLog, `cannot open: ${errorText(e)}`);
    }
  }
  try {
    proxy = startProxy({
      // Workers share the TCP ports (SO_REUSEPORT); a unix socket has one owner, the primary.
      addresses: primary ? opts.listenAddrs : opts.listenAddrs.filter((a) => a.kind === "tcp"),
      socketMode: opts.listenSocketMode,
      maxConnections: opts.maxConnections,
      idleTimeoutMs: opts.idleTimeoutMs,
      reusePort: role?.reusePort === true || opts.reusePort,
      accessLog,
      upstreamTls: opts.upstreamTls,
      listenTls: opts.listenTls,
      policy,
      health,
      connectTimeoutMs: opts.connectTimeoutMs,
      keepAliveMs: opts.keepAliveMs,
      log,
    });
  } catch (e) {
    throw new ConfigError("listen-addr", opts.listenAddrs.map((a) => a.address).join(","), `cannot listen: ${errorText(e)}`);
  }
  health.start();
  const started = proxy;
  /** Makes `next` the endpoint set (self-loops dropped), logged once; shared with workers. */
  const applyEndpoints = async (next: EndpointSpec[], source: string) => {
    const usable: EndpointSpec[] = [];
    for (const ep of next) {
      try {
        await checkSelfLoops(opts.listenAddrs, [ep]);
        usable.push(ep);
      } catch (e) {
        log.error("ignoring discovered endpoint", { source, endpoint: ep.address, error: errorText(e) });
      }
    }
    if (usable.length === 0) {
      log.warn("discovery yielded no usable endpoint; keeping the current endpoints", { source });
      return;
    }
    const { added, removed } = members.replace(usable);
    if (added.length === 0 && removed.length === 0) return;
    health.membersChanged(added, removed);
    log.info("endpoints changed", {
      source,
      added: added.map((m) => m.address),
      removed: removed.map((m) => m.address),
      endpoints: members.list.map((m) => m.address),
    });
    role?.onChange?.();
  };
  const discoveryStats: DiscoveryStats = { refreshes: 0, failures: 0, lastGoodAt: srv !== null ? Date.now() : 0 };
  const refresher = !primary
    ? null
    : startRefresh({
        stats: discoveryStats,
        options: {
          srv,
          initialTtl,
          refreshMinMs: opts.discovery.refreshMinMs,
          refreshMaxMs: opts.discovery.refreshMaxMs,
          syncIntervalMs: opts.discovery.syncIntervalMs,
          syncTLS: opts.health.tls,
          timeoutMs: opts.health.timeoutMs,
          endpointsFile: opts.discovery.endpointsFile,
        },
        seeds: opts.endpoints,
        table: members,
        log,
        apply: applyEndpoints,
      });
  /** SIGHUP: applies what can change live, reports what needs a restart. */
  const reconfigure = async (next: GatewayOptions): Promise<{ applied: string[]; restart: string[] }> => {
    const applied: string[] = [];
    const restart: string[] = [];
    const differs = (a: unknown, b: unknown) => JSON.stringify(a) !== JSON.stringify(b);
    const restartOnly: [string, unknown, unknown][] = [
      ["listen-addr", opts.listenAddrs, next.listenAddrs],
      ["listen-socket-mode", opts.listenSocketMode, next.listenSocketMode],
      ["workers", opts.workers, next.workers],
      ["reuse-port", opts.reusePort, next.reusePort],
      ["admin-addr", opts.adminAddr, next.adminAddr],
      ["discovery-srv", [opts.discoverySrv, opts.discoverySrvName, opts.insecureDiscovery, opts.trustedCaFile], [next.discoverySrv, next.discoverySrvName, next.insecureDiscovery, next.trustedCaFile]],
      ["discovery", opts.discovery, next.discovery],
      ["log-format", opts.logFormat, next.logFormat],
      ["access-log", opts.accessLog, next.accessLog],
    ];
    for (const [name, a, b] of restartOnly) if (differs(a, b)) restart.push(name);
    if (next.logLevel !== opts.logLevel) {
      log.setLevel(next.logLevel);
      applied.push("log-level");
    }
    if (next.policy !== opts.policy) {
      policy = createPolicy(next.policy, members);
      started.configure({ policy });
      applied.push("policy");
    }
    const live = ["connectTimeoutMs", "keepAliveMs", "maxConnections", "idleTimeoutMs", "upstreamTls", "listenTls"] as const;
    const changes = Object.fromEntries(live.filter((k) => differs(next[k], opts[k])).map((k) => [k, next[k]]));
    if (Object.keys(changes).length > 0) {
      started.configure(changes);
      applied.push(...Object.keys(changes).map((k) => FLAG_OF[k as keyof typeof FLAG_OF]));
    }
    const h = opts.health;
    const nh = { ...next.health, retryDelayMs: next.retryDelayMs, connectTimeoutMs: next.connectTimeoutMs };
    if (differs({ ...h, tls: null }, { ...nh, tls: null }) || differs(h.tls, nh.tls)) {
      const wasActive = h.check !== "none";
      Object.assign(h, nh); // health reads these where it uses them
      if (!wasActive && h.check !== "none") health.start();
      applied.push("health-*");
    }
    for (const k of ["closeOnMemberDown", "drainTimeoutMs", "retryDelayMs"] as const) {
      if (next[k] !== opts[k]) applied.push(FLAG_OF[k]);
    }
    if (opts.discoverySrv === null && opts.discovery.endpointsFile === null && differs(opts.endpoints.map((e) => e.address), next.endpoints.map((e) => e.address))) {
      await applyEndpoints(next.endpoints, "config reload");
      applied.push("endpoints");
    }
    // Keep what took effect; what needs a restart keeps its running value.
    Object.assign(opts, {
      logLevel: next.logLevel,
      policy: next.policy,
      connectTimeoutMs: next.connectTimeoutMs,
      keepAliveMs: next.keepAliveMs,
      maxConnections: next.maxConnections,
      idleTimeoutMs: next.idleTimeoutMs,
      upstreamTls: next.upstreamTls,
      listenTls: next.listenTls,
      closeOnMemberDown: next.closeOnMemberDown,
      drainTimeoutMs: next.drainTimeoutMs,
      retryDelayMs: next.retryDelayMs,
      endpoints: next.endpoints,
    });
    return { applied, restart };
  };

  return {
    members,
    get policy() {
      return policy;
    },
    health,
    proxy: started,
    memberDown,
    discoveryStats,
    options: opts,
    reconfigure,
    accessLog,
    refresh: async () => {
      log.info("reloading endpoints (SIGHUP)");
      await refresher?.refreshNow();
    },
    port: started.port,
    async drain(timeoutMs) {
      started.stopAccepting();
      health.stop();
      refresher?.stop();
      let timer: Timer | undefined;
      const timedOut = await Promise.race([
        started.idle().then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (!timedOut) return 0;
      const left = started.active;
      started.closeAll("drained");
      return left;
    },
  };
}

function srvOptions(opts: GatewayOptions): SrvOptions {
  return {
    domain: opts.discoverySrv!,
    serviceName: opts.discoverySrvName,
    insecure: opts.insecureDiscovery,
    trustedCaFile: opts.trustedCaFile,
    dnsServer: opts.discovery.dnsServer ?? systemDnsServer(),
    resolveTargets: opts.discovery.dnsServer !== null,
    timeoutMs: Math.max(opts.connectTimeoutMs, 2000),
  };
}

/** The flag behind each live-reloadable option, for the `applied` list of `config reloaded`. */
const FLAG_OF = {
  connectTimeoutMs: "connect-timeout",
  keepAliveMs: "keepalive-time",
  maxConnections: "max-connections",
  idleTimeoutMs: "idle-timeout",
  upstreamTls: "upstream-*",
  listenTls: "listen-cert",
  closeOnMemberDown: "close-on-member-down",
  drainTimeoutMs: "drain-timeout",
  retryDelayMs: "retry-delay",
} as const;

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
 * A socket file at `path` is only removed when nothing answers on it (a process that died left it);
 * a live one means another process serves there.
 */
async function clearStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = netConnect({ path });
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    setTimeout(() => done(false), 500);
  });
  if (live) throw new ConfigError("listen-addr", `unix://${path}`, `cannot listen: ${path} is in use by another process`);
  unlinkSync(path);
}

/** checkSelfLoop for every TCP listener. */
export async function checkSelfLoops(listeners: readonly ListenAddress[], endpoints: readonly EndpointSpec[]): Promise<void> {
  for (const l of listeners) if (l.kind === "tcp") await checkSelfLoop(l.tcp, endpoints);
}

/**
 * Refuses endpoints that resolve to the gateway's own listen address and port, including a wildcard
 * listen (`0.0.0.0`, `::`) with a loopback or local endpoint on the same port, which etcd's gateway
 * misses (it then dials itself until it runs out of file descriptors).
 */
export async function checkSelfLoop(listen: HostPort, endpoints: readonly EndpointSpec[]): Promise<void> {
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
        throw new ConfigError(
          "endpoints",
          ep.address,
          `endpoint (${ep.address}->${ip}:${ep.port}) should not resolve to the gateway listen addr (${listen.address})`,
        );
      }
    }
  }
}
