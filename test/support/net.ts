/**
 * Loopback helpers for the tests, the soak and linearizability runs and the benchmarks: free ports,
 * process resource readings from /proc (descriptors, memory, CPU time), small waits.
 *
 * @module
 */
import { readdirSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";

/**
 * `count` distinct TCP ports free on 127.0.0.1 right now (each bound on port 0, all held until the
 * last is chosen so they differ, then released). Another process may still take one before its
 * user binds it; the etcd cluster launcher retries for that.
 */
export function freePorts(count: number): number[] {
  const held = Array.from({ length: count }, () => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
  const ports = held.map((l) => l.port);
  for (const l of held) l.stop(true);
  return ports;
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort(): number {
  return freePorts(1)[0]!;
}

/**
 * One TCP connect to 127.0.0.1:port: the open socket and "connected", or null and "timeout" (no
 * answer within `timeoutMs`; the attempt is cancelled) or the error code (e.g. "ECONNREFUSED").
 */
export function tryConnect(port: number, timeoutMs: number): Promise<{ socket: Socket | null; outcome: string }> {
  return new Promise((resolve) => {
    // node:net, because destroy() cancels a pending connect and Bun.connect cannot (docs/bun.md, trap 5).
    const s = connect({ host: "127.0.0.1", port });
    const fail = (outcome: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ socket: null, outcome });
    };
    const timer = setTimeout(() => fail("timeout"), timeoutMs);
    s.once("connect", () => {
      clearTimeout(timer);
      resolve({ socket: s, outcome: "connected" });
    });
    s.once("error", (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
  });
}

/** One TCP connect to 127.0.0.1:port, closed at once; the outcome as `tryConnect` gives it. */
export async function tcpConnect(port: number, timeoutMs: number): Promise<string> {
  const { socket, outcome } = await tryConnect(port, timeoutMs);
  socket?.destroy();
  return outcome;
}

/** Open file descriptors of a process. @throws when it is gone */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident set size (VmRSS) of a process in KiB. @throws when it is gone */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/**
 * CPU time a process has used so far, all its threads together (utime + stime of /proc/<pid>/stat),
 * in seconds. @throws when it is gone
 */
export function cpuSeconds(pid: number): number {
  // The command name in parentheses may hold spaces: the fields after it are split from ") ".
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks of 1/100 s
}

/**
 * Time a process's threads have been on a CPU so far, in ns: /proc/<pid>/task/<tid>/schedstat
 * summed over its threads (finer than cpuSeconds' 10 ms ticks). @throws when it is gone
 */
export function cpuNs(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
  return ns;
}

/**
 * The KiB fields of /proc/<pid>/smaps_rollup (`Rss`, `Pss`, `Private_Clean`, `Private_Dirty`, ...).
 * @throws when it is gone
 */
export function smapsRollupKiB(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of readFileSync(`/proc/${pid}/smaps_rollup`, "utf8").matchAll(/^(\w+):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 10_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await sleep(everyMs);
  }
}
