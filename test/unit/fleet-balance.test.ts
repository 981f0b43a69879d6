/**
 * Where a fleet of gateways, each choosing on its own, leaves the cluster after a fault (issue 22):
 * many simulated gateways, each its own member table and policy with its own seeded random source,
 * go through the faults operators see (a rolling restart, a full outage with members returning one
 * by one, a member flapping, a member added) and the members' shares of the fleet are compared with
 * what independent uniform choices give: within 3 standard deviations of N/k.
 */
import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import { MemberTable, type Member } from "../../src/members.ts";
import { createPolicy, type Policy, type PolicyName } from "../../src/select.ts";
import { seededRandom } from "../support/random.ts";

const ADDRESSES = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"];

interface Gateway {
  table: MemberTable;
  policy: Policy;
}

/** `n` gateways in front of the same members, each with its own random source. */
function fleet(n: number, name: PolicyName = "sticky", addresses = ADDRESSES): Gateway[] {
  return Array.from({ length: n }, (_, i) => {
    const table = new MemberTable(addresses.map((a) => parseEndpoint(a)), null);
    return { table, policy: createPolicy(name, table, seededRandom(1000 + i).next) };
  });
}

/** Marks member `address` `state` in every gateway (each gateway's health sees the same cluster). */
function setState(gws: readonly Gateway[], address: string, state: "up" | "down"): void {
  for (const g of gws) g.table.update(g.table.list.find((m) => m.address === address)!, { state });
}

/** Where each gateway sends its next new connection. */
const choices = (gws: readonly Gateway[]) => gws.map((g) => g.policy.candidates()[0]!.address);

/** How many of `xs` are each of `addresses`. */
function counts(xs: readonly string[], addresses = ADDRESSES): number[] {
  return addresses.map((a) => xs.filter((x) => x === a).length);
}

/** Each count within 3 standard deviations of what `n` independent uniform choices over k members give. */
function expectEven(cs: readonly number[], n: number): void {
  const k = cs.length;
  const p = 1 / k;
  const sd = Math.sqrt(n * p * (1 - p));
  for (const c of cs) expect(Math.abs(c - n / k), `counts ${cs.join(" / ")} of ${n}`).toBeLessThanOrEqual(3 * sd);
}

const N = 900;

describe("sticky across a fleet (issue 22)", () => {
  test("a fresh fleet spreads evenly", () => {
    expectEven(counts(choices(fleet(N))), N);
  });

  test("a member that returns takes back a third of the fleet, evenly from the others, and nobody else moves", () => {
    const gws = fleet(N);
    setState(gws, ADDRESSES[0]!, "down");
    const during = choices(gws);
    expect(counts(during)[0]).toBe(0);
    expectEven(counts(during, ADDRESSES.slice(1)), N);
    setState(gws, ADDRESSES[0]!, "up");
    const after = choices(gws);
    // Every gateway that moved, moved to the returning member.
    for (let i = 0; i < N; i++) if (after[i] !== during[i]) expect(after[i]).toBe(ADDRESSES[0]!);
    expectEven(counts(after), N);
  });

  test("a rolling restart (each member down and back in turn) leaves the fleet even, where before it left the whole fleet on one member", () => {
    const gws = fleet(N);
    for (const a of ADDRESSES) {
      setState(gws, a, "down");
      expect(counts(choices(gws))[ADDRESSES.indexOf(a)]).toBe(0);
      setState(gws, a, "up");
    }
    expectEven(counts(choices(gws)), N);
  });

  test("a full outage: the first member back takes everyone; each member that returns after it takes its share", () => {
    const gws = fleet(N);
    for (const a of ADDRESSES) setState(gws, a, "down");
    setState(gws, ADDRESSES[0]!, "up");
    expect(counts(choices(gws))).toEqual([N, 0, 0]);
    setState(gws, ADDRESSES[1]!, "up");
    expectEven(counts(choices(gws)).slice(0, 2), N);
    setState(gws, ADDRESSES[2]!, "up");
    expectEven(counts(choices(gws)), N);
  });

  test("a member flapping twenty times leaves the fleet where it started", () => {
    const gws = fleet(N);
    const before = choices(gws);
    for (let i = 0; i < 20; i++) {
      setState(gws, ADDRESSES[2]!, "down");
      choices(gws); // clients keep connecting meanwhile
      setState(gws, ADDRESSES[2]!, "up");
    }
    expect(choices(gws)).toEqual(before);
  });

  test("a member added by discovery takes a quarter of the fleet, evenly from the others", () => {
    const gws = fleet(N);
    const before = choices(gws);
    const four = [...ADDRESSES, "10.0.0.4:2379"];
    for (const g of gws) g.table.replace(four.map((a) => parseEndpoint(a)));
    const after = choices(gws);
    for (let i = 0; i < N; i++) if (after[i] !== before[i]) expect(after[i]).toBe(four[3]!);
    expectEven(counts(after, four), N);
  });

  test("a member that an operator drains and then makes ready takes back its share", () => {
    const gws = fleet(N);
    for (const g of gws) g.table.update(g.table.list[1]!, { drain: "keep-open" });
    expect(counts(choices(gws))[1]).toBe(0);
    for (const g of gws) g.table.update(g.table.list[1]!, { drain: "off" });
    expectEven(counts(choices(gws)), N);
  });

  test("with SRV weights 1 : 1 : 2, a returning member takes back its weight's share", () => {
    const specs = ADDRESSES.map((a, i) => ({ ...parseEndpoint(a), priority: 0, weight: i === 2 ? 2 : 1 }));
    const gws = Array.from({ length: N }, (_, i) => {
      const table = new MemberTable(specs, null);
      return { table, policy: createPolicy("sticky", table, seededRandom(5000 + i).next) };
    });
    setState(gws, ADDRESSES[2]!, "down");
    expect(counts(choices(gws))[2]).toBe(0);
    setState(gws, ADDRESSES[2]!, "up");
    const cs = counts(choices(gws));
    // Binomial(900, 1/2) for the weight-2 member: 3 standard deviations are 45.
    expect(Math.abs(cs[2]! - N / 2), cs.join(" / ")).toBeLessThanOrEqual(45);
  });
});

describe("round-robin and least-connections across a fleet after the same faults", () => {
  test("round-robin: after a rolling restart, each gateway's next connections go to every member in turn", () => {
    const gws = fleet(30, "round-robin");
    for (const a of ADDRESSES) {
      setState(gws, a, "down");
      for (const g of gws) for (let i = 0; i < 5; i++) g.policy.candidates();
      setState(gws, a, "up");
    }
    for (const g of gws) {
      const next = Array.from({ length: 30 }, () => g.policy.candidates()[0]!.address);
      expect(counts(next)).toEqual([10, 10, 10]);
    }
  });

  test("least-connections: after a full outage, a gateway's open connections even out as clients reconnect", () => {
    const [g] = fleet(1, "least-connections");
    const t = g!.table;
    for (const a of ADDRESSES) setState([g!], a, "down");
    setState([g!], ADDRESSES[0]!, "up");
    // 300 clients reconnect to the only member back.
    for (let i = 0; i < 300; i++) g!.policy.candidates()[0]!.connections++;
    setState([g!], ADDRESSES[1]!, "up");
    setState([g!], ADDRESSES[2]!, "up");
    // Churn: 600 connections close (one at random each time) and reconnect through the policy.
    const random = seededRandom(9).next;
    for (let i = 0; i < 600; i++) {
      const open = t.list.flatMap((m: Member) => Array<Member>(m.connections).fill(m));
      open[Math.floor(random() * open.length)]!.connections--;
      g!.policy.candidates()[0]!.connections++;
    }
    for (const m of t.list) expect(Math.abs(m.connections - 100), t.list.map((x) => x.connections).join(" / ")).toBeLessThanOrEqual(20);
  });
});
