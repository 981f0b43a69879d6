/**
 * One measurement window of the fleet benchmark: readings of the etcd members, the fleet and the
 * machine at its start and its end, what happened in between, and the rates made of them.
 *
 * - CPU: utime + stime from /proc/<pid>/stat of each member and each gateway.
 * - Requests: the counters each member exports on /metrics: `etcd_server_health_success` +
 *   `etcd_server_health_failures` (GET /health) and `grpc_server_started_total` by method (gRPC
 *   calls, JSON-gateway requests such as POST /v3/maintenance/status included).
 * - New connections: every TCP socket the kernel destroys whose local port is a member's client
 *   port (an accepted connection ending), reported by `ss -E` (sock_diag destroy events) while the
 *   window runs, plus the change in such sockets open (/proc/net/tcp) between start and end.
 * - Memory and descriptors of the members (VmRSS, /proc/<pid>/fd) at the end.
 * - A client (scripts/bench/fleet-client.ts) putting and reading through one member meanwhile.
 *
 * @module
 */
import type { Cluster } from "../../test/support/cluster.ts";
import type { FakeDns } from "../../test/support/dns.ts";
import { promSamples } from "../../test/support/gateway.ts";
import { cpus, loadavg } from "node:os";
import { cpuSeconds, fdCount, rssKiB } from "../../test/support/net.ts";
import { spawnChild, type Child } from "./children.ts";
import type { Latency } from "./fleet-client.ts";
import { cpuOf, type ScenarioId } from "./fleet-fleets.ts";
import { loopbackSockets } from "./net.ts";

/** What a member's /metrics counts: GET /health answers, and gRPC calls by method. */
export interface MemberCounters {
  health: number;
  grpc: Record<string, number>;
}

/** Requests per second one member served in a window. */
export interface MemberRates {
  total: number;
  health: number;
  /** gRPC calls per second by method, methods with none left out. */
  grpc: Record<string, number>;
}

/** Readings at one moment. */
interface Snapshot {
  at: number;
  /** CPU seconds of each member by index; null when it was not running. */
  memberCpu: (number | null)[];
  memberPids: number[];
  counters: (MemberCounters | null)[];
  /** Connections open (not listening, not time-wait) on each member's client port. */
  open: number[];
  /** CPU seconds of each gateway still running. */
  fleetCpu: Map<number, number>;
  /** Busy and total jiffies of the whole machine, from /proc/stat. */
  machine: { busy: number; total: number };
  dnsQueries: number;
}

/** Health transitions in a fleet's logs: members marked down, and up again, and the last reason given for a down. */
export interface Transitions {
  down: number;
  up: number;
  lastError: string | null;
}

/** The result of one window. */
export interface WindowResult {
  fleet: string;
  scenario: ScenarioId;
  seconds: number;
  /** What the scenario did at the start (the member killed, the leader moved). */
  event: string | null;
  /** Cores used by the members running at both ends, summed, and each one's (null: not running). */
  etcdCores: number;
  memberCores: (number | null)[];
  /** Cores used by the fleet's gateways, summed; null without a fleet. */
  fleetCores: number | null;
  requests: (MemberRates | null)[];
  connsPerS: (number | null)[];
  memberRssMiB: (number | null)[];
  memberFds: (number | null)[];
  /** Busy cores of the whole machine (everything running on it) and the 1-minute load at the end. */
  machineCores: number;
  load1: number;
  client: { put: Latency; range: Latency } | null;
  /** Members the fleet's gateways marked down and up during the window (from their logs). */
  transitions: Transitions | null;
  /** Member-list calls (all members) and DNS queries over the window, for the discovery fleets. */
  discovery: { memberList: number; dnsQueries: number } | null;
  failures: string[];
}

/** One member's /metrics, or null when it does not answer within 2 s. */
export async function scrape(port: number): Promise<MemberCounters | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000), headers: { connection: "close" } });
    if (!res.ok) return null;
    const out: MemberCounters = { health: 0, grpc: {} };
    for (const s of promSamples(await res.text())) {
      if (s.name === "etcd_server_health_success" || s.name === "etcd_server_health_failures") out.health += s.value;
      if (s.name !== "grpc_server_started_total") continue;
      const method = /grpc_method="([^"]*)"/.exec(s.labels)?.[1] ?? "?";
      out.grpc[method] = (out.grpc[method] ?? 0) + s.value;
    }
    return out;
  } catch {
    return null;
  }
}

/** Busy and total jiffies of the machine (the `cpu` line of /proc/stat; idle and iowait are not busy). */
async function machineJiffies(): Promise<{ busy: number; total: number }> {
  const f = (await Bun.file("/proc/stat").text()).split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3]! - f[4]!, total };
}

/** Connections open on each of `ports` (as a server: local port), not counting listeners and time-wait. */
function openConnections(ports: readonly number[]): number[] {
  const counts = ports.map(() => 0);
  for (const s of loopbackSockets()) {
    const i = ports.indexOf(s.port);
    if (i >= 0 && s.state !== "0A" && s.state !== "06") counts[i]!++;
  }
  return counts;
}

async function snapshot(cluster: Cluster, fleetPids: readonly number[], dns: FakeDns | null): Promise<Snapshot> {
  const ports = cluster.members.map((m) => m.clientPort);
  const counters = await Promise.all(ports.map(scrape));
  const memberCpu = cluster.members.map((m, i) => (cluster.isRunning(i) ? safe(() => cpuSeconds(m.pid)) : null));
  return {
    at: performance.now(),
    memberCpu,
    memberPids: cluster.members.map((m) => m.pid),
    counters,
    open: openConnections(ports),
    fleetCpu: cpuOf(fleetPids),
    machine: await machineJiffies(),
    dnsQueries: dns?.queries.length ?? 0,
  };
}

/**
 * `ss -E` reporting every destroyed TCP socket whose local port is one of `ports`, line-buffered
 * (stdbuf), counted per port between `begin()` and `end()`.
 */
class DestroyWatch {
  private readonly child: Child;
  private readonly counts: number[];
  private counting = false;
  private readonly reading: Promise<void>;

  constructor(private readonly ports: readonly number[]) {
    this.counts = ports.map(() => 0);
    const filter = `( ${ports.map((p) => `sport = :${p}`).join(" or ")} )`;
    this.child = spawnChild("ss-events", ["stdbuf", "-oL", "ss", "-E", "-t", "-n", "-H", filter], { stdout: "pipe" });
    this.reading = this.read();
  }

  private async read(): Promise<void> {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of this.child.proc.stdout as ReadableStream<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop() ?? "";
      if (!this.counting) continue;
      for (const line of lines) {
        // "UNCONN 0 0 127.0.0.1:<member port> 127.0.0.1:<peer port>"; a listener's peer is "*".
        const f = line.trim().split(/\s+/);
        const i = this.ports.indexOf(Number(f[3]?.slice(f[3].lastIndexOf(":") + 1)));
        if (i >= 0 && f[4] !== undefined && !f[4].endsWith(":*")) this.counts[i]!++;
      }
    }
  }

  /** Waits until ss listens (it subscribes at once; 300 ms is ample), then counts. */
  async begin(): Promise<void> {
    await Bun.sleep(300);
    if (!this.child.running()) throw new Error(`ss -E exited: ${this.child.logTail(2)}`);
    this.counting = true;
  }

  /** Stops counting and ss; the counts, or why there are none (ss died: events may be lost). */
  async end(): Promise<number[] | string> {
    await Bun.sleep(50);
    const alive = this.child.running();
    this.counting = false;
    await this.child.stop();
    await Promise.race([this.reading, Bun.sleep(1000)]);
    return alive ? this.counts : `ss -E exited during the window: ${this.child.logTail(2) || "no message"}`;
  }
}

/** The client's report, or why there is none. */
async function clientResult(client: Child, timeoutMs: number): Promise<{ put: Latency; range: Latency } | string> {
  const out = await Promise.race([new Response(client.proc.stdout as ReadableStream<Uint8Array>).text(), Bun.sleep(timeoutMs).then(() => null)]);
  await client.stop();
  if (out === null) return `client did not report within ${timeoutMs / 1000} s`;
  try {
    return JSON.parse(out) as { put: Latency; range: Latency };
  } catch {
    return `client printed no report: ${client.logTail(2) || out.slice(0, 100)}`;
  }
}

export interface WindowOptions {
  fleet: string;
  scenario: ScenarioId;
  seconds: number;
  cluster: Cluster;
  fleetPids: readonly number[];
  /** The member the client talks to. */
  clientMember: number;
  /** Client requests per second. */
  clientRate: number;
  /** Counts of the fleet's health transitions logged so far (null without a fleet). */
  transitions: () => Transitions | null;
  dns: FakeDns | null;
  /** Done right after the start readings: kills a member, moves the leader; resolves to what it did. */
  disrupt: () => Promise<string | null>;
}

/**
 * Runs one window: start readings, the scenario's event, the client, `seconds` of waiting, end
 * readings. The client is given a second less than the window, so that every request it makes
 * falls inside the window (it takes a moment to start): the baseline's client counts then cancel
 * the fleet's exactly.
 */
export async function measureWindow(o: WindowOptions): Promise<WindowResult> {
  const ports = o.cluster.members.map((m) => m.clientPort);
  const watch = new DestroyWatch(ports);
  const failures: string[] = [];
  await watch.begin();
  const a = await snapshot(o.cluster, o.fleetPids, o.dns);
  const t0 = o.transitions();
  let event: string | null = null;
  try {
    event = await o.disrupt();
  } catch (e) {
    failures.push(`scenario: ${e instanceof Error ? e.message : String(e)}`);
  }
  const clientSeconds = Math.max(0.5, o.seconds - 1);
  const ops = Math.max(2, Math.round(o.clientRate * clientSeconds));
  const clientPort = o.cluster.members[o.clientMember]!.clientPort;
  const client = spawnChild("fleet-client", [process.execPath, `${import.meta.dir}/fleet-client.ts`, String(clientPort), String(ops), String(clientSeconds * 1000)], { stdout: "pipe" });
  await Bun.sleep(Math.max(0, a.at + o.seconds * 1000 - performance.now()));
  const report = await clientResult(client, 15_000);
  const accepted = await watch.end();
  const b = await snapshot(o.cluster, o.fleetPids, o.dns);
  const t1 = o.transitions();
  if (typeof report === "string") failures.push(report);
  if (typeof accepted === "string") failures.push(accepted);
  return {
    fleet: o.fleet,
    scenario: o.scenario,
    event,
    failures,
    client: typeof report === "string" ? null : report,
    transitions: t0 === null || t1 === null ? null : { down: t1.down - t0.down, up: t1.up - t0.up, lastError: t1.lastError },
    ...rates(a, b, typeof accepted === "string" ? null : accepted, o.cluster, o.fleetPids.length > 0),
  };
}

/** The rates between two snapshots. */
function rates(a: Snapshot, b: Snapshot, accepted: number[] | null, cluster: Cluster, hasFleet: boolean) {
  const seconds = (b.at - a.at) / 1000;
  const memberCores = a.memberCpu.map((x, i) => (x === null || b.memberCpu[i] === null || a.memberPids[i] !== b.memberPids[i] ? null : (b.memberCpu[i]! - x) / seconds));
  const requests = a.counters.map((x, i) => {
    const y = b.counters[i];
    if (x === null || y === null || y === undefined || a.memberPids[i] !== b.memberPids[i]) return null;
    const grpc: Record<string, number> = {};
    for (const [k, v] of Object.entries(y.grpc)) if (v - (x.grpc[k] ?? 0) > 0) grpc[k] = (v - (x.grpc[k] ?? 0)) / seconds;
    const health = (y.health - x.health) / seconds;
    return { total: health + Object.values(grpc).reduce((s, v) => s + v, 0), health, grpc };
  });
  // A gateway that exited during the window (none should) counts nothing.
  let fleetSeconds = 0;
  for (const [pid, end] of b.fleetCpu) fleetSeconds += end - (a.fleetCpu.get(pid) ?? end);
  const memberList = b.counters.reduce((s, y, i) => {
    const x = a.counters[i];
    return x === null || x === undefined || y === null ? s : s + (y.grpc.MemberList ?? 0) - (x.grpc.MemberList ?? 0);
  }, 0);
  return {
    seconds,
    etcdCores: memberCores.reduce<number>((s, x) => s + (x ?? 0), 0),
    memberCores,
    fleetCores: hasFleet ? fleetSeconds / seconds : null,
    requests,
    connsPerS: cluster.members.map((_, i) => (accepted === null || memberCores[i] === null ? null : (accepted[i]! + b.open[i]! - a.open[i]!) / seconds)),
    memberRssMiB: cluster.members.map((m, i) => (cluster.isRunning(i) ? safe(() => rssKiB(m.pid) / 1024) : null)),
    memberFds: cluster.members.map((m, i) => (cluster.isRunning(i) ? safe(() => fdCount(m.pid)) : null)),
    machineCores: ((b.machine.busy - a.machine.busy) / (b.machine.total - a.machine.total)) * cpus().length,
    load1: loadavg()[0] ?? Number.NaN,
    discovery: { memberList, dnsQueries: b.dnsQueries - a.dnsQueries },
  };
}

function safe<T>(fn: () => T): T | null {
  try {
    return fn();
  } catch {
    return null;
  }
}
