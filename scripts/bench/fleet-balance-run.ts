/**
 * One scenario of the fleet balance benchmark for one contender: a fresh fleet of N gateways in
 * front of the healthy cluster, the clients (scripts/bench/fleet-balance-client.ts, a process of
 * their own) on every gateway, a settle time, a steady window (the cluster's request load without a
 * fault), the fault (scripts/bench/fleet-balance-faults.ts), then observation until the minimum
 * time after the last member came back has passed (for a contender that rebalances open
 * connections: until the open connections are spread within the band, at most a maximum time).
 * Readings once a second throughout (scripts/bench/fleet-balance-sampler.ts). Everything started
 * here is stopped before it returns, whatever happened.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Cluster } from "../../test/support/cluster.ts";
import { benchDir, spawnChild, type Child } from "./children.ts";
import type { ClientBucket, ClientConfig } from "./fleet-balance-client.ts";
import { runFault, type BalanceScenario, type FaultEvent, type FaultTiming } from "./fleet-balance-faults.ts";
import { CounterLedger, Sampler, type Sample, type Served } from "./fleet-balance-sampler.ts";
import { startFleet, type FleetDef, type FleetTarget, type RunningFleet } from "./fleet-fleets.ts";
import { prepareCluster } from "./fleet-scenarios.ts";

/** Sizes and durations of a balance run. */
export interface BalancePlan {
  quick: boolean;
  /** Gateways per fleet, and how many are started per second. */
  size: number;
  startRate: number;
  /** Client connections per gateway, ms between their requests, ms between short connections per gateway, request bound. */
  clientsPerGateway: number;
  requestEveryMs: number;
  shortEveryMs: number;
  requestTimeoutMs: number;
  /** After the fleet and its clients started, before the steady window. */
  settleS: number;
  /** The steady window: the cluster's load without a fault. */
  steadyS: number;
  timing: FaultTiming;
  /** Observation after the last member is back: at least this long (flapping: `flapObserveS`). */
  observeS: number;
  flapObserveS: number;
  /** A rebalancing contender is observed until balanced, at most this long after the last member is back. */
  rebalanceMaxS: number;
  /** Open-connection share band every member should be in (fractions). */
  band: [number, number];
  /** Seconds the band must hold before a rebalancing contender's observation stops early. */
  bandHoldS: number;
  /** The window at the end whose new connections are shared out. */
  shareWindowS: number;
  scenarios: BalanceScenario[];
}

/** A contender of the balance run. */
export interface BalanceContender {
  def: FleetDef;
  /** Moves open connections between members: observed until balanced (`rebalanceMaxS` at most). */
  rebalances: boolean;
  /** Why it is not run (e.g. the binary has no such flag). */
  skip?: string;
}

/** What one scenario of one contender recorded: raw readings, analysed by fleet-balance-report.ts. */
export interface ScenarioRun {
  scenario: BalanceScenario;
  contender: string;
  gateways: number;
  failure: string | null;
  /** Unix ms: the steady window, the first fault, the last member back healthy, the end. */
  steadyFrom: number;
  steadyTo: number;
  faultFrom: number;
  lastBackAt: number | null;
  end: number;
  events: FaultEvent[];
  samples: Sample[];
  client: ClientBucket[];
  /** Requests each member served in the steady window and from the first fault to the end; the bench's own `GET /health` in the latter. */
  load: { steady: Served[] | null; scenario: Served[] | null; ownHealth: number[] };
  /** Gateways that died, with their log tails. */
  dead: string[];
}

/** Waits `ms`, failing early if the client process exits. */
async function watchClient(client: Child, ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (!client.running()) throw new Error(`the client process exited: ${client.logTail(3)}`);
    await Bun.sleep(Math.min(500, end - performance.now()));
  }
}

/** Whether every member's share of the clients' open connections in `s` lies within `band`. */
export function inBand(s: Sample, band: readonly [number, number]): boolean {
  const total = s.clients.reduce((a, b) => a + b, 0);
  return total > 0 && s.clients.every((e) => e / total >= band[0] && e / total <= band[1]);
}

/** Observes after the last member is back: `minS` at least; a rebalancing contender until the band held `bandHoldS` (at most `maxS`). */
async function observe(run: ScenarioRun, sampler: Sampler, client: Child, plan: BalancePlan, minS: number, rebalances: boolean): Promise<void> {
  const back = run.lastBackAt ?? Date.now();
  const maxS = rebalances ? Math.max(minS, plan.rebalanceMaxS) : minS;
  for (;;) {
    await watchClient(client, 1000);
    const elapsed = (Date.now() - back) / 1000;
    if (elapsed >= maxS) return;
    if (elapsed < minS) continue;
    const recent = sampler.samples.slice(-plan.bandHoldS);
    if (rebalances && recent.length >= plan.bandHoldS && recent.every((s) => s.at >= back && inBand(s, plan.band))) return;
  }
}

function startClient(plan: BalancePlan, fleet: RunningFleet, name: string): { child: Child; report: string } {
  const report = join(benchDir(), `${name}.jsonl`);
  const cfg: ClientConfig = {
    ports: fleet.ports,
    perGateway: plan.clientsPerGateway,
    everyMs: plan.requestEveryMs,
    shortEveryMs: plan.shortEveryMs,
    timeoutMs: plan.requestTimeoutMs,
    // Paced: about 100 long-lived connects a second, at least over 2 s.
    rampMs: Math.max(2000, (fleet.ports.length * plan.clientsPerGateway * 1000) / 100),
    report,
  };
  const child = spawnChild(name, [process.execPath, join(import.meta.dir, "fleet-balance-client.ts"), JSON.stringify(cfg)]);
  return { child, report };
}

function readClientReport(path: string): ClientBucket[] {
  try {
    return readFileSync(path, "utf8").split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l) as ClientBucket);
  } catch {
    return [];
  }
}

/** The steady window, the fault, the observation; fills `run`. */
async function phases(run: ScenarioRun, cluster: Cluster, sampler: Sampler, client: Child, plan: BalancePlan, rebalances: boolean): Promise<void> {
  await watchClient(client, plan.settleS * 1000);
  const steady = new CounterLedger(cluster);
  run.steadyFrom = Date.now();
  await steady.begin();
  await watchClient(client, plan.steadyS * 1000);
  run.load.steady = await steady.end();
  run.steadyTo = Date.now();
  const ledger = new CounterLedger(cluster);
  await ledger.begin();
  run.faultFrom = Date.now();
  const log = (s: string) => process.stderr.write(`bench:fleet --balance: [${run.contender} ${run.scenario}] ${s}\n`);
  log(`steady window done; fault starts`);
  run.lastBackAt = await runFault(run.scenario, { cluster, timing: plan.timing, ledger, own: run.load.ownHealth, events: run.events });
  log(`every member back after ${((run.lastBackAt - run.faultFrom) / 1000).toFixed(1)} s; observing`);
  await observe(run, sampler, client, plan, run.scenario === "flapping" ? plan.flapObserveS : plan.observeS, rebalances);
  run.end = Date.now();
  await sampler.stop();
  run.load.scenario = await ledger.end();
}

/**
 * Runs scenario `scenario` with contender `c` from a healthy cluster; never throws: a failure (the
 * fleet not starting, a member not coming back) is recorded in the result, which keeps what was
 * read until then. `fatal` is set when the contender should not be tried again (its fleet did not start).
 */
export async function runScenario(c: BalanceContender, scenario: BalanceScenario, cluster: Cluster, target: FleetTarget, plan: BalancePlan): Promise<{ run: ScenarioRun; fatal: boolean }> {
  const now = Date.now();
  const run: ScenarioRun = {
    scenario, contender: c.def.id, gateways: 0, failure: null, steadyFrom: now, steadyTo: now, faultFrom: now, lastBackAt: null, end: now,
    events: [], samples: [], client: [], load: { steady: null, scenario: null, ownHealth: cluster.members.map(() => 0) }, dead: [],
  };
  let fleet: RunningFleet | null = null;
  let sampler: Sampler | null = null;
  let client: { child: Child; report: string } | null = null;
  let fatal = false;
  try {
    await prepareCluster(cluster);
    try {
      fleet = await startFleet(c.def, plan.size, plan.startRate, target);
    } catch (e) {
      fatal = true;
      throw e;
    }
    run.gateways = fleet.gateways.length;
    sampler = new Sampler(cluster);
    await sampler.start();
    run.samples = sampler.samples;
    client = startClient(plan, fleet, `balance-client-${c.def.id}-${scenario}`);
    await phases(run, cluster, sampler, client.child, plan, c.rebalances);
    run.failure = sampler.failure;
  } catch (e) {
    run.failure = e instanceof Error ? e.message : String(e);
    run.end = Date.now();
  } finally {
    await sampler?.stop();
    await client?.child.stop();
    if (client !== null) run.client = readClientReport(client.report);
    run.dead = fleet?.dead().slice(0, 5) ?? [];
    await fleet?.stop();
  }
  return { run, fatal };
}
