/**
 * A real etcd cluster on loopback, for the e2e tests and the demo: N members of the `etcd` found on
 * PATH (Debian's etcd-server), each with its own free client and peer ports and a fresh data dir,
 * and an `etcdctl` runner. Members log to a file in their own dir, never to our stderr, so a test
 * runner is not kept waiting on a pipe a member holds open.
 *
 * @module
 */
import type { Subprocess } from "bun";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface ClusterMember {
  /** etcd's `--name`: `m0`, `m1`, ... */
  name: string;
  clientPort: number;
  peerPort: number;
  /** `http://127.0.0.1:<clientPort>` */
  clientURL: string;
  peerURL: string;
  /** `127.0.0.1:<clientPort>`, the form `--endpoints` takes. */
  endpoint: string;
  /** The member's own dir: its data dir `data/` and its log `etcd.log`. */
  dir: string;
  logFile: string;
  /** The current process (replaced by `restart`). */
  proc: Subprocess<"ignore", number, number>;
  pid: number;
}

export interface Cluster {
  /** The root dir holding one dir per member. */
  readonly dir: string;
  readonly members: ClusterMember[];
  /** Every member's client address, comma separated: `127.0.0.1:p0,127.0.0.1:p1,...` */
  readonly endpoints: string;
  /** Sends `signal` to member `i` and waits for it to exit. @default signal "SIGKILL" */
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts member `i` again on its ports and data dir (`--initial-cluster-state existing`) and waits until it is healthy. */
  restart(i: number, timeoutMs?: number): Promise<void>;
  /** Waits until member `i` (or every running member) answers `/health` with `"health":"true"`. @throws with the log tail on timeout */
  waitHealthy(i?: number, timeoutMs?: number): Promise<void>;
  /** The index of the member every running member agrees is the leader; waits (bounded) for one. */
  leaderIndex(timeoutMs?: number): Promise<number>;
  /** Member `i`'s raft ID as a decimal string (IDs exceed 2^53, so never a JS number). */
  memberIdOf(i: number): Promise<string>;
  /** The index of the member whose ID is `id` (decimal or hex string), or -1. */
  indexOfId(id: string): Promise<number>;
  /** Whether member `i`'s process is running. */
  isRunning(i: number): boolean;
  /** Kills every member, waits for them, and removes the dirs this cluster created. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  /** Members. @default 3 */
  size?: number;
  /** Root dir for the member dirs; created under os.tmpdir() when absent (and then removed by stop). */
  dir?: string;
  /** Bound on the start, health included. @default 20_000 */
  timeoutMs?: number;
}

/** Options of one `etcdctl` run. */
export interface EtcdctlOptions {
  /** `--endpoints`, e.g. `127.0.0.1:2379` or a comma list. */
  endpoints?: string;
  /** `--dial-timeout`. @default "2s" */
  dialTimeout?: string;
  /** `--command-timeout`. @default "5s" */
  commandTimeout?: string;
  /** The process is killed after this long (and the result has code null). @default 10_000 */
  timeoutMs?: number;
}

export interface EtcdctlResult {
  /** Exit code; null when it was killed at `timeoutMs`. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Members still running, so a test process that dies anyway does not leave etcd behind. */
const live = new Set<Subprocess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/** The path of `name` on PATH. @throws when it is not installed */
export function which(name: string): string {
  const path = Bun.which(name);
  if (path === null) throw new Error(`${name} not found on PATH (Debian: apt-get install etcd-server etcd-client)`);
  return path;
}

/**
 * Runs `etcdctl` (API v3) with `args` and collects its output; never throws for a failing command.
 *
 * @example await etcdctl(["put", "foo", "bar"], { endpoints: "127.0.0.1:23790" })
 */
export async function etcdctl(args: string[], opts: EtcdctlOptions = {}): Promise<EtcdctlResult> {
  const cmd = [
    which("etcdctl"),
    ...(opts.endpoints ? [`--endpoints=${opts.endpoints}`] : []),
    `--dial-timeout=${opts.dialTimeout ?? "2s"}`,
    `--command-timeout=${opts.commandTimeout ?? "5s"}`,
    ...args,
  ];
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ETCDCTL_API: "3" } });
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    proc.kill("SIGKILL");
  }, opts.timeoutMs ?? 10_000);
  const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  const code = await proc.exited;
  clearTimeout(timer);
  return { code: killed ? null : code, stdout, stderr: killed ? `${stderr}\n(killed after ${opts.timeoutMs ?? 10_000} ms)` : stderr };
}

/**
 * `count` distinct TCP ports free on 127.0.0.1. All are held until the last is chosen, so they
 * differ; another process may still take one before etcd binds it, which `startCluster` retries.
 */
export function freePorts(count: number): number[] {
  const held = Array.from({ length: count }, () => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
  const ports = held.map((l) => l.port);
  for (const l of held) l.stop(true);
  return ports;
}

/** The last `lines` lines of a file, or a note that it is missing. */
function tail(path: string, lines = 20): string {
  if (!existsSync(path)) return `(no log at ${path})`;
  return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

interface MemberStatus {
  memberId: string;
  leader: string;
}

/**
 * The maintenance status of the etcd member reachable at `127.0.0.1:port` (a member or a gateway in
 * front of one), over etcd's JSON gateway: it encodes 64-bit IDs as decimal strings, so nothing is
 * rounded. Null when it does not answer within `timeoutMs`.
 */
export async function memberStatus(port: number, timeoutMs = 2000): Promise<MemberStatus | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/v3/maintenance/status`, {
      method: "POST",
      body: "{}",
      // No pooled connection left behind: it would pin a member (or a gateway's client slot) open.
      headers: { connection: "close" },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) return null;
    const body = (await res.json()) as { header?: { member_id?: string }; leader?: string };
    const memberId = body.header?.member_id;
    if (memberId === undefined) return null;
    return { memberId, leader: body.leader ?? "0" };
  } catch {
    return null;
  }
}

/** Whether `127.0.0.1:port/health` says `"health":"true"` within `timeoutMs`. */
async function healthy(port: number, timeoutMs = 1000): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`, { headers: { connection: "close" }, signal: AbortSignal.timeout(timeoutMs) });
    const body = (await res.json()) as { health?: string };
    return body.health === "true";
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A member ID in decimal, from decimal or `0x`-less hex as etcdctl prints it in tables. */
function decimalId(id: string): string {
  return /^[0-9]+$/.test(id) ? id : BigInt(`0x${id}`).toString(10);
}

/**
 * Starts a `size`-member etcd cluster on 127.0.0.1 and resolves once every member is healthy.
 * Elections are fast (50 ms heartbeat, 500 ms election timeout) so failover tests stay short.
 *
 * @throws when a member exits or the cluster is not healthy within `timeoutMs`, with the log tails.
 * @example const cluster = await startCluster(); try { ... } finally { await cluster.stop(); }
 */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const size = opts.size ?? 3;
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const ownRoot = opts.dir === undefined;
  const root = opts.dir ?? mkdtempSync(join(tmpdir(), "etcd-cluster-"));
  mkdirSync(root, { recursive: true });
  // A port taken by someone else between freePorts() and etcd's bind makes a member exit: try anew.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(size, root, ownRoot, timeoutMs);
    } catch (e) {
      const portTaken = e instanceof MemberExited && /address already in use/.test(e.message);
      if (attempt >= 3 || !portTaken) {
        if (ownRoot) rmSync(root, { recursive: true, force: true });
        throw e;
      }
    }
  }
}

class MemberExited extends Error {}

async function startOnce(size: number, root: string, ownRoot: boolean, timeoutMs: number): Promise<Cluster> {
  const etcd = which("etcd");
  const token = `etcd-gateway-cluster-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const ports = freePorts(size * 2);
  const members: ClusterMember[] = [];
  const initialCluster = Array.from({ length: size }, (_, i) => `m${i}=http://127.0.0.1:${ports[2 * i + 1]!}`).join(",");
  const ids = new Map<number, string>();

  const spawnMember = (m: Omit<ClusterMember, "proc" | "pid">, state: "new" | "existing") => {
    const log = openSync(m.logFile, "a");
    const args = [
      etcd,
      `--name=${m.name}`,
      `--data-dir=${join(m.dir, "data")}`,
      `--listen-client-urls=${m.clientURL}`,
      `--advertise-client-urls=${m.clientURL}`,
      `--listen-peer-urls=${m.peerURL}`,
      `--initial-advertise-peer-urls=${m.peerURL}`,
      `--initial-cluster=${initialCluster}`,
      `--initial-cluster-state=${state}`,
      `--initial-cluster-token=${token}`,
      "--heartbeat-interval=50",
      "--election-timeout=500",
      "--logger=zap",
      "--log-outputs=stderr",
    ];
    try {
      const proc = Bun.spawn(args, { stdin: "ignore", stdout: log, stderr: log });
      live.add(proc);
      void proc.exited.then(() => live.delete(proc));
      return proc;
    } finally {
      // The child has its own copy of the descriptor.
      closeSync(log);
    }
  };

  for (let i = 0; i < size; i++) {
    const clientPort = ports[2 * i]!;
    const peerPort = ports[2 * i + 1]!;
    const dir = join(root, `m${i}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const base = {
      name: `m${i}`,
      clientPort,
      peerPort,
      clientURL: `http://127.0.0.1:${clientPort}`,
      peerURL: `http://127.0.0.1:${peerPort}`,
      endpoint: `127.0.0.1:${clientPort}`,
      dir,
      logFile: join(dir, "etcd.log"),
    };
    const proc = spawnMember(base, "new");
    members.push({ ...base, proc, pid: proc.pid });
  }

  const member = (i: number): ClusterMember => {
    const m = members[i];
    if (m === undefined) throw new Error(`no member ${i} in a ${size}-member cluster`);
    return m;
  };
  const isRunning = (i: number) => {
    const p = member(i).proc;
    return p.exitCode === null && p.signalCode === null;
  };
  const running = () => members.map((_, i) => i).filter(isRunning);

  const waitHealthy = async (i?: number, waitMs = timeoutMs) => {
    const which = i === undefined ? running() : [i];
    const deadline = performance.now() + waitMs;
    for (const j of which) {
      const m = member(j);
      for (;;) {
        if (!isRunning(j)) {
          throw new MemberExited(`etcd member ${m.name} exited (${m.proc.exitCode ?? m.proc.signalCode}); log ${m.logFile}:\n${tail(m.logFile)}`);
        }
        if (await healthy(m.clientPort)) break;
        if (performance.now() > deadline) {
          throw new Error(`etcd member ${m.name} (${m.clientURL}) not healthy after ${waitMs} ms; log ${m.logFile}:\n${tail(m.logFile)}`);
        }
        await sleep(100);
      }
    }
  };

  const memberIdOf = async (i: number): Promise<string> => {
    const known = ids.get(i);
    if (known !== undefined) return known;
    const s = await memberStatus(member(i).clientPort);
    if (s === null) throw new Error(`etcd member ${member(i).name} did not answer its status request`);
    ids.set(i, s.memberId);
    return s.memberId;
  };

  const cluster: Cluster = {
    dir: root,
    members,
    endpoints: members.map((m) => m.endpoint).join(","),
    async kill(i, signal = "SIGKILL") {
      const p = member(i).proc;
      if (isRunning(i)) p.kill(signal);
      await p.exited;
    },
    async restart(i, waitMs = timeoutMs) {
      if (isRunning(i)) throw new Error(`etcd member ${member(i).name} is still running`);
      const m = member(i);
      m.proc = spawnMember(m, "existing");
      m.pid = m.proc.pid;
      await waitHealthy(i, waitMs);
    },
    waitHealthy,
    async leaderIndex(waitMs = 10_000) {
      // Learn every running member's ID first: the leader field names an ID, not an address.
      for (const j of running()) await memberIdOf(j);
      const deadline = performance.now() + waitMs;
      for (;;) {
        const views = await Promise.all(running().map((j) => memberStatus(member(j).clientPort)));
        const leaders = new Set(views.map((v) => v?.leader ?? "0"));
        const [leader] = leaders;
        if (leaders.size === 1 && leader !== undefined && leader !== "0") {
          const idx = await cluster.indexOfId(leader);
          if (idx >= 0 && isRunning(idx)) return idx;
        }
        if (performance.now() > deadline) throw new Error(`no agreed etcd leader after ${waitMs} ms (members report ${[...leaders].join(", ")})`);
        await sleep(100);
      }
    },
    memberIdOf,
    async indexOfId(id) {
      const dec = decimalId(id);
      for (let j = 0; j < size; j++) {
        const known = ids.get(j) ?? (isRunning(j) ? await memberIdOf(j).catch(() => undefined) : undefined);
        if (known === dec) return j;
      }
      return -1;
    },
    isRunning,
    async stop() {
      await Promise.all(members.map((m) => {
        m.proc.kill("SIGKILL");
        return m.proc.exited;
      }));
      if (ownRoot) rmSync(root, { recursive: true, force: true });
      else for (const m of members) rmSync(m.dir, { recursive: true, force: true });
    },
  };

  try {
    await waitHealthy(undefined, timeoutMs);
    for (let j = 0; j < size; j++) await memberIdOf(j);
  } catch (e) {
    await Promise.all(members.map((m) => (m.proc.kill("SIGKILL"), m.proc.exited)));
    throw e;
  }
  return cluster;
}
