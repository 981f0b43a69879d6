/**
 * The passes of the per-connection cost table (scripts/bench/per-conn.ts), each over a started
 * contender: CPU and page faults from /proc, system calls by name (`perf stat` on the syscall
 * tracepoints, or `strace -c -f`), libc malloc calls (`perf stat` on uprobes), the garbage
 * collector's own log of bytes allocated (JavaScriptCore's `BUN_JSC_logGC`, Go's `GODEBUG`), and
 * keep-alive requests (wrk).
 *
 * @module
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { cpuNs } from "../../test/support/net.ts";
import { runToEnd } from "../../test/support/process.ts";
import { benchDir, spawnChild } from "./children.ts";
import { churn, type ChurnProgress, type ChurnResult } from "./churn-client.ts";
import type { Running } from "./contenders.ts";
import { runWrk, wrkProblem } from "./tools.ts";

/** Counters of a process tree at one moment: /proc/<pid>/stat and status, summed. */
export interface ProcSnap {
  /** utime and stime in clock ticks (1/100 s), all threads. */
  utime: number;
  stime: number;
  minflt: number;
  rssKiB: number;
  threads: number;
  /** Time on CPU in ns, from /proc/<pid>/task/<tid>/schedstat summed over threads (finer than the ticks). */
  runNs: number;
}

export function procSnap(pids: readonly number[]): ProcSnap {
  const s: ProcSnap = { utime: 0, stime: 0, minflt: 0, rssKiB: 0, threads: 0, runNs: 0 };
  for (const pid of pids) {
    try {
      // Fields after the command name, which may hold spaces: index n-3 is field n of proc(5).
      const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      s.minflt += Number(f[7]);
      s.utime += Number(f[11]);
      s.stime += Number(f[12]);
      s.threads += Number(f[17]);
      s.rssKiB += Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
      s.runNs += cpuNs(pid);
    } catch {
      // gone
    }
  }
  return s;
}

/** What one churn pass cost the contender. */
export interface ChurnCost {
  client: ChurnResult;
  before: ProcSnap;
  after: ProcSnap;
}

/** Bounds a pass of `count` connections: 60 s plus 2 ms a connection. */
export const passTimeoutMs = (count: number) => 60_000 + 2 * count;

/** One churn pass through `r` with /proc read before and after. */
export async function churnPass(r: Running, count: number, concurrency: number, progress?: ChurnProgress): Promise<ChurnCost> {
  const before = procSnap(r.pids());
  const client = await churn(r.port, count, concurrency, passTimeoutMs(count), progress);
  const after = procSnap(r.pids());
  return { client, before, after };
}

/** Runs `tool` (perf stat or strace, writing `outFile`) around `work`, then stops it with SIGINT so it writes its summary. */
async function underTool<T>(name: string, tool: string[], outFile: string, work: () => Promise<T>): Promise<{ result: T; text: string }> {
  const child = spawnChild(name, tool);
  try {
    await Bun.sleep(400); // attached to every thread well before the first connection
    if (!child.running()) throw new Error(`${name} exited at start: ${child.logTail(3)}`);
    const result = await work();
    child.proc.kill("SIGINT");
    const exited = await Promise.race([child.proc.exited.then(() => true), Bun.sleep(15_000).then(() => false)]);
    if (!exited) throw new Error(`${name} did not exit on SIGINT`);
    if (!existsSync(outFile)) throw new Error(`${name} wrote no ${outFile}: ${child.logTail(3)}`);
    return { result, text: readFileSync(outFile, "utf8") };
  } finally {
    await child.stop();
  }
}

/** System calls by name during one pass: `calls` (and `errors` where the tool tells). */
export interface SyscallCount {
  calls: Record<string, number>;
  errors: Record<string, number>;
}

/** `perf stat -x,` output of `syscalls:sys_enter_*` (or any events): event name to count. */
export function parsePerfStat(text: string, prefix: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const f = line.split(",");
    if (f.length < 3 || !f[2]!.startsWith(prefix)) continue;
    const n = Number(f[0]);
    if (Number.isFinite(n) && n > 0) out[f[2]!.slice(prefix.length)] = n;
  }
  return out;
}

/** `strace -c` summary: syscall name to calls and errors (the total line left out). */
export function parseStraceSummary(text: string): SyscallCount {
  const out: SyscallCount = { calls: {}, errors: {} };
  for (const line of text.split("\n")) {
    const t = line.trim().split(/\s+/);
    if (t.length < 5 || !/^[\d.]+$/.test(t[0]!) || t.at(-1) === "total") continue;
    const name = t.at(-1)!;
    out.calls[name] = Number(t[3]);
    if (t.length >= 6) out.errors[name] = Number(t[4]);
  }
  return out;
}

const SYSCALL_PREFIX = "syscalls:sys_enter_";

/** Whether `perf stat` can count syscall tracepoints here (it cannot in many containers). */
export async function perfSyscallsWork(): Promise<boolean> {
  if (Bun.which("perf") === null) return false;
  const res = await runToEnd(["perf", "stat", "-x,", "-e", `${SYSCALL_PREFIX}write`, "true"], { timeoutMs: 10_000 });
  return res.code === 0 && !/not supported|<not counted>/.test(res.stderr);
}

/** A churn pass counted by `perf stat -e 'syscalls:sys_enter_*'` (kernel counters: the proxy is not slowed). */
export async function perfSyscallPass(r: Running, count: number, concurrency: number): Promise<{ cost: ChurnCost; syscalls: SyscallCount }> {
  const out = join(benchDir(), `perf-syscalls-${r.contender.id}-${Date.now()}.txt`);
  const tool = ["perf", "stat", "-x,", "-o", out, "-e", `${SYSCALL_PREFIX}*`, "-p", r.pids().join(",")];
  const { result, text } = await underTool("perf-stat", tool, out, () => churnPass(r, count, concurrency));
  return { cost: result, syscalls: { calls: parsePerfStat(text, SYSCALL_PREFIX), errors: {} } };
}

/** A churn pass under `strace -c -f` (ptrace: the proxy runs several times slower meanwhile). */
export async function stracePass(r: Running, count: number, concurrency: number): Promise<{ cost: ChurnCost; syscalls: SyscallCount }> {
  const out = join(benchDir(), `strace-${r.contender.id}-${Date.now()}.txt`);
  const tool = ["strace", "-c", "-f", "-qq", "-o", out, ...r.pids().flatMap((p) => ["-p", String(p)])];
  const { result, text } = await underTool("strace", tool, out, () => churnPass(r, count, concurrency));
  return { cost: result, syscalls: parseStraceSummary(text) };
}

/** The uprobe group the malloc pass adds (and removes at exit). */
const PROBE_GROUP = "perconn";
const ALLOCATORS = ["malloc", "calloc", "realloc"] as const;

/** Adds uprobes on libc's malloc, calloc and realloc; returns the perf events, or why not. */
export async function addMallocProbes(): Promise<string[] | string> {
  if (Bun.which("perf") === null) return "perf not installed";
  const libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6"].find((p) => existsSync(p));
  if (libc === undefined) return "libc.so.6 not found";
  await removeMallocProbes();
  const res = await runToEnd(["perf", "probe", "-q", "-x", libc, ...ALLOCATORS.flatMap((f) => ["-a", `${PROBE_GROUP}:${f}=${f}`])], { timeoutMs: 30_000 });
  if (res.code !== 0) return `perf probe failed: ${res.stderr.trim().split("\n").slice(-1)[0] ?? ""}`;
  return ALLOCATORS.map((f) => `${PROBE_GROUP}:${f}`);
}

export async function removeMallocProbes(): Promise<void> {
  if (Bun.which("perf") !== null) await runToEnd(["perf", "probe", "-q", "-d", `${PROBE_GROUP}:*`], { timeoutMs: 30_000 });
}

/** A churn pass counting libc allocator calls (uprobes; every call traps, so no CPU is read from it). */
export async function mallocPass(r: Running, events: string[], count: number, concurrency: number): Promise<{ cost: ChurnCost; calls: Record<string, number> }> {
  const out = join(benchDir(), `perf-malloc-${r.contender.id}-${Date.now()}.txt`);
  const tool = ["perf", "stat", "-x,", "-o", out, "-e", events.join(","), "-p", r.pids().join(",")];
  const { result, text } = await underTool("perf-malloc", tool, out, () => churnPass(r, count, concurrency));
  return { cost: result, calls: parsePerfStat(text, `${PROBE_GROUP}:`) };
}

/** Keep-alive requests (wrk) with /proc read before and after. */
export async function smallPass(r: Running, seconds: number, connections: number): Promise<{ requests: number; rps: number; problem: string; before: ProcSnap; after: ProcSnap }> {
  const before = procSnap(r.pids());
  const res = await runWrk({ url: `http://127.0.0.1:${r.port}/`, connections, threads: 1, seconds });
  const after = procSnap(r.pids());
  return { requests: res.requests, rps: res.rps, problem: wrkProblem(res), before, after };
}

/** One collection, as the garbage collector's log tells it: bytes allocated since the previous one. */
interface GcEvent {
  bytes: number | null;
  /** Connections finished when the line was read. */
  ok: number;
  /** Whether `bytes` is the collector's own allocation counter (else estimated from heap sizes). */
  exact: boolean;
}

/** The collector's log format: JavaScriptCore (`BUN_JSC_logGC=1`) or Go (`GODEBUG=gctrace=1,gcpacertrace=1`). */
export type GcLog = "jsc" | "go";

/**
 * Which collector log a contender has: JavaScriptCore for Bun processes, Go's for etcd's gateway;
 * none for HAProxy (no collector) and for `--workers` rows, whose processes write one log together.
 */
export function gcLogOf(id: string): GcLog | null {
  if (id === "etcd-gateway" || id === "etcd-gateway-before" || id === "etcd-gateway-all" || id === "bun-relay") return "jsc";
  return id === "etcd-gw" ? "go" : null;
}

/**
 * The collector's log on. For JavaScriptCore also Bun's own GC timer off and JSC's collection timer
 * off, so that every collection is started by allocation and its log line says exactly how many
 * bytes were allocated since the previous one (a timed collection says nothing, and resets the count).
 */
export const GC_LOG_ENV: Record<GcLog, Record<string, string>> = {
  jsc: { BUN_JSC_logGC: "1", BUN_GC_TIMER_DISABLE: "1", BUN_JSC_collectionTimerMaxPercentCPU: "0" },
  go: { GODEBUG: "gctrace=1,gcpacertrace=1" },
};

/** Reads GC lines as they come; the state carries across reads. */
class GcLogReader {
  events: GcEvent[] = [];
  #partial = "";
  #requested: number | null = null;
  #prevEndKb: number | null = null;
  #heapEnd: number | null = null;
  #prevMarked: number | null = null;
  constructor(readonly kind: GcLog) {}

  feed(text: string, ok: number): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop() ?? "";
    for (const line of lines) {
      if (this.kind === "jsc") this.jsc(line, ok);
      else this.go(line, ok);
    }
  }

  /**
   * `Requesting GC because bytes allocated this cycle: N …`, then `[GC<…>: START M 8912kb => EdenCollection, …`
   * and, on that line or a later one (a collection in several increments), `… => 191kb, p=…`: the heap after it.
   */
  private jsc(line: string, ok: number): void {
    const req = /bytes allocated this cycle: (\d+)/.exec(line);
    if (req) this.#requested = Number(req[1]);
    const start = /: START \w+ (\d+)kb => /.exec(line);
    if (start) {
      const startKb = Number(start[1]);
      const estimate = this.#prevEndKb === null ? null : Math.max(0, startKb - this.#prevEndKb) * 1024;
      this.events.push({ bytes: this.#requested ?? estimate, ok, exact: this.#requested !== null });
      this.#requested = null;
    }
    const end = /=> (\d+)kb, p=/.exec(line);
    if (end) this.#prevEndKb = Number(end[1]);
  }

  /** `pacer: … in T B -> H B (∆goal …` (heap at mark end, bytes), then `gc N @… A->B->C MB` (C: marked live, whole MB). */
  private go(line: string, ok: number): void {
    const pacer = /in (\d+) B -> (\d+) B \(/.exec(line);
    if (pacer) this.#heapEnd = Number(pacer[2]);
    const gc = /^gc \d+ @.* (\d+)->(\d+)->(\d+) MB/.exec(line);
    if (!gc) return;
    const bytes = this.#heapEnd !== null && this.#prevMarked !== null ? Math.max(0, this.#heapEnd - this.#prevMarked) : null;
    this.events.push({ bytes, ok, exact: false });
    // gctrace prints whole MB rounded down: the middle of that MB is the unbiased guess.
    this.#prevMarked = (Number(gc[3]) + 0.5) * 1048576;
    this.#heapEnd = null;
  }
}

/** Allocation per connection from the collector's log: over the collections inside the pass. */
export interface GcAlloc {
  bytesPerConn: number | null;
  collections: number;
  /** Connections between the first and the last collection of the pass. */
  conns: number;
  /** Share of those collections whose bytes are the collector's own counter. */
  exactShare: number;
  client: ChurnResult;
}

/**
 * A churn pass through a contender started with GC_LOG_ENV[kind]: its log file is read every 20 ms
 * with the count of connections finished, and the bytes allocated between the first and the last
 * collection of the pass are divided by the connections finished between them.
 */
export async function gcPass(r: Running, kind: GcLog, count: number, concurrency: number): Promise<GcAlloc> {
  const file = r.child?.logFile;
  if (file === undefined) throw new Error("no log file");
  const reader = new GcLogReader(kind);
  let offset = statSync(file).size;
  const progress: ChurnProgress = { ok: 0 };
  const poll = () => {
    const size = statSync(file).size;
    if (size <= offset) return;
    const buf = Buffer.alloc(size - offset);
    const fd = openSync(file, "r");
    try {
      offset += readSync(fd, buf, 0, buf.length, offset);
    } finally {
      closeSync(fd);
    }
    reader.feed(buf.toString("utf8"), progress.ok);
  };
  const timer = setInterval(poll, 20);
  let client: ChurnResult;
  try {
    client = await churn(r.port, count, concurrency, passTimeoutMs(count), progress);
  } finally {
    clearInterval(timer);
  }
  poll();
  const ev = reader.events.filter((e) => e.ok > 0 && e.ok < client.ok);
  const inner = ev.slice(1);
  const conns = ev.length >= 2 ? ev.at(-1)!.ok - ev[0]!.ok : 0;
  const bytes = inner.every((e) => e.bytes !== null) ? inner.reduce((a, e) => a + e.bytes!, 0) : null;
  return {
    bytesPerConn: conns > 0 && bytes !== null ? bytes / conns : null,
    collections: inner.length,
    conns,
    exactShare: inner.length === 0 ? 0 : inner.filter((e) => e.exact).length / inner.length,
    client,
  };
}
