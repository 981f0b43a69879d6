/**
 * `--rebalance-interval` (src/datapath/rebalance.ts): which open connection moves, when, and to
 * where, with fake connections and a fake clock; the e2e with real etcd clients is
 * test/e2e/rebalance.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import type { Conn } from "../../src/datapath/conn.ts";
import { planMove, Rebalancer, SETTLE_INTERVALS, type RebalanceHost } from "../../src/datapath/rebalance.ts";
import { MemberTable, type Member } from "../../src/members.ts";

const table = () => new MemberTable(["a:1", "b:2", "c:3"].map((t) => parseEndpoint(t)), null);

/** A connected connection to `m`, accepted at `at`, quiet unless said otherwise. */
function conn(m: Member, at = 0, quiet = true): Conn & { quietNow: boolean } {
  return { acceptedAt: at, quietNow: quiet, client: { closed: false }, up: { member: m, sock: {}, closed: false, connectedAt: at + 1 } } as unknown as Conn & { quietNow: boolean };
}

function host(ms: MemberTable, conns: (Conn & { quietNow: boolean })[], preferred: () => Member | undefined, intervalMs = 1000) {
  const moved: { conn: Conn; to: string | undefined }[] = [];
  let now = 10_000;
  const h: RebalanceHost = {
    rebalanceMs: 0, // the test drives tick() itself
    members: () => ms.list,
    preferred,
    conns: () => conns.filter((c) => !moved.some((x) => x.conn === c)),
    quiet: (c) => (c as Conn & { quietNow: boolean }).quietNow,
    move: (c, to) => void moved.push({ conn: c, to: to?.address }),
    now: () => now,
    random: () => 0.5,
  };
  const r = new Rebalancer(h);
  Object.defineProperty(h, "rebalanceMs", { value: intervalMs });
  return { r, moved, advance: (ms: number) => void (now += ms) };
}

describe("planMove", () => {
  test("sticky: every connection not on the preferred member may move, to it", () => {
    const ms = table();
    const [a, b, c] = ms.list as [Member, Member, Member];
    const cs = [conn(a), conn(b), conn(c), conn(b)];
    const plan = planMove(ms.list, a, cs, () => true);
    expect(plan?.to).toBe(a);
    expect(plan?.from).toEqual([cs[1]!, cs[3]!, cs[2]!]);
  });
  test("sticky: nothing moves while the preferred member is not settled, or when all are on it already", () => {
    const ms = table();
    const [a, b] = ms.list as [Member, Member];
    expect(planMove(ms.list, a, [conn(b)], () => false)).toBeNull();
    expect(planMove(ms.list, a, [conn(a), conn(a)], () => true)).toBeNull();
  });
  test("without a preferred member: the member furthest above its share gives one up, only while another is below its own", () => {
    const ms = table();
    const [a, b, c] = ms.list as [Member, Member, Member];
    const cs = [conn(a), conn(a), conn(a), conn(a), conn(b), conn(c)];
    expect(planMove(ms.list, undefined, cs, () => true)?.from).toEqual(cs.slice(0, 4));
    expect(planMove(ms.list, undefined, [conn(a), conn(a), conn(b), conn(c)], () => true)).toBeNull(); // 2/1/1: within one of the share
    // the member below its share is not settled yet: nothing to gain by moving
    expect(planMove(ms.list, undefined, [conn(a), conn(a), conn(a), conn(b), conn(b), conn(b)], (m) => m !== c)).toBeNull();
  });
  test("connections to a drained member stay (the operator said keep them open)", () => {
    const ms = table();
    const [a, b] = ms.list as [Member, Member];
    ms.update(b, { drain: "keep-open" });
    expect(planMove(ms.list, a, [conn(b), conn(b)], () => true)).toBeNull();
  });
});

describe("Rebalancer.tick", () => {
  test(`moves one quiet connection per tick, only to a member usable for ${SETTLE_INTERVALS} intervals, and never a young or busy one`, () => {
    const ms = table();
    const [a, b] = ms.list as [Member, Member];
    let preferred = b;
    const busy = conn(b, 0, false);
    const young = conn(b, 12_500); // accepted half an interval before the member settles
    const cs = [busy, young, conn(b), conn(b)];
    const { r, moved, advance } = host(ms, cs, () => preferred);
    ms.update(a, { state: "down" });
    expect(r.tick()).toBeNull(); // all on b, where new connections go
    ms.update(a, { state: "up" });
    preferred = a;
    expect(r.tick()).toBeNull(); // a just became usable
    advance(SETTLE_INTERVALS * 1000 - 1);
    expect(r.tick()).toBeNull();
    advance(1);
    expect(r.tick()).toBe(cs[2]!); // busy and young skipped
    expect(moved).toEqual([{ conn: cs[2]!, to: "a:1" }]);
    advance(1000);
    expect(r.tick()).toBe(young); // an interval old now
    advance(1000);
    expect(r.tick()).toBe(cs[3]!);
    advance(1000);
    expect(r.tick()).toBeNull(); // only the busy one is left
    expect(moved.map((x) => x.conn)).not.toContain(busy);
  });
  test("a member that flaps is never settled: nothing moves to it", () => {
    const ms = table();
    const [a, b] = ms.list as [Member, Member];
    const { r, moved, advance } = host(ms, [conn(b), conn(b)], () => a);
    for (let i = 0; i < 20; i++) {
      r.tick();
      advance(1500);
      ms.update(a, { state: i % 2 === 0 ? "down" : "up" });
    }
    expect(moved).toEqual([]);
  });
});
