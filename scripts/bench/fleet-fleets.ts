/**
 * The fleets of the fleet benchmark: which gateways (none, ours with default flags, etcd's own,
 * ours with extra flags, an older binary of ours, ours with discovery on), how N of them are
 * started (paced, each on its own kernel-picked loopback port, each logging to its own file) and
 * stopped, and the readings taken of them: their CPU time and their memory.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { startFakeDns, type FakeDns } from "../../test/support/dns.ts";
import { cpuSeconds, freePorts, smapsRollupKiB } from "../../test/support/net.ts";
import { spawnChild, type Child } from "./children.ts";
import { gatewayBinary } from "./contenders.ts";
import type { Transitions } from "./fleet-measure.ts";
import { listeningPorts } from "./net.ts";
import { median } from "./report.ts";

export const SCENARIO_IDS = ["steady", "member-down", "leader-change"] as const;
export type ScenarioId = (typeof SCENARIO_IDS)[number];

/** What a fleet's gateways are put in front of. */
export interface FleetTarget {
  /** `127.0.0.1:p0,127.0.0.1:p1,...`: the members' client addresses. */
  endpoints: string;
  /** For SRV discovery: the DNS server (`127.0.0.1:port`) and the domain it serves the members under. */
  dns?: { server: string; domain: string };
  /** For discovery: the member-list sync interval, seconds. */
  syncIntervalS: number;
}

export interface FleetDef {
  id: string;
  title: string;
  /** The argv of one gateway listening on 127.0.0.1:port; null for the baseline without gateways. */
  command: ((port: number, t: FleetTarget) => string[]) | null;
  /** Discovery this fleet does, whose calls are counted. */
  discovery?: "member-list" | "srv";
  /** Scenarios run with this fleet (the run's scenarios when absent). */
  scenarios?: readonly ScenarioId[];
}

/** Our gateway with default flags but the listen address and the endpoints. */
export const oursCommand = (binary: string, port: number, t: FleetTarget, extra: readonly string[] = []): string[] => [
  binary, "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${t.endpoints}`, ...extra,
];

/** `etcd gateway start`, etcd's own L4 gateway. */
export const etcdGatewayCommand = (port: number, t: FleetTarget): string[] => [
  Bun.which("etcd") ?? "etcd", "gateway", "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${t.endpoints}`,
];

export const NONE: FleetDef = { id: "none", title: "no gateways", command: null };
export const OURS: FleetDef = { id: "ours", title: "etcd-gateway (default flags)", command: (port, t) => oursCommand(gatewayBinary(), port, t) };
export const ETCD_GW: FleetDef = { id: "etcd-gw", title: "etcd's gateway", command: etcdGatewayCommand };

/** Ours with `args` added (`--ours-args`). */
export function oursWith(args: readonly string[]): FleetDef {
  return { id: "ours-args", title: `etcd-gateway ${args.join(" ")}`, command: (port, t) => oursCommand(gatewayBinary(), port, t, args) };
}

/** An older binary of ours with default flags (`--before`). */
export function oursBefore(binary: string): FleetDef {
  return { id: "before", title: `etcd-gateway before (${binary})`, command: (port, t) => oursCommand(binary, port, t) };
}

/** Ours syncing the member list every `t.syncIntervalS` (`--discovery`). */
export const OURS_SYNC: FleetDef = {
  id: "ours-sync",
  title: "etcd-gateway --endpoints-auto-sync-interval",
  discovery: "member-list",
  scenarios: ["steady"],
  command: (port, t) => oursCommand(gatewayBinary(), port, t, [`--endpoints-auto-sync-interval=${t.syncIntervalS}s`]),
};

/** Ours finding the members by DNS SRV records (TTL = the sync interval) on the bench's DNS server (`--discovery`). */
export const OURS_SRV: FleetDef = {
  id: "ours-srv",
  title: "etcd-gateway --discovery-srv",
  discovery: "srv",
  scenarios: ["steady"],
  command: (port, t) => [
    gatewayBinary(), "start", `--listen-addr=127.0.0.1:${port}`, `--discovery-srv=${t.dns?.domain ?? "?"}`,
    "--insecure-discovery", `--dns-server=${t.dns?.server ?? "?"}`,
  ],
};

/** N started gateways of one fleet. */
export interface RunningFleet {
  def: FleetDef;
  gateways: Child[];
  /** Each gateway's listen port on 127.0.0.1, by the index of `gateways` (a gateway started again has its new port). */
  ports: number[];
  /** Seconds from the first start until every gateway listened. */
  startSeconds: number;
  /** Gateways that exited and were started again on a new port. */
  restarts: number;
  pids(): number[];
  /** The health transitions in the gateways' logs so far. */
  transitions(): Transitions;
  /** Gateways no longer running, with their log tails. */
  dead(): string[];
  stop(): Promise<void>;
}

/** Bound on the wait for a started fleet to listen. */
const LISTEN_TIMEOUT_MS = 30_000;

/**
 * Starts `n` gateways of `def`, `rate` per second, each on a port the kernel picked, and resolves
 * once every one of them listens (read from /proc/net/tcp: no connection is made, so no gateway
 * dials a member before the measurement). A gateway that exits meanwhile (say, its port was taken
 * by someone else first) is started once more on a new port.
 *
 * @throws when a gateway does not come up after that, or not within 30 s; the fleet is stopped then.
 */
export async function startFleet(def: FleetDef, n: number, rate: number, t: FleetTarget): Promise<RunningFleet> {
  const command = def.command;
  if (command === null) throw new Error(`${def.id} has no gateways to start`);
  const ports = freePorts(n);
  const gateways: Child[] = [];
  let restarts = 0;
  const t0 = performance.now();
  const fleet: RunningFleet = {
    def,
    gateways,
    ports,
    startSeconds: 0,
    restarts: 0,
    pids: () => gateways.map((g) => g.pid),
    transitions: () => logTransitions(gateways.map((g) => g.logFile)),
    dead: () => gateways.filter((g) => !g.running()).map((g) => `${g.name} exited (${g.proc.exitCode ?? g.proc.signalCode}): ${g.logTail(3)}`),
    stop: async () => void (await Promise.all(gateways.map((g) => g.stop()))),
  };
  try {
    for (let i = 0; i < n; i++) {
      const due = t0 + (i * 1000) / rate;
      if (due > performance.now()) await Bun.sleep(due - performance.now());
      gateways.push(spawnChild(`${def.id}-${i}`, command(ports[i]!, t)));
    }
    for (let poll = 0; poll < LISTEN_TIMEOUT_MS / 100; poll++) {
      const listening = listeningPorts();
      const waiting = ports.map((p, i) => (listening.has(p) ? -1 : i)).filter((i) => i >= 0);
      if (waiting.length === 0) break;
      for (const i of waiting.filter((j) => !gateways[j]!.running())) {
        if (restarts >= Math.max(3, n / 10)) throw new Error(`gateways keep exiting: ${fleet.dead().slice(0, 3).join("; ")}`);
        restarts++;
        ports[i] = freePorts(1)[0]!;
        gateways[i] = spawnChild(`${def.id}-${i}`, command(ports[i], t));
      }
      if (poll === LISTEN_TIMEOUT_MS / 100 - 1) throw new Error(`${waiting.length} of ${n} gateways not listening after ${LISTEN_TIMEOUT_MS / 1000} s`);
      await Bun.sleep(100);
    }
  } catch (e) {
    await fleet.stop();
    throw e;
  }
  fleet.startSeconds = (performance.now() - t0) / 1000;
  fleet.restarts = restarts;
  return fleet;
}

/**
 * Members marked down (`deactivated endpoint`, as both gateways log it) and up (ours: `"msg":"activated"`,
 * etcd's: `activated endpoint`) in the logs `files`, with the reason of the last down.
 */
export function logTransitions(files: readonly string[]): Transitions {
  const out: Transitions = { down: 0, up: 0, lastError: null };
  for (const f of files) {
    let text = "";
    try {
      text = readFileSync(f, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      if (line.includes("deactivated endpoint")) {
        out.down++;
        out.lastError = /"error":"((?:[^"\\]|\\.)*)"/.exec(line)?.[1] ?? line.slice(0, 160);
      } else if (line.includes('"msg":"activated"') || line.includes("activated endpoint")) out.up++;
    }
  }
  return out;
}

/** CPU seconds used so far by each of `pids` still running. */
export function cpuOf(pids: readonly number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const p of pids) {
    try {
      out.set(p, cpuSeconds(p));
    } catch {
      // gone
    }
  }
  return out;
}

/** Memory of one fleet's gateways: the median over them (and the range) of private memory, RSS and PSS, MiB. */
export interface FleetMemory {
  gateways: number;
  privateMiB: { median: number; min: number; max: number };
  rssMiB: number;
  pssMiB: number;
}

/** Reads /proc/<pid>/smaps_rollup of every pid: private = Private_Clean + Private_Dirty. Null when none could be read. */
export function fleetMemory(pids: readonly number[]): FleetMemory | null {
  const priv: number[] = [];
  const rss: number[] = [];
  const pss: number[] = [];
  for (const p of pids) {
    try {
      const m = smapsRollupKiB(p);
      priv.push(((m.Private_Clean ?? 0) + (m.Private_Dirty ?? 0)) / 1024);
      rss.push((m.Rss ?? 0) / 1024);
      pss.push((m.Pss ?? 0) / 1024);
    } catch {
      // gone
    }
  }
  if (priv.length === 0) return null;
  return {
    gateways: priv.length,
    privateMiB: { median: median(priv)!, min: Math.min(...priv), max: Math.max(...priv) },
    rssMiB: median(rss)!,
    pssMiB: median(pss)!,
  };
}

/** The domain the SRV fleet discovers the members under. */
export const SRV_DOMAIN = "fleet.test";

/**
 * A DNS server (test/support/dns.ts startFakeDns, in this process: it counts every query it gets)
 * serving the members as `_etcd-client._tcp.fleet.test` SRV records with targets `m<i>.fleet.test`
 * (A 127.0.0.1), every record with TTL `ttlS`; any other name is NXDOMAIN.
 */
export async function startSrvDns(members: readonly { name: string; clientPort: number }[], ttlS: number): Promise<FakeDns> {
  return await startFakeDns((q) => {
    if (q.type === "SRV" && q.name === `_etcd-client._tcp.${SRV_DOMAIN}`) {
      return { answers: members.map((m) => ({ type: "SRV" as const, ttl: ttlS, priority: 10, weight: 10, port: m.clientPort, target: `${m.name}.${SRV_DOMAIN}` })) };
    }
    if (!members.some((m) => q.name === `${m.name}.${SRV_DOMAIN}`)) return { rcode: "NXDOMAIN" };
    return q.type === "A" ? { answers: [{ type: "A", ttl: ttlS, address: "127.0.0.1" }] } : { answers: [] };
  });
}
