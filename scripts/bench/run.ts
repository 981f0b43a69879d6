/**
 * `bun run bench`: measures the same work through each contender (direct, our gateway, etcd's own
 * gateway, HAProxy) on this machine in one run, interleaved round by round, and writes
 * docs/benchmarks.md (full runs) and bench-results/latest.json.
 *
 * Usage: bun scripts/bench/run.ts [--quick] [--only small,etcd,...] [--contenders direct,etcd-gateway,...]
 *                                 [--rounds N] [--json path] [--doc path] [--build] [--keep-logs]
 *
 * @module
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { etcdCluster, stopBackends } from "./backends.ts";
import { benchDir, installExitHooks, keepBenchDir } from "./children.ts";
import { CONTENDERS, prepareGateway, ROOT } from "./contenders.ts";
import { fmt, json, markdown, Results, type RunRecord } from "./report.ts";
import { describeMachine, ensureTools } from "./tools.ts";
import { WORKLOAD_IDS, type Measured, type Plan, type Sample, type WorkloadId } from "./types.ts";
import { WORKLOADS } from "./workloads.ts";

const USAGE = `Usage: bun scripts/bench/run.ts [options]
  --quick               one round, short durations (1 s wrk, 1 s iperf3, 500 idle connections, 5 blackhole connections)
  --only <list>         workloads to run: ${WORKLOAD_IDS.join(",")}
  --contenders <list>   contenders to run: ${CONTENDERS.map((c) => c.id).join(",")}
  --rounds <n>          rounds (default 3, --quick 1)
  --json <path>         JSON output (default bench-results/latest.json)
  --doc <path>          Markdown output (default docs/benchmarks.md for a full run, bench-results/latest.md otherwise)
  --build               rebuild dist/etcd-gateway first (it is built anyway when missing)
  --keep-logs           keep the children's logs and configs (path printed at the end)
`;

const FULL: Plan = {
  quick: false,
  rounds: 3,
  wrkSeconds: { small: 5, etcd: 2, churn: 2 },
  wrkWarmSeconds: 1,
  wrkConnections: 64,
  wrkThreads: 1,
  iperfSeconds: 4,
  idleConnections: 5000,
  idleBatch: 250,
  idlePauseMs: 10,
  blackholeConnections: 20,
  blackholeSpacingMs: 50,
  attemptTimeoutMs: 5000,
};

const QUICK: Plan = {
  ...FULL,
  quick: true,
  rounds: 1,
  wrkSeconds: { small: 1, etcd: 1, churn: 1 },
  iperfSeconds: 1,
  idleConnections: 500,
  blackholeConnections: 5,
  attemptTimeoutMs: 2000,
};

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n${USAGE}`);
  process.exit(2);
}

/** A comma list checked against `known`. */
function pickList<T extends string>(flag: string, value: string | undefined, known: readonly T[]): T[] | null {
  if (value === undefined) return null;
  const items = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const i of items) if (!(known as readonly string[]).includes(i)) fail(`--${flag}: unknown ${JSON.stringify(i)}; known: ${known.join(", ")}`);
  return items as T[];
}

/** One line of progress for stderr. */
function summary(m: Measured): string {
  const values = Object.entries(m.values).map(([k, v]) => `${k}=${fmt(v, v >= 100 ? 0 : 2)}`);
  const failures = Object.entries(m.failures).map(([k, v]) => `FAILED ${k}: ${v}`);
  return [...values, ...failures].join("  ");
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        quick: { type: "boolean", default: false },
        only: { type: "string" },
        contenders: { type: "string" },
        rounds: { type: "string" },
        json: { type: "string" },
        doc: { type: "string" },
        build: { type: "boolean", default: false },
        "keep-logs": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  const args = parsed.values;
  if (args.help) {
    process.stdout.write(USAGE);
    return;
  }
  const plan: Plan = { ...(args.quick ? QUICK : FULL) };
  if (args.rounds !== undefined) {
    const n = Number(args.rounds);
    if (!Number.isInteger(n) || n < 1 || n > 20) fail(`--rounds: expected 1..20, got ${JSON.stringify(args.rounds)}`);
    plan.rounds = n;
  }
  const onlyIds = pickList<WorkloadId>("only", args.only, WORKLOAD_IDS);
  const contenderIds = pickList("contenders", args.contenders, CONTENDERS.map((c) => c.id));
  const workloads = WORKLOADS.filter((w) => onlyIds === null || onlyIds.includes(w.id));
  const contenders = CONTENDERS.filter((c) => (contenderIds === null ? c.variant !== true : contenderIds.includes(c.id)));
  const partial = args.quick || onlyIds !== null || contenderIds !== null || plan.rounds < FULL.rounds;
  const mode = partial ? [args.quick ? "--quick" : "", onlyIds ? `--only ${onlyIds.join(",")}` : "", contenderIds ? `--contenders ${contenderIds.join(",")}` : "", args.rounds ? `--rounds ${plan.rounds}` : ""].filter(Boolean).join(" ") : "full";
  // A path given is taken from the current directory (absolute ones as they are), the defaults from the repository.
  const jsonPath = args.json === undefined ? join(ROOT, "bench-results/latest.json") : resolve(args.json);
  const docPath = args.doc === undefined ? join(ROOT, partial ? "bench-results/latest.md" : "docs/benchmarks.md") : resolve(args.doc);

  installExitHooks();
  if (args["keep-logs"]) keepBenchDir();
  const t0 = performance.now();
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const notes: string[] = [];

  notes.push(...(await prepareGateway(args.build)));
  const missing = await ensureTools();
  if (missing.length > 0) notes.push(`Missing tools (the cells that need them say so): ${missing.join(", ")}.`);
  const machine = await describeMachine();
  process.stderr.write(`bench: ${mode} run: ${workloads.map((w) => w.id).join(", ")} × ${contenders.map((c) => c.id).join(", ")} × ${plan.rounds} round(s); logs in ${benchDir()}\n`);

  const samples: Sample[] = [];
  try {
    for (const w of workloads) {
      const tw = performance.now();
      const runs = contenders.filter((c) => c.skips?.[w.id] === undefined);
      // The etcd cluster boots while the idle workload runs: idle measures memory, which the
      // boot's CPU use does not disturb, and the run saves the boot's seconds.
      if (w.id === "idle" && workloads.some((x) => x.id === "etcd" || x.id === "failover")) void etcdCluster().catch(() => {});
      let env;
      try {
        env = await w.setup(plan);
      } catch (e) {
        const why = `backend did not start: ${e instanceof Error ? e.message : String(e)}`;
        process.stderr.write(`bench: [${w.id}] ${why}\n`);
        for (let round = 1; round <= plan.rounds; round++) {
          for (const c of runs) samples.push({ workload: w.id, contender: c.id, round, values: {}, failures: { "*": why }, details: {} });
        }
        continue;
      }
      try {
        for (let round = 1; round <= plan.rounds; round++) {
          for (const c of runs) {
            const tm = performance.now();
            let m: Measured;
            try {
              m = await env.measure(c, round);
            } catch (e) {
              m = { values: {}, failures: { "*": e instanceof Error ? e.message : String(e) }, details: {} };
            }
            samples.push({ workload: w.id, contender: c.id, round, ...m });
            process.stderr.write(`bench: [${w.id} ${round}/${plan.rounds}] ${c.id} (${((performance.now() - tm) / 1000).toFixed(1)} s): ${summary(m)}\n`);
          }
        }
      } finally {
        await env.teardown?.();
      }
      process.stderr.write(`bench: [${w.id}] done in ${((performance.now() - tw) / 1000).toFixed(1)} s\n`);
    }
  } finally {
    await stopBackends();
  }

  const record: RunRecord = {
    startedAt,
    elapsedS: (performance.now() - t0) / 1000,
    mode,
    plan,
    machine,
    contenders,
    workloads,
    samples,
    notes,
  };
  const results = new Results(record);
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, `${JSON.stringify(json(results), null, 2)}\n`);
  mkdirSync(dirname(docPath), { recursive: true });
  writeFileSync(docPath, markdown(results));
  process.stdout.write(`${results.table()}\n\n${results.targetsTable()}\n\n`);
  process.stderr.write(`bench: took ${record.elapsedS.toFixed(0)} s; wrote ${relative(ROOT, docPath)} and ${relative(ROOT, jsonPath)}${args["keep-logs"] ? `; logs kept in ${benchDir()}` : ""}\n`);
}

try {
  await main();
  process.exit(0);
} catch (e) {
  process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
}
