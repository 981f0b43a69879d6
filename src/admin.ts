/**
 * The admin endpoint (`--admin-addr`): `/metrics` (Prometheus), `/healthz` (process alive),
 * `/readyz` (200 only while a member is usable) and `/status` (JSON member table). It reads the
 * settings in force and the member table; it never touches the data path. The HTTP server and its
 * bounds are in src/admin-http.ts.
 *
 * @module
 */
import type { HostPort } from "./addresses.ts";
import { serveHttp, type Reply } from "./admin-http.ts";
import { formatDuration } from "./duration.ts";
import type { Gateway } from "./gateway.ts";
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
    reason: string;
    priority: number;
    weight: number;
    connections: number;
    connectionsTotal: number;
    failedDials: number;
    lastSuccessAgoSeconds: number | null;
  }[];
  config: Record<string, unknown>;
}

/** What the admin endpoint shows besides the gateway itself. */
export interface AdminContext {
  readonly version: string;
  /** Date.now() at process start. */
  readonly startedAt: number;
  /** With --workers: the other processes' counters, summed into /status and /metrics. */
  readonly workerStats: () => Promise<ProcessStats[]>;
}

/** The whole gateway's counters: this process's plus the workers'. */
async function counters(gw: Gateway, ctx: AdminContext): Promise<ProcessStats> {
  const worker = gw.settings.flags.workers > 1 ? 0 : null;
  const members = [...gw.members.list, ...gw.members.retired];
  return mergeStats(processStats(members, gw.proxy.stats, gw.proxy.active, gw.accessLog?.stats, worker), await ctx.workerStats());
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
        reason: m.reason,
        priority: m.priority,
        weight: m.weight,
        connections: c?.connections ?? 0,
        connectionsTotal: c?.stats.connectionsTotal ?? 0,
        failedDials: m.failures,
        lastSuccessAgoSeconds: last === 0 ? null : (now - last) / 1000,
      };
    }),
    config: {
      "health-check": f["health-check"],
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
 * Serves the admin endpoint on `addr`, within the bounds of src/admin-http.ts (16 connections,
 * the request head in 5 s and 8 KiB, GET and HEAD only).
 *
 * @throws {Error} from Bun.listen when the address cannot be bound.
 */
export function startAdmin(addr: HostPort, gw: Gateway, ctx: AdminContext): { readonly port: number; stop(): void } {
  return serveHttp(addr.host, addr.port, async (path): Promise<Reply> => {
    switch (path) {
      case "/metrics": {
        const all = await counters(gw, ctx);
        const text = renderMetrics({ version: ctx.version, startedAt: ctx.startedAt, members: memberViews(gw.members, all.members), counters: all, discovery: gw.discoveryStats });
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
  });
}
