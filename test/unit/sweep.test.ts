/**
 * The sweep (src/datapath/sweep.ts): one timer for every per-connection deadline. Driven in-process
 * with a host that records what the sweep asks of it and legs that carry only the fields it reads.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Conn, UpstreamLeg } from "../../src/datapath/conn.ts";
import { KEEPALIVE_AFTER_MS, STALL_SWEEP_MS, Sweep, type SweepHost } from "../../src/datapath/sweep.ts";
import { waitFor } from "../support/net.ts";

const sweeps: Sweep[] = [];
afterEach(() => {
  for (const s of sweeps.splice(0)) s.stop();
});

function sweepWith(events: string[], stallChecks = 0): Sweep {
  let left = stallChecks;
  const host: SweepHost = {
    idleTimeoutMs: 0,
    handshakeTimeoutMs: 10_000,
    timedOut: (leg) => void events.push(`timed out ${name(leg)}`),
    handshakeTimedOut: (_conn: Conn) => void events.push("handshake timed out"),
    keepAlive: (leg) => void events.push(`keepalive ${name(leg)} after ${Math.round(performance.now() - leg.connectedAt)} ms`),
    idleSweep: () => {},
    stallSweep: () => (events.push("stall check"), --left > 0),
  };
  const sweep = new Sweep(host);
  sweeps.push(sweep);
  return sweep;
}

const names = new WeakMap<object, string>();
const name = (leg: UpstreamLeg) => names.get(leg) ?? "?";
function leg(label: string, fields: Partial<UpstreamLeg> = {}): UpstreamLeg {
  const l = { connectedAt: performance.now(), startedAt: performance.now(), timeoutMs: 1000, ...fields } as UpstreamLeg;
  names.set(l, label);
  return l;
}

describe("keepalive on member legs", () => {
  test("a leg gets keepalive once it has lived KEEPALIVE_AFTER_MS, and one unwatched before (it closed) never does", async () => {
    const events: string[] = [];
    const sweep = sweepWith(events);
    const [long, short] = [leg("long"), leg("short")];
    sweep.keepAliveLater(long);
    sweep.keepAliveLater(short);
    await Bun.sleep(100);
    sweep.unwatch(short); // closed after 100 ms
    await waitFor("keepalive for the long-lived leg", () => events.length > 0, KEEPALIVE_AFTER_MS + 1000, 20);
    await Bun.sleep(300); // a further tick
    expect(events).toHaveLength(1);
    const ms = Number(/^keepalive long after (\d+) ms$/.exec(events[0]!)?.[1]);
    expect(ms).toBeGreaterThanOrEqual(KEEPALIVE_AFTER_MS);
    expect(ms).toBeLessThan(KEEPALIVE_AFTER_MS + 1000);
  });

  test("legs connected later wait their own second: keepalive follows connection order", async () => {
    const events: string[] = [];
    const sweep = sweepWith(events);
    sweep.keepAliveLater(leg("first"));
    await Bun.sleep(500);
    sweep.keepAliveLater(leg("second"));
    await waitFor("both", () => events.length === 2, 2 * KEEPALIVE_AFTER_MS + 1000, 20);
    expect(events.map((e) => e.split(" ")[1])).toEqual(["first", "second"]);
    for (const e of events) expect(Number(/after (\d+) ms/.exec(e)?.[1])).toBeGreaterThanOrEqual(KEEPALIVE_AFTER_MS);
  });
});

describe("dial timeouts", () => {
  test("a dial still in flight after its timeout is reported once; one unwatched in time is not", async () => {
    const events: string[] = [];
    const sweep = sweepWith(events);
    const [slow, quick] = [leg("slow", { timeoutMs: 100 }), leg("quick", { timeoutMs: 100 })];
    sweep.watch(slow);
    sweep.watch(quick);
    sweep.unwatch(quick); // connected
    await waitFor("the timeout", () => events.length > 0, 1000, 10);
    await Bun.sleep(100);
    expect(events).toEqual(["timed out slow"]);
  });
});

describe("silent-peer checks", () => {
  test("once asked, the check runs every STALL_SWEEP_MS until it reports no connection open; asked again, it starts again", async () => {
    const events: string[] = [];
    const sweep = sweepWith(events, 2);
    const t0 = performance.now();
    sweep.watchStalls();
    sweep.watchStalls(); // already running: no second schedule
    await waitFor("two checks", () => events.length === 2, 3 * STALL_SWEEP_MS, 20);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(2 * STALL_SWEEP_MS - 5);
    await Bun.sleep(STALL_SWEEP_MS + 200);
    expect(events).toEqual(["stall check", "stall check"]); // the second said nothing is open: stopped
    sweep.watchStalls();
    await waitFor("a third check", () => events.length === 3, 2 * STALL_SWEEP_MS, 20);
  });
});
