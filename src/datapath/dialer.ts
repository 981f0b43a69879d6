/**
 * The dialer: reaches a member for a client connection. It tries the candidates a policy gave, in
 * order, each within `--connect-timeout`; pairs the client with the first member that connects;
 * and reports what members did to health (src/health/monitor.ts) as passive evidence: failed dials,
 * and members that close or reset a connection right after accepting it.
 *
 * It owns the upstream leg of every connection (the pipe reports the leg's events here). The
 * socket itself comes from a `Connect` function (Bun.connect in production), which in-process unit
 * tests replace to make dials hang, fail or succeed at will.
 *
 * @module
 */
import type { SocketHandler } from "bun";
import { formatHostPort } from "../addresses.ts";
import type { ListenerStats, FailureReason } from "../counters.ts";
import type { Logger } from "../log.ts";
import type { Member } from "../members.ts";
import { dialErrorText, dialTimeoutText, readErrorText, tlsErrorText, type NetTarget } from "../neterror.ts";
import type { UpstreamTls } from "../settings.ts";
import { receiveQueue } from "../libc.ts";
import { outOfFds } from "../limits.ts";
import { tlsReason } from "../tls.ts";
import { ASK_BYTES, Conn, fdOf, timedOut, UpstreamLeg } from "./conn.ts";
import { flush, forwardFin, pair, passClose, pipeHandlers, send, type Leg, type LegOwner } from "./pipe.ts";

/** Where the dialer reports what members did (health in the primary; the primary, from a worker). */
export interface DialReports {
  /** A dial to `member` failed, or the member closed or reset the connection right after connect. */
  dialFailed(member: Member, reason: string): void;
  /** A dial to `member` succeeded (after failures: once the member proved itself). */
  dialSucceeded(member: Member): void;
  /** `member` has its first connection open in this process (it carries clients now). */
  cameIntoUse?(member: Member): void;
  /** Client bytes reached `member` and nothing came back for `silentMs` (src/datapath/suspect.ts). */
  stallSuspected?(member: Member, silentMs: number): void;
}

/** Opens the socket of `leg` to its member, as Bun.connect does: `socket.open` when connected, `socket.connectError` when not. */
export type Connect = (leg: UpstreamLeg, socket: SocketHandler<Leg>, tls: UpstreamTls | null) => Promise<unknown>;

/** What the dialer reads and calls on the proxy it serves. */
export interface DialerHost {
  readonly connectTimeoutMs: number;
  readonly upstreamTls: UpstreamTls | null;
  readonly stats: ListenerStats;
  readonly reports: DialReports;
  readonly log: Logger;
  /** The sweep: a dial in flight is failed when its `timeoutMs` has passed. */
  watch(leg: UpstreamLeg): void;
  /** Off the sweep's lists: connected, failed or closed. */
  unwatch(leg: UpstreamLeg): void;
  /** The sweep gives a connected leg TCP keepalive once it has lived a second. */
  keepAliveLater(leg: UpstreamLeg): void;
  /** Every candidate failed. */
  exhausted(conn: Conn): void;
  /** The member answered a connection whose client was waiting on it (src/datapath/suspect.ts). */
  answered(conn: Conn): void;
  /** Descriptors dials given up on may hold while their connect goes on (see Dialer.held). */
  readonly heldDialsMax: number;
  /** Dialer.held changed (the descriptors it holds count against the connection cap). */
  heldDialsChanged(): void;
  /** The connection is done (both legs closed, nothing in flight). */
  release(conn: Conn): void;
}

/** ALPN protocol list in wire format (length-prefixed names), as Bun's `ALPNProtocols` takes it; cached per settings snapshot. */
const alpnCache = new WeakMap<readonly string[], Uint8Array>();
function alpnWire(protocols: readonly string[]): Uint8Array {
  let wire = alpnCache.get(protocols);
  if (wire === undefined) {
    wire = Buffer.concat(protocols.flatMap((p) => [Buffer.from([Buffer.byteLength(p)]), Buffer.from(p)]));
    alpnCache.set(protocols, wire);
  }
  return wire;
}

/** Bun.connect, with TLS origination when `tls` is set. */
export const bunConnect: Connect = (leg, socket, tls) => {
  const m = leg.member;
  // One options object per dial (no spread of an empty TLS object on the plaintext path).
  if (tls === null) return Bun.connect<Leg>({ hostname: m.dialHost, port: m.endpoint.port, allowHalfOpen: true, data: leg, socket });
  const options = { ca: tls.ca, cert: tls.cert, key: tls.key, serverName: tls.serverName ?? m.endpoint.host, rejectUnauthorized: true, ALPNProtocols: alpnWire(tls.alpn) };
  return Bun.connect<Leg>({ hostname: m.dialHost, port: m.endpoint.port, allowHalfOpen: true, data: leg, socket, tls: options });
};

const NO_MEMBERS: Member[] = [];

/** Where a dial to `member` goes, for error text (`dial tcp 10.0.1.10:2379: …`). */
function targetOf(member: Member): NetTarget {
  return { network: "tcp", address: formatHostPort(member.dialHost, member.endpoint.port) };
}

/** Bun's rejection of a connect: refused is all it can say (docs/bun.md, trap 6). */
function refusedByBun(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === "ECONNREFUSED";
}

export class Dialer implements LegOwner {
  readonly #handlers: SocketHandler<Leg>;
  /**
   * Dials given up after their timeout whose connect goes on in the kernel (Bun.connect cannot be
   * cancelled, docs/bun.md trap 5): each holds a descriptor until it opens (and is closed unused) or
   * the kernel's SYN retries end, about 127 s; and how many each member has.
   */
  readonly #held = new Set<UpstreamLeg>();
  readonly #heldBy = new Map<Member, number>();
  /** Members whose dials are held back (logged once until their held dials are gone). */
  readonly #holdingBack = new Set<Member>();

  constructor(
    private readonly host: DialerHost,
    private readonly connect: Connect = bunConnect,
  ) {
    this.#handlers = {
      ...pipeHandlers,
      open: (s) => this.opened(s.data as UpstreamLeg, s),
      connectError: (s, err) => this.connectFailed(s.data as UpstreamLeg, err),
      error: (s, err) => host.log.warn("connection error", { error: readErrorText(err, targetOf((s.data as UpstreamLeg).member)) }),
    };
  }

  /** Descriptors held by dials given up on whose connect goes on (see #held). */
  get held(): number {
    return this.#held.size;
  }

  /** Dials the next candidate of `conn` (the first, on a new connection). */
  dial(conn: Conn): void {
    if (conn.client.closed) {
      if (conn.done) this.host.release(conn);
      return;
    }
    const member = conn.candidates[conn.attempt];
    if (member === undefined) return this.host.exhausted(conn);
    conn.attempt++;
    if (this.#held.size >= this.host.heldDialsMax && this.#heldBy.has(member)) return this.holdBack(conn, member);
    // Counted from the dial on, so least-connections sees a burst of new connections as it happens.
    if (member.connections++ === 0) this.host.reports.cameIntoUse?.(member);
    const leg = new UpstreamLeg(this, conn, member);
    conn.up = leg;
    // docs/bun.md, trap 5: Bun.connect has no timeout and cannot be cancelled; the sweep fails
    // the dial after timeoutMs, and a socket that opens later is closed unused.
    leg.startedAt = performance.now();
    leg.timeoutMs = this.host.connectTimeoutMs;
    this.host.watch(leg);
    // Failures arrive at the connectError handler (no closure per dial; with the handler, Bun marks
    // the rejected promise handled).
    void this.connect(leg, this.#handlers, this.host.upstreamTls);
  }

  /**
   * The descriptors held by abandoned dials are at their bound and `member` has some of them: it
   * does not answer SYNs, so it is not dialled again until one of them ends; the next candidate is
   * tried at once. Not evidence against the member (its timeouts were).
   */
  private holdBack(conn: Conn, member: Member): void {
    if (!this.#holdingBack.has(member)) {
      this.#holdingBack.add(member);
      this.host.log.warn("holding back dials to a member whose abandoned dials are still connecting", { address: member.address, held: this.#heldBy.get(member), "held-total": this.#held.size });
    }
    this.dial(conn);
  }

  /** `leg` timed out and its connect goes on: it holds a descriptor (see #held). */
  private hold(leg: UpstreamLeg): void {
    this.#held.add(leg);
    this.#heldBy.set(leg.member, (this.#heldBy.get(leg.member) ?? 0) + 1);
    this.host.heldDialsChanged();
  }

  /** The connect of an abandoned `leg` ended (opened and closed unused, or failed): its descriptor is free. */
  private unhold(leg: UpstreamLeg): void {
    if (!this.#held.delete(leg)) return;
    const left = this.#heldBy.get(leg.member)! - 1;
    if (left > 0) this.#heldBy.set(leg.member, left);
    else {
      this.#heldBy.delete(leg.member);
      this.#holdingBack.delete(leg.member);
    }
    this.host.heldDialsChanged();
  }

  /** The connect of `leg` failed: why, in Go's words, and whether it is the member's doing. */
  private connectFailed(leg: UpstreamLeg, e: unknown): void {
    if (leg.abandoned) return this.unhold(leg);
    const refused = refusedByBun(e);
    // Bun reports a connect that failed for lack of descriptors as ECONNREFUSED (docs/bun.md, trap 6).
    const ours = refused && outOfFds();
    const text = dialErrorText(e, targetOf(leg.member), { outOfFds: ours });
    if (ours) this.fail(leg, text, "other", false);
    else this.fail(leg, text, refused ? "refused" : "other");
  }

  /**
   * The dial of `leg` failed (refused, timed out, certificate not verified): try the next candidate.
   * `evidence` false: the failure was the gateway's own (out of descriptors), not held against the member.
   */
  fail(leg: UpstreamLeg, reason: string, kind: FailureReason, evidence = true): void {
    if (leg.abandoned) return;
    leg.abandoned = true;
    const conn = leg.conn;
    if (conn.up === leg) conn.up = null;
    leg.member.connections--;
    leg.member.stats.failures[kind]++;
    this.host.unwatch(leg);
    if (evidence) this.host.reports.dialFailed(leg.member, reason);
    this.dial(conn);
  }

  /** The sweep's verdict on a dial still in flight after its timeout: its connect goes on (held) while the next member is tried. */
  timedOut(leg: UpstreamLeg): void {
    if (leg.abandoned) return;
    this.hold(leg);
    this.fail(leg, dialTimeoutText(targetOf(leg.member)), "timeout");
  }

  private opened(leg: UpstreamLeg, s: NonNullable<Leg["sock"]>): void {
    if (leg.abandoned) {
      this.unhold(leg);
      s.end(); // a connect that finished after its timeout: nothing was sent on it
      return;
    }
    if (this.host.upstreamTls !== null && !s.authorized) {
      // Without a handshake handler, open fires after the handshake (docs/bun.md, trap 8): a
      // member whose certificate does not verify is a failed dial, and this socket goes.
      const err = s.getAuthorizationError() ?? new Error("certificate not authorized");
      this.host.stats.countTlsFailure("member", tlsReason(err));
      this.fail(leg, tlsErrorText(err, this.host.upstreamTls.serverName ?? leg.member.endpoint.host), "tls");
      s.terminate();
      return;
    }
    leg.sock = s;
    this.host.unwatch(leg);
    // Bun sets TCP_NODELAY on every socket itself (docs/bun.md, setKeepAlive() and TCP_NODELAY);
    // keepalive waits until the connection has lived a second (docs/performance.md).
    this.host.keepAliveLater(leg);
    this.connected(leg);
    const client = leg.conn.client;
    if (client.closed) {
      s.terminate();
      return;
    }
    this.pairWithClient(leg);
  }

  /** Counts the connect, and reports it to health unless the member must prove itself first. */
  private connected(leg: UpstreamLeg): void {
    const member = leg.member;
    leg.connectedAt = performance.now();
    leg.earlyWindow = true;
    member.stats.connectionsTotal++;
    member.stats.lastConnectedAt = leg.connectedAt;
    member.stats.connect.observe((leg.connectedAt - leg.startedAt) / 1000);
    if (!leg.conn.logged) leg.conn.candidates = NO_MEMBERS; // not needed any more; keep idle connections small
    // A member with failed dials behind it only counts as working once it sends a byte or the
    // connection ends normally: one that accepts and resets at once keeps counting failures.
    if (member.failures === 0 && member.up) this.host.reports.dialSucceeded(member);
    else leg.probation = true;
  }

  private pairWithClient(leg: UpstreamLeg): void {
    const conn = leg.conn;
    const client = conn.client;
    pair(leg, client);
    const early = conn.early;
    if (early !== null) {
      conn.early = null;
      // Counted as they leave, as on a paired leg.
      if (Array.isArray(early)) {
        let bytes = 0;
        for (const chunk of early) bytes += chunk.byteLength;
        conn.received(client, bytes);
        leg.out = early;
        flush(leg);
      } else {
        conn.received(client, early.byteLength);
        send(leg, early); // what the kernel does not take is queued; the drain resumes the client
      }
    }
    if (client.readDone) forwardFin(leg);
    // A client paused by a second early read is resumed by flush; resuming one that was never
    // paused makes no system call (docs/bun.md, pause() and resume()).
    else if (leg.out === null) client.sock!.resume();
  }

  /**
   * A member that ends a connection on its own, right after accepting it (within the connect
   * timeout), is as broken as one that refuses: it counts like a failed dial, once per connection.
   * Only what the member did counts: not if it had sent a byte, or the client had said anything
   * (etcd closes a connection that sends it garbage; the client's bytes may still wait unread in
   * the kernel), or the client had ended, reset or gone first.
   */
  private earlyEnd(leg: UpstreamLeg, reason: string): void {
    if (!leg.earlyWindow) return;
    leg.earlyWindow = false;
    const client = leg.conn.client;
    const clientSaid = client.gotData || receiveQueue(fdOf(client.sock)) !== 0;
    const onItsOwn = !leg.gotData && !clientSaid && !client.readDone && !client.closed;
    const early = onItsOwn && performance.now() - leg.connectedAt < this.host.connectTimeoutMs;
    if (early) {
      leg.member.stats.failures.reset++;
      this.host.reports.dialFailed(leg.member, reason);
    } else if (leg.probation) this.proven(leg);
  }

  private proven(leg: UpstreamLeg): void {
    leg.probation = false;
    this.host.reports.dialSucceeded(leg.member);
  }

  // --- the upstream leg's reports (LegOwner) ---

  firstData(leg: Leg): void {
    const up = leg as UpstreamLeg;
    // The member's process answers (fail-open's order, src/select.ts): one clock read per connection.
    up.member.stats.lastHeardAt = performance.now();
    if (up.probation) this.proven(up);
  }

  received(leg: Leg, bytes: number): void {
    const up = leg as UpstreamLeg;
    const conn = up.conn;
    conn.activeAt = conn.host.epoch;
    conn.bytesFromMember += bytes;
    up.member.stats.bytesFromMember += bytes;
    // A small chunk that ends a wait may be the member's own PING rather than an answer
    // (src/datapath/suspect.ts): if the client replies before the member says more, it waits again.
    conn.maybeAnswered = conn.unanswered > 1 && bytes < ASK_BYTES;
    if (conn.unanswered !== 0) {
      if (conn.unanswered > 1) this.host.answered(conn);
      conn.unanswered = 0;
    }
  }

  drained(leg: Leg): void {
    const conn = (leg as UpstreamLeg).conn;
    conn.activeAt = conn.host.epoch;
  }

  unpaired(): boolean {
    return true; // never: an upstream leg is paired in open, before it can read
  }

  ended(leg: Leg): void {
    const up = leg as UpstreamLeg;
    up.conn.termination ??= "member-close";
    this.earlyEnd(up, "closed right after connect");
  }

  gone(leg: Leg, err: Error | undefined): void {
    const up = leg as UpstreamLeg;
    if (up.abandoned) return;
    const conn = up.conn;
    conn.termination ??= err === undefined ? "member-close" : timedOut(err) ? "member-timeout" : "member-reset";
    up.member.connections--;
    this.host.unwatch(up);
    this.earlyEnd(up, err === undefined ? "closed right after connect" : `reset right after connect: ${readErrorText(err, targetOf(up.member))}`);
    passClose(up, err);
    if (conn.done) this.host.release(conn);
  }
}
