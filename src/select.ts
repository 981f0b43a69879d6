/**
 * Selection policies: for each new client connection, the members to dial, best first.
 *
 * Every policy follows RFC 2782 where members carry SRV priority and weight: only the lowest
 * priority class that has a usable member is chosen from, weights share the choice within it, and
 * weight-0 members get a small chance (static `--endpoints` all have priority 0 and weight 0, so
 * they are simply equal). After the chosen member come the other usable ones (by priority), then
 * the unusable ones, those that still answer first, so that when every member looks bad the
 * gateway still tries them all and recovers the moment the cluster does; members an operator
 * drained come last of all, and members of another cluster never.
 *
 * A policy only reads the member table (and its own rotation state).
 *
 * @module
 */
import type { Member, MemberTable } from "./members.ts";

export type PolicyName = "sticky" | "round-robin" | "least-connections" | "ordered";
export const POLICY_NAMES: readonly PolicyName[] = ["sticky", "round-robin", "least-connections", "ordered"];

export interface Policy {
  readonly name: PolicyName;
  /** The members to try, in order, for one new client connection: every member of the table but those of another cluster. */
  candidates(): readonly Member[];
  /**
   * The index (in the table) of the member this policy prefers now (sticky's chosen member), or -1
   * for policies without one. Worker processes adopt the primary's so that sticky stays sticky.
   */
  position(): number;
  /** Adopts a position decided elsewhere (the primary process). */
  adopt(position: number): void;
  /** The member the next client goes to when the policy knows it in advance (sticky, ordered), without choosing. */
  preferred(): Member | undefined;
}

/**
 * Creates the policy named `name` over `table`.
 *
 * @param random source of randomness in [0, 1); injectable for tests. @default Math.random
 */
export function createPolicy(name: PolicyName, table: MemberTable, random: () => number = Math.random): Policy {
  switch (name) {
    case "sticky":
      return sticky(table, random);
    case "round-robin":
      return roundRobin(table);
    case "least-connections":
      return leastConnections(table, random);
    case "ordered":
      return orderedPolicy(table);
  }
}

/** Always the first usable member in list order. */
function orderedPolicy(table: MemberTable): Policy {
  const cached = cacheWhileUnchanged(table);
  return positionless("ordered", () => cached(bestClass(table.list)[0]), () => bestClass(table.list)[0]);
}

/**
 * `arrange`, reused while the table and the chosen member stay the same: sticky and ordered give
 * every connection the same list, so it is built once instead of per connection. Only a list with
 * every member usable is kept: the unusable ones' order follows their most recent success, which
 * changes without a write to the table.
 */
function cacheWhileUnchanged(table: MemberTable): (chosen: Member | undefined) => readonly Member[] {
  let kept: { generation: number; chosen: Member | undefined; list: readonly Member[] } | null = null;
  return (chosen) => {
    if (kept !== null && kept.generation === table.generation && kept.chosen === chosen) return kept.list;
    const list = arrange(table.list, chosen);
    kept = list.every((m) => m.usable) ? { generation: table.generation, chosen, list } : null;
    return list;
  };
}

function positionless(name: PolicyName, candidates: () => readonly Member[], preferred: () => Member | undefined = () => undefined): Policy {
  return { name, candidates, position: () => -1, adopt() {}, preferred };
}

/**
 * The seed's policy: one member, chosen at random (by weight) at start, takes every connection
 * until a dial to it fails or it is marked down; then the next usable member in rotation takes over
 * and keeps them until it fails in turn. It does not switch back when the first one recovers.
 */
function sticky(table: MemberTable, random: () => number): Policy {
  let current: Member | undefined;
  /** The member failover moved to last: it keeps the clients until it fails in turn, not until it is read again. */
  let moved: Member | undefined;
  const good = (m: Member) => m.usable && m.failures === 0;
  const settle = (): Member | undefined => {
    const list = table.list;
    const known = current !== undefined && list.includes(current);
    if (known && good(current!)) return current;
    // Prefer members without a failed dial; else any usable one.
    const good1 = bestClass(list.filter(good));
    const pool = good1.length > 0 ? good1 : bestClass(list);
    if (pool.length === 0) return known ? current : (current = list[0]);
    if (!known) return (current = weightedPick(pool, random));
    // Every usable member has a failed dial behind it: stay (each read would otherwise move on).
    if (good1.length === 0 && pool.includes(current!) && moved === current) return current;
    // Failover: the next member in rotation, which is also where the failing connection itself went
    // (see arrange), so every process and every connection agrees without a coin toss.
    const start = list.indexOf(current!);
    for (let i = 1; i <= list.length; i++) {
      const m = list[(start + i) % list.length]!;
      if (pool.includes(m)) return (current = moved = m);
    }
    return current;
  };
  const cached = cacheWhileUnchanged(table);
  return {
    name: "sticky",
    candidates: () => cached(settle()),
    position: () => {
      const m = settle();
      return m === undefined ? -1 : table.list.indexOf(m);
    },
    adopt(position) {
      const m = table.list[position];
      if (m !== undefined) current = m;
    },
    preferred: settle,
  };
}

/**
 * etcd's own gateway: each new connection goes to the next usable member in rotation; with SRV
 * weights, a smooth weighted round-robin (each member's share equals its weight, interleaved).
 */
function roundRobin(table: MemberTable): Policy {
  const credit = new WeakMap<Member, number>();
  return positionless("round-robin", () => {
    const cls = bestClass(table.list);
    if (cls.length === 0) return arrange(table.list, undefined);
    const weights = effectiveWeights(cls);
    let total = 0;
    let best = cls[0]!;
    let bestCredit = -Infinity;
    cls.forEach((m, i) => {
      const w = weights[i]!;
      total += w;
      const c = (credit.get(m) ?? 0) + w;
      credit.set(m, c);
      if (c > bestCredit) {
        bestCredit = c;
        best = m;
      }
    });
    credit.set(best, bestCredit - total);
    return arrange(table.list, best);
  });
}

/**
 * Power of two random choices: of two random usable members (drawn by weight), the one with fewer
 * open connections per unit of weight (HAProxy's random(2), Envoy's LEAST_REQUEST); balances
 * long-lived gRPC connections without the herding of a strict least-connections pick.
 */
function leastConnections(table: MemberTable, random: () => number): Policy {
  return positionless("least-connections", () => {
    const cls = bestClass(table.list);
    if (cls.length < 2) return arrange(table.list, cls[0]);
    const weights = effectiveWeights(cls);
    const i = weightedIndex(weights, random);
    // The second draw excludes the first.
    const rest = weights.map((w, k) => (k === i ? 0 : w));
    const j = weightedIndex(rest, random);
    const load = (k: number) => cls[k]!.connections / weights[k]!;
    return arrange(table.list, load(j) < load(i) ? cls[j] : cls[i]);
  });
}

/** Usable members of the lowest SRV priority value that has any, in table order. */
export function bestClass(list: readonly Member[]): Member[] {
  let best = Infinity;
  for (const m of list) if (m.usable && m.priority < best) best = m.priority;
  return list.filter((m) => m.usable && m.priority === best);
}

/**
 * RFC 2782 weights as numbers to draw with: all zero means equal; otherwise weight-0 members
 * share a 1 % chance between them ("a very small chance of being selected").
 */
export function effectiveWeights(members: readonly Member[]): number[] {
  const positive = members.reduce((sum, m) => sum + m.weight, 0);
  if (positive === 0) return members.map(() => 1);
  const zeros = members.filter((m) => m.weight === 0).length;
  return members.map((m) => (m.weight > 0 ? m.weight : (positive * 0.01) / zeros));
}

/** Draws an index with probability proportional to its weight (no off-by-one: each unit of weight is one slot). */
export function weightedIndex(weights: readonly number[], random: () => number): number {
  const total = weights.reduce((a, b) => a + b, 0);
  let x = random() * total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i]!;
    if (x < 0 && weights[i]! > 0) return i;
  }
  // Rounding at the very top of the range: the last member with weight.
  for (let i = weights.length - 1; i >= 0; i--) if (weights[i]! > 0) return i;
  return 0;
}

/** One member of `members` chosen by RFC 2782 weight. */
export function weightedPick(members: readonly Member[], random: () => number): Member {
  return members[weightedIndex(effectiveWeights(members), random)]!;
}

/**
 * `chosen` (when usable), then the other usable members by priority (table order, rotated to
 * start after `chosen`), then the unusable ones by liveness, and the drained ones last (by
 * liveness too): a drained member is dialled only when every other member failed for this client,
 * the last resort of failing open. A member of another cluster is never in the list.
 */
function arrange(list: readonly Member[], chosen: Member | undefined): Member[] {
  // With nothing usable, only the evidence of which members answer orders the attempts.
  const first = chosen?.usable ? chosen : undefined;
  const start = first === undefined ? 0 : Math.max(list.indexOf(first), 0);
  const usable: Member[] = [];
  const failed: Member[] = [];
  const drained: Member[] = [];
  for (let i = 0; i < list.length; i++) {
    const m = list[(start + i) % list.length]!;
    if (m === first || m.wrongCluster) continue;
    (m.usable ? usable : m.drain === "off" ? failed : drained).push(m);
  }
  usable.sort((a, b) => a.priority - b.priority);
  failed.sort(livelier);
  drained.sort(livelier);
  const out = first === undefined ? [] : [first];
  return out.concat(usable, failed, drained);
}

/**
 * Fail-open's order: members that answered their last health check (or were not checked yet)
 * before those that did not, then the one heard from most recently (a byte on a proxied
 * connection, an answer to a check). Never a TCP connect alone: a hung member's kernel still
 * completes the handshake, and a client sent there would wait in vain.
 */
export function livelier(a: Member, b: Member): number {
  const silent = (m: Member) => (m.alive === false ? 1 : 0);
  return silent(a) - silent(b) || b.stats.lastHeardAt - a.stats.lastHeardAt;
}
