/**
 * The admin endpoint (`--admin-addr`): `/metrics` (Prometheus), `/healthz` (process alive),
 * `/readyz` (200 only while a member is usable) and `/status` (JSON member table). It only reads
 * gateway state; it never touches the data path.
 *
 * @module
 */
import type { Server } from "bun";
import type { GatewayOptions } from "./config.ts";
import { formatDuration } from "./duration.ts";
import type { HostPort } from "./endpoints.ts";
import type { Gateway } from "./gateway.ts";
import { mergeStats, processStats, renderMetrics, type ProcessStats } from "./metrics.ts";

/** The JSON of `GET /status`; also what `etcd-gateway status --json` prints. */
export interface Status {
  version: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  listener: { address: string; accepted: number; active: number };
  policy: string;
  workers: number;
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

export function status(gw: Gateway, opts: GatewayOptions, version: string, startedAt: number): Status {
  const now = performance.now();
  return {
    version,
    pid: process.pid,
    startedAt: new Date(startedAt).toISOString(),
    uptimeSeconds: (Date.now() - startedAt) / 1000,
    listener: { address: opts.listenAddrs.map((a) => a.address).join(","), accepted: gw.proxy.stats.accepted, active: gw.proxy.active },
    policy: opts.policy,
    workers: opts.workers,
    members: gw.members.list.map((m) => ({
      endpoint: m.address,
      state: m.state,
      reason: m.reason,
      priority: m.priority,
      weight: m.weight,
      connections: m.connections,
      connectionsTotal: m.stats.connectionsTotal,
      failedDials: m.failures,
      lastSuccessAgoSeconds: m.lastSuccess === 0 ? null : (now - m.lastSuccess) / 1000,
    })),
    config: {
      "health-check": opts.health.check,
      "health-interval": formatDuration(opts.health.intervalMs),
      "connect-timeout": formatDuration(opts.connectTimeoutMs),
      "retry-delay": formatDuration(opts.retryDelayMs),
      "discovery-srv": opts.discoverySrv,
      "endpoints-auto-sync-interval": formatDuration(opts.discovery.syncIntervalMs),
    },
  };
}

/**
 * Serves the admin endpoint on `addr`.
 *
 * @throws {Error} from Bun.serve when the address cannot be bound.
 */
export function startAdmin(
  addr: HostPort,
  gw: Gateway,
  opts: GatewayOptions,
  version: string,
  startedAt: number,
  /** With --workers: the other processes' counters, summed into /metrics. */
  workerStats: () => Promise<ProcessStats[]> = async () => [],
): Server<undefined> {
  return Bun.serve({
    hostname: addr.host,
    port: addr.port,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      switch (path) {
        case "/metrics": {
          const own = processStats(gw.members.list, gw.proxy.stats, gw.proxy.active);
          const counters = mergeStats(own, await workerStats());
          return new Response(renderMetrics({ version, startedAt, members: gw.members.list, counters, discovery: gw.discoveryStats }), {
            headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
          });
        }
        case "/healthz":
          return new Response("ok\n");
        case "/readyz": {
          const ready = gw.members.list.some((m) => m.active);
          return new Response(ready ? "ready\n" : "no usable member\n", { status: ready ? 200 : 503 });
        }
        case "/status":
          return Response.json(status(gw, opts, version, startedAt));
        default:
          return new Response("not found: try /metrics, /healthz, /readyz, /status\n", { status: 404 });
      }
    },
  });
}
