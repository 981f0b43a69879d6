/**
 * The client of the fleet benchmark, run as its own process so that the bench's own work (reading
 * socket events, /proc, /metrics) never shows in its latencies:
 * `bun scripts/bench/fleet-client.ts <port> <ops> <durationMs>`.
 *
 * Sends `ops` requests to the etcd member on 127.0.0.1:port through etcd's JSON gateway, one at a
 * time, alternating `POST /v3/kv/put` and a linearizable `POST /v3/kv/range` over fetch's pooled
 * keep-alive connections, paced evenly over `durationMs` (a request that is due while the previous
 * one is still running starts when it ends; none starts after `durationMs`). Each request is
 * bounded by 5 s. Prints one JSON line: `{"put":Latency,"range":Latency}`.
 *
 * @module
 */

const [port, ops, durationMs] = process.argv.slice(2).map(Number);
if (!port || !ops || !durationMs) {
  process.stderr.write("usage: bun scripts/bench/fleet-client.ts <port> <ops> <durationMs>\n");
  process.exit(2);
}

/** Bound on one request. */
const REQUEST_TIMEOUT_MS = 5000;
/** Keys written and read, round-robin: a small keyspace, so the store does not grow with the run. */
const KEYS = 100;

/** What the bench reads for each kind of request. */
export interface Latency {
  /** Requests answered 200 with a header. */
  ok: number;
  errors: number;
  /** The first few error texts. */
  errorSamples: string[];
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
}

const b64 = (s: string) => Buffer.from(s).toString("base64");

/** The `q` quantile of sorted `xs` (nearest rank). */
function quantile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

function summary(ms: number[], errors: string[]): Latency {
  const sorted = [...ms].sort((a, b) => a - b);
  return { ok: ms.length, errors: errors.length, errorSamples: [...new Set(errors)].slice(0, 3), p50Ms: quantile(sorted, 0.5), p99Ms: quantile(sorted, 0.99), maxMs: sorted.at(-1) ?? null };
}

/** One request; resolves to its time in ms, or throws why it failed. */
async function request(path: string, body: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    body,
    headers: { "content-type": "application/json" },
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  if (res.status !== 200 || !text.includes('"header"')) throw new Error(`HTTP ${res.status}: ${text.slice(0, 80)}`);
  return performance.now() - t0;
}

const times = { put: [] as number[], range: [] as number[] };
const errors = { put: [] as string[], range: [] as string[] };
const start = performance.now();
const spacing = durationMs / ops;
for (let i = 0; i < ops; i++) {
  const due = start + i * spacing;
  const now = performance.now();
  if (now - start > durationMs) break;
  if (due > now) await Bun.sleep(due - now);
  const key = b64(`fleet/k${i % KEYS}`);
  const kind = i % 2 === 0 ? "put" : "range";
  const body = kind === "put" ? JSON.stringify({ key, value: b64(`v${i}`) }) : JSON.stringify({ key });
  try {
    times[kind].push(await request(`/v3/kv/${kind}`, body));
  } catch (e) {
    errors[kind].push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  }
}
process.stdout.write(`${JSON.stringify({ put: summary(times.put, errors.put), range: summary(times.range, errors.range) })}\n`);
process.exit(0);
