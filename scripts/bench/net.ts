/**
 * Loopback helpers of the bench's own: readiness checks, one-shot HTTP over a fresh TCP connection,
 * and memory and descriptors summed over a process tree. Free ports and the per-process /proc
 * readings are the shared ones in test/support/net.ts.
 *
 * @module
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { fdCount, rssKiB, tcpConnect } from "../../test/support/net.ts";

/**
 * Polls until a TCP connect to 127.0.0.1:port succeeds (every 25 ms, at most `timeoutMs`).
 * `alive` is checked between attempts so a process that died fails fast.
 *
 * @throws when the deadline passes or `alive()` turns false.
 */
export async function waitConnectable(port: number, timeoutMs: number, alive: () => boolean = () => true): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 10_000; i++) {
    if (!alive()) throw new Error("exited before accepting connections");
    if ((await tcpConnect(port, 500)) === "connected") return;
    if (performance.now() > deadline) break;
    await Bun.sleep(25);
  }
  throw new Error(`127.0.0.1:${port} not accepting connections after ${timeoutMs} ms`);
}

/** A TCP socket bound to 127.0.0.1, from /proc/net/tcp: its local port and its state (`"0A"` listening, `"01"` established, `"06"` time-wait, ...). */
export interface LoopbackSocket {
  port: number;
  state: string;
}

/** Every TCP socket bound to 127.0.0.1 now (the IPv4 table of /proc/net/tcp; no connection is made). */
export function loopbackSockets(): LoopbackSocket[] {
  const out: LoopbackSocket[] = [];
  for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.startsWith("0100007F:") && f[3] !== undefined) out.push({ port: Number.parseInt(f[1].slice(9), 16), state: f[3] });
  }
  return out;
}

/** The ports something listens on at 127.0.0.1 now. */
export function listeningPorts(): Set<number> {
  return new Set(loopbackSockets().filter((s) => s.state === "0A").map((s) => s.port));
}

/** Whether some socket listens on 127.0.0.1:port, read from /proc/net/tcp (no connection is made). */
export function isListening(port: number): boolean {
  return listeningPorts().has(port);
}

/**
 * Polls until 127.0.0.1:port is listening without connecting to it: for the failover workload,
 * where a readiness connection would itself make the proxy dial (and fail over) before we measure.
 */
export async function waitListening(port: number, timeoutMs: number, alive: () => boolean = () => true): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 10_000; i++) {
    if (!alive()) throw new Error("exited before listening");
    if (isListening(port)) return;
    if (performance.now() > deadline) break;
    await Bun.sleep(20);
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

export interface HttpResult {
  /** HTTP status, or 0 when no complete response arrived. */
  status: number;
  body: string;
  /** Why there is no response: "timeout", or the connection error / early close. */
  error?: string;
  ms: number;
}

/**
 * One HTTP/1.1 request over a new TCP connection to 127.0.0.1:port (`Connection: close`), read to
 * the end; never throws. The connect is cancelled at `timeoutMs`.
 *
 * @example await httpOnce(2379, "POST", "/v3/kv/range", '{"key":"Zm9v"}', 2000)
 */
export function httpOnce(port: number, method: string, path: string, body: string, timeoutMs: number): Promise<HttpResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      const text = Buffer.concat(chunks).toString("utf8");
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      const split = text.indexOf("\r\n\r\n");
      const status = m && split >= 0 ? Number(m[1]) : 0;
      resolve({ status, body: split >= 0 ? text.slice(split + 4) : "", error: status === 0 ? (error ?? "connection closed without a response") : undefined, ms: performance.now() - t0 });
    };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    s.once("connect", () => {
      s.write(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    s.on("data", (c: Buffer) => chunks.push(c));
    s.once("end", () => finish());
    s.once("close", () => finish());
    s.once("error", (e: NodeJS.ErrnoException) => finish(e.code ?? e.message));
  });
}

/** `pid` and all its descendants (via /proc/<pid>/task/<tid>/children), for RSS of multi-process contenders. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  for (let i = 0; i < 1000 && queue.length > 0; i++) {
    const p = queue.shift()!;
    out.push(p);
    const tasks = `/proc/${p}/task`;
    if (!existsSync(tasks)) continue;
    let tids: string[] = [];
    try {
      tids = readdirSync(tasks);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        for (const c of readFileSync(`${tasks}/${tid}/children`, "utf8").trim().split(/\s+/)) if (c !== "") queue.push(Number(c));
      } catch {
        // the task ended meanwhile
      }
    }
  }
  return out;
}

/** `read(pid)` summed over `pids`; a process already gone counts 0. */
function summed(pids: readonly number[], read: (pid: number) => number): number {
  let n = 0;
  for (const p of pids) {
    try {
      n += read(p);
    } catch {
      // gone
    }
  }
  return n;
}

/** Summed VmRSS of `pids` in KiB (processes already gone count 0). */
export function totalRssKiB(pids: readonly number[]): number {
  return summed(pids, rssKiB);
}

/** Open file descriptors summed over `pids` (processes already gone count 0). */
export function totalFdCount(pids: readonly number[]): number {
  return summed(pids, fdCount);
}
