/**
 * `--workers N`: N processes accept on one port (SO_REUSEPORT), and one of them, the primary,
 * decides member state for all. The primary binds every listening socket and hands each worker its
 * own at start (src/inherit.ts), keeping a copy: a worker that dies is started again on the same
 * socket, whose backlog waits meanwhile instead of being reset. Workers report their dial outcomes to the primary over Bun's IPC
 * channel and adopt the state it broadcasts (which members are active, sticky's chosen member), so
 * every worker sends new connections where the others do and probes run only once.
 *
 * @module
 */
import type { Subprocess } from "bun";
import type { EndpointSpec } from "./addresses.ts";
import type { DialReports } from "./datapath/dialer.ts";
import type { ListenSocket } from "./datapath/sockets.ts";
import { handOver, type Owner } from "./inherit.ts";
import type { ProcessStats } from "./metrics.ts";
import type { Drain, Member, MemberState, MemberTable } from "./members.ts";
import type { Logger } from "./log.ts";
import type { Policy } from "./select.ts";
import { after } from "./timers.ts";

/** Environment variable that makes a process a worker; its value is the worker number (1..N-1). */
export const WORKER_ENV = "ETCD_GATEWAY_WORKER";

export type ToPrimary =
  | { t: "hello" }
  | { t: "ready" }
  | { t: "failed"; i: number; reason: string }
  | { t: "ok"; i: number }
  | { t: "stall"; i: number; ms: number }
  | { t: "stats"; id: number; stats: ProcessStats };
/** One member as the primary describes it to workers: the endpoint and its state. */
export type SharedMember = EndpointSpec & { state: MemberState; drain: Drain; reason: string; failures: number; alive: boolean | null; clusterId: string | null; wrongCluster: boolean };
export type SharedState = { t: "state"; members: SharedMember[]; current: number; seed: number };

/** This process's worker number, or null for the primary (or a single process). */
export function workerNumber(): number | null {
  const v = process.env[WORKER_ENV];
  return v === undefined || !/^\d+$/.test(v) ? null : Number(v);
}

/** The state the primary shares with its workers. */
export function snapshot(members: MemberTable, policy: Policy): SharedState {
  return {
    t: "state",
    members: members.list.map((m) => ({ ...m.endpoint, tls: m.tls, priority: m.priority, weight: m.weight, dialHost: m.dialHost, state: m.state, drain: m.drain, reason: m.reason, failures: m.failures, alive: m.alive, clusterId: m.clusterId, wrongCluster: m.wrongCluster })),
    current: policy.position(),
    seed: policy.seed(),
  };
}

/** Applies the primary's state in a worker: the worker writes what the primary decided, nothing of its own. */
export function adopt(state: SharedState, members: MemberTable, policy: Policy): void {
  members.replace(state.members);
  members.list.forEach((m, i) => {
    const s = state.members[i];
    if (s !== undefined) members.update(m, { state: s.state, drain: s.drain, reason: s.reason, failures: s.failures, alive: s.alive, cluster: { id: s.clusterId, wrong: s.wrongCluster } });
  });
  policy.adopt(state.current, state.seed);
}

/**
 * Where a worker's data path reports dial outcomes: to the primary, which counts them against
 * `--health-fall`, logs, checks, and broadcasts the outcome to every worker.
 */
export function reportToPrimary(members: MemberTable, send: (msg: ToPrimary) => void = sendToPrimary): DialReports {
  const index = (m: Member) => members.list.indexOf(m);
  return {
    dialFailed(m, reason) {
      send({ t: "failed", i: index(m), reason });
    },
    dialSucceeded(m) {
      if (m.failures === 0 && m.up) return;
      send({ t: "ok", i: index(m) });
    },
    stallSuspected(m, ms) {
      send({ t: "stall", i: index(m), ms });
    },
  };
}

/**
 * The executable's path, read as the process starts: Bun reads it from /proc/self/exe on first
 * use, which names a replaced file `<path> (deleted)`; read early, it is the path, where an
 * upgrade finds the new binary (test/e2e/upgrade.test.ts).
 */
const EXEC_PATH = process.execPath.replace(/ \(deleted\)$/, "");

/** The command line that runs this same program again (compiled binary or `bun src/cli.ts`): the binary now at our path. */
export function selfCommand(): string[] {
  const script = process.argv[1] ?? "";
  const args = process.argv.slice(2);
  return script.startsWith("/$bunfs/") || script === "" ? [EXEC_PATH, ...args] : [EXEC_PATH, script, ...args];
}

/**
 * Starts `command` (this program again, as a worker or an upgrade) with `sockets` as its
 * descriptors from 3 on and the variable that describes them (src/inherit.ts), `env` on top of
 * ours, its output on ours, and an IPC channel whose messages go to `onMessage`.
 */
export function spawnWithSockets<T>(command: string[], sockets: readonly { fd: number; owner: Owner }[], env: Record<string, string>, onMessage: (msg: T) => void): Subprocess {
  const handed = handOver(sockets);
  return Bun.spawn(command, {
    env: { ...process.env, ...handed.env, ...env },
    stdio: ["ignore", "inherit", "inherit", ...handed.fds],
    serialization: "json",
    ipc: onMessage,
  });
}

export interface PoolOptions {
  /** Processes in all, the primary included (it is worker 0 and serves too). */
  count: number;
  log: Logger;
  /** The member state to send a worker that says hello. */
  state: () => SharedState;
  /** The listening sockets worker k accepts on. */
  sockets: (k: number) => readonly ListenSocket[];
  /** A worker reported a dial outcome. */
  onReport: (msg: ToPrimary & { t: "failed" | "ok" | "stall" }) => void;
}

/**
 * Workers 1..count-1, started as copies of this process. A worker that dies is logged and
 * started again after a second.
 */
export class WorkerPool {
  /** Resolves once every worker has reported it is listening. */
  readonly ready: Promise<void>;
  readonly #procs = new Map<number, Subprocess>();
  readonly #statsWaiters = new Map<number, (s: ProcessStats) => void>();
  #nextStatsId = 0;
  #stopping = false;
  /** Worker numbers that have been listening at least once. */
  readonly #everReady = new Set<number>();
  #resolveReady!: () => void;

  constructor(private readonly opts: PoolOptions) {
    this.ready = new Promise<void>((r) => (this.#resolveReady = r));
    if (opts.count <= 1) this.#resolveReady();
    for (let k = 1; k < opts.count; k++) this.spawn(k);
  }

  private spawn(k: number): void {
    const proc = spawnWithSockets(selfCommand(), this.opts.sockets(k), { [WORKER_ENV]: String(k) }, (msg: ToPrimary) => this.received(k, proc, msg));
    this.#procs.set(k, proc);
    void proc.exited.then((code) => {
      this.#procs.delete(k);
      if (this.#stopping) return;
      // Also before its first "ready": the replacement's "ready" then counts for this worker number.
      this.opts.log.error("worker exited; starting it again", { worker: k, code, signal: proc.signalCode });
      setTimeout(() => !this.#stopping && this.spawn(k), 1000);
    });
  }

  private received(k: number, proc: Subprocess, msg: ToPrimary): void {
    switch (msg.t) {
      case "hello":
        proc.send(this.opts.state());
        break;
      case "ready":
        this.#everReady.add(k);
        if (this.#everReady.size === this.opts.count - 1) this.#resolveReady();
        break;
      case "stats":
        this.#statsWaiters.get(msg.id)?.(msg.stats);
        break;
      default:
        this.opts.onReport(msg);
    }
  }

  /** Sends the current member state to every worker. */
  broadcast(state: SharedState): void {
    for (const p of this.#procs.values()) p.send(state);
  }

  /** Tells every worker to reload its configuration (SIGHUP reached the primary). */
  reload(): void {
    for (const p of this.#procs.values()) p.send({ t: "reload" });
  }

  /** Sends `sig` to every worker. */
  signal(sig: NodeJS.Signals): void {
    for (const p of this.#procs.values()) p.kill(sig);
  }

  /** The workers' data-path counters (for /metrics); a worker silent for `timeoutMs` is left out. */
  async stats(timeoutMs: number): Promise<ProcessStats[]> {
    const all = await Promise.all([...this.#procs.values()].map((p) => this.statsOf(p, timeoutMs)));
    return all.filter((s): s is ProcessStats => s !== null);
  }

  private statsOf(p: Subprocess, timeoutMs: number): Promise<ProcessStats | null> {
    return new Promise((resolve) => {
      const id = this.#nextStatsId++;
      const timer = setTimeout(() => {
        this.#statsWaiters.delete(id);
        resolve(null); // a busy or restarting worker: /metrics answers without its share
      }, timeoutMs);
      this.#statsWaiters.set(id, (s) => {
        clearTimeout(timer);
        this.#statsWaiters.delete(id);
        resolve(s);
      });
      p.send({ t: "stats?", id });
    });
  }

  /** Forwards `signal` (drain) to every worker; resolves when all have exited, killing stragglers after `graceMs`. */
  async stop(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    this.#stopping = true;
    const all = [...this.#procs.values()];
    for (const p of all) p.kill(signal);
    const cancel = after(graceMs, () => all.forEach((p) => p.kill("SIGKILL")));
    await Promise.all(all.map((p) => p.exited));
    cancel();
  }
}

/**
 * In a worker: says hello to the primary and resolves with the first member state it sends; later
 * states go to `onState`, reload requests to `onReload`. `onPrimaryGone` runs if the primary's
 * channel closes.
 */
export function joinPrimary(onState: (s: SharedState) => void, onPrimaryGone: () => void, onReload: () => void, stats: () => ProcessStats): Promise<SharedState> {
  return new Promise((resolve) => {
    let first = true;
    process.on("message", (msg: SharedState | { t: "reload" } | { t: "stats?"; id: number }) => {
      if (msg.t === "reload") return onReload();
      if (msg.t === "stats?") return sendToPrimary({ t: "stats", id: msg.id, stats: stats() });
      if (msg.t !== "state") return;
      if (first) {
        first = false;
        resolve(msg);
      } else onState(msg);
    });
    process.on("disconnect", onPrimaryGone);
    sendToPrimary({ t: "hello" });
  });
}

export function sendToPrimary(msg: ToPrimary): void {
  process.send?.(msg);
}
