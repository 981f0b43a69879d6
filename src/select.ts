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
  /**
   * Adopts a position decided elsewhere (the primary process), and the primary's `seed`, so that a
   * worker ranks the members as the primary does (a connection whose dial fails then tries the
   * member the primary will choose next).
   */
  adopt(position: number, seed?: number): void;
  /** What this policy's own choices derive from (sticky's rendezvous key); 0 for the others. */
  seed(): number;
  /** The member the next client goes to when the policy knows it in advance (sticky, ordered), without choosing. */
  preferred(): Member | undefined;
}

/**
 * Creates the policy named `name` over `table`.
 *
 * @param random source of randomness in [0, 1) (sticky draws its key from it once); injectable for tests. @default Math.random
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
function cacheWhileUnchanged(table: MemberTable, order?: (a: Member, b: Member) => number): (chosen: Member | undefined) => readonly Member[] {
  let kept: { generation: number; chosen: Member | undefined; list: readonly Member[] } | null = null;
  return (chosen) => {
    if (kept !== null && kept.generation === table.generation && kept.chosen === chosen) return kept.list;
    const list = arrange(table.list, chosen, order);
    kept = list.every((m) => m.usable) ? { generation: table.generation, chosen, list } : null;
    return list;
  };
}

function positionless(name: PolicyName, candidates: () => readonly Member[], preferred: () => Member | undefined = () => undefined): Policy {
  return { name, candidates, position: () => -1, adopt() {}, seed: () => 0, preferred };
}

/**
 * The seed's policy: one member, chosen at random (by weight) at start, takes every connection
 * until a dial to it fails or it is marked down; then another usable member takes over.
 *
 * The choice is rendezvous hashing (highest random weight): the process draws one random key at
 * start, every member gets a score from a hash of the key and its address, and the member with the
 * best score among the usable ones is chosen. One member is still picked at random, by weight, but
 * the choice is a function of which members are usable, so across a fleet of gateways, each with
 * its own key, it stays even after any fault (docs/selection-and-health.md, "Selection and failover"):
 * - when the chosen member fails, its gateways move to their second choice, spread evenly over the
 *   others, not all to the member next in rotation;
 * - when a member becomes usable (back from down, added by discovery, made ready by an operator),
 *   the gateways that rank it first move their new connections to it: a share of 1/usable of the
 *   fleet (its weight's share), taken evenly from every other member, and nobody else moves.
 * Open connections are not touched here (see --rebalance-interval, src/datapath/rebalance.ts).
 */
function sticky(table: MemberTable, random: () => number): Policy {
  let key = Math.floor(random() * 2 ** 53);
  let rank = rendezvous(key);
  /** The primary's choice, adopted in a worker process (null in the primary). */
  let adopted: Member | null = null;
  const good = (m: Member) => m.usable && m.failures === 0;
  const settle = (): Member | undefined => {
    const list = table.list;
    if (adopted !== null && adopted.usable && list.includes(adopted)) return adopted;
    // Members without a failed dial first; else the usable ones with the fewest failed dials in a
    // row (each failure moves on; reading the choice never does); with none usable, the best
    // ranked of all (fail-open orders its tries by liveness, see arrange).
    const good1 = bestClass(list.filter(good));
    if (good1.length > 0) return rank.best(good1);
    const usable = bestClass(list);
    const fewest = Math.min(...usable.map((m) => m.failures));
    return rank.best(usable.length > 0 ? usable.filter((m) => m.failures === fewest) : list.filter((m) => !m.wrongCluster));
  };
  // settle() filters the member list (arrays each time): its answer is kept until the table
  // changes (every write to it moves its generation) or a choice is adopted, so a new connection
  // allocates nothing to choose (docs/performance.md, "Memory per connection").
  let kept: { generation: number; member: Member | undefined } | null = null;
  const settled = (): Member | undefined => {
    if (kept === null || kept.generation !== table.generation) kept = { generation: table.generation, member: settle() };
    return kept.member;
  };
  const cached = cacheWhileUnchanged(table, (a, b) => rank.compare(a, b));
  return {
    name: "sticky",
    candidates: () => cached(settled()),
    position: () => {
      const m = settled();
      return m === undefined ? -1 : table.list.indexOf(m);
    },
    adopt(position, seed) {
      adopted = table.list[position] ?? null;
      if (seed !== undefined && seed !== key) rank = rendezvous((key = seed));
      kept = null;
    },
    seed: () => key,
    preferred: settled,
  };
}

/**
 * A process's rendezvous ranking of members: a random key (drawn once), and for each member a score
 * from the hash of its address under that key, an exponential draw divided by the member's RFC 2782
 * weight (so that the best of any set of members is each one with the probability of its weight's
 * share, and equal members equally). Lower is better.
 */
export function rendezvous(seed: number): { best(members: readonly Member[]): Member | undefined; compare(a: Member, b: Member): number } {
  const key = BigInt(seed);
  const draws = new Map<string, number>();
  const draw = (m: Member): number => {
    let d = draws.get(m.address);
    if (d === undefined) {
      const h = Bun.hash.wyhash(m.address, key);
      // The hash's top 53 bits as a uniform number in (0, 1), then an exponential draw.
      d = -Math.log((Number(BigInt.asUintN(64, BigInt(h)) >> 11n) + 0.5) / 2 ** 53);
      draws.set(m.address, d);
    }
    return d;
  };
  const score = (m: Member, weights: Map<Member, number>) => draw(m) / (weights.get(m) ?? 1);
  const weightsOf = (members: readonly Member[]) => {
    const w = effectiveWeights(members);
    return new Map(members.map((m, i) => [m, w[i]!]));
  };
  return {
    best(members) {
      const weights = weightsOf(members);
      let best: Member | undefined;
      for (const m of members) if (best === undefined || score(m, weights) < score(best, weights)) best = m;
      return best;
    },
    compare(a, b) {
      // For ordering the fallbacks: a weight-0 member next to weighted ones ranks as 1 % of one.
      const w = (m: Member) => (m.weight > 0 ? m.weight : 0.01);
      return draw(a) / w(a) - draw(b) / w(b);
    },
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
 * `chosen` (when usable), then the other usable members by priority (within a priority by `order`
 * when given, sticky's ranking; else table order rotated to start after `chosen`), then the
 * unusable ones by liveness, and the drained ones last (by
 * liveness too): a drained member is dialled only when every other member failed for this client,
 * the last resort of failing open. A member of another cluster is never in the list.
 */
function arrange(list: readonly Member[], chosen: Member | undefined, order?: (a: Member, b: Member) => number): Member[] {
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
  usable.sort(order === undefined ? (a, b) => a.priority - b.priority : (a, b) => a.priority - b.priority || order(a, b));
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
