/**
 * What the soak and linearizability runs share: their common flags, a run dir and a progress
 * printer, the 3-member cluster and the gateway in front of it (both stopped at teardown), and
 * member chaos that notes how many client connections the gateway had on each member it took down.
 *
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseDuration } from "../../src/duration.ts";
import { startCluster, type Cluster } from "../support/cluster.ts";
import { startGatewayProcess, type GatewayProcess } from "../support/gateway.ts";
import { seededRandom, type Random } from "../support/random.ts";
import { onTeardown, UsageError } from "../support/teardown.ts";
import { startMemberChaos, type MemberChaos, type MemberChaosOptions, type MemberFault } from "./member-chaos.ts";

/** The `node:util` parseArgs options every chaos script takes. */
export const COMMON_OPTIONS = {
  faults: { type: "string", default: "kill" },
  seed: { type: "string" },
  json: { type: "string" },
  "keep-logs": { type: "boolean", default: false },
  "gateway-arg": { type: "string", multiple: true, default: [] as string[] },
  help: { type: "boolean", default: false },
} as const;

/** Their usage lines. */
export const COMMON_USAGE = `  --faults <list>  how members go down: kill (SIGKILL, restart), pause (SIGSTOP, SIGCONT), or kill,pause (default kill)
  --seed <n>       seed of the random choices (default: random, printed)
  --json <file>    also write the summary as JSON to this file
  --keep-logs      keep the run dir (gateway log and more) instead of removing it; a failed run keeps it anyway
  --gateway-arg <flag>  one more flag for the gateway, repeatable (e.g. --gateway-arg=--policy=round-robin)
`;

/**
 * The integer value of flag `flag`, within [min, max].
 *
 * @throws {UsageError} naming the flag and the range otherwise
 * @example intFlag("8", "--clients", 1, 64) // 8
 */
export function intFlag(text: string, flag: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${flag}: an integer from ${min} to ${max}, not ${JSON.stringify(text)}`);
  return n;
}

/**
 * The `--duration` value in milliseconds: a Go duration of at least 5 s.
 *
 * @throws {UsageError} naming the flag otherwise
 */
export function durationFlag(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (e) {
    throw new UsageError(`--duration: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (ms < 5000) throw new UsageError(`--duration: at least 5s, not ${JSON.stringify(text)}`);
  return ms;
}

/** The parsed values of COMMON_OPTIONS. */
export interface CommonValues {
  faults: string;
  seed?: string;
  "keep-logs": boolean;
  "gateway-arg": string[];
}

export interface ChaosRun {
  seed: number;
  random: Random;
  faults: MemberFault[];
  /** Prints `line` with the seconds since the run started. */
  say(line: string): void;
  /** Where the gateway log (and whatever else the script keeps) goes; removed at teardown unless kept. */
  runDir: string;
  /** Keeps the run dir after the run. */
  keep(): void;
  cluster: Cluster;
  gw: GatewayProcess;
}

/**
 * Validates the common flags, then starts a 3-member cluster and the gateway (admin endpoint on,
 * `--health-interval=500ms` and the `--gateway-arg` flags), all stopped at teardown.
 *
 * @param describe what the first line says about the run, e.g. "60s, 8 clients"
 * @throws {UsageError} on a bad `--faults` or `--seed`; an Error when the cluster or the gateway does not start
 */
export async function startChaosRun(name: string, values: CommonValues, describe: string): Promise<ChaosRun> {
  const faults = values.faults.split(",").map((f) => f.trim());
  if (faults.length === 0 || !faults.every((f): f is MemberFault => f === "kill" || f === "pause")) {
    throw new UsageError(`--faults: kill, pause or kill,pause, not ${JSON.stringify(values.faults)}`);
  }
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed)) throw new UsageError(`--seed: an integer, not ${JSON.stringify(values.seed)}`);
  const t0 = performance.now();
  const say = (line: string) => process.stdout.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const runDir = mkdtempSync(join(tmpdir(), `etcd-gateway-${name}-`));
  let kept = values["keep-logs"];
  onTeardown(() => {
    if (kept) say(`logs kept in ${runDir}`);
    else rmSync(runDir, { recursive: true, force: true });
  });
  const gatewayArgs = values["gateway-arg"];
  say(`${name}: ${describe}, faults ${faults.join(",")}, seed ${seed}${gatewayArgs.length > 0 ? `, gateway ${gatewayArgs.join(" ")}` : ""}`);

  const cluster = await startCluster({ size: 3 });
  onTeardown(() => cluster.stop());
  const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, "--health-interval=500ms", ...gatewayArgs], { admin: true, logFile: join(runDir, "gateway.log") });
  onTeardown(() => gw.stop("SIGTERM", 5000));
  say(`cluster ${cluster.endpoints}; gateway ${gw.listen}, admin ${gw.adminURL}, pid ${gw.pid}`);
  return { seed, random: seededRandom(seed), faults, say, runDir, keep: () => (kept = true), cluster, gw };
}

/** Member chaos on a run, and the gateway's client connections on each member it took down (same order as `chaos.outages`). */
export interface RunChaos {
  chaos: MemberChaos;
  connectionsAtFault: number[];
}

/** Starts member chaos on `run` (stopped at teardown), logging through `run.say`. */
export function startRunChaos(run: ChaosRun, opts: Pick<MemberChaosOptions, "upMs" | "downMs"> = {}): RunChaos {
  const connectionsAtFault: number[] = [];
  const chaos = startMemberChaos(run.cluster, {
    ...opts,
    random: run.random,
    faults: run.faults,
    log: (line) => run.say(`chaos: ${line}`),
    beforeFault: async (i) => {
      const endpoint = run.cluster.members[i]!.endpoint;
      connectionsAtFault.push(await run.gw.metric("etcd_gateway_member_connections", `endpoint="${endpoint}"`).catch(() => Number.NaN));
    },
  });
  onTeardown(() => chaos.stop());
  return { chaos, connectionsAtFault };
}

/** One line about the outages of a run: how many of each fault, of the leader, of a member in use. */
export function describeOutages({ chaos, connectionsAtFault }: RunChaos): string {
  const { outages } = chaos;
  const inUse = connectionsAtFault.filter((n) => n > 0);
  const downSeconds = outages.reduce((a, o) => a + ((o.healthyAt ?? performance.now()) - o.downAt), 0) / 1000;
  return (
    `${outages.length} (${outages.filter((o) => o.fault === "kill").length} kills, ${outages.filter((o) => o.fault === "pause").length} pauses; ` +
    `${outages.filter((o) => o.wasLeader === true).length} of the leader; ${inUse.length} of a member with client connections through the gateway, ` +
    `${inUse.reduce((a, b) => a + b, 0)} connections in all), down ${downSeconds.toFixed(1)} s in total`
  );
}

/** The outages of a run as JSON. */
export function outagesJSON({ chaos, connectionsAtFault }: RunChaos) {
  return chaos.outages.map((o, i) => ({
    member: o.name,
    fault: o.fault,
    wasLeader: o.wasLeader,
    gatewayConnections: connectionsAtFault[i] ?? null,
    downSeconds: o.healthyAt === null ? null : (o.healthyAt - o.downAt) / 1000,
  }));
}
