/**
 * What the fleet balance benchmark's readings (scripts/bench/fleet-balance-run.ts) say against the
 * targets of issue 22 ("Fleet balance"):
 *
 * - **New connections**, once every member is back: each member's share of the client connections
 *   the members accepted in the last `shareWindowS` seconds (connections relayed for the bench's
 *   clients, told from the gateways' own health checks by their bytes: fleet-balance-sampler.ts)
 *   lies within 3 standard deviations of a fair third. The unit of chance is the gateway, not the connection (a sticky gateway sends all of its
 *   connections to one member), so the bound is 1/3 ± 3·√(2/(9N)) for N gateways: 21.8–44.9 % at
 *   N = 150.
 * - **Open connections** at the end: every member holds 20–47 % of the clients' connections; the target of a contender
 *   that rebalances open connections, reached within 5 minutes of the last member's return (the time
 *   it took is reported).
 * - **Outage herd**: once a second member is usable again, the first member back gets at most twice
 *   its fair share of new client connections per second (all of them that second ÷ usable members),
 *   at the second of its peak.
 * - **Errors** the clients saw, by kind, and the **cluster's request load** (health checks) over
 *   the scenario against the steady window of the same fleet: reported, no target.
 *
 * @module
 */
import { ERROR_KINDS, type ClientBucket, type ErrorKind } from "./fleet-balance-client.ts";
import { accepted, acceptedClients, type Sample, type Served } from "./fleet-balance-sampler.ts";
import { inBand, type BalancePlan, type ScenarioRun } from "./fleet-balance-run.ts";

/** One second of a run, for the charts and the JSON. */
export interface Second {
  /** Seconds since the first fault. */
  t: number;
  /** Per member: the clients' open connections, and all established ones (health checks and the members' own included). */
  clients: number[];
  established: number[];
  /** Per member, in the second before this reading (null for the first reading): new client connections, and all new connections. */
  newClients: number[] | null;
  accepted: number[] | null;
  /** Client requests answered 200, and failed (all kinds), in that second. */
  ok: number;
  errors: number;
}

export interface ScenarioResult {
  /** Share of new client connections per member over the last window, the bound each must be within; and of all new connections. */
  newShares: { shares: number[]; total: number; windowS: number; bound: [number, number]; met: boolean; allShares: number[]; allTotal: number } | null;
  /** Share of the clients' open connections per member at the end, within `band`?; and of all established ones. */
  openShares: { shares: number[]; total: number; met: boolean; allShares: number[] } | null;
  /** Seconds after the last member's return from which the open shares stayed in the band to the end; null: never. */
  balancedAfterS: number | null;
  /** Outage only: the first member back's peak new connections per second once a second member was usable. */
  herd: { member: number; peakPerS: number; fairPerS: number; ratio: number | null; atS: number; met: boolean } | null;
  /** Client outcomes in the seconds from the first fault to the end, and errors in the seconds wholly inside the steady window. */
  errors: Record<ErrorKind, number>;
  ok: number;
  dropped: number;
  steadyErrors: number;
  /** Requests per second the members served (health checks: `GET /health` and gRPC/JSON calls; the bench's own taken out). */
  load: { steadyPerS: number | null; scenarioPerS: number | null; ratio: number | null };
}

/** Seconds since the first fault of Unix ms `at`. */
const rel = (run: ScenarioRun, at: number) => (at - run.faultFrom) / 1000;

/** Client buckets (whole seconds) overlapping [from, to), or with `whole`, lying wholly inside it (Unix ms). */
function clientIn(buckets: readonly ClientBucket[], from: number, to: number, whole = false): ClientBucket[] {
  return buckets.filter((b) => (whole ? b.s * 1000 >= from && (b.s + 1) * 1000 <= to : (b.s + 1) * 1000 > from && b.s * 1000 < to));
}

const errorsOf = (b: ClientBucket) => ERROR_KINDS.reduce((s, k) => s + b.errors[k], 0);

/** The run's readings, one per second, with the client's counts of the second each ends. */
export function seconds(run: ScenarioRun): Second[] {
  const bySecond = new Map(run.client.map((b) => [b.s, b]));
  return run.samples.map((s, k) => {
    const b = bySecond.get(Math.floor(s.at / 1000) - 1);
    const prev = run.samples[k - 1];
    return {
      t: Math.round(rel(run, s.at) * 10) / 10, clients: s.clients, established: s.established,
      newClients: prev === undefined ? null : acceptedClients(prev, s), accepted: prev === undefined ? null : accepted(prev, s),
      ok: b?.ok ?? 0, errors: b === undefined ? 0 : errorsOf(b),
    };
  });
}

/** Pairs of consecutive readings whose later one is in (from, to]. */
function pairsIn(samples: readonly Sample[], from: number, to: number): [Sample, Sample][] {
  const out: [Sample, Sample][] = [];
  for (let k = 1; k < samples.length; k++) if (samples[k]!.at > from && samples[k]!.at <= to) out.push([samples[k - 1]!, samples[k]!]);
  return out;
}

/** Each count's share of their total (0 when the total is 0). */
function shareOf(counts: readonly number[]): { shares: number[]; total: number } {
  const total = counts.reduce((a, b) => a + b, 0);
  return { shares: counts.map((x) => (total > 0 ? x / total : 0)), total };
}

/** 1/3 ± 3 standard deviations of one member's share when each of `n` gateways picks one of 3 members. */
export function fairBound(n: number): [number, number] {
  const sd = Math.sqrt(2 / (9 * Math.max(1, n)));
  return [Math.max(0, 1 / 3 - 3 * sd), Math.min(1, 1 / 3 + 3 * sd)];
}

function newShares(run: ScenarioRun, plan: BalancePlan): ScenarioResult["newShares"] {
  const last = run.samples.at(-1);
  if (last === undefined || run.lastBackAt === null) return null;
  const from = Math.max(run.lastBackAt, last.at - plan.shareWindowS * 1000);
  const pairs = pairsIn(run.samples, from, last.at);
  if (pairs.length === 0) return null;
  const sum = (f: (a: Sample, b: Sample) => number[]) => last.clients.map((_, i) => pairs.reduce((s, [a, b]) => s + f(a, b)[i]!, 0));
  const clients = shareOf(sum(acceptedClients));
  const all = shareOf(sum(accepted));
  const bound = fairBound(run.gateways);
  const met = clients.total > 0 && clients.shares.every((s) => s >= bound[0] && s <= bound[1]);
  return { ...clients, windowS: (last.at - pairs[0]![0].at) / 1000, bound, met, allShares: all.shares, allTotal: all.total };
}

function openShares(run: ScenarioRun, plan: BalancePlan): ScenarioResult["openShares"] {
  const last = run.samples.at(-1);
  if (last === undefined) return null;
  return { ...shareOf(last.clients), met: inBand(last, plan.band), allShares: shareOf(last.established).shares };
}

function balancedAfter(run: ScenarioRun, plan: BalancePlan): number | null {
  if (run.lastBackAt === null) return null;
  const after = run.samples.filter((s) => s.at >= run.lastBackAt!);
  let from: number | null = null;
  for (const s of after) {
    if (!inBand(s, plan.band)) from = null;
    else from ??= s.at;
  }
  return from === null ? null : (from - run.lastBackAt) / 1000;
}

/** How long after a second member is usable the herd on the first member back is looked for. */
export const HERD_WINDOW_MS = 30_000;

function herd(run: ScenarioRun): ScenarioResult["herd"] {
  if (run.scenario !== "outage") return null;
  const firstStart = run.events.find((e) => e.what === "start");
  const usable = run.events.filter((e) => e.what === "usable").sort((a, b) => a.at - b.at);
  if (firstStart === undefined || usable.length < 2) return null;
  const first = firstStart.member;
  const t2 = usable[1]!.at;
  let best: NonNullable<ScenarioResult["herd"]> | null = null;
  for (const [a, b] of pairsIn(run.samples, t2, t2 + HERD_WINDOW_MS)) {
    const n = acceptedClients(a, b);
    const up = usable.filter((u) => u.at <= b.at).length;
    const fair = n.reduce((s, x) => s + Math.max(0, x), 0) / Math.max(1, up);
    if (best === null || n[first]! > best.peakPerS) {
      const ratio = fair > 0 ? n[first]! / fair : null;
      best = { member: first, peakPerS: n[first]!, fairPerS: fair, ratio, atS: rel(run, b.at), met: ratio === null || ratio <= 2 };
    }
  }
  return best;
}

/** Requests per second over a window from a ledger's counts; `own` taken out of the health checks. */
function perSecond(served: readonly Served[] | null, own: readonly number[], seconds: number): number | null {
  if (served === null || seconds <= 0) return null;
  const health = served.reduce((s, x) => s + x.health, 0) - own.reduce((s, x) => s + x, 0);
  return (Math.max(0, health) + served.reduce((s, x) => s + x.grpc, 0)) / seconds;
}

/** Everything the report says of one scenario run. */
export function analyse(run: ScenarioRun, plan: BalancePlan): ScenarioResult {
  const during = clientIn(run.client, run.faultFrom, run.end);
  const errors = Object.fromEntries(ERROR_KINDS.map((k) => [k, during.reduce((s, b) => s + b.errors[k], 0)])) as Record<ErrorKind, number>;
  const steadyPerS = perSecond(run.load.steady, [0, 0, 0], (run.steadyTo - run.steadyFrom) / 1000);
  const scenarioPerS = perSecond(run.load.scenario, run.load.ownHealth, (run.end - run.faultFrom) / 1000);
  return {
    newShares: newShares(run, plan),
    openShares: openShares(run, plan),
    balancedAfterS: balancedAfter(run, plan),
    herd: herd(run),
    errors,
    ok: during.reduce((s, b) => s + b.ok, 0),
    dropped: during.reduce((s, b) => s + b.dropped, 0),
    steadyErrors: clientIn(run.client, run.steadyFrom, run.steadyTo, true).reduce((s, b) => s + errorsOf(b), 0),
    load: { steadyPerS, scenarioPerS, ratio: steadyPerS !== null && scenarioPerS !== null && steadyPerS > 0 ? scenarioPerS / steadyPerS : null },
  };
}
