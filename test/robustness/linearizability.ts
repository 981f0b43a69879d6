/**
 * `bun run linearizability` (`bun test/robustness/linearizability.ts`): checks that the gateway
 * loses, replays and reorders nothing, by recording a history of operations on a real 3-member
 * etcd cluster through it while members are killed and restarted (or paused, `--faults`; one at a
 * time, quorum held), and checking that history for linearizability.
 *
 * `--clients` concurrent clients talk to etcd's JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`,
 * linearizable reads) over fetch through our gateway, with no retries of their own, so each
 * acknowledged operation happened exactly once. Each puts values unique to it to a few shared keys
 * and reads them; every operation is recorded with its invoke and response times. At the end every
 * key is read once more through the gateway. register-history.ts then checks the whole history,
 * using etcd's revisions as the order (see there for the rules). Exit 1 on any violation.
 *
 * Usage: bun test/robustness/linearizability.ts [--duration 30s] [--clients 8] [--keys 4] [--faults kill,pause] [--seed N] [--json FILE] [--keep-logs]
 *                                                [--gateway-arg=--policy=round-robin ...]
 *
 * @module
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { GatewayProcess } from "../support/gateway.ts";
import type { Random } from "../support/random.ts";
import { runWithTeardown } from "../support/teardown.ts";
import { COMMON_OPTIONS, COMMON_USAGE, describeOutages, durationFlag, intFlag, outagesJSON, startChaosRun, startRunChaos } from "./chaos-run.ts";
import { checkRegisterHistory, type Operation, type PutRecord, type ReadRecord, type Rule } from "./register-history.ts";

const USAGE = `Usage: bun test/robustness/linearizability.ts [options]
  --duration <d>   how long clients run under member chaos (Go duration) (default 30s)
  --clients <n>    concurrent clients (default 8)
  --keys <n>       keys they share (default 4)
${COMMON_USAGE}  (the run dir of a kept run also holds history.json, every operation recorded)
`;

/** Bound on one request: past it the operation counts as unanswered (a put is then indeterminate). */
const REQUEST_TIMEOUT_MS = 5000;

const b64 = (s: string) => Buffer.from(s).toString("base64");
const unb64 = (s: string) => Buffer.from(s, "base64").toString();

/** A JSON-gateway request through our gateway; throws on a transport error, a timeout or a non-200 answer. */
async function kv<T>(gw: GatewayProcess, path: "put" | "range", body: Record<string, string>): Promise<T> {
  const res = await fetch(`http://${gw.listen}/v3/kv/${path}`, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json" },
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text) as T;
}

interface PutAnswer {
  header?: { revision?: string };
}
interface RangeAnswer {
  header?: { revision?: string };
  kvs?: { value?: string; mod_revision?: string }[];
}

/** Why a request failed, in a few words that group well (digits folded). */
function reason(e: unknown): string {
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return text.split("\n")[0]!.replace(/\d+/g, "N").slice(0, 120);
}

/** Puts `value` to `key`, recording the operation in `history` whether or not it is acknowledged; resolves null once acknowledged, else why not. */
async function recordedPut(gw: GatewayProcess, client: string, key: string, value: string, history: Operation[]): Promise<string | null> {
  const op: PutRecord = { kind: "put", client, key, value, invoke: performance.now(), response: null, revision: null };
  history.push(op);
  try {
    const answer = await kv<PutAnswer>(gw, "put", { key: b64(key), value: b64(value) });
    const revision = Number(answer.header?.revision);
    if (!Number.isSafeInteger(revision) || revision <= 0) throw new Error(`no revision in the put answer ${JSON.stringify(answer)}`);
    op.response = performance.now();
    op.revision = revision;
    return null;
  } catch (e) {
    return reason(e);
  }
}

/** Reads `key` (linearizable), recording the operation in `history` when answered; resolves with it, else why not. */
async function recordedRead(gw: GatewayProcess, client: string, key: string, history: Operation[]): Promise<ReadRecord | string> {
  const invoke = performance.now();
  try {
    const answer = await kv<RangeAnswer>(gw, "range", { key: b64(key) });
    const response = performance.now();
    const revision = Number(answer.header?.revision);
    if (!Number.isSafeInteger(revision) || revision <= 0) throw new Error(`no revision in the range answer ${JSON.stringify(answer)}`);
    const found = answer.kvs?.[0];
    // The JSON gateway leaves out fields at their zero value: an empty value has no "value".
    const op: ReadRecord = {
      kind: "read",
      client,
      key,
      invoke,
      response,
      value: found === undefined ? null : unb64(found.value ?? ""),
      modRevision: found === undefined ? 0 : Number(found.mod_revision),
      revision,
    };
    history.push(op);
    return op;
  } catch (e) {
    return reason(e);
  }
}

/** Counts of one client's operations, and why those that failed did. */
interface Tally {
  putsAcked: number;
  putsUnacked: number;
  readsOk: number;
  readsFailed: number;
  failures: Map<string, number>;
}

/** Client `id`: random puts of its own unique values and reads over `keys` until `deadline`. */
async function client(id: number, gw: GatewayProcess, keys: string[], deadline: number, random: Random, history: Operation[], tally: Tally): Promise<void> {
  const name = `c${id}`;
  for (let n = 0; performance.now() < deadline; n++) {
    const key = keys[random.int(keys.length)]!;
    const failed = (what: string) => tally.failures.set(what, (tally.failures.get(what) ?? 0) + 1);
    if (random.next() < 0.5) {
      const why = await recordedPut(gw, name, key, `${name}-${n}`, history);
      if (why === null) tally.putsAcked++;
      else {
        tally.putsUnacked++;
        failed(`put: ${why}`);
      }
    } else {
      const read = await recordedRead(gw, name, key, history);
      if (typeof read !== "string") tally.readsOk++;
      else {
        tally.readsFailed++;
        failed(`read: ${read}`);
      }
    }
    await Bun.sleep(random.int(5));
  }
}

/** Retries `attempt` (which resolves to null on failure) every 250 ms for at most `timeoutMs`. */
async function eventually<T>(attempt: () => Promise<T | null>, timeoutMs: number): Promise<T | null> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await attempt();
    if (value !== null || performance.now() > deadline) return value;
    await Bun.sleep(250);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      duration: { type: "string", default: "30s" },
      clients: { type: "string", default: "8" },
      keys: { type: "string", default: "4" },
      ...COMMON_OPTIONS,
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const durationMs = durationFlag(values.duration);
  const clients = intFlag(values.clients, "--clients", 1, 64);
  const keyCount = intFlag(values.keys, "--keys", 1, 100);
  const run = await startChaosRun("linearizability", values, `${values.duration}, ${clients} clients, ${keyCount} keys`);
  const { gw, cluster, say, random, seed } = run;

  const history: Operation[] = [];
  const keys = Array.from({ length: keyCount }, (_, i) => `lin/${seed}/k${i}`);
  for (const key of keys) {
    const ok = await eventually(async () => ((await recordedPut(gw, "setup", key, "initial", history)) === null ? true : null), 10_000);
    if (ok === null) throw new Error(`could not put the initial value of ${key} through the gateway`);
  }

  const deadline = performance.now() + durationMs;
  const runChaos = startRunChaos(run, { upMs: [2000, 5000], downMs: [1500, 4000] });
  const { chaos } = runChaos;
  const tallies: Tally[] = Array.from({ length: clients }, () => ({ putsAcked: 0, putsUnacked: 0, readsOk: 0, readsFailed: 0, failures: new Map() }));
  await Promise.all(tallies.map((tally, i) => client(i, gw, keys, deadline, random, history, tally)));
  say("clients stopped; stopping the chaos");
  await chaos.stop();
  await cluster.waitHealthy(undefined, 30_000);

  // The final value of every key, read linearizably through the gateway.
  const finals: { key: string; read: ReadRecord | null; lastAcked: PutRecord | undefined }[] = [];
  for (const key of keys) {
    const read = await eventually(async () => {
      const r = await recordedRead(gw, "final", key, history);
      return typeof r === "string" ? null : r;
    }, 15_000);
    const lastAcked = history
      .filter((op): op is PutRecord => op.kind === "put" && op.key === key && op.revision !== null)
      .reduce<PutRecord | undefined>((a, b) => (a === undefined || b.revision! > a.revision! ? b : a), undefined);
    finals.push({ key, read, lastAcked });
  }

  const violations = checkRegisterHistory(history);
  const sum = (f: (t: Tally) => number) => tallies.reduce((a, t) => a + f(t), 0);
  const byRule = new Map<Rule, number>();
  for (const v of violations) byRule.set(v.rule, (byRule.get(v.rule) ?? 0) + 1);
  const finalFailures = finals.filter((f) => f.read === null || (f.lastAcked !== undefined && f.read.modRevision < f.lastAcked.revision!));
  const checks = [
    { name: "no violation of linearizability", ok: violations.length === 0, detail: violations.length === 0 ? "0" : [...byRule].map(([r, n]) => `${r} ${n}`).join(", ") },
    { name: "every key's final value is its last acknowledged put or a later one", ok: finalFailures.length === 0, detail: `${keys.length - finalFailures.length}/${keys.length}` },
    { name: "members taken down and brought back", ok: chaos.outages.length > 0 && chaos.errors.length === 0, detail: `${chaos.outages.length} outages${chaos.errors.length ? `; errors: ${chaos.errors.join("; ")}` : ""}` },
    { name: "enough history to mean something", ok: sum((t) => t.putsAcked) > 0 && sum((t) => t.readsOk) > 0, detail: `${history.length} operations recorded` },
    { name: "gateway still running", ok: gw.running(), detail: gw.running() ? `pid ${gw.pid}` : `exited ${gw.proc.exitCode ?? gw.proc.signalCode}` },
    { name: "no `unexpected error` in the gateway log", ok: !gw.records().some((r) => r.msg === "unexpected error"), detail: `${gw.records().filter((r) => r.msg === "unexpected error").length}` },
  ];
  const passed = checks.every((c) => c.ok);
  const failures = new Map<string, number>();
  for (const t of tallies) for (const [what, n] of t.failures) failures.set(what, (failures.get(what) ?? 0) + n);
  const readValues = new Set(history.flatMap((op) => (op.kind === "read" && op.value !== null ? [`${op.key}\u0000${op.value}`] : [])));
  const unackedSeen = history.filter((op) => op.kind === "put" && op.revision === null && readValues.has(`${op.key}\u0000${op.value}`)).length;

  const out: string[] = [];
  out.push("", `linearizability summary (${values.duration}, seed ${seed}):`);
  out.push(`  member outages: ${describeOutages(runChaos)}`);
  const ops = sum((t) => t.putsAcked + t.putsUnacked + t.readsOk + t.readsFailed);
  out.push(`  operations: ${ops} by ${clients} clients on ${keys.length} keys`);
  out.push(`    puts:  ${sum((t) => t.putsAcked)} acknowledged, ${sum((t) => t.putsUnacked)} without an answer (indeterminate; ${unackedSeen} of them read back later, so applied)`);
  out.push(`    reads: ${sum((t) => t.readsOk)} answered, ${sum((t) => t.readsFailed)} failed`);
  if (failures.size > 0) {
    out.push("  failures by message:");
    for (const [what, n] of [...failures].sort((a, b) => b[1] - a[1]).slice(0, 12)) out.push(`    ${String(n).padStart(5)}  ${what}`);
  }
  out.push(`  history checked: ${history.length} operations (setup and final reads included), ${violations.length} violations`);
  for (const [rule, n] of byRule) {
    out.push(`    ${rule}: ${n}`);
    for (const v of violations.filter((x) => x.rule === rule).slice(0, 3)) out.push(`      ${v.detail}`);
  }
  out.push("  final values:");
  for (const f of finals) {
    const lastAcked = f.lastAcked ? `${f.lastAcked.value} @ ${f.lastAcked.revision}` : "none";
    out.push(`    ${f.key}: ${f.read ? `${f.read.value} @ ${f.read.modRevision}` : "(no answer)"} (last acknowledged put: ${lastAcked})`);
  }
  out.push("  checks:");
  for (const c of checks) out.push(`    ${c.ok ? "PASS" : "FAIL"}  ${c.name}: ${c.detail}`);
  out.push(passed ? "linearizability: PASS" : "linearizability: FAIL");
  process.stdout.write(`${out.join("\n")}\n`);

  // Written always, removed with the run dir unless the run is kept (a failed one is).
  writeFileSync(join(run.runDir, "history.json"), `${JSON.stringify(history)}\n`);
  if (!passed) run.keep();
  if (values.json) {
    const summary = {
      duration: values.duration,
      seed,
      clients,
      keys: keys.length,
      outages: outagesJSON(runChaos),
      puts: { acknowledged: sum((t) => t.putsAcked), indeterminate: sum((t) => t.putsUnacked), indeterminateSeenApplied: unackedSeen },
      reads: { answered: sum((t) => t.readsOk), failed: sum((t) => t.readsFailed) },
      failuresByMessage: Object.fromEntries(failures),
      violations,
      finals: finals.map((f) => ({ key: f.key, value: f.read?.value ?? null, modRevision: f.read?.modRevision ?? null, lastAcked: f.lastAcked?.revision ?? null })),
      checks,
      passed,
    };
    writeFileSync(values.json, `${JSON.stringify(summary, null, 2)}\n`);
  }
  return passed ? 0 : 1;
}

await runWithTeardown("linearizability", main);
