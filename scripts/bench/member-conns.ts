/**
 * What idle keep-alive connections cost an etcd member: the other side of the health design's
 * trade (docs/fleet.md). Each gateway keeps one HTTP connection open to the member it uses, for its
 * liveness checks; a fleet of 10,000 gateways in front of 3 members holds about 3,334 on each.
 *
 * Starts a real one-member etcd (test/support/cluster.ts), then opens connections to its client
 * port in steps, each after one `GET /version` (what the liveness check sends), from a client
 * process of its own (scripts/bench/idle-client.ts), and reads the member's memory with each step
 * held: VmRSS, private memory (smaps_rollup), and its Go runtime's own figures from its /metrics
 * (heap and stacks in use, goroutines), and its CPU over an idle window with every connection open.
 * Then the other side of the trade: the member's CPU under a fleet's liveness checks (one every 2 s
 * per gateway) sent on kept connections, and the same checks each on a new connection
 * (scripts/bench/check-client.ts).
 *
 * Usage: bun scripts/bench/member-conns.ts [--steps 1000,3334,10000] [--idle-seconds 20]
 *          [--check-gateways 3334] [--check-seconds 10] [--doc path]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { startCluster, type Cluster } from "../../test/support/cluster.ts";
import { makeCerts } from "../../test/support/certs.ts";
import { cpuNs, fdCount, rssKiB, smapsRollupKiB } from "../../test/support/net.ts";
import { lineReader } from "./children.ts";

const { values: args } = parseArgs({
  options: { steps: { type: "string", default: "1000,3334,10000" }, "idle-seconds": { type: "string", default: "20" }, "check-gateways": { type: "string", default: "3334" }, "check-seconds": { type: "string", default: "10" }, doc: { type: "string" } },
});
const steps = args.steps!.split(",").map(Number);
const idleSeconds = Number(args["idle-seconds"]);
const checkGateways = Number(args["check-gateways"]);
const checkSeconds = Number(args["check-seconds"]);

interface Reading {
  conns: number;
  fds: number;
  rssKiB: number;
  privateKiB: number;
  heapInuseKiB: number;
  stackInuseKiB: number;
  goroutines: number;
}

async function goMetrics(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { keepalive: false })).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(go_goroutines|go_memstats_heap_inuse_bytes|go_memstats_stack_inuse_bytes) (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

async function read(pid: number, port: number, conns: number): Promise<Reading> {
  await Bun.sleep(2000); // let the member finish serving the last batch
  const go = await goMetrics(port);
  const smaps = smapsRollupKiB(pid);
  return {
    conns,
    fds: fdCount(pid),
    rssKiB: rssKiB(pid),
    privateKiB: (smaps.Private_Clean ?? 0) + (smaps.Private_Dirty ?? 0),
    heapInuseKiB: Math.round(go.go_memstats_heap_inuse_bytes! / 1024),
    stackInuseKiB: Math.round(go.go_memstats_stack_inuse_bytes! / 1024),
    goroutines: go.go_goroutines!,
  };
}

interface CheckLoad {
  mode: "kept" | "new";
  tls: boolean;
  /** The member's VmRSS in the middle of the window, and before the checks began, in KiB. */
  rssKiB: number;
  rss0KiB: number;
  checks: number;
  failed: number;
  /** The member's CPU over the window, less its idle CPU, in cores. */
  cores: number;
}

/**
 * The member's CPU under the checks of `--check-gateways` gateways on the default schedule
 * (scripts/bench/check-client.ts), on kept connections or each on a new one; `idle` is the member at
 * rest before: its CPU per second (subtracted) and its VmRSS.
 */
async function checkLoad(pid: number, port: number, mode: "kept" | "new", idle: { nsPerS: number; rssKiB: number }, tls?: string[]): Promise<CheckLoad> {
  const warm = 4;
  const client = Bun.spawn([process.execPath, join(import.meta.dir, "check-client.ts"), String(port), String(checkGateways), "2000", String(warm), String(checkSeconds), mode, "5", ...(tls ?? [])], { stdout: "pipe", stderr: "inherit" });
  clients.push(client);
  const next = lineReader(client.stdout as ReadableStream<Uint8Array>, "check client");
  await next(120_000);
  await Bun.sleep(warm * 1000);
  const ns0 = cpuNs(pid);
  const t0 = performance.now();
  await Bun.sleep((checkSeconds * 1000) / 2);
  const rss = rssKiB(pid);
  const end = JSON.parse(await next(checkSeconds * 1000 + 30_000)) as { done: number; failed: number; errors: string[] };
  if (end.failed) process.stderr.write(`member-conns: ${mode}${tls ? " https" : ""}: ${JSON.stringify(end.errors)}\n`);
  const seconds = (performance.now() - t0) / 1000;
  const cores = (cpuNs(pid) - ns0 - idle.nsPerS * seconds) / seconds / 1e9;
  await stopClients();
  return { mode, tls: tls !== undefined, rssKiB: rss, rss0KiB: idle.rssKiB, checks: end.done, failed: end.failed, cores };
}

/** The member's CPU over `idleSeconds` of nothing asked of it, in ns per second. */
async function idleCpu(pid: number): Promise<number> {
  const ns0 = cpuNs(pid);
  await Bun.sleep(idleSeconds * 1000);
  return (cpuNs(pid) - ns0) / idleSeconds;
}

/** Opens `count` more kept-alive connections from a client process of their own; resolves once all are open. */
async function openMore(port: number, count: number): Promise<Subprocess> {
  const client = Bun.spawn([process.execPath, join(import.meta.dir, "idle-client.ts"), String(port), String(count), "200", "20", "/version", "}"], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  clients.push(client);
  const report = JSON.parse(await lineReader(client.stdout as ReadableStream<Uint8Array>, "idle client")(120_000)) as { opened: number; errors: string[] };
  if (report.opened !== count) throw new Error(`opened ${report.opened} of ${count}: ${JSON.stringify(report.errors)}`);
  return client;
}

const clients: Subprocess[] = [];
const plain = await startCluster({ size: 1 });
let tls: Cluster | undefined;
const certDir = mkdtempSync(join(tmpdir(), "member-conns-"));
try {
  const m = plain.members[0]!;
  await Bun.sleep(3000);
  const rows: Reading[] = [await read(m.pid, m.clientPort, 0)];
  const idleBase = await idleCpu(m.pid);
  for (const total of steps) {
    await openMore(m.clientPort, total - rows.at(-1)!.conns);
    rows.push(await read(m.pid, m.clientPort, total));
    process.stderr.write(`member-conns: ${JSON.stringify(rows.at(-1))}\n`);
  }
  const idleHeld = await idleCpu(m.pid);
  await stopClients();
  await plain.stop();
  // The check loads each on a fresh member, so that the memory steps above do not weigh on them.
  const loads: CheckLoad[] = [];
  for (const useTls of [false, true]) {
    const certs = useTls ? await makeCerts(certDir) : undefined;
    const c = await startCluster({ size: 1, ...(certs ? { tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true } } : {}) });
    if (useTls) tls = c;
    try {
      const mm = c.members[0]!;
      await Bun.sleep(3000);
      const idle = await idleCpu(mm.pid);
      const rest = { nsPerS: idle, rssKiB: rssKiB(mm.pid) };
      for (const mode of ["kept", "new"] as const) loads.push(await checkLoad(mm.pid, mm.clientPort, mode, rest, certs && [certs.ca, certs.client, certs.clientKey]));
      process.stderr.write(`member-conns: ${JSON.stringify(loads.slice(-2))}\n`);
    } finally {
      await c.stop();
    }
  }
  const doc = render(rows, idleBase, idleHeld, loads);
  process.stdout.write(doc);
  if (args.doc) writeFileSync(args.doc, doc);
} finally {
  await stopClients();
  await plain.stop();
  await tls?.stop();
  rmSync(certDir, { recursive: true, force: true });
}

async function stopClients(): Promise<void> {
  for (const c of clients) c.kill("SIGKILL");
  await Promise.all(clients.map((c) => c.exited));
  clients.length = 0;
}

function render(rows: Reading[], idleBase: number, idleHeld: number, loads: CheckLoad[]): string {
  const base = rows[0]!;
  const last = rows.at(-1)!;
  const per = (r: Reading, k: keyof Reading) => (r.conns === 0 ? "—" : ((r[k] - base[k]) / r.conns).toFixed(1));
  const kib = (last.rssKiB - base.rssKiB) / last.conns;
  const version = Bun.spawnSync(["etcd", "--version"]).stdout.toString().split("\n")[0];
  const msPerCheck = (l: CheckLoad) => ((l.cores * 1000 * checkSeconds) / Math.max(1, l.checks)).toFixed(3);
  return [
    "# What a fleet's health checks cost one etcd member",
    "",
    `Generated by \`bun scripts/bench/member-conns.ts --steps ${args.steps} --idle-seconds ${idleSeconds} --check-gateways ${checkGateways} --check-seconds ${checkSeconds}\` on ${new Date().toISOString().replace(/\.\d+Z$/, "Z")} (${version}, one member on loopback). Rerun it rather than editing this file.`,
    "",
    "Each gateway keeps one HTTP connection open to the member it uses, for its liveness checks (docs/selection-and-health.md, \"What health checks cost the cluster\"); 10,000 gateways in front of 3 members hold about 3,334 on each. Two questions: what those connections cost the member's memory while they are held, and whether a new connection per check would cost the member less.",
    "",
    "## Memory",
    "",
    "Connections opened in steps, each after one `GET /version` as the check sends it, from a client process of its own (scripts/bench/idle-client.ts); the member's memory read with each step held, 2 s after it.",
    "",
    "| connections held | member fds | VmRSS MiB | private MiB | Go heap in use MiB | Go stacks MiB | goroutines | KiB per connection: RSS / private / heap + stacks |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ...rows.map((r) => `| ${r.conns} | ${r.fds} | ${(r.rssKiB / 1024).toFixed(1)} | ${(r.privateKiB / 1024).toFixed(1)} | ${(r.heapInuseKiB / 1024).toFixed(1)} | ${(r.stackInuseKiB / 1024).toFixed(1)} | ${r.goroutines} | ${per(r, "rssKiB")} / ${per(r, "privateKiB")} / ${r.conns === 0 ? "—" : ((r.heapInuseKiB + r.stackInuseKiB - base.heapInuseKiB - base.stackInuseKiB) / r.conns).toFixed(1)} |`),
    "",
    `${kib.toFixed(1)} KiB a connection (a goroutine's stack and the HTTP server's buffers): 3,334 cost a member about ${((kib * 3334) / 1024).toFixed(0)} MiB. Held idle, all ${last.conns} of them, the member used ${(idleHeld / 1e6).toFixed(1)} millicores of CPU against ${(idleBase / 1e6).toFixed(1)} with none (${idleSeconds} s each).`,
    "",
    "## CPU: checks on kept connections, or each on a new one",
    "",
    `${checkGateways} gateways' checks on the default schedule, one every 2 s each (random phases): \`GET /version\` (liveness), and every fifth time \`POST /v3/maintenance/status\` (the full check, every 10 s), from one client process (scripts/bench/check-client.ts): on ${checkGateways} kept connections, then each on a new connection (closed by the client after the reply) at the same rate; on a fresh plain member, then on a fresh member serving https with client-certificate auth (\`--client-cert-auth\`, as production clusters run; each check presents a client certificate). The member's CPU (schedstat, every thread) over ${checkSeconds} s after 4 s of warm-up, less its idle CPU measured just before; its VmRSS before the checks and in the middle of the window.`,
    "",
    "| member | checks | checks done | failed | member CPU added (cores) | ms of member CPU per check | member VmRSS MiB: before → during |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...loads.map((l) => `| ${l.tls ? "https" : "http"} | ${l.mode === "kept" ? "kept-alive connections" : "a new connection each"} | ${l.checks} | ${l.failed} | ${l.cores.toFixed(3)} | ${msPerCheck(l)} | ${(l.rss0KiB / 1024).toFixed(0)} → ${(l.rssKiB / 1024).toFixed(0)} |`),
    "",
    `At 10,000 gateways (3,334 a member, ${checkGateways} here) the checks on kept connections cost the cluster about ${((3 * loads.find((l) => !l.tls && l.mode === "kept")!.cores * 3334) / checkGateways).toFixed(2)} cores over http and ${((3 * loads.find((l) => l.tls && l.mode === "kept")!.cores * 3334) / checkGateways).toFixed(2)} over https.`,
    "",
    ...[false, true].map((t) => {
      const [k, n] = [loads.find((l) => l.tls === t && l.mode === "kept")!, loads.find((l) => l.tls === t && l.mode === "new")!];
      const grew = (l: CheckLoad) => ((l.rssKiB - l.rss0KiB) / 1024).toFixed(0);
      return `Over ${t ? "https" : "http"}, a new connection per check costs the member ${(n.cores / Math.max(k.cores, 1e-9)).toFixed(1)}× the CPU of kept connections at this rate; the member's memory grew by ${grew(k)} MiB with kept connections and by ${grew(n)} MiB with new ones while the checks ran.`;
    }),
    "",
  ].join("\n");
}
