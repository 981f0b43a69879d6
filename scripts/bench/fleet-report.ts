/**
 * The fleet benchmark's report: what a fleet adds to the no-gateway baseline in the same scenario
 * (etcd CPU, requests, connections), per gateway and for 10,000 gateways, the ratios to etcd's
 * gateway, and the Markdown (docs/fleet.md) and JSON written from them.
 *
 * @module
 */
import type { Latency } from "./fleet-client.ts";
import { SCENARIO_IDS, type FleetMemory, type ScenarioId } from "./fleet-fleets.ts";
import type { Transitions, WindowResult } from "./fleet-measure.ts";
import { ROLES, SCENARIO_TEXT } from "./fleet-scenarios.ts";
import { fmt } from "./report.ts";
import type { Machine } from "./tools.ts";

/** Sizes and durations of one run. */
export interface FleetPlan {
  quick: boolean;
  /** Gateways per fleet. */
  size: number;
  /** Gateways started per second. */
  startRate: number;
  windowS: number;
  /** Wait after a fleet is up, and after a killed member is back, before the next window. */
  settleS: number;
  scenarios: ScenarioId[];
  /** Client requests per second (half puts, half ranges). */
  clientRate: number;
  discovery: boolean;
  /** Member-list sync interval and SRV TTL of the discovery fleets, seconds. */
  syncIntervalS: number;
}

/** One fleet's part of the run. */
export interface FleetRun {
  id: string;
  title: string;
  /** One gateway's command, with `<port>` and the members' addresses as `<m0>,<m1>,<m2>`; null for the baseline. */
  command: string | null;
  gateways: number;
  startSeconds: number;
  restarts: number;
  /** The gateways' memory after the first window. */
  memory: FleetMemory | null;
  windows: WindowResult[];
  /** Health transitions its gateways logged while starting and settling, before the first window. */
  startTransitions: Transitions | null;
  /** Health transitions its gateways logged from their start until they were stopped. */
  transitions: Transitions | null;
  /** Why the fleet has no (or not every) window. */
  failure: string | null;
}

export interface FleetRecord {
  startedAt: string;
  elapsedS: number;
  /** The command line that produced it. */
  command: string;
  plan: FleetPlan;
  machine: Machine;
  notes: string[];
  fleets: FleetRun[];
}

/** What fleet `f` adds to the baseline in one scenario. */
export interface Added {
  /** etcd cores added by the whole fleet, per gateway (millicores), and for 10,000 gateways (cores). */
  cores: number;
  perGatewayMillicores: number;
  tenThousandCores: number;
  /** Requests and new connections per second per member added (null for a member down at either end). */
  requests: (number | null)[];
  conns: (number | null)[];
  /** Summed over members and divided by the gateways: what one gateway asks of the cluster. */
  requestsPerGateway: number;
  connsPerGateway: number;
  /** The gateways' own CPU, per gateway. */
  ownMillicores: number | null;
}

const BASELINE = "none";
const ETCD = "etcd-gw";

export function windowOf(r: FleetRecord, fleet: string, scenario: ScenarioId): WindowResult | undefined {
  return r.fleets.find((f) => f.id === fleet)?.windows.find((w) => w.scenario === scenario);
}

/** What fleet `f` adds to the baseline in `scenario`; null when either window is missing. */
export function added(r: FleetRecord, f: FleetRun, scenario: ScenarioId): Added | null {
  const w = f.windows.find((x) => x.scenario === scenario);
  const base = windowOf(r, BASELINE, scenario);
  if (w === undefined || base === undefined || f.gateways === 0) return null;
  const n = f.gateways;
  const cores = w.etcdCores - base.etcdCores;
  const diff = (xs: (number | null)[], ys: (number | null)[]) => xs.map((x, i) => (x === null || ys[i] === null || ys[i] === undefined ? null : x - ys[i]!));
  const requests = diff(w.requests.map((x) => x?.total ?? null), base.requests.map((x) => x?.total ?? null));
  const conns = diff(w.connsPerS, base.connsPerS);
  const sum = (xs: (number | null)[]) => xs.reduce<number>((s, x) => s + (x ?? 0), 0);
  return {
    cores,
    perGatewayMillicores: (cores / n) * 1000,
    tenThousandCores: (cores / n) * 10_000,
    requests,
    conns,
    requestsPerGateway: sum(requests) / n,
    connsPerGateway: sum(conns) / n,
    ownMillicores: w.fleetCores === null ? null : (w.fleetCores / n) * 1000,
  };
}

/** `a / b` as "12.3×", or why there is no ratio: `b` is not above `noise` (or zero). */
function ratio(a: number, b: number | undefined, noise = 0): string {
  if (b === undefined) return "—";
  if (b <= noise || b <= 0) return "etcd's is within the noise";
  return `${fmt(a / b, a / b >= 10 ? 0 : 1)}×`;
}

/**
 * The baseline's drift over the run in etcd cores (the steady window without gateways at the end
 * minus the one at the start), as a magnitude; null when the baseline ran once.
 */
export function driftCores(r: FleetRecord): number | null {
  const first = windowOf(r, BASELINE, "steady");
  const last = windowOf(r, "none-end", "steady");
  return first === undefined || last === undefined ? null : Math.abs(last.etcdCores - first.etcdCores);
}

const perMember = (xs: (number | null)[], digits: number) => xs.map((x) => (x === null ? "down" : fmt(x, digits))).join(" / ");
const p99 = (l: Latency | undefined) => (l === undefined || l.p99Ms === null ? "—" : `${fmt(l.p99Ms, 1)}${l.errors > 0 ? ` (**${l.errors} errors**)` : ""}`);

/** A Markdown table. */
export function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

/** The table of one scenario: a row per fleet. */
export function scenarioTable(r: FleetRecord, scenario: ScenarioId): string {
  const etcd = r.fleets.find((f) => f.id === ETCD);
  const etcdAdded = etcd === undefined ? null : added(r, etcd, scenario);
  const rows: string[][] = [];
  for (const f of r.fleets) {
    const w = f.windows.find((x) => x.scenario === scenario);
    if (w === undefined) {
      if (f.failure !== null && (f.id !== "none-end" || scenario === "steady")) rows.push([f.title, `**failed**: ${f.failure.replace(/\|/g, "\\|").slice(0, 160)}`, ...Array(9).fill("")]);
      continue;
    }
    const a = added(r, f, scenario);
    const client = `${p99(w.client?.put)} / ${p99(w.client?.range)}`;
    const failed = w.failures.length > 0 ? ` ⚠ ${w.failures.join("; ").replace(/\|/g, "\\|").slice(0, 120)}` : "";
    if (a === null) {
      rows.push([`${f.title}${failed}`, fmt(w.etcdCores, 3), "—", "—", "—", "—", perMember(w.requests.map((x) => x?.total ?? null), 0), perMember(w.connsPerS, 1), "—", client]);
      continue;
    }
    rows.push([
      `${f.title} (${f.gateways})${failed}`,
      fmt(w.etcdCores, 3),
      fmt(a.cores, 3),
      fmt(a.perGatewayMillicores, 3),
      fmt(a.tenThousandCores, 1),
      f.id === ETCD || etcdAdded === null ? "—" : ratio(a.cores, etcdAdded.cores, driftCores(r) ?? 0),
      perMember(a.requests, 0),
      perMember(a.conns, 1),
      a.ownMillicores === null ? "—" : fmt(a.ownMillicores, 2),
      client,
    ]);
  }
  return table(
    ["fleet (gateways)", "etcd CPU (cores, 3 members)", "added by the fleet (cores)", "per gateway (millicores)", "× 10,000 gateways (cores)", "per gateway vs etcd's gateway", "requests/s per member m0 / m1 / m2 (added)", "new connections/s per member (added)", "gateway's own CPU (millicores per gateway)", "client p99 put / range (ms)"],
    rows,
  );
}

/** Memory: the gateways' own, and the members' with and without each fleet (first window). */
export function memoryTable(r: FleetRecord): string {
  const first = r.plan.scenarios[0] ?? "steady";
  const etcdMem = r.fleets.find((f) => f.id === ETCD)?.memory ?? null;
  const rows = r.fleets.map((f) => {
    const w = f.windows.find((x) => x.scenario === first);
    const rss = w === undefined ? "—" : `${perMember(w.memberRssMiB, 0)} (${fmt(w.memberRssMiB.reduce<number>((s, x) => s + (x ?? 0), 0), 0)})`;
    const fds = w === undefined ? "—" : perMember(w.memberFds, 0);
    const m = f.memory;
    if (m === null) return [f.title, "—", "—", "—", "—", rss, fds];
    const vs = f.id === ETCD || etcdMem === null ? "—" : ratio(m.privateMiB.median, etcdMem.privateMiB.median);
    return [`${f.title} (${m.gateways})`, `${fmt(m.privateMiB.median, 1)} (${fmt(m.privateMiB.min, 1)}–${fmt(m.privateMiB.max, 1)})`, vs, fmt(m.rssMiB, 1), fmt(m.pssMiB, 1), rss, fds];
  });
  return table(["fleet", "private MiB per gateway: median (min–max)", "vs etcd's gateway", "RSS MiB per gateway (median)", "PSS MiB per gateway (median)", "members' RSS MiB m0 / m1 / m2 (sum)", "members' open fds m0 / m1 / m2"], rows);
}

/** Requests per second per gateway by kind (added to the baseline, summed over members), steady state. */
export function requestKindsTable(r: FleetRecord): string {
  const scenario = r.plan.scenarios[0] ?? "steady";
  const base = windowOf(r, BASELINE, scenario);
  const kindsOf = (w: WindowResult | undefined) => {
    const out: Record<string, number> = {};
    for (const m of w?.requests ?? []) {
      if (m === null) continue;
      out["GET /health"] = (out["GET /health"] ?? 0) + m.health;
      for (const [k, v] of Object.entries(m.grpc)) out[k] = (out[k] ?? 0) + v;
    }
    return out;
  };
  const b = kindsOf(base);
  const rows: string[][] = [];
  for (const f of r.fleets.filter((x) => x.gateways > 0)) {
    const w = kindsOf(f.windows.find((x) => x.scenario === scenario));
    const a = added(r, f, scenario);
    const kinds = Object.keys(w).map((k) => [k, (w[k]! - (b[k] ?? 0)) / f.gateways] as const).filter(([, v]) => Math.abs(v) >= 0.0005).sort((x, y) => y[1] - x[1]);
    rows.push([f.title, a === null ? "—" : fmt(a.requestsPerGateway, 3), a === null ? "—" : fmt(a.connsPerGateway, 3), kinds.map(([k, v]) => `${k} ${fmt(v, 3)}`).join(", ") || "none"]);
  }
  return table(["fleet", "requests/s per gateway", "new connections/s per gateway", "by kind (per gateway per second; gRPC method names, JSON-gateway calls included)"], rows);
}

/** Member-list calls and DNS queries per gateway per minute of the discovery fleets. */
export function discoveryTable(r: FleetRecord): string {
  const rows = r.fleets.filter((f) => f.id === "ours-sync" || f.id === "ours-srv").map((f) => {
    const w = f.windows[0];
    if (w === undefined || w.discovery === null) return [f.title, "—", "—"];
    const perMin = (x: number) => fmt((x / f.gateways / w.seconds) * 60, 2);
    return [`${f.title} (${f.gateways})`, perMin(w.discovery.memberList), perMin(w.discovery.dnsQueries)];
  });
  rows.push(["etcd's gateway", "0 (it has no member-list sync)", "0 after start (it resolves `--discovery-srv` once, when it starts)"]);
  return table(["fleet", `member-list calls per gateway per minute (sync every ${r.plan.syncIntervalS} s)`, `DNS queries per gateway per minute (record TTL ${r.plan.syncIntervalS} s)`], rows);
}

/** Every window as measured, for checking: per-member CPU, the machine's load, what happened, what failed. */
export function windowsTable(r: FleetRecord): string {
  const rows = r.fleets.flatMap((f) =>
    f.windows.map((w) => [
      f.id,
      w.scenario,
      fmt(w.seconds, 1),
      perMember(w.memberCores, 3),
      fmt(w.machineCores, 2),
      fmt(w.load1, 2),
      w.event ?? "",
      `${w.client?.put.ok ?? 0} / ${w.client?.range.ok ?? 0}`,
      w.transitions === null ? "" : `${w.transitions.down} / ${w.transitions.up}`,
      w.failures.join("; ").replace(/\|/g, "\\|") || "",
    ]),
  );
  return table(["fleet", "scenario", "s", "etcd cores m0 / m1 / m2", "machine busy cores", "load (1 min)", "event", "client puts / ranges done", "gateways' logs: members marked down / up", "failures"], rows);
}

/** The JSON for tools: the record, and what each fleet adds in each scenario. */
export function fleetJson(r: FleetRecord): unknown {
  const derived: Record<string, Partial<Record<ScenarioId, Added | null>>> = {};
  for (const f of r.fleets) {
    if (f.gateways === 0) continue;
    derived[f.id] = {};
    for (const s of SCENARIO_IDS) if (f.windows.some((w) => w.scenario === s)) derived[f.id]![s] = added(r, f, s);
  }
  return { ...r, roles: ROLES, scenarios: SCENARIO_TEXT, added: derived };
}
