/**
 * `bun scripts/bench/memory-guard.ts [idle.json] [per-conn.json]`: CI's guard on what one proxied
 * connection costs in memory (issue 25), which needs no timing. It fails when either is above its
 * bound:
 * - idle RSS per connection: the `idle.kib` median of `etcd-gateway` from a
 *   `scripts/bench/run.ts --only idle` run (default bench-results/latest.json);
 * - JavaScript heap bytes allocated per connection: the `etcd-gateway` allocation pass of a
 *   `scripts/bench/per-conn.ts --heap-only` run (default bench-results/per-conn.json).
 *
 * The bounds come from issue 25's result on the 2-core CI machine type (2026-12-06; numbers and
 * commands in docs/performance.md, "Memory per connection"). Idle: 2.66–3.19 KiB a connection over
 * six one-round runs of 5,000 connections (median 2.80; the build before 2.92–3.18, HAProxy 3.33), the
 * spread coming from when the runtime's heap grows by a block; IDLE_KIB_BOUND sits above it, so noise
 * does not fail CI and a regression of half a kilobyte a connection does. Heap: four `--heap-only`
 * runs gave 1,182–1,188 bytes a connection (the build before 2,739–2,759): the collector's own
 * count, steady to a fraction of a percent, so HEAP_BYTES_BOUND leaves 18 % for a runtime update and
 * fails on one more object of about 200 bytes a connection.
 *
 * @module
 */
import { readFileSync } from "node:fs";

export const IDLE_KIB_BOUND = 3.6;
export const HEAP_BYTES_BOUND = 1400;

const idleFile = process.argv[2] ?? "bench-results/latest.json";
const heapFile = process.argv[3] ?? "bench-results/per-conn.json";

function read<T>(file: string, pick: (json: unknown) => T | null | undefined, what: string): T {
  try {
    const v = pick(JSON.parse(readFileSync(file, "utf8")));
    if (v !== undefined && v !== null) return v;
    process.stderr.write(`memory-guard: no ${what} for etcd-gateway in ${file}\n`);
  } catch (e) {
    process.stderr.write(`memory-guard: cannot read ${file}: ${e instanceof Error ? e.message : String(e)}\n`);
  }
  process.exit(1);
}

const kib = read(idleFile, (j) => (j as { medians: Record<string, Record<string, number | null>> }).medians["etcd-gateway"]?.["idle.kib"], "idle.kib");
const heap = read(
  heapFile,
  (j) => (j as { samples: { contender: string; gc?: { bytesPerConn: number | null } }[] }).samples.find((s) => s.contender === "etcd-gateway")?.gc?.bytesPerConn,
  "heap bytes per connection",
);
const idleOk = kib <= IDLE_KIB_BOUND;
const heapOk = heap <= HEAP_BYTES_BOUND;
process.stdout.write(`memory-guard: ${kib.toFixed(2)} KiB per idle proxied connection, ${idleOk ? "within" : "ABOVE"} the bound of ${IDLE_KIB_BOUND} KiB\n`);
process.stdout.write(`memory-guard: ${Math.round(heap)} heap bytes allocated per connection, ${heapOk ? "within" : "ABOVE"} the bound of ${HEAP_BYTES_BOUND}\n`);
process.exit(idleOk && heapOk ? 0 : 1);
