/**
 * /metrics rendering and the merge of the workers' shares (src/metrics.ts, src/counters.ts): histogram
 * buckets, sums over processes, one `process_*` series per process; the exposition itself is checked
 * with promtool against the binary in test/e2e/admin.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import { CONNECTION_BUCKETS, Histogram, ListenerStats } from "../../src/counters.ts";
import { MemberTable } from "../../src/members.ts";
import { memberViews, mergeStats, processStats, renderMetrics, type ProcessInfo, type ProcessStats } from "../../src/metrics.ts";

describe("Histogram", () => {
  test("a value on a bound counts in that bucket (le is inclusive); above the last, in +Inf", () => {
    const h = new Histogram([1, 2]);
    for (const v of [0, 1, 1.5, 2, 3]) h.observe(v);
    expect(h.counts).toEqual([2, 2, 1]);
    expect(h.sum).toBe(7.5);
    expect(JSON.parse(JSON.stringify(h))).toEqual({ counts: [2, 2, 1], sum: 7.5 });
  });
});

function share(worker: number, connections: number, durations: number[]): ProcessStats {
  const table = new MemberTable([parseEndpoint("10.0.0.1:2379")], null);
  const m = table.list[0]!;
  m.connections = connections;
  m.stats.connectionsTotal = connections;
  m.stats.connect.observe(0.001);
  const l = new ListenerStats();
  l.accepted = durations.length;
  for (const d of durations) l.duration.observe(d);
  // Through JSON, as a worker's share arrives over IPC.
  return JSON.parse(JSON.stringify(processStats(table.list, l, { active: connections, max: 100 }, undefined, worker))) as ProcessStats;
}

describe("mergeStats", () => {
  test("sums counters and histograms over processes, and keeps one process entry each, in worker order", () => {
    const merged = mergeStats(share(0, 2, [0.5]), [share(2, 1, [1000]), share(1, 3, [0.5, 7200])]);
    expect(merged.members[0]!.connections).toBe(6);
    expect(merged.members[0]!.stats.connect.counts[1]).toBe(3);
    expect(merged.listener.accepted).toBe(4);
    expect(merged.maxConnections).toBe(300); // each process's own limit, summed
    expect(merged.listener.duration.sum).toBe(8201);
    expect(merged.listener.duration.counts[CONNECTION_BUCKETS.indexOf(0.5)]).toBe(2);
    expect(merged.processes.map((p) => p.worker)).toEqual([0, 1, 2]);
  });
});

describe("renderMetrics", () => {
  const input = (processes: ProcessInfo[]) => {
    const table = new MemberTable([parseEndpoint("10.0.0.1:2379")], null);
    const counters = { ...share(0, 0, [0.002]), processes };
    return renderMetrics({ version: "0.1.0", startedAt: 1_700_000_000_000, members: memberViews(table, counters.members), counters, discovery: { refreshes: 0, failures: 0, lastGoodAt: 0 }, alarms: [] });
  };
  const p = (worker: number | null, maxFds: number | null = 1024): ProcessInfo => ({ worker, openFds: 10, maxFds, residentBytes: 5e7, cpuSeconds: 1.5, startTimeSeconds: 1.7e9 });

  test("a single process: the standard names, no worker label", () => {
    const text = input([p(null)]);
    for (const line of ["process_open_fds 10", "process_max_fds 1024", "process_resident_memory_bytes 50000000", "process_cpu_seconds_total 1.5", "process_start_time_seconds 1700000000"]) expect(text).toContain(`\n${line}\n`);
    expect(text).toContain("# TYPE process_cpu_seconds_total counter\n");
  });

  test("with --workers, one series per process labelled worker; an unknown limit is left out", () => {
    const text = input([p(0), p(1, null)]);
    expect(text).toContain('\nprocess_open_fds{worker="0"} 10\nprocess_open_fds{worker="1"} 10\n');
    expect(text).toContain('# TYPE process_max_fds gauge\nprocess_max_fds{worker="0"} 1024\n# HELP process_resident_memory_bytes');
  });

  test("the connection-duration histogram: cumulative buckets, +Inf, sum and count, no labels", () => {
    const text = input([p(null)]);
    expect(text).toContain('\netcd_gateway_connection_duration_seconds_bucket{le="0.001"} 0\netcd_gateway_connection_duration_seconds_bucket{le="0.01"} 1\n');
    expect(text).toContain('\netcd_gateway_connection_duration_seconds_bucket{le="+Inf"} 1\netcd_gateway_connection_duration_seconds_sum 0.002\netcd_gateway_connection_duration_seconds_count 1\n');
    expect(text).toContain('\netcd_gateway_health_check_duration_seconds_count{endpoint="10.0.0.1:2379",depth="liveness"} 0\n');
  });
});
