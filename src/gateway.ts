/**
 * One gateway process, assembled from a settings snapshot: the member table, health (in the
 * primary), the policy, the data path and discovery; and what a reload or a drain does to them.
 * Tests and src/serve.ts both start gateways through `startGateway`.
 *
 * @module
 */
import { openAccessLog, type AccessLog } from "./accesslog.ts";
import type { EndpointSpec } from "./addresses.ts";
import type { DiscoveryStats } from "./counters.ts";
import { Proxy } from "./datapath/proxy.ts";
import type { Connect, DialReports } from "./datapath/dialer.ts";
import { clearStaleSocket } from "./datapath/listeners.ts";
import { ListenError, SocketSet, type ListenSocket } from "./datapath/sockets.ts";
import { systemDnsServer } from "./discovery/dns.ts";
import { Refresher } from "./discovery/refresh.ts";
import { discoverSrv, type SrvOptions } from "./discovery/srv.ts";
import { ConfigError } from "./flags.ts";
import { Health, realWorld } from "./health/monitor.ts";
import { errorText, type Logger } from "./log.ts";
import { MemberTable, type Member } from "./members.ts";
import { createPolicy, type Policy } from "./select.ts";
import type { Matched } from "./inherit.ts";
import { checkSelfLoops } from "./selfloop.ts";
import { after } from "./timers.ts";
import { reloadSettings, SettingsStore, type Reloaded, type Settings } from "./settings.ts";

/** How a process takes part in a multi-process gateway (src/workers.ts), and what it was handed. */
export interface GatewayRole {
  /** In the primary: the processes that accept (--workers), so the sockets it binds per TCP address. @default 1 */
  readonly processes?: number;
  /** Listening sockets handed to this process (systemd, the gateway it replaces, or its primary), by address (src/inherit.ts). */
  readonly handed?: Matched;
  /** In a worker: where dial outcomes go (the primary); the primary decides member state and runs discovery. */
  readonly reports?: (members: MemberTable) => DialReports;
  /** Called after every member state change and endpoint set change (the primary shares them with workers). */
  readonly changed?: () => void;
  /** How sockets to members are opened (tests). */
  readonly connect?: Connect;
}

export class Gateway {
  #policy: Policy;
  #refresher: Refresher | null = null;

  constructor(
    readonly store: SettingsStore,
    readonly members: MemberTable,
    readonly health: Health | null,
    readonly proxy: Proxy,
    readonly accessLog: AccessLog | null,
    readonly discoveryStats: DiscoveryStats,
    private readonly log: Logger,
    private readonly role: GatewayRole,
  ) {
    this.#policy = createPolicy(store.current.flags.policy, members);
  }

  /** The settings in force. */
  get settings(): Settings {
    return this.store.current;
  }

  get policy(): Policy {
    return this.#policy;
  }

  /** The bound port of the first TCP listener (differs from the flag when it was 0 in tests). */
  get port(): number {
    return this.proxy.port;
  }

  /** Starts discovery refreshes (the primary only). */
  startRefresher(srv: SrvOptions | null, initialTtl: number): void {
    const s = this.settings;
    const options = {
      srv,
      initialTtl,
      refreshMinMs: s.flags["discovery-refresh-min"],
      refreshMaxMs: s.flags["discovery-refresh-max"],
      syncIntervalMs: s.flags["endpoints-auto-sync-interval"],
      syncTLS: s.health.tls,
      timeoutMs: s.health.timeoutMs,
      clusterId: () => this.health?.cluster.id ?? null,
    };
    this.#refresher = new Refresher(options, this.members.list.map((m) => ({ ...m.endpoint, tls: m.tls })), this.members, (e, source) => this.applyEndpoints(e, source), this.discoveryStats, this.log);
  }

  /**
   * `--close-on-member-down`: reset the connections of a member that went down, so gRPC clients
   * reconnect through the gateway now instead of after their keepalive; only when a usable member
   * exists to take them (else they would come straight back to the same member). Spares are checked
   * rarely, so the one that would take the clients is checked first (in the primary; a worker
   * follows the state its primary shares).
   */
  memberDown(m: Member): void {
    if (!this.settings.flags["close-on-member-down"] || !this.members.anyUsable) return;
    if (m.connections === 0) return;
    const next = this.policy.preferred() ?? this.members.list.find((o) => o.usable);
    if (this.health === null || next === undefined) return this.closeConnections(m);
    void this.health.verify(next).then((ok) => {
      if (ok && m.state !== "up") this.closeConnections(m);
    });
  }

  private closeConnections(m: Member): void {
    const closed = this.proxy.closeMember(m);
    if (closed > 0) this.log.warn("closed connections to a member that went down", { address: m.address, state: m.state, connections: closed });
  }

  /** Makes `next` the endpoint set (self-loops dropped), logged once. */
  async applyEndpoints(next: readonly EndpointSpec[], source: string): Promise<void> {
    const usable: EndpointSpec[] = [];
    for (const ep of next) {
      try {
        await checkSelfLoops(this.settings.listenAddrs, [ep]);
        usable.push(ep);
      } catch (e) {
        this.log.error("ignoring discovered endpoint", { source, endpoint: ep.address, error: errorText(e) });
      }
    }
    if (usable.length === 0) {
      this.log.warn("discovery yielded no usable endpoint; keeping the current endpoints", { source });
      return;
    }
    const { added, removed } = this.members.replace(usable);
    if (added.length === 0 && removed.length === 0) return;
    this.health?.membersChanged(added, removed);
    this.log.info("endpoints changed", { source, added: added.map((m) => m.address), removed: removed.map((m) => m.address), endpoints: this.members.list.map((m) => m.address) });
    this.role.changed?.();
  }

  /**
   * Makes `loaded` (a freshly built snapshot) the settings in force, except what needs a restart,
   * and acts on what changed. The caller runs one reload at a time.
   */
  async reload(loaded: Settings): Promise<Reloaded> {
    const r = reloadSettings(this.settings, loaded);
    const previous = this.store.swap(r.settings);
    const has = (flag: (typeof r.applied)[number]) => r.applied.includes(flag);
    this.log.setLevel(r.settings.flags["log-level"]);
    if (has("policy")) this.#policy = createPolicy(r.settings.flags.policy, this.members);
    this.proxy.settingsChanged(r.applied);
    if (has("max-connections")) warnAboveFdCap(r.settings, this.proxy, this.log);
    this.health?.settingsChanged(previous.health);
    if (this.role.reports === undefined && (has("endpoints") || has("endpoints-file"))) {
      const file = r.settings.flags["endpoints-file"];
      await this.#refresher?.staticChanged(r.settings.endpoints, file === null ? "config reload" : `endpoints file ${file.path}`);
    }
    return r;
  }

  /** Re-runs discovery now (SIGHUP, in the primary). */
  async refresh(): Promise<void> {
    await this.#refresher?.refreshNow();
  }

  /**
   * Stops accepting, waits up to `timeoutMs` for open connections to finish, then resets the rest.
   * Resolves to the number of connections that had to be reset. `handedOver`: a new gateway holds
   * the listening sockets (an upgrade), so the unix socket files stay.
   */
  async drain(timeoutMs: number, handedOver = false): Promise<number> {
    this.proxy.stopAccepting(handedOver);
    this.health?.stop();
    this.#refresher?.stop();
    let cancel = () => {};
    const timedOut = await Promise.race([this.proxy.idle().then(() => false), new Promise<boolean>((r) => (cancel = after(timeoutMs, () => r(true))))]);
    cancel();
    if (!timedOut) return 0;
    const left = this.proxy.active;
    this.proxy.closeAll("drained");
    return left;
  }
}

/**
 * Starts a gateway: in the primary (or a single process) discovers the endpoints and checks them
 * against the listen addresses first; then listens. The caller logs `ready to proxy client requests`.
 *
 * @throws {ConfigError} when discovery yields nothing, a host does not resolve, an endpoint is the
 * gateway itself (a self-loop), the access log cannot be opened, or an address cannot be bound.
 */
export async function startGateway(settings: Settings, log: Logger, role: GatewayRole = {}): Promise<Gateway> {
  const primary = role.reports === undefined;
  const srv = primary && settings.flags["discovery-srv"] !== null ? srvOptions(settings) : null;
  let endpoints = settings.endpoints;
  let initialTtl = 0;
  if (srv !== null) {
    try {
      const found = await discoverSrv(srv, log);
      endpoints = found.endpoints;
      initialTtl = found.ttl;
    } catch (e) {
      throw new ConfigError("discovery-srv", srv.domain, errorText(e));
    }
  }
  if (primary) {
    await checkSelfLoops(settings.listenAddrs, endpoints);
    for (const a of settings.listenAddrs) if (a.kind === "unix" && !role.handed?.listen.has(a.address)) await clearStaleSocket(a.path);
  }
  const store = new SettingsStore(settings);
  const members = new MemberTable(endpoints, primary ? log : null);
  let gw: Gateway | undefined;
  const inUse = (m: Member) => m.connections > 0 || gw?.policy.preferred() === m;
  const chosen = (m: Member) => {
    const p = gw?.policy.preferred();
    return p === undefined ? inUse(m) : p === m;
  };
  const health = primary ? new Health(members, () => store.current.health, log, inUse, realWorld, chosen) : null;
  const accessLog = openLog(settings, log);
  const discoveryStats: DiscoveryStats = { refreshes: 0, failures: 0, lastGoodAt: srv !== null ? Date.now() : 0 };
  const proxy = listen(settings, role, {
    settings: () => store.current,
    policy: () => gw!.policy,
    members: () => members.list,
    reports: role.reports?.(members) ?? health!,
    accessLog,
    log,
  });
  warnAboveFdCap(settings, proxy, log);
  gw = new Gateway(store, members, health, proxy, accessLog, discoveryStats, log, role);
  const started = gw;
  members.onChange((m, from, to) => {
    if (from !== to && to !== "up") started.memberDown(m);
    proxy.closeIdleOfDrained([...members.list, ...members.retired].some((o) => o.drain === "close-idle"));
    role.changed?.();
  });
  health?.start();
  if (primary) gw.startRefresher(srv, initialTtl);
  return gw;
}

/** At start and on a reload: a --max-connections the open-files limit cannot hold is lowered, and said so. */
function warnAboveFdCap(settings: Settings, proxy: Proxy, log: Logger): void {
  const asked = settings.flags["max-connections"];
  if (asked > proxy.fdCap) log.warn("--max-connections is above what the open-files limit allows; the lower value applies", { "max-connections": asked, allowed: proxy.fdCap });
}

function openLog(settings: Settings, log: Logger): AccessLog | null {
  const target = settings.flags["access-log"];
  if (target === null) return null;
  try {
    return openAccessLog(target, log);
  } catch (e) {
    throw new ConfigError("access-log", target, `cannot open: ${errorText(e)}`);
  }
}

function listen(settings: Settings, role: GatewayRole, opts: Omit<ConstructorParameters<typeof Proxy>[0], "sockets" | "accept">): Proxy {
  let sockets: SocketSet;
  let accept: readonly ListenSocket[];
  try {
    if (role.reports !== undefined) {
      // A worker accepts on the sockets its primary handed it (the primary holds every one).
      sockets = SocketSet.of(settings.listenAddrs.flatMap((a) => (role.handed?.listen.get(a.address) ?? []).map((s) => ({ address: a, fd: s.fd, file: null, owner: s.owner }))));
      if (sockets.all.length === 0) throw new Error("no listening socket was handed to this worker");
      accept = sockets.all;
    } else {
      const processes = role.processes ?? 1;
      const shared = settings.flags["reuse-port"];
      // A taken address is an error unless sharing it was asked for (--reuse-port).
      const opts = { count: processes, socketMode: settings.flags["listen-socket-mode"], reusePort: shared || processes > 1, exclusive: !shared };
      sockets = SocketSet.bind(settings.listenAddrs, opts, role.handed?.listen ?? new Map());
      accept = sockets.forProcess(0, processes);
    }
  } catch (e) {
    if (e instanceof ListenError) throw new ConfigError("listen-addr", e.address, e.message);
    throw new ConfigError("listen-addr", settings.listenAddrs.map((a) => a.address).join(","), `cannot listen: ${errorText(e)}`);
  }
  try {
    return new Proxy({ ...opts, sockets, accept, connect: role.connect });
  } catch (e) {
    sockets.close(false);
    throw new ConfigError("listen-addr", settings.listenAddrs.map((a) => a.address).join(","), `cannot listen: ${errorText(e)}`);
  }
}

function srvOptions(s: Settings): SrvOptions {
  const f = s.flags;
  return {
    domain: f["discovery-srv"]!,
    serviceName: f["discovery-srv-name"],
    insecure: f["insecure-discovery"],
    trustedCaFile: f["trusted-ca-file"],
    dnsServer: f["dns-server"] ?? systemDnsServer(),
    resolveTargets: f["dns-server"] !== null,
    timeoutMs: Math.max(f["connect-timeout"], 2000),
  };
}
