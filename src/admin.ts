/**
 * The admin endpoint (`--admin-addr`): `/metrics` (Prometheus), `/healthz` (process alive),
 * `/readyz` (200 only while a member is usable), `/status` (JSON member table), and the one thing
 * it changes: a member's drain (`POST /members/<endpoint>/drain`, `…/ready`), written through the
 * member table, and taken only on a unix socket address (issue 20: over TCP any local user could
 * drain every member), as HAProxy's stats socket changes server state only at `level admin`. It
 * never touches the data path. The HTTP server, its bounds, who is privileged and the Host check
 * are in src/admin-http.ts.
 *
 * @module
 */
import { hostname } from "node:os";
import { isIP } from "node:net";
import type { ListenAddress } from "./addresses.ts";
import { ADMIN_LIMITS, GET_ONLY, serveHttp, type HostRule, type HttpEvent, type HttpListener, type Reply, type Request } from "./admin-http.ts";
import { formatDuration } from "./duration.ts";
import { parseBoolean } from "./flags.ts";
import type { Gateway } from "./gateway.ts";
import type { Inherited } from "./inherit.ts";
import { errorText, type Logger } from "./log.ts";
import { memberViews, mergeStats, processStats, renderMetrics, type ProcessStats } from "./metrics.ts";

/** The JSON of `GET /status`; also what `etcd-gateway status --json` prints. */
export interface Status {
  version: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  listener: { address: string; accepted: number; active: number };
  policy: string;
  workers: number;
  /** At least one member is usable: what `/readyz` answers 200 for. */
  ready: boolean;
  members: {
    endpoint: string;
    state: string;
    /** An operator drained it (`etcd-gateway member drain`): no new connections. */
    drained: boolean;
    /** Drained with close-idle: its connections are reset once idle for a second. */
    closeIdle: boolean;
    reason: string;
    priority: number;
    weight: number;
    connections: number;
    connectionsTotal: number;
    failedDials: number;
    lastSuccessAgoSeconds: number | null;
    /** Whether it answered its last health check at all (null: not checked yet, or no active checks). */
    alive: boolean | null;
    /** The cluster ID (hex) it reported in its last full check. */
    clusterId: string | null;
  }[];
  /** The cluster the gateway fronts (absent before issue 19). */
  cluster?: {
    /** Its ID (hex): `--cluster-id`, or learned from the members; null until known. */
    id: string | null;
    pinned: boolean;
    /** Alarms raised in it, by the member they are on (hex ID). */
    alarms: { alarm: string; member: string }[];
  };
  config: Record<string, unknown>;
}

/** What the admin endpoint shows besides the gateway itself. */
export interface AdminContext {
  readonly version: string;
  /** Date.now() at process start. */
  readonly startedAt: number;
  /** With --workers: the other processes' counters, summed into /status and /metrics. */
  readonly workerStats: () => Promise<ProcessStats[]>;
  /** For the endpoint's own warnings (evictions at its connection cap, refused Host names). */
  readonly log: Logger;
}

/** The whole gateway's counters: this process's plus the workers'. */
async function counters(gw: Gateway, ctx: AdminContext): Promise<ProcessStats> {
  const worker = gw.settings.flags.workers > 1 ? 0 : null;
  const members = [...gw.members.list, ...gw.members.retired];
  return mergeStats(processStats(members, gw.proxy.stats, { active: gw.proxy.active, max: gw.proxy.maxConnections }, gw.accessLog?.stats, worker), await ctx.workerStats());
}

export function status(gw: Gateway, ctx: AdminContext, all: ProcessStats): Status {
  const now = performance.now();
  const s = gw.settings;
  const f = s.flags;
  const byAddress = new Map(all.members.map((c) => [c.address, c]));
  const members = memberViews(gw.members, all.members);
  return {
    version: ctx.version,
    pid: process.pid,
    startedAt: new Date(ctx.startedAt).toISOString(),
    uptimeSeconds: (Date.now() - ctx.startedAt) / 1000,
    listener: { address: s.listenAddrs.map((a) => a.address).join(","), accepted: all.listener.accepted, active: all.active },
    policy: f.policy,
    workers: f.workers,
    ready: gw.members.anyUsable,
    members: members.map((m) => {
      const c = byAddress.get(m.address);
      const last = m.lastConnectedAt;
      return {
        endpoint: m.address,
        state: m.state,
        drained: m.drain !== "off",
        closeIdle: m.drain === "close-idle",
        reason: m.reason,
        priority: m.priority,
        weight: m.weight,
        connections: c?.connections ?? 0,
        connectionsTotal: c?.stats.connectionsTotal ?? 0,
        failedDials: m.failures,
        lastSuccessAgoSeconds: last === 0 ? null : (now - last) / 1000,
        alive: m.alive,
        clusterId: m.clusterId,
      };
    }),
    cluster: { id: gw.health?.cluster.id ?? null, pinned: gw.health?.cluster.pinned ?? false, alarms: [...(gw.health?.cluster.alarms ?? [])] },
    config: {
      "health-check": f["health-check"],
      "cluster-id": f["cluster-id"],
      "health-interval": formatDuration(f["health-interval"]),
      "connect-timeout": formatDuration(f["connect-timeout"]),
      "retry-delay": formatDuration(f["retry-delay"]),
      "discovery-srv": f["discovery-srv"],
      "endpoints-auto-sync-interval": formatDuration(f["endpoints-auto-sync-interval"]),
    },
  };
}

const PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8";
const JSON_TYPE = "application/json;charset=utf-8";

/**
 * Serves the admin endpoint on each of `addrs`, within the bounds of src/admin-http.ts (16
 * connections per address, the request head in 5 s and 8 KiB): GET and HEAD of what it shows
 * everywhere, POST of a member's drain on a unix socket only. TCP addresses check the Host header
 * against the names of `hostRule`.
 *
 * @throws {Error} `cannot listen on <address>: <why>` when an address cannot be bound (those bound before it are stopped).
 */
export async function startAdmin(addrs: readonly ListenAddress[], gw: Gateway, ctx: AdminContext, handed: ReadonlyMap<string, Inherited> = new Map()): Promise<HttpListener[]> {
  const f = gw.settings.flags;
  const hosts = hostRule(addrs, f["admin-host-whitelist"] ?? []);
  const route = (req: Request) => {
    const action = MEMBER_ACTION.exec(req.path);
    if (action !== null) return req.method === "POST" ? memberAction(gw, ctx, req, action[1]!, action[2] as "drain" | "ready") : POST_ONLY;
    return req.method === "POST" ? GET_ONLY : show(gw, ctx, req.path);
  };
  const listeners: HttpListener[] = [];
  try {
    for (const a of addrs) {
      const unix = a.kind === "unix";
      listeners.push(await serveHttp(a, route, { privileged: unix, hosts: unix ? null : hosts, socketMode: f["admin-socket-mode"], onEvent: adminWarnings(ctx.log, a.address) }, undefined, handed.get(a.address)));
    }
  } catch (e) {
    for (const l of listeners) l.stop();
    throw e;
  }
  return listeners;
}

/**
 * The names a TCP admin address answers to besides IP literals and `localhost`: the host names of
 * the TCP admin addresses, this host's name, and `--admin-host-whitelist` (`*`: any).
 */
export function hostRule(addrs: readonly ListenAddress[], whitelist: readonly string[]): HostRule {
  const names = new Set(whitelist.filter((n) => n !== "*"));
  for (const a of addrs) if (a.kind === "tcp" && isIP(a.tcp.host) === 0) names.add(a.tcp.host.toLowerCase().replace(/\.$/, ""));
  const own = hostname().toLowerCase().replace(/\.$/, "");
  if (own !== "") names.add(own);
  return { names, any: whitelist.includes("*") };
}

/** How often at most each of the endpoint's warnings is logged; what happened in between is counted into the next line. */
const WARN_EVERY_MS = 10_000;

/** The endpoint's warnings for one address, each at most once per WARN_EVERY_MS with the count since the last. */
function adminWarnings(log: Logger, address: string): (e: HttpEvent) => void {
  const evicted = throttled((n) => log.warn("admin connection limit reached: closed the connection waiting longest on its client", { address, limit: ADMIN_LIMITS.connections, closed: n }));
  let lastHost = "";
  const misdirected = throttled((n) => log.warn("refused an admin request for another host name (DNS rebinding guard)", { address, host: lastHost, refused: n }));
  return (e) => {
    if (e.kind === "evicted") return evicted();
    lastHost = e.host.slice(0, 100);
    misdirected();
  };
}

/** Calls `emit` with the count of calls at once, then at most every WARN_EVERY_MS while calls go on. */
function throttled(emit: (count: number) => void): () => void {
  let count = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const flush = () => {
    timer = undefined;
    if (count === 0) return;
    emit(count);
    count = 0;
    timer = setTimeout(flush, WARN_EVERY_MS);
    timer.unref();
  };
  return () => {
    count++;
    if (timer === undefined) flush();
  };
}

/** GET (and HEAD) of what the endpoint shows. */
async function show(gw: Gateway, ctx: AdminContext, path: string): Promise<Reply> {
  switch (path) {
    case "/metrics": {
      const all = await counters(gw, ctx);
      const text = renderMetrics({ version: ctx.version, startedAt: ctx.startedAt, members: memberViews(gw.members, all.members), counters: all, discovery: gw.discoveryStats, alarms: gw.health?.cluster.alarms ?? [] });
      return { status: 200, body: text, type: PROMETHEUS_TEXT };
    }
    case "/healthz":
      return { status: 200, body: "ok\n" };
    case "/readyz": {
      const ready = gw.members.anyUsable;
      return { status: ready ? 200 : 503, body: ready ? "ready\n" : "no usable member\n" };
    }
    case "/status":
      return { status: 200, body: JSON.stringify(status(gw, ctx, await counters(gw, ctx))), type: JSON_TYPE };
    default:
      return { status: 404, body: "not found: try /metrics, /healthz, /readyz, /status\n" };
  }
}

/** `/members/<endpoint>/drain` and `/members/<endpoint>/ready`, the endpoint as /status lists it (percent-encoded or not). */
const MEMBER_ACTION = /^\/members\/([^/]+)\/(drain|ready)$/;
const POST_ONLY: Reply = { status: 405, body: "method not allowed: use POST\n", headers: { Allow: "POST" } };
const NOT_PRIVILEGED: Reply = { status: 403, body: "refused: this admin address is read-only; drain and ready are taken on the gateway's unix socket admin address (--admin-addr=unix:///path)\n" };

/**
 * POST /members/<endpoint>/drain[?close-idle=true] takes the member out of rotation (no new
 * connections; with close-idle its connections are also reset once idle), POST …/ready brings it
 * back; both through the member table's one writer, so workers follow. Answers the member's /status row.
 */
async function memberAction(gw: Gateway, ctx: AdminContext, req: Request, encoded: string, action: "drain" | "ready"): Promise<Reply> {
  // Any local user can connect over TCP: state changes need the unix socket, whose file mode says who may.
  if (!req.privileged) return NOT_PRIVILEGED;
  // A web page can make a browser POST here (to a loopback address, or after DNS rebinding): refused.
  if (req.fromBrowser) return { status: 403, body: "refused: a state-changing request from a web browser (Origin or Sec-Fetch- header)\n" };
  let endpoint: string;
  let closeIdle: boolean;
  try {
    endpoint = decodeURIComponent(encoded);
    const v = new URLSearchParams(req.query).get("close-idle");
    closeIdle = v === null ? false : parseBoolean("close-idle", v === "" ? "true" : v);
  } catch (e) {
    return { status: 400, body: `bad request: ${errorText(e)}\n` };
  }
  const m = gw.members.list.find((x) => x.address === endpoint);
  if (m === undefined) return { status: 404, body: `no member ${endpoint} in the endpoint set (${gw.members.list.map((x) => x.address).join(", ")})\n` };
  gw.members.update(m, { drain: action === "ready" ? "off" : closeIdle ? "close-idle" : "keep-open" });
  const row = status(gw, ctx, await counters(gw, ctx)).members.find((r) => r.endpoint === endpoint);
  return { status: 200, body: JSON.stringify(row), type: JSON_TYPE };
}
