/**
 * Fault matrix, rows where the member fails before (or instead of) its first byte: refused, SYN
 * blackhole, closed right after accept, accepted and silent, and DNS going away under discovery.
 * Each row asserts its promise, SHA-256 of what arrived against what was sent, and the gateway's
 * fds back at their warm-up baseline. Matrix overview: test/faults/harness.ts.
 *
 * `test.failing` marks a promise the gateway does not keep yet (a known bug, described at the
 * test): it passes while the bug is there and fails once it is fixed, to be turned into a plain test.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBlackhole } from "../support/blackhole.ts";
import { startFakeDns } from "../support/dns.ts";
import { closeAllFaultProxies, startFaultProxy, type FaultProxy } from "../support/faultproxy.ts";
import { stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { fdCount, freePort, sleep, waitFor } from "../support/net.ts";
import { dial, echoServer, readAll, roundTrip } from "../support/peers.ts";
import { echoRequest, fdBaseline, fdsBack, metric, MiB, payload, startGateway, tcpSockets, writeAll, type Payload, type Received } from "./harness.ts";

setDefaultTimeout(60_000);
const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-dial-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cleanups: (() => unknown)[] = [];
const keep = <T extends { close(): unknown }>(l: T): T => (cleanups.push(() => l.close()), l);
afterEach(async () => {
  await stopAllGateways();
  closeAllFaultProxies();
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

let data: Payload;
beforeAll(() => {
  data = payload(8 * MiB);
});

/** One request and its echo through the gateway (the first `bytes` of `data`). */
const echoed = (port: number, bytes = 256 * 1024) => echoRequest(port, data.buf.subarray(0, bytes));
const exact = (bytes = 256 * 1024) => ({ hash: data.prefix(bytes), bytes });

/** A gateway in front of `endpoints` (in this order, `--policy=ordered`) with an admin endpoint. */
async function orderedGateway(endpoints: number[], more: string[] = []): Promise<{ gw: GatewayProcess; admin: number }> {
  const admin = freePort();
  const gw = await startGateway([`--endpoints=${endpoints.map((p) => `127.0.0.1:${p}`).join(",")}`, "--policy=ordered", `--admin-addr=127.0.0.1:${admin}`, ...more]);
  return { gw, admin };
}
const failures = (admin: number, proxy: { port: number }, reason: string) => metric(admin, "member_connect_failures_total", { endpoint: `127.0.0.1:${proxy.port}`, reason });

describe("connection refused", () => {
  test("a member that stops listening: every client is served by the next member and never sees the failure", async () => {
    const echo = keep(await echoServer());
    const [first, second] = [startFaultProxy(echo.port), startFaultProxy(echo.port)];
    const { gw, admin } = await orderedGateway([first.port, second.port]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    first.set({ kind: "refuse" });
    for (let i = 0; i < 8; i++) expect(await echoed(gw.port)).toEqual(exact());
    expect([first.stats.accepted, second.stats.accepted]).toEqual([1, 8]);
    // --health-fall (3) refused dials eject it; every later client goes straight to the second.
    expect(await failures(admin, first, "refused")).toBe(3);
    expect(await gw.waitForLog("deactivated endpoint")).toMatchObject({ address: `127.0.0.1:${first.port}`, to: "ejected" });
    await fdsBack(gw, baseline);
  });
});

describe("SYN blackhole", () => {
  /** SYN-SENT sockets of the gateway towards `port`: dials it gave up on that the kernel still retries. */
  const abandonedDials = (gw: GatewayProcess, port: number) =>
    tcpSockets(`( dport = :${port} )`, true).filter((s) => s.state === "SYN-SENT" && s.process.includes(`pid=${gw.proc.pid},`)).length;

  async function setUp() {
    const echo = keep(await echoServer());
    const blackhole = keep(await startBlackhole());
    const { gw, admin } = await orderedGateway([blackhole.port, echo.port], ["--connect-timeout=500ms"]);
    // The warm-up itself goes through the blackhole first (ordered): count the dial it leaves behind apart.
    let warmUpMs = 0;
    const warmUp = async () => {
      const t0 = performance.now();
      await roundTrip(gw.port, "warm");
      warmUpMs = performance.now() - t0;
    };
    const baseline = (await fdBaseline(gw, warmUp)) - abandonedDials(gw, blackhole.port);
    return { gw, admin, blackhole, baseline, warmUpMs };
  }

  test("a member that never answers SYNs: each client is served by the next member within --connect-timeout (500 ms) plus slack", async () => {
    const { gw, admin, blackhole, baseline, warmUpMs } = await setUp();
    expect(warmUpMs).toBeGreaterThan(450); // the blackhole was really tried first
    const took: number[] = [];
    for (let i = 0; i < 4; i++) {
      const t0 = performance.now();
      expect(await echoed(gw.port)).toEqual(exact());
      took.push(Math.round(performance.now() - t0));
    }
    console.log(`SYN blackhole: warm-up ${warmUpMs.toFixed(0)} ms, then ${took.join(", ")} ms`);
    for (const ms of took) expect(ms).toBeLessThan(500 + 2000);
    // The warm-up and the first two clients each waited out one dial, then the member was ejected.
    expect(await failures(admin, blackhole, "timeout")).toBe(3);
    // Everything but the abandoned dials is released (those are the bug in the next test).
    await fdsBack(gw, baseline, 5000, () => abandonedDials(gw, blackhole.port));
  });

  // Found in issue 20: with every member blackholed, each client left one abandoned dial holding a
  // descriptor for ~127 s; 20 connections/s filled a 1,024-descriptor gateway in ~20 s, and the
  // connection cap did not count them. Now what they hold is bounded (a quarter of the descriptors
  // the limit leaves for connections) and counted in the cap: past it, a member with dials still
  // connecting is skipped until one of them ends.
  test("under ulimit -n 256 a burst of clients to a blackholed member cannot drive the gateway out of descriptors; a member added afterwards serves at once", async () => {
    const LIMIT = 256;
    const echo = keep(await echoServer());
    const blackhole = keep(await startBlackhole());
    const cfg = join(dir, "blackholed.yaml");
    writeFileSync(cfg, `endpoints: ${blackhole.address}\n`);
    const gw = await startGateway([`--config=${cfg}`, "--policy=ordered", "--connect-timeout=200ms"], {
      wrap: (cmd) => ["sh", "-c", `ulimit -n ${LIMIT} && exec "$@"`, "--", ...cmd],
    });
    let peak = 0;
    const sampler = setInterval(() => {
      if (gw.running()) peak = Math.max(peak, fdCount(gw.proc.pid));
    }, 10);
    // 300 clients (each would leave a dial behind), 5 every 20 ms; each waits for the gateway's reset.
    const clients: Socket[] = [];
    const closed: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) {
      const s = netConnect(gw.port, "127.0.0.1");
      s.on("error", () => {});
      closed.push(new Promise((r) => s.once("close", r)));
      clients.push(s);
      if (i % 5 === 4) await sleep(20);
    }
    await Promise.race([Promise.all(closed), sleep(20_000)]);
    for (const s of clients) s.destroy();
    clearInterval(sampler);
    console.log(`SYN blackhole under ulimit -n ${LIMIT}: peak ${peak} descriptors`);
    expect(peak).toBeLessThan(LIMIT);
    expect(gw.running()).toBe(true);
    await gw.waitForLog("holding back dials to a member whose abandoned dials are still connecting", 1000);
    // A healthy member added by a reload is used at once, though the blackholed one still holds dials.
    writeFileSync(cfg, `endpoints: ${blackhole.address},127.0.0.1:${echo.port}\n`);
    gw.proc.kill("SIGHUP");
    await gw.waitForLog("config reloaded");
    expect(await Promise.race([echoed(gw.port), sleep(5000).then(() => "not served within 5 s")])).toEqual(exact());
  });

  // Bug: a dial abandoned after --connect-timeout keeps its socket (SYN-SENT) until the kernel gives
  // up, about 127 s later (tcp_syn_retries=6): Bun.connect cannot be cancelled and the gateway only
  // closes the socket if it ever opens. A burst of clients while a member is blackholed holds one fd
  // per dial for two minutes (bounded and counted in the connection cap since issue 20, test above).
  test.failing("bug: the socket of a dial abandoned after --connect-timeout is released, not left to the kernel's SYN retries", async () => {
    const { gw, baseline } = await setUp();
    expect(await echoed(gw.port)).toEqual(exact());
    await fdsBack(gw, baseline, 3000);
  });
});

describe("a member that closes right after accepting", () => {
  /**
   * A client that says nothing until it has waited `quietMs` (as protocols where the server speaks
   * first do): the connection either ends meanwhile ("closed"), or the request is echoed.
   */
  async function quietThenEcho(port: number, quietMs = 300): Promise<Received | "closed"> {
    const s = await dial(port);
    const ended = await new Promise<boolean>((resolve) => {
      s.once("end", () => resolve(true)).once("close", () => resolve(true)).on("error", () => {});
      setTimeout(() => resolve(false), quietMs);
    });
    if (ended) {
      s.destroy();
      return "closed";
    }
    s.removeAllListeners("end").removeAllListeners("close");
    const received = readAll(s);
    await writeAll(s, data.buf.subarray(0, 256 * 1024));
    s.end();
    return await received;
  }

  test("before a client said anything: counted as a failed dial, ejected after --health-fall of them, and later clients go to the next member", async () => {
    const echo = keep(await echoServer());
    const [closing, healthy] = [startFaultProxy(echo.port), startFaultProxy(echo.port)];
    const { gw, admin } = await orderedGateway([closing.port, healthy.port]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    closing.set({ kind: "close-on-accept" });
    const results: (Received | "closed")[] = [];
    for (let i = 0; i < 6; i++) results.push(await quietThenEcho(gw.port));
    expect(await failures(admin, closing, "reset")).toBe(3);
    const ejected = await gw.waitForLog("deactivated endpoint");
    expect(ejected).toMatchObject({ address: `127.0.0.1:${closing.port}`, to: "ejected" });
    expect(String(ejected.error)).toMatch(/right after connect/);
    expect(results).toEqual(["closed", "closed", "closed", exact(), exact(), exact()]);
    expect(closing.stats.accepted).toBe(1 + 3);
    expect(healthy.stats.accepted).toBe(3);
    await fdsBack(gw, baseline);
  });

  test("after a client's bytes: not held against it (etcd closes a connection that sends garbage, and a client must not be able to eject a member)", async () => {
    const echo = keep(await echoServer());
    const closing = startFaultProxy(echo.port);
    const { gw, admin } = await orderedGateway([closing.port], ["--health-check=none"]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    // The member closes each connection once the client's first byte reaches it, before answering:
    // its close is an answer to the client, so it is no evidence against it.
    closing.set({ kind: "cut-after", bytes: 1, direction: "up" });
    for (let i = 0; i < 6; i++) {
      const s = await dial(gw.port);
      s.on("error", () => {});
      s.write(data.buf.subarray(0, 4096));
      await new Promise((r) => s.once("end", r).once("close", r));
      s.destroy();
    }
    expect(closing.stats.accepted).toBe(1 + 6);
    expect(await failures(admin, closing, "reset")).toBe(0);
    expect(gw.lines.filter((l) => l.includes("deactivated endpoint"))).toEqual([]);
    await fdsBack(gw, baseline);
  });
});

describe("a member that accepts and never speaks", () => {
  test("the client's bytes reach it, nothing times out, the connection lasts until the client leaves, and fds come back", async () => {
    const echo = keep(await echoServer());
    const silent = startFaultProxy(echo.port);
    const { gw, admin } = await orderedGateway([silent.port], ["--connect-timeout=300ms"]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    silent.set({ kind: "accept-and-silence" });
    const sent = data.buf.subarray(0, 64 * 1024);
    // A member that never reads cannot hash what it got: its kernel's receive queue shows the count.
    const atMember = (state: string, queued: number) =>
      waitFor(`${queued} bytes queued at the member in ${state}`, () => tcpSockets(`( sport = :${silent.port} )`).find((s) => s.state === state && s.recvQ === queued), 3000);
    const open = async (): Promise<Socket> => {
      const s = await dial(gw.port);
      s.on("error", () => {});
      s.write(sent);
      await atMember("ESTAB", sent.length);
      return s;
    };

    // A client that gives up with a reset: the gateway resets the member leg, both fds go.
    const first = await open();
    await sleep(1000); // three connect timeouts: a member that accepted and says nothing is not a failed dial
    expect(first.destroyed).toBe(false);
    expect(await failures(admin, silent, "reset")).toBe(0);
    expect(gw.lines.some((l) => l.includes("deactivated endpoint"))).toBe(false);
    first.resetAndDestroy();
    await fdsBack(gw, baseline);
    await waitFor("the member's socket reset", () => !tcpSockets(`( sport = :${silent.port} )`).some((s) => s.state === "ESTAB"), 3000);

    // A client that closes with FIN: the FIN reaches the member (CLOSE-WAIT, the FIN counted in the
    // queue), and, as half-close requires, the gateway waits for the member's answer; it releases
    // both legs when the member finally goes. (Gap: without --idle-timeout nothing bounds that wait.)
    const second = await open();
    second.end();
    await atMember("CLOSE-WAIT", sent.length + 1);
    await sleep(300);
    expect(fdCount(gw.proc.pid)).toBeGreaterThan(baseline);
    silent.close();
    await fdsBack(gw, baseline);
    second.destroy();
  });
});

describe("DNS failures under SRV discovery", () => {
  test("the DNS server stops answering: the last good endpoints stay, an open transfer and new connections are byte-exact", async () => {
    const echo = keep(await echoServer());
    const members: FaultProxy[] = [startFaultProxy(echo.port), startFaultProxy(echo.port)];
    let answering = true;
    const dns = keep(
      await startFakeDns((q) => {
        if (!answering) return { drop: true };
        if (q.type === "A") return { answers: [{ type: "A", ttl: 1, address: "127.0.0.1" }] };
        if (q.name.startsWith("_etcd-client-ssl")) return { rcode: "NXDOMAIN" };
        return { answers: members.map((m, i) => ({ type: "SRV" as const, ttl: 1, priority: 0, weight: 1, port: m.port, target: `m${i}.faults.test` })) };
      }),
    );
    const admin = freePort();
    const gw = await startGateway(["--discovery-srv=faults.test", "--insecure-discovery", `--dns-server=${dns.server}`, "--discovery-refresh-min=1s", "--policy=round-robin", `--admin-addr=127.0.0.1:${admin}`]);
    const baseline = await fdBaseline(gw, () => roundTrip(gw.port, "warm"));
    const accepted = members.map((m) => m.stats.accepted);
    // A transfer that spans the outage: half before, half after the failed refresh.
    const s = await dial(gw.port);
    const received = readAll(s);
    await writeAll(s, data.buf.subarray(0, 4 * MiB));

    answering = false;
    await gw.waitForLog("DNS SRV refresh failed; keeping the last good endpoints", 15_000);
    for (let i = 0; i < 6; i++) expect(await echoed(gw.port)).toEqual(exact());
    // Targets were resolved while DNS answered and are dialled by IP: both members still get clients
    // (round-robin: the transfer on one, then three each).
    expect(members.map((m, i) => m.stats.accepted - accepted[i]!).sort()).toEqual([3, 4]);
    await writeAll(s, data.buf.subarray(4 * MiB));
    s.end();
    expect(await received).toEqual({ hash: data.hash, bytes: data.buf.length });
    expect(await metric(admin, "discovery_failures_total")).toBeGreaterThanOrEqual(1);
    await fdsBack(gw, baseline);
  });
});
