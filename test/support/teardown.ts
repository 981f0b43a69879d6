/**
 * Teardown for the long-running runs outside `bun test` (test/robustness/soak.ts and
 * linearizability.ts): whatever they start (the etcd cluster, the gateway, etcdctl children) is
 * registered here and stopped at the end of the run, when it throws, and on SIGINT/SIGTERM/SIGHUP. An `exit` hook SIGKILLs any tracked child still alive, so
 * even a `process.exit` from elsewhere leaves nothing behind.
 *
 * @module
 */
import type { Subprocess } from "bun";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
const children = new Set<Subprocess>();
/** Bound on one cleanup, so a stuck one cannot keep the process (and a CI job) alive. */
const CLEANUP_TIMEOUT_MS = 20_000;

/** Registers `fn` to run at teardown; cleanups run newest first. */
export function onTeardown(fn: () => Promise<unknown> | unknown): void {
  cleanups.push(fn);
}

/**
 * Remembers `proc` until it exits, so teardown can kill it.
 *
 * @example const p = track(Bun.spawn(["etcdctl", "get", "k"]))
 */
export function track<T extends Subprocess>(proc: T): T {
  children.add(proc);
  void proc.exited.then(() => children.delete(proc));
  return proc;
}

/** Runs every cleanup once (each bounded in time), then SIGKILLs any tracked child still running. */
export async function teardown(): Promise<void> {
  while (cleanups.length > 0) {
    const fn = cleanups.pop()!;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        Promise.resolve().then(fn),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`cleanup took over ${CLEANUP_TIMEOUT_MS} ms`)), CLEANUP_TIMEOUT_MS))),
      ]);
    } catch (e) {
      process.stderr.write(`teardown: ${e instanceof Error ? e.message : String(e)}\n`);
    } finally {
      clearTimeout(timer);
    }
  }
  for (const p of children) p.kill("SIGKILL");
  await Promise.all([...children].map((p) => p.exited));
}

process.on("exit", () => {
  for (const p of children) p.kill("SIGKILL");
});

/** A bad flag or value: reported on one line (no stack) with exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Whether `e` is about the command line: ours, or one of node:util parseArgs's (`ERR_PARSE_ARGS_*`). */
function isUsageError(e: unknown): e is Error {
  return e instanceof UsageError || (e instanceof Error && String((e as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS"));
}

/**
 * Runs `body` with teardown guaranteed: on its end (its resolved value is the exit code), on a
 * throw (exit 1), and on SIGINT/SIGTERM/SIGHUP (exit 128 + signal number; a second signal exits at
 * once). A UsageError (or a parseArgs error) exits 2 with one line. `name` prefixes the messages.
 */
export async function runWithTeardown(name: string, body: () => Promise<number>): Promise<never> {
  let stopping = false;
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      if (stopping) process.exit(128 + numbers[signal]!);
      stopping = true;
      process.stderr.write(`${name}: ${signal}: stopping everything\n`);
      void teardown().finally(() => process.exit(128 + numbers[signal]!));
    });
  }
  let code = 1;
  try {
    code = await body();
  } catch (e) {
    if (isUsageError(e)) {
      process.stderr.write(`${name}: ${e.message} (--help lists the flags)\n`);
      code = 2;
    } else process.stderr.write(`${name}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  }
  await teardown();
  process.exit(code);
}
