/**
 * The scenarios of the fleet benchmark and the cluster's roles in them. Every fleet starts from
 * the same cluster: all three members running and healthy, m1 the leader. The client talks to m0
 * (a follower) throughout; `member-down` SIGKILLs m2 (the other follower) at the start of the
 * window and restarts it after; `leader-change` moves the leadership from m1 to m2 with
 * `etcdctl move-leader` at the start of the window.
 *
 * @module
 */
import type { Cluster } from "../../test/support/cluster.ts";
import { sleep } from "../../test/support/net.ts";
import type { ScenarioId } from "./fleet-fleets.ts";

/** Member indexes: the client's member, the leader every fleet starts with, the member killed and the leader's successor. */
export const ROLES = { client: 0, leader: 1, victim: 2, successor: 2 } as const;

/** What each scenario does, for the report. */
export const SCENARIO_TEXT: Record<ScenarioId, string> = {
  steady: "steady state: all three members up, nothing changes",
  "member-down": `one member down: m${ROLES.victim} (a follower) SIGKILLed at the start of the window, restarted after it`,
  "leader-change": `a leader change: \`etcdctl move-leader\` from m${ROLES.leader} to m${ROLES.successor} at the start of the window`,
};

/**
 * Moves the leadership to member `to` (`etcdctl move-leader`, sent to the current leader) and waits
 * until every running member agrees; resolves to a line saying what happened.
 */
export async function moveLeader(cluster: Cluster, to: number): Promise<string> {
  const t0 = performance.now();
  const from = await cluster.leaderIndex();
  if (from === to) return `m${to} already led`;
  const hex = BigInt(await cluster.memberIdOf(to)).toString(16);
  const r = await cluster.etcdctl(["move-leader", hex], { endpoints: cluster.members[from]!.endpoint });
  if (r.code !== 0) throw new Error(`etcdctl move-leader ${hex} (m${to}) failed: ${(r.stderr || r.stdout).trim()}`);
  for (let i = 0; i < 100; i++) {
    if ((await cluster.leaderIndex()) === to) return `leader moved m${from} → m${to} in ${Math.round(performance.now() - t0)} ms`;
    await sleep(100);
  }
  throw new Error(`m${to} does not lead 10 s after etcdctl move-leader`);
}

/** All members running and healthy (stopped ones restarted), m1 leading. */
export async function prepareCluster(cluster: Cluster): Promise<void> {
  for (let i = 0; i < cluster.members.length; i++) if (!cluster.isRunning(i)) await cluster.restart(i, 30_000);
  await cluster.waitHealthy(undefined, 30_000);
  await moveLeader(cluster, ROLES.leader);
}

/** Does what scenario `id` does at the start of its window; resolves to what happened. */
export async function disrupt(id: ScenarioId, cluster: Cluster): Promise<string | null> {
  if (id === "member-down") {
    const leader = await cluster.leaderIndex();
    if (leader === ROLES.victim) throw new Error(`m${ROLES.victim} leads: not killing the leader in the member-down scenario`);
    await cluster.kill(ROLES.victim);
    return `m${ROLES.victim} SIGKILLed`;
  }
  if (id === "leader-change") return await moveLeader(cluster, ROLES.successor);
  return null;
}

/** Undoes what scenario `id` did: restarts the killed member and waits until it is healthy. */
export async function restore(id: ScenarioId, cluster: Cluster): Promise<void> {
  if (id === "member-down" && !cluster.isRunning(ROLES.victim)) await cluster.restart(ROLES.victim, 30_000);
}
