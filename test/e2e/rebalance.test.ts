/**
 * Issue 22, item 2: `--rebalance-interval` moves open connections to where new ones go, with real
 * etcd and real clients nobody here wrote (the `etcd3` Node client with a watch, a lease of TTL 5 s
 * and a put every 50 ms; `etcdctl watch`; `etcdctl lease keep-alive`). The clients connect while
 * the member sticky ranks first is drained, so they land on another; once it is ready again, their
 * open connections must move to it, one at a time, without a watch event lost or repeated and
 * without a lease lost. Without the flag they stay where they are (the default).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import type { Cluster } from "../support/cluster.ts";
import { memberBehind, useSharedCluster, viaGateway } from "../support/etcd.ts";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { closeServer, dial, echoOnPort, roundTrip } from "../support/peers.ts";
import { track, which } from "../support/process.ts";

const shared = useSharedCluster();
const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-rebalance-"));
const children: { kill(): void }[] = [];
const stopChildren = () => {
  for (const c of children.splice(0)) c.kill();
};
afterEach(stopChildren);
afterEach(stopAllGateways);
afterAll(() => {
  stopChildren();
  rmSync(dir, { recursive: true, force: true });
});

const ctlEnv = { ...process.env, ETCDCTL_API: "3" };

/** An etcdctl that runs until killed, its stdout collected. */
function etcdctlRunning(args: string[]): { out: () => string } {
  const proc = track(Bun.spawn([which("etcdctl"), ...args], { stdout: "pipe", stderr: "ignore", env: ctlEnv }));
  children.push({ kill: () => proc.kill("SIGKILL") });
  let text = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stdout) text += dec.decode(chunk);
  })();
  return { out: () => text };
}

/** The etcd3 client: a watch of `rb/`, a lease of TTL 5 s kept alive, a put of 0, 1, 2, … every 50 ms. */
async function etcd3Client(gw: GatewayProcess) {
  const c = new Etcd3({ hosts: `http://${gw.listen}`, dialTimeout: 3000, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  let lost = false;
  const lease = c.lease(5);
  lease.on("lost", () => (lost = true));
  await lease.grant();
  const seen: number[] = [];
  const watcher = await c.watch().prefix("rb/").create();
  watcher.on("put", (kv) => void seen.push(Number(kv.value.toString())));
  const acked: number[] = [];
  const failures = new Map<string, number>();
  let next = 0;
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const n = next++;
      try {
        await c.put(`rb/${n % 10}`).value(String(n)).exec();
        acked.push(n);
      } catch (e) {
        const kind = (e as Error).constructor.name;
        failures.set(kind, (failures.get(kind) ?? 0) + 1);
      }
      await sleep(50);
    }
  })();
  return {
    lost: () => lost,
    acked,
    seen,
    failures,
    async end() {
      stop = true;
      await loop;
      await sleep(1000); // the last events arrive
      await watcher.cancel().catch(() => {});
      await lease.revoke().catch(() => {});
      c.close();
    },
  };
}

/**
 * Each acknowledged put from the watch's first event on seen exactly once, in order (a put that
 * failed may or may not have been applied); the watch began before the connections moved.
 */
function expectEveryEventOnce(seen: readonly number[], acked: readonly number[], movedFrom: number, who: string): void {
  expect(seen[0], `${who}: the watch was open before the move`).toBeLessThan(movedFrom);
  expect(new Set(seen).size, `${who}: a repeated event`).toBe(seen.length);
  for (let i = 1; i < seen.length; i++) expect(seen[i]!, `${who}: events out of order`).toBeGreaterThan(seen[i - 1]!);
  const got = new Set(seen);
  const missing = acked.filter((n) => n >= seen[0]! && !got.has(n));
  expect(missing, `${who}: acknowledged puts whose event never came`).toEqual([]);
}

/** The values of `etcdctl watch --prefix` output (PUT / key / value lines). */
function etcdctlValues(out: string): number[] {
  const lines = out.split("\n");
  const values: number[] = [];
  for (let i = 0; i + 2 < lines.length; i++) if (lines[i] === "PUT" && lines[i + 1]!.startsWith("rb/")) values.push(Number(lines[i + 2]));
  return values;
}

/** Open proxied connections per member endpoint, from /status. */
async function connectionsByMember(gw: GatewayProcess): Promise<Map<string, number>> {
  const res = await fetch(`${gw.adminURL}/status`, { signal: AbortSignal.timeout(2000) });
  const body = (await res.json()) as { members: { endpoint: string; connections: number }[] };
  return new Map(body.members.map((m) => [m.endpoint, m.connections]));
}

async function leaseAlive(cluster: Cluster, id: string): Promise<boolean> {
  const r = await cluster.etcdctl(["lease", "timetolive", id]);
  return r.code === 0 && /remaining\(\d+s\)/.test(r.stdout);
}

/**
 * Clients connect while the member sticky ranks first is drained, then it is made ready; returns
 * what happened to the clients' open connections and events.
 */
async function clientsOnTheWrongMember(extra: string[], waitMs: number) {
  const cluster = shared();
  const sock = join(dir, `admin-${extra.length}.sock`);
  const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--admin-addr=unix://${sock}`, ...extra], { admin: true });
  const first = cluster.members[await memberBehind(cluster, gw)]!.endpoint;
  const member = (verb: string) => runBinary(["member", verb, first, `--admin-addr=unix://${sock}`]);
  expect(member("drain").code).toBe(0);
  const client = await etcd3Client(gw);
  const watch = etcdctlRunning([`--endpoints=${gw.listen}`, "watch", "--prefix", "rb/"]);
  const grant = await viaGateway(gw, ["lease", "grant", "5"]);
  const leaseId = /lease ([0-9a-f]+) granted/.exec(grant.stdout)?.[1] ?? "";
  etcdctlRunning([`--endpoints=${gw.listen}`, "lease", "keep-alive", leaseId]);
  await waitFor("puts through the gateway", () => client.acked.length >= 20, 10_000, 20);
  await waitFor("the etcdctl clients connected", async () => [...(await connectionsByMember(gw)).values()].reduce((a, b) => a + b, 0) >= 3, 10_000, 50);
  const before = await connectionsByMember(gw);
  expect(before.get(first)).toBe(0);
  const readyAt = client.acked.length;
  expect(member("ready").code).toBe(0);
  const t0 = performance.now();
  let after = before;
  let movedMs: number | null = null;
  while (performance.now() - t0 < waitMs) {
    after = await connectionsByMember(gw);
    const elsewhere = [...after].filter(([m]) => m !== first).reduce((a, [, n]) => a + n, 0);
    if (elsewhere === 0 && (after.get(first) ?? 0) > 0) {
      movedMs = performance.now() - t0;
      break;
    }
    await sleep(100);
  }
  await sleep(2000); // traffic carries on where the connections moved
  await client.end();
  const ctlAlive = await leaseAlive(cluster, leaseId);
  const moves = gw.records().filter((r) => r.msg === "moved an open connection to rebalance").length;
  const failures = Object.fromEntries(client.failures);
  console.log(`${extra.join(" ") || "default flags"}: connections before ${JSON.stringify([...before])}, after ${JSON.stringify([...after])}; all on ${first} after ${movedMs?.toFixed(0) ?? "never"} ms; moves ${moves}; puts acknowledged ${client.acked.length}, failed ${JSON.stringify(failures)}; events etcd3 ${client.seen.length}, etcdctl ${etcdctlValues(watch.out()).length}; etcd3 lease lost ${client.lost()}, etcdctl lease alive ${ctlAlive}`);
  return { client, watch, ctlAlive, movedMs, moves, gw, readyAt };
}

describe("--rebalance-interval moves open connections to where new ones go (issue 22)", () => {
  test("with --rebalance-interval=1s, every open connection moves to the member made ready, no watch event is lost or repeated, and both leases live", async () => {
    const { client, watch, ctlAlive, movedMs, moves, gw, readyAt } = await clientsOnTheWrongMember(["--rebalance-interval=1s"], 30_000);
    expect(movedMs, "every open connection on the member made ready").not.toBeNull();
    expect(moves).toBeGreaterThanOrEqual(3);
    expectEveryEventOnce(client.seen, client.acked, readyAt, "etcd3 watch");
    expectEveryEventOnce(etcdctlValues(watch.out()), client.acked, readyAt, "etcdctl watch");
    expect(client.lost()).toBe(false);
    expect(ctlAlive).toBe(true);
    expect(await gw.metric("etcd_gateway_member_rebalanced_connections_total")).toBe(moves);
  }, 60_000);

  test("by default open connections stay where they are; only new ones go to the member made ready", async () => {
    const { movedMs, moves } = await clientsOnTheWrongMember([], 8_000);
    expect(movedMs).toBeNull();
    expect(moves).toBe(0);
  }, 60_000);
});

describe("--rebalance-interval with --workers (each process moves its own connections)", () => {
  test("connections held by both processes on other members all move to the member made ready", async () => {
    const ports = [freePort(), freePort(), freePort()];
    const counts = [0, 0, 0];
    const servers = await Promise.all(ports.map((p, i) => echoOnPort(p, () => counts[i]!++)));
    const held: Socket[] = [];
    try {
      const sock = join(dir, "admin-workers.sock");
      const endpoints = ports.map((p) => `127.0.0.1:${p}`);
      const gw = await startGatewayProcess([`--endpoints=${endpoints.join(",")}`, "--workers=2", "--health-check=none", "--rebalance-interval=500ms", `--admin-addr=unix://${sock}`]);
      const member = (verb: string, address: string) => runBinary(["member", verb, address, `--admin-addr=unix://${sock}`]);
      // Sticky's member: the one whose echo answers a first round trip.
      expect(await roundTrip(gw.port, "which")).toBe("which");
      await waitFor("the first connection counted", () => counts.some((c) => c > 0), 2000, 10);
      const first = counts.findIndex((c) => c > 0);
      expect(member("drain", endpoints[first]!).code).toBe(0);
      for (let i = 0; i < 30; i++) {
        const s = await dial(gw.port);
        s.on("error", () => {});
        held.push(s);
        await exchangeOn(s, `h${i}`);
      }
      const ended = held.map((s) => new Promise<void>((done) => s.once("end", () => done()).once("close", () => done())));
      expect(member("ready", endpoints[first]!).code).toBe(0);
      await Promise.race([Promise.all(ended), sleep(45_000)]);
      const left = held.filter((s) => !s.readableEnded && !s.destroyed).length;
      expect(left, "connections still open on the other members").toBe(0);
      const moves = gw.records().filter((r) => r.msg === "moved an open connection to rebalance");
      const byWorker = new Map<string, number>();
      for (const r of moves) byWorker.set(String(r.worker ?? "primary"), (byWorker.get(String(r.worker ?? "primary")) ?? 0) + 1);
      console.log(`--workers=2: ${held.length} connections moved, logged by ${JSON.stringify([...byWorker])}`);
      // The kernel spreads 30 accepts over both processes' sockets: each moved its own.
      expect(byWorker.size).toBe(2);
      // New connections go to the member made ready, from both processes.
      const before = counts[first]!;
      for (let i = 0; i < 20; i++) expect(await roundTrip(gw.port, `n${i}`)).toBe(`n${i}`);
      await waitFor("new connections on the member made ready", () => counts[first]! - before >= 20, 2000, 10);
    } finally {
      for (const s of held) s.destroy();
      await Promise.all(servers.map(closeServer));
    }
  }, 90_000);
});

/** Sends `msg` on `s` and waits for its echo. */
function exchangeOn(s: Socket, msg: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = "";
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got === msg) {
        s.off("data", onData);
        resolve();
      }
    };
    s.on("data", onData);
    s.write(msg);
    setTimeout(() => reject(new Error(`no echo of ${msg}`)), 5000).unref();
  });
}
