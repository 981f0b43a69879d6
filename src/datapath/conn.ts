/**
 * One proxied connection as one record: it is its own client leg (the pipe's state for the client's
 * socket, src/datapath/pipe.ts), holds the dial in flight or the paired member leg, what the access
 * log records about it, who ended it, and its links on the proxy's list of open connections. The
 * client leg reports here; the upstream leg reports to the dialer (src/datapath/dialer.ts), which
 * owns everything about reaching a member. Two objects per connection, as the minimal Bun relay
 * has; yes/no state is bits of one number (docs/performance.md, "Memory per connection").
 *
 * @module
 */
import type { AccessRecord, TerminationCode } from "../accesslog.ts";
import type { Member } from "../members.ts";
import type { List } from "./list.ts";
import { bitFlags, Leg, LEG_BITS_USED, passClose, resetPair, type LegOwner } from "./pipe.ts";

/** What a connection needs from the proxy that accepted it. */
export interface ConnHost {
  /** The idle sweep's counter: a connection is stamped with it whenever bytes move. */
  readonly epoch: number;
  /** The client started waiting on its member: a request it has not answered (src/datapath/suspect.ts). */
  asked(conn: Conn): void;
  /** Both legs are closed and no dial is in flight: forget the connection. */
  release(conn: Conn): void;
}

/**
 * A client chunk this large is a request (src/datapath/suspect.ts): HTTP/2 control frames a client
 * sends without waiting for an answer are smaller (a PING acknowledgement 17 bytes, a pair of
 * WINDOW_UPDATEs 26), a gRPC request larger (a put or a lease keep-alive 39–60 bytes, measured).
 */
export const ASK_BYTES = 32;

/** A socket's file descriptor (Bun has it, bun-types does not say so); -1 when closed or unknown. */
export function fdOf(s: Leg["sock"]): number {
  const fd = (s as unknown as { fd?: number } | null)?.fd;
  return typeof fd === "number" ? fd : -1;
}

/** The socket to a member, from the dial on. One per dial attempt. */
export class UpstreamLeg extends Leg {
  /** performance.now() when the dial started, and when it connected (0 until then). */
  startedAt = 0;
  connectedAt = 0;
  /** How long the dial may take (`--connect-timeout` when it started). */
  timeoutMs = 0;
  /** The sweep's list it is on (dials in flight, or connected legs waiting for keepalive; src/datapath/sweep.ts). */
  prev: UpstreamLeg | null = null;
  next: UpstreamLeg | null = null;
  list: List<UpstreamLeg> | null = null;
  /** The dial timed out or failed: its socket is closed if it ever opens, and reports nothing. */
  declare abandoned: boolean;
  /** Within the window where an early close counts against the member (see the dialer). */
  declare earlyWindow: boolean;
  /** The member had failed dials before this connect: its success counts once it proves itself. */
  declare probation: boolean;
  constructor(
    owner: LegOwner,
    readonly conn: Conn,
    readonly member: Member,
  ) {
    super(owner);
  }
}
bitFlags(UpstreamLeg.prototype, { abandoned: LEG_BITS_USED, earlyWindow: LEG_BITS_USED << 1, probation: LEG_BITS_USED << 2 });

export class Conn extends Leg implements LegOwner {
  /** The dial in flight, or the paired member connection; null before the first dial and after the last failed. */
  up: UpstreamLeg | null = null;
  /**
   * Members to try, best first (chosen when dialing starts), and the next one's index (so, dials
   * started). Dropped once a member connects unless the access log wants the members tried.
   */
  candidates: readonly Member[] = [];
  attempt = 0;
  /**
   * Client bytes read before an upstream was paired: the first read as it came (no array for the
   * usual single one), two in an array (see unpaired).
   */
  early: Uint8Array | Uint8Array[] | null = null;
  /** The idle sweep's counter when bytes last moved. */
  activeAt: number;
  readonly acceptedAt = performance.now();
  bytesFromClient = 0;
  bytesFromMember = 0;
  /** bytesFromClient + bytesFromMember when both legs were last found with nothing waiting to be sent or acknowledged (src/datapath/stall.ts); -1 before. */
  settledAt = -1;
  /**
   * Client chunks since the member last answered, a chunk of ASK_BYTES or more counting 2
   * (src/datapath/suspect.ts): at 2 the client is waiting on the member.
   */
  unanswered = 0;
  /** performance.now() when they first counted 2. */
  askedAt = 0;
  /** The list of connections waiting on their member (src/datapath/suspect.ts), while `waiting`. */
  waitPrev: Conn | null = null;
  waitNext: Conn | null = null;
  /** Who ended the connection and why, set by the first end, close or forced close. */
  termination: TerminationCode | null = null;
  /** The proxy's list of open connections (src/datapath/list.ts). */
  prev: Conn | null = null;
  next: Conn | null = null;
  list: List<Conn> | null = null;
  /** A member was usable when dialing started (else a failure to connect is `no-member`). */
  declare hadUsable: boolean;
  /**
   * The member's last chunk ended a wait and was smaller than ASK_BYTES: an answer, or the member's
   * own PING (grpc-go sends a WINDOW_UPDATE and a PING on receiving a request, before its answer).
   * A client chunk before the member's next one (its PING acknowledgement) says which: it waits again.
   */
  declare maybeAnswered: boolean;
  /** On the list of connections waiting on their member (src/datapath/suspect.ts). */
  declare waiting: boolean;
  constructor(
    readonly host: ConnHost,
    /** The client's address, kept only with --access-log (a closed socket no longer has it). */
    readonly clientAddr: string | null,
  ) {
    super(null);
    this.activeAt = host.epoch;
  }

  /** The client's leg: the connection itself. */
  get client(): Leg {
    return this;
  }

  /** Whether the access log is on (it wants the client's address, the members tried, and the times). */
  get logged(): boolean {
    return this.clientAddr !== null;
  }

  /** The members to dial, best first. */
  choose(candidates: readonly Member[]): void {
    this.candidates = candidates;
    this.hadUsable = candidates[0]?.usable === true;
  }

  /** Both legs closed and nothing in flight. */
  get done(): boolean {
    return this.client.closed && (this.up === null || this.up.closed);
  }

  /** Resets both legs, recording why. */
  reset(why: TerminationCode): void {
    this.termination ??= why;
    resetPair(this.client, this.up);
  }

  /**
   * The access-log record of a finished connection, `now` being performance.now() at its end. The
   * accept time is the close time less the duration: no wall-clock read per accepted connection.
   */
  record(now: number): AccessRecord {
    const up = this.up;
    const connected = up !== null && up.connectedAt > 0;
    const closedAt = Date.now();
    const duration = now - this.acceptedAt;
    return {
      ts: new Date(closedAt).toISOString(),
      start: new Date(closedAt - duration).toISOString(),
      client: this.clientAddr ?? "unknown",
      member: connected ? up.member.address : null,
      attempts: this.attempt,
      tried: this.candidates.slice(0, this.attempt).map((m) => m.address),
      connect_ms: connected ? round3(up.connectedAt - this.acceptedAt) : null,
      duration_ms: round3(duration),
      bytes_from_client: this.bytesFromClient,
      bytes_from_member: this.bytesFromMember,
      termination: this.termination ?? "client-close",
    };
  }

  // --- the client leg's reports (LegOwner) ---

  firstData(): void {}

  received(_leg: Leg, bytes: number): void {
    this.activeAt = this.host.epoch;
    this.bytesFromClient += bytes;
    this.up!.member.stats.bytesToMember += bytes;
    const before = this.unanswered;
    const reply = this.maybeAnswered; // a reply to the member's small chunk: a wait whatever its size
    if (reply) this.maybeAnswered = false;
    this.unanswered = before + (bytes >= ASK_BYTES || reply ? 2 : 1);
    if (before < 2 && this.unanswered >= 2) this.host.asked(this);
  }

  drained(): void {
    this.activeAt = this.host.epoch;
  }

  /**
   * The client is not paused at accept (a pause and the resume at pairing cost 2 epoll_ctl calls,
   * docs/performance.md): its first read before the member is connected is kept, and only a
   * second one pauses it, so at most two reads are held per connection.
   */
  unpaired(_leg: Leg, chunk: Uint8Array): boolean {
    const early = this.early;
    if (early === null) {
      this.early = chunk;
      return false;
    }
    if (Array.isArray(early)) early.push(chunk);
    else this.early = [early, chunk];
    return true;
  }

  ended(): void {
    this.termination ??= "client-close";
  }

  gone(leg: Leg, err: Error | undefined): void {
    this.termination ??= err === undefined ? "client-close" : timedOut(err) ? "client-timeout" : "client-reset";
    passClose(leg, err);
    if (this.done) this.host.release(this);
  }
}

bitFlags(Conn.prototype, { hadUsable: LEG_BITS_USED, maybeAnswered: LEG_BITS_USED << 1, waiting: LEG_BITS_USED << 2 });

const round3 = (ms: number) => Math.round(ms * 1000) / 1000;

/**
 * Whether a socket closed because the kernel gave up on a silent peer (keepalive unanswered:
 * ETIMEDOUT, as Bun reports it, docs/bun.md "TCP_USER_TIMEOUT cuts slow readers"), not because
 * the peer reset it.
 */
export function timedOut(err: Error): boolean {
  return (err as NodeJS.ErrnoException).code === "ETIMEDOUT";
}
