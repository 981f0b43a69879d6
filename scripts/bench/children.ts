/**
 * Every long-lived process the bench starts goes through here: each logs to its own file in the
 * run's dir, is remembered until it exits, and is killed at the end of the run, on Ctrl-C and on
 * errors (an `exit` hook, signal handlers, and cleanups such as the etcd cluster's `stop`).
 * Short-lived tools (wrk, iperf3, apt-get) run to their end through runToEnd in
 * test/support/process.ts, which tracks them; they are killed here too.
 *
 * @module
 */
import type { Subprocess } from "bun";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { killTracked } from "../../test/support/process.ts";
import { processTree } from "./net.ts";

/** A started child process. */
export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly proc: Subprocess;
  /** Where its stdout and stderr go. */
  readonly logFile: string;
  /** Whether it is still running. */
  running(): boolean;
  /** SIGKILLs it and its descendants (worker processes, if any) and waits for it to exit. */
  stop(): Promise<void>;
  /** The last lines of its log. */
  logTail(lines?: number): string;
}

const live = new Set<Subprocess>();
const cleanups = new Set<() => Promise<void>>();
let runDir: string | null = null;
let seq = 0;

/** The dir holding this run's logs and generated configs; removed at exit unless `keep` was asked for. */
export function benchDir(): string {
  runDir ??= mkdtempSync(join(tmpdir(), "etcd-gateway-bench-"));
  return runDir;
}

let keepDir = false;
/** Keeps the run dir (logs, configs) after exit, e.g. after a failure worth reading. */
export function keepBenchDir(): void {
  keepDir = true;
}

/**
 * Starts `cmd` with stdout and stderr appended to `<benchDir>/<name>-<n>.log` (never a pipe: a
 * child blocked on a full pipe would distort what it measures).
 *
 * @param stdout "pipe" for the few children that report a result on stdout (the idle client).
 * @param env variables added to the bench's own environment (e.g. a garbage collector's log switch).
 */
export function spawnChild(name: string, cmd: string[], opts: { stdout?: "log" | "pipe"; stdin?: "ignore" | "pipe"; cwd?: string; env?: Record<string, string> } = {}): Child {
  const logFile = join(benchDir(), `${name.replace(/[^\w.-]+/g, "_")}-${++seq}.log`);
  const fd = openSync(logFile, "a");
  let proc: Subprocess;
  try {
    proc = Bun.spawn(cmd, { stdin: opts.stdin ?? "ignore", stdout: opts.stdout === "pipe" ? "pipe" : fd, stderr: fd, cwd: opts.cwd, env: opts.env === undefined ? undefined : { ...process.env, ...opts.env } });
  } finally {
    // The child has its own copy of the descriptor.
    closeSync(fd);
  }
  live.add(proc);
  void proc.exited.then(() => live.delete(proc));
  const running = () => proc.exitCode === null && proc.signalCode === null;
  return {
    name,
    pid: proc.pid,
    proc,
    logFile,
    running,
    async stop() {
      if (running()) killTree(proc.pid);
      await proc.exited;
    },
    logTail: (lines = 5) => tail(logFile, lines),
  };
}

/** The last `lines` non-empty lines of a file, joined with " | " for a one-line error. */
export function tail(path: string, lines = 5): string {
  if (!existsSync(path)) return "";
  return readFileSync(path, "utf8").trim().split("\n").filter((l) => l.trim() !== "").slice(-lines).join(" | ");
}

/**
 * Reads a child's stdout a line at a time: each call resolves with the next line, waited for at
 * most `timeoutMs`. @throws when the child exits first or the time runs out (`what` names it)
 */
export function lineReader(stdout: ReadableStream<Uint8Array>, what: string): (timeoutMs: number) => Promise<string> {
  const reader = stdout.getReader();
  const decoder = new TextDecoder();
  let text = "";
  return async (timeoutMs) => {
    const deadline = performance.now() + timeoutMs;
    for (let i = 0; i < 100_000; i++) {
      const nl = text.indexOf("\n");
      if (nl >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        return line;
      }
      const left = deadline - performance.now();
      if (left <= 0) break;
      let timer: Timer | undefined;
      const chunk = await Promise.race([reader.read(), new Promise<null>((r) => (timer = setTimeout(() => r(null), left)))]);
      clearTimeout(timer);
      if (chunk === null) break;
      if (chunk.done) throw new Error(`${what} exited before reporting`);
      text += decoder.decode(chunk.value, { stream: true });
    }
    throw new Error(`${what} did not report within ${timeoutMs} ms`);
  };
}

/** Registers an async cleanup (e.g. stopping the etcd cluster) run on Ctrl-C; returns its remover. */
export function onCleanup(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/** SIGKILLs `pid` and its descendants, all listed before the first kill so that none escapes by being reparented. */
function killTree(pid: number): void {
  for (const p of processTree(pid).reverse()) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/**
 * SIGKILLs every child still running, with its descendants, and what test/support tracks (tools run
 * by runToEnd, the etcd cluster, the blackhole); the kills are synchronous, so this also works from
 * the `exit` hook.
 */
export function killAllChildren(): void {
  for (const p of live) if (p.exitCode === null && p.signalCode === null) killTree(p.pid);
  void killTracked();
}

/** Removes the run dir unless it is to be kept. */
function removeBenchDir(): void {
  if (runDir !== null && !keepDir) rmSync(runDir, { recursive: true, force: true });
}

let hooked = false;
/**
 * Installs the exit hook and the SIGINT/SIGTERM/SIGHUP handlers: on a signal, run the cleanups
 * (bounded to 5 s in all), kill every child and exit 130.
 */
export function installExitHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on("exit", () => {
    killAllChildren();
    removeBenchDir();
  });
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`\nbench: ${signal}: stopping every child process\n`);
    killAllChildren();
    const all = Promise.allSettled([...cleanups].map((fn) => fn()));
    void Promise.race([all, Bun.sleep(5000)]).then(() => process.exit(130));
  };
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, onSignal);
}
