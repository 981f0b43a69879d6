/**
 * `/metrics`: the Prometheus text rendering of member state (src/members.ts), the data-path
 * counters (src/counters.ts) and the access log's (src/accesslog.ts) of every process, the health
 * checks' durations, discovery's counters, and the standard `process_*` metrics of every process;
 * and the form in which a worker sends its share to the primary (ProcessStats).
 *
 * @module
 */
import type { AccessLogStats } from "./accesslog.ts";
import { addHistogram, CheckStats, CONNECT_BUCKETS, CONNECTION_BUCKETS, FAILURE_REASONS, MemberStats, type DiscoveryStats, type HistogramData, type ListenerStats, type MemberCounts } from "./counters.ts";
import { openFds, openFilesLimit } from "./limits.ts";
import type { Drain, Member, MemberState, MemberTable } from "./members.ts";

/** One process's resources: what the Prometheus standard `process_*` metrics say. */
export interface ProcessInfo {
  /** With --workers, the worker number (the primary is 0); null for a single process (no `worker` label). */
  worker: number | null;
  openFds: number;
  /** The open-files limit; null where unknown (the metric is left out then). */
  maxFds: number | null;
  residentBytes: number;
  /** User and system CPU time. */
  cpuSeconds: number;
  /** When the process started, Unix seconds. */
  startTimeSeconds: number;
}

/** This process's resources now. */
export function processInfo(worker: number | null): ProcessInfo {
  const cpu = process.cpuUsage();
  const limit = openFilesLimit();
  return {
    worker,
    openFds: openFds(),
    maxFds: Number.isFinite(limit) ? limit : null,
    residentBytes: process.memoryUsage.rss(),
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    startTimeSeconds: performance.timeOrigin / 1000,
  };
}

/** What /status and /metrics show of a member: one in the table, or a removed one still carrying connections. */
export interface MemberView {
  readonly address: string;
  /** The health state, or `removed`: no longer in the endpoint set, connections still open (in some process). */
  readonly state: MemberState | "removed";
  /** An operator's drain (the admin endpoint); `off` for a removed member. */
  readonly drain: Drain;
  readonly reason: string;
  readonly priority: number;
  readonly weight: number;
  /** Failed dials in a row. */
  readonly failures: number;
  readonly ejections: number;
  readonly checks: { readonly full: HistogramData; readonly liveness: HistogramData };
  /** performance.now() of this process's last connect to it (0: none). */
  readonly lastConnectedAt: number;
  /** Whether it answered its last health check (null: not checked). */
  readonly alive: boolean | null;
  /** The cluster ID (hex) it reported, and whether that is another cluster than the gateway's. */
  readonly clusterId: string | null;
  readonly wrongCluster: boolean;
  /** Stall suspicions by outcome (src/datapath/suspect.ts), counted in the primary. */
  readonly suspicions: { readonly confirmed: number; readonly cleared: number };
}

const view = (m: Member, state: MemberView["state"]): MemberView => ({
  address: m.address,
  state,
  drain: state === "removed" ? "off" : m.drain,
  reason: m.reason,
  priority: m.priority,
  weight: m.weight,
  failures: m.failures,
  ejections: m.ejections,
  checks: m.checks,
  lastConnectedAt: m.stats.lastConnectedAt,
  alive: m.alive,
  clusterId: m.clusterId,
  wrongCluster: m.wrongCluster,
  suspicions: m.suspicions,
});

/**
 * The members to show, in table order, then the removed ones that some process (`shares`, merged)
 * still has connections to. A removed member only a worker still uses has no history here (no
 * checks, no ejections: the primary forgot it once its own connections closed).
 */
export function memberViews(table: MemberTable, shares: readonly MemberShare[]): MemberView[] {
  const listed = new Set(table.list.map((m) => m.address));
  const retired = new Map(table.retired.map((m) => [m.address, m]));
  const bare = (address: string): MemberView => ({ address, state: "removed", drain: "off", reason: "", priority: 0, weight: 0, failures: 0, ejections: 0, checks: new CheckStats(), lastConnectedAt: 0, alive: null, clusterId: null, wrongCluster: false, suspicions: { confirmed: 0, cleared: 0 } });
  const removed = shares.filter((s) => !listed.has(s.address) && s.connections > 0).map((s) => {
    const m = retired.get(s.address);
    return m === undefined ? bare(s.address) : view(m, "removed");
  });
  return [...table.list.map((m) => view(m, m.state)), ...removed];
}

/** One member's share of one process's counters. */
export interface MemberShare {
  address: string;
  connections: number;
  stats: MemberCounts;
}

/** One process's counters, as a worker reports them to the primary for /metrics (JSON over IPC). */
export interface ProcessStats {
  members: MemberShare[];
  listener: { accepted: number; limitReached: number; tlsFailures: [string, number][]; duration: HistogramData };
  active: number;
  /** Client connections the process accepts at most now (src/datapath/proxy.ts, maxConnections). */
  maxConnections: number;
  accessLog: AccessLogStats;
  /** One per process (after mergeStats: every process that answered). */
  processes: ProcessInfo[];
}

/** This process's counters in a form that survives JSON (IPC to the primary); `accessLog` absent when it is off. */
export function processStats(members: readonly Member[], listener: ListenerStats, conns: { active: number; max: number }, accessLog: AccessLogStats | undefined, worker: number | null): ProcessStats {
  return {
    members: members.map((m) => ({ address: m.address, connections: m.connections, stats: m.stats })),
    listener: { accepted: listener.accepted, limitReached: listener.limitReached, tlsFailures: [...listener.tlsFailures], duration: listener.duration },
    active: conns.active,
    maxConnections: conns.max,
    accessLog: { dropped: 0, writeErrors: 0, reopenFailures: 0, ...accessLog },
    processes: [processInfo(worker)],
  };
}

/** A worker's share before its gateway has started: nothing counted yet. */
export function emptyStats(worker: number): ProcessStats {
  return {
    members: [],
    listener: { accepted: 0, limitReached: 0, tlsFailures: [], duration: { counts: [], sum: 0 } },
    active: 0,
    maxConnections: 0,
    accessLog: { dropped: 0, writeErrors: 0, reopenFailures: 0 },
    processes: [processInfo(worker)],
  };
}

/** Adds the workers' counters to the primary's, per member address, for rendering. */
export function mergeStats(own: ProcessStats, others: readonly ProcessStats[]): ProcessStats {
  const merged = JSON.parse(JSON.stringify(own)) as ProcessStats;
  for (const o of others) {
    merged.active += o.active;
    merged.maxConnections += o.maxConnections;
    merged.listener.accepted += o.listener.accepted;
    merged.listener.limitReached += o.listener.limitReached;
    addHistogram(merged.listener.duration, o.listener.duration);
    for (const k of ["dropped", "writeErrors", "reopenFailures"] as const) merged.accessLog[k] += o.accessLog[k];
    const tls = new Map(merged.listener.tlsFailures);
    for (const [k, n] of o.listener.tlsFailures) tls.set(k, (tls.get(k) ?? 0) + n);
    merged.listener.tlsFailures = [...tls];
    merged.processes.push(...o.processes);
    for (const om of o.members) {
      const m = merged.members.find((x) => x.address === om.address);
      // A member only this worker still has connections to (removed, and closed in the primary).
      if (m === undefined) {
        merged.members.push(om);
        continue;
      }
      m.connections += om.connections;
      const a = m.stats;
      const b = om.stats;
      a.connectionsTotal += b.connectionsTotal;
      a.rebalanced += b.rebalanced;
      a.bytesToMember += b.bytesToMember;
      a.bytesFromMember += b.bytesFromMember;
      for (const r of FAILURE_REASONS) a.failures[r] += b.failures[r];
      addHistogram(a.connect, b.connect);
    }
  }
  merged.processes.sort((a, b) => (a.worker ?? 0) - (b.worker ?? 0));
  return merged;
}

const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
/** A label block from its inside (`endpoint="a",le="1"`); nothing for no labels. */
const block = (inner: string) => (inner === "" ? "" : `{${inner}}`);

/** Prometheus text exposition format 0.0.4, one family at a time. */
class Exposition {
  readonly lines: string[] = [];

  /** A gauge or counter family; each row is the inside of its label block and its value. */
  metric(name: string, type: "gauge" | "counter", help: string, rows: readonly (readonly [labels: string, value: number])[]): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of rows) this.lines.push(`${name}${block(labels)} ${Number.isFinite(value) ? value : 0}`);
  }

  /** A histogram family over `bounds`: cumulative buckets, +Inf, sum and count per row. */
  histogram(name: string, help: string, bounds: readonly number[], rows: readonly (readonly [labels: string, h: HistogramData])[]): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const [labels, h] of rows) {
      const le = labels === "" ? "" : `${labels},`;
      let cumulative = 0;
      bounds.forEach((bound, i) => {
        cumulative += h.counts[i] ?? 0;
        this.lines.push(`${name}_bucket{${le}le="${bound}"} ${cumulative}`);
      });
      cumulative += h.counts[bounds.length] ?? 0;
      this.lines.push(`${name}_bucket{${le}le="+Inf"} ${cumulative}`, `${name}_sum${block(labels)} ${h.sum}`, `${name}_count${block(labels)} ${cumulative}`);
    }
  }
}

/** What /metrics shows. */
export interface MetricsInput {
  version: string;
  startedAt: number;
  /** memberViews: the table's members and the removed ones still carrying connections. */
  members: readonly MemberView[];
  /** Data-path counters of every process (with --workers, summed over them). */
  counters: ProcessStats;
  discovery: DiscoveryStats;
  /** The alarms raised in the cluster (with active checks). */
  alarms: readonly { alarm: string; member: string }[];
}

/** Renders everything: the gateway's own metrics prefixed `etcd_gateway_`, then the standard `process_*` ones. */
export function renderMetrics(s: MetricsInput): string {
  const x = new Exposition();
  x.metric("etcd_gateway_build_info", "gauge", "Version of etcd-gateway and of the Bun runtime it carries.", [[`version="${esc(s.version)}",bun="${esc(Bun.version)}"`, 1]]);
  x.metric("etcd_gateway_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.", [["", s.startedAt / 1000]]);
  renderMembers(x, s.members, s.counters.members);
  x.metric("etcd_gateway_cluster_alarm", "gauge", "1 for each alarm raised in the cluster (NOSPACE, CORRUPT), by the member it is on (hex ID), as the members' status lists them.", s.alarms.map((a) => [`alarm="${esc(a.alarm)}",member="${esc(a.member)}"`, 1]));
  renderListener(x, s);
  renderProcesses(x, s.counters.processes);
  return x.lines.join("\n") + "\n";
}

const zero: MemberShare = { address: "", connections: 0, stats: new MemberStats() };

function renderMembers(x: Exposition, ms: readonly MemberView[], shares: readonly MemberShare[]): void {
  const counted = new Map(shares.map((c) => [c.address, c]));
  const c = (m: MemberView) => counted.get(m.address) ?? zero;
  const ep = (m: MemberView, extra = "") => `endpoint="${esc(m.address)}"${extra}`;
  x.metric("etcd_gateway_member_up", "gauge", "1 when the member's state is up (its health; a drained member stays up), else 0.", ms.map((m) => [ep(m), m.state === "up" ? 1 : 0]));
  x.metric("etcd_gateway_member_alive", "gauge", "1 when the member answered its last health check (any answer: an HTTP status, a TLS alert), or was not checked yet; 0 when it did not answer in time or refused.", ms.map((m) => [ep(m), m.alive === false ? 0 : 1]));
  x.metric("etcd_gateway_member_drained", "gauge", "1 when an operator drained the member (no new connections), else 0.", ms.map((m) => [ep(m), m.drain === "off" ? 0 : 1]));
  x.metric("etcd_gateway_member_state", "gauge", "1 for the member's current state (up, down, ejected; removed: out of the endpoint set, connections still open).", ms.flatMap((m) => (["up", "down", "ejected", "removed"] as const).map((st) => [ep(m, `,state="${st}"`), m.state === st ? 1 : 0] as const)));
  x.metric("etcd_gateway_member_connections", "gauge", "Proxied connections open to the member (dials in flight included).", ms.map((m) => [ep(m), c(m).connections]));
  x.metric("etcd_gateway_member_connections_total", "counter", "Proxied connections established to the member.", ms.map((m) => [ep(m), c(m).stats.connectionsTotal]));
  x.metric("etcd_gateway_member_rebalanced_connections_total", "counter", "Open connections to the member closed to move them where new connections go (--rebalance-interval).", ms.map((m) => [ep(m), c(m).stats.rebalanced]));
  x.metric("etcd_gateway_member_connect_failures_total", "counter", "Failed dials to the member by reason (refused, timeout, reset right after connect, tls, other).", ms.flatMap((m) => FAILURE_REASONS.map((r) => [ep(m, `,reason="${r}"`), c(m).stats.failures[r]] as const)));
  x.metric("etcd_gateway_member_sent_bytes_total", "counter", "Bytes forwarded from clients to the member.", ms.map((m) => [ep(m), c(m).stats.bytesToMember]));
  x.metric("etcd_gateway_member_received_bytes_total", "counter", "Bytes forwarded from the member to clients.", ms.map((m) => [ep(m), c(m).stats.bytesFromMember]));
  x.metric("etcd_gateway_member_stall_suspicions_total", "counter", "Times client traffic made the member a suspect (client bytes reached it, nothing came back for --health-suspect-after), by how the checks that followed ended: confirmed (taken out) or cleared (it answered).", ms.flatMap((m) => (["confirmed", "cleared"] as const).map((o) => [ep(m, `,outcome="${o}"`), m.suspicions[o]] as const)));
  x.metric("etcd_gateway_member_ejections_total", "counter", "Times the member was ejected after --health-fall failed dials in a row.", ms.map((m) => [ep(m), m.ejections]));
  x.histogram("etcd_gateway_member_connect_duration_seconds", "Time from dial to connected.", CONNECT_BUCKETS, ms.map((m) => [ep(m), c(m).stats.connect]));
  const depths = ["full", "liveness"] as const;
  x.histogram("etcd_gateway_health_check_duration_seconds", "Time an active health check of the member took, by depth (full: leader, learner, alarm; liveness: the cheap check of the member in use).", CONNECT_BUCKETS, ms.flatMap((m) => depths.map((d) => [ep(m, `,depth="${d}"`), m.checks[d]] as const)));
}

function renderListener(x: Exposition, s: MetricsInput): void {
  const l = s.counters.listener;
  x.metric("etcd_gateway_listener_accepted_total", "counter", "Client connections accepted.", [["", l.accepted]]);
  x.metric("etcd_gateway_listener_connections", "gauge", "Client connections open now.", [["", s.counters.active]]);
  x.metric("etcd_gateway_listener_max_connections", "gauge", "Client connections the gateway accepts at most now: --max-connections, or what the open-files limit allows if lower or unset, less what abandoned dials hold (summed over --workers processes).", [["", s.counters.maxConnections]]);
  x.metric("etcd_gateway_listener_limit_reached_total", "counter", "Times the gateway stopped accepting at its connection limit (new connects wait in the kernel's backlog until a connection closes).", [["", l.limitReached]]);
  x.histogram("etcd_gateway_connection_duration_seconds", "Client connections from accept to close.", CONNECTION_BUCKETS, [["", l.duration]]);
  x.metric("etcd_gateway_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by side (client: --listen-cert; member: --upstream-tls) and reason.", l.tlsFailures.map(([k, n]) => {
    const [side, reason] = k.split("|");
    return [`side="${esc(side ?? "")}",reason="${esc(reason ?? "")}"`, n] as const;
  }));
  const al = s.counters.accessLog;
  x.metric("etcd_gateway_access_log_dropped_lines_total", "counter", "Access log lines never written: beyond the ~1 MiB held while the file could not take them, or still held at exit.", [["", al.dropped]]);
  x.metric("etcd_gateway_access_log_write_errors_total", "counter", "Access log writes that failed or were short (ENOSPC, EIO, ...); retried every second.", [["", al.writeErrors]]);
  x.metric("etcd_gateway_access_log_reopen_failures_total", "counter", "Access log reopens (SIGUSR1, and their retries every second) that could not open the path.", [["", al.reopenFailures]]);
  x.metric("etcd_gateway_discovery_refreshes_total", "counter", "Successful discovery rounds (DNS SRV, member list).", [["", s.discovery.refreshes]]);
  x.metric("etcd_gateway_discovery_failures_total", "counter", "Failed discovery rounds (the last good endpoints were kept).", [["", s.discovery.failures]]);
  x.metric("etcd_gateway_discovery_last_good_age_seconds", "gauge", "Seconds since the last good discovery answer (-1: none yet).", [["", s.discovery.lastGoodAt === 0 ? -1 : (Date.now() - s.discovery.lastGoodAt) / 1000]]);
}

/** The standard process metrics (the Prometheus client libraries' names), one series per process, `worker`-labelled with --workers. */
function renderProcesses(x: Exposition, ps: readonly ProcessInfo[]): void {
  const w = (p: ProcessInfo) => (p.worker === null ? "" : `worker="${p.worker}"`);
  x.metric("process_open_fds", "gauge", "Number of open file descriptors.", ps.map((p) => [w(p), p.openFds]));
  x.metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", ps.flatMap((p) => (p.maxFds === null ? [] : [[w(p), p.maxFds] as const])));
  x.metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", ps.map((p) => [w(p), p.residentBytes]));
  x.metric("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", ps.map((p) => [w(p), p.cpuSeconds]));
  x.metric("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", ps.map((p) => [w(p), p.startTimeSeconds]));
}
