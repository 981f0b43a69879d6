/**
 * Child processes of the tests, the robustness runs and the benchmarks: where a program is, a
 * command run to its end with its output collected, and tracking, so that no etcd member, gateway,
 * listener or tool outlives the process that started it (an `exit` hook SIGKILLs whatever is
 * tracked and still running, even after a `process.exit` from elsewhere).
 *
 * @module
 */
import type { Subprocess } from "bun";

/** The path of `name` on PATH. @throws when it is not installed */
export function which(name: string): string {
  const path = Bun.which(name);
  if (path === null) throw new Error(`${name} not found on PATH (scripts/ensure-deps.sh installs what the tests use from Debian)`);
  return path;
}

const tracked = new Set<Subprocess>();
process.on("exit", () => void killTracked());

/**
 * Remembers `proc` until it exits, so it is killed at exit (or by `killTracked`) if still running.
 *
 * @example const p = track(Bun.spawn(["etcdctl", "get", "k"]))
 */
export function track<T extends Subprocess>(proc: T): T {
  tracked.add(proc);
  void proc.exited.then(() => tracked.delete(proc));
  return proc;
}

/** SIGKILLs every tracked process still running (at once) and resolves once they have exited. */
export async function killTracked(): Promise<void> {
  const procs = [...tracked];
  for (const p of procs) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
}

/**
 * SIGKILLs `proc` after `ms` unless it has exited by then.
 *
 * @returns `timedOut()`: whether it was killed for that
 */
export function killAfter(proc: Subprocess, ms: number): { timedOut(): boolean } {
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    proc.kill("SIGKILL");
  }, ms);
  void proc.exited.then(() => clearTimeout(timer));
  return { timedOut: () => killed };
}

/** What a command run to its end printed, and how it ended. */
export interface RunResult {
  /** Exit code; null when it was killed at the time limit. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd` to its end with stdout and stderr collected, SIGKILLed after `timeoutMs` (`code` is
 * null then and stderr says so). Never throws for a failing command.
 *
 * @example const r = await runToEnd(["wrk", "--version"], { timeoutMs: 10_000 }); r.code === 0
 */
export async function runToEnd(cmd: string[], opts: { timeoutMs: number; env?: Record<string, string | undefined> }): Promise<RunResult> {
  const proc = track(Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: opts.env }));
  const { timedOut } = killAfter(proc, opts.timeoutMs);
  const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  const code = await proc.exited;
  return timedOut() ? { code: null, stdout, stderr: `${stderr}\n(killed after ${opts.timeoutMs} ms)` } : { code, stdout, stderr };
}

/** Whether process `pid` exists (a zombie counts until it is reaped). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
