/**
 * Health's rules, driven in-process with a fake clock, check and probe (src/health/monitor.ts):
 * rise and fall counted exactly, the first check deciding alone, ejection after failed dials,
 * retry-delay probes, and each transition logged once with etcd's phrases.
 */
import { describe, expect, test } from "bun:test";
import { parseEndpoint } from "../../src/addresses.ts";
import type { CheckOptions, CheckResult } from "../../src/health/checks.ts";
import { Health, type HealthSettings, type HealthWorld } from "../../src/health/monitor.ts";
import { createLogger } from "../../src/log.ts";
import { MemberTable, type Member, type MemberState } from "../../src/members.ts";

const OK: CheckResult = { ok: true, reason: "readyz ok" };
const BAD: CheckResult = { ok: false, reason: "readyz 503: not ready" };

/** A world whose time moves only when the test says, with scripted check and probe answers. */
function fakeWorld(checks: CheckResult[] = [], probes: (string | null)[] = []) {
  let now = 0;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const delays: number[] = [];
  const calls = { checks: 0, probes: 0 };
  /** The options of every check, in order. */
  const plans: CheckOptions[] = [];
  const world: HealthWorld = {
    after(ms, fn) {
      const id = seq++;
      delays.push(ms);
      timers.set(id, { at: now + ms, fn });
      return () => timers.delete(id);
    },
    random: () => 0.5, // no jitter (0.9 + 0.5 * 0.2 = 1); first checks half an interval in
    now: () => now,
    check: async (_kind, _m, options) => {
      calls.checks++;
      plans.push(options);
      return checks.shift() ?? OK;
    },
    probe: async () => {
      calls.probes++;
      return probes.length > 0 ? probes.shift()! : null;
    },
    forget() {},
  };
  /** Runs the next timer (time jumps to it) and lets the check or probe it started finish. */
  const step = async () => {
    const next = [...timers.entries()].sort((a, b) => a[1].at - b[1].at)[0];
    if (next === undefined) throw new Error("nothing scheduled");
    timers.delete(next[0]);
    now = next[1].at;
    next[1].fn();
    await new Promise((r) => setImmediate(r));
  };
  return { world, step, delays, calls, plans, now: () => now, pending: () => timers.size, advance: (ms: number) => void (now += ms), dueTimes: () => [...timers.values()].map((t) => t.at) };
}

function setup(overrides: Partial<HealthSettings>, world: HealthWorld, inUse: () => boolean = () => true) {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ write: (l) => void lines.push(JSON.parse(l)) });
  const table = new MemberTable([parseEndpoint("127.0.0.1:2379")], log);
  const settings: HealthSettings = { check: "etcd", intervalMs: 2000, statusIntervalMs: 10_000, spareIntervalMs: 60_000, timeoutMs: 1000, rise: 2, fall: 3, retryDelayMs: 60_000, connectTimeoutMs: 1000, tls: null, clusterId: null, ...overrides };
  const health = new Health(table, () => settings, log, inUse, world);
  return { table, member: table.list[0]!, health, lines, msgs: () => lines.map((l) => l.msg) };
}

describe("active checks: rise and fall are counted exactly", () => {
  const T = OK;
  const F = BAD;
  const cases: { name: string; rise: number; fall: number; checks: CheckResult[]; states: MemberState[] }[] = [
    { name: "a failing first check marks the member down at once", rise: 2, fall: 3, checks: [F], states: ["down"] },
    { name: "--health-fall=3: down after the third failure in a row, not the second", rise: 2, fall: 3, checks: [T, F, F, F], states: ["up", "up", "up", "down"] },
    { name: "a pass in between starts the failure count again", rise: 2, fall: 3, checks: [T, F, F, T, F, F, F], states: ["up", "up", "up", "up", "up", "up", "down"] },
    { name: "--health-rise=3: up after the third pass in a row, not the second", rise: 3, fall: 1, checks: [F, T, T, T], states: ["down", "down", "down", "up"] },
    { name: "a failure in between starts the pass count again", rise: 2, fall: 1, checks: [F, T, F, T, T], states: ["down", "down", "down", "down", "up"] },
    { name: "--health-fall=1 --health-rise=1 follow every check", rise: 1, fall: 1, checks: [T, F, T, F], states: ["up", "down", "up", "down"] },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const f = fakeWorld([...c.checks]);
      const { member, health } = setup({ rise: c.rise, fall: c.fall }, f.world);
      health.start();
      const seen: MemberState[] = [];
      for (let i = 0; i < c.checks.length; i++) {
        await f.step();
        seen.push(member.state);
      }
      expect(seen).toEqual(c.states);
      expect(f.calls.checks).toBe(c.checks.length);
    });
  }

  test("the member in use is checked every --health-interval and never faster while it fails; a down member's checks back off to --health-spare-interval", async () => {
    const f = fakeWorld([OK, BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD]);
    const { health, member } = setup({ intervalMs: 2000, spareIntervalMs: 60_000 }, f.world);
    health.start();
    for (let i = 0; i < 11; i++) await f.step();
    expect(member.state).toBe("down");
    // first check half an interval in; 2 s while up, failing or not (no fastinter); once down,
    // doubling from 2 s (HAProxy's downinter, backing off) to the 60 s cap
    expect(f.delays).toEqual([1000, 2000, 2000, 2000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
  });

  test("a down member that does not answer at all backs off only to 5 × --health-interval, so a fleet sees it back within seconds (issue 22)", async () => {
    const REFUSED: CheckResult = { ok: false, reason: "dial tcp 127.0.0.1:2379: connect: connection refused", alive: false };
    const f = fakeWorld([OK, ...Array<CheckResult>(10).fill(REFUSED), OK, OK]);
    const { health, member } = setup({ intervalMs: 2000, spareIntervalMs: 60_000 }, f.world);
    health.start();
    for (let i = 0; i < 11; i++) await f.step();
    expect(member.state).toBe("down");
    expect(f.delays).toEqual([1000, 2000, 2000, 2000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000, 10_000]);
    // It answers again: up after --health-rise (2) passing checks, the second one interval later.
    await f.step();
    await f.step();
    expect(member.state).toBe("up");
  });

  test("the member in use gets a cheap liveness check on a kept-alive connection, and a full check every --health-status-interval", async () => {
    const f = fakeWorld();
    const { health } = setup({ intervalMs: 2000, statusIntervalMs: 10_000 }, f.world);
    health.start();
    for (let i = 0; i < 7; i++) await f.step();
    // at 1 s (the first check decides: full), 3, 5, 7, 9 s, then 11 s: 10 s after the last full one
    expect(f.plans.map((p) => p.depth)).toEqual(["full", "liveness", "liveness", "liveness", "liveness", "full", "liveness"]);
    expect(f.plans.slice(1).every((p) => p.keepAlive)).toBe(true);
  });

  test("a member in use only through open connections a fault left on it (new ones go elsewhere) gets liveness checks, and a full one every --health-spare-interval (issue 22)", async () => {
    const f = fakeWorld();
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ write: (l) => void lines.push(JSON.parse(l)) });
    const table = new MemberTable([parseEndpoint("127.0.0.1:2379")], log);
    const settings: HealthSettings = { check: "etcd", intervalMs: 2000, statusIntervalMs: 10_000, spareIntervalMs: 60_000, timeoutMs: 1000, rise: 2, fall: 3, retryDelayMs: 60_000, connectTimeoutMs: 1000, tls: null, clusterId: null };
    const health = new Health(table, () => settings, log, () => true, f.world, () => false);
    health.start();
    for (let i = 0; i < 33; i++) await f.step();
    // at 1 s (the first check: full), then every 2 s; full again only 60 s after the first
    const fulls = f.plans.map((p, i) => (p.depth === "full" ? i : -1)).filter((i) => i >= 0);
    expect(fulls).toEqual([0, 30]);
  });

  test("once a full check fails, every check of the member in use is full until one passes", async () => {
    const f = fakeWorld([OK, OK, OK, OK, OK, BAD, BAD, OK, OK]);
    const { health } = setup({ intervalMs: 2000, statusIntervalMs: 10_000 }, f.world);
    health.start();
    for (let i = 0; i < 9; i++) await f.step();
    expect(f.plans.map((p) => p.depth)).toEqual(["full", "liveness", "liveness", "liveness", "liveness", "full", "full", "full", "liveness"]);
  });

  test("a spare (no clients) is checked fully every --health-spare-interval, each time on a new connection", async () => {
    const f = fakeWorld();
    const { health } = setup({ intervalMs: 2000, spareIntervalMs: 60_000 }, f.world, () => false);
    health.start();
    for (let i = 0; i < 3; i++) await f.step();
    expect(f.delays).toEqual([1000, 60_000, 60_000, 60_000]);
    expect(f.plans.map((p) => [p.depth, p.keepAlive])).toEqual([["full", false], ["full", false], ["full", false]]);
  });

  test("a spare that comes into use has its next check brought forward to --health-interval", async () => {
    const f = fakeWorld();
    let inUse = false;
    const { health, member } = setup({ intervalMs: 2000, spareIntervalMs: 60_000 }, f.world, () => inUse);
    health.start();
    await f.step(); // at 1 s; the next is due at 61 s
    inUse = true;
    health.cameIntoUse(member);
    await f.step();
    expect(f.now()).toBe(3000);
    expect(f.plans[1]).toMatchObject({ depth: "liveness", keepAlive: true });
  });

  test("a check the gateway could not run (out of file descriptors) counts neither way", async () => {
    const INCONCLUSIVE: CheckResult = { ok: null, reason: "not checked: out of file descriptors" };
    const f = fakeWorld([OK, INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, BAD, BAD, BAD]);
    const { health, member } = setup({ fall: 3 }, f.world);
    health.start();
    for (let i = 0; i < 7; i++) await f.step();
    expect(member.state).toBe("up"); // two real failures, not three
    await f.step();
    expect(member.state).toBe("down");
  });

  test("each transition is logged once, with etcd's phrases", async () => {
    const f = fakeWorld([OK, BAD, BAD, BAD, BAD, OK, OK, OK]);
    const { health, msgs, lines } = setup({}, f.world);
    health.start();
    for (let i = 0; i < 8; i++) await f.step();
    expect(msgs()).toEqual(["deactivated endpoint", "activated"]);
    expect(lines[0]).toMatchObject({ level: "warn", address: "127.0.0.1:2379", interval: "2s", error: "readyz 503: not ready", from: "up", to: "down" });
  });
});

describe("passive evidence: failed dials", () => {
  test("--health-fall failed dials in a row eject the member; a successful dial in between starts the count again", () => {
    const f = fakeWorld();
    const { member, health, table } = setup({ check: "none", fall: 3 }, f.world);
    health.dialFailed(member, "ECONNREFUSED");
    health.dialFailed(member, "ECONNREFUSED");
    expect([member.state, member.failures]).toEqual(["up", 2]);
    health.dialSucceeded(member);
    expect(member.failures).toBe(0);
    health.dialFailed(member, "ECONNREFUSED");
    health.dialFailed(member, "ECONNREFUSED");
    expect(member.state).toBe("up");
    health.dialFailed(member, "ECONNREFUSED");
    expect([member.state, member.failures, member.ejections]).toEqual(["ejected", 3, 1]);
    expect(member.reason).toBe("3 failed dials in a row, last: ECONNREFUSED");
    expect(table.list[0]).toBe(member);
  });

  test("with active checks, the next passing check brings an ejected member back", async () => {
    const f = fakeWorld([OK, OK]);
    const { member, health } = setup({ fall: 1 }, f.world);
    health.start();
    await f.step();
    health.dialFailed(member, "reset right after connect");
    expect(member.state).toBe("ejected");
    await f.step();
    expect([member.state, member.failures]).toEqual(["up", 0]);
  });

  test("without active checks, an ejected member is probed every --retry-delay until a probe connects", async () => {
    const f = fakeWorld([], ["ECONNREFUSED", null]);
    const { member, health, msgs } = setup({ check: "none", fall: 1, retryDelayMs: 30_000 }, f.world);
    health.dialFailed(member, "ECONNREFUSED");
    expect(member.state).toBe("ejected");
    await f.step();
    expect([member.state, f.now()]).toEqual(["ejected", 30_000]);
    await f.step();
    expect([member.state, f.now()]).toEqual(["up", 60_000]);
    expect(msgs()).toEqual(["deactivated endpoint", "failed to activate endpoint (stay inactive for another interval)", "activated"]);
    expect(f.pending()).toBe(0);
  });

  test("--retry-delay=0 means 5 minutes, as in etcd", async () => {
    const f = fakeWorld([], [null]);
    const { member, health } = setup({ check: "none", fall: 1, retryDelayMs: 0 }, f.world);
    health.dialFailed(member, "ECONNREFUSED");
    await f.step();
    expect([member.state, f.now()]).toEqual(["up", 300_000]);
  });

  test("failed dials during a probe never start a second probe chain", async () => {
    const f = fakeWorld([], ["ECONNREFUSED", "ECONNREFUSED", null]);
    const { member, health } = setup({ check: "none", fall: 1 }, f.world);
    for (let i = 0; i < 10; i++) health.dialFailed(member, "ECONNREFUSED");
    expect(f.pending()).toBe(1);
    await f.step();
    for (let i = 0; i < 10; i++) health.dialFailed(member, "ECONNREFUSED");
    expect(f.pending()).toBe(1);
  });
});

describe("verify", () => {
  test("checks a member fully at once, counts the verdict, and says whether it passed", async () => {
    const f = fakeWorld([OK, BAD]);
    const { health, member } = setup({ fall: 1 }, f.world, () => false);
    expect(await health.verify(member)).toBe(true);
    f.advance(10_000); // --health-status-interval later
    expect(await health.verify(member)).toBe(false);
    expect(member.state).toBe("down");
    expect(f.plans.map((p) => [p.depth, p.keepAlive])).toEqual([["full", false], ["full", false]]);
    expect(f.pending()).toBe(0); // nothing was scheduled by it
  });

  test("trusts a full check that passed within --health-status-interval instead of checking again (issue 22: a fleet moving off a failed member checked the member it moved to all at once)", async () => {
    const f = fakeWorld([OK, BAD]);
    const { health, member } = setup({ fall: 1 }, f.world, () => false);
    expect(await health.verify(member)).toBe(true);
    f.advance(9_999);
    expect(await health.verify(member)).toBe(true);
    expect(f.calls.checks).toBe(1);
  });
});

describe("check durations (etcd_gateway_health_check_duration_seconds)", () => {
  test("each check's time is observed by depth, in seconds; a check that could not run is not", async () => {
    const f = fakeWorld([OK, OK, { ok: null, reason: "not checked: out of file descriptors" }, OK]);
    let extra = 0;
    const check = f.world.check;
    // Each check takes 5 ms (full) or 1 ms (liveness) of the fake clock.
    const world: HealthWorld = { ...f.world, now: () => f.now() + extra, check: async (k, m, o) => ((extra += o.depth === "full" ? 5 : 1), check(k, m, o)) };
    const { health, member } = setup({ intervalMs: 2000, statusIntervalMs: 10_000 }, world);
    health.start();
    for (let i = 0; i < 4; i++) await f.step();
    expect(f.plans.map((p) => p.depth)).toEqual(["full", "liveness", "liveness", "liveness"]);
    expect({ full: member.checks.full.counts.reduce((a, b) => a + b), liveness: member.checks.liveness.counts.reduce((a, b) => a + b) }).toEqual({ full: 1, liveness: 2 });
    expect(member.checks.full.sum).toBeCloseTo(0.005, 9);
    expect(member.checks.liveness.sum).toBeCloseTo(0.002, 9);
    // 5 ms is in the bucket whose upper bound is 0.005 (le is inclusive), 1 ms in le="0.001".
    expect(member.checks.full.counts.indexOf(1)).toBe(member.checks.full.bounds.indexOf(0.005));
    expect(member.checks.liveness.counts.indexOf(2)).toBe(member.checks.liveness.bounds.indexOf(0.001));
  });
});

/** A full check's answer from a member of cluster `cluster` (hex IDs), with `alarms`. */
function statusOf(cluster: string, member: string, alarms: { alarm: string; member: string }[] = []): CheckResult {
  return { ok: true, reason: "status ok", alive: true, facts: { clusterId: cluster, memberId: member, alarms } };
}

/**
 * `n` members on 127.0.0.1:2379.. with a scripted answer per member: `answer(i)` gives member i's
 * next check result. Every member is a spare unless `inUse` says otherwise.
 */
function members(n: number, overrides: Partial<HealthSettings>, answer: (i: number, o: CheckOptions) => CheckResult, inUse: (i: number) => boolean = () => false) {
  const f = fakeWorld();
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ write: (l) => void lines.push(JSON.parse(l)) });
  const table = new MemberTable(Array.from({ length: n }, (_, i) => parseEndpoint(`127.0.0.1:${2379 + i}`)), log);
  const index = (m: Member) => table.list.indexOf(m);
  const checked: number[] = [];
  const world: HealthWorld = {
    ...f.world,
    check: async (_k, m, o) => {
      checked.push(index(m));
      f.plans.push(o);
      return answer(index(m), o);
    },
  };
  const settings: HealthSettings = { check: "etcd", intervalMs: 2000, statusIntervalMs: 10_000, spareIntervalMs: 60_000, timeoutMs: 1000, rise: 2, fall: 3, retryDelayMs: 60_000, connectTimeoutMs: 1000, tls: null, clusterId: null, ...overrides };
  const health = new Health(table, () => settings, log, (m) => inUse(index(m)), world);
  /** Runs timers until every member has been checked at least `rounds` times. */
  const rounds = async (k: number) => {
    while (table.list.some((_, i) => checked.filter((c) => c === i).length < k)) await f.step();
  };
  return { f, table, health, lines, settings, checked, rounds, msgs: (msg: string) => lines.filter((l) => l.msg === msg) };
}

describe("undecided members are checked every --health-interval, whatever their role (issue 19)", () => {
  test("a spare that a client's dial found dead is checked every --health-interval until it is down, not a minute later", async () => {
    // Found in the demo: a member killed while in use stayed `up` in /status for 1.5-2 minutes,
    // because sticky moved on after one failed dial and the dead member became a spare checked every 60 s.
    let dead = false;
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000, fall: 3 }, () => (dead ? { ok: false, reason: "dial tcp 127.0.0.1:2379: connect: connection refused", alive: false } : OK));
    const m = h.table.list[0]!;
    h.health.start();
    await h.f.step(); // the first check, at 1 s: up; the next due at 61 s
    expect([m.state, h.f.now()]).toEqual(["up", 1000]);
    dead = true;
    h.f.now(); // a client's dial fails at 1 s
    h.health.dialFailed(m, "dial tcp 127.0.0.1:2379: connect: connection refused");
    const times: number[] = [];
    while (m.state === "up") {
      await h.f.step();
      times.push(h.f.now());
    }
    expect(times).toEqual([3000, 5000, 7000]);
    expect(m.state).toBe("down");
  });

  test("a passing check clears failed dials below --health-fall: the member is sticky's again and back on the spare schedule (issue 22)", async () => {
    // Found by bench:fleet --balance: after a full outage, members with one or two failed dials
    // from clients' fail-open attempts kept them after returning, so sticky never chose them and
    // every gateway checked them fully every 2 s for good.
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000, fall: 3 }, () => OK);
    const m = h.table.list[0]!;
    h.health.start();
    await h.f.step();
    h.health.dialFailed(m, "dial tcp 127.0.0.1:2379: connect: connection refused");
    h.health.dialFailed(m, "dial tcp 127.0.0.1:2379: connect: connection refused");
    expect([m.state, m.failures]).toEqual(["up", 2]);
    await h.f.step(); // brought forward by the failed dial: at --health-interval
    expect([m.state, m.failures]).toEqual(["up", 0]);
    await h.f.step();
    expect(h.f.delays).toEqual([1000, 60_000, 2000, 60_000, 60_000]);
  });

  test("a spare whose check failed once is checked again at --health-interval, and back on the spare schedule once a check passes", async () => {
    const script = [OK, BAD, OK, OK];
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000 }, () => script.shift() ?? OK);
    h.health.start();
    for (let i = 0; i < 4; i++) await h.f.step();
    // 1 s first check, 61 s (spare), failed: 63 s, passed: 123 s
    expect(h.f.delays).toEqual([1000, 60_000, 2000, 60_000, 60_000]);
  });

  test("when a member comes up, a down member that answered unhealthy (no leader) is checked again within 5 x --health-interval, not after its backoff (issue 22: an outage ending)", async () => {
    const NO_LEADER: CheckResult = { ok: false, reason: "no leader", alive: true };
    let aBack = false;
    const h = members(2, { intervalMs: 2000, spareIntervalMs: 60_000, rise: 1, fall: 1 }, (i) => (i === 0 ? (aBack ? OK : { ok: false, reason: "connection refused", alive: false }) : NO_LEADER));
    const [a, b] = h.table.list as [Member, Member];
    h.health.start();
    // Both down; b answers "no leader" and backs off towards 60 s.
    while (h.f.now() < 120_000) await h.f.step();
    expect([a.state, b.state]).toEqual(["down", "down"]);
    aBack = true;
    while (a.state !== "up") await h.f.step();
    const upAt = h.f.now();
    const next = Math.min(...h.f.dueTimes().filter((t) => t > upAt));
    expect(next - upAt).toBeLessThanOrEqual(10_000);
    expect(b.alive).toBe(true);
  });

  test("a returning member's full check is confirmed by liveness checks (--health-rise), not more full ones (issue 22)", async () => {
    const script = [BAD, OK, OK, OK];
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000, rise: 3, fall: 3 }, () => script.shift() ?? OK);
    const m = h.table.list[0]!;
    h.health.start();
    for (let i = 0; i < 4; i++) await h.f.step();
    expect(m.state).toBe("up");
    expect(h.f.plans.map((p) => p.depth)).toEqual(["full", "full", "liveness", "liveness"]);
  });

  test("a down member whose check passed is checked at --health-interval until --health-rise decides; a down member that keeps failing backs off", async () => {
    const script = [BAD, BAD, BAD, BAD, BAD, OK, OK];
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000, rise: 2, fall: 3 }, () => script.shift() ?? OK);
    const m = h.table.list[0]!;
    h.health.start();
    for (let i = 0; i < 7; i++) await h.f.step();
    expect(m.state).toBe("up");
    // down at 1 s (the first check decides); failing: 2 s until --health-fall failures, then
    // doubling (decided, backing off); a pass: 2 s until --health-rise decides; then a spare's 60 s
    expect(h.f.delays).toEqual([1000, 2000, 2000, 2000, 4000, 8000, 2000, 60_000]);
  });

  test("a down member that fail-open sends a first client to keeps its backed-off schedule", async () => {
    const h = members(1, { intervalMs: 2000, spareIntervalMs: 60_000, fall: 1 }, () => BAD);
    const m = h.table.list[0]!;
    h.health.start();
    for (let i = 0; i < 4; i++) await h.f.step();
    const due = h.f.delays.at(-1);
    h.health.cameIntoUse(m);
    expect(h.f.delays.at(-1)).toBe(due);
    expect(h.f.pending()).toBe(1);
  });
});

describe("liveness: whether a member answers at all (issue 19)", () => {
  test("a check's answer sets alive, and the lack of one clears it", async () => {
    const script: CheckResult[] = [{ ...OK, alive: true }, { ok: false, reason: "Get \"http://127.0.0.1:2379/version\": context deadline exceeded (timeout 1s)", alive: false }, { ok: false, reason: "no leader", alive: true }];
    const h = members(1, {}, () => script.shift() ?? OK, () => true);
    const m = h.table.list[0]!;
    expect(m.alive).toBeNull();
    h.health.start();
    await h.f.step();
    expect(m.alive).toBe(true);
    expect(m.stats.lastHeardAt).toBe(1000);
    await h.f.step();
    expect(m.alive).toBe(false);
    expect(m.stats.lastHeardAt).toBe(1000);
    await h.f.step();
    expect(m.alive).toBe(true);
    expect(m.stats.lastHeardAt).toBe(5000);
  });

  test("notes a check brings (a fallback it took) are logged once per member", async () => {
    const note = { key: "status-api", level: "info" as const, msg: "member has the JSON API off: status checked over gRPC", fields: { address: "x" } };
    const h = members(2, {}, () => ({ ...OK, alive: true, notes: [note] }), () => true);
    h.health.start();
    await h.rounds(4);
    expect(h.msgs(note.msg)).toHaveLength(2);
  });
});

describe("cluster identity (issue 19)", () => {
  const A = "cdf818194e3a8c32";
  const B = "1c8a2b3d4e5f6071";
  test("the ID most members report is the cluster's: a member of another cluster is down at its first check, with both IDs in the reason, logged once", async () => {
    const h = members(4, {}, (i) => statusOf(i === 3 ? B : A, `${i + 1}`));
    h.health.start();
    await h.rounds(3);
    expect(h.table.list.map((m) => m.state)).toEqual(["up", "up", "up", "down"]);
    const foreign = h.table.list[3]!;
    expect(foreign.wrongCluster).toBe(true);
    expect(foreign.reason).toBe(`member of cluster ${B}, not ${A} (the gateway's cluster)`);
    expect(h.health.cluster.id).toBe(A);
    expect(h.msgs("deactivated endpoint")).toHaveLength(1);
    expect(h.msgs("cluster ID learned")).toHaveLength(1);
    expect(h.msgs("cluster ID learned")[0]).toMatchObject({ level: "info", "cluster-id": A });
    // Logged once a majority of the endpoint set agrees, naming them.
    expect((h.msgs("cluster ID learned")[0]!.from as string[]).sort()).toEqual(["127.0.0.1:2379", "127.0.0.1:2380", "127.0.0.1:2381"]);
  });

  test("when the first member to answer is the foreign one, the majority corrects it: the foreign member goes down, the others stay up", async () => {
    // Member 0 (the foreign one) is checked first: the cluster is learned from it, then outvoted.
    const h = members(3, {}, (i) => statusOf(i === 0 ? B : A, `${i + 1}`));
    const order: number[] = [];
    h.health.start();
    while (h.table.list.some((m) => m.clusterId === null)) {
      await h.f.step();
      order.push(h.checked.at(-1)!);
    }
    expect(h.health.cluster.id).toBe(A);
    expect(h.table.list.map((m) => [m.state, m.wrongCluster])).toEqual([["down", true], ["up", false], ["up", false]]);
  });

  test("a tie decides nothing: two members of two clusters both stay up, and no cluster ID is set, until a third member breaks it", async () => {
    let third = false;
    const h = members(3, {}, (i) => (i === 2 && !third ? { ok: false, reason: "dial tcp 127.0.0.1:2381: connect: connection refused", alive: false } : statusOf(i === 0 ? B : A, `${i + 1}`)));
    h.health.start();
    await h.rounds(2);
    expect(h.table.list.slice(0, 2).map((m) => [m.state, m.wrongCluster])).toEqual([["up", false], ["up", false]]);
    expect(h.health.cluster.id).toBeNull();
    expect(h.msgs("deactivated endpoint").map((l) => l.address)).toEqual(["127.0.0.1:2381"]);
    third = true;
    await h.rounds(6); // the third member rises (--health-rise) and reports A
    expect(h.health.cluster.id).toBe(A);
    expect(h.table.list.map((m) => [m.state, m.wrongCluster])).toEqual([["down", true], ["up", false], ["up", false]]);
  });

  test("--cluster-id pins the cluster: members reporting another are down, and a reload to another ID takes effect at once", async () => {
    const h = members(2, { clusterId: B }, (i) => statusOf(i === 0 ? B : A, `${i + 1}`));
    h.health.start();
    await h.rounds(1);
    expect(h.table.list.map((m) => m.state)).toEqual(["up", "down"]);
    expect(h.table.list[1]!.reason).toBe(`member of cluster ${A}, not ${B} (the gateway's cluster, --cluster-id)`);
    const previous = { ...h.settings };
    (h.settings as { clusterId: string | null }).clusterId = A;
    h.health.settingsChanged(previous);
    expect(h.table.list[0]!.state).toBe("down"); // at once
    expect(h.table.list[1]!.wrongCluster).toBe(false);
    await h.rounds(3); // judged afresh: its next check decides alone
    expect(h.table.list.map((m) => m.state)).toEqual(["down", "up"]);
  });
});

describe("cluster alarms (issue 19)", () => {
  test("a NOSPACE alarm, which every member lists, keeps every member up and is logged once as raised, once as cleared", async () => {
    let alarms = [{ alarm: "NOSPACE", member: "1" }];
    const h = members(3, {}, (i) => statusOf("cdf818194e3a8c32", `${i + 1}`, alarms));
    h.health.start();
    await h.rounds(2);
    expect(h.table.list.map((m) => m.state)).toEqual(["up", "up", "up"]);
    expect(h.health.cluster.alarms).toEqual([{ alarm: "NOSPACE", member: "1" }]);
    expect(h.msgs("cluster alarm raised")).toHaveLength(1);
    expect(h.msgs("cluster alarm raised")[0]).toMatchObject({ level: "warn", alarm: "NOSPACE", member: "1" });
    alarms = [];
    await h.rounds(3);
    expect(h.health.cluster.alarms).toEqual([]);
    expect(h.msgs("cluster alarm cleared")).toHaveLength(1);
  });
});
