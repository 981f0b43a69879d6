/**
 * The data path, assembled: accept, choose, dial, pipe, close. Bytes are never parsed or changed.
 *
 * A listener accepts a client (src/datapath/listeners.ts); the policy gives the members to try
 * (src/select.ts); the dialer reaches one (src/datapath/dialer.ts); the pipe moves the bytes
 * (src/datapath/pipe.ts); one sweep enforces connect and idle timeouts (src/datapath/sweep.ts).
 * Here live the set of open connections and what acts on all of them: limits, drain, reset.
 *
 * @module
 */
import type { Socket, SocketHandler } from "bun";
import type { AccessLog, TerminationCode } from "../accesslog.ts";
import { formatHostPort } from "../addresses.ts";
import { ListenerStats } from "../counters.ts";
import type { StartFlag } from "../flags.ts";
import { errorText, type Logger } from "../log.ts";
import type { Member } from "../members.ts";
import { readErrorText, type NetTarget } from "../neterror.ts";
import type { Policy } from "../select.ts";
import type { Settings, UpstreamTls } from "../settings.ts";
import { sendQueue, setKeepAlive, silenceLimitMs } from "../libc.ts";
import { connectionCap, openFds, openFilesLimit } from "../limits.ts";
import { tlsReason } from "../tls.ts";
import { Conn, fdOf, type ConnHost, type UpstreamLeg } from "./conn.ts";
import { Dialer, type Connect, type DialerHost, type DialReports } from "./dialer.ts";
import { List } from "./list.ts";
import { Listeners, type ListenersSettings } from "./listeners.ts";
import type { ListenSocket, SocketSet } from "./sockets.ts";
import { forwardFin, pipeHandlers, type Leg } from "./pipe.ts";
import { Rebalancer, type RebalanceHost } from "./rebalance.ts";
import { Stalls } from "./stall.ts";
import { Suspicions, type SuspectHost } from "./suspect.ts";
import { Sweep, type SweepHost } from "./sweep.ts";

export interface ProxyOptions {
  /** Every listening socket this process holds (closed when it stops accepting, or handed over). */
  readonly sockets: SocketSet;
  /** The ones it accepts on (a worker's share; all of them in a single process). */
  readonly accept: readonly ListenSocket[];
  /** The settings in force; read per connection, so a reload applies to new connections. */
  readonly settings: () => Settings;
  readonly policy: () => Policy;
  /** The members in order (the member table's list). */
  readonly members: () => readonly Member[];
  readonly reports: DialReports;
  /** `--access-log`, or null (off: nothing is formatted). */
  readonly accessLog: AccessLog | null;
  readonly log: Logger;
  /** How sockets to members are opened (Bun.connect; unit tests replace it). */
  readonly connect?: Connect;
}

/** A connection to a member drained with close-idle is reset once no byte moved either way for this long. */
export const DRAIN_IDLE_MS = 1000;

/** The flags whose change the data path acts on beyond reading them per connection. */
const TLS_LISTEN_FLAGS: readonly StartFlag[] = ["listen-cert", "listen-key", "listen-client-ca"];
// (--listen-handshake-timeout and the rest are read per connection.)

export class Proxy implements ConnHost, DialerHost, SweepHost, SuspectHost, RebalanceHost, ListenersSettings {
  readonly stats = new ListenerStats();
  /** Every open connection (including those still dialing), oldest first. */
  readonly #conns = new List<Conn>();
  readonly #sweep: Sweep;
  readonly #stalls = new Stalls();
  readonly #suspicions = new Suspicions(this);
  readonly #rebalancer: Rebalancer;
  readonly #dialer: Dialer;
  readonly #listeners: Listeners;
  #idleWaiters: (() => void)[] = [];
  /** Bytes the kernel held for each idle-looking connection at the last idle sweep. */
  readonly #queued = new Map<Conn, number>();
  #fdCap = Infinity;
  /** While a member is drained with close-idle: the traffic of each connection to it at the last drain sweep. */
  #drainSeen = new Map<Conn, { bytes: number; queued: number }>();
  #drainTimer: Timer | null = null;
  #lastNoMemberLog = -Infinity;
  #suppressedNoMember = 0;

  /** Accepts on its sockets. @throws {Error} from Bun.listen. */
  constructor(private readonly opts: ProxyOptions) {
    this.#sweep = new Sweep(this);
    this.#dialer = new Dialer(this, opts.connect);
    const handlers: SocketHandler<Leg> = {
      ...pipeHandlers,
      open: (s) => this.accept(s, false),
      error: (s, err) => opts.log.warn("connection error", { error: readErrorText(err, clientTarget(s)) }),
    };
    const tlsHandlers: SocketHandler<Leg> = { ...handlers, open: (s) => this.accept(s, true), handshake: (s, ok, err) => this.handshake(s, ok, err) };
    this.#listeners = new Listeners(
      { sockets: opts.accept, handlers, tlsHandlers, stats: this.stats, log: opts.log },
      this,
    );
    this.#listeners.keepClientsAlive(this.keepAliveMs);
    this.#fdCap = connectionCap(openFilesLimit(), openFds());
    this.#rebalancer = new Rebalancer(this);
  }

  /** The listening TLS settings in force (Listeners reads them here). */
  get listenTls(): Settings["listenTls"] {
    return this.opts.settings().listenTls;
  }

  /** What the open-files limit allows (see connectionCap). */
  get fdCap(): number {
    return this.#fdCap;
  }

  /**
   * Client connections at most: --max-connections, or what the open-files limit allows if lower (or
   * unset), less the descriptors abandoned dials hold meanwhile (two to a connection).
   */
  get maxConnections(): number {
    const flag = this.opts.settings().flags["max-connections"];
    const fds = this.#fdCap - Math.ceil(this.#dialer.held / 2);
    return flag > 0 && flag < fds ? flag : fds;
  }

  /** At most a quarter of the descriptors the open-files limit leaves for connections (see Dialer.held). */
  get heldDialsMax(): number {
    return Math.max(1, Math.floor(this.#fdCap / 2));
  }

  heldDialsChanged(): void {
    this.#listeners.checkLimit(this.#conns.size);
    this.#listeners.resumeBelowLimit(this.#conns.size);
  }

  /** The port of the first TCP listener (0 when there is none). */
  get port(): number {
    return this.opts.sockets.port;
  }

  /** Every listening socket this process holds: for its workers and its successor. */
  get sockets(): SocketSet {
    return this.opts.sockets;
  }

  /** Client connections open now (including those still dialing). */
  get active(): number {
    return this.#conns.size;
  }

  // --- what the dialer, the sweep and connections read (DialerHost, SweepHost, ConnHost) ---

  get epoch(): number {
    return this.#sweep.epoch;
  }
  get connectTimeoutMs(): number {
    return this.opts.settings().flags["connect-timeout"];
  }
  get keepAliveMs(): number {
    return this.opts.settings().flags["keepalive-time"];
  }
  get idleTimeoutMs(): number {
    return this.opts.settings().flags["idle-timeout"];
  }
  get handshakeTimeoutMs(): number {
    return this.opts.settings().flags["listen-handshake-timeout"];
  }
  get upstreamTls(): UpstreamTls | null {
    return this.opts.settings().upstreamTls;
  }
  get reports(): DialReports {
    return this.opts.reports;
  }
  get log(): Logger {
    return this.opts.log;
  }
  watch(leg: UpstreamLeg): void {
    this.#sweep.watch(leg);
  }
  unwatch(leg: UpstreamLeg): void {
    this.#sweep.unwatch(leg);
  }
  keepAliveLater(leg: UpstreamLeg): void {
    this.#sweep.keepAliveLater(leg);
  }
  keepAlive(leg: UpstreamLeg): void {
    if (leg.closed) return;
    this.#sweep.watchStalls();
    try {
      setKeepAlive(fdOf(leg.sock), this.keepAliveMs);
    } catch (e) {
      this.opts.log.debug("cannot set TCP keepalive on a member connection", { address: leg.member.address, error: errorText(e) });
    }
  }
  stallSweep(): boolean {
    return this.#stalls.sweep(this.#conns, silenceLimitMs(this.keepAliveMs), (conn, member) => {
      this.opts.log.debug("closing a connection whose peer stopped answering", { side: member ? "member" : "client", member: conn.up?.member.address });
      conn.reset(member ? "member-timeout" : "client-timeout");
    });
  }
  timedOut(leg: UpstreamLeg): void {
    this.#dialer.timedOut(leg);
  }

  /**
   * A client connected. Plaintext: dial at once; what the client sends meanwhile is held by
   * Conn.unpaired (one read kept, a second pauses it). TLS: nothing is dialled
   * before its handshake is done (open fires at TCP accept, docs/bun.md trap 8), and a client that
   * does not finish it within --listen-handshake-timeout is reset.
   */
  private accept(s: Socket<Leg>, tls: boolean): void {
    this.stats.accepted++;
    const conn = new Conn(this, this.opts.accessLog === null ? null : clientAddress(s));
    // docs/bun.md, trap 7: the listener's `data` option is shared by every socket; each gets its own.
    conn.client.sock = s;
    s.data = conn.client;
    this.#conns.add(conn);
    // Nothing to set: Bun sets TCP_NODELAY itself, keepalive comes from the listening socket
    // (Listeners.keepClientsAlive).
    this.#listeners.checkLimit(this.#conns.size);
    if (tls) {
      this.#sweep.watchHandshake(conn); // not paused: a paused socket does not handshake
      return;
    }
    this.dial(conn); // not paused: see Conn.unpaired
  }

  private dial(conn: Conn): void {
    conn.choose(this.opts.policy().candidates());
    this.#dialer.dial(conn);
  }

  /** TLS termination: a failed client handshake closes only that connection, counted by reason; a good one is dialled. */
  private handshake(s: Socket<Leg>, ok: boolean, err: Error | null): void {
    const conn = s.data.owner as Conn;
    this.#sweep.unwatchHandshake(conn);
    // With client certificates required, a certificate that does not verify still reports ok: check authorized.
    const mutual = this.opts.settings().listenTls?.ca !== undefined;
    if (ok && (!mutual || s.authorized)) {
      this.dial(conn); // not paused, as for plaintext clients
      return;
    }
    const reason = tlsReason(err ?? s.getAuthorizationError() ?? new Error("handshake failed"));
    this.stats.countTlsFailure("client", reason);
    this.opts.log.debug("client TLS handshake failed", { reason });
    conn.reset("client-reset");
  }

  handshakeTimedOut(conn: Conn): void {
    this.stats.countTlsFailure("client", "handshake timeout");
    conn.reset("handshake-timeout");
  }

  release(conn: Conn): void {
    if (!this.#conns.delete(conn)) return;
    this.#suspicions.answered(conn);
    const now = performance.now();
    this.stats.duration.observe((now - conn.acceptedAt) / 1000);
    this.#sweep.unwatchHandshake(conn);
    this.#queued.delete(conn);
    this.opts.accessLog?.write(conn.record(now));
    this.#listeners.resumeBelowLimit(this.#conns.size);
    if (this.#conns.size === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** No candidate connected: reset the client, logged at most once a second. */
  exhausted(conn: Conn): void {
    const now = performance.now();
    if (now - this.#lastNoMemberLog >= 1000) {
      this.opts.log.warn("no endpoint could be reached; closing client connection", {
        client: conn.clientAddr ?? (conn.client.sock === null ? "unknown" : clientAddress(conn.client.sock)),
        tried: conn.candidates.map((m) => m.address),
        suppressed: this.#suppressedNoMember,
      });
      this.#lastNoMemberLog = now;
      this.#suppressedNoMember = 0;
    } else this.#suppressedNoMember++;
    conn.termination = conn.hadUsable ? "connect-failed" : "no-member";
    conn.client.sock!.terminate();
  }

  /**
   * `--idle-timeout`: a connection whose bytes have not moved for the timeout is reset (never ended
   * with a FIN, which a client would take for a complete reply). Bytes the kernel still holds for a
   * slow reader are movement too, as long as the queue shrinks between sweeps.
   */
  idleSweep(epoch: number, ticks: number): void {
    for (const conn of this.#conns) {
      const up = conn.up;
      if (epoch - conn.activeAt <= ticks || up === null || up.sock === null) continue;
      const queued = queuedOf(conn, up);
      const before = this.#queued.get(conn);
      if (queued > 0 && queued !== before) {
        this.#queued.set(conn, queued);
        conn.activeAt = epoch;
        continue;
      }
      this.opts.log.debug("closing idle connection", { member: up.member.address });
      conn.reset("idle-timeout");
    }
  }

  /** Whether some member is drained with close-idle: while one is, connections to it are swept every DRAIN_IDLE_MS. */
  closeIdleOfDrained(on: boolean): void {
    if (on === (this.#drainTimer !== null)) return;
    if (on) {
      this.#drainTimer = setInterval(() => this.drainSweep(), DRAIN_IDLE_MS);
      this.#drainTimer.unref();
      return;
    }
    clearInterval(this.#drainTimer!);
    this.#drainTimer = null;
    this.#drainSeen.clear();
  }

  /**
   * Resets each connection to a member drained with close-idle on which no byte moved either way
   * since the last sweep (DRAIN_IDLE_MS ago); bytes the kernel still delivers to a slow reader
   * count as moving, as for --idle-timeout. Nothing is added to the data path for it.
   */
  private drainSweep(): void {
    const seen = new Map<Conn, { bytes: number; queued: number }>();
    const closed = new Map<Member, number>();
    for (const conn of this.#conns) {
      const up = conn.up;
      if (up === null || up.sock === null || up.closed || up.member.drain !== "close-idle") continue;
      const bytes = conn.bytesFromClient + conn.bytesFromMember;
      const before = this.#drainSeen.get(conn);
      const queued = before?.bytes === bytes ? queuedOf(conn, up) : -1;
      if (before?.bytes === bytes && (queued === 0 || queued === before.queued)) {
        conn.reset("drain-idle");
        closed.set(up.member, (closed.get(up.member) ?? 0) + 1);
      } else seen.set(conn, { bytes, queued });
    }
    this.#drainSeen = seen;
    for (const [m, n] of closed) this.opts.log.info("closed idle connections to a drained member", { address: m.address, connections: n });
  }

  /** A reload changed `applied` flags: act on those that need more than being read per connection. */
  settingsChanged(applied: readonly StartFlag[]): void {
    if (applied.includes("idle-timeout")) this.#sweep.settingsChanged();
    if (applied.some((f) => TLS_LISTEN_FLAGS.includes(f))) this.#listeners.relisten();
    if (applied.includes("max-connections")) {
      // Lowered to or below the connections open: stop accepting now, not after one more client.
      this.#listeners.checkLimit(this.#conns.size);
      this.#listeners.resumeBelowLimit(this.#conns.size);
    }
    if (applied.includes("keepalive-time")) this.#listeners.keepClientsAlive(this.keepAliveMs);
    if (applied.includes("rebalance-interval")) this.#rebalancer.settingsChanged();
  }

  // --- moving open connections (RebalanceHost; src/datapath/rebalance.ts) ---

  get rebalanceMs(): number {
    return this.opts.settings().flags["rebalance-interval"];
  }
  members(): readonly Member[] {
    return this.opts.members();
  }
  preferred(): Member | undefined {
    return this.opts.policy().preferred();
  }
  conns(): Iterable<Conn> {
    return this.#conns;
  }
  now(): number {
    return performance.now();
  }
  random(): number {
    return Math.random();
  }
  /**
   * Nothing waits in the gateway or the kernel either way, neither side has begun to close, and
   * the client is not waiting on the member (src/datapath/suspect.ts's count stays below 2: a
   * window update or ping acknowledgement alone does not count).
   */
  quiet(conn: Conn): boolean {
    const up = conn.up;
    const c = conn.client;
    if (up === null || up.sock === null || c.sock === null || conn.unanswered >= 2) return false;
    if (c.out !== null || up.out !== null || c.readDone || up.readDone || c.writeDone || up.writeDone) return false;
    return queuedOf(conn, up) === 0;
  }
  /** A FIN to each side: the client reconnects through the policy; the member closes its end. */
  move(conn: Conn, to: Member | undefined): void {
    const up = conn.up!;
    conn.termination ??= "rebalanced";
    up.member.stats.rebalanced++;
    this.opts.log.info("moved an open connection to rebalance", { from: up.member.address, to: to?.address ?? "any" });
    forwardFin(conn.client);
    forwardFin(up);
  }

  // --- passive stall evidence (SuspectHost; src/datapath/suspect.ts) ---

  get suspectAfterMs(): number {
    return this.opts.settings().flags["health-suspect-after"];
  }
  asked(conn: Conn): void {
    this.#suspicions.asked(conn);
  }
  answered(conn: Conn): void {
    this.#suspicions.answered(conn);
  }
  suspect(member: Member, silentMs: number): void {
    this.opts.reports.stallSuspected?.(member, silentMs);
  }

  /**
   * Stops accepting and closes the listening sockets; open connections carry on. `handedOver`: a
   * new gateway holds the sockets now (src/upgrade.ts), so unix socket files stay.
   */
  stopAccepting(handedOver = false): void {
    this.#suspicions.stop();
    this.#rebalancer.stop();
    this.#sweep.stopIdle();
    this.#listeners.stop();
    this.opts.sockets.close(handedOver);
  }

  /** Resolves when no connection is open any more. */
  idle(): Promise<void> {
    if (this.#conns.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Resets every open connection (both legs); `why` goes to the access log. */
  closeAll(why: TerminationCode): void {
    for (const conn of this.#conns) conn.reset(why);
  }

  /** Resets the connections paired with `member`, spread out (RESET_SPACING_MS); returns how many. */
  closeMember(member: Member): number {
    const conns: Conn[] = [];
    for (const conn of this.#conns) {
      const up = conn.up;
      if (up === null || up.member !== member || up.sock === null || up.closed) continue;
      conns.push(conn);
    }
    // Those waiting on the member for an answer first: their clients are the ones held up.
    conns.sort((a, b) => Number(b.unanswered > 0) - Number(a.unanswered > 0));
    const spacing = Math.min(RESET_SPACING_MS, RESET_SPREAD_MS / Math.max(conns.length, 1));
    const next = (i: number): void => {
      const conn = conns[i];
      if (conn === undefined || member.usable) return; // back in service meanwhile: leave the rest
      if (conn.up?.member === member && !conn.up.closed) conn.reset("member-down");
      if (i + 1 < conns.length) setTimeout(() => next(i + 1), spacing);
    };
    next(0);
    return conns.length;
  }
}

/**
 * A member's connections are reset one at a time, this far apart (and over at most RESET_SPREAD_MS
 * in all): a client library that counts failures in a row sees one at a time and recovers on a
 * healthy member in between. The etcd3 Node client opens its circuit breaker after 3 failures in a
 * row and then refuses every call for 5 s, a lease's keep-alive included; all its connections reset
 * at once did that, and its lease was lost (test/e2e/hung-member.test.ts).
 */
export const RESET_SPACING_MS = 20;
const RESET_SPREAD_MS = 1000;

/** Bytes the kernel still holds to send on both legs of `conn`. */
function queuedOf(conn: Conn, up: UpstreamLeg): number {
  return sendQueue(fdOf(conn.client.sock)) + sendQueue(fdOf(up.sock));
}

/** The client's end, for error text in Go's words (`read tcp 127.0.0.1:53412: read: connection reset by peer`). */
function clientTarget(s: Socket<Leg>): NetTarget {
  const address = clientAddress(s);
  return address === "unix" ? { network: "unix", address: "@" } : { network: "tcp", address };
}

/** The client's address (`127.0.0.1:53412`, `unix`), for the access log and the no-member warning. */
function clientAddress(s: Socket<Leg>): string {
  if (s.remoteAddress === undefined) return s.localPort === undefined ? "unix" : "unknown";
  return formatHostPort(s.remoteAddress, s.remotePort);
}
