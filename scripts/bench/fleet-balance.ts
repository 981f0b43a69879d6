/**
 * `bun run bench:fleet --balance`: how the connections of a fleet of gateways, each carrying
 * clients, spread over the etcd members after faults (issue 22, "Fleet balance"). One real
 * 3-member etcd cluster; per contender (ours with default flags, ours rebalancing open connections,
 * etcd's own gateway, optionally an older build of ours) and scenario (rolling restart, outage,
 * flapping member) a fresh fleet of N gateways with clients on every one, the fault, and readings
 * once a second (scripts/bench/fleet-balance-run.ts). Writes the section "Balance after faults"
 * into `--doc` (between its markers; bench-results/fleet-balance.md by default, docs/fleet.md for
 * the recorded run) with one SVG chart per scenario beside it, and bench-results/fleet-balance.json.
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startCluster } from "../../test/support/cluster.ts";
import { which } from "../../test/support/process.ts";
import { benchDir, installExitHooks, keepBenchDir, onCleanup } from "./children.ts";
import { gatewayBinary, gatewayHasFlag, prepareGateway, ROOT } from "./contenders.ts";
import { analyse } from "./fleet-balance-analysis.ts";
import { BALANCE_SCENARIOS, type BalanceScenario } from "./fleet-balance-faults.ts";
import { balanceJson, balanceSection, charts, type BalanceRecord, type ContenderRecord } from "./fleet-balance-report.ts";
import { runScenario, type BalanceContender, type BalancePlan, type ScenarioRun } from "./fleet-balance-run.ts";
import { spliceBalance } from "./fleet-doc.ts";
import { ETCD_GW, OURS, oursBefore, oursCommand, type FleetDef, type FleetTarget } from "./fleet-fleets.ts";
import { fmt } from "./report.ts";
import { describeMachine } from "./tools.ts";

const CONTENDER_IDS = ["ours", "ours-rebalance", "etcd-gw", "before"] as const;
type ContenderId = (typeof CONTENDER_IDS)[number];
const DEFAULT_REBALANCE_ARGS = "--rebalance-interval=5s";

const USAGE = `Usage: bun scripts/bench/fleet.ts --balance [options]
  --quick                 smoke run: 20 gateways, short faults and observation
  --size <n>              gateways per fleet (default 150, --quick 20)
  --start-rate <n>        gateways started per second (default 20)
  --scenarios <list>      ${BALANCE_SCENARIOS.join(",")} (default all)
  --contenders <list>     ${CONTENDER_IDS.join(",")} (default all; before only with --before;
                          ours-rebalance is skipped, with a note, when the binary lacks its flag)
  --rebalance-args "<f>"  the flags of ours-rebalance (default "${DEFAULT_REBALANCE_ARGS}")
  --before <path>         an older binary of ours to run as the contender "before"
  --binary <path>         run this build of ours instead of dist/etcd-gateway
  --build                 rebuild dist/etcd-gateway first (it is built anyway when missing)
  --doc <path>            Markdown the section goes into (default bench-results/fleet-balance.md);
                          charts go to <dir of doc>/<doc name without .md>/balance-<scenario>.svg
  --json <path>           JSON output (default bench-results/fleet-balance.json)
  --keep-logs             keep every child's log (path printed at the end)
`;

const FULL: BalancePlan = {
  quick: false, size: 150, startRate: 20, clientsPerGateway: 3, requestEveryMs: 3000, shortEveryMs: 10_000, requestTimeoutMs: 5000,
  settleS: 15, steadyS: 20,
  timing: { rollingDownS: 10, rollingGapS: 15, outageDownS: 10, outageStaggerS: 4, flapDownS: 5, flapUpS: 8, flapForS: 60 },
  observeS: 90, flapObserveS: 60, rebalanceMaxS: 300, band: [0.2, 0.47], bandHoldS: 10, shareWindowS: 30, scenarios: [...BALANCE_SCENARIOS],
};
const QUICK: BalancePlan = {
  ...FULL, quick: true, size: 20, settleS: 4, steadyS: 4,
  timing: { rollingDownS: 2, rollingGapS: 3, outageDownS: 3, outageStaggerS: 2, flapDownS: 2, flapUpS: 3, flapForS: 10 },
  observeS: 15, flapObserveS: 10, rebalanceMaxS: 40, bandHoldS: 5, shareWindowS: 10,
};

function fail(message: string): never {
  process.stderr.write(`bench:fleet --balance: ${message}\n${USAGE}`);
  process.exit(2);
}

function list<T extends string>(flag: string, value: string | undefined, known: readonly T[]): T[] | undefined {
  if (value === undefined) return undefined;
  const xs = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const x of xs) if (!(known as readonly string[]).includes(x)) fail(`--${flag}: unknown ${JSON.stringify(x)}; known: ${known.join(", ")}`);
  return known.filter((k) => xs.includes(k));
}

/** The command line read into the plan, the contenders asked for and the outputs. */
function parse(argv: string[]) {
  // The value of --rebalance-args starts with a dash, which parseArgs takes for a flag of its own.
  const i = argv.indexOf("--rebalance-args");
  if (i >= 0 && i + 1 < argv.length) argv.splice(i, 2, `--rebalance-args=${argv[i + 1]}`);
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        quick: { type: "boolean", default: false }, size: { type: "string" }, "start-rate": { type: "string" }, scenarios: { type: "string" },
        contenders: { type: "string" }, "rebalance-args": { type: "string" }, before: { type: "string" }, binary: { type: "string" },
        build: { type: "boolean", default: false }, doc: { type: "string" }, json: { type: "string" }, "keep-logs": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const plan: BalancePlan = { ...(values.quick ? QUICK : FULL) };
  const num = (flag: string, v: string | undefined, fallback: number, max: number) => {
    const n = v === undefined ? fallback : Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) fail(`--${flag}: expected a whole number 1..${max}, got ${JSON.stringify(v)}`);
    return n;
  };
  plan.size = num("size", values.size, plan.size, 2000);
  plan.startRate = num("start-rate", values["start-rate"], plan.startRate, 200);
  plan.scenarios = list("scenarios", values.scenarios, BALANCE_SCENARIOS) ?? plan.scenarios;
  const asked = list("contenders", values.contenders, CONTENDER_IDS);
  if (asked?.includes("before") && values.before === undefined) fail("--contenders before needs --before <path>");
  if (values.before !== undefined && !existsSync(values.before)) fail(`--before: ${values.before} does not exist`);
  const ids = asked ?? CONTENDER_IDS.filter((c) => c !== "before" || values.before !== undefined);
  const rebalanceArgs = (values["rebalance-args"] ?? DEFAULT_REBALANCE_ARGS).trim().split(/\s+/).filter((a) => a !== "");
  return {
    plan, ids, rebalanceArgs, before: values.before, binary: values.binary, build: values.build, keepLogs: values["keep-logs"],
    doc: values.doc ?? "bench-results/fleet-balance.md", json: values.json ?? "bench-results/fleet-balance.json",
  };
}

/** The contenders asked for; ours-rebalance marked skipped when the binary does not list its flag. */
function contenders(ids: readonly ContenderId[], rebalanceArgs: readonly string[], before: string | undefined): BalanceContender[] {
  return ids.map((id): BalanceContender => {
    switch (id) {
      case "ours":
        return { def: { ...OURS, title: "etcd-gateway (default flags: --policy sticky)" }, rebalances: false };
      case "ours-rebalance": {
        const flag = rebalanceArgs[0]?.split("=")[0] ?? "";
        const def: FleetDef = { id, title: `etcd-gateway ${rebalanceArgs.join(" ")}`, command: (port, t) => oursCommand(gatewayBinary(), port, t, rebalanceArgs) };
        return { def, rebalances: true, ...(gatewayHasFlag(flag) ? {} : { skip: `the binary's \`start --help\` does not list \`${flag}\`` }) };
      }
      case "etcd-gw":
        return { def: { ...ETCD_GW, title: "etcd's gateway (etcd gateway start, round-robin per connection)" }, rebalances: false };
      case "before":
        return { def: oursBefore(before!), rebalances: false };
    }
  });
}

/** One gateway's command for the report: placeholders for the port and the members. */
function describe(def: FleetDef): string {
  const shown: FleetTarget = { endpoints: "<m0>,<m1>,<m2>", syncIntervalS: 10 };
  return (def.command?.(0, shown) ?? []).map((a) => (a === gatewayBinary() ? "dist/etcd-gateway" : a.replace("127.0.0.1:0", "127.0.0.1:<port>"))).join(" ");
}

/** A line of progress for one run. */
function progress(run: ScenarioRun, plan: BalancePlan): string {
  const res = analyse(run, plan);
  const sh = (xs: readonly number[] | undefined) => (xs === undefined ? "-" : xs.map((x) => fmt(x * 100, 0)).join("/"));
  const errs = Object.values(res.errors).reduce((a, b) => a + b, 0);
  const herd = res.herd === null ? "" : `; herd ${res.herd.ratio === null ? "-" : `${fmt(res.herd.ratio, 1)}x`}`;
  return `bench:fleet --balance: [${run.contender} ${run.scenario}] new ${sh(res.newShares?.shares)} %; open at end ${sh(res.openShares?.shares)} %${herd}; ${res.ok} ok, ${errs} errors${run.failure === null ? "" : `; FAILED: ${run.failure}`}\n`;
}

/** Runs every contender's scenarios in front of one cluster. */
async function runAll(list: readonly BalanceContender[], plan: BalancePlan): Promise<ContenderRecord[]> {
  const cluster = await startCluster({ size: 3, timeoutMs: 30_000 });
  const removeCleanup = onCleanup(() => cluster.stop());
  const out: ContenderRecord[] = [];
  try {
    const target: FleetTarget = { endpoints: cluster.endpoints, syncIntervalS: 10 };
    for (const c of list) {
      const rec: ContenderRecord = { id: c.def.id, title: c.def.title, command: describe(c.def), rebalances: c.rebalances, skipped: c.skip ?? null, runs: [] };
      out.push(rec);
      if (c.skip !== undefined) continue;
      for (const s of plan.scenarios) {
        process.stderr.write(`bench:fleet --balance: [${c.def.id} ${s}] starting ${plan.size} gateways and their clients\n`);
        const { run, fatal } = await runScenario(c, s, cluster, target, plan);
        rec.runs.push(run);
        process.stderr.write(progress(run, plan));
        if (fatal) {
          rec.skipped = `its fleet did not start: ${run.failure}`;
          break;
        }
      }
    }
  } finally {
    removeCleanup();
    await cluster.stop();
  }
  return out;
}

/** Writes the JSON, the charts and the section into the document (replacing its section, or adding one). */
async function write(record: BalanceRecord, docArg: string, jsonArg: string): Promise<void> {
  const doc = resolve(ROOT, docArg);
  const json = resolve(ROOT, jsonArg);
  const imagesName = basename(doc, ".md");
  const imagesDir = join(dirname(doc), imagesName);
  mkdirSync(imagesDir, { recursive: true });
  mkdirSync(dirname(json), { recursive: true });
  writeFileSync(json, `${JSON.stringify(balanceJson(record), null, 2)}\n`);
  for (const [name, svg] of await charts(record)) writeFileSync(join(imagesDir, name), svg);
  const section = balanceSection(record, imagesName);
  const previous = existsSync(doc) ? readFileSync(doc, "utf8") : "# Fleet balance\n";
  writeFileSync(doc, spliceBalance(previous, section));
  process.stderr.write(`bench:fleet --balance: took ${fmt(record.elapsedS, 0)} s; wrote ${relative(ROOT, doc)}, ${relative(ROOT, imagesDir)}/*.svg and ${relative(ROOT, json)}\n`);
}

/** The balance mode's main, given the command line without `--balance`. @throws when a run failed (after writing the report) */
export async function balanceMain(argv: string[]): Promise<void> {
  const args = parse([...argv]);
  const { plan } = args;
  installExitHooks();
  if (args.keepLogs) keepBenchDir();
  const t0 = performance.now();
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const notes = await prepareGateway(args.build, args.binary);
  for (const tool of ["etcd", "etcdctl", "ss", "stdbuf"]) which(tool);
  const machine = await describeMachine();
  const list = contenders(args.ids, args.rebalanceArgs, args.before);
  for (const c of list) if (c.skip !== undefined) process.stderr.write(`bench:fleet --balance: skipping ${c.def.id}: ${c.skip}\n`);
  process.stderr.write(`bench:fleet --balance: ${plan.size} gateways per fleet, scenarios ${plan.scenarios.join(", ")}; contenders ${list.map((c) => c.def.id).join(", ")}; logs in ${benchDir()}\n`);
  const records = await runAll(list, plan);
  const command = `bun run bench:fleet --balance${argv.length > 0 ? ` ${argv.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" ")}` : ""}`;
  const record: BalanceRecord = { startedAt, elapsedS: (performance.now() - t0) / 1000, command, plan, machine, notes, contenders: records };
  await write(record, args.doc, args.json);
  const failed = records.filter((c) => c.runs.some((r) => r.failure !== null) || (c.skipped !== null && c.runs.length > 0));
  if (failed.length > 0) throw new Error(`contenders with failures: ${failed.map((c) => c.id).join(", ")} (see the report)`);
}

if (import.meta.main) {
  try {
    await balanceMain(process.argv.slice(2));
    process.exit(0);
  } catch (e) {
    process.stderr.write(`bench:fleet --balance: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  }
}
