/**
 * `bun scripts/bench/stall-gaps.ts`: how long a live etcd member stays silent after its clients'
 * bytes reach it, in real traffic, to choose the threshold of the data path's stall suspicion
 * (issue 21; docs/selection-and-health.md, "Detection bounds"). A recording relay sits between real clients (the `etcd3`
 * Node client and `etcdctl`) and one member of a real 3-member cluster, and timestamps every chunk
 * each way. For every connection it reports the silences that a suspicion rule would see: client
 * bytes delivered, then no byte back for a while. Workloads: a lease kept alive with a watch and a
 * put every 50 ms (the issue's client), a watch with nothing to say, a big range, puts during a
 * leader change and while the leader is killed, and, as the case to detect, the member SIGSTOPped.
 *
 * Writes a Markdown table to stdout (and `--json` the raw silences).
 *
 * @module
 */
import { Etcd3 } from "etcd3";
import { writeFileSync } from "node:fs";
import { createServer, connect, type Socket } from "node:net";
import { parseArgs } from "node:util";
import { startCluster, type Cluster } from "../../test/support/cluster.ts";
import { sleep } from "../../test/support/net.ts";

/** One silence: client bytes arrived at `from` (ms since the connection opened), the member's next byte `ms` later (or never, while measured). */
interface Silence {
  /** Client chunks that arrived during the silence. */
  chunks: number;
  /** Time from the first unanswered client chunk to the second one (ms; null with one chunk). */
  secondAfterMs: number | null;
  /** Time from the first unanswered client chunk to the last one (ms). */
  lastAfterMs: number;
  /** Client bytes that arrived during the silence, and in its first chunk. */
  bytes: number;
  firstBytes: number;
  /** How long no byte came back (ms); for one still open at the end, how long so far. */
  ms: number;
  answered: boolean;
  /**
   * The member's chunk that ended the silence before this one was smaller than 32 bytes and ended a
   * wait, and this one's first client chunk came before the member's next: the gateway counts the
   * client as waiting from that chunk, whatever its size (src/datapath/dialer.ts, received).
   */
  resumed: boolean;
}

interface Recorded {
  workload: string;
  silences: Silence[];
}

/** A relay on a kernel-chosen port to `target`, recording every silence of every connection. */
function recordingRelay(targetPort: number) {
  const open = new Set<{ end(): void }>();
  let workload = "";
  const records: Recorded[] = [];
  const server = createServer((client) => {
    const member = connect({ host: "127.0.0.1", port: targetPort });
    const rec: Recorded = { workload, silences: [] };
    records.push(rec);
    let pending: { at: number; chunks: number; second: number | null; last: number; bytes: number; first: number; resumed: boolean } | null = null;
    /** The member's last chunk was small and ended a wait (as the gateway counts one). */
    let maybeAnswered = false;
    const record = (answered: boolean) => {
      if (pending !== null) rec.silences.push({ chunks: pending.chunks, secondAfterMs: pending.second, lastAfterMs: pending.last, bytes: pending.bytes, firstBytes: pending.first, ms: performance.now() - pending.at, answered, resumed: pending.resumed });
      pending = null;
    };
    const close = () => record(false);
    open.add({ end: close });
    client.on("data", (d) => {
      const now = performance.now();
      if (pending === null) pending = { at: now, chunks: 1, second: null, last: 0, bytes: d.length, first: d.length, resumed: maybeAnswered };
      else {
        pending.bytes += d.length;
        pending.chunks++;
        pending.second ??= now - pending.at;
        pending.last = now - pending.at;
      }
      maybeAnswered = false;
      member.write(d);
    });
    member.on("data", (d) => {
      maybeAnswered = pending !== null && (pending.chunks >= 2 || pending.first >= 32 || pending.resumed) && d.length < 32;
      record(true);
      client.write(d);
    });
    const end = (a: Socket, b: Socket) => () => {
      close();
      b.destroy();
      a.destroy();
    };
    client.on("close", end(client, member)).on("error", () => {});
    member.on("close", end(member, client)).on("error", () => {});
  });
  return {
    async listen(): Promise<number> {
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      return (server.address() as { port: number }).port;
    },
    set workload(w: string) {
      for (const o of open) o.end();
      workload = w;
    },
    /** Closes every open silence (counted as unanswered so far). */
    flush() {
      for (const o of open) o.end();
    },
    records,
    close: () => server.close(),
  };
}

function client(port: number): Etcd3 {
  return new Etcd3({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 3000, grpcOptions: { "grpc.use_local_subchannel_pool": 1, "grpc.max_receive_message_length": -1 } });
}

/** The issue's client: a watch, a lease of TTL 5 s kept alive, a put every 50 ms, for `ms`. */
async function leaseClient(port: number, ms: number, during?: () => Promise<void>): Promise<{ puts: number; failed: number; leaseLost: boolean }> {
  const c = client(port);
  let leaseLost = false;
  const lease = c.lease(5);
  lease.on("lost", () => (leaseLost = true));
  await lease.grant();
  const watcher = await c.watch().prefix("stall-gaps/").create();
  let puts = 0;
  let failed = 0;
  const end = performance.now() + ms;
  const loop = (async () => {
    while (performance.now() < end) {
      try {
        await c.put(`stall-gaps/${puts % 10}`).value(String(puts)).exec();
        puts++;
      } catch {
        failed++;
      }
      await sleep(50);
    }
  })();
  await during?.();
  await loop;
  await watcher.cancel();
  await lease.revoke().catch(() => {});
  c.close();
  return { puts, failed, leaseLost };
}

interface Summary {
  workload: string;
  connections: number;
  silences: number;
  maxAnsweredMs: number;
  /** The longest answered silence as the gateway's rule counts it. */
  maxAfterSecondMs: number;
  /** Silences that would be suspected under each rule (threshold ms, and whether a second chunk is needed). */
  suspected: Record<string, number>;
}

/**
 * Suspicion rules: silent for `thresholdMs` after the first unanswered client chunk, or (`second`)
 * after the second one, so a lone trailing chunk that expects no answer (an HTTP/2 WINDOW_UPDATE
 * after a reply) is not enough.
 */
const RULES: { name: string; thresholdMs: number; second: boolean; bytes?: number; resume?: boolean }[] = [
  { name: "≥ 1 s", thresholdMs: 1000, second: false },
  { name: "≥ 500 ms after a 2nd chunk", thresholdMs: 500, second: true },
  { name: "≥ 1 s after a 2nd chunk", thresholdMs: 1000, second: true },
  { name: "≥ 500 ms after a 2nd chunk or a first of ≥ 32 bytes", thresholdMs: 500, second: true, bytes: 32 },
  { name: "≥ 1 s after a 2nd chunk or a first of ≥ 32 bytes (the rule before issue 25)", thresholdMs: 1000, second: true, bytes: 32 },
  { name: "≥ 500 ms, the same, or after a client chunk replying to a small chunk that ended a wait", thresholdMs: 500, second: true, bytes: 32, resume: true },
  { name: "≥ 1 s, the same (the gateway's rule)", thresholdMs: 1000, second: true, bytes: 32, resume: true },
];

/**
 * The silence a rule measures: from the first chunk, or (`second`) from the second chunk, or from
 * the first when it has at least `bytes` (src/datapath/conn.ts, ASK_BYTES).
 */
const measured = (s: Silence, second: boolean, bytes?: number, resume = false): number => {
  if (!second) return s.ms;
  if ((bytes !== undefined && s.firstBytes >= bytes) || (resume && s.resumed)) return s.ms;
  return s.secondAfterMs === null ? -1 : s.ms - s.secondAfterMs;
};

function summarise(records: Recorded[]): Summary[] {
  const byWorkload = new Map<string, Recorded[]>();
  for (const r of records) byWorkload.set(r.workload, [...(byWorkload.get(r.workload) ?? []), r]);
  return [...byWorkload].map(([workload, rs]) => {
    const all = rs.flatMap((r) => r.silences);
    const suspected: Record<string, number> = {};
    for (const rule of RULES) suspected[rule.name] = all.filter((s) => measured(s, rule.second, rule.bytes, rule.resume) >= rule.thresholdMs).length;
    const answered = all.filter((s) => s.answered);
    return { workload, connections: rs.length, silences: all.length, maxAnsweredMs: Math.max(0, ...answered.map((s) => s.ms)), maxAfterSecondMs: Math.max(0, ...answered.map((s) => measured(s, true, 32, true))), suspected };
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: "string" }, seconds: { type: "string", default: "15" } } });
  const seconds = Number(values.seconds);
  const cluster: Cluster = await startCluster({ size: 3 });
  const relay = recordingRelay(cluster.members[1]!.clientPort);
  try {
    const port = await relay.listen();
    const target = cluster.members[1]!;
    relay.workload = "lease + watch + put every 50 ms";
    console.error(JSON.stringify(await leaseClient(port, seconds * 1000)));
    relay.workload = "a watch with nothing to say";
    {
      const c = client(port);
      const w = await c.watch().key("stall-gaps/quiet").create();
      await sleep(seconds * 1000);
      await w.cancel();
      c.close();
    }
    relay.workload = "big range (20,000 keys of 1 KiB)";
    {
      const direct = client(cluster.members[0]!.clientPort);
      const value = "x".repeat(1024);
      for (let i = 0; i < 20_000; i += 500) await Promise.all(Array.from({ length: 500 }, (_, k) => direct.put(`stall-gaps/big/${i + k}`).value(value).exec()));
      direct.close();
      const c = client(port);
      for (let i = 0; i < 5; i++) await c.getAll().prefix("stall-gaps/big/").keys();
      for (let i = 0; i < 3; i++) await c.getAll().prefix("stall-gaps/big/").strings();
      c.close();
    }
    relay.workload = "puts while the leader moves";
    console.error(JSON.stringify(await leaseClient(port, seconds * 1000, async () => {
      for (let i = 0; i < 4; i++) {
        await sleep(2000);
        const leader = await cluster.leaderIndex();
        const to = (leader + 1) % 3;
        await cluster.etcdctl(["move-leader", await cluster.memberIdOf(to).then((d) => BigInt(d).toString(16))], { endpoints: cluster.members[leader]!.endpoint });
      }
    })));
    relay.workload = "puts while the leader is killed (an election)";
    console.error(JSON.stringify(await leaseClient(port, seconds * 1000, async () => {
      await sleep(2000);
      let leader = await cluster.leaderIndex();
      if (leader === 1) {
        await cluster.etcdctl(["move-leader", await cluster.memberIdOf(0).then((d) => BigInt(d).toString(16))], { endpoints: target.endpoint });
        leader = await cluster.leaderIndex();
      }
      await cluster.kill(leader);
      await sleep(3000);
      await cluster.restart(leader);
    })));
    relay.workload = "the member SIGSTOPped for 10 s (to detect)";
    console.error(JSON.stringify(await leaseClient(port, 14_000, async () => {
      await sleep(2000);
      process.kill(target.pid, "SIGSTOP");
      await sleep(10_000);
      process.kill(target.pid, "SIGCONT");
    })));
    relay.flush();
  } finally {
    relay.close();
    await cluster.stop();
  }
  const rows = summarise(relay.records);
  console.log(`| workload | connections | silences | longest answered (ms) | longest answered, counted by the gateway's rule (ms) | ${RULES.map((r) => `suspected ${r.name}`).join(" | ")} |`);
  console.log(`| --- | --- | --- | --- | --- | ${RULES.map(() => "---").join(" | ")} |`);
  for (const r of rows) console.log(`| ${r.workload} | ${r.connections} | ${r.silences} | ${r.maxAnsweredMs.toFixed(0)} | ${r.maxAfterSecondMs.toFixed(0)} | ${RULES.map((x) => r.suspected[x.name]).join(" | ")} |`);
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(relay.records, null, 1));
  process.exit(0);
}

await main();
