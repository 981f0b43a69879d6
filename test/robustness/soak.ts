/**
 * `bun run soak` (`bun test/robustness/soak.ts`): a soak of the compiled gateway in front of a real
 * 3-member etcd cluster. For the whole duration, clients work through the gateway while members
 * are taken down and brought back at random (killed and restarted by default, or paused with
 * `--faults`; one at a time, so quorum holds):
 *
 * - `--clients` etcd3 (the Node gRPC client) clients, each with a prefix watch on its own keys and
 *   a put/get loop on a client it replaces every 100 operations (fresh connections);
 * - `--etcdctl` loops of `etcdctl put`, `get` and `watch --rev` (one process per operation).
 *
 * Then it checks what must hold after the storm, with every client stopped: the gateway still
 * runs, logged no `unexpected error`, holds no more descriptors than at the start (plus a small
 * slack) and no client connections, its RSS is back near its baseline, new clients work, and every
 * watch saw every acknowledged put of its prefix. It prints a summary and exits 1 when an invariant
 * failed. Client operations that fail while a member is down (or just came back) are expected:
 * they are counted and reported, with the share outside those windows.
 *
 * Usage: bun test/robustness/soak.ts [--duration 60s] [--clients 8] [--etcdctl 4] [--faults kill,pause] [--seed N] [--json FILE] [--keep-logs]
 *                                     [--gateway-arg=--policy=round-robin ...]
 *
 * @module
 */
import { Etcd3, type IKeyValue, type Watcher } from "etcd3";
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { etcdctl, type EtcdctlResult } from "../support/cluster.ts";
import type { GatewayProcess } from "../support/gateway.ts";
import { fdCount, rssKiB } from "../support/net.ts";
import { killAfter, track, which } from "../support/process.ts";
import type { Random } from "../support/random.ts";
import { onTeardown, runWithTeardown } from "../support/teardown.ts";
import { COMMON_OPTIONS, COMMON_USAGE, describeOutages, durationFlag, intFlag, outagesJSON, startChaosRun, startRunChaos } from "./chaos-run.ts";

const USAGE = `Usage: bun test/robustness/soak.ts [options]
  --duration <d>   how long clients run under member chaos (Go duration) (default 60s)
  --clients <n>    etcd3 clients, each with its own watch (default 8)
  --etcdctl <n>    concurrent etcdctl loops (default 4)
${COMMON_USAGE}`;

/** Descriptors the gateway may hold above its baseline once clients are gone (health-check connections come and go). */
const FD_SLACK = 8;
/** RSS the gateway may keep above its baseline once clients are gone: max(this, half the baseline). */
const RSS_SLACK_KIB = 24 * 1024;
/** Bound on one client operation, retries of the client library included. */
const OP_TIMEOUT_MS = 20_000;
/** Time after a member is healthy again during which client failures still count as caused by its outage. */
const OUTAGE_GRACE_MS = 5000;
/** Share of all operations that may fail outside member outages (a gateway that drops connections at random exceeds it). */
const FAILED_OUTSIDE_OUTAGES_MAX = 0.005;

type OpKind = "etcd3 put" | "etcd3 get" | "etcdctl put" | "etcdctl get" | "etcdctl watch";

/** A failed client operation: when it failed and what the client said. */
interface Failure {
  kind: OpKind;
  at: number;
  error: string;
}

/** Counts of successful operations per kind, and every failure. */
class Ledger {
  readonly ok = new Map<OpKind, number>();
  readonly failures: Failure[] = [];
  succeeded(kind: OpKind): void {
    this.ok.set(kind, (this.ok.get(kind) ?? 0) + 1);
  }
  failed(kind: OpKind, error: unknown): void {
    const text = error instanceof Error ? (error.name === "Error" ? error.message : `${error.name}: ${error.message}`) : String(error);
    this.failures.push({ kind, at: performance.now(), error: text.split("\n")[0]!.slice(0, 200) });
  }
}

/** Runs `op` bounded by OP_TIMEOUT_MS and books it in `ledger`; resolves with its value or undefined. */
async function booked<T>(ledger: Ledger, kind: OpKind, op: () => Promise<T>): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const value = await Promise.race([
      op(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS))),
    ]);
    ledger.succeeded(kind);
    return value;
  } catch (e) {
    ledger.failed(kind, e);
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

/** An etcd3 client of the gateway with a TCP connection of its own through it. */
function etcd3Client(gw: GatewayProcess): Etcd3 {
  return new Etcd3({
    hosts: `http://${gw.listen}`,
    dialTimeout: 3000,
    // grpc-js shares one connection among all channels to the same address unless told otherwise.
    grpcOptions: { "grpc.use_local_subchannel_pool": 1 },
    // Unary calls get a deadline; streams (watches) must not.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + 5000 }),
  });
}

/** What one etcd3 client did: its acknowledged put revisions and the revisions its watch saw. */
interface Etcd3Worker {
  id: number;
  prefix: string;
  acked: Set<string>;
  watched: Set<string>;
  watchDisconnects: number;
  watcher: Watcher | null;
  watchClient: Etcd3;
  done: Promise<void>;
}

/** Starts etcd3 client `id`: a prefix watch on its own keys, then puts and gets until `deadline`. */
function startEtcd3Worker(id: number, gw: GatewayProcess, deadline: number, ledger: Ledger, random: Random): Etcd3Worker {
  const prefix = `soak/etcd3/${id}/`;
  const w: Etcd3Worker = { id, prefix, acked: new Set(), watched: new Set(), watchDisconnects: 0, watcher: null, watchClient: etcd3Client(gw), done: Promise.resolve() };
  w.done = (async () => {
    // The watch must exist before the first put, so that every put is one it must see.
    for (let attempt = 1; w.watcher === null; attempt++) {
      try {
        w.watcher = await w.watchClient.watch().prefix(prefix).create();
      } catch (e) {
        if (attempt >= 20 || performance.now() > deadline) throw new Error(`etcd3 client ${id}: no watch after ${attempt} attempts: ${String(e)}`);
        await Bun.sleep(500);
      }
    }
    w.watcher.on("put", (kv: IKeyValue) => w.watched.add(kv.mod_revision));
    w.watcher.on("disconnected", () => w.watchDisconnects++);
    let client = etcd3Client(gw);
    try {
      for (let n = 0; performance.now() < deadline; n++) {
        if (n > 0 && n % 100 === 0) {
          client.close();
          client = etcd3Client(gw);
        }
        const key = `${prefix}${n % 8}`;
        if (n % 2 === 0) {
          const res = await booked(ledger, "etcd3 put", () => client.put(key).value(`v${n}`).exec());
          if (res) w.acked.add(res.header.revision);
        } else {
          await booked(ledger, "etcd3 get", () => client.get(key).exec());
        }
        await Bun.sleep(random.int(10));
      }
    } finally {
      client.close();
    }
  })();
  return w;
}

/** Starts etcdctl (API v3) against the gateway with `args`, killed after `timeoutMs`; `timedOut()` tells whether it was. */
function spawnEtcdctl(gw: GatewayProcess, args: string[], timeoutMs: number) {
  const proc = track(
    Bun.spawn([which("etcdctl"), `--endpoints=${gw.listen}`, "--dial-timeout=2s", ...args], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, ETCDCTL_API: "3" },
    }),
  );
  return { proc, ...killAfter(proc, timeoutMs) };
}

/** Runs etcdctl against the gateway to its end (killed after `timeoutMs`, code null then). Never throws for a failing command. */
function etcdctlVia(gw: GatewayProcess, args: string[], timeoutMs = 10_000): Promise<EtcdctlResult> {
  return etcdctl(args, { endpoints: gw.listen, dialTimeout: "2s", commandTimeout: "5s", timeoutMs });
}

/** What a failed etcdctl run says in the end: its last stderr line ("Error: ..."), which names the cause. */
function etcdctlError(r: { code: number | null; stderr: string }): string {
  return r.stderr.trim().split("\n").at(-1) || `exit ${r.code}`;
}

/**
 * `etcdctl watch --rev=<rev> <key>` through the gateway until it prints `value`: resolves null then,
 * else why not (it exited first, or `timeoutMs` passed).
 */
async function etcdctlWatchMisses(gw: GatewayProcess, key: string, rev: string, value: string, timeoutMs = 8000): Promise<string | null> {
  const { proc, timedOut } = spawnEtcdctl(gw, ["watch", `--rev=${rev}`, key], timeoutMs);
  let seen = "";
  try {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) {
      seen += decoder.decode(chunk, { stream: true });
      // etcdctl prints "PUT", the key and the value on three lines.
      if (seen.split("\n").includes(value)) return null;
    }
    if (timedOut()) return `watch --rev=${rev} did not show ${value} within ${timeoutMs} ms`;
    const code = await proc.exited;
    return `watch --rev=${rev} exited (${code}) before showing ${value}: ${etcdctlError({ code, stderr: await new Response(proc.stderr).text() })}`;
  } finally {
    proc.kill("SIGKILL");
    await proc.exited;
  }
}

/** etcdctl loop `id`: put, get, watch --rev of its own key in turn, until `deadline`. */
async function etcdctlLoop(id: number, gw: GatewayProcess, deadline: number, ledger: Ledger): Promise<void> {
  const key = `soak/etcdctl/${id}`;
  let last: { rev: string; value: string } | null = null;
  for (let n = 0; performance.now() < deadline; n++) {
    const step = n % 3;
    if (step === 0 || last === null) {
      const value = `v${n}`;
      const rev = await booked(ledger, "etcdctl put", async () => {
        const r = await etcdctlVia(gw, ["put", key, value, "-w", "json"]);
        if (r.code !== 0) throw new Error(etcdctlError(r));
        const revision = /"revision":(\d+)/.exec(r.stdout)?.[1];
        if (revision === undefined) throw new Error(`no revision in ${r.stdout}`);
        return revision;
      });
      if (rev !== undefined) last = { rev, value };
    } else if (step === 1) {
      await booked(ledger, "etcdctl get", async () => {
        const r = await etcdctlVia(gw, ["get", key]);
        if (r.code !== 0) throw new Error(etcdctlError(r));
      });
    } else {
      const { rev, value } = last;
      await booked(ledger, "etcdctl watch", async () => {
        const missed = await etcdctlWatchMisses(gw, key, rev, value);
        if (missed !== null) throw new Error(missed);
      });
    }
  }
}

/** Resource readings of the gateway process. */
interface Sample {
  at: number;
  fds: number;
  rssKiB: number;
}

/** Samples the gateway's fds and RSS every `everyMs` into `samples` until stopped. */
function startSampler(pid: number, samples: Sample[], everyMs = 500): { stop(): void } {
  const read = () => {
    try {
      samples.push({ at: performance.now(), fds: fdCount(pid), rssKiB: rssKiB(pid) });
    } catch {
      // The process is gone; the liveness check reports it.
    }
  };
  read();
  const timer = setInterval(read, everyMs);
  return { stop: () => clearInterval(timer) };
}

/** Retries `attempt` every 250 ms for at most `timeoutMs`; resolves with the last error, or null once it succeeds. */
async function eventually(attempt: () => Promise<void>, timeoutMs: number): Promise<string | null> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      await attempt();
      return null;
    } catch (e) {
      if (performance.now() > deadline) return e instanceof Error ? e.message : String(e);
      await Bun.sleep(250);
    }
  }
}

/**
 * The TCP sockets on either end of the gateway's listen port, as `ss` prints them (state, addresses,
 * owning process), to tell a connection a client still holds from one only the gateway still counts.
 */
/** Client ends of connections to the gateway that are still established (their client has not closed them). */
function clientHeldSockets(listen: string): number {
  const port = listen.slice(listen.lastIndexOf(":") + 1);
  const ss = Bun.which("ss");
  if (ss === null) return 0;
  return Bun.spawnSync([ss, "-tanH", "state", "established", `( dport = :${port} )`], { stdout: "pipe", stderr: "ignore" }).stdout.toString().trim().split("\n").filter(Boolean).length;
}

function socketsAt(listen: string): string[] {
  const port = listen.slice(listen.lastIndexOf(":") + 1);
  const ss = Bun.which("ss");
  if (ss === null) return ["(ss not installed)"];
  const run = (filter: string) => Bun.spawnSync([ss, "-tanpH", filter], { stdout: "pipe", stderr: "ignore" }).stdout.toString().trim().split("\n").filter(Boolean);
  return [...run(`sport = :${port}`).filter((l) => !l.startsWith("LISTEN")), ...run(`dport = :${port}`)].map((l) => l.replace(/\s+/g, " "));
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const pct = (part: number, whole: number) => (whole === 0 ? "0.00 %" : `${((100 * part) / whole).toFixed(2)} %`);

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      duration: { type: "string", default: "60s" },
      clients: { type: "string", default: "8" },
      etcdctl: { type: "string", default: "4" },
      ...COMMON_OPTIONS,
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const durationMs = durationFlag(values.duration);
  const clients = intFlag(values.clients, "--clients", 1, 64);
  const etcdctlLoops = intFlag(values.etcdctl, "--etcdctl", 0, 16);
  const run = await startChaosRun("soak", values, `${values.duration}, ${clients} etcd3 clients, ${etcdctlLoops} etcdctl loops`);
  const { gw, cluster, say, random, seed } = run;

  // Baseline once the first health checks have settled.
  await Bun.sleep(2000);
  const baseline = { fds: fdCount(gw.pid), rssKiB: rssKiB(gw.pid) };
  say(`baseline: ${baseline.fds} fds, RSS ${mib(baseline.rssKiB)}`);
  const samples: Sample[] = [];
  const sampler = startSampler(gw.pid, samples);
  onTeardown(() => sampler.stop());

  const ledger = new Ledger();
  const deadline = performance.now() + durationMs;
  const runChaos = startRunChaos(run);
  const { chaos, connectionsAtFault } = runChaos;
  const workers = Array.from({ length: clients }, (_, i) => startEtcd3Worker(i, gw, deadline, ledger, random));
  onTeardown(() => {
    for (const w of workers) w.watchClient.close();
  });
  const loops = Array.from({ length: etcdctlLoops }, (_, i) => etcdctlLoop(i, gw, deadline, ledger));
  const progress = setInterval(() => {
    const ok = [...ledger.ok.values()].reduce((a, b) => a + b, 0);
    const last = samples.at(-1);
    say(`progress: ${ok} ok, ${ledger.failures.length} failed; gateway ${last?.fds ?? "?"} fds, RSS ${last ? mib(last.rssKiB) : "?"}`);
  }, 10_000);
  onTeardown(() => clearInterval(progress));

  const workerErrors: string[] = [];
  await Promise.all([...workers.map((w) => w.done), ...loops].map((p) => p.catch((e: unknown) => void workerErrors.push(e instanceof Error ? e.message : String(e)))));
  clearInterval(progress);
  say("clients stopped; stopping the chaos (a member that is down is started again)");
  await chaos.stop();
  await cluster.waitHealthy(undefined, 30_000).catch((e: unknown) => void workerErrors.push(`cluster not healthy after the run: ${String(e)}`));

  // New clients work through the gateway once the cluster is whole.
  const finalProbes: Record<string, string | null> = {};
  finalProbes["etcdctl put/get"] = await eventually(async () => {
    const put = await etcdctlVia(gw, ["put", "soak/final", "ok"]);
    if (put.code !== 0) throw new Error(put.stderr.trim());
    const get = await etcdctlVia(gw, ["get", "soak/final", "--print-value-only"]);
    if (get.code !== 0 || get.stdout.trim() !== "ok") throw new Error(`get: ${get.code} ${get.stdout.trim()} ${get.stderr.trim()}`);
  }, 15_000);
  finalProbes["etcd3 put/get"] = await eventually(async () => {
    const client = etcd3Client(gw);
    try {
      await client.put("soak/final-etcd3").value("ok").exec();
      const value = await client.get("soak/final-etcd3").string();
      if (value !== "ok") throw new Error(`read ${value}`);
    } finally {
      client.close();
    }
  }, 15_000);

  // Every watch must end up with every acknowledged put of its prefix: one more put each, then wait.
  const probe = etcd3Client(gw);
  for (const w of workers) {
    await eventually(async () => {
      const res = await probe.put(`${w.prefix}final`).value("end").exec();
      w.acked.add(res.header.revision);
    }, 10_000);
  }
  probe.close();
  const missing = () => workers.reduce((sum, w) => sum + [...w.acked].filter((r) => !w.watched.has(r)).length, 0);
  const watchDeadline = performance.now() + 15_000;
  while (missing() > 0 && performance.now() < watchDeadline) await Bun.sleep(100);
  const watchMissing = missing();
  const watchSeen = workers.reduce((sum, w) => sum + w.watched.size, 0);
  const watchDisconnects = workers.reduce((sum, w) => sum + w.watchDisconnects, 0);
  for (const w of workers) {
    await w.watcher?.cancel().catch(() => {});
    w.watchClient.close();
  }

  // Resources back near the baseline, once every client connection is closed.
  say("checking that the gateway's connections, descriptors and memory come back down");
  let openConnections = Number.NaN;
  let clientHeld = 0;
  const settleDeadline = performance.now() + 20_000;
  for (;;) {
    openConnections = await gw.metric("etcd_gateway_listener_connections").catch(() => Number.NaN);
    // A connection whose client still holds it open (a client library that reconnected after its
    // close, say) is the client's to close; every other one must be gone.
    clientHeld = clientHeldSockets(gw.listen);
    const fds = gw.running() ? fdCount(gw.pid) : Number.NaN;
    if ((openConnections === clientHeld && fds <= baseline.fds + FD_SLACK + 2 * clientHeld) || performance.now() > settleDeadline) break;
    await Bun.sleep(250);
  }
  const leftoverSockets = openConnections === 0 ? [] : socketsAt(gw.listen);
  // JSC returns freed pages to the kernel lazily: the lowest RSS of a few seconds is the one that tells.
  const settled: Sample[] = [];
  for (let i = 0; i < 6 && gw.running(); i++) {
    settled.push({ at: performance.now(), fds: fdCount(gw.pid), rssKiB: rssKiB(gw.pid) });
    await Bun.sleep(500);
  }
  sampler.stop();
  const after = {
    fds: settled.length > 0 ? Math.min(...settled.map((s) => s.fds)) : Number.NaN,
    rssKiB: settled.length > 0 ? Math.min(...settled.map((s) => s.rssKiB)) : Number.NaN,
  };
  const peak = { fds: Math.max(...samples.map((s) => s.fds)), rssKiB: Math.max(...samples.map((s) => s.rssKiB)) };
  const rssAllowance = Math.max(RSS_SLACK_KIB, baseline.rssKiB / 2);

  const unexpected = gw.records().filter((r) => r.msg === "unexpected error");
  const logCounts = new Map<string, number>();
  for (const r of gw.records()) if (r.level !== "info" || r.msg === "activated") logCounts.set(`${String(r.level)}: ${String(r.msg)}`, (logCounts.get(`${String(r.level)}: ${String(r.msg)}`) ?? 0) + 1);

  const kinds: OpKind[] = ["etcd3 put", "etcd3 get", "etcdctl put", "etcdctl get", "etcdctl watch"];
  const byKind = kinds.map((kind) => {
    const failures = ledger.failures.filter((f) => f.kind === kind);
    const outside = failures.filter((f) => chaos.outageAt(f.at, OUTAGE_GRACE_MS) === undefined);
    const ok = ledger.ok.get(kind) ?? 0;
    return { kind, ok, failed: failures.length, failedOutsideOutages: outside.length, total: ok + failures.length };
  });
  const totalOk = byKind.reduce((a, k) => a + k.ok, 0);
  const totalFailed = byKind.reduce((a, k) => a + k.failed, 0);
  const failedOutside = byKind.reduce((a, k) => a + k.failedOutsideOutages, 0);
  // What was down when each failure happened.
  const failuresBy = { leader: 0, memberInUse: 0, otherMember: 0, none: 0 };
  for (const f of ledger.failures) {
    const o = chaos.outageAt(f.at, OUTAGE_GRACE_MS);
    if (o === undefined) failuresBy.none++;
    else if (o.wasLeader === true) failuresBy.leader++;
    else if ((connectionsAtFault[chaos.outages.indexOf(o)] ?? 0) > 0) failuresBy.memberInUse++;
    else failuresBy.otherMember++;
  }
  const errorKinds = new Map<string, number>();
  for (const f of ledger.failures) {
    const key = `${f.kind}: ${f.error.replace(/\d+/g, "N").slice(0, 120)}`;
    errorKinds.set(key, (errorKinds.get(key) ?? 0) + 1);
  }

  const invariants: { name: string; ok: boolean; detail: string }[] = [
    { name: "gateway still running", ok: gw.running(), detail: gw.running() ? `pid ${gw.pid}` : `exited ${gw.proc.exitCode ?? gw.proc.signalCode}` },
    { name: "no `unexpected error` in the gateway log", ok: unexpected.length === 0, detail: unexpected.length === 0 ? "none" : unexpected.slice(0, 3).map((r) => JSON.stringify(r)).join("\n      ") },
    {
      name: "no connection left open but those a client still holds",
      ok: openConnections === clientHeld,
      detail: `etcd_gateway_listener_connections ${openConnections}, held open by their client ${clientHeld}${leftoverSockets.map((l) => `\n      ${l}`).join("")}`,
    },
    { name: `fds back near the baseline (<= baseline + ${FD_SLACK}, + 2 per connection a client holds)`, ok: after.fds <= baseline.fds + FD_SLACK + 2 * clientHeld, detail: `before ${baseline.fds}, peak ${peak.fds}, after ${after.fds}` },
    {
      name: `RSS back near the baseline (<= baseline + ${mib(rssAllowance)})`,
      ok: after.rssKiB <= baseline.rssKiB + rssAllowance,
      detail: `before ${mib(baseline.rssKiB)}, peak ${mib(peak.rssKiB)}, after ${mib(after.rssKiB)}`,
    },
    { name: "members taken down and brought back", ok: chaos.outages.length > 0 && chaos.errors.length === 0, detail: `${chaos.outages.length} outages${chaos.errors.length ? `; errors: ${chaos.errors.join("; ")}` : ""}` },
    { name: "every client loop ran to its end", ok: workerErrors.length === 0, detail: workerErrors.length === 0 ? `${clients} etcd3, ${etcdctlLoops} etcdctl` : workerErrors.join("; ") },
    ...Object.entries(finalProbes).map(([what, err]) => ({ name: `new ${what} through the gateway after the run`, ok: err === null, detail: err ?? "ok" })),
    {
      name: `failures outside member outages at most ${FAILED_OUTSIDE_OUTAGES_MAX * 100} % of operations`,
      ok: failedOutside <= FAILED_OUTSIDE_OUTAGES_MAX * (totalOk + totalFailed),
      detail: `${failedOutside} of ${totalOk + totalFailed}`,
    },
    { name: "every watch saw every acknowledged put of its prefix", ok: watchMissing === 0, detail: `${watchSeen} events seen, ${watchMissing} acknowledged puts missing, ${watchDisconnects} watch stream disconnects` },
    ...byKind.map((k) => ({ name: `${k.kind}: operations succeeded`, ok: k.ok > 0 || k.total === 0, detail: `${k.ok} ok` })),
  ];
  const passed = invariants.every((i) => i.ok);

  const out: string[] = [];
  out.push("", `soak summary (${values.duration}, seed ${seed}):`);
  out.push(`  member outages: ${describeOutages(runChaos)}`);
  out.push(`  operations: ${totalOk + totalFailed} (${totalOk} ok, ${totalFailed} failed = ${pct(totalFailed, totalOk + totalFailed)}; outside outages ${failedOutside} = ${pct(failedOutside, totalOk + totalFailed)})`);
  out.push(
    `    failures while the leader was down ${failuresBy.leader}, the member the gateway used (not the leader) ${failuresBy.memberInUse}, another member ${failuresBy.otherMember}, none ${failuresBy.none}`,
  );
  for (const k of byKind) out.push(`    ${k.kind.padEnd(14)} ${String(k.ok).padStart(7)} ok ${String(k.failed).padStart(5)} failed (${pct(k.failed, k.total)}), ${k.failedOutsideOutages} outside outages`);
  out.push(`  watch events (etcd3): ${watchSeen}, stream disconnects ${watchDisconnects}`);
  if (errorKinds.size > 0) {
    out.push("  failures by message:");
    for (const [what, n] of [...errorKinds].sort((a, b) => b[1] - a[1]).slice(0, 12)) out.push(`    ${String(n).padStart(5)}  ${what}`);
  }
  out.push(`  gateway fds: before ${baseline.fds}, peak ${peak.fds}, after ${after.fds}`);
  out.push(`  gateway RSS: before ${mib(baseline.rssKiB)}, peak ${mib(peak.rssKiB)}, after ${mib(after.rssKiB)}`);
  out.push("  gateway log (warnings, errors, activations):");
  for (const [what, n] of [...logCounts].sort((a, b) => b[1] - a[1])) out.push(`    ${String(n).padStart(5)}  ${what}`);
  out.push("  invariants:");
  for (const i of invariants) out.push(`    ${i.ok ? "PASS" : "FAIL"}  ${i.name}: ${i.detail}`);
  out.push(passed ? "soak: PASS" : "soak: FAIL");
  process.stdout.write(`${out.join("\n")}\n`);

  if (values.json) {
    const summary = {
      duration: values.duration,
      seed,
      clients,
      etcdctlLoops,
      outages: outagesJSON(runChaos),
      operations: byKind,
      failuresDuring: failuresBy,
      failuresByMessage: Object.fromEntries(errorKinds),
      watch: { seen: watchSeen, missing: watchMissing, disconnects: watchDisconnects },
      gateway: { baseline, peak, after, log: Object.fromEntries(logCounts) },
      invariants,
      passed,
    };
    writeFileSync(values.json, `${JSON.stringify(summary, null, 2)}\n`);
  }
  if (!passed) run.keep();
  return passed ? 0 : 1;
}

await runWithTeardown("soak", main);
