/**
 * `--workers N`: several processes share the listen port and agree on member state, so sticky stays
 * sticky across them and only the primary logs and probes.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "node:net";
import { startGatewayProcess as startGateway, stopAllGateways } from "../support/gateway.ts";
import { fdCount, freePort, sleep, waitFor } from "../support/net.ts";
import { closeServer as close, dial, echoOnPort as echoOn, roundTrip } from "../support/peers.ts";
import { alive } from "../support/process.ts";

/** These members are plain TCP peers, not etcd: no etcd health check (see health.test.ts for those). */
const startGatewayProcess = (args: string[], opts?: Parameters<typeof startGateway>[1]) => startGateway(["--health-check=none", ...args], opts);

afterEach(stopAllGateways);

/** Child processes of `pid` (the workers of a primary). */
function children(pid: number): number[] {
  const out = Bun.spawnSync(["pgrep", "-P", String(pid)]).stdout.toString().trim();
  return out === "" ? [] : out.split("\n").map(Number);
}

describe("--workers", () => {
  test("two processes accept on one port, and sticky sends every connection of both to one member, moving together on failure", async () => {
    const ports = [freePort(), freePort(), freePort()];
    const counts = [0, 0, 0];
    const servers = await Promise.all(ports.map((p, i) => echoOn(p, () => counts[i]!++)));
    const held: Socket[] = [];
    try {
      const gw = await startGatewayProcess([`--endpoints=${ports.map((p) => `127.0.0.1:${p}`).join(",")}`, "--workers=2", "--health-fall=1"]);
      const workers = children(gw.proc.pid);
      expect(workers).toHaveLength(1);
      const before = [gw.proc.pid, ...workers].map(fdCount);
      for (let i = 0; i < 40; i++) held.push(await dial(gw.port));
      await sleep(200);
      const after = [gw.proc.pid, ...workers].map(fdCount);
      // Both processes hold some of the 40 connections (the kernel spreads accepts over SO_REUSEPORT sockets).
      expect(after[0]! - before[0]!).toBeGreaterThan(0);
      expect(after[1]! - before[1]!).toBeGreaterThan(0);
      for (const s of held) s.destroy();
      for (let i = 0; i < 100; i++) expect(await roundTrip(gw.port, `a${i}`)).toBe(`a${i}`);
      expect(counts.filter((c) => c > 0)).toHaveLength(1);
      const used = counts.findIndex((c) => c > 0);
      await close(servers[used]!);
      counts.fill(0);
      for (let i = 0; i < 100; i++) expect(await roundTrip(gw.port, `b${i}`)).toBe(`b${i}`);
      expect(counts.filter((c) => c > 0)).toHaveLength(1);
      expect(counts[used]).toBe(0);
      await sleep(100);
      // Only the primary logs the transition, once.
      expect(gw.lines.filter((l) => l.includes("deactivated endpoint"))).toHaveLength(1);
    } finally {
      for (const s of held) s.destroy();
      await Promise.all(servers.map((s) => close(s).catch(() => {})));
    }
  });

  test("SIGTERM to the primary drains the workers too, and every process exits 0", async () => {
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--workers=3"]);
    const workers = children(gw.proc.pid);
    expect(workers).toHaveLength(2);
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    await waitFor("workers to exit", () => workers.every((p) => !alive(p)), 5000);
  });

  test("workers exit when the primary dies", async () => {
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--workers=2", "--drain-timeout=1s"]);
    const workers = children(gw.proc.pid);
    gw.proc.kill("SIGKILL");
    await gw.proc.exited;
    await waitFor("workers to exit", () => workers.every((p) => !alive(p)), 5000);
  });

  test("a worker that dies is started again", async () => {
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--workers=2"]);
    const [worker] = children(gw.proc.pid);
    process.kill(worker!, "SIGKILL");
    await gw.waitForLog("worker exited; starting it again");
    const replacement = await waitFor("a new worker", () => children(gw.proc.pid).find((p) => p !== worker), 5000);
    expect(alive(replacement)).toBe(true);
  });

  test("a worker that dies before it is ready is replaced, and the primary still becomes ready", async () => {
    // Found in 514d668: the replacement's "ready" was not counted, so the primary never logged
    // ready, never served --admin-addr and never sent READY=1.
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--workers=2"], { waitReady: false });
    // The worker is killed within milliseconds of being spawned: long before it can listen.
    const first = await waitFor("the first worker", () => children(gw.proc.pid)[0], 5000, 2);
    process.kill(first, "SIGKILL");
    await gw.waitForLog("worker exited; starting it again");
    await gw.waitForLog("ready to proxy client requests", 10_000);
    expect(gw.lines.filter((l) => l.includes("ready to proxy client requests"))).toHaveLength(1);
  });
});

test("with --workers, /status and /metrics count the connections of every process", async () => {
  const port = freePort();
  const server = await echoOn(port);
  try {
    const admin = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`, "--workers=2", `--admin-addr=127.0.0.1:${admin}`]);
    for (let i = 0; i < 40; i++) expect(await roundTrip(gw.port, "0123456789")).toBe("0123456789");
    const status = (await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { listener: { accepted: number }; members: { connectionsTotal: number }[] };
    // Found in 514d668: /status counted only the primary's share while /metrics summed all.
    expect(status.listener.accepted).toBe(40);
    expect(status.members[0]!.connectionsTotal).toBe(40);
  } finally {
    await close(server);
  }
});

test("with --workers, /metrics sums the data-path counters of every process", async () => {
  const port = freePort();
  const server = await echoOn(port);
  try {
    const admin = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`, "--workers=2", `--admin-addr=127.0.0.1:${admin}`]);
    for (let i = 0; i < 40; i++) expect(await roundTrip(gw.port, "0123456789")).toBe("0123456789");
    const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    expect(text).toContain("etcd_gateway_listener_accepted_total 40\n");
    expect(text).toContain(`etcd_gateway_member_connections_total{endpoint="127.0.0.1:${port}"} 40\n`);
    expect(text).toContain(`etcd_gateway_member_sent_bytes_total{endpoint="127.0.0.1:${port}"} 400\n`);
  } finally {
    await close(server);
  }
});
