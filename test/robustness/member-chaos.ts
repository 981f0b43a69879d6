/**
 * Member chaos for the reliability runs: takes a random member of a running cluster down, brings
 * it back a few seconds later, waits a while, and repeats. A member goes down by one of two faults:
 * `kill` (SIGKILL, then a restart on its data dir: a crash, its connections reset by the kernel) or
 * `pause` (SIGSTOP, then SIGCONT: a hung member whose connections stay open and silent). Never more
 * than one member is down: one is only taken down once every member runs and answers `/health`
 * (which needs quorum), so a 3-member cluster keeps its quorum throughout. Every outage is recorded
 * so failures seen by clients can be set against them.
 *
 * @module
 */
import type { Cluster } from "../support/cluster.ts";
import type { Random } from "../support/random.ts";

/** How a member is taken down: SIGKILL and restart, or SIGSTOP and SIGCONT. */
export type MemberFault = "kill" | "pause";

/** One outage of a member; times are `performance.now()` of this process. */
export interface MemberOutage {
  member: number;
  name: string;
  fault: MemberFault;
  /** Whether the member was the leader when taken down (null when no leader could be told). */
  wasLeader: boolean | null;
  downAt: number;
  /** When it was restarted (or continued); null while it is down. */
  backAt: number | null;
  /** When it answered `/health` again; null while it is not healthy. */
  healthyAt: number | null;
}

export interface MemberChaos {
  readonly outages: readonly MemberOutage[];
  /** What went wrong in the chaos loop itself (a member that did not come back); empty when all went well. */
  readonly errors: readonly string[];
  /** Stops the loop: a member that is down is brought back at once; resolves when every member runs and is healthy again (or errors says why not). */
  stop(): Promise<void>;
  /** The outage `t` falls in, from the fault until `graceMs` after the member was healthy again (@default 3000); undefined outside all. */
  outageAt(t: number, graceMs?: number): MemberOutage | undefined;
}

export interface MemberChaosOptions {
  random: Random;
  /** Time everything is up before the next kill, drawn uniformly in [min, max) ms. @default [3000, 7000] */
  upMs?: [number, number];
  /** Time a member stays down, drawn uniformly in [min, max) ms. @default [2000, 5000] */
  downMs?: [number, number];
  /** The faults to draw from, uniformly. @default ["kill"] */
  faults?: MemberFault[];
  /** Bound on a member's restart (until healthy) and on the health wait before a kill. @default 30_000 */
  restartTimeoutMs?: number;
  /** Where to report each kill and restart. @default no output */
  log?: (line: string) => void;
  /** Called right before member `i` is taken down, e.g. to note what depends on it; bounded by the caller. */
  beforeFault?: (i: number) => Promise<void> | void;
}

/**
 * Starts the chaos loop on `cluster` and returns at once; call `stop()` to end it.
 *
 * @example const chaos = startMemberChaos(cluster, { random: seededRandom(1) }); ...; await chaos.stop();
 */
export function startMemberChaos(cluster: Cluster, opts: MemberChaosOptions): MemberChaos {
  const { random } = opts;
  const [upMin, upMax] = opts.upMs ?? [3000, 7000];
  const [downMin, downMax] = opts.downMs ?? [2000, 5000];
  const restartTimeoutMs = opts.restartTimeoutMs ?? 30_000;
  const faults = opts.faults ?? ["kill"];
  const log = opts.log ?? (() => {});
  const outages: MemberOutage[] = [];
  const errors: string[] = [];
  let stopped = false;
  let wake: () => void = () => {};
  const stopSignal = new Promise<void>((resolve) => (wake = resolve));
  /** Sleeps `ms`, or less when stop() is called. */
  const pause = (ms: number) => Promise.race([Bun.sleep(ms), stopSignal]);

  const bringBack = async (outage: MemberOutage) => {
    outage.backAt = performance.now();
    if (outage.fault === "kill") await cluster.restart(outage.member, restartTimeoutMs);
    else {
      process.kill(cluster.members[outage.member]!.pid, "SIGCONT");
      await cluster.waitHealthy(outage.member, restartTimeoutMs);
    }
    outage.healthyAt = performance.now();
    const how = outage.fault === "kill" ? "restarted" : "continued";
    log(`${how} ${outage.name}: down ${((outage.backAt - outage.downAt) / 1000).toFixed(1)} s, healthy ${((outage.healthyAt - outage.backAt) / 1000).toFixed(1)} s later`);
  };

  const loop = (async () => {
    while (!stopped) {
      await pause(random.between(upMin, upMax));
      if (stopped) break;
      // The quorum guard: take one down only when every member runs and is healthy (a paused one is not).
      const down = cluster.members.map((_, i) => i).filter((i) => !cluster.isRunning(i));
      if (down.length > 0) {
        errors.push(`members ${down.map((i) => cluster.members[i]!.name).join(", ")} not running before a fault`);
        break;
      }
      await cluster.waitHealthy(undefined, restartTimeoutMs);
      const member = random.int(cluster.members.length);
      const leader = await cluster.leaderIndex(3000).catch(() => -1);
      const outage: MemberOutage = {
        member,
        name: cluster.members[member]!.name,
        fault: faults[random.int(faults.length)]!,
        wasLeader: leader < 0 ? null : leader === member,
        downAt: performance.now(),
        backAt: null,
        healthyAt: null,
      };
      await opts.beforeFault?.(member);
      outage.downAt = performance.now();
      outages.push(outage);
      // cluster.kill waits for the exit, which a stopped process never does: SIGSTOP goes direct.
      if (outage.fault === "kill") await cluster.kill(member, "SIGKILL");
      else process.kill(cluster.members[member]!.pid, "SIGSTOP");
      log(`${outage.fault === "kill" ? "killed" : "paused (SIGSTOP)"} ${outage.name}${outage.wasLeader ? " (the leader)" : ""}`);
      await pause(random.between(downMin, downMax));
      await bringBack(outage);
    }
  })().catch((e: unknown) => {
    errors.push(e instanceof Error ? e.message : String(e));
  });

  return {
    outages,
    errors,
    async stop() {
      stopped = true;
      wake();
      await loop;
      // A member the loop did not bring back (it threw, or stop came mid-outage) gets one more try, so
      // the caller finds a whole cluster.
      for (const outage of outages.filter((o) => o.healthyAt === null)) {
        if (outage.fault === "kill" && cluster.isRunning(outage.member)) continue;
        await bringBack(outage).catch((e: unknown) => errors.push(`bringing ${outage.name} back after the loop: ${e instanceof Error ? e.message : String(e)}`));
      }
    },
    outageAt(t, graceMs = 3000) {
      return outages.find((o) => t >= o.downAt && t <= (o.healthyAt ?? Number.POSITIVE_INFINITY) + graceMs);
    },
  };
}
