/**
 * Fault matrix, mid-stream rows: the connection is paired and bytes flow when the fault hits.
 * Each row asserts its promise, SHA-256 of what arrived against what was sent, and the gateway's
 * fds back at their warm-up baseline. Matrix overview: test/faults/harness.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { startCluster, type Cluster } from "../support/cluster.ts";
import { viaGateway } from "../support/etcd.ts";
import { closeAllFaultProxies, startFaultProxy, type Direction } from "../support/faultproxy.ts";
import { stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { waitFor } from "../support/net.ts";
import { dial, echoServer, readAll, roundTrip, type Listening } from "../support/peers.ts";
import { accessRecords, exchange, exchangeMember, fdBaseline, fdsBack, member, MiB, payload, sampleRss, sha256, startGateway, writeAll, type Payload, type Received } from "./harness.ts";

setDefaultTimeout(60_000);
const members: Listening[] = [];
// Two random streams, made once for the whole file (random bytes at this size take a while on a busy machine).
let A: Payload;
let B: Payload;
beforeAll(() => {
  A = payload(64 * MiB);
  B = payload(64 * MiB);
});
const keep = <T extends Listening>(l: T): T => (members.push(l), l);
afterEach(async () => {
  await stopAllGateways();
  closeAllFaultProxies();
  await Promise.all(members.splice(0).map((m) => m.close()));
});

/** Waits for the access-log record of a closed connection with this termination code. */
const terminated = (gw: GatewayProcess, code: string) =>
  waitFor(`an access-log record with termination ${code}`, () => accessRecords(gw).find((r) => r.termination === code), 3000);

/** Warm-up for members that send first: connect, take the first bytes, hang up. */
async function touch(port: number): Promise<void> {
  const s = await dial(port);
  await new Promise((resolve) => s.once("data", resolve).once("end", resolve).once("error", resolve));
  s.destroy();
}

/** A member that sends the first `bytes` of A on every connection, behind a fault proxy (passing for now), behind a gateway with an access log. */
async function senderBehindProxy(bytes: number) {
  const m = keep(await exchangeMember(A.buf.subarray(0, bytes)));
  const proxy = startFaultProxy(m.port);
  const gw = await startGateway([`--endpoints=127.0.0.1:${proxy.port}`, "--access-log=stderr"]);
  const baseline = await fdBaseline(gw, () => touch(gw.port));
  return { proxy, gw, baseline };
}

/** A member that reads to EOF (or reset), then closes its side; `seen` gets what each connection received. */
async function sinkMember(seen: Promise<Received>[]): Promise<Listening> {
  return await member((s) => {
    const r = readAll(s);
    seen.push(r);
    void r.then(() => s.end());
  });
}

describe("a member that stalls mid-stream", () => {
  // The fault proxy's blackhole stops reading and writing but its kernel still ACKs (and answers
  // keepalive probes), so TCP keepalive cannot see it: only --idle-timeout can. A true blackhole,
  // where packets vanish and keepalive is what ends the connection, is in keepalive.test.ts.
  test("with --idle-timeout the gateway closes both sides within the timeout after the last byte; what arrived is a byte-exact prefix", async () => {
    const echo = keep(await echoServer());
    const proxy = startFaultProxy(echo.port);
    const gw = await startGateway([`--endpoints=127.0.0.1:${proxy.port}`, "--idle-timeout=1s", "--access-log=stderr"]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    const data = A;
    const x = exchange(await dial(gw.port), data.buf.subarray(0, 32 * MiB));
    await waitFor("the echo to flow", () => proxy.stats.down >= 2 * MiB);
    proxy.set({ kind: "blackhole" });
    const t0 = performance.now();
    const got = await x.received;
    const took = performance.now() - t0;
    console.log(`stall: closed ${took.toFixed(0)} ms after the blackhole, ${(got.bytes / MiB).toFixed(1)} MiB echoed`);
    // Bytes keep moving for a moment after the blackhole (kernel buffers fill), then 1 s of silence,
    // noticed by a sweep every 250 ms: within 1 s + 3 s of slack on a loaded machine.
    expect(took).toBeGreaterThan(900);
    expect(took).toBeLessThan(4000);
    expect(got.bytes).toBeLessThan(32 * MiB);
    expect(got.hash).toBe(data.prefix(got.bytes));
    await terminated(gw, "idle-timeout");
    await fdsBack(gw, baseline);
  });
});

describe("resets mid-stream", () => {
  /** The receiving end saw a reset after at most the 1 MiB let through, a byte-exact prefix; the gateway logged who reset and released both legs. */
  async function expectResetAfterPrefix(got: Received, sent: Payload, o: { gw: GatewayProcess; termination: string; baseline: number }) {
    expect(got.error).toBe("ECONNRESET");
    expect(got.bytes).toBeLessThanOrEqual(MiB);
    expect(got.hash).toBe(sent.prefix(got.bytes));
    await terminated(o.gw, o.termination);
    await fdsBack(o.gw, o.baseline);
  }

  test("a member that resets after 1 MiB: the client gets a reset, after a byte-exact prefix of what the member sent", async () => {
    const { proxy, gw, baseline } = await senderBehindProxy(8 * MiB);
    const data = A;
    proxy.set({ kind: "reset-after", bytes: MiB, direction: "down" });
    const s = await dial(gw.port);
    const got = await readAll(s);
    s.destroy();
    await expectResetAfterPrefix(got, data, { gw, termination: "member-reset", baseline });
  });

  test("a client that resets after 1 MiB: the member gets a reset, after a byte-exact prefix of what the client sent", async () => {
    const seen: Promise<Received>[] = [];
    const sink = keep(await sinkMember(seen));
    const gw = await startGateway([`--endpoints=127.0.0.1:${sink.port}`, "--access-log=stderr"]);
    const baseline = await fdBaseline(gw, async () => {
      const s = await dial(gw.port);
      s.end("warm");
      await readAll(s);
    });
    // The fault proxy plays the client: it resets its connection to the gateway after 1 MiB.
    const client = startFaultProxy(gw.port, { fault: { kind: "reset-after", bytes: MiB, direction: "up" } });
    const data = B;
    const s = await dial(client.port);
    s.on("error", () => {});
    void writeAll(s, data.buf.subarray(0, 8 * MiB)).catch(() => {});
    await waitFor("the member's connection", () => seen[1]);
    const got = await seen[1]!;
    s.destroy();
    await expectResetAfterPrefix(got, data, { gw, termination: "client-reset", baseline });
  });
});

describe("half-close while the other direction keeps flowing", () => {
  // 64 MiB each way at once; the side that does not close first holds its last 16 MiB until it has
  // seen the other side's FIN, so those bytes provably cross after the half-close.
  const cases = [
    { closesFirst: "client", clientHold: 0, memberHold: 16 * MiB },
    { closesFirst: "member", clientHold: 16 * MiB, memberHold: 0 },
  ] as const;
  for (const c of cases) {
    test(`the ${c.closesFirst} sends 64 MiB and FIN first; 64 MiB still flow the other way; both byte-exact`, async () => {
      const [fromMember, fromClient] = [A, B];
      const m = keep(await exchangeMember(fromMember.buf, c.memberHold));
      const gw = await startGateway([`--endpoints=127.0.0.1:${m.port}`, "--access-log=stderr"]);
      const baseline = await fdBaseline(gw, () => touch(gw.port));
      const x = exchange(await dial(gw.port), fromClient.buf, c.clientHold);
      const [atClient] = await Promise.all([x.received, x.sent]);
      await waitFor("the member's session", () => m.sessions[1]);
      const session = m.sessions[1]!;
      const [atMember] = await Promise.all([session.received, session.sent]);
      expect(atClient).toEqual({ hash: fromMember.hash, bytes: 64 * MiB });
      expect(atMember).toEqual({ hash: fromClient.hash, bytes: 64 * MiB });
      await terminated(gw, `${c.closesFirst}-close`);
      await fdsBack(gw, baseline);
    });
  }
});

describe("slow readers and slow writers", () => {
  // The fault proxy throttles one direction at one end to 1 MiB per 20 ms (~50 MiB/s), and 64 MiB
  // flow that way (256 KiB the other way at the same time). Facing a slow reader, a gateway that
  // buffered instead of applying backpressure would take in most of the 64 MiB within a fraction of
  // a second, and its RSS would show it; with backpressure it holds about one read per direction
  // (RSS still moves by 10-15 MiB: Bun hands out a fresh buffer per read and collects them lazily).
  const BIG = 64 * MiB;
  const SMALL = 256 * 1024;
  const cases: { who: string; end: "client" | "member"; direction: Direction }[] = [
    { who: "a slow reader at the client end", end: "client", direction: "down" },
    { who: "a slow writer at the client end", end: "client", direction: "up" },
    { who: "a slow reader at the member end", end: "member", direction: "up" },
    { who: "a slow writer at the member end", end: "member", direction: "down" },
  ];
  for (const c of cases) {
    test(`${c.who}: nothing lost, the gateway's memory stays bounded`, async () => {
      const [up, down] = c.direction === "up" ? [BIG, SMALL] : [SMALL, BIG];
      const m = keep(await exchangeMember(A.buf.subarray(0, down)));
      const memberProxy = startFaultProxy(m.port);
      const gw = await startGateway([`--endpoints=127.0.0.1:${memberProxy.port}`]);
      const clientProxy = startFaultProxy(gw.port);
      const baseline = await fdBaseline(gw, () => touch(clientProxy.port));
      (c.end === "client" ? clientProxy : memberProxy).set({ kind: "slow", bytesPerTick: MiB, tickMs: 20, direction: c.direction });
      const rss = sampleRss(gw.proc.pid);
      const t0 = performance.now();
      const x = exchange(await dial(clientProxy.port), B.buf.subarray(0, up));
      const [atClient] = await Promise.all([x.received, x.sent]);
      const session = m.sessions[1]!;
      const [atMember] = await Promise.all([session.received, session.sent]);
      const { baselineKiB, peakKiB } = rss.stop();
      const growthMiB = (peakKiB - baselineKiB) / 1024;
      console.log(`${c.who}: ${((performance.now() - t0) / 1000).toFixed(2)} s, gateway RSS ${baselineKiB} -> peak ${peakKiB} KiB (+${growthMiB.toFixed(1)} MiB)`);
      expect(atClient).toEqual({ hash: A.prefix(down), bytes: down });
      expect(atMember).toEqual({ hash: B.prefix(up), bytes: up });
      expect(growthMiB).toBeLessThan(BIG / MiB / 2);
      await fdsBack(gw, baseline);
    });
  }
});

describe("1-byte fragments", () => {
  test("every byte in its own write on both legs, both ways: the echo is byte-exact", async () => {
    const echo = keep(await echoServer());
    const memberProxy = startFaultProxy(echo.port, { fault: { kind: "fragment" } });
    const gw = await startGateway([`--endpoints=127.0.0.1:${memberProxy.port}`]);
    const clientProxy = startFaultProxy(gw.port, { fault: { kind: "fragment" } });
    const baseline = await fdBaseline(gw, () => roundTrip(clientProxy.port, "warm"));
    const data = payload(16 * 1024);
    const x = exchange(await dial(clientProxy.port), data.buf);
    const [got] = await Promise.all([x.received, x.sent]);
    expect(got).toEqual({ hash: data.hash, bytes: data.buf.length });
    await fdsBack(gw, baseline);
  });

  describe("in front of a real etcd member", () => {
    let cluster: Cluster;
    beforeAll(async () => {
      cluster = await startCluster({ size: 1 });
    }, 30_000);
    afterAll(async () => {
      await cluster?.stop();
    });

    test("etcdctl put and get through 1-byte fragments (gRPC over HTTP/2) round-trip a random value byte-exact", async () => {
      const proxy = startFaultProxy(cluster.members[0]!.clientPort, { fault: { kind: "fragment" } });
      const gw = await startGateway([`--endpoints=127.0.0.1:${proxy.port}`]);
      const baseline = await fdBaseline(gw, () => viaGateway(gw, ["endpoint", "health"]));
      const value = randomBytes(1536).toString("hex");
      const put = await viaGateway(gw, ["put", "faults/fragment", value]);
      expect(put.stdout.trim(), put.stderr).toBe("OK");
      const get = await viaGateway(gw, ["get", "faults/fragment", "--print-value-only"]);
      expect(sha256(Buffer.from(get.stdout.trim()))).toBe(sha256(Buffer.from(value)));
      await fdsBack(gw, baseline);
    });
  });
});

describe("data cut after N bytes", () => {
  test("a member connection cut cleanly after 1,000,003 bytes: the client gets exactly those bytes, then EOF", async () => {
    const N = 1_000_003;
    const { proxy, gw, baseline } = await senderBehindProxy(4 * MiB);
    const data = A;
    proxy.set({ kind: "cut-after", bytes: N, direction: "down" });
    const s: Socket = await dial(gw.port);
    const got = await readAll(s);
    expect(got).toEqual({ hash: data.prefix(N), bytes: N });
    s.end();
    await terminated(gw, "member-close");
    await fdsBack(gw, baseline);
  });
});
