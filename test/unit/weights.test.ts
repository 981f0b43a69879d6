import { describe, expect, test } from "bun:test";
import { seededRandom } from "../support/random.ts";
import type { EndpointSpec } from "../../src/addresses.ts";
import { MemberTable } from "../../src/members.ts";
import { createPolicy, weightedPick } from "../../src/select.ts";

const srv = (records: [priority: number, weight: number][]): MemberTable =>
  new MemberTable(records.map(([priority, weight], i): EndpointSpec => ({ host: `m${i}`, port: 2379, address: `m${i}:2379`, priority, weight })), null);

const shares = (picks: string[], names: string[]) => names.map((n) => picks.filter((p) => p === n).length / picks.length);

describe("RFC 2782 weighted choice (10,000 picks, seeded)", () => {
  const cases: { weights: number[]; expected: number[] }[] = [
    { weights: [1, 1], expected: [0.5, 0.5] }, // etcd's gateway gives 100 % / 0 % here
    { weights: [1, 2], expected: [1 / 3, 2 / 3] },
    { weights: [5, 3, 2], expected: [0.5, 0.3, 0.2] },
    { weights: [10, 10], expected: [0.5, 0.5] },
  ];
  for (const { weights, expected } of cases) {
    test(`weights {${weights.join(",")}} give shares ${expected.map((e) => e.toFixed(2)).join("/")}`, () => {
      const table = srv(weights.map((w) => [1, w]));
      const random = seededRandom(42).next;
      const picks = Array.from({ length: 10_000 }, () => weightedPick(table.list, random).address);
      const got = shares(picks, table.list.map((m) => m.address));
      got.forEach((g, i) => expect(Math.abs(g - expected[i]!)).toBeLessThan(0.02));
    });
  }
  test("weight-0 records get a small chance (about 1 %), not none and not an equal share", () => {
    const table = srv([[1, 10], [1, 0]]);
    const random = seededRandom(7).next;
    const picks = Array.from({ length: 10_000 }, () => weightedPick(table.list, random).address);
    const zero = picks.filter((p) => p === "m1:2379").length / picks.length;
    expect(zero).toBeGreaterThan(0.003);
    expect(zero).toBeLessThan(0.02);
  });
  test("all weights 0 (static --endpoints) are equal", () => {
    const table = srv([[0, 0], [0, 0], [0, 0]]);
    const random = seededRandom(3).next;
    const picks = Array.from({ length: 9000 }, () => weightedPick(table.list, random).address);
    for (const s of shares(picks, table.list.map((m) => m.address))) expect(Math.abs(s - 1 / 3)).toBeLessThan(0.02);
  });
});

describe("priority classes", () => {
  for (const policy of ["sticky", "round-robin", "least-connections", "ordered"] as const) {
    test(`${policy}: the priority-2 class is used only when every priority-1 member is down`, () => {
      const table = srv([[1, 1], [1, 1], [2, 5]]);
      const p = createPolicy(policy, table, seededRandom(1).next);
      for (let i = 0; i < 200; i++) expect(p.candidates()[0]!.priority).toBe(1);
      table.update(table.list[0]!, { state: "down" });
      for (let i = 0; i < 200; i++) expect(p.candidates()[0]!.address).toBe("m1:2379");
      table.update(table.list[1]!, { state: "down" });
      for (let i = 0; i < 50; i++) expect(p.candidates()[0]!.address).toBe("m2:2379");
    });
  }
});

describe("weights under every policy", () => {
  test("round-robin becomes a smooth weighted round-robin: {5,1,1} interleaves, not aaaaabc", () => {
    const table = srv([[1, 5], [1, 1], [1, 1]]);
    const p = createPolicy("round-robin", table);
    const seq = Array.from({ length: 7 }, () => p.candidates()[0]!.address[1]).join("");
    expect(seq).toBe("0010200");
    const counts = [0, 0, 0];
    for (let i = 0; i < 7000; i++) counts[Number(p.candidates()[0]!.address[1])]!++;
    expect(counts).toEqual([5000, 1000, 1000]);
  });
  test("sticky picks its member by weight", () => {
    const picks: string[] = [];
    const random = seededRandom(11).next;
    for (let i = 0; i < 4000; i++) picks.push(createPolicy("sticky", srv([[1, 1], [1, 3]]), random).candidates()[0]!.address);
    const [a, b] = shares(picks, ["m0:2379", "m1:2379"]);
    expect(Math.abs(a! - 0.25)).toBeLessThan(0.03);
    expect(Math.abs(b! - 0.75)).toBeLessThan(0.03);
  });
  test("least-connections compares connections divided by weight", () => {
    const table = srv([[1, 1], [1, 3]]);
    const p = createPolicy("least-connections", table, seededRandom(5).next);
    for (let i = 0; i < 4000; i++) p.candidates()[0]!.connections++;
    const [a, b] = table.list.map((m) => m.connections);
    expect(Math.abs(b! / a! - 3)).toBeLessThan(0.3);
  });
});

describe("MemberTable.replace", () => {
  test("keeps the state and connections of members that stay, adds and removes the rest", () => {
    const table = srv([[0, 0], [0, 0]]);
    const [m0, m1] = table.list;
    m0!.connections = 7;
    table.update(m0!, { failures: 2 });
    const { added, removed } = table.replace([
      { host: "m0", port: 2379, address: "m0:2379", priority: 3, weight: 4 },
      { host: "m9", port: 2379, address: "m9:2379" },
    ]);
    expect(table.list[0]).toBe(m0!);
    expect([m0!.connections, m0!.failures, m0!.priority, m0!.weight]).toEqual([7, 2, 3, 4]);
    expect(added.map((m) => m.address)).toEqual(["m9:2379"]);
    expect(removed).toEqual([m1!]);
    expect(m1!.removed).toBe(true);
  });
});
