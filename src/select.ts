/**
 * Selection policies: for each new client connection, the members to dial, best first.
 *
 * Every policy puts active members first (in its own order) and then the members marked failed,
 * most recently successful first, so that when every member looks failed the gateway still tries
 * them all and recovers the moment the cluster does. A policy only reads the member table.
 *
 * @module
 */
import type { Member, MemberTable } from "./endpoints.ts";

export type PolicyName = "sticky" | "round-robin" | "least-connections" | "ordered";
export const POLICY_NAMES: readonly PolicyName[] = ["sticky", "round-robin", "least-connections", "ordered"];

export interface Policy {
  readonly name: PolicyName;
  /** The members to try, in order, for one new client connection. Never empty for a non-empty table. */
  candidates(): Member[];
  /**
   * The index of the member this policy prefers now (sticky's chosen member), or -1 for policies
   * without one. Worker processes adopt the primary's so that sticky stays sticky across them.
   */
  position(): number;
  /** Adopts a position decided elsewhere (the primary process). */
  adopt(position: number): void;
}

/**
 * Creates the policy named `name` over `members`.
 *
 * @param random source of randomness in [0, 1); injectable for tests. @default Math.random
 */
export function createPolicy(name: PolicyName, members: MemberTable, random: () => number = Math.random): Policy {
  switch (name) {
    case "sticky":
      return sticky(members, random);
    case "round-robin":
      return roundRobin(members);
    case "least-connections":
      return leastConnections(members, random);
    case "ordered":
      return {
        name: "ordered",
        candidates: () => ordered(members, 0),
        position: () => -1,
        adopt() {},
      };
  }
}

/**
 * The seed's policy: one member chosen at random at start takes every connection until a dial to
 * it fails (or it is marked down); then the next usable member in list order takes over, and keeps
 * them until it fails in turn. It does not switch back when the first one recovers.
 */
function sticky(members: MemberTable, random: () => number): Policy {
  let current = Math.floor(random() * members.length);
  const good = (m: Member) => m.active && m.failures === 0;
  const settle = () => {
    if (good(members[current]!)) return current;
    for (let i = 1; i < members.length; i++) {
      const j = (current + i) % members.length;
      if (good(members[j]!)) return (current = j);
    }
    // No member without a failed dial: settle for a usable one, if any.
    for (let i = 0; i < members.length; i++) {
      const j = (current + i) % members.length;
      if (members[j]!.active) return (current = j);
    }
    return current;
  };
  return {
    name: "sticky",
    candidates: () => ordered(members, settle()),
    position: settle,
    adopt(position) {
      if (position >= 0 && position < members.length) current = position;
    },
  };
}

/** etcd's own gateway: each new connection goes to the next active member in rotation. */
function roundRobin(members: MemberTable): Policy {
  let next = 0;
  return {
    name: "round-robin",
    candidates() {
      const active = members.filter((m) => m.active);
      if (active.length === 0) return ordered(members, 0);
      const first = active[next++ % active.length]!;
      return ordered(members, members.indexOf(first));
    },
    position: () => -1,
    adopt() {},
  };
}

/**
 * Power of two random choices: of two random usable members, the one with fewer open connections
 * (HAProxy's random(2), Envoy's LEAST_REQUEST); balances long-lived gRPC connections without the
 * herding of a strict least-connections pick.
 */
function leastConnections(members: MemberTable, random: () => number): Policy {
  return {
    name: "least-connections",
    candidates() {
      const active = members.filter((m) => m.active);
      if (active.length < 2) return ordered(members, active.length === 1 ? members.indexOf(active[0]!) : 0);
      // Two distinct indexes, uniformly: j skips over i.
      const i = Math.floor(random() * active.length);
      let j = Math.floor(random() * (active.length - 1));
      if (j >= i) j++;
      const a = active[i]!;
      const b = active[j]!;
      const best = b.connections < a.connections ? b : a;
      return ordered(members, members.indexOf(best));
    },
    position: () => -1,
    adopt() {},
  };
}

/** Active members in list order starting at `start`, then failed ones by most recent success. */
function ordered(members: MemberTable, start: number): Member[] {
  const out: Member[] = [];
  const failed: Member[] = [];
  for (let i = 0; i < members.length; i++) {
    const m = members[(start + i) % members.length]!;
    (m.active ? out : failed).push(m);
  }
  failed.sort((a, b) => b.lastSuccess - a.lastSuccess);
  return out.concat(failed);
}
