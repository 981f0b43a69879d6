/**
 * The report of `bun run bench:perconn` (scripts/bench/per-conn.ts): medians over rounds of every
 * per-connection figure, the Markdown tables, and the marked section of docs/performance.md that
 * `--doc` rewrites.
 *
 * @module
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { Contender } from "./contenders.ts";
import { gcLogOf, type GcLog, type ProcSnap } from "./perconn-passes.ts";
import { fmt, median } from "./report.ts";
import type { Machine } from "./tools.ts";

export interface PerConnPlan {
  rounds: number;
  /** Connections before any pass (JIT, pools), not measured. */
  warm: number;
  cpuConns: number;
  perfConns: number;
  straceConns: number;
  mallocConns: number;
  gcConns: number;
  /** Connections in flight at once. */
  concurrency: number;
  smallSeconds: number;
  smallConnections: number;
  /** Only the allocation pass (`--heap-only`: the CI guard, scripts/bench/memory-guard.ts). */
  heapOnly?: boolean;
}

/** One contender in one round. */
export interface PerConnSample {
  contender: string;
  round: number;
  failures: string[];
  cpu?: { conns: number; seconds: number; before: ProcSnap; after: ProcSnap };
  perf?: { conns: number; seconds: number; calls: Record<string, number> };
  strace?: { conns: number; seconds: number; calls: Record<string, number>; errors: Record<string, number> };
  malloc?: { conns: number; calls: Record<string, number> };
  gc?: { kind: GcLog; bytesPerConn: number | null; collections: number; conns: number; exactShare: number };
  small?: { requests: number; rps: number; before: ProcSnap; after: ProcSnap };
}

export interface PerConnRun {
  startedAt: string;
  elapsedS: number;
  plan: PerConnPlan;
  machine: Machine;
  contenders: readonly Contender[];
  samples: PerConnSample[];
  notes: string[];
}

/** Clock ticks (1/100 s) to microseconds. */
const TICK_US = 10_000;
const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);

/** Median over the rounds without a failure. */
function med(run: PerConnRun, id: string, pick: (s: PerConnSample) => number | undefined): number | null {
  const xs = run.samples.filter((s) => s.contender === id && s.failures.length === 0).map(pick).filter((x): x is number => x !== undefined && Number.isFinite(x));
  return median(xs);
}

/** One row of the main table: its figure per connection from one sample (undefined where the pass did not run). */
interface Row {
  label: string;
  key: string;
  digits: number;
  /** No ratio columns (a count that is not a cost). */
  noRatio?: boolean;
  value(s: PerConnSample): number | undefined;
}

const per = (x: number, n: number) => (n > 0 ? x / n : undefined);
/** A /proc counter's growth over a pass. */
const grew = (p: { before: ProcSnap; after: ProcSnap }, field: keyof ProcSnap) => p.after[field] - p.before[field];
/** The collector figures, for the rows that have a collector log (not HAProxy, not --workers). */
const gcOf = (s: PerConnSample) => (gcLogOf(s.contender) === null ? undefined : s.gc);

const ROWS: readonly Row[] = [
  { key: "cps", digits: 0, label: "connections/s, untraced pass (higher is better)", value: (s) => s.cpu && s.cpu.conns / s.cpu.seconds },
  { key: "cpuUs", digits: 1, label: "CPU per connection, total (µs; schedstat)", value: (s) => s.cpu && per(grew(s.cpu, "runNs") / 1000, s.cpu.conns) },
  { key: "userUs", digits: 1, label: "… user (µs; utime ticks)", value: (s) => s.cpu && per(grew(s.cpu, "utime") * TICK_US, s.cpu.conns) },
  { key: "sysUs", digits: 1, label: "… system (µs; stime ticks)", value: (s) => s.cpu && per(grew(s.cpu, "stime") * TICK_US, s.cpu.conns) },
  { key: "syscalls", digits: 1, label: "system calls per connection (perf)", value: (s) => s.perf && per(sum(s.perf.calls), s.perf.conns) },
  { key: "straceCalls", digits: 1, label: "system calls per connection (strace -c)", value: (s) => s.strace && per(sum(s.strace.calls), s.strace.conns) },
  { key: "straceErrors", digits: 1, label: "… of which failed (strace -c; mostly EAGAIN)", value: (s) => s.strace && per(sum(s.strace.errors), s.strace.conns) },
  { key: "gcBytes", digits: 0, label: "heap bytes allocated per connection (GC log: JSC / Go)", value: (s) => gcOf(s)?.bytesPerConn ?? undefined },
  { key: "gc10k", digits: 1, label: "garbage collections per 10k connections (allocation pass: timers off)", value: (s) => { const g = gcOf(s); return g && per(g.collections * 10_000, g.conns); } },
  { key: "mallocs", digits: 2, label: "libc malloc+calloc+realloc calls per connection", value: (s) => s.malloc && per(sum(s.malloc.calls), s.malloc.conns) },
  { key: "minflt10k", digits: 0, label: "minor page faults per 10k connections", value: (s) => s.cpu && per(grew(s.cpu, "minflt") * 10_000, s.cpu.conns) },
  { key: "rss10k", digits: 0, label: "RSS growth over the CPU pass per 10k connections (KiB)", value: (s) => s.cpu && per(grew(s.cpu, "rssKiB") * 10_000, s.cpu.conns) },
  { key: "rssAfterMiB", digits: 1, label: "RSS after the CPU pass (MiB)", value: (s) => s.cpu && s.cpu.after.rssKiB / 1024 },
  { key: "threads", digits: 0, label: "threads", noRatio: true, value: (s) => s.cpu?.after.threads },
  { key: "smallRps", digits: 0, label: "keep-alive requests/s (wrk -c32)", value: (s) => s.small?.rps },
  { key: "smallUs", digits: 2, label: "keep-alive CPU per request (µs)", value: (s) => s.small && per(grew(s.small, "runNs") / 1000, s.small.requests) },
];

/** Every figure of one sample, by row key. */
export function figures(s: PerConnSample): Record<string, number | undefined> {
  return Object.fromEntries(ROWS.map((r) => [r.key, r.value(s)]));
}

/** Ratios that say whose gap it is: ours over the minimal relay, the relay over HAProxy (1 thread); and a change's effect, ours over the build before it. */
const RATIOS: readonly [string, string, string][] = [
  ["etcd-gateway", "etcd-gateway-before", "ours ÷ before"],
  ["etcd-gateway", "bun-relay", "ours ÷ relay"],
  ["bun-relay", "haproxy-1t", "relay ÷ HAProxy 1t"],
];

/** `a` over `b`; none where either rounds to zero at the row's digits (a ratio of noise). */
function ratioCell(run: PerConnRun, row: Row, a: string, b: string): string {
  const x = med(run, a, (s) => figures(s)[row.key]);
  const y = med(run, b, (s) => figures(s)[row.key]);
  const zero = (v: number) => Math.abs(v) < 0.5 * 10 ** -row.digits;
  return row.noRatio || x === null || y === null || zero(x) || zero(y) ? "—" : `${(x / y).toFixed(2)}×`;
}

function present(run: PerConnRun, id: string): boolean {
  return run.contenders.some((c) => c.id === id);
}

/** Table 1: the figures, contenders as columns. */
function mainTable(run: PerConnRun): string[] {
  const cs = run.contenders;
  const ratios = RATIOS.filter(([a, b]) => present(run, a) && present(run, b));
  const head = ["per proxied connection", ...cs.map((c) => c.title), ...ratios.map((r) => r[2])];
  const lines = [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`];
  for (const row of ROWS) {
    const cells = cs.map((c) => {
      const v = med(run, c.id, (s) => figures(s)[row.key]);
      return v === null ? "—" : fmt(v, row.digits);
    });
    lines.push(`| ${[row.label, ...cells, ...ratios.map(([a, b]) => ratioCell(run, row, a, b))].join(" | ")} |`);
  }
  return lines;
}

/** Table 2: system calls per connection by name (perf counts; strace's where perf did not run). */
function syscallTable(run: PerConnRun): string[] {
  const cs = run.contenders;
  const source = run.samples.some((s) => s.perf !== undefined) ? "perf" : "strace";
  const perName = (id: string, name: string) =>
    med(run, id, (s) => {
      const p = source === "perf" ? s.perf : s.strace;
      return p === undefined || p.conns <= 0 ? undefined : (p.calls[name] ?? 0) / p.conns;
    });
  const names = new Set<string>();
  for (const s of run.samples) for (const n of Object.keys((source === "perf" ? s.perf : s.strace)?.calls ?? {})) names.add(n);
  const rows = [...names]
    .map((n) => ({ n, v: cs.map((c) => perName(c.id, n)) }))
    .filter((r) => r.v.some((x) => x !== null && x >= 0.05))
    .sort((a, b) => Math.max(...b.v.map((x) => x ?? 0)) - Math.max(...a.v.map((x) => x ?? 0)));
  const head = [`system call (${source === "perf" ? "perf stat, syscalls:sys_enter_*" : "strace -c -f"})`, ...cs.map((c) => c.title)];
  const lines = [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`];
  for (const r of rows) lines.push(`| ${r.n} | ${r.v.map((x) => (x === null ? "—" : fmt(x, 2))).join(" | ")} |`);
  return lines;
}

/** The failures of every round, one line each. */
function failureLines(run: PerConnRun): string[] {
  return run.samples.filter((s) => s.failures.length > 0).map((s) => `- ${s.contender}, round ${s.round}: ${s.failures.join("; ")}`);
}

/** The generated part of the report (what `--doc` puts between the markers). */
export function perConnMarkdown(run: PerConnRun): string {
  const p = run.plan;
  const m = run.machine;
  const failures = failureLines(run);
  return [
    `Generated by \`bun run bench:perconn\` (scripts/bench/per-conn.ts) on ${run.startedAt}: ${p.rounds} interleaved round(s), took ${run.elapsedS.toFixed(0)} s; ${m.cores} cores, ${m.kernel}, load ${m.loadAtStart.toFixed(2)} at the start; ${m.versions.bun}, ${m.versions.haproxy?.split(" - ")[0] ?? "HAProxy ?"}, ${m.versions.etcd ?? "etcd ?"}. Each cell is the median over the rounds without a failure.`,
    "",
    ...mainTable(run),
    "",
    "System calls per proxied connection, by name (calls of at least 0.05 per connection for some contender):",
    "",
    ...syscallTable(run),
    "",
    `Passes per contender and round: ${p.warm} connections to warm up, then ${p.cpuConns} untraced (CPU, page faults, RSS), ${p.perfConns} under \`perf stat\`, ${p.straceConns} under \`strace -c -f\`, ${p.mallocConns} with libc allocator uprobes, wrk keep-alive ${p.smallSeconds} s × ${p.smallConnections} connections; then a second start with the collector's log on and ${p.gcConns} connections. ${p.concurrency} connections in flight, each \`GET /\` with \`Connection: close\` to the hello server.`,
    ...(run.notes.length > 0 ? ["", ...run.notes.map((n) => `- ${n}`)] : []),
    ...(failures.length > 0 ? ["", "Failed passes (their rounds are left out of the medians):", "", ...failures] : []),
    "",
  ].join("\n");
}

/** One progress line for stderr. */
export function summaryLines(s: PerConnSample): string {
  const f = figures(s);
  const part = (k: string, label: string, d: number) => (f[k] === undefined ? "" : `${label}=${fmt(f[k]!, d)}`);
  const parts = [part("cps", "conn/s", 0), part("cpuUs", "cpu_us", 1), part("syscalls", "syscalls", 1), part("straceCalls", "strace", 1), part("mallocs", "mallocs", 2), part("gcBytes", "gc_bytes", 0), part("smallRps", "req/s", 0), part("smallUs", "us/req", 2)];
  return [...parts.filter(Boolean), ...s.failures.map((x) => `FAILED ${x}`)].join("  ");
}

export const DOC_BEGIN = "<!-- per-conn table: generated by `bun run bench:perconn --doc docs/performance.md`; do not edit by hand -->";
export const DOC_END = "<!-- per-conn table end -->";

/** Replaces what stands between the markers in `path` (appends a section with them if missing). */
export function replaceDocSection(path: string, generated: string): void {
  const text = existsSync(path) ? readFileSync(path, "utf8") : "";
  const block = `${DOC_BEGIN}\n\n${generated.trim()}\n\n${DOC_END}`;
  const a = text.indexOf(DOC_BEGIN);
  const b = text.indexOf(DOC_END);
  const out = a >= 0 && b > a ? text.slice(0, a) + block + text.slice(b + DOC_END.length) : `${text.trimEnd()}\n\n## Per-connection cost\n\n${block}\n`;
  writeFileSync(path, out);
}
