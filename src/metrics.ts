/**
 * `/metrics`: the Prometheus text rendering of member state (src/members.ts), the data-path
 * counters (src/counters.ts) and the access log's (src/accesslog.ts) of every process, and
 * discovery's counters.
 *
 * @module
 */
import type { AccessLogStats } from "./accesslog.ts";
import { CONNECT_BUCKETS, FAILURE_REASONS, MemberStats, type DiscoveryStats, type ListenerStats } from "./counters.ts";
import type { Member } from "./members.ts";

/** One process's data-path counters, as a worker reports them to the primary for /metrics. */
export interface ProcessStats {
  members: { address: string; connections: number; stats: MemberStats }[];
  listener: { accepted: number; limitReached: number; tlsFailures: [string, number][] };
  active: number;
  accessLog: AccessLogStats;
}

/** This process's counters in a form that survives JSON (IPC to the primary); `accessLog` absent when it is off. */
export function processStats(members: readonly Member[], listener: ListenerStats, active: number, accessLog?: AccessLogStats): ProcessStats {
  return {
    members: members.map((m) => ({ address: m.address, connections: m.connections, stats: { ...m.stats, connectBuckets: [...m.stats.connectBuckets] } as unknown as MemberStats })),
    listener: { accepted: listener.accepted, limitReached: listener.limitReached, tlsFailures: [...listener.tlsFailures] },
    active,
    accessLog: { dropped: 0, writeErrors: 0, reopenFailures: 0, ...accessLog },
  };
}

/** Adds the workers' counters to the primary's, per member address, for rendering. */
export function mergeStats(own: ProcessStats, others: readonly ProcessStats[]): ProcessStats {
  const merged = JSON.parse(JSON.stringify(own)) as ProcessStats;
  for (const o of others) {
    merged.active += o.active;
    merged.listener.accepted += o.listener.accepted;
    merged.listener.limitReached += o.listener.limitReached;
    for (const k of ["dropped", "writeErrors", "reopenFailures"] as const) merged.accessLog[k] += o.accessLog[k];
    const tls = new Map(merged.listener.tlsFailures);
    for (const [k, n] of o.listener.tlsFailures) tls.set(k, (tls.get(k) ?? 0) + n);
    merged.listener.tlsFailures = [...tls];
    for (const om of o.members) {
      const m = merged.members.find((x) => x.address === om.address);
      if (m === undefined) continue;
      m.connections += om.connections;
      const a = m.stats as unknown as Record<string, unknown>;
      const b = om.stats as unknown as Record<string, unknown>;
      for (const k of ["connectionsTotal", "bytesToMember", "bytesFromMember", "connectSum"]) a[k] = (a[k] as number) + (b[k] as number);
      for (const r of FAILURE_REASONS) m.stats.failures[r] += om.stats.failures[r];
      const buckets = m.stats.connectBuckets as unknown as number[];
      (om.stats.connectBuckets as unknown as number[]).forEach((n, i) => (buckets[i] = (buckets[i] ?? 0) + n));
    }
  }
  return merged;
}

const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/** Renders everything in Prometheus text exposition format 0.0.4, names prefixed `etcd_gateway_`. */
export function renderMetrics(s: {
  version: string;
  startedAt: number;
  members: readonly Member[];
  /** Data-path counters of every process (with --workers, summed over them). */
  counters: ProcessStats;
  discovery: DiscoveryStats;
}): string {
  const counted = new Map(s.counters.members.map((c) => [c.address, c]));
  const zero = { connections: 0, stats: new MemberStats() };
  const c = (m: Member) => counted.get(m.address) ?? zero;
  const out: string[] = [];
  const metric = (name: string, type: "gauge" | "counter" | "histogram", help: string, rows: [labels: string, value: number][]) => {
    out.push(`# HELP etcd_gateway_${name} ${help}`, `# TYPE etcd_gateway_${name} ${type}`);
    for (const [labels, value] of rows) out.push(`etcd_gateway_${name}${labels} ${Number.isFinite(value) ? value : 0}`);
  };
  const ep = (m: Member, extra = "") => `{endpoint="${esc(m.address)}"${extra}}`;
  const ms = s.members;

  metric("build_info", "gauge", "Version of etcd-gateway and of the Bun runtime it carries.", [[`{version="${esc(s.version)}",bun="${esc(Bun.version)}"}`, 1]]);
  metric("start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.", [["", s.startedAt / 1000]]);
  metric("member_up", "gauge", "1 when the member is usable (state up), else 0.", ms.map((m) => [ep(m), m.up ? 1 : 0]));
  metric("member_state", "gauge", "1 for the member's current state (up, down, ejected).", ms.flatMap((m) => (["up", "down", "ejected"] as const).map((st): [string, number] => [ep(m, `,state="${st}"`), m.state === st ? 1 : 0])));
  metric("member_connections", "gauge", "Proxied connections open to the member (dials in flight included).", ms.map((m) => [ep(m), c(m).connections]));
  metric("member_connections_total", "counter", "Proxied connections established to the member.", ms.map((m) => [ep(m), c(m).stats.connectionsTotal]));
  metric("member_connect_failures_total", "counter", "Failed dials to the member by reason (refused, timeout, reset right after connect, tls, other).", ms.flatMap((m) => FAILURE_REASONS.map((r): [string, number] => [ep(m, `,reason="${r}"`), c(m).stats.failures[r]])));
  metric("member_sent_bytes_total", "counter", "Bytes forwarded from clients to the member.", ms.map((m) => [ep(m), c(m).stats.bytesToMember]));
  metric("member_received_bytes_total", "counter", "Bytes forwarded from the member to clients.", ms.map((m) => [ep(m), c(m).stats.bytesFromMember]));
  metric("member_ejections_total", "counter", "Times the member was ejected after --health-fall failed dials in a row.", ms.map((m) => [ep(m), m.ejections]));
  out.push("# HELP etcd_gateway_member_connect_duration_seconds Time from dial to connected.", "# TYPE etcd_gateway_member_connect_duration_seconds histogram");
  for (const m of ms) {
    const st = c(m).stats;
    let cumulative = 0;
    CONNECT_BUCKETS.forEach((le, i) => {
      cumulative += st.connectBuckets[i] ?? 0;
      out.push(`etcd_gateway_member_connect_duration_seconds_bucket${ep(m, `,le="${le}"`)} ${cumulative}`);
    });
    cumulative += st.connectBuckets[CONNECT_BUCKETS.length] ?? 0;
    out.push(`etcd_gateway_member_connect_duration_seconds_bucket${ep(m, ',le="+Inf"')} ${cumulative}`);
    out.push(`etcd_gateway_member_connect_duration_seconds_sum${ep(m)} ${st.connectSum}`);
    out.push(`etcd_gateway_member_connect_duration_seconds_count${ep(m)} ${cumulative}`);
  }
  const l = s.counters.listener;
  metric("listener_accepted_total", "counter", "Client connections accepted.", [["", l.accepted]]);
  metric("listener_connections", "gauge", "Client connections open now.", [["", s.counters.active]]);
  metric("listener_limit_reached_total", "counter", "Times the gateway stopped accepting at --max-connections (new connects are refused by the kernel until a connection closes).", [["", l.limitReached]]);
  metric("tls_handshake_failures_total", "counter", "TLS handshakes that failed, by side (client: --listen-cert; member: --upstream-tls) and reason.", l.tlsFailures.map(([k, n]): [string, number] => {
    const [side, reason] = k.split("|");
    return [`{side="${esc(side ?? "")}",reason="${esc(reason ?? "")}"}`, n];
  }));
  const al = s.counters.accessLog;
  metric("access_log_dropped_lines_total", "counter", "Access log lines never written: beyond the ~1 MiB held while the file could not take them, or still held at exit.", [["", al.dropped]]);
  metric("access_log_write_errors_total", "counter", "Access log writes that failed or were short (ENOSPC, EIO, ...); retried every second.", [["", al.writeErrors]]);
  metric("access_log_reopen_failures_total", "counter", "Access log reopens (SIGUSR1, and their retries every second) that could not open the path.", [["", al.reopenFailures]]);
  metric("discovery_refreshes_total", "counter", "Successful discovery rounds (DNS SRV, member list).", [["", s.discovery.refreshes]]);
  metric("discovery_failures_total", "counter", "Failed discovery rounds (the last good endpoints were kept).", [["", s.discovery.failures]]);
  metric("discovery_last_good_age_seconds", "gauge", "Seconds since the last good discovery answer (-1: none yet).", [["", s.discovery.lastGoodAt === 0 ? -1 : (Date.now() - s.discovery.lastGoodAt) / 1000]]);
  return out.join("\n") + "\n";
}
