/**
 * One timer for every per-connection deadline, instead of a timer per connection (a setTimeout per
 * dial was 5 % of the CPU under connection churn): the connect timeout of dials in flight, checked
 * every DIAL_SWEEP_MS while there are any; the TLS handshake timeout of clients that have not
 * finished theirs, every HANDSHAKE_SWEEP_MS; TCP keepalive on member legs that have lived
 * KEEPALIVE_AFTER_MS (a connection that ends sooner never pays the system calls; checked every
 * KEEPALIVE_SWEEP_MS); peers that stopped acknowledging (src/datapath/stall.ts), every
 * STALL_SWEEP_MS while connections that lived that long are open; and `--idle-timeout`, a few
 * times per timeout.
 *
 * @module
 */
import type { Conn, UpstreamLeg } from "./conn.ts";
import { List } from "./list.ts";

/** Granularity of connect timeouts: a dial fails at most this long after --connect-timeout. */
const DIAL_SWEEP_MS = 20;
/** Granularity of TLS handshake timeouts. */
const HANDSHAKE_SWEEP_MS = 250;
/** A member leg gets TCP keepalive once it has been connected this long (within KEEPALIVE_SWEEP_MS more). */
export const KEEPALIVE_AFTER_MS = 1000;
const KEEPALIVE_SWEEP_MS = 250;
/** Period of the check for silent peers (src/datapath/stall.ts): one is cut at most about two of these after the silence limit. */
export const STALL_SWEEP_MS = 1000;

export interface SweepHost {
  /** `--idle-timeout` in force (0: off). */
  readonly idleTimeoutMs: number;
  /** `--listen-handshake-timeout` in force. */
  readonly handshakeTimeoutMs: number;
  /** A dial ran past its timeout. */
  timedOut(leg: UpstreamLeg): void;
  /** A TLS client ran past its handshake timeout. */
  handshakeTimedOut(conn: Conn): void;
  /** A member leg has lived KEEPALIVE_AFTER_MS: give it TCP keepalive. */
  keepAlive(leg: UpstreamLeg): void;
  /** The idle counter advanced to `epoch`; connections not stamped for more than `ticks` are idle. */
  idleSweep(epoch: number, ticks: number): void;
  /** Time to look for peers that stopped acknowledging; false when no connection is open (the check stops until watchStalls). */
  stallSweep(): boolean;
}

export class Sweep {
  /** Advances once per idle period; the data path stamps connections with it when bytes move. */
  epoch = 0;
  readonly #dials = new List<UpstreamLeg>();
  readonly #handshakes = new Set<Conn>();
  /** Connected member legs without keepalive yet, oldest first. */
  readonly #young = new List<UpstreamLeg>();
  #timer: Timer | null = null;
  #due = 0;
  #idleEvery = 0;
  #nextIdleAt = Infinity;
  #nextStallAt = Infinity;
  #stopped = false;
  #idleStopped = false;

  constructor(private readonly host: SweepHost) {
    this.settingsChanged();
  }

  watch(leg: UpstreamLeg): void {
    this.#dials.add(leg);
    if (this.#dials.size === 1) this.arm();
  }

  /** The leg connected, failed or closed: no more dial timeout; and no keepalive to set if it closed. */
  unwatch(leg: UpstreamLeg): void {
    this.#dials.delete(leg);
    this.#young.delete(leg);
  }

  /** `leg` just connected: keepalive once it has lived KEEPALIVE_AFTER_MS (it is unwatched if it closes before). */
  keepAliveLater(leg: UpstreamLeg): void {
    this.#young.add(leg);
    if (this.#young.size === 1) this.arm();
  }

  /** A connection has lived KEEPALIVE_AFTER_MS: check for silent peers every STALL_SWEEP_MS from now on, while any is open. */
  watchStalls(): void {
    if (this.#nextStallAt !== Infinity) return;
    this.#nextStallAt = performance.now() + STALL_SWEEP_MS;
    this.arm();
  }

  watchHandshake(conn: Conn): void {
    this.#handshakes.add(conn);
    if (this.#handshakes.size === 1) this.arm();
  }

  unwatchHandshake(conn: Conn): void {
    this.#handshakes.delete(conn);
  }

  /** `--idle-timeout` may have changed: restart its period. */
  settingsChanged(): void {
    const idle = this.#idleStopped ? 0 : this.host.idleTimeoutMs;
    this.#idleEvery = idle > 0 ? Math.max(Math.min(idle / 4, 5000), 50) : 0;
    this.#nextIdleAt = idle > 0 ? performance.now() + this.#idleEvery : Infinity;
    this.arm();
  }

  /** No more idle timeouts (a draining gateway lets its connections finish); dial timeouts go on. */
  stopIdle(): void {
    this.#idleStopped = true;
    this.settingsChanged();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Sets the timer for the next thing due (a dial or handshake check, or the next idle period). */
  private arm(): void {
    if (this.#stopped) return;
    const now = performance.now();
    let due = Math.min(this.#nextIdleAt, this.#nextStallAt);
    if (this.#dials.size > 0) due = Math.min(due, now + DIAL_SWEEP_MS);
    if (this.#handshakes.size > 0) due = Math.min(due, now + HANDSHAKE_SWEEP_MS);
    if (this.#young.size > 0) due = Math.min(due, now + KEEPALIVE_SWEEP_MS);
    if (this.#timer !== null) {
      if (due >= this.#due) return; // the one set already comes first
      clearTimeout(this.#timer);
    }
    this.#timer = null;
    if (due === Infinity) return;
    this.#due = due;
    this.#timer = setTimeout(() => this.tick(), Math.max(due - now, 0));
    this.#timer.unref();
  }

  private tick(): void {
    this.#timer = null;
    const now = performance.now();
    for (const leg of this.#dials) {
      if (now - leg.startedAt < leg.timeoutMs) continue;
      this.#dials.delete(leg);
      this.host.timedOut(leg);
    }
    if (this.#handshakes.size > 0) {
      const limit = this.host.handshakeTimeoutMs;
      for (const conn of this.#handshakes) {
        if (now - conn.acceptedAt < limit) continue;
        this.#handshakes.delete(conn);
        this.host.handshakeTimedOut(conn);
      }
    }
    for (const leg of this.#young) {
      if (now - leg.connectedAt < KEEPALIVE_AFTER_MS) break; // in the order they connected
      this.#young.delete(leg);
      this.host.keepAlive(leg);
    }
    if (now >= this.#nextStallAt) this.#nextStallAt = this.host.stallSweep() ? now + STALL_SWEEP_MS : Infinity;
    if (now >= this.#nextIdleAt) {
      this.epoch++;
      this.#nextIdleAt += this.#idleEvery;
      if (this.#nextIdleAt <= now) this.#nextIdleAt = now + this.#idleEvery; // the process was stalled
      this.host.idleSweep(this.epoch, Math.ceil(this.host.idleTimeoutMs / this.#idleEvery));
    }
    this.arm();
  }
}
