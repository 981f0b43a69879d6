/**
 * `bun run bench:perconn`: what one proxied connection costs each contender: system calls by name,
 * CPU (user and system), allocations, page faults and memory, per connection, plus keep-alive
 * requests/s and CPU per request; all contenders in one run, interleaved round by round, in front
 * of the bench's hello server. Writes bench-results/per-conn.json and .md, and with
 * `--doc docs/performance.md` the table of its "Per-connection cost" section.
 *
 * How each number is obtained is in scripts/bench/perconn-passes.ts and in the report's Method.
 *
 * @module
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { helloServer, stopBackends } from "./backends.ts";
import { benchDir, installExitHooks, keepBenchDir, onCleanup } from "./children.ts";
import { churn } from "./churn-client.ts";
import { CONTENDERS, prepareGateway, ROOT, startContender, type Contender, type Running, type Upstream } from "./contenders.ts";
import {
  addMallocProbes, churnPass, gcLogOf, gcPass, GC_LOG_ENV, mallocPass, passTimeoutMs, perfSyscallPass, perfSyscallsWork, removeMallocProbes, smallPass, stracePass,
} from "./perconn-passes.ts";
import { perConnMarkdown, replaceDocSection, summaryLines, type PerConnPlan, type PerConnRun, type PerConnSample } from "./perconn-report.ts";
import { describeMachine, ensureTools } from "./tools.ts";

const DEFAULT_CONTENDERS = ["etcd-gateway", "bun-relay", "haproxy-1t", "haproxy", "etcd-gw"];

/** Connections of a full run's allocation pass (and of `--heap-only`). */
const FULL_GC_CONNS = 60_000;

const USAGE = `Usage: bun scripts/bench/per-conn.ts [options]
  --contenders <list>  rows (default ${DEFAULT_CONTENDERS.join(",")}; also etcd-gateway-w2, etcd-gateway-all)
  --binary <path>      measure this build of ours instead of dist/etcd-gateway
  --before <path>      add the row etcd-gateway-before: this older build, same flags (ETCD_GATEWAY_BEFORE)
  --rounds <n>         rounds, interleaved (default 3; --quick 1)
  --quick              one short round (smoke test)
  --no-strace          skip the strace pass (perf's counts stay)
  --heap-only          only the allocation pass (JS heap bytes per connection, ${FULL_GC_CONNS} connections):
                       what CI's memory guard reads (scripts/bench/memory-guard.ts), about 7 s a row
  --json <path>        default bench-results/per-conn.json
  --doc <path>         rewrite the marked table section of this file (e.g. docs/performance.md);
                       the Markdown always goes to bench-results/per-conn.md too
  --keep-logs          keep the children's logs and the tools' raw output
  --from-json <path>   measure nothing: write the Markdown (and --doc) again from a run's JSON
`;

const FULL: PerConnPlan = { rounds: 3, warm: 1000, cpuConns: 10_000, perfConns: 5000, straceConns: 2000, mallocConns: 5000, gcConns: FULL_GC_CONNS, concurrency: 32, smallSeconds: 3, smallConnections: 32 };
const QUICK: PerConnPlan = { rounds: 1, warm: 200, cpuConns: 2000, perfConns: 1000, straceConns: 300, mallocConns: 1000, gcConns: 10_000, concurrency: 32, smallSeconds: 1, smallConnections: 32 };

function fail(message: string): never {
  process.stderr.write(`per-conn: ${message}\n${USAGE}`);
  process.exit(2);
}

/** What the machine lets the run do. */
interface Tools {
  perf: boolean;
  strace: boolean;
  mallocEvents: string[] | null;
  notes: string[];
}

/** Starts `c`, runs `fn`, stops it. */
async function withStarted<T>(c: Contender, up: Upstream, env: Record<string, string> | undefined, fn: (r: Running) => Promise<T>): Promise<T> {
  const r = await startContender(c, up, "row", env);
  try {
    return await fn(r);
  } finally {
    await r.stop();
  }
}

/** A pass's problem, if any: failed connections or a crash. */
function problem(r: Running, failed: number, errors: string[]): string | null {
  const crash = r.crashed();
  if (crash !== null) return `crashed: ${crash}`;
  return failed > 0 ? `${failed} connections failed (${errors.join("; ")})` : null;
}

/** The passes on one started instance (no collector log): warm-up, CPU, perf, strace, malloc, keep-alive. */
async function plainPasses(r: Running, plan: PerConnPlan, tools: Tools, s: PerConnSample): Promise<void> {
  await churn(r.port, plan.warm, plan.concurrency, passTimeoutMs(plan.warm));
  const note = (pass: string, why: string | null) => {
    if (why !== null) s.failures.push(`${pass}: ${why}`);
  };
  const cpu = await churnPass(r, plan.cpuConns, plan.concurrency);
  note("cpu", problem(r, cpu.client.failed, cpu.client.errors));
  s.cpu = { conns: cpu.client.ok, seconds: cpu.client.seconds, before: cpu.before, after: cpu.after };
  if (tools.perf) {
    const p = await perfSyscallPass(r, plan.perfConns, plan.concurrency);
    note("perf", problem(r, p.cost.client.failed, p.cost.client.errors));
    s.perf = { conns: p.cost.client.ok, seconds: p.cost.client.seconds, calls: p.syscalls.calls };
  }
  if (tools.strace) {
    const p = await stracePass(r, plan.straceConns, plan.concurrency);
    note("strace", problem(r, p.cost.client.failed, p.cost.client.errors));
    s.strace = { conns: p.cost.client.ok, seconds: p.cost.client.seconds, calls: p.syscalls.calls, errors: p.syscalls.errors };
  }
  if (tools.mallocEvents !== null) {
    const p = await mallocPass(r, tools.mallocEvents, plan.mallocConns, plan.concurrency);
    note("malloc", problem(r, p.cost.client.failed, p.cost.client.errors));
    s.malloc = { conns: p.cost.client.ok, calls: p.calls };
  }
  const small = await smallPass(r, plan.smallSeconds, plan.smallConnections);
  note("small", r.crashed() ?? (small.problem === "" ? null : small.problem));
  s.small = { requests: small.requests, rps: small.rps, before: small.before, after: small.after };
}

/** Every pass for `c` in one round: the plain instance, then one started with its collector's log on. */
async function measure(c: Contender, round: number, up: Upstream, plan: PerConnPlan, tools: Tools): Promise<PerConnSample> {
  const s: PerConnSample = { contender: c.id, round, failures: [] };
  try {
    if (plan.heapOnly !== true) await withStarted(c, up, undefined, (r) => plainPasses(r, plan, tools, s));
    const kind = gcLogOf(c.id);
    if (kind !== null) {
      await withStarted(c, up, GC_LOG_ENV[kind], async (r) => {
        await churn(r.port, plan.warm, plan.concurrency, passTimeoutMs(plan.warm));
        const g = await gcPass(r, kind, plan.gcConns, plan.concurrency);
        const why = problem(r, g.client.failed, g.client.errors);
        if (why !== null) s.failures.push(`gc: ${why}`);
        s.gc = { kind, bytesPerConn: g.bytesPerConn, collections: g.collections, conns: g.conns, exactShare: g.exactShare };
      });
    }
  } catch (e) {
    s.failures.push(e instanceof Error ? e.message : String(e));
  }
  return s;
}

/** perf, strace and the malloc uprobes, as far as this machine allows. */
async function findTools(wantStrace: boolean): Promise<Tools> {
  const notes: string[] = [];
  const perf = await perfSyscallsWork();
  if (!perf) notes.push("perf cannot count syscall tracepoints here: no perf column.");
  const strace = wantStrace && Bun.which("strace") !== null;
  if (wantStrace && !strace) notes.push("strace not installed (apt-get install strace): no strace pass.");
  const probes = perf ? await addMallocProbes() : "perf not usable";
  if (typeof probes !== "string") onCleanup(removeMallocProbes); // also on Ctrl-C
  if (typeof probes === "string") notes.push(`No malloc counts: ${probes}.`);
  return { perf, strace, mallocEvents: typeof probes === "string" ? null : probes, notes };
}

const OPTIONS = {
  contenders: { type: "string" }, binary: { type: "string" }, before: { type: "string" }, rounds: { type: "string" },
  quick: { type: "boolean", default: false }, "no-strace": { type: "boolean", default: false }, "heap-only": { type: "boolean", default: false },
  json: { type: "string" }, doc: { type: "string" }, "keep-logs": { type: "boolean", default: false }, "from-json": { type: "string" },
  help: { type: "boolean", short: "h", default: false },
} as const;

function parseCli(): { plan: PerConnPlan; ids: string[]; args: Record<string, string | boolean | undefined> } {
  let args: ReturnType<typeof parseArgs<{ options: typeof OPTIONS }>>["values"];
  try {
    args = parseArgs({ options: OPTIONS, allowPositionals: false }).values;
  } catch (e) {
    return fail(e instanceof Error ? e.message : String(e));
  }
  if (args.help) return (process.stdout.write(USAGE), process.exit(0));
  const plan = { ...(args.quick ? QUICK : FULL) };
  if (args["heap-only"]) Object.assign(plan, { heapOnly: true, rounds: 1, gcConns: FULL_GC_CONNS });
  if (args.rounds !== undefined) {
    const n = Number(args.rounds);
    if (!Number.isInteger(n) || n < 1 || n > 20) fail(`--rounds: expected 1..20, got ${JSON.stringify(args.rounds)}`);
    plan.rounds = n;
  }
  const ids = args.contenders?.split(",").map((x) => x.trim()).filter(Boolean) ?? [...DEFAULT_CONTENDERS];
  if (args.before !== undefined) {
    process.env.ETCD_GATEWAY_BEFORE = args.before;
    if (!ids.includes("etcd-gateway-before")) ids.splice(1, 0, "etcd-gateway-before");
  }
  for (const id of ids) if (!CONTENDERS.some((c) => c.id === id && c.command !== null)) fail(`--contenders: unknown ${JSON.stringify(id)}`);
  return { plan, ids, args };
}

async function main(): Promise<void> {
  const { plan, ids, args } = parseCli();
  if (typeof args["from-json"] === "string") {
    writeOutputs(JSON.parse(readFileSync(args["from-json"], "utf8")) as PerConnRun, args, false);
    return;
  }
  installExitHooks();
  if (args["keep-logs"]) keepBenchDir();
  const t0 = performance.now();
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const notes = await prepareGateway(false, args.binary as string | undefined);
  const missing = await ensureTools();
  if (missing.length > 0) notes.push(`Missing tools: ${missing.join(", ")}.`);
  // The allocation pass needs none of perf, strace or the malloc probes.
  const tools: Tools = plan.heapOnly === true ? { perf: false, strace: false, mallocEvents: null, notes: [] } : await findTools(!args["no-strace"]);
  notes.push(...tools.notes);
  const machine = await describeMachine();
  const contenders = ids.map((id) => CONTENDERS.find((c) => c.id === id)!);
  process.stderr.write(`per-conn: ${contenders.map((c) => c.id).join(", ")} × ${plan.rounds} round(s); logs in ${benchDir()}\n`);
  const samples: PerConnSample[] = [];
  try {
    const hello = await helloServer();
    const up: Upstream = { backends: [hello.address], etcd: false };
    for (let round = 1; round <= plan.rounds; round++) {
      for (const c of contenders) {
        const tc = performance.now();
        const s = await measure(c, round, up, plan, tools);
        samples.push(s);
        process.stderr.write(`per-conn: [${round}/${plan.rounds}] ${c.id} (${((performance.now() - tc) / 1000).toFixed(1)} s): ${summaryLines(s)}\n`);
      }
    }
  } finally {
    await stopBackends();
    await removeMallocProbes();
  }
  const run: PerConnRun = { startedAt, elapsedS: (performance.now() - t0) / 1000, plan, machine, contenders, samples, notes };
  writeOutputs(run, args);
}

function writeOutputs(run: PerConnRun, args: Record<string, string | boolean | undefined>, writeJson = true): void {
  const jsonPath = resolve(ROOT, (args.json as string | undefined) ?? "bench-results/per-conn.json");
  const mdPath = join(ROOT, "bench-results/per-conn.md");
  const md = perConnMarkdown(run);
  if (writeJson) {
    mkdirSync(dirname(jsonPath), { recursive: true });
    writeFileSync(jsonPath, `${JSON.stringify(run, null, 2)}\n`);
  }
  mkdirSync(dirname(mdPath), { recursive: true });
  writeFileSync(mdPath, md);
  const written = [...(writeJson ? [relative(ROOT, jsonPath)] : []), relative(ROOT, mdPath)];
  if (typeof args.doc === "string") {
    replaceDocSection(resolve(ROOT, args.doc), md);
    written.push(args.doc);
  }
  process.stdout.write(`${md}\n`);
  process.stderr.write(`per-conn: took ${run.elapsedS.toFixed(0)} s; wrote ${written.join(", ")}\n`);
}

try {
  await main();
  process.exit(0);
} catch (e) {
  process.stderr.write(`per-conn: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  await removeMallocProbes().catch(() => {});
  process.exit(1);
}
