/**
 * `bun run bench:fleet`: what a fleet of gateways costs the etcd cluster behind it. N real gateway
 * processes of each fleet (ours, etcd's own, optionally ours with other flags or an older binary,
 * optionally ours with discovery on) run, one fleet at a time, in front of one real 3-member etcd
 * cluster, after a baseline without gateways; in each scenario (steady, a member down, a leader
 * change) one window measures the members' CPU, requests and new connections, memory, and a
 * client's latency. Writes bench-results/fleet.md (or `--doc`) and bench-results/fleet.json.
 * `--balance` runs the balance mode instead (scripts/bench/fleet-balance.ts): fleets carrying
 * clients through member faults, and how their connections spread over the members.
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startCluster, type Cluster } from "../../test/support/cluster.ts";
import type { FakeDns } from "../../test/support/dns.ts";
import { sleep } from "../../test/support/net.ts";
import { which } from "../../test/support/process.ts";
import { benchDir, installExitHooks, keepBenchDir, onCleanup } from "./children.ts";
import { gatewayBinary, prepareGateway, ROOT } from "./contenders.ts";
import { fleetMarkdown } from "./fleet-doc.ts";
import { ETCD_GW, fleetMemory, NONE, OURS, OURS_SRV, OURS_SYNC, oursBefore, oursWith, SCENARIO_IDS, SRV_DOMAIN, startFleet, startSrvDns, type FleetDef, type FleetTarget, type RunningFleet, type ScenarioId } from "./fleet-fleets.ts";
import { measureWindow, type WindowResult } from "./fleet-measure.ts";
import { fleetJson, type FleetPlan, type FleetRecord, type FleetRun } from "./fleet-report.ts";
import { disrupt, prepareCluster, restore, ROLES } from "./fleet-scenarios.ts";
import { fmt } from "./report.ts";
import { describeMachine } from "./tools.ts";

const USAGE = `Usage: bun scripts/bench/fleet.ts [options]
       bun scripts/bench/fleet.ts --balance [options]   (balance after faults; --balance --help lists its options)
  --quick                 CI smoke run: 10 gateways, 3 s windows, steady state only
  --size <n>              gateways per fleet (default 150, --quick 10)
  --window <s>            seconds per measurement window (default 20, --quick 3)
  --settle <s>            seconds between a fleet being up (or a member back) and the next window (default 10, --quick 2)
  --start-rate <n>        gateways started per second (default 20)
  --scenarios <list>      ${SCENARIO_IDS.join(",")} (default all, --quick steady)
  --client-rate <n>       client requests per second, half puts, half linearizable ranges (default 100)
  --ours-args "<flags>"   also run a fleet of ours with these flags added
  --before <path>         also run a fleet of an older binary of ours (default flags)
  --discovery             also run ours with --endpoints-auto-sync-interval, and with --discovery-srv (steady only)
  --sync-interval <s>     member-list sync interval and SRV TTL of the discovery fleets (default 10)
  --doc <path>            Markdown output (default bench-results/fleet.md)
  --json <path>           JSON output (default bench-results/fleet.json)
  --build                 rebuild dist/etcd-gateway first (it is built anyway when missing)
  --keep-logs             keep every child's log (path printed at the end)
`;

const FULL: FleetPlan = { quick: false, size: 150, startRate: 20, windowS: 20, settleS: 10, scenarios: [...SCENARIO_IDS], clientRate: 100, discovery: false, syncIntervalS: 10 };
const QUICK: FleetPlan = { ...FULL, quick: true, size: 10, windowS: 3, settleS: 2, scenarios: ["steady"] };

/** The baseline again, at the end: how far the cluster's own CPU drifted over the run. */
const NONE_END: FleetDef = { id: "none-end", title: "no gateways (again, at the end)", command: null, scenarios: ["steady"] };

function fail(message: string): never {
  process.stderr.write(`bench:fleet: ${message}\n${USAGE}`);
  process.exit(2);
}

/** `value` as a number in min..max, or the usage error. */
function numberArg(flag: string, value: string | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) fail(`--${flag}: expected ${min}..${max}, got ${JSON.stringify(value)}`);
  return n;
}

/** The command line read into the plan, the fleets and the outputs. */
function parse(argv: string[]) {
  // The value of --ours-args starts with a dash, which parseArgs takes for a flag of its own.
  const i = argv.indexOf("--ours-args");
  if (i >= 0 && i + 1 < argv.length) argv.splice(i, 2, `--ours-args=${argv[i + 1]}`);
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        quick: { type: "boolean", default: false }, size: { type: "string" }, window: { type: "string" }, settle: { type: "string" },
        "start-rate": { type: "string" }, scenarios: { type: "string" }, "client-rate": { type: "string" }, "ours-args": { type: "string" },
        before: { type: "string" }, discovery: { type: "boolean", default: false }, "sync-interval": { type: "string" },
        doc: { type: "string" }, json: { type: "string" }, build: { type: "boolean", default: false }, "keep-logs": { type: "boolean", default: false },
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
  const base = values.quick ? QUICK : FULL;
  const scenarios = values.scenarios === undefined ? base.scenarios : values.scenarios.split(",").map((s) => s.trim());
  for (const s of scenarios) if (!(SCENARIO_IDS as readonly string[]).includes(s)) fail(`--scenarios: unknown ${JSON.stringify(s)}; known: ${SCENARIO_IDS.join(", ")}`);
  const plan: FleetPlan = {
    quick: values.quick,
    size: numberArg("size", values.size, base.size, 1, 2000),
    startRate: numberArg("start-rate", values["start-rate"], base.startRate, 1, 200),
    windowS: numberArg("window", values.window, base.windowS, 1, 600),
    settleS: numberArg("settle", values.settle, base.settleS, 0, 600),
    scenarios: SCENARIO_IDS.filter((s) => scenarios.includes(s)),
    clientRate: numberArg("client-rate", values["client-rate"], base.clientRate, 1, 10_000),
    discovery: values.discovery,
    syncIntervalS: numberArg("sync-interval", values["sync-interval"], base.syncIntervalS, 1, 3600),
  };
  plan.size = Math.round(plan.size);
  const fleets: FleetDef[] = [NONE, OURS, ETCD_GW];
  const oursArgs = values["ours-args"]?.trim().split(/\s+/).filter((a) => a !== "");
  if (oursArgs !== undefined && oursArgs.length > 0) fleets.push(oursWith(oursArgs));
  if (values.before !== undefined) fleets.push(oursBefore(values.before));
  if (plan.discovery) fleets.push(OURS_SYNC, OURS_SRV);
  if (!plan.quick) fleets.push(NONE_END);
  return { plan, fleets, doc: values.doc ?? "bench-results/fleet.md", json: values.json ?? "bench-results/fleet.json", build: values.build, keepLogs: values["keep-logs"] };
}

/** One gateway's command for the report: placeholders for the port and the members, the snapshot shown as dist/etcd-gateway. */
function describe(def: FleetDef, t: FleetTarget): string | null {
  if (def.command === null) return null;
  const shown: FleetTarget = { ...t, endpoints: "<m0>,<m1>,<m2>", dns: t.dns && { ...t.dns, server: "<dns>" } };
  return def.command(0, shown).map((a) => (a === gatewayBinary() ? "dist/etcd-gateway" : a.replace("127.0.0.1:0", "127.0.0.1:<port>"))).join(" ");
}

/** A line of progress for one window. */
function progress(f: FleetRun, w: WindowResult): string {
  const rate = (xs: (number | null)[], d: number) => xs.map((x) => (x === null ? "-" : fmt(x, d))).join("/");
  const client = w.client === null ? "no client report" : `p99 put ${fmt(w.client.put.p99Ms ?? Number.NaN, 1)} ms, range ${fmt(w.client.range.p99Ms ?? Number.NaN, 1)} ms`;
  return `bench:fleet: [${f.id} ${w.scenario}] etcd ${fmt(w.etcdCores, 3)} cores; req/s ${rate(w.requests.map((r) => r?.total ?? null), 0)}; conns/s ${rate(w.connsPerS, 1)}; gateways ${w.fleetCores === null ? "-" : fmt(w.fleetCores, 2)} cores; ${client}${w.failures.length > 0 ? `; FAILED: ${w.failures.join("; ")}` : ""}\n`;
}

interface RunContext {
  plan: FleetPlan;
  cluster: Cluster;
  target: FleetTarget;
  dns: FakeDns | null;
}

/** Starts one fleet, runs its windows (restoring after each), reads its memory, stops it. */
async function runFleet(def: FleetDef, ctx: RunContext): Promise<FleetRun> {
  const { plan, cluster } = ctx;
  const run: FleetRun = { id: def.id, title: def.title, command: describe(def, ctx.target), gateways: 0, startSeconds: 0, restarts: 0, memory: null, windows: [], startTransitions: null, transitions: null, failure: null };
  let fleet: RunningFleet | null = null;
  try {
    await prepareCluster(cluster);
    if (def.command !== null) {
      process.stderr.write(`bench:fleet: [${def.id}] starting ${plan.size} gateways, ${plan.startRate}/s\n`);
      fleet = await startFleet(def, plan.size, plan.startRate, ctx.target);
      Object.assign(run, { gateways: fleet.gateways.length, startSeconds: fleet.startSeconds, restarts: fleet.restarts });
    }
    await sleep(plan.settleS * 1000);
    run.startTransitions = fleet?.transitions() ?? null;
    for (const scenario of plan.scenarios.filter((s) => def.scenarios === undefined || def.scenarios.includes(s))) {
      const w = await measureWindow({
        fleet: def.id, scenario, seconds: plan.windowS, cluster, fleetPids: fleet?.pids() ?? [],
        clientMember: ROLES.client, clientRate: plan.clientRate, dns: ctx.dns, disrupt: () => disrupt(scenario, cluster),
        transitions: () => fleet?.transitions() ?? null,
      });
      w.failures.push(...(fleet?.dead() ?? []).slice(0, 3).map((d) => `gateway died: ${d}`));
      run.windows.push(w);
      process.stderr.write(progress(run, w));
      if (fleet !== null && run.memory === null) run.memory = fleetMemory(fleet.pids());
      if (scenario === "member-down" as ScenarioId) {
        await restore(scenario, cluster);
        await sleep(plan.settleS * 1000);
      }
    }
  } catch (e) {
    run.failure = e instanceof Error ? e.message : String(e);
    process.stderr.write(`bench:fleet: [${def.id}] failed: ${run.failure}\n`);
  } finally {
    if (fleet !== null) run.transitions = fleet.transitions();
    await fleet?.stop();
  }
  return run;
}

async function main(): Promise<void> {
  const args = parse(process.argv.slice(2));
  const { plan } = args;
  installExitHooks();
  if (args.keepLogs) keepBenchDir();
  const t0 = performance.now();
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const notes = await prepareGateway(args.build);
  for (const tool of ["etcd", "etcdctl", "ss", "stdbuf"]) which(tool);
  const machine = await describeMachine();
  process.stderr.write(`bench:fleet: ${plan.size} gateways per fleet, ${plan.windowS} s windows, scenarios ${plan.scenarios.join(", ")}; fleets ${args.fleets.map((f) => f.id).join(", ")}; logs in ${benchDir()}\n`);
  const cluster = await startCluster({ size: 3, timeoutMs: 30_000 });
  const removeCleanup = onCleanup(() => cluster.stop());
  let dns: FakeDns | null = null;
  const fleets: FleetRun[] = [];
  try {
    if (plan.discovery) dns = await startSrvDns(cluster.members, plan.syncIntervalS);
    const target: FleetTarget = { endpoints: cluster.endpoints, syncIntervalS: plan.syncIntervalS, ...(dns === null ? {} : { dns: { server: dns.server, domain: SRV_DOMAIN } }) };
    for (const def of args.fleets) fleets.push(await runFleet(def, { plan, cluster, target, dns }));
  } finally {
    dns?.close();
    removeCleanup();
    await cluster.stop();
  }
  const command = `bun scripts/bench/fleet.ts${process.argv.length > 2 ? ` ${process.argv.slice(2).map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" ")}` : ""}`;
  const record: FleetRecord = { startedAt, elapsedS: (performance.now() - t0) / 1000, command, plan, machine, notes, fleets };
  const docPath = resolve(ROOT, args.doc);
  const previous = existsSync(docPath) ? readFileSync(docPath, "utf8") : null;
  for (const [path, text] of [[args.json, `${JSON.stringify(fleetJson(record), null, 2)}\n`], [args.doc, fleetMarkdown(record, previous)]] as const) {
    mkdirSync(dirname(resolve(ROOT, path)), { recursive: true });
    writeFileSync(resolve(ROOT, path), text);
  }
  process.stderr.write(`bench:fleet: took ${fmt(record.elapsedS, 0)} s; wrote ${relative(ROOT, resolve(ROOT, args.doc))} and ${relative(ROOT, resolve(ROOT, args.json))}${args.keepLogs ? `; logs kept in ${benchDir()}` : ""}\n`);
  const failed = fleets.filter((f) => f.failure !== null || f.windows.some((w) => w.failures.length > 0));
  if (failed.length > 0) throw new Error(`fleets with failures: ${failed.map((f) => f.id).join(", ")} (see the report)`);
}

try {
  const argv = process.argv.slice(2);
  if (argv.includes("--balance")) await (await import("./fleet-balance.ts")).balanceMain(argv.filter((a) => a !== "--balance"));
  else await main();
  process.exit(0);
} catch (e) {
  process.stderr.write(`bench:fleet: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
}
