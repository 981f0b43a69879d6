/**
 * A linearizability check of a history of puts and reads on etcd keys, each key a single register.
 * etcd hands out witnesses that make the check linear instead of a search: every put is applied at
 * a revision (its ack carries it), every read returns the value's `mod_revision` and the store's
 * revision it read at (the response header), and revisions are totally ordered. A history is
 * linearizable exactly when ordering every operation by those revisions agrees with real time and
 * every read returns the last write at or before its revision. The rules below check that, one
 * way each a gateway could break it (a lost, reordered, replayed or stale answer):
 *
 * | rule | a violation is |
 * | --- | --- |
 * | `unknown-value` | a read returned a value no put to that key wrote |
 * | `value-from-future` | a read returned the value of a put invoked only after the read responded |
 * | `revision-mismatch` | a value read at a mod_revision other than the one its put was acknowledged (or first read) at |
 * | `duplicate-revision` | two acknowledged puts with the same revision |
 * | `stale-read` | a read older (by mod_revision) than a put acknowledged before the read was invoked |
 * | `missed-write` | a read at revision R returned mod_revision M while a known put to the key has M < revision <= R (or M > R) |
 * | `client-went-back` | one client's reads of a key went back in mod_revision |
 * | `real-time-order` | op B invoked after op A responded, yet B's revision is below A's (or not above it, for a put) |
 *
 * Puts that got no acknowledgement (error, timeout) are indeterminate: they may or may not have
 * happened. Their values are legal to read; their revision is learnt from the first read that
 * returns them.
 *
 * @module
 */

/** A put. Times are of one clock (`performance.now()` of the process that ran every client). */
export interface PutRecord {
  kind: "put";
  /** Which client issued it: reads of one client must not go back in time. */
  client: string;
  key: string;
  /** Unique among the puts to `key`. */
  value: string;
  invoke: number;
  /** When the acknowledgement arrived; null when none did (failed, timed out). */
  response: number | null;
  /** The revision the acknowledgement carries (`header.revision`); null without one. */
  revision: number | null;
}

/** A read that got an answer (a read without one tells nothing and is not recorded). */
export interface ReadRecord {
  kind: "read";
  client: string;
  key: string;
  invoke: number;
  response: number;
  /** The value read; null when the key did not exist. */
  value: string | null;
  /** The value's `mod_revision` (0 for a missing key). */
  modRevision: number;
  /** The store revision the read was served at (`header.revision`). */
  revision: number;
}

export type Operation = PutRecord | ReadRecord;

export type Rule =
  | "unknown-value"
  | "value-from-future"
  | "revision-mismatch"
  | "duplicate-revision"
  | "stale-read"
  | "missed-write"
  | "client-went-back"
  | "real-time-order";

export interface Violation {
  rule: Rule;
  key: string;
  detail: string;
}

/** Largest index i with sorted[i] < x (by `at`), or -1. */
function lastBefore<T>(sorted: T[], at: (t: T) => number, x: number): number {
  let lo = 0;
  let hi = sorted.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (at(sorted[mid]!) < x) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

const describe = (op: Operation) =>
  op.kind === "put"
    ? `put ${op.key}=${op.value} by ${op.client} [${op.invoke.toFixed(1)}, ${op.response?.toFixed(1) ?? "no ack"}] rev ${op.revision ?? "?"}`
    : `read ${op.key}=${op.value ?? "(none)"} by ${op.client} [${op.invoke.toFixed(1)}, ${op.response.toFixed(1)}] mod_rev ${op.modRevision} at rev ${op.revision}`;

/**
 * Checks `history` (any order) and returns every violation found; an empty list means the history is
 * linearizable under the rules above.
 *
 * @example checkRegisterHistory([{ kind: "put", client: "a", key: "k", value: "1", invoke: 0, response: 1, revision: 5 }, { kind: "read", client: "b", key: "k", invoke: 2, response: 3, value: null, modRevision: 0, revision: 5 }]) // a stale-read
 */
export function checkRegisterHistory(history: readonly Operation[]): Violation[] {
  const violations: Violation[] = [];
  const puts = history.filter((op): op is PutRecord => op.kind === "put");
  const reads = history.filter((op): op is ReadRecord => op.kind === "read");

  // The put behind each value, and the revision each put took (acknowledged, or learnt from a read).
  const putOf = new Map<string, PutRecord>();
  const revisionOf = new Map<PutRecord, number>();
  const ackedAt = new Map<string, PutRecord>();
  for (const p of puts) {
    putOf.set(`${p.key}\u0000${p.value}`, p);
    if (p.revision === null) continue;
    revisionOf.set(p, p.revision);
    const other = ackedAt.get(`${p.key}\u0000${p.revision}`);
    if (other) violations.push({ rule: "duplicate-revision", key: p.key, detail: `${describe(p)} and ${describe(other)}` });
    ackedAt.set(`${p.key}\u0000${p.revision}`, p);
  }
  const byInvoke = [...reads].sort((a, b) => a.invoke - b.invoke);
  for (const r of byInvoke) {
    if (r.value === null) continue;
    const p = putOf.get(`${r.key}\u0000${r.value}`);
    if (p === undefined) {
      violations.push({ rule: "unknown-value", key: r.key, detail: describe(r) });
      continue;
    }
    if (p.invoke > r.response) violations.push({ rule: "value-from-future", key: r.key, detail: `${describe(r)} returned ${describe(p)}` });
    const known = revisionOf.get(p);
    if (known === undefined) revisionOf.set(p, r.modRevision);
    else if (known !== r.modRevision) violations.push({ rule: "revision-mismatch", key: r.key, detail: `${describe(r)}, but ${describe(p)} (known at ${known})` });
  }

  const keys = new Set(history.map((op) => op.key));
  for (const key of keys) {
    // stale-read: acknowledged puts of the key by response time, with the running maximum revision.
    const acked = puts.filter((p) => p.key === key && p.response !== null && p.revision !== null).sort((a, b) => a.response! - b.response!);
    const maxRev: number[] = [];
    for (const p of acked) maxRev.push(Math.max(maxRev.at(-1) ?? 0, p.revision!));
    // missed-write: every revision a put to the key is known to have taken.
    const revisions = puts
      .filter((p) => p.key === key && revisionOf.has(p))
      .map((p) => revisionOf.get(p)!)
      .sort((a, b) => a - b);
    const lastPerClient = new Map<string, ReadRecord>();
    for (const r of byInvoke) {
      if (r.key !== key) continue;
      const i = lastBefore(acked, (p) => p.response!, r.invoke);
      if (i >= 0 && r.modRevision < maxRev[i]!) {
        const newest = acked.slice(0, i + 1).find((p) => p.revision === maxRev[i]);
        violations.push({ rule: "stale-read", key, detail: `${describe(r)}, after ${newest ? describe(newest) : `a put at rev ${maxRev[i]}`} was acknowledged` });
      }
      if (r.modRevision > r.revision) violations.push({ rule: "missed-write", key, detail: `${describe(r)}: mod_revision above the read's revision` });
      const j = lastBefore(revisions, (v) => v, r.revision + 1);
      if (j >= 0 && revisions[j]! > r.modRevision) violations.push({ rule: "missed-write", key, detail: `${describe(r)}, but a put to ${key} took rev ${revisions[j]}` });
      const previous = lastPerClient.get(r.client);
      if (previous && r.modRevision < previous.modRevision) violations.push({ rule: "client-went-back", key, detail: `${describe(r)} after ${describe(previous)}` });
      lastPerClient.set(r.client, r);
    }
  }

  // real-time-order, over all keys: each operation's point in the revision order must not precede
  // that of any operation that responded before it was invoked.
  interface Point {
    op: Operation;
    invoke: number;
    response: number | null;
    at: number;
  }
  const points: Point[] = [
    ...puts.filter((p) => revisionOf.has(p)).map((p) => ({ op: p, invoke: p.invoke, response: p.response, at: revisionOf.get(p)! })),
    ...reads.map((r) => ({ op: r, invoke: r.invoke, response: r.response, at: r.revision })),
  ];
  const responded = points.filter((p) => p.response !== null).sort((a, b) => a.response! - b.response!);
  const highest: Point[] = [];
  for (const p of responded) highest.push(p.at >= (highest.at(-1)?.at ?? Number.NEGATIVE_INFINITY) ? p : highest.at(-1)!);
  for (const b of points) {
    const i = lastBefore(responded, (p) => p.response!, b.invoke);
    if (i < 0) continue;
    const a = highest[i]!;
    const wrong = b.op.kind === "put" ? a.at >= b.at : a.at > b.at;
    if (wrong) violations.push({ rule: "real-time-order", key: b.op.key, detail: `${describe(b.op)} was invoked after ${describe(a.op)} responded` });
  }
  return violations;
}
