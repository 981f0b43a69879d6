/**
 * From samples to the report: medians over rounds, ratios to etcd's gateway, the targets (met or
 * not), the Markdown written to docs/benchmarks.md and the JSON for tools.
 *
 * @module
 */
import { BASELINE_ID, CONNECT_TIMEOUT_MS, describeContender, haproxyConfig, type Contender } from "./contenders.ts";
import type { Machine } from "./tools.ts";
import type { Plan, Sample, Workload, WorkloadId } from "./types.ts";

interface MetricDef {
  key: string;
  workload: WorkloadId;
  label: string;
  unit: string;
  better: "higher" | "lower";
  digits: number;
  /** Also show the ratio to direct. */
  vsDirect?: boolean;
  /** No ratio to etcd's gateway (failover times, raw RSS). */
  noRatio?: boolean;
}

/** The report's rows, in the issue's order of workloads. */
export const METRICS: readonly MetricDef[] = [
  { key: "small.rps", workload: "small", label: "Small req/resp: requests/s", unit: "req/s", better: "higher", digits: 0 },
  { key: "small.p50", workload: "small", label: "Small req/resp: p50 latency", unit: "ms", better: "lower", digits: 2 },
  { key: "small.p99", workload: "small", label: "Small req/resp: p99 latency", unit: "ms", better: "lower", digits: 2 },
  { key: "etcd.rps", workload: "etcd", label: "etcd reads: requests/s", unit: "req/s", better: "higher", digits: 0, vsDirect: true },
  { key: "etcd.p99", workload: "etcd", label: "etcd reads: p99 latency", unit: "ms", better: "lower", digits: 2 },
  { key: "churn.cps", workload: "churn", label: "Churn: connections/s", unit: "conn/s", better: "higher", digits: 0 },
  { key: "bulk.fwd", workload: "bulk", label: "Bulk client→server", unit: "Gbit/s", better: "higher", digits: 1 },
  { key: "bulk.rev", workload: "bulk", label: "Bulk server→client (-R)", unit: "Gbit/s", better: "higher", digits: 1 },
  { key: "idle.kib", workload: "idle", label: "Idle: RSS per connection", unit: "KiB", better: "lower", digits: 2 },
  { key: "idle.rss", workload: "idle", label: "Idle: RSS before → after", unit: "MiB", better: "lower", digits: 1, noRatio: true },
  { key: "idle.fds", workload: "idle", label: "Idle: open fds per connection", unit: "fds", better: "lower", digits: 2, noRatio: true },
  { key: "failover.kill", workload: "failover", label: "Killed member: first request served after", unit: "ms", better: "lower", digits: 0, noRatio: true },
  { key: "failover.bh", workload: "failover", label: "Blackholed member: per connection, median / max", unit: "ms", better: "lower", digits: 0, noRatio: true },
];

export function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function fmt(x: number, digits: number): string {
  // A value that rounds to zero is printed as 0, never "-0.00".
  const v = Math.abs(x) < 0.5 * 10 ** -digits ? 0 : x;
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const ratioText = (r: number) => `${r.toFixed(2)}×`;
const short = (s: string, n = 110) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
const cellSafe = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

/** Everything a report is made from. */
export interface RunRecord {
  startedAt: string;
  elapsedS: number;
  /** What was asked for: "full", or the flags of a partial run. */
  mode: string;
  plan: Plan;
  machine: Machine;
  contenders: readonly Contender[];
  workloads: readonly Workload[];
  samples: Sample[];
  /** Notes the run made (other load on the machine, tools installed, ...). */
  notes: string[];
}

/** Reads the samples of one run. */
export class Results {
  constructor(readonly run: RunRecord) {}

  samples(contender: string, workload: WorkloadId): Sample[] {
    return this.run.samples.filter((s) => s.contender === contender && s.workload === workload);
  }

  /** Why `contender` has no number for `key`: the first failure over its rounds, with how many rounds failed. */
  failure(contender: string, key: string, workload: WorkloadId): string | null {
    const ss = this.samples(contender, workload);
    const failed = ss.map((s) => s.failures[key] ?? s.failures["*"]).filter((f) => f !== undefined);
    if (failed.length === 0) return null;
    return `${failed[0]}${ss.length > 1 ? ` (${failed.length}/${ss.length} rounds)` : ""}`;
  }

  /** The median over rounds of `key` for `contender`; null when a round failed or nothing was measured. */
  median(contender: string, key: string): number | null {
    const def = METRICS.find((m) => m.key === key);
    const workload = def?.workload ?? (key.split(".")[0] as WorkloadId);
    if (this.failure(contender, key, workload) !== null) return null;
    return median(this.samples(contender, workload).map((s) => s.values[key]).filter((v): v is number => v !== undefined));
  }

  /** Every blackhole connection time over all rounds, with the timeouts and errors. */
  blackhole(contender: string): { ms: number[]; timeouts: number; errors: string[]; connections: number; starts: number; hits: number } {
    const out = { ms: [] as number[], timeouts: 0, errors: [] as string[], connections: 0, starts: 0, hits: 0 };
    for (const s of this.samples(contender, "failover")) {
      const d = s.details.blackhole as { ms: number[]; timeouts: number; errors: string[]; connections: number; starts: number; hit: boolean } | undefined;
      if (d === undefined) continue;
      out.ms.push(...d.ms);
      out.timeouts += d.timeouts;
      out.errors.push(...d.errors);
      out.connections += d.connections;
      out.starts += d.starts;
      if (d.hit) out.hits++;
    }
    return out;
  }

  /** The text of one table cell. */
  cell(c: Contender, def: MetricDef): string {
    const skip = c.skips?.[def.workload];
    if (skip !== undefined) return "n/a";
    const ss = this.samples(c.id, def.workload);
    if (ss.length === 0) return "not run";
    if (def.key === "failover.bh") return this.blackholeCell(c);
    const failed = this.failure(c.id, def.key, def.workload);
    if (failed !== null) return `**failed**: ${cellSafe(short(failed))}`;
    if (def.key === "idle.rss") {
      const b = this.median(c.id, "idle.before");
      const a = this.median(c.id, "idle.after");
      return b === null || a === null ? "—" : `${fmt(b, 1)} → ${fmt(a, 1)}`;
    }
    const v = this.median(c.id, def.key);
    if (v === null) return "—";
    let text = fmt(v, def.digits);
    if (def.key === "failover.kill") {
      const all = ss.map((s) => s.values["failover.kill"]).filter((x): x is number => x !== undefined);
      if (all.length > 1) text += ` (max ${fmt(Math.max(...all), 0)})`;
      return text;
    }
    const ratios: string[] = [];
    const base = this.median(BASELINE_ID, def.key);
    if (!def.noRatio && c.id !== BASELINE_ID && base !== null && base > 0) ratios.push(ratioText(v / base));
    const direct = this.median("direct", def.key);
    if (def.vsDirect && c.id !== "direct" && direct !== null && direct > 0) ratios.push(`${ratioText(v / direct)} direct`);
    return ratios.length > 0 ? `${text} (${ratios.join(", ")})` : text;
  }

  private blackholeCell(c: Contender): string {
    const id = c.id;
    const failed = this.samples(id, "failover").map((s) => s.failures["failover.bh"] ?? s.failures["*"]).find((f) => f !== undefined);
    if (failed !== undefined) return `**failed**: ${cellSafe(short(failed))}`;
    const b = this.blackhole(id);
    const parts: string[] = [];
    const med = median(b.ms);
    if (med !== null) parts.push(`${fmt(med, 0)} / ${fmt(Math.max(...b.ms), 0)}`);
    if (b.timeouts > 0) parts.push(`**timeout ×${b.timeouts}** of ${b.connections} (> ${this.run.plan.attemptTimeoutMs / 1000} s)`);
    if (b.errors.length > 0) parts.push(`**error ×${b.errors.length}** (${cellSafe(short(b.errors[0] ?? "", 40))})`);
    if (c.balance === "sticky") parts.push(`blackhole picked in ${b.hits} of ${b.starts} starts`);
    return parts.join("; ") || "—";
  }

  /** The results table: one row per metric, one column per contender. */
  table(): string {
    const cs = this.run.contenders;
    const ran = new Set(this.run.workloads.map((w) => w.id));
    const rows = METRICS.filter((m) => ran.has(m.workload));
    const head = `| metric | ${cs.map((c) => c.title).join(" | ")} |`;
    const sep = `| --- | ${cs.map(() => "---").join(" | ")} |`;
    const body = rows.map((m) => `| ${m.label} (${m.unit}, ${m.better} is better) | ${cs.map((c) => this.cell(c, m)).join(" | ")} |`);
    return [head, sep, ...body].join("\n");
  }

  /** The targets for each of our rows: the measured ratio or value and met / not met. */
  targets(): { contender: string; target: string; measured: string; status: "met" | "not met" | "not measured" }[] {
    const out: ReturnType<Results["targets"]> = [];
    const haproxies = this.run.contenders.filter((c) => c.id.startsWith("haproxy"));
    const hasGw = this.run.contenders.some((c) => c.id === BASELINE_ID);
    for (const c of this.run.contenders.filter((x) => x.ours)) {
      const add = (target: string, measured: string | null, ok: boolean | null) =>
        out.push({ contender: c.title, target, measured: measured ?? "—", status: ok === null ? "not measured" : ok ? "met" : "not met" });
      /** Our value over each peer's, for `key`; null when any is missing. */
      const against = (key: string, peers: readonly Contender[], factor: number, higher: boolean): [string | null, boolean | null] => {
        const ours = this.median(c.id, key);
        if (ours === null || peers.length === 0) return [ours === null ? `not measured: ${this.failure(c.id, key, key.split(".")[0] as WorkloadId) ?? "no value"}` : "no peer measured", null];
        const parts: string[] = [];
        let ok: boolean | null = true;
        for (const p of peers) {
          const theirs = this.median(p.id, key);
          if (theirs === null || theirs === 0) {
            parts.push(`${p.title}: no value`);
            ok = null;
            continue;
          }
          parts.push(`${ratioText(ours / theirs)} ${p.title}`);
          if (ok !== null) ok = ok && (higher ? ours >= factor * theirs : ours < theirs);
        }
        return [parts.join(", "), ok];
      };
      const gw = hasGw ? this.run.contenders.filter((x) => x.id === BASELINE_ID) : [];
      const ran = new Set(this.run.workloads.map((w) => w.id));
      if (ran.has("small")) {
        add("small req/resp: req/s ≥ 1.0× HAProxy", ...against("small.rps", haproxies, 1.0, true));
        add("small req/resp: p99 below HAProxy and etcd's gateway", ...against("small.p99", [...haproxies, ...gw], 1.0, false));
      }
      if (ran.has("etcd")) {
        add("etcd reads: req/s ≥ 1.1× etcd's gateway", ...against("etcd.rps", gw, 1.1, true));
        add("etcd reads: req/s ≥ 1.0× HAProxy", ...against("etcd.rps", haproxies, 1.0, true));
      }
      if (ran.has("churn")) add("churn: conn/s ≥ 1.0× HAProxy", ...against("churn.cps", haproxies, 1.0, true));
      if (ran.has("bulk")) {
        add("bulk client→server ≥ 1.0× HAProxy", ...against("bulk.fwd", haproxies, 1.0, true));
        add("bulk server→client ≥ 1.0× HAProxy", ...against("bulk.rev", haproxies, 1.0, true));
      }
      if (ran.has("idle")) {
        const kib = this.median(c.id, "idle.kib");
        add("idle: ≤ 3 KiB per proxied connection", kib === null ? `not measured: ${this.failure(c.id, "idle.kib", "idle")}` : `${fmt(kib, 2)} KiB`, kib === null ? null : kib <= 3);
      }
      if (ran.has("failover")) {
        const kills = this.samples(c.id, "failover").map((s) => s.values["failover.kill"]);
        const killFail = this.failure(c.id, "failover.kill", "failover");
        if (killFail !== null || kills.length === 0 || kills.some((k) => k === undefined)) add("killed member: next connection served in < 100 ms", `not measured: ${killFail ?? "no value"}`, null);
        else {
          const max = Math.max(...(kills as number[]));
          add("killed member: next connection served in < 100 ms", `max ${fmt(max, 0)} ms over ${kills.length} round(s)`, max < 100);
        }
        const b = this.blackhole(c.id);
        const bound = CONNECT_TIMEOUT_MS + 50;
        const bhFail = this.samples(c.id, "failover").map((s) => s.failures["failover.bh"]).find((f) => f !== undefined);
        const target = `blackholed member: every new connection served within --connect-timeout + 50 ms (${bound} ms)`;
        if (bhFail !== undefined || b.connections === 0) add(target, `not measured: ${bhFail ?? "no value"}`, null);
        else {
          const max = b.ms.length > 0 ? Math.max(...b.ms) : 0;
          const bad = b.timeouts + b.errors.length;
          const text = `max ${fmt(max, 0)} ms over ${b.connections} connections${bad > 0 ? `, ${b.timeouts} timeouts, ${b.errors.length} errors` : ""}${c.balance === "sticky" ? `; blackhole picked in ${b.hits} of ${b.starts} starts` : ""}`;
          if (b.hits === 0) {
            out.push({ contender: c.title, target, measured: `${text}: no connection had to fail over from it`, status: "not measured" });
          } else add(target, text, bad === 0 && max <= bound);
        }
      }
    }
    return out;
  }

  targetsTable(): string {
    const rows = this.targets();
    if (rows.length === 0) return "(no row of ours ran)";
    return ["| contender | target | measured | status |", "| --- | --- | --- | --- |", ...rows.map((t) => `| ${t.contender} | ${t.target} | ${cellSafe(t.measured)} | ${t.status === "met" ? "met" : t.status === "not met" ? "**not met**" : "not measured"} |`)].join("\n");
  }

  /** Per-round values, so drift between rounds can be seen. */
  roundsTable(): string {
    const cs = this.run.contenders;
    const ran = new Set(this.run.workloads.map((w) => w.id));
    const keys: [string, WorkloadId, number][] = METRICS.filter((m) => ran.has(m.workload) && !["idle.rss", "failover.bh"].includes(m.key)).map((m) => [m.key, m.workload, m.digits]);
    const lines = [`| metric | ${cs.map((c) => c.title).join(" | ")} |`, `| --- | ${cs.map(() => "---").join(" | ")} |`];
    for (const [key, w, digits] of keys) {
      const cells = cs.map((c) => {
        const ss = this.samples(c.id, w);
        if (ss.length === 0) return "";
        return ss
          .map((s) => {
            const v = s.values[key];
            const failed = (s.failures[key] ?? s.failures["*"]) !== undefined;
            return v === undefined ? "✗" : `${fmt(v, digits)}${failed ? " ✗" : ""}`;
          })
          .join(" · ");
      });
      lines.push(`| ${key} | ${cells.join(" | ")} |`);
    }
    return lines.join("\n");
  }

  /** The member each row read from in the etcd workload, round by round. */
  memberNotes(): string[] {
    const out: string[] = [];
    for (const c of this.run.contenders) {
      const reads = this.samples(c.id, "etcd").map((s) => `${String(s.details.member ?? "?")}${s.details.leader ? ` (leader ${String(s.details.leader)})` : ""}${Number(s.details.starts ?? 1) > 1 ? ` after ${String(s.details.starts)} starts` : ""}`);
      if (reads.length > 0) out.push(`${c.title}: ${reads.join(", ")}.`);
    }
    return out;
  }

  /** The member killed in each failover round. */
  failoverNotes(): string[] {
    const out: string[] = [];
    for (const c of this.run.contenders) {
      const kills = this.samples(c.id, "failover").map((s) => (s.details.kill as { member?: string } | undefined)?.member ?? "?");
      if (kills.length > 0) out.push(`${c.title}: ${kills.join(", ")}.`);
    }
    return out;
  }
}

/** The whole Markdown document. */
export function markdown(res: Results): string {
  const r = res.run;
  const m = r.machine;
  const gatewayBackends = ["<m0>", "<m1>", "<m2>"];
  const lines: string[] = [
    "# Benchmarks",
    "",
    `Generated by \`bun run bench\` (scripts/bench/) on ${r.startedAt}; ${r.mode} run, ${r.plan.rounds} round(s), took ${fmt(r.elapsedS, 0)} s. Rerun it rather than editing this file.`,
    "",
    "The same work goes through each contender on one machine in one run: directly to the backend, through our gateway, through etcd's own gateway, and through HAProxy in `mode tcp`. `bun run bench` rewrites this file; `bun run bench --quick` (one short round, for smoke tests), `--only <workloads>` and `--contenders <ids>` write `bench-results/latest.md` instead. Raw numbers go to `bench-results/latest.json`.",
    "",
    "## Machine",
    "",
    `- ${m.cores} cores, ${m.cpuModel}, ${m.kernel}; open files: ${m.nofileLimit}.`,
    `- Load average (1 min) at the start: ${m.loadAtStart.toFixed(2)}. The machine was shared: other engineers may have been running the test suite at the same time, which is why the contenders are interleaved round by round.`,
    ...r.notes.map((n) => `- ${n}`),
    "",
    "| tool | version |",
    "| --- | --- |",
    ...Object.entries(m.versions).map(([k, v]) => `| ${k} | ${cellSafe(v)} |`),
    "",
    "## Results",
    "",
    `Each cell is the median over ${r.plan.rounds} round(s); in parentheses the ratio to etcd's own gateway (for latency and memory, lower is better), for etcd reads also the ratio to direct. A contender that failed a workload in any round (crash, refusal, wrk socket errors, non-2xx answers) shows **failed** and why instead of a number; n/a means the row does not take part (see Method).`,
    "",
    res.table(),
    "",
    "## Targets",
    "",
    "Checked for each row of our gateway against the medians above. \"HAProxy\" means both HAProxy rows: a target is met only if it holds against each.",
    "",
    res.targetsTable(),
    "",
    "## Method",
    "",
    `- Contenders run interleaved: for each round, each contender in table order (${r.contenders.map((c) => c.id).join(", ")}), started fresh for every measurement and killed afterwards. All traffic is loopback.`,
    `- wrk runs with ${r.plan.wrkThreads} thread and ${r.plan.wrkConnections} connections: small ${r.plan.wrkSeconds.small} s, etcd reads ${r.plan.wrkSeconds.etcd} s, churn ${r.plan.wrkSeconds.churn} s${r.plan.wrkWarmSeconds ? `, each after ${r.plan.wrkWarmSeconds} s of the same load, not measured` : ""}; iperf3 ${r.plan.iperfSeconds} s per direction; idle: ${r.plan.idleConnections} connections in batches of ${r.plan.idleBatch} with ${r.plan.idlePauseMs} ms pauses; blackhole: ${r.plan.blackholeConnections} connections ${r.plan.blackholeSpacingMs} ms apart, each bounded by ${r.plan.attemptTimeoutMs / 1000} s.`,
    "- Idle memory: VmRSS from /proc/<pid>/status summed over the contender's process tree, read 0.3 s after start and again 0.3 s after every connection is open; (after − before) / connections.",
    "- Failover, killed member: the proxy is asked which member serves it (POST /v3/maintenance/status through it, header.member_id), that member is SIGKILLed and restarted after the measurement. For our gateway (sticky) and HAProxy (`balance first`) that is the member every connection goes to. etcd's gateway is round-robin: the member killed is the one that served the status request, so the next connection goes to another member and the figure reflects the rotation as much as failover.",
    `- Failover, blackholed member: the member just killed (restarting meanwhile) is replaced in --endpoints by a loopback port that drops SYNs, listed first; our gateway and HAProxy have a ${CONNECT_TIMEOUT_MS / 1000} s connect timeout, etcd's gateway has none. Our sticky gateway picks its member at random at start; a start whose connections never met the blackhole shows nothing about failing over from it, so it is started again (at most 10 times per round) until one does; the connections of that start count, and its cell says in how many starts the blackhole was picked. HAProxy (\`balance first\`) always starts on the blackhole (its first server).`,
    "- etcd reads use the default linearizable read, which costs more on a follower (a ReadIndex round trip to the leader). So that rows sending every connection to one member compare alike, direct and HAProxy (`balance first`) use m0, and our sticky gateway is started again (at most 10 times) until its random pick is m0 too; etcd's gateway spreads connections over all three members. The member each row read from:",
    ...res.memberNotes().map((n) => `  - ${n}`),
    "- Reads in the failover workload are serializable, so a surviving member answers without waiting for a new leader (that would be etcd's election, not the proxy's failover). The member killed, round by round:",
    ...res.failoverNotes().map((n) => `  - ${n}`),
    "",
    "### Contenders",
    "",
    ...r.contenders.flatMap((c) => {
      const etcd = describeContender(c, { backends: gatewayBackends, etcd: true }).command;
      const plain = describeContender(c, { backends: ["<backend>"], etcd: false }).command;
      const skips = Object.entries(c.skips ?? {}).map(([w, why]) => `${w}: ${why}`);
      const cmds = c.command === null ? etcd : etcd === plain ? `\`${etcd}\`` : `etcd members: \`${etcd}\`; one plain backend (hello, iperf3): \`${plain}\``;
      return [`- **${c.title}** (\`${c.id}\`): ${cmds}${skips.length > 0 ? `. Sits out ${skips.join("; ")}.` : ""}`];
    }),
    "",
    "Health checks are configured only in front of etcd members: with one plain backend there is nothing to choose between, and iperf3 takes every check connection for a test client and resets the clients queued behind it.",
    "",
    "HAProxy's generated config in front of the etcd members (the nbthread 1 row adds `global` with `nbthread 1`; in front of one plain backend the server line has no `check`):",
    "",
    "```",
    haproxyConfig("<port>", { backends: gatewayBackends, etcd: true }, null).trimEnd(),
    "```",
    "",
    "### Commands",
    "",
    ...r.workloads.flatMap((w) => [`**${w.title}** (\`${w.id}\`):`, "", "```sh", ...w.commands(r.plan), "```", ""]),
    "## Per-round values",
    "",
    "Round 1 · round 2 · …; ✗ marks a failed round. Raw data (wrk reports, per-connection failover times): `bench-results/latest.json`.",
    "",
    res.roundsTable(),
    "",
  ];
  return lines.join("\n");
}

/** The JSON for tools: the run, every sample, the medians and the targets. */
export function json(res: Results): unknown {
  const r = res.run;
  const medians: Record<string, Record<string, number | null>> = {};
  for (const c of r.contenders) {
    medians[c.id] = {};
    for (const m of METRICS) {
      if (m.key === "idle.rss" || m.key === "failover.bh") continue;
      medians[c.id]![m.key] = res.median(c.id, m.key);
    }
    const b = res.blackhole(c.id);
    medians[c.id]!["failover.bh_median"] = median(b.ms);
    medians[c.id]!["failover.bh_max"] = b.ms.length > 0 ? Math.max(...b.ms) : null;
    medians[c.id]!["failover.bh_timeouts"] = b.timeouts;
  }
  return {
    startedAt: r.startedAt,
    elapsedS: r.elapsedS,
    mode: r.mode,
    plan: r.plan,
    machine: r.machine,
    notes: r.notes,
    contenders: r.contenders.map((c) => ({ id: c.id, title: c.title, ours: c.ours, balance: c.balance, command: describeContender(c, { backends: ["<m0>", "<m1>", "<m2>"], etcd: true }).command, skips: c.skips ?? {} })),
    workloads: r.workloads.map((w) => ({ id: w.id, title: w.title, commands: w.commands(r.plan) })),
    medians,
    targets: res.targets(),
    samples: r.samples,
  };
}
