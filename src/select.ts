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

export type PolicyName = "sticky" | "round-robin";
export const POLICY_NAMES: readonly PolicyName[] = ["sticky", "round-robin"];

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
  }
}

/**
 * The seed's policy: one member chosen at random at start takes every connection until it fails;
 * then the next active member in list order takes over, and keeps them until it fails in turn.
 */
function sticky(members: MemberTable, random: () => number): Policy {
  let current = Math.floor(random() * members.length);
  const settle = () => {
    for (let i = 0; i < members.length && !members[current]!.active; i++) current = (current + 1) % members.length;
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
