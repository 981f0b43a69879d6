/**
 * The data path: accept, choose, dial, pipe, close. Bytes are never parsed or changed.
 *
 * Each proxied connection is two legs (client and upstream). A leg's `out` holds the bytes read
 * from its peer that the kernel did not take yet; while it is non-empty the peer is paused, so each
 * direction buffers at most about one read (≈512 KiB) however slow the reader is.
 *
 * @module
 */
import type { Socket, SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { chmodSync, existsSync, unlinkSync } from "node:fs";
import type { AccessLog, TerminationCode } from "./accesslog.ts";
import { formatHostPort, type ListenAddress, type Member } from "./endpoints.ts";
import type { MemberHealth } from "./health.ts";
import { formatDuration } from "./duration.ts";
import { errorText, type Logger } from "./log.ts";
import { ListenerStats, type FailureReason } from "./metrics.ts";
import { tlsReason, type TlsFiles } from "./tls.ts";
import type { Policy } from "./select.ts";

const NO_MEMBERS: Member[] = [];

/** Granularity of connect timeouts: a dial fails at most this long after --connect-timeout. */
const DIAL_SWEEP_MS = 20;

/** ALPN protocol list in wire format (length-prefixed names), as Bun's `ALPNProtocols` takes it. */
function alpnWire(protocols: readonly string[]): Uint8Array {
  const parts = protocols.map((p) => Buffer.from(p));
  return Buffer.concat(parts.flatMap((b) => [Buffer.from([b.length]), b]));
}

/** One socket of a proxied pair, as `socket.data`. */
interface Leg {
  sock: Socket<Leg> | null;
  peer: Leg | null;
  /** Bytes from the peer waiting to be written to this leg; the peer is paused while this is set. */
  out: Uint8Array[] | null;
  /** The peer sent FIN: forward it with shutdown() once `out` is flushed. */
  finPending: boolean;
  /** This socket's peer process sent FIN. */
  readDone: boolean;
  /** We forwarded a FIN on this socket. */
  writeDone: boolean;
  closed: boolean;
  /** An upstream dial that timed out or was superseded: its socket is closed if it ever opens. */
  abandoned: boolean;
  /** Bytes arrived from this socket (a reset before any counts against an upstream member). */
  gotData: boolean;
  conn: Conn;
}

/** One client connection and its (current) upstream. */
interface Conn {
  client: Leg;
  up: Leg | null;
  member: Member | null;
  candidates: Member[];
  attempt: number;
  dialing: boolean;
  /** How long the dial in flight may take (the --connect-timeout when it started). */
  dialTimeoutMs: number;
  /** Client bytes read before an upstream was paired (rare: the client is paused until then). */
  early: Uint8Array[] | null;
  /** performance.now() when the current dial started. */
  dialStart: number;
  /** The idle sweep's counter when bytes last moved (see --idle-timeout). */
  activeAt: number;
  /** performance.now() at accept, and when the member connection was made (0: never). */
  acceptedAt: number;
  connectedAt: number;
  bytesFromClient: number;
  bytesFromMember: number;
  /** Fails the dial in flight (a member whose TLS certificate does not verify); null once connected. */
  failDial: ((reason: string, kind: FailureReason) => void) | null;
  /** Who ended the connection and why (access log), set by the first end, close or forced close. */
  termination: TerminationCode | null;
  /** A member was usable when the connection arrived (else a failure to connect is `no-member`). */
  hadUsable: boolean;
  /** The client's address, kept only with --access-log (a closed socket no longer has it). */
  clientAddr: string | null;
  /** performance.now() when the upstream connected; 0 once the early-end window is over. */
  pairedAt: number;
  /**
   * The member had failed dials before this connect: its success is only reported once it proves
   * itself (sends a byte, or the connection ends normally), so a member that accepts and resets at
   * once keeps counting failures instead of being reset to zero by every accept.
   */
  probation: boolean;
}

export interface ProxyOptions {
  addresses: readonly ListenAddress[];
  /** File mode of unix socket listeners. */
  socketMode: number;
  /** 0 = unlimited. */
  maxConnections: number;
  /** 0 = off. */
  idleTimeoutMs: number;
  /** SO_REUSEPORT, for worker processes sharing one port. */
  reusePort: boolean;
  /** `--access-log`, or null (off: nothing is formatted). */
  accessLog: AccessLog | null;
  /** TLS to members (origination), or null: bytes pass through untouched. */
  upstreamTls: (TlsFiles & { serverName?: string; alpn: string[] }) | null;
  /** TLS to clients (termination), or null. */
  listenTls: TlsFiles | null;
  policy: Policy;
  health: MemberHealth;
  connectTimeoutMs: number;
  /**
   * TCP keepalive idle time on both legs. Bun then probes every second, 10 times (TCP_KEEPINTVL=1,
   * TCP_KEEPCNT=10, not settable), so a silent peer is found within this plus 10 s.
   */
  keepAliveMs: number;
  log: Logger;
}

type Listener = TCPSocketListener<Leg> | UnixSocketListener<Leg>;

export interface Proxy {
  /** The port of the first TCP listener (0 when there is none). */
  readonly port: number;
  /** Client connections open now (including those still dialing). */
  readonly active: number;
  readonly stats: ListenerStats;
  /** Stops accepting; open connections carry on. */
  stopAccepting(): void;
  /** Resolves when no connection is open any more. */
  idle(): Promise<void>;
  /** Resets every open connection (both legs); `why` goes to the access log. */
  closeAll(why: "drained" | "shut-down"): void;
  /** Resets the connections paired with `member`; returns how many. */
  closeMember(member: Member): number;
  /** Changes settings live (SIGHUP): new connections use them; open ones carry on. */
  configure(changes: Partial<Pick<ProxyOptions, "policy" | "connectTimeoutMs" | "keepAliveMs" | "maxConnections" | "idleTimeoutMs" | "upstreamTls" | "listenTls">>): void;
}

function newLeg(conn: Conn): Leg {
  return { sock: null, peer: null, out: null, finPending: false, readDone: false, writeDone: false, closed: false, abandoned: false, gotData: false, conn };
}

/**
 * Listens on `hostname:port` and proxies every accepted connection to a member chosen by `policy`.
 *
 * @throws {Error} from Bun.listen (e.g. EADDRINUSE) synchronously.
 */
export function startProxy(opts: ProxyOptions): Proxy {
  // Settings are read from `opts` where they are used: a SIGHUP reload changes them (configure()).
  const { health, log } = opts;
  let epoch = 0;
  const conns = new Set<Conn>();
  const stats = new ListenerStats();
  let idleWaiters: (() => void)[] = [];
  let lastNoMemberLog = -Infinity;
  let suppressedNoMember = 0;

  const finished = (conn: Conn) => {
    if (!conn.client.closed || conn.dialing || (conn.up !== null && !conn.up.closed)) return;
    if (!conns.delete(conn)) return;
    if (opts.accessLog !== null) logAccess(conn);
    if (paused) resumeAccepting();
    if (conns.size === 0 && idleWaiters.length > 0) {
      const waiters = idleWaiters;
      idleWaiters = [];
      for (const w of waiters) w();
    }
  };

  /** Writes as much of `leg.out` as the kernel takes; on success forwards a pending FIN or resumes the peer. */
  const flush = (leg: Leg) => {
    const out = leg.out;
    const sock = leg.sock;
    if (out === null || sock === null || leg.closed) return;
    while (out.length > 0) {
      const buf = out[0]!;
      // Trap 1: write() is unbuffered and may take only part of buf.
      const n = sock.write(buf);
      if (n < 0) return; // closing: the close handler cleans up
      if (n < buf.byteLength) {
        out[0] = buf.subarray(n);
        return; // drain will call us again
      }
      out.shift();
    }
    leg.out = null;
    if (leg.finPending) shutdownWrite(leg);
    else leg.peer?.sock?.resume();
  };

  /** Sends `chunk` to `leg`, queueing what the kernel does not take; false when the source must pause. */
  const send = (leg: Leg, chunk: Uint8Array): boolean => {
    if (leg.out !== null) {
      leg.out.push(chunk);
      return false;
    }
    const n = leg.sock!.write(chunk);
    if (n === chunk.byteLength || n < 0) return true;
    leg.out = [n > 0 ? chunk.subarray(n) : chunk];
    return false;
  };

  /**
   * Forwards a FIN. Trap 2: end() is a full close(2), so while the other direction still flows the
   * FIN goes out with shutdown() (SHUT_WR); only when that direction is finished too is end() used.
   */
  const shutdownWrite = (leg: Leg) => {
    leg.finPending = false;
    if (leg.writeDone || leg.closed) return;
    leg.writeDone = true;
    // Its peer process already sent FIN and our queue is empty: close(2) sends the FIN after what the
    // kernel still holds and, with nothing left to read, cannot reset; one syscall instead of two.
    if (leg.readDone) leg.sock!.end();
    else leg.sock!.shutdown();
  };

  const forwardFin = (leg: Leg) => {
    if (leg.closed) return;
    if (leg.out !== null) leg.finPending = true;
    else shutdownWrite(leg);
  };

  /** Both directions of `leg` have ended: release the socket (nothing unread, nothing unsent here). */
  const closeIfDone = (leg: Leg) => {
    if (leg.readDone && leg.writeDone && !leg.closed) leg.sock!.end();
  };

  /**
   * A member that ends a connection before saying anything, within the connect timeout of
   * accepting it, and before the client ended its side, is as broken as one that refuses: it counts
   * like a failed dial (once per connection).
   */
  const countEarlyEnd = (up: Leg, reason: string) => {
    const conn = up.conn;
    const member = conn.member;
    if (member === null || conn.pairedAt === 0) return;
    const early = !up.gotData && !conn.client.readDone && performance.now() - conn.pairedAt < opts.connectTimeoutMs;
    conn.pairedAt = 0; // once
    if (early) {
      member.stats.failures.reset++;
      health.dialFailed(member, reason);
    }
    else if (conn.probation) proven(conn);
  };

  const proven = (conn: Conn) => {
    conn.probation = false;
    health.dialSucceeded(conn.member!);
  };

  const pipe: Omit<SocketHandler<Leg>, "open"> = {
    data(s, chunk) {
      const leg = s.data;
      if (!leg.gotData) {
        leg.gotData = true;
        if (leg.conn.probation && leg === leg.conn.up) proven(leg.conn);
      }
      const peer = leg.peer;
      if (peer === null) {
        (leg.conn.early ??= []).push(chunk);
        s.pause();
        return;
      }
      if (peer.closed) {
        // The other side is gone; the kernel would answer these bytes with a reset, and so do we.
        s.terminate();
        return;
      }
      const conn = leg.conn;
      conn.activeAt = epoch;
      if (leg === conn.up) {
        conn.member!.stats.bytesFromMember += chunk.byteLength;
        conn.bytesFromMember += chunk.byteLength;
      } else {
        conn.member!.stats.bytesToMember += chunk.byteLength;
        conn.bytesFromClient += chunk.byteLength;
      }
      if (!send(peer, chunk)) s.pause();
    },
    drain(s) {
      flush(s.data);
    },
    // Trap 3: an end handler (with allowHalfOpen) is what keeps Bun from closing on FIN.
    end(s) {
      const leg = s.data;
      leg.readDone = true;
      leg.conn.termination ??= leg === leg.conn.client ? "client-close" : "member-close";
      if (leg === leg.conn.up) countEarlyEnd(leg, "closed right after connect");
      if (leg.peer !== null) forwardFin(leg.peer);
      closeIfDone(leg);
    },
    close(s, err) {
      const leg = s.data;
      if (leg.closed) return;
      leg.closed = true;
      const conn = leg.conn;
      if (leg.abandoned) return;
      conn.termination ??= leg === conn.client ? (err === undefined ? "client-close" : "client-reset") : err === undefined ? "member-close" : "member-reset";
      if (leg === conn.up && conn.member !== null) {
        conn.member.connections--;
        countEarlyEnd(leg, err === undefined ? "closed right after connect" : `reset right after connect: ${errorText(err)}`);
      }
      const peer = leg.peer;
      if (peer !== null && !peer.closed && peer.sock !== null) {
        if (err !== undefined) peer.sock.terminate(); // a reset on one side becomes a reset on the other
        else if (!peer.writeDone) forwardFin(peer);
        else closeIfDone(peer);
      }
      finished(conn);
    },
    error(s, err) {
      log.warn("connection error", { error: errorText(err) });
    },
  };

  const upstreamHandlers: SocketHandler<Leg> = {
    ...pipe,
    open(s) {
      const leg = s.data;
      const conn = leg.conn;
      if (leg.abandoned) {
        s.end(); // a connect that finished after its timeout: nothing was sent on it
        return;
      }
      if (opts.upstreamTls !== null && !s.authorized) {
        // Without a handshake handler, open fires after the handshake (bun-platform.md trap 8): a
        // member whose certificate does not verify is a failed dial, and this socket goes.
        const reason = tlsReason(s.getAuthorizationError() ?? new Error("certificate not authorized"));
        stats.countTlsFailure("member", reason);
        conn.failDial?.(`TLS: ${reason}`, "tls");
        s.terminate();
        return;
      }
      leg.sock = s;
      conn.dialing = false;
      conn.failDial = null;
      dialsInFlight.delete(conn);
      s.setNoDelay(true);
      s.setKeepAlive(true, opts.keepAliveMs);
      const member = conn.member!;
      conn.pairedAt = conn.connectedAt = performance.now();
      member.stats.connectionsTotal++;
      member.stats.observeConnect((conn.pairedAt - conn.dialStart) / 1000);
      conn.candidates = NO_MEMBERS; // not needed any more; keep idle connections small
      if (member.failures === 0 && member.active) health.dialSucceeded(member);
      else conn.probation = true;
      const client = conn.client;
      if (client.closed) {
        s.terminate();
        return;
      }
      leg.peer = client;
      client.peer = leg;
      if (conn.early !== null) {
        leg.out = conn.early;
        conn.early = null;
        flush(leg);
      }
      if (client.readDone) forwardFin(leg);
      else if (leg.out === null) client.sock!.resume();
    },
  };

  // Connect timeouts: one sweep every DIAL_SWEEP_MS over the dials in flight, running only while
  // there are any, instead of a timer per connection (setTimeout was 5 % of the CPU under churn).
  const dialsInFlight = new Set<Conn>();
  let dialSweep: Timer | null = null;
  const sweepDials = () => {
    const now = performance.now();
    for (const conn of dialsInFlight) {
      if (now - conn.dialStart < conn.dialTimeoutMs) continue;
      dialsInFlight.delete(conn);
      conn.failDial?.(`connect timeout after ${formatDuration(conn.dialTimeoutMs)}`, "timeout");
    }
    if (dialsInFlight.size === 0 && dialSweep !== null) {
      clearInterval(dialSweep);
      dialSweep = null;
    }
  };
  const watchDial = (conn: Conn) => {
    dialsInFlight.add(conn);
    dialSweep ??= setInterval(sweepDials, DIAL_SWEEP_MS);
  };

  const dialNext = (conn: Conn) => {
    if (conn.client.closed) {
      conn.dialing = false;
      finished(conn);
      return;
    }
    const member = conn.candidates[conn.attempt++];
    if (member === undefined) {
      conn.dialing = false;
      noMember(conn);
      return;
    }
    conn.dialing = true;
    conn.member = member;
    // Counted from the dial on, so least-connections sees a burst of new connections as it happens.
    member.connections++;
    const leg = newLeg(conn);
    conn.up = leg;
    const failed = (reason: string, kind: FailureReason) => {
      if (leg.abandoned) return;
      leg.abandoned = true;
      member.connections--;
      member.stats.failures[kind]++;
      dialsInFlight.delete(conn);
      health.dialFailed(member, reason);
      dialNext(conn);
    };
    // Trap 5: Bun.connect has no timeout and cannot be cancelled; race a timer, close late sockets.
    conn.dialStart = performance.now();
    conn.dialTimeoutMs = opts.connectTimeoutMs;
    conn.failDial = failed;
    watchDial(conn);
    const tls = opts.upstreamTls;
    Bun.connect<Leg>({
      hostname: member.dialHost,
      port: member.endpoint.port,
      allowHalfOpen: true,
      data: leg,
      socket: upstreamHandlers,
      ...(tls === null ? {} : { tls: { ca: tls.ca, cert: tls.cert, key: tls.key, serverName: tls.serverName ?? member.endpoint.host, rejectUnauthorized: true, ALPNProtocols: alpnWire(tls.alpn) } }),
    }).catch((e: unknown) => {
      const text = errorText(e);
      failed(text, text.includes("ECONNREFUSED") ? "refused" : "other");
    });
  };

  const logAccess = (conn: Conn) => {
    opts.accessLog!.write({
      ts: new Date().toISOString(),
      client: conn.clientAddr ?? "unknown",
      member: conn.connectedAt > 0 ? (conn.member?.address ?? null) : null,
      connect_ms: conn.connectedAt > 0 ? Math.round((conn.connectedAt - conn.acceptedAt) * 1000) / 1000 : null,
      duration_ms: Math.round((performance.now() - conn.acceptedAt) * 1000) / 1000,
      bytes_from_client: conn.bytesFromClient,
      bytes_from_member: conn.bytesFromMember,
      termination: conn.termination ?? "client-close",
    });
  };

  /** Resets both legs of `conn`, recording why for the access log. */
  const reset = (conn: Conn, why: TerminationCode) => {
    conn.termination ??= why;
    conn.up?.sock?.terminate();
    conn.client.sock?.terminate();
  };

  const noMember = (conn: Conn) => {
    const now = performance.now();
    if (now - lastNoMemberLog >= 1000) {
      log.warn("no endpoint could be reached; closing client connection", {
        client: conn.client.sock?.remoteAddress,
        tried: conn.candidates.map((m) => m.address),
        suppressed: suppressedNoMember,
      });
      lastNoMemberLog = now;
      suppressedNoMember = 0;
    } else suppressedNoMember++;
    conn.up = null;
    conn.termination = conn.hadUsable ? "connect-failed" : "no-member";
    conn.client.sock!.terminate();
  };

  const listenerHandlers: SocketHandler<Leg> = {
    ...pipe,
    open(s) {
      stats.accepted++;
      // Trap 7: the listener's `data` option is shared by every socket; give each its own state.
      const candidates = opts.policy.candidates();
      const conn: Conn = { client: null!, up: null, member: null, candidates, hadUsable: candidates[0]?.active === true, failDial: null, clientAddr: opts.accessLog === null ? null : s.remoteAddress === undefined ? (s.localPort === undefined ? "unix" : "unknown") : formatHostPort(s.remoteAddress, s.remotePort), attempt: 0, dialing: true, dialTimeoutMs: 0, early: null, dialStart: 0, pairedAt: 0, probation: false, activeAt: epoch, acceptedAt: performance.now(), connectedAt: 0, bytesFromClient: 0, bytesFromMember: 0, termination: null };
      const leg = newLeg(conn);
      conn.client = leg;
      leg.sock = s;
      s.data = leg;
      conns.add(conn);
      s.setNoDelay?.(true);
      s.setKeepAlive?.(true, opts.keepAliveMs);
      // Hold the client's bytes in the kernel until an upstream is connected.
      s.pause();
      if (opts.maxConnections > 0 && conns.size >= opts.maxConnections) pauseAccepting();
      dialNext(conn);
    },
  };

  /** TLS termination: a failed client handshake closes only that connection, counted by reason. */
  const tlsListenerHandlers: SocketHandler<Leg> = {
    ...listenerHandlers,
    handshake(s, ok, err) {
      if (ok) return;
      const reason = tlsReason(err ?? s.getAuthorizationError() ?? new Error("handshake failed"));
      stats.countTlsFailure("client", reason);
      log.debug("client TLS handshake failed", { reason });
      reset(s.data.conn, "client-reset");
    },
  };
  const listenTlsOptions = () => {
    const t = opts.listenTls;
    if (t === null) return {};
    const mutual = t.ca !== undefined;
    return { tls: { cert: t.cert, key: t.key, ca: t.ca, requestCert: mutual, rejectUnauthorized: mutual } };
  };
  const listen = (a: ListenAddress): Listener => {
    const socket = opts.listenTls === null ? listenerHandlers : tlsListenerHandlers;
    if (a.kind === "tcp") {
      return Bun.listen<Leg>({
        hostname: a.tcp.host,
        port: a.tcp.port,
        allowHalfOpen: true,
        // Typed only on Bun.connect's options in bun-types, but honoured by Bun.listen (bun-platform.md §1.3).
        ...({ reusePort: opts.reusePort } as object),
        ...listenTlsOptions(),
        socket,
      });
    }
    // Our own file after a pause (a stale one from a dead process was cleared at startup).
    if (existsSync(a.path)) unlinkSync(a.path);
    const l = Bun.listen<Leg>({ unix: a.path, allowHalfOpen: true, ...listenTlsOptions(), socket });
    chmodSync(a.path, opts.socketMode);
    return l;
  };
  let listeners: Listener[] = [];
  try {
    for (const a of opts.addresses) listeners.push(listen(a));
  } catch (e) {
    for (const l of listeners) l.stop(true);
    throw e;
  }
  const tcpPort = opts.addresses.findIndex((a) => a.kind === "tcp");
  const port = tcpPort < 0 ? 0 : (listeners[tcpPort] as TCPSocketListener<Leg>).port;

  // --max-connections: at the limit, stop accepting (close the listening sockets: new connects are
  // refused by the kernel) rather than accept and close; listen again once a connection ends.
  let paused = false;
  let stopped = false;
  function pauseAccepting() {
    if (paused || stopped) return;
    paused = true;
    stats.limitReached++;
    for (const l of listeners) l.stop(false);
    log.warn("connection limit reached: stopped accepting", { "max-connections": opts.maxConnections });
  }
  const resumeAccepting = () => {
    if (!paused || stopped || (opts.maxConnections > 0 && conns.size >= opts.maxConnections)) return;
    try {
      listeners = opts.addresses.map(listen);
      paused = false;
      log.info("below the connection limit: accepting again", { connections: conns.size });
    } catch (e) {
      log.error("cannot listen again after the connection limit; retrying", { error: errorText(e) });
      setTimeout(resumeAccepting, 1000);
    }
  };

  /**
   * New certificates for the listeners: with SO_REUSEPORT the new listeners open before the old
   * ones close, so no connect is refused in between; open connections are not touched.
   */
  const relisten = () => {
    try {
      const old = listeners;
      if (!opts.reusePort) for (const l of old) l.stop(false);
      listeners = opts.addresses.map(listen);
      if (opts.reusePort) for (const l of old) l.stop(false);
    } catch (e) {
      log.error("cannot listen with the reloaded certificates", { error: errorText(e) });
    }
  };

  // --idle-timeout: one sweep for all connections (no timer per connection); the data path only
  // stamps a connection with the sweep counter.
  let sweeper: Timer | null = null;
  const startSweeper = () => {
    if (sweeper !== null) clearInterval(sweeper);
    sweeper = null;
    if (opts.idleTimeoutMs <= 0 || stopped) return;
    const every = Math.max(Math.min(opts.idleTimeoutMs / 4, 5000), 50);
    const idleTicks = Math.ceil(opts.idleTimeoutMs / every);
    sweeper = setInterval(() => {
      epoch++;
      for (const conn of conns) {
        if (epoch - conn.activeAt <= idleTicks || conn.up?.sock == null) continue;
        log.debug("closing idle connection", { member: conn.member?.address });
        conn.termination ??= "idle-timeout";
        conn.up.sock.end();
        conn.client.sock?.end();
      }
    }, every);
    sweeper.unref();
  };
  startSweeper();

  return {
    port,
    stats,
    get active() {
      return conns.size;
    },
    configure(changes) {
      Object.assign(opts, changes);
      if (changes.idleTimeoutMs !== undefined) startSweeper();
      if (changes.listenTls !== undefined && !paused && !stopped) relisten();
      if (paused) resumeAccepting();
    },
    stopAccepting() {
      stopped = true;
      if (sweeper !== null) clearInterval(sweeper);
      for (const l of listeners) l.stop(false);
      for (const a of opts.addresses) if (a.kind === "unix" && existsSync(a.path)) unlinkSync(a.path);
    },
    idle() {
      if (conns.size === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
    closeAll(why) {
      for (const conn of conns) reset(conn, why);
    },
    closeMember(member) {
      let n = 0;
      for (const conn of conns) {
        if (conn.member !== member || conn.up === null || conn.up.sock === null || conn.up.closed) continue;
        reset(conn, "member-down");
        n++;
      }
      return n;
    },
  };
}
