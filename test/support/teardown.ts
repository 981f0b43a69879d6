/**
 * Teardown for the long-running runs outside `bun test` (test/robustness/soak.ts and
 * linearizability.ts): what they start (the etcd cluster, the gateway) is registered here and
 * stopped at the end of the run, when it throws, and on SIGINT/SIGTERM/SIGHUP; then every child
 * process still tracked (process.ts: members, gateways, etcdctl runs) is SIGKILLed.
 *
 * @module
 */
import { killTracked } from "./process.ts";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
/** Bound on one cleanup, so a stuck one cannot keep the process (and a CI job) alive. */
const CLEANUP_TIMEOUT_MS = 20_000;

/** Registers `fn` to run at teardown; cleanups run newest first. */
export function onTeardown(fn: () => Promise<unknown> | unknown): void {
  cleanups.push(fn);
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
  await killTracked();
}

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
