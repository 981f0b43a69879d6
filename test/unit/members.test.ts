/**
 * The member table's endpoint-set changes (src/members.ts): a removed member with open connections
 * is kept aside as `retired` until they close, and one that comes back is the same member again;
 * and what /status and /metrics make of it (memberViews in src/metrics.ts); the drain, written
 * through the one writer and shared with workers.
 */
import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import { createLogger } from "../../src/log.ts";
import { MemberTable } from "../../src/members.ts";
import { memberViews, type MemberShare } from "../../src/metrics.ts";
import { MemberStats } from "../../src/counters.ts";
import { createPolicy } from "../../src/select.ts";
import { adopt, snapshot, type SharedState } from "../../src/workers.ts";

const eps = (...addresses: string[]) => addresses.map((a) => parseEndpoint(a));

function table() {
  const lines: Record<string, unknown>[] = [];
  const t = new MemberTable(eps("10.0.0.1:2379", "10.0.0.2:2379"), createLogger({ write: (l) => void lines.push(JSON.parse(l)) }));
  return { t, lines, a: t.list[0]!, b: t.list[1]! };
}

describe("MemberTable.replace and retired", () => {
  test("a removed member without connections is gone at once", () => {
    const { t, a } = table();
    expect(t.replace(eps("10.0.0.2:2379")).removed).toEqual([a]);
    expect([a.removed, t.retired]).toEqual([true, []]);
  });

  test("a removed member with connections is retired until the last one closes (pruned as read)", () => {
    const { t, a } = table();
    a.connections = 2;
    t.replace(eps("10.0.0.2:2379"));
    expect(t.retired).toEqual([a]);
    a.connections = 1;
    expect(t.retired).toEqual([a]);
    a.connections = 0;
    expect(t.retired).toEqual([]);
  });

  test("one that comes back before its connections close is the same member, counted as added, and starts up", () => {
    const { t, a, lines } = table();
    t.update(a, { state: "down", reason: "check failed" });
    a.connections = 1;
    a.stats.connectionsTotal = 7;
    t.replace(eps("10.0.0.2:2379"));
    const { added, removed } = t.replace(eps("10.0.0.1:2379", "10.0.0.2:2379"));
    expect([added, removed, t.retired]).toEqual([[a], [], []]);
    expect(t.list[0]).toBe(a);
    expect([a.removed, a.state, a.reason, a.stats.connectionsTotal]).toEqual([false, "up", "back in the endpoint set", 7]);
    expect(lines.at(-1)).toMatchObject({ msg: "activated", address: "10.0.0.1:2379", from: "down", to: "up", reason: "back in the endpoint set" });
  });
});

describe("memberViews", () => {
  const share = (address: string, connections: number): MemberShare => ({ address, connections, stats: new MemberStats() });

  test("the table's members, then removed ones some process still has connections to", () => {
    const { t, a } = table();
    a.connections = 1;
    t.replace(eps("10.0.0.2:2379"));
    const views = memberViews(t, [share("10.0.0.2:2379", 0), share("10.0.0.1:2379", 3), share("10.0.0.9:2379", 2), share("10.0.0.8:2379", 0)]);
    expect(views.map((v) => [v.address, v.state])).toEqual([
      ["10.0.0.2:2379", "up"],
      ["10.0.0.1:2379", "removed"],
      // Only a worker still has connections to it: shown, without the primary's history.
      ["10.0.0.9:2379", "removed"],
    ]);
  });
});

describe("MemberTable.update and the drain", () => {
  test("is logged once per change, tells subscribers (state unchanged), and leaves health's state alone", () => {
    const { t, a, lines } = table();
    const seen: string[] = [];
    t.onChange((m, from, to) => void seen.push(`${m.address} ${from}->${to} ${m.drain}`));
    t.update(a, { drain: "keep-open" });
    t.update(a, { drain: "keep-open" });
    t.update(a, { drain: "close-idle" });
    t.update(a, { state: "down", reason: "x" });
    t.update(a, { drain: "off" });
    expect(seen).toEqual(["10.0.0.1:2379 up->up keep-open", "10.0.0.1:2379 up->up close-idle", "10.0.0.1:2379 up->down close-idle", "10.0.0.1:2379 down->down off"]);
    expect(lines.map((l) => [l.msg, l["close-idle"]])).toEqual([
      ["member drained: no new connections", false],
      ["member drained: no new connections", true],
      ["deactivated endpoint", undefined],
      ["member back in rotation", undefined],
    ]);
    expect([a.state, a.usable]).toEqual(["down", false]);
  });

  test("a drained member is not usable: /readyz and `status` say so when it is the only one up", () => {
    const { t, a, b } = table();
    t.update(b, { state: "down" });
    expect(t.anyUsable).toBe(true);
    t.update(a, { drain: "keep-open" });
    expect([a.up, a.usable, t.anyUsable]).toEqual([true, false, false]);
  });
});

describe("--workers: the primary's drain reaches a worker's table", () => {
  test("snapshot carries it, adopt writes it through the worker's update", () => {
    const primary = table();
    primary.t.update(primary.a, { drain: "close-idle" });
    const worker = new MemberTable(eps("10.0.0.1:2379", "10.0.0.2:2379"), null);
    const policy = createPolicy("ordered", worker);
    const changed: string[] = [];
    worker.onChange((m) => void changed.push(`${m.address} ${m.drain}`));
    adopt(JSON.parse(JSON.stringify(snapshot(primary.t, createPolicy("ordered", primary.t)))) as SharedState, worker, policy);
    expect(worker.list.map((m) => m.drain)).toEqual(["close-idle", "off"]);
    expect(changed).toEqual(["10.0.0.1:2379 close-idle"]);
    expect(policy.candidates()[0]!.address).toBe("10.0.0.2:2379");
  });
});

describe("a drain lasts through endpoint-set changes that keep the member (issue 20; docs/admin.md, Draining a member)", () => {
  test("MemberTable.replace with a member added keeps the kept members' drain, and says nothing of it", () => {
    const { t, a, b, lines } = table();
    t.update(a, { drain: "close-idle" });
    t.update(b, { drain: "keep-open" });
    const changes: string[] = [];
    t.onChange((m) => void changes.push(m.address));
    const { added, removed } = t.replace(eps("10.0.0.3:2379", "10.0.0.1:2379", "10.0.0.2:2379"));
    expect([added.map((m) => m.address), removed]).toEqual([["10.0.0.3:2379"], []]);
    expect(t.list.map((m) => [m.address, m.drain, m.usable])).toEqual([
      ["10.0.0.3:2379", "off", true],
      ["10.0.0.1:2379", "close-idle", false],
      ["10.0.0.2:2379", "keep-open", false],
    ]);
    expect([t.list[1], t.list[2]]).toEqual([a, b]);
    expect(changes).toEqual([]);
    expect(lines.map((l) => l.msg).filter((m) => m === "member back in rotation")).toEqual([]);
    // And a set without changes (a reload that re-reads the same file).
    t.replace(eps("10.0.0.3:2379", "10.0.0.1:2379", "10.0.0.2:2379"));
    expect(t.list.map((m) => m.drain)).toEqual(["off", "close-idle", "keep-open"]);
  });

  test("a worker adopting the primary's grown set keeps the drain, and its policy never picks the drained member", () => {
    const primary = table();
    primary.t.update(primary.a, { drain: "keep-open" });
    const worker = new MemberTable(eps("10.0.0.1:2379", "10.0.0.2:2379"), null);
    const policy = createPolicy("ordered", worker);
    const share = () => adopt(JSON.parse(JSON.stringify(snapshot(primary.t, createPolicy("ordered", primary.t)))) as SharedState, worker, policy);
    share();
    primary.t.replace(eps("10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"));
    share();
    expect(worker.list.map((m) => [m.address, m.drain])).toEqual([
      ["10.0.0.1:2379", "keep-open"],
      ["10.0.0.2:2379", "off"],
      ["10.0.0.3:2379", "off"],
    ]);
    expect(policy.candidates().map((m) => m.address)).toEqual(["10.0.0.2:2379", "10.0.0.3:2379", "10.0.0.1:2379"]);
  });
});
