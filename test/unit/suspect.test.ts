/**
 * Passive stall evidence (src/datapath/suspect.ts): the suspicion rule with an injectable clock
 * (a slow answer that is not a hang, silence with nothing asked, a big reply still flowing), and
 * the whole path in-process through a Proxy in front of members that are plain sockets here: a
 * member that stops answering is suspected, one that answers is not, and health confirms or
 * clears a suspicion with its checks (src/health/monitor.ts).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { parseEndpoint } from "../../src/addresses.ts";
import type { Conn } from "../../src/datapath/conn.ts";
import type { DialReports } from "../../src/datapath/dialer.ts";
import { Proxy } from "../../src/datapath/proxy.ts";
import { SocketSet } from "../../src/datapath/sockets.ts";
import { Suspicions, TICK_MS, type SuspectWorld } from "../../src/datapath/suspect.ts";
import type { CheckResult } from "../../src/health/checks.ts";
import { CONFIRM_SPACING_MS, Health, type HealthSettings, type HealthWorld } from "../../src/health/monitor.ts";
import { createLogger } from "../../src/log.ts";
import { Member, MemberTable } from "../../src/members.ts";
import { createPolicy } from "../../src/select.ts";
import { buildSettings, gatherFlags } from "../../src/settings.ts";
import { waitFor } from "../support/net.ts";
import { dial } from "../support/peers.ts";

/** A fake world: time moves when the test says; `unread` is what the kernel holds from the member. */
function world() {
  let now = 0;
  const timers: { at: number; fn: () => void }[] = [];
  let unread = 0;
  const w: SuspectWorld = {
    now: () => now,
    after(ms, fn) {
      const t = { at: now + ms, fn };
      timers.push(t);
      return () => void timers.splice(timers.indexOf(t), 1);
    },
    unread: () => unread,
  };
  /** Moves time forward by `ms`, running the timers that come due. */
  const advance = (ms: number) => {
    const end = now + ms;
    for (;;) {
      timers.sort((a, b) => a.at - b.at);
      const t = timers[0];
      if (t === undefined || t.at > end) break;
      timers.shift();
      now = t.at;
      t.fn();
    }
    now = end;
  };
  return { w, advance, setUnread: (n: number) => (unread = n) };
}

/** A connection as the rule sees it: both legs open, nothing queued either way. */
function conn(member: Member): Conn {
  return { up: { sock: {}, closed: false, out: null, member }, client: { closed: false, out: null }, askedAt: 0 } as unknown as Conn;
}

function rule(limitMs = 1000) {
  const f = world();
  const seen: { member: string; ms: number; connections: number }[] = [];
  const s = new Suspicions({ suspectAfterMs: limitMs, suspect: (m, ms, connections) => void seen.push({ member: m.address, ms, connections }) }, f.w);
  return { ...f, s, seen };
}

const A = new Member(parseEndpoint("127.0.0.1:2379"));

describe("the suspicion rule (injectable clock)", () => {
  test("a member silent for the threshold after a client's second unanswered chunk is suspected, once", () => {
    const r = rule(1000);
    const c = conn(A);
    r.s.asked(c);
    r.advance(900);
    expect(r.seen).toEqual([]);
    r.advance(200);
    expect(r.seen).toEqual([{ member: "127.0.0.1:2379", ms: 1000, connections: 1 }]);
    r.advance(5000);
    expect(r.seen).toHaveLength(1); // looked at once per unanswered request
    expect(r.s.waiting).toBe(0);
  });

  test("a slow answer that is not a hang (900 ms, say a request waiting for an election) is not suspected", () => {
    const r = rule(1000);
    const c = conn(A);
    r.s.asked(c);
    r.advance(900);
    r.s.answered(c);
    r.advance(5000);
    expect(r.seen).toEqual([]);
  });

  test("silence with nothing asked: no connection is ever looked at", () => {
    const r = rule(1000);
    r.advance(60_000);
    expect(r.seen).toEqual([]);
    expect(r.s.waiting).toBe(0);
  });

  test("a big reply still flowing is not silence: bytes for the client queued here, or the member's bytes unread in the kernel", () => {
    const r = rule(1000);
    const queued = conn(A);
    (queued.client as { out: unknown }).out = [new Uint8Array(10)];
    r.s.asked(queued);
    r.advance(1100);
    expect(r.seen).toEqual([]);
    r.setUnread(65536);
    r.s.asked(conn(A));
    r.advance(1100);
    expect(r.seen).toEqual([]);
  });

  test("client bytes not yet delivered to the member (queued here) are not the member's silence", () => {
    const r = rule(1000);
    const c = conn(A);
    (c.up as { out: unknown }).out = [new Uint8Array(10)];
    r.s.asked(c);
    r.advance(1100);
    expect(r.seen).toEqual([]);
  });

  test("several silent connections of one member make one report, naming how many; 0 turns the rule off", () => {
    const r = rule(1000);
    r.s.asked(conn(A));
    r.s.asked(conn(A));
    r.advance(1000);
    expect(r.seen).toEqual([{ member: "127.0.0.1:2379", ms: 1000, connections: 2 }]);
    const off = rule(0);
    off.s.asked(conn(A));
    off.advance(10_000);
    expect(off.seen).toEqual([]);
    expect(off.s.waiting).toBe(0);
  });

  test(`the check runs every ${TICK_MS} ms only while a connection waits`, () => {
    const r = rule(1000);
    const c = conn(A);
    r.s.asked(c);
    r.s.answered(c);
    r.advance(TICK_MS); // one last look finds nothing and stops
    r.advance(10_000);
    expect(r.seen).toEqual([]);
  });
});

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** An answer of a gRPC put response's size (about 65 bytes: HEADERS, DATA, trailers). */
const ANSWER = "ok".padEnd(65, ".");
/** A member that answers each chunk with ANSWER until `silent()` says otherwise; then it reads and says nothing. */
async function member(silent: () => boolean): Promise<number> {
  return scripted(() => (silent() ? [] : [ANSWER]));
}

/** A member that writes what `reply` returns for each chunk it reads (each string one write, 20 ms apart). */
async function scripted(reply: (chunk: Buffer) => string[]): Promise<number> {
  const open = new Set<Socket>();
  const srv: Server = createServer((s) => {
    open.add(s);
    s.on("data", (d: Buffer) => {
      reply(d).forEach((w, i) => (i === 0 ? s.write(w) : setTimeout(() => s.writable && s.write(w), 20 * i)));
    });
    s.on("error", () => {}).on("close", () => open.delete(s));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  cleanup.push(() => {
    for (const s of open) s.destroy();
    srv.close();
  });
  return (srv.address() as { port: number }).port;
}

function proxyFor(port: number, suspects: { member: number; ms: number }[]) {
  const settings = buildSettings(gatherFlags({ endpoints: `127.0.0.1:${port}`, policy: "ordered", "health-suspect-after": "300ms" }, {}));
  const table = new MemberTable(settings.endpoints, null);
  const reports: DialReports = { dialFailed() {}, dialSucceeded() {}, stallSuspected: (m, ms) => void suspects.push({ member: m.endpoint.port, ms }) };
  const policy = createPolicy("ordered", table);
  const sockets = SocketSet.bind([{ kind: "tcp", tcp: { host: "127.0.0.1", port: 0, address: "127.0.0.1:0" }, address: "127.0.0.1:0" }], { count: 1, socketMode: 0o600, reusePort: false, exclusive: false }, new Map());
  const proxy = new Proxy({
    members: () => table.list,
    sockets,
    accept: sockets.all,
    settings: () => settings,
    policy: () => policy,
    reports,
    accessLog: null,
    log: createLogger({ write: () => {} }),
  });
  cleanup.push(() => {
    proxy.stopAccepting();
    proxy.closeAll("shut-down");
  });
  return proxy;
}

/**
 * A client through a Proxy whose member answered its first request and then goes silent (it reads
 * and says nothing): what a hung member looks like from the gateway.
 */
async function answeredThenSilent() {
  let silent = false;
  const port = await member(() => silent);
  const suspects: { member: number; ms: number }[] = [];
  const proxy = proxyFor(port, suspects);
  const c = await dial(proxy.port);
  let got = 0;
  c.on("data", (d: Buffer) => (got += d.length));
  c.write("req");
  await waitFor("an answer", () => got > 0, 2000, 2);
  silent = true;
  return { port, suspects, c };
}

describe("through a Proxy, in-process", () => {
  test("a member that stops answering a client that keeps asking is suspected; one that answers never is", async () => {
    let silent = false;
    const port = await member(() => silent);
    const suspects: { member: number; ms: number }[] = [];
    const proxy = proxyFor(port, suspects);
    const c = await dial(proxy.port);
    const got = { bytes: 0 };
    c.on("data", (d: Buffer) => (got.bytes += d.length));
    // Answered requests, one after another and two at once: never suspected.
    for (let i = 0; i < 10; i++) {
      const before = got.bytes;
      c.write("req");
      await waitFor("an answer", () => got.bytes > before, 2000, 2);
    }
    c.write("a");
    c.write("b");
    await waitFor("answered", () => got.bytes >= 11 * ANSWER.length, 2000, 2); // the two may reach the member as one chunk
    await Bun.sleep(600); // twice the threshold: nothing may be suspected
    expect(suspects).toEqual([]);
    // The member hangs; the client asks twice (a put every 50 ms, say).
    silent = true;
    c.write("put1");
    await Bun.sleep(50);
    c.write("put2");
    const at = performance.now();
    await waitFor("a suspicion", () => suspects.length > 0, 3000, 5);
    const after = performance.now() - at;
    expect(suspects[0]!.member).toBe(port);
    expect(suspects[0]!.ms).toBeGreaterThanOrEqual(300);
    expect(after).toBeGreaterThanOrEqual(250); // not before the threshold (less the timer's slack)
    c.destroy();
  });

  test("one unanswered chunk (a trailing WINDOW_UPDATE after a reply, say) is never a suspicion", async () => {
    const { suspects, c } = await answeredThenSilent();
    c.write("window-update");
    await Bun.sleep(800);
    expect(suspects).toEqual([]);
    c.destroy();
  });
});

describe("health confirms or clears a suspicion with checks", () => {
  function setup(checks: (n: number) => CheckResult, overrides: Partial<HealthSettings> = {}) {
    let now = 0;
    const timers: { at: number; fn: () => void }[] = [];
    const starts: number[] = [];
    let n = 0;
    const w: HealthWorld = {
      after(ms, fn) {
        const t = { at: now + ms, fn };
        timers.push(t);
        return () => void timers.splice(timers.indexOf(t), 1);
      },
      random: () => 0.5,
      now: () => now,
      check: async () => {
        starts.push(now);
        return checks(n++);
      },
      probe: async () => null,
      forget() {},
    };
    const step = async () => {
      timers.sort((a, b) => a.at - b.at);
      const t = timers.shift();
      if (t === undefined) throw new Error("nothing scheduled");
      now = t.at;
      t.fn();
      await new Promise((r) => setImmediate(r));
    };
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ write: (l) => void lines.push(JSON.parse(l)) });
    const table = new MemberTable([parseEndpoint("127.0.0.1:2379")], log);
    const settings: HealthSettings = { check: "etcd", intervalMs: 2000, statusIntervalMs: 10_000, spareIntervalMs: 60_000, timeoutMs: 1000, rise: 2, fall: 3, retryDelayMs: 60_000, connectTimeoutMs: 1000, tls: null, clusterId: null, ...overrides };
    const health = new Health(table, () => settings, log, () => true, w);
    return { health, m: table.list[0]!, step, starts, lines, now: () => now, msgs: () => lines.map((l) => l.msg) };
  }
  const OK: CheckResult = { ok: true, reason: "version ok", alive: true };
  const HUNG: CheckResult = { ok: false, reason: 'Get "http://127.0.0.1:2379/version": context deadline exceeded (timeout 1s)', alive: false };

  test(`a hung member: --health-fall checks at once, ${CONFIRM_SPACING_MS} ms apart, none answers: down, counted confirmed`, async () => {
    const h = setup((n) => (n === 0 ? OK : HUNG));
    h.health.start();
    await h.step(); // the first check, at 1 s: up
    h.health.stallSuspected(h.m, 1000);
    for (let i = 0; i < 3; i++) await h.step();
    expect(h.starts.slice(1)).toEqual([1000, 1000 + CONFIRM_SPACING_MS, 1000 + 2 * CONFIRM_SPACING_MS]);
    expect(h.m.state).toBe("down");
    expect(h.m.reason).toContain("confirming a stall seen on client traffic");
    expect(h.m.suspicions).toEqual({ confirmed: 1, cleared: 0 });
    expect(h.msgs()).toEqual(["member suspected of a stall; checking it now", "deactivated endpoint"]);
  });

  test("a live member (the silence was a slow request): the checks pass, it stays up, counted cleared and logged", async () => {
    const h = setup(() => OK);
    h.health.start();
    await h.step();
    h.health.stallSuspected(h.m, 1200);
    for (let i = 0; i < 3; i++) await h.step();
    expect(h.m.state).toBe("up");
    expect(h.m.suspicions).toEqual({ confirmed: 0, cleared: 1 });
    expect(h.msgs()).toEqual(["member suspected of a stall; checking it now", "stall suspicion cleared: the member answers"]);
  });

  test("at most one burst per member per --health-interval, none while one runs, none for a member that is not up", async () => {
    const h = setup((n) => (n === 0 ? OK : HUNG), { fall: 3 });
    h.health.start();
    await h.step();
    h.health.stallSuspected(h.m, 1000);
    h.health.stallSuspected(h.m, 1000); // while confirming
    for (let i = 0; i < 3; i++) await h.step();
    expect(h.m.state).toBe("down");
    h.health.stallSuspected(h.m, 1000); // down: its backed-off schedule is left alone
    expect(h.starts).toHaveLength(4);
    const cleared = setup(() => OK);
    cleared.health.start();
    await cleared.step();
    cleared.health.stallSuspected(cleared.m, 1000);
    for (let i = 0; i < 3; i++) await cleared.step();
    cleared.health.stallSuspected(cleared.m, 1000); // within --health-interval of the last: ignored
    expect(cleared.starts).toHaveLength(4);
  });
});

describe("what counts as waiting on the member (src/datapath/conn.ts, ASK_BYTES)", () => {
  test("one chunk of a request's size (a sequential client's put) unanswered is enough; one control-frame-sized chunk is not", async () => {
    const { port, suspects, c } = await answeredThenSilent();
    c.write("x".repeat(17)); // a PING acknowledgement's size
    await Bun.sleep(700);
    expect(suspects).toEqual([]);
    c.write("y".repeat(59)); // a put's size: now the client waits
    await waitFor("a suspicion", () => suspects.length > 0, 3000, 5);
    expect(suspects[0]!.member).toBe(port);
    c.destroy();
  });
});

/**
 * What grpc-go (etcd's server) writes on receiving a request, before its answer: a WINDOW_UPDATE and
 * a PING, 30 bytes in one write; the client acknowledges the PING at once (17 bytes). A member
 * stopped between the two had looked answered (test/e2e/hung-member.test.ts, about 1 run in 20).
 */
const GRPC_ACK = "w".repeat(30);
const PING_ACK = "p".repeat(17);

/** A client through a Proxy in front of a member scripted by `reply`, that acknowledges every chunk it gets when `ack` says so. */
async function scriptedClient(reply: (chunk: Buffer) => string[], ack: () => boolean) {
  const port = await scripted(reply);
  const suspects: { member: number; ms: number }[] = [];
  const proxy = proxyFor(port, suspects);
  const c = await dial(proxy.port);
  const got = { bytes: 0 };
  c.on("data", (d: Buffer) => {
    got.bytes += d.length;
    if (ack()) c.write(PING_ACK);
  });
  return { port, suspects, c, got };
}

describe("what counts as the member's answer (src/datapath/dialer.ts, received)", () => {
  test("a member that acknowledges a request with a small chunk the client answers (grpc-go's WINDOW_UPDATE and PING) and then hangs is suspected", async () => {
    let hung = false;
    const { port, suspects, c, got } = await scriptedClient(
      (d) => (d.length === PING_ACK.length ? [] : hung ? [GRPC_ACK] : [GRPC_ACK, ANSWER]),
      () => true,
    );
    for (let i = 0; i < 5; i++) {
      const before = got.bytes;
      c.write("y".repeat(59)); // a put, acknowledged and answered
      await waitFor("an answer", () => got.bytes >= before + GRPC_ACK.length + ANSWER.length, 2000, 2);
    }
    await Bun.sleep(600); // twice the threshold: answered puts are never suspected
    expect(suspects).toEqual([]);
    hung = true;
    c.write("y".repeat(59)); // acknowledged, then the member stops
    await waitFor("a suspicion", () => suspects.length > 0, 3000, 5);
    expect(suspects[0]!.member).toBe(port);
    expect(suspects[0]!.ms).toBeGreaterThanOrEqual(300);
    c.destroy();
  });

  test("a small answer the client does not reply to still answers (a PING acknowledged: a Go client's flow control after a watch event)", async () => {
    const { suspects, c, got } = await scriptedClient((d) => (d.length === 43 ? [PING_ACK] : d.length === 17 ? [PING_ACK] : []), () => false);
    c.write("c".repeat(43)); // a grpc-go client's WINDOW_UPDATEs and PING after a watch event: counted as a request
    await waitFor("the member's PING acknowledgement", () => got.bytes >= PING_ACK.length, 2000, 2);
    await Bun.sleep(700); // more than twice the threshold
    expect(suspects).toEqual([]);
    c.write(PING_ACK); // later, a keep-alive PING of the client's own: answered again
    await waitFor("the member's second PING acknowledgement", () => got.bytes >= 2 * PING_ACK.length, 2000, 2);
    await Bun.sleep(700);
    expect(suspects).toEqual([]);
    c.destroy();
  });

  test("an answer in small pieces answers: the member's second chunk comes before the client says anything", async () => {
    const { suspects, c, got } = await scriptedClient((d) => (d.length === 59 ? [GRPC_ACK, GRPC_ACK] : []), () => false);
    c.write("y".repeat(59));
    await waitFor("both pieces", () => got.bytes >= 2 * GRPC_ACK.length, 2000, 2);
    await Bun.sleep(700);
    expect(suspects).toEqual([]);
    c.destroy();
  });
});
