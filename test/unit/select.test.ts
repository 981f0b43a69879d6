import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import { MemberTable, type Member } from "../../src/members.ts";
import { createPolicy } from "../../src/select.ts";
import { seededRandom } from "../support/random.ts";

const table = () => new MemberTable(["a:1", "b:2", "c:3"].map((t) => parseEndpoint(t)), null);
const names = (ms: readonly { address: string }[]) => ms.map((m) => m.address[0]).join("");

/** A sticky policy over a fresh table of a, b, c, with its key drawn from `seed`; and its ranking with all three usable. */
function stickyOver(seed: number): { ms: MemberTable; p: ReturnType<typeof createPolicy>; rank: [Member, Member, Member] } {
  const ms = table();
  const p = createPolicy("sticky", ms, seededRandom(seed).next);
  const rank = [...p.candidates()] as [Member, Member, Member];
  return { ms, p, rank };
}

describe("sticky", () => {
  test("sends every connection to one member, picked at random at start: each of three members by about a third of the gateways", () => {
    const firsts = new Map<string, number>();
    for (let seed = 1; seed <= 3000; seed++) {
      const { p, rank } = stickyOver(seed);
      for (let i = 0; i < 20; i++) expect(p.candidates()[0]).toBe(rank[0]);
      firsts.set(rank[0].address, (firsts.get(rank[0].address) ?? 0) + 1);
    }
    // Binomial(3000, 1/3): 3 standard deviations are 77.
    expect([...firsts.keys()].sort()).toEqual(["a:1", "b:2", "c:3"]);
    for (const n of firsts.values()) expect(Math.abs(n - 1000)).toBeLessThan(77);
  });
  test("lists the other active members after the current one, in its own ranking, the same for every connection", () => {
    const { p, rank } = stickyOver(7);
    expect(new Set(rank).size).toBe(3);
    for (let i = 0; i < 10; i++) expect(p.candidates()).toEqual(rank);
  });
  test("switches to its second choice when the current one fails, and its new connections go back to its first choice once that is usable again", () => {
    const { ms, p, rank } = stickyOver(11);
    ms.update(rank[0], { state: "down" });
    expect(p.candidates()).toEqual([rank[1], rank[2], rank[0]]);
    ms.update(rank[0], { state: "up" });
    expect(p.candidates()).toEqual(rank);
  });
  test("puts failed members last, the one heard from most recently first", () => {
    const ms = table();
    const p = createPolicy("sticky", ms, () => 0);
    for (const m of ms.list) ms.update(m, { state: "down" });
    ms.list[0]!.stats.lastHeardAt = 1;
    ms.list[1]!.stats.lastHeardAt = 3;
    ms.list[2]!.stats.lastHeardAt = 2;
    expect(names(p.candidates())).toBe("bca");
  });
});

describe("fail-open ranks members by liveness, never by a TCP connect alone (issue 19)", () => {
  for (const policy of ["sticky", "round-robin", "least-connections", "ordered"] as const) {
    test(`${policy}: with every member down, a member that accepts connections but did not answer its last check (hung) is tried last, however recently it connected`, () => {
      // Found before issue 19: with every member marked down by a check that failed on all of
      // them, a SIGSTOPped member (its kernel still completes handshakes) was tried first, being
      // the most recently "successful", and 0 of 6 etcdctl gets succeeded.
      const ms = table();
      const p = createPolicy(policy, ms, () => 0);
      for (const m of ms.list) ms.update(m, { state: "down", alive: true });
      const [a, b, c] = ms.list as [Member, Member, Member];
      ms.update(a, { alive: false });
      a.stats.lastConnectedAt = 100;
      a.stats.lastHeardAt = 90;
      b.stats.lastHeardAt = 10;
      c.stats.lastHeardAt = 20;
      for (let i = 0; i < 5; i++) expect(names(p.candidates())).toBe("cba");
    });
  }
  test("a member never checked (no active checks) ranks with those that answer", () => {
    const ms = table();
    const p = createPolicy("ordered", ms, () => 0);
    for (const m of ms.list) ms.update(m, { state: "ejected" });
    ms.update(ms.list[0]!, { alive: false });
    ms.list[1]!.stats.lastHeardAt = 5;
    expect(names(p.candidates())).toBe("bca");
  });
});

describe("a member of another cluster (issue 19)", () => {
  for (const policy of ["sticky", "round-robin", "least-connections", "ordered"] as const) {
    test(`${policy}: never a candidate, also when every member is down (fail-open)`, () => {
      const ms = table();
      const p = createPolicy(policy, ms, () => 0);
      ms.update(ms.list[0]!, { state: "down", cluster: { id: "b", wrong: true } });
      for (let i = 0; i < 5; i++) expect(names(p.candidates())).not.toContain("a");
      for (const m of ms.list) ms.update(m, { state: "down" });
      ms.list[0]!.stats.lastHeardAt = 1000;
      for (let i = 0; i < 5; i++) expect(names(p.candidates()).split("").sort().join("")).toBe("bc");
    });
  }
});

describe("round-robin", () => {
  test("rotates over active members per connection", () => {
    const p = createPolicy("round-robin", table());
    expect([0, 1, 2, 3, 4, 5].map(() => p.candidates()[0]!.address[0]).join("")).toBe("abcabc");
  });
  test("skips failed members and tries them last", () => {
    const ms = table();
    const p = createPolicy("round-robin", ms);
    ms.update(ms.list[1]!, { state: "down" });
    const firsts = [0, 1, 2, 3].map(() => names(p.candidates()));
    expect(firsts).toEqual(["acb", "cab", "acb", "cab"]);
  });
  test("spreads 3000 connections evenly", () => {
    const p = createPolicy("round-robin", table());
    const counts: Record<string, number> = {};
    for (let i = 0; i < 3000; i++) {
      const k = p.candidates()[0]!.address;
      counts[k] = (counts[k] ?? 0) + 1;
    }
    expect(Object.values(counts)).toEqual([1000, 1000, 1000]);
  });
});

test("every policy returns every member exactly once", () => {
  for (const name of ["sticky", "round-robin", "least-connections", "ordered"] as const) {
    const ms = table();
    ms.update(ms.list[2]!, { state: "down" });
    const got = createPolicy(name, ms).candidates();
    // As many entries as members, and all of them different: none missing, none twice.
    expect(got).toHaveLength(3);
    expect(new Set(got).size).toBe(3);
  }
});

describe("least-connections", () => {
  test("balances long-lived connections: 3000 held connections end up within 5% of even", () => {
    const ms = table();
    const p = createPolicy("least-connections", ms);
    for (let i = 0; i < 3000; i++) p.candidates()[0]!.connections++;
    for (const m of ms.list) expect(Math.abs(m.connections - 1000)).toBeLessThan(50);
  });
  test("prefers the member with fewer connections of the two it draws", () => {
    const ms = table();
    ms.list[0]!.connections = 10;
    ms.list[1]!.connections = 0;
    ms.list[2]!.connections = 10;
    // Draws a then b (random 0, then 0 -> index 1 after skipping 0).
    const p = createPolicy("least-connections", ms, () => 0);
    expect(p.candidates()[0]!.address[0]).toBe("b");
  });
  test("never picks a member that is not usable while another is", () => {
    const ms = table();
    ms.update(ms.list[0]!, { state: "down" });
    ms.update(ms.list[2]!, { state: "down" });
    const p = createPolicy("least-connections", ms);
    for (let i = 0; i < 100; i++) expect(p.candidates()[0]!.address[0]).toBe("b");
  });
});

describe("ordered", () => {
  test("always prefers the first usable member in list order", () => {
    const ms = table();
    const p = createPolicy("ordered", ms);
    expect(names(p.candidates())).toBe("abc");
    ms.update(ms.list[0]!, { state: "down" });
    expect(names(p.candidates())).toBe("bca");
    ms.update(ms.list[0]!, { state: "up" });
    expect(names(p.candidates())).toBe("abc");
  });
});

describe("sticky and failed dials", () => {
  test("moves on after one failed dial even before the member is ejected, and back once a dial to it succeeds", () => {
    const { ms, p, rank } = stickyOver(3);
    ms.update(rank[0], { failures: 1 });
    expect(p.candidates()[0]).toBe(rank[1]);
    ms.update(rank[0], { failures: 0 });
    expect(p.candidates()[0]).toBe(rank[0]);
  });
  test("a worker that adopts the primary's seed ranks the members as the primary does, so a failing dial falls back where the primary moves next (found by CI in issue 22)", () => {
    for (let seed = 1; seed <= 50; seed++) {
      const primaryTable = table();
      const workerTable = table();
      const primary = createPolicy("sticky", primaryTable, seededRandom(seed).next);
      const worker = createPolicy("sticky", workerTable, seededRandom(seed + 1000).next);
      worker.adopt(primary.position(), primary.seed());
      expect(names(worker.candidates())).toBe(names(primary.candidates()));
    }
  });
  test("adopts a position decided by the primary process", () => {
    const p = createPolicy("sticky", table(), () => 0);
    p.adopt(2);
    expect(p.position()).toBe(2);
    expect(p.candidates()[0]!.address[0]).toBe("c");
  });
});

describe("a drained member (issue 14, item 4)", () => {
  for (const name of ["sticky", "round-robin", "least-connections", "ordered"] as const) {
    test(`${name}: never chosen, and tried last, after the members that are down`, () => {
      const ms = table();
      const p = createPolicy(name, ms, () => 0);
      ms.update(ms.list[0]!, { drain: "keep-open" });
      ms.update(ms.list[2]!, { state: "down" });
      for (let i = 0; i < 50; i++) expect(names(p.candidates())).toBe("bca");
      expect(p.preferred?.()?.address ?? "b:2").toBe("b:2");
    });
  }

  test("with nothing else usable it is still tried (fail-open's last resort), and once ready it is chosen again", () => {
    const ms = table();
    const p = createPolicy("ordered", ms);
    ms.update(ms.list[0]!, { drain: "close-idle" });
    ms.update(ms.list[1]!, { state: "down" });
    ms.update(ms.list[2]!, { state: "ejected" });
    ms.list[2]!.stats.lastHeardAt = 5;
    expect(names(p.candidates())).toBe("cba");
    expect(ms.anyUsable).toBe(false);
    ms.update(ms.list[0]!, { drain: "off" });
    expect(names(p.candidates())).toBe("acb");
  });

  test("sticky moves off a drained member, and its new connections go back when it is ready again (issue 22)", () => {
    const { ms, p, rank } = stickyOver(5);
    ms.update(rank[0], { drain: "keep-open" });
    expect(p.candidates()).toEqual([rank[1], rank[2], rank[0]]);
    ms.update(rank[0], { drain: "off" });
    expect(p.candidates()).toEqual(rank);
  });
});

describe("per-connection cost", () => {
  test("sticky and ordered hand every connection the same list until the member table changes", () => {
    for (const name of ["sticky", "ordered"] as const) {
      const ms = table();
      const p = createPolicy(name, ms, () => 0);
      const first = p.candidates();
      expect(p.candidates()).toBe(first); // built once, not per connection
      ms.update(first[0]!, { state: "down" });
      const after = p.candidates();
      expect(after).not.toBe(first);
      expect(after).toEqual([...first.slice(1), first[0]!]);
    }
  });
});

describe("a drained member under each policy (issue 20: what docs/admin.md, Draining a member, promises, per policy)", () => {
  const POLICIES = ["sticky", "round-robin", "least-connections", "ordered"] as const;

  for (const name of POLICIES) {
    test(`${name}: while it is up and others are usable it is never chosen for a new connection, wherever it stands and however the draws fall, and it is listed last`, () => {
      for (const at of [0, 1, 2]) {
        const ms = table();
        const p = createPolicy(name, ms, seededRandom(20 + at).next);
        const drained = ms.list[at]!;
        ms.update(drained, { drain: "keep-open" });
        // Its open connections carry on, but they are not load: the fewest connections would make
        // least-connections prefer it, the most recent answer would put it first in any ranking.
        for (const m of ms.list) m.connections = m === drained ? 0 : 50;
        drained.stats.lastHeardAt = 1000;
        expect(p.preferred()).not.toBe(drained);
        for (let i = 0; i < 300; i++) {
          const list = p.candidates();
          expect(list).toHaveLength(3);
          expect(list[0]).not.toBe(drained);
          expect(list[2]).toBe(drained);
          list[0]!.connections++;
        }
        expect(drained.connections).toBe(0);
        expect(p.preferred()).not.toBe(drained);
      }
    });

    test(`${name}: with no member usable it is tried last, after the down and ejected ones, even though it answers and was heard from most recently`, () => {
      const ms = table();
      const p = createPolicy(name, ms, seededRandom(7).next);
      const [a, b, c] = ms.list as [Member, Member, Member];
      ms.update(a, { drain: "close-idle", alive: true });
      ms.update(b, { state: "down", alive: true });
      ms.update(c, { state: "ejected", alive: false });
      a.stats.lastHeardAt = 100;
      b.stats.lastHeardAt = 5;
      c.stats.lastHeardAt = 50;
      expect(ms.anyUsable).toBe(false);
      // b answers (c did not answer its last check), then the drained one.
      for (let i = 0; i < 20; i++) expect(names(p.candidates())).toBe("bca");
    });
  }

  test("with two drained members and one down, the down one is tried first, then the drained ones by liveness", () => {
    for (const name of POLICIES) {
      const ms = table();
      const p = createPolicy(name, ms, () => 0);
      const [a, b, c] = ms.list as [Member, Member, Member];
      ms.update(a, { drain: "keep-open" });
      ms.update(b, { drain: "keep-open" });
      ms.update(c, { state: "down" });
      a.stats.lastHeardAt = 1;
      b.stats.lastHeardAt = 9;
      expect(names(p.candidates()), name).toBe("cba");
    }
  });

  test("sticky: when its member fails a dial and every usable member has a failed dial behind it, the drained member is still never chosen", () => {
    const { ms, p, rank } = stickyOver(13);
    const [x, y, z] = rank;
    ms.update(y, { drain: "keep-open" });
    ms.update(z, { failures: 1 });
    ms.update(x, { failures: 2 });
    // Fewest failed dials in a row first: z, then x; the drained y last.
    for (let i = 0; i < 5; i++) expect(p.candidates()).toEqual([z, x, y]);
  });

  test("round-robin: after `ready` it is back in the rotation at once, taking every third connection", () => {
    const ms = table();
    const p = createPolicy("round-robin", ms);
    const a = ms.list[0]!;
    ms.update(a, { drain: "keep-open" });
    for (let i = 0; i < 7; i++) p.candidates();
    ms.update(a, { drain: "off" });
    const firsts = Array.from({ length: 300 }, () => p.candidates()[0]!.address[0]);
    for (let i = 0; i < 300; i += 3) expect(firsts.slice(i, i + 3).sort().join("")).toBe("abc");
  });

  test("least-connections: after `ready` it takes new connections until it carries its share", () => {
    const ms = table();
    const p = createPolicy("least-connections", ms, seededRandom(5).next);
    const a = ms.list[0]!;
    ms.update(a, { drain: "keep-open" });
    for (let i = 0; i < 300; i++) p.candidates()[0]!.connections++;
    expect(ms.list.map((m) => m.connections)).toEqual([0, 150, 150]);
    ms.update(a, { drain: "off" });
    let toA = 0;
    for (let i = 0; i < 300; i++) {
      const m = p.candidates()[0]!;
      m.connections++;
      if (m === a) toA++;
    }
    expect(toA).toBeGreaterThanOrEqual(190);
    for (const m of ms.list) expect(Math.abs(m.connections - 200)).toBeLessThanOrEqual(10);
  });

  test("ordered: after `ready` it is first again, as it stands first in --endpoints", () => {
    const ms = table();
    const p = createPolicy("ordered", ms);
    ms.update(ms.list[0]!, { drain: "keep-open" });
    expect(names(p.candidates())).toBe("bca");
    ms.update(ms.list[0]!, { drain: "off" });
    for (let i = 0; i < 5; i++) expect(names(p.candidates())).toBe("abc");
  });

  test("sticky: after `ready` the gateways that rank it first send their new connections to it again (issue 22)", () => {
    const { ms, p, rank } = stickyOver(17);
    ms.update(rank[0], { drain: "keep-open" });
    expect(p.preferred()).toBe(rank[1]);
    ms.update(rank[0], { drain: "off" });
    expect(p.preferred()).toBe(rank[0]);
    expect(p.candidates()).toEqual(rank);
  });
});

test("sticky: with every usable member behind a failed dial, reading the choice does not move it (found in issue 20's test pass)", () => {
  // preferred() is called on every health check (is the member in use?): before, each read moved
  // sticky's choice on, so connections alternated between members until a dial succeeded.
  const { ms, p, rank } = stickyOver(19);
  const [x, y, z] = rank;
  ms.update(z, { state: "down" });
  ms.update(y, { failures: 1 });
  ms.update(x, { failures: 1 }); // x's dial failed too: both usable members have one failure behind them
  const held = p.preferred();
  expect(Array.from({ length: 6 }, () => p.preferred())).toEqual(Array(6).fill(held));
  expect(Array.from({ length: 6 }, () => p.candidates()[0])).toEqual(Array(6).fill(held));
  const other = held === x ? y : x;
  ms.update(held!, { failures: 2 }); // it fails again: the other one, with fewer failures, takes over
  expect(p.preferred()).toBe(other);
  ms.update(x, { failures: 0 }); // x succeeded meanwhile (another connection): first choice again
  expect(p.preferred()).toBe(x);
});
