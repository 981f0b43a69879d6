/**
 * `--rebalance-interval` (off by default): moves open connections, one at a time, to where new
 * connections go, so that long-lived ones (watches, lease keep-alives) do not stay for days where
 * a fault put them (issue 22; docs/selection-and-health.md, "Selection and failover").
 *
 * An L4 proxy cannot ask a client to go elsewhere (an HTTP/2 GOAWAY is inside the bytes it does
 * not parse), so a connection moves only by being closed, cleanly (a FIN each way), and the client
 * reconnecting through the policy. What limits the cost, after gRPC servers' MAX_CONNECTION_AGE,
 * Envoy's max_downstream_connection_duration and HAProxy's slowstart:
 * - only connections to a member that carries more than its share move: for sticky (and ordered),
 *   every connection not on the member new connections go to; for round-robin and
 *   least-connections, those of a member above its share of this process's connections, while
 *   another is below its own;
 * - only to a member usable for SETTLE_INTERVALS intervals in a row (a flapping member gets none);
 * - only a quiet connection: nothing queued either way, in the gateway or the kernel, and no
 *   client request left unanswered (src/datapath/suspect.ts's count), connected for an interval;
 * - one connection per tick, ticks `--rebalance-interval` apart with ±50 % jitter, so a fleet of
 *   gateways does not move at once.
 * Each process moves its own connections (with --workers, each worker its own).
 *
 * @module
 */
import type { Member } from "../members.ts";
import { bestClass, effectiveWeights } from "../select.ts";
import type { Conn } from "./conn.ts";

/** A member must have been usable this many --rebalance-interval ticks in a row before connections move to it. */
export const SETTLE_INTERVALS = 3;

export interface RebalanceHost {
  /** `--rebalance-interval` in force (0: off). */
  readonly rebalanceMs: number;
  /** The members in order. */
  members(): readonly Member[];
  /** Where the policy sends the next connection when it knows in advance (sticky, ordered), else undefined. */
  preferred(): Member | undefined;
  /** This process's open connections. */
  conns(): Iterable<Conn>;
  /** Nothing queued either way and no request unanswered: closing it now loses no byte in flight. */
  quiet(conn: Conn): boolean;
  /** Closes `conn` cleanly (a FIN each way) so that its client reconnects through the policy. */
  move(conn: Conn, to: Member | undefined): void;
  /** Milliseconds on a monotonic clock. */
  now(): number;
  random(): number;
}

export class Rebalancer {
  /** When each usable member was first seen usable in a row (the host's clock). */
  readonly #usableSince = new Map<Member, number>();
  #timer: Timer | null = null;
  #stopped = false;

  constructor(private readonly host: RebalanceHost) {
    this.settingsChanged();
  }

  /** `--rebalance-interval` may have changed: (re)arm the timer, or stop it at 0. */
  settingsChanged(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#usableSince.clear();
    this.arm();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  private arm(): void {
    const ms = this.host.rebalanceMs;
    if (ms <= 0 || this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.tick();
      this.arm();
    }, ms * (0.5 + this.host.random()));
    this.#timer.unref();
  }

  /** One tick: notes which members are settled, then moves at most one connection; returns it. */
  tick(): Conn | null {
    const now = this.host.now();
    const settleMs = SETTLE_INTERVALS * this.host.rebalanceMs;
    const members = this.host.members();
    for (const m of members) if (!m.usable) this.#usableSince.delete(m);
    for (const m of members) if (m.usable && !this.#usableSince.has(m)) this.#usableSince.set(m, now);
    for (const m of this.#usableSince.keys()) if (!members.includes(m)) this.#usableSince.delete(m);
    const settled = (m: Member) => now - (this.#usableSince.get(m) ?? Infinity) >= settleMs;
    const plan = planMove(members, this.host.preferred(), [...this.host.conns()], settled);
    if (plan === null) return null;
    const minAge = this.host.rebalanceMs;
    for (const conn of plan.from) {
      if (now - conn.acceptedAt < minAge || !this.host.quiet(conn)) continue;
      this.host.move(conn, plan.to);
      return conn;
    }
    return null;
  }
}

/** Which connections may move (most loaded member first), and where new connections will take them (when known). */
export interface MovePlan {
  from: Conn[];
  to: Member | undefined;
}

/**
 * The connections worth moving now, or null. With a `preferred` member (sticky, ordered): those on
 * any other member, once the preferred one is settled. Without: those of the member furthest above
 * its share (by RFC 2782 weight, among the settled members of the best priority class), when some
 * settled member is below its own by at least one connection.
 */
export function planMove(members: readonly Member[], preferred: Member | undefined, conns: readonly Conn[], settled: (m: Member) => boolean): MovePlan | null {
  const on = new Map<Member, Conn[]>();
  for (const conn of conns) {
    const up = conn.up;
    // A member an operator drained keeps its open connections (docs/admin.md, "Draining a member").
    if (up === null || up.sock === null || up.closed || up.connectedAt <= 0 || conn.client.closed || up.member.drain !== "off") continue;
    const list = on.get(up.member);
    if (list === undefined) on.set(up.member, [conn]);
    else list.push(conn);
  }
  if (preferred !== undefined) {
    if (!preferred.usable || !settled(preferred)) return null;
    const from = [...on].filter(([m]) => m !== preferred).flatMap(([, cs]) => cs);
    return from.length > 0 ? { from, to: preferred } : null;
  }
  const cls = bestClass(members).filter(settled);
  if (cls.length < 2) return null;
  const total = conns.length;
  const weights = effectiveWeights(cls);
  const sum = weights.reduce((a, b) => a + b, 0);
  const excess = (m: Member, i: number) => (on.get(m)?.length ?? 0) - (total * weights[i]!) / sum;
  const over = cls.map((m, i) => ({ m, x: excess(m, i) })).sort((a, b) => b.x - a.x);
  // Connections on members outside the class (down, drained, lower priority) go first of all.
  const outside = [...on].filter(([m]) => !cls.includes(m)).flatMap(([, cs]) => cs);
  if (outside.length > 0) return { from: outside, to: undefined };
  const top = over[0]!;
  const bottom = over[over.length - 1]!;
  if (top.x < 1 || bottom.x > -1) return null;
  return { from: on.get(top.m) ?? [], to: undefined };
}
