/**
 * The faults of the fleet balance benchmark, done to the real etcd cluster while a fleet and its
 * clients run: a rolling restart (each member SIGTERMed in turn, as an upgrade would, down a while,
 * started again and waited healthy, then a pause before the next), an outage (all three SIGKILLed,
 * then started again a few seconds apart) and a flapping member (m2 stopped and started over and
 * over). Each records what it did when, and resolves once every member is back and healthy.
 *
 * @module
 */
import type { Cluster } from "../../test/support/cluster.ts";
import { startMember, waitUsable, type CounterLedger, type OwnHealthChecks } from "./fleet-balance-sampler.ts";

export const BALANCE_SCENARIOS = ["rolling", "outage", "flapping"] as const;
export type BalanceScenario = (typeof BALANCE_SCENARIOS)[number];

/** Durations of the faults, seconds. */
export interface FaultTiming {
  /** Rolling: how long each member stays down, and the pause after it is back before the next. */
  rollingDownS: number;
  rollingGapS: number;
  /** Outage: how long all three stay down, and the spacing of their starts. */
  outageDownS: number;
  outageStaggerS: number;
  /** Flapping: m2 down this long, up this long, over and over for `flapForS`. */
  flapDownS: number;
  flapUpS: number;
  flapForS: number;
}

/** One thing a fault did to a member. `usable`: its `GET /health` said healthy again. */
export interface FaultEvent {
  /** Unix time, ms. */
  at: number;
  member: number;
  what: "stop" | "kill" | "start" | "usable";
}

export interface FaultContext {
  cluster: Cluster;
  timing: FaultTiming;
  /** Read before a member is stopped, so that the cluster's load over the scenario is complete. */
  ledger: CounterLedger;
  own: OwnHealthChecks;
  events: FaultEvent[];
}

/** What each scenario does, for the report. */
export function scenarioText(id: BalanceScenario, t: FaultTiming): string {
  switch (id) {
    case "rolling":
      return `rolling restart: m0, m1, m2 in turn SIGTERMed (as an upgrade would), down ${t.rollingDownS} s, started again and waited healthy, then ${t.rollingGapS} s before the next`;
    case "outage":
      return `outage: all three SIGKILLed, down ${t.outageDownS} s, started again m0, +${t.outageStaggerS} s m1, +${t.outageStaggerS} s m2`;
    case "flapping":
      return `flapping member: m2 SIGTERMed and started again over and over (down ${t.flapDownS} s, up ${t.flapUpS} s) for ${t.flapForS} s`;
  }
}

/** Bound on a member's return to health. */
const USABLE_TIMEOUT_MS = 60_000;

const sleepUntil = (at: number) => Bun.sleep(Math.max(0, at - Date.now()));

function note(ctx: FaultContext, member: number, what: FaultEvent["what"], at = Date.now()): void {
  ctx.events.push({ at, member, what });
}

/** Stops member `i` with `signal` (its counters read first); resolves to when it was signalled. */
async function stop(ctx: FaultContext, i: number, signal: "SIGTERM" | "SIGKILL"): Promise<number> {
  await ctx.ledger.beforeStop(i);
  const at = Date.now();
  note(ctx, i, signal === "SIGKILL" ? "kill" : "stop", at);
  await ctx.cluster.kill(i, signal);
  return at;
}

/** Starts member `i` and waits until it is healthy; resolves to when it was. */
async function startAndWait(ctx: FaultContext, i: number): Promise<number> {
  startMember(ctx.cluster, i);
  note(ctx, i, "start");
  const at = await waitUsable(ctx.cluster, i, ctx.own, USABLE_TIMEOUT_MS);
  note(ctx, i, "usable", at);
  return at;
}

async function rolling(ctx: FaultContext): Promise<number> {
  const t = ctx.timing;
  let back = Date.now();
  for (let i = 0; i < ctx.cluster.members.length; i++) {
    const stoppedAt = await stop(ctx, i, "SIGTERM");
    await sleepUntil(stoppedAt + t.rollingDownS * 1000);
    back = await startAndWait(ctx, i);
    if (i < ctx.cluster.members.length - 1) await Bun.sleep(t.rollingGapS * 1000);
  }
  return back;
}

async function outage(ctx: FaultContext): Promise<number> {
  const t = ctx.timing;
  const all = ctx.cluster.members.map((_, i) => i);
  for (const i of all) await ctx.ledger.beforeStop(i);
  const at = Date.now();
  for (const i of all) note(ctx, i, "kill", at);
  await Promise.all(all.map((i) => ctx.cluster.kill(i, "SIGKILL")));
  await sleepUntil(at + t.outageDownS * 1000);
  const waits: Promise<number>[] = [];
  for (const i of all) {
    if (i > 0) await Bun.sleep(t.outageStaggerS * 1000);
    waits.push(startAndWait(ctx, i));
  }
  return Math.max(...(await Promise.all(waits)));
}

async function flapping(ctx: FaultContext): Promise<number> {
  const t = ctx.timing;
  const victim = ctx.cluster.members.length - 1;
  const end = Date.now() + t.flapForS * 1000;
  // Each start is waited for in the background only: the member may be stopped again before it is healthy.
  const pending: Promise<unknown>[] = [];
  // A round starts (with a stop) while the time is not up: 60 s of 5 s down, 8 s up is 5 rounds.
  while (pending.length === 0 || Date.now() < end) {
    const stoppedAt = await stop(ctx, victim, "SIGTERM");
    await sleepUntil(stoppedAt + t.flapDownS * 1000);
    startMember(ctx.cluster, victim);
    note(ctx, victim, "start");
    const startedAt = Date.now();
    pending.push(waitUsable(ctx.cluster, victim, ctx.own, t.flapUpS * 1000).then((u) => note(ctx, victim, "usable", u), () => undefined));
    await sleepUntil(startedAt + t.flapUpS * 1000);
  }
  await Promise.all(pending);
  if (ctx.events.some((e) => e.what === "usable" && e.at >= (ctx.events.findLast((x) => x.what === "start")?.at ?? 0))) {
    return ctx.events.findLast((e) => e.what === "usable")!.at;
  }
  const at = await waitUsable(ctx.cluster, victim, ctx.own, USABLE_TIMEOUT_MS);
  note(ctx, victim, "usable", at);
  return at;
}

/** Does scenario `id` to the cluster; resolves to when the last member was back and healthy (Unix ms). */
export async function runFault(id: BalanceScenario, ctx: FaultContext): Promise<number> {
  switch (id) {
    case "rolling":
      return await rolling(ctx);
    case "outage":
      return await outage(ctx);
    case "flapping":
      return await flapping(ctx);
  }
}
