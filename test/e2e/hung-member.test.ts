/**
 * Issue 21: a hung member in use, noticed from its clients' own traffic. Real etcd, real clients
 * nobody here wrote (the `etcd3` Node client and `etcdctl lease keep-alive`), the gateway with
 * default flags: the member clients use is SIGSTOPped for 10 s, as a stuck disk or a VM pause would
 * hang it. A lease of TTL 5 s kept alive through the gateway must survive, whether the stopped
 * member is the leader or a follower, and the member must be taken out after a suspicion that
 * checks confirmed (before issue 21 it took 8–9 s and the lease was lost).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import type { Cluster } from "../support/cluster.ts";
import { memberBehind, useSharedCluster, viaGateway } from "../support/etcd.ts";
import { startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { sleep, waitFor } from "../support/net.ts";
import { track, which } from "../support/process.ts";

const shared = useSharedCluster();
afterEach(stopAllGateways);
const children: { kill(): void }[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill();
});
afterAll(() => {
  for (const c of children.splice(0)) c.kill();
});

const STOP_MS = 10_000;

/** The issue's client through the gateway: a watch, a lease of TTL 5 s kept alive, a put every 50 ms. */
async function issueClient(gw: GatewayProcess) {
  const c = new Etcd3({ hosts: `http://${gw.listen}`, dialTimeout: 3000, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  let lost = false;
  const lease = c.lease(5);
  lease.on("lost", () => (lost = true));
  const leaseId = await lease.grant();
  const watcher = await c.watch().prefix("hung/").create();
  let puts = 0;
  let failed = 0;
  let stop = false;
  let lastPutAt = performance.now();
  let longestGapMs = 0;
  const loop = (async () => {
    while (!stop) {
      try {
        await c.put(`hung/${puts % 10}`).value(String(puts)).exec();
        puts++;
        const now = performance.now();
        longestGapMs = Math.max(longestGapMs, now - lastPutAt);
        lastPutAt = now;
      } catch {
        failed++;
      }
      await sleep(50);
    }
  })();
  return {
    leaseId,
    lost: () => lost,
    puts: () => puts,
    async end() {
      stop = true;
      await loop;
      await watcher.cancel().catch(() => {});
      await lease.revoke().catch(() => {});
      c.close();
      return { puts, failed, longestGapMs };
    },
  };
}

/**
 * `etcdctl lease keep-alive` of a new TTL 5 s lease through the gateway, running until killed, and
 * when each of its keep-alive answers arrived (one line each on its output).
 */
async function etcdctlKeepAlive(gw: GatewayProcess): Promise<{ id: string; answers: number[] }> {
  const grant = await viaGateway(gw, ["lease", "grant", "5"]);
  expect(grant.code, grant.stderr).toBe(0);
  const id = /lease ([0-9a-f]+) granted/.exec(grant.stdout)?.[1];
  if (id === undefined) throw new Error(`no lease ID in ${grant.stdout}`);
  const proc = track(Bun.spawn([which("etcdctl"), `--endpoints=${gw.listen}`, "--dial-timeout=2s", "lease", "keep-alive", id], { stdout: "pipe", stderr: "ignore", env: { ...process.env, ETCDCTL_API: "3" } }));
  children.push({ kill: () => proc.kill("SIGKILL") });
  const answers: number[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) {
      const lines = decoder.decode(chunk).match(/keepalived with TTL/g) ?? [];
      for (const _ of lines) answers.push(performance.now());
    }
  })();
  return { id, answers };
}

/** Whether lease `id` still exists, asked of a member that was not stopped. */
async function leaseAlive(cluster: Cluster, id: string, not: number): Promise<boolean> {
  const other = cluster.members.find((_, i) => i !== not)!;
  const r = await cluster.etcdctl(["lease", "timetolive", id], { endpoints: other.endpoint });
  return r.code === 0 && !/already expired/.test(r.stdout) && /remaining\(\d+s\)/.test(r.stdout);
}

async function hangMemberInUse(role: "leader" | "follower") {
  const cluster = shared();
  const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`]);
  const client = await issueClient(gw);
  const ctlLease = await etcdctlKeepAlive(gw);
  await waitFor("puts through the gateway", () => client.puts() >= 20, 10_000, 20);
  const inUse = await memberBehind(cluster, gw);
  // Make the member in use the leader, or not, as the test asks.
  const leader = await cluster.leaderIndex();
  if ((role === "leader") !== (leader === inUse)) {
    const to = role === "leader" ? inUse : [0, 1, 2].find((i) => i !== inUse)!;
    const id = BigInt(await cluster.memberIdOf(to)).toString(16);
    const moved = await cluster.etcdctl(["move-leader", id], { endpoints: cluster.members[leader]!.endpoint });
    expect(moved.code, moved.stderr).toBe(0);
  }
  expect((await cluster.leaderIndex()) === inUse).toBe(role === "leader");
  await sleep(2500); // the clients settle on the (possibly new) leader; a keep-alive round passes
  const stopped = cluster.members[inUse]!;
  const at = performance.now();
  process.kill(stopped.pid, "SIGSTOP");
  const down = await waitFor(`${stopped.endpoint} taken out`, () => gw.records().find((r) => r.msg === "deactivated endpoint" && r.address === stopped.endpoint), STOP_MS, 20);
  const tookMs = performance.now() - at;
  const suspected = gw.records().find((r) => r.msg === "member suspected of a stall; checking it now" && r.address === stopped.endpoint);
  // The leases are judged while the member is still stopped: what the gateway did for them. After
  // SIGCONT a resumed leader may revoke them itself (below).
  await sleep(Math.max(0, STOP_MS - 1000 - (performance.now() - at)));
  const etcd3Lost = client.lost();
  const ctlAlive = await leaseAlive(cluster, ctlLease.id, inUse);
  await sleep(Math.max(0, STOP_MS - (performance.now() - at)));
  process.kill(stopped.pid, "SIGCONT");
  await sleep(2000);
  const result = await client.end();
  const ctlAliveAfter = await leaseAlive(cluster, ctlLease.id, inUse);
  const lastBefore = ctlLease.answers.filter((t) => t < at).at(-1) ?? Number.NaN;
  const firstAfter = ctlLease.answers.find((t) => t > at) ?? Number.NaN;
  const summary = `${role} stopped: taken out ${tookMs.toFixed(0)} ms after SIGSTOP (${String(down.error)}); suspected ${suspected === undefined ? "never" : `with ${String(suspected["silent-ms"])} ms of silence`}; etcd3 lease lost: ${etcd3Lost} (after the SIGCONT: ${client.lost()}); etcdctl lease alive: ${ctlAlive} (after the SIGCONT: ${ctlAliveAfter}; its answers ${(at - lastBefore).toFixed(0)} ms before the SIGSTOP and ${(firstAfter - at).toFixed(0)} ms after); puts ${result.puts}, failed ${result.failed}, longest gap between acknowledged puts ${result.longestGapMs.toFixed(0)} ms`;
  console.log(summary);
  if (process.env.HUNG_DEBUG) for (const r of gw.lines) console.log(r);
  expect(suspected, "a suspicion from client traffic came first").toBeDefined();
  // The check that completes --health-fall failures may be a confirming one (its reason says so)
  // or the member's regular liveness check timing out at the same moment (seen once in CI);
  // either way the time bound below is only reachable with the confirmations counted (three
  // regular checks take 6 s).
  expect(String(down.error), summary).toMatch(/confirming a stall seen on client traffic|context deadline exceeded/);
  // Suspicion after 1 s of silence (+ a 100 ms tick), three checks 150 ms apart, each waiting 1 s.
  expect(tookMs, summary).toBeLessThan(1000 + 100 + 2 * 150 + 1000 + 1500);
  expect(etcd3Lost, summary).toBe(false);
  // etcdctl gives its lease up on its own clock: TTL (5 s) after its last keep-alive answer, which
  // may be 1.7 s before the SIGSTOP. With the follower stopped, the gateway's 2.2 s take-out leaves
  // room. With the leader stopped, no member answers a keep-alive until the others have elected a
  // new one (etcd's election timeout, 1–2 s, more on a loaded machine), so etcdctl may give up even
  // though the gateway moved it in time (seen once in CI in about ten runs: taken out at 2.2 s,
  // etcdctl's lease lost). The etcd3 client's lease, asserted above in both cases, holds the
  // gateway to the issue's promise; etcdctl's outcome with the leader stopped is printed.
  // Both are judged 9 s after the SIGSTOP, the member still stopped: a leader resumed after 10 s
  // still counts its leases on its own clock, finds them expired and asks to revoke them, and its
  // request reaches the new leader once it follows it (etcd's doing, not the gateway's: seen here
  // as both leases gone after the SIGCONT in 1 leader run of 12, and etcdctl's in 1 of 8, while
  // both were kept alive through the hang). Their state after the SIGCONT is printed.
  if (role === "follower") expect(ctlAlive, summary).toBe(true);
  expect(gw.proc.exitCode).toBeNull();
}

describe("a hung member in use, with default flags and active etcd clients", () => {
  test("a follower SIGSTOPped for 10 s: taken out after a confirmed suspicion, the leases (etcd3, etcdctl) survive", () => hangMemberInUse("follower"), 60_000);
  test("the leader SIGSTOPped for 10 s: the same, except that etcdctl's lease is reported, not asserted (it may expire on etcdctl's clock while the others elect a leader)", () => hangMemberInUse("leader"), 60_000);
});
