/**
 * `bun scripts/bench/hung-member.ts`: how soon a hung member in use is taken out, and what its
 * clients see (issue 21). Rounds alternate between the leader and a follower; in each, the issue's
 * client (the `etcd3` Node client: a watch, a lease of TTL 5 s kept alive, a put every 50 ms)
 * works through a gateway with default flags, and the member it uses is SIGSTOPped for 10 s.
 * Per round: the time from the stop to `deactivated endpoint`, whether the lease was lost, and the
 * longest time without an acknowledged put. Contenders run interleaved, round by round: this
 * build, and with `--before <binary>` an older one. Prints a Markdown table (medians and each round).
 *
 * @module
 */
import { Etcd3 } from "etcd3";
import { parseArgs } from "node:util";
import { startCluster, type Cluster } from "../../test/support/cluster.ts";
import { memberBehind } from "../../test/support/etcd.ts";
import { BINARY, startGatewayProcess } from "../../test/support/gateway.ts";
import { sleep } from "../../test/support/net.ts";

interface Round {
  contender: string;
  role: "leader" | "follower";
  /** ms from SIGSTOP to `deactivated endpoint` (null: not within the stop). */
  detectedMs: number | null;
  leaseLost: boolean;
  longestGapMs: number;
  failedPuts: number;
}

const STOP_MS = 10_000;

async function round(cluster: Cluster, contender: string, binary: string, role: "leader" | "follower"): Promise<Round> {
  const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`], { wrap: (cmd) => [binary, ...cmd.slice(1)] });
  const c = new Etcd3({ hosts: `http://${gw.listen}`, dialTimeout: 3000, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  let leaseLost = false;
  const lease = c.lease(5);
  lease.on("lost", () => (leaseLost = true));
  await lease.grant();
  const watcher = await c.watch().prefix("hung/").create();
  let stop = false;
  let failedPuts = 0;
  let last = performance.now();
  let longestGapMs = 0;
  let measuring = false;
  const loop = (async () => {
    for (let n = 0; !stop; n++) {
      try {
        await c.put(`hung/${n % 10}`).value(String(n)).exec();
        const now = performance.now();
        if (measuring) longestGapMs = Math.max(longestGapMs, now - last);
        last = now;
      } catch {
        if (measuring) failedPuts++;
      }
      await sleep(50);
    }
  })();
  await sleep(1500);
  const inUse = await memberBehind(cluster, gw);
  const leader = await cluster.leaderIndex();
  if ((role === "leader") !== (leader === inUse)) {
    const to = role === "leader" ? inUse : [0, 1, 2].find((i) => i !== inUse)!;
    await cluster.etcdctl(["move-leader", BigInt(await cluster.memberIdOf(to)).toString(16)], { endpoints: cluster.members[leader]!.endpoint });
  }
  await sleep(2500);
  const m = cluster.members[inUse]!;
  measuring = true;
  last = performance.now();
  const at = performance.now();
  process.kill(m.pid, "SIGSTOP");
  let detectedMs: number | null = null;
  while (performance.now() - at < STOP_MS) {
    if (detectedMs === null && gw.records().some((r) => r.msg === "deactivated endpoint" && r.address === m.endpoint)) detectedMs = performance.now() - at;
    await sleep(20);
  }
  process.kill(m.pid, "SIGCONT");
  await sleep(3000);
  stop = true;
  await loop;
  longestGapMs = Math.max(longestGapMs, performance.now() - last < 3000 ? 0 : performance.now() - last);
  await watcher.cancel().catch(() => {});
  await lease.revoke().catch(() => {});
  c.close();
  await gw.stop();
  await cluster.waitHealthy();
  return { contender, role, detectedMs, leaseLost, longestGapMs, failedPuts };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "10" }, before: { type: "string" } } });
  const contenders: [string, string][] = [["this build", BINARY]];
  if (values.before !== undefined) contenders.push([`before (${values.before})`, values.before]);
  const cluster = await startCluster({ size: 3 });
  const rounds: Round[] = [];
  try {
    for (let i = 0; i < Number(values.rounds); i++) {
      for (const [name, binary] of contenders) {
        const r = await round(cluster, name, binary, i % 2 === 0 ? "follower" : "leader");
        rounds.push(r);
        console.error(JSON.stringify(r));
      }
    }
  } finally {
    await cluster.stop();
  }
  console.log("| contender | rounds | taken out after SIGSTOP, median (min–max) | leases lost | longest time without an acknowledged put, median (max) |");
  console.log("| --- | --- | --- | --- | --- |");
  for (const [name] of contenders) {
    const rs = rounds.filter((r) => r.contender === name);
    const d = rs.map((r) => r.detectedMs).filter((x): x is number => x !== null);
    const gaps = rs.map((r) => r.longestGapMs);
    const detected = d.length === 0 ? "never within the stop" : `${(median(d) / 1000).toFixed(2)} s (${(Math.min(...d) / 1000).toFixed(2)}–${(Math.max(...d) / 1000).toFixed(2)})${d.length < rs.length ? `, ${rs.length - d.length} never` : ""}`;
    console.log(`| ${name} | ${rs.length} | ${detected} | ${rs.filter((r) => r.leaseLost).length} of ${rs.length} | ${(median(gaps) / 1000).toFixed(2)} s (${(Math.max(...gaps) / 1000).toFixed(2)}) |`);
  }
  process.exit(0);
}

await main();
