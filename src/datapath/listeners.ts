/**
 * The listening sockets: TCP and unix socket listeners, optionally serving TLS; pausing at
 * `--max-connections`; accepting with new certificates on reload.
 *
 * Each address is bound once for the life of the process and the socket is kept open (the
 * "keeper"); Bun accepts on a duplicate of it. Pausing closes only the duplicate, so the address
 * stays ours and new connects wait in the kernel's backlog until a slot frees, as with HAProxy's
 * maxconn; nobody else can bind it meanwhile (docs/bun.md, "Listening through a file descriptor").
 * Unix sockets are bound here rather than by Bun, whose listener deletes its socket file by name
 * when it stops, whoever owns the path by then.
 *
 * @module
 */
import type { SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { lstatSync, readFileSync, unlinkSync, type Stats } from "node:fs";
import { connect as netConnect } from "node:net";
import type { ListenAddress } from "../addresses.ts";
import type { ListenerStats } from "../counters.ts";
import { ConfigError } from "../flags.ts";
import { errno, errnoName, libc, listenUnix, removeIfSame, setKeepAlive, UnixListenError } from "../libc.ts";
import { errorText, type Logger } from "../log.ts";
import type { TlsFiles } from "../tls.ts";
import type { Leg } from "./pipe.ts";

type Listener = TCPSocketListener<Leg> | UnixSocketListener<Leg>;

export interface ListenersOptions {
  readonly addresses: readonly ListenAddress[];
  /** File mode of unix socket listeners. */
  readonly socketMode: number;
  /** SO_REUSEPORT on TCP listeners (worker processes share the port; `--reuse-port`). */
  readonly reusePort: boolean;
  /** Refuse a TCP address another socket already listens on, even with SO_REUSEPORT. */
  readonly exclusive: boolean;
  /** Handlers for plaintext listeners, and for TLS ones (with a `handshake` handler). */
  readonly handlers: SocketHandler<Leg>;
  readonly tlsHandlers: SocketHandler<Leg>;
  readonly stats: ListenerStats;
  readonly log: Logger;
}

/** What the listeners read from the settings in force. */
export interface ListenersSettings {
  /** Client connections at most (Infinity: no limit). */
  readonly maxConnections: number;
  readonly listenTls: TlsFiles | null;
}

/** One address: the listening socket we keep, and Bun's listener on a duplicate of it (null while paused). */
interface Slot {
  readonly address: ListenAddress;
  readonly keeper: number;
  accepting: Listener | null;
  /** The socket file we created (unix), to remove only that file at exit. */
  readonly file: Stats | null;
}

/** A bind or listen failure on one address, in Go's words (`listen tcp 127.0.0.1:23790: bind: address already in use`). */
export class ListenError extends Error {
  constructor(
    readonly address: string,
    message: string,
  ) {
    super(message);
  }
}

const inUse = (a: ListenAddress) =>
  new ListenError(a.address, `listen ${a.kind} ${a.kind === "tcp" ? a.address : a.path}: bind: address already in use`);

const fdOf = (l: Listener) => (l as unknown as { fd: number }).fd;

export class Listeners {
  #slots: Slot[] = [];
  #paused = false;
  #stopped = false;
  /** The port of the first TCP listener (0 when there is none). */
  readonly port: number;

  /** Binds every address. @throws {ListenError} naming the address that cannot be bound. */
  constructor(
    private readonly opts: ListenersOptions,
    private readonly settings: () => ListenersSettings,
  ) {
    try {
      for (const a of opts.addresses) this.#slots.push(a.kind === "tcp" ? this.bindTcp(a) : this.bindUnix(a));
    } catch (e) {
      this.release();
      throw e;
    }
    const tcp = this.#slots.find((s) => s.address.kind === "tcp");
    this.port = tcp === undefined ? 0 : (tcp.accepting as TCPSocketListener<Leg>).port;
  }

  private tlsOptions(): object {
    const t = this.settings().listenTls;
    if (t === null) return {};
    const mutual = t.ca !== undefined;
    return { tls: { cert: t.cert, key: t.key, ca: t.ca, requestCert: mutual, rejectUnauthorized: mutual } };
  }

  private handlers(): SocketHandler<Leg> {
    return this.settings().listenTls === null ? this.opts.handlers : this.opts.tlsHandlers;
  }

  private bindTcp(a: Extract<ListenAddress, { kind: "tcp" }>): Slot {
    const { host, port } = a.tcp;
    if (this.opts.exclusive && this.opts.reusePort && port !== 0) {
      // SO_REUSEPORT would let us join another process's listener: bind once without it to see.
      try {
        Bun.listen<Leg>({ hostname: host, port, socket: { data() {} } }).stop(true);
      } catch {
        throw inUse(a);
      }
    }
    let l: Listener;
    try {
      // reusePort is typed only on Bun.connect's options in bun-types, but Bun.listen honours it (docs/bun.md).
      l = Bun.listen<Leg>({ hostname: host, port, allowHalfOpen: true, ...({ reusePort: this.opts.reusePort } as object), ...this.tlsOptions(), socket: this.handlers() });
    } catch (e) {
      throw (e as NodeJS.ErrnoException).code === "EADDRINUSE" ? inUse(a) : new ListenError(a.address, `listen tcp ${a.address}: ${errorText(e)}`);
    }
    const keeper = libc().dup(fdOf(l));
    if (keeper < 0) {
      l.stop(true);
      throw new ListenError(a.address, `listen tcp ${a.address}: dup: ${errnoName(errno())}`);
    }
    return { address: a, keeper, accepting: l, file: null };
  }

  private bindUnix(a: Extract<ListenAddress, { kind: "unix" }>): Slot {
    let bound: { fd: number; file: Stats };
    try {
      bound = listenUnix(a.path, this.opts.socketMode, 511);
    } catch (e) {
      if (!(e instanceof UnixListenError)) throw e;
      throw e.errno === "EADDRINUSE" ? inUse(a) : new ListenError(a.address, `listen unix ${a.path}: ${e.message}`);
    }
    const slot: Slot = { address: a, keeper: bound.fd, accepting: null, file: bound.file };
    slot.accepting = this.acceptOn(slot);
    return slot;
  }

  /** A Bun listener on a new duplicate of the slot's socket. */
  private acceptOn(slot: Slot): Listener {
    const fd = libc().dup(slot.keeper);
    if (fd < 0) throw new Error(`dup: ${errnoName(errno())}`);
    try {
      return Bun.listen<Leg>({ fd, allowHalfOpen: true, ...this.tlsOptions(), socket: this.handlers() } as unknown as Parameters<typeof Bun.listen<Leg>>[0]);
    } catch (e) {
      libc().close(fd);
      throw e;
    }
  }

  /**
   * `--max-connections`: with `open` connections, stop accepting at the limit. The sockets stay
   * bound and listening, so new connects wait in the kernel's backlog until a slot frees.
   */
  checkLimit(open: number): void {
    const max = this.settings().maxConnections;
    if (this.#paused || this.#stopped || open < max) return;
    this.#paused = true;
    this.opts.stats.limitReached++;
    for (const s of this.#slots) {
      s.accepting?.stop(false);
      s.accepting = null;
    }
    this.opts.log.warn("connection limit reached: stopped accepting", { "max-connections": max });
  }

  /** Accepts again once below the limit (after a connection closed, or the limit was raised). */
  resumeBelowLimit(open: number): void {
    const max = this.settings().maxConnections;
    if (!this.#paused || this.#stopped || open >= max) return;
    try {
      for (const s of this.#slots) s.accepting ??= this.acceptOn(s);
      this.#paused = false;
      this.opts.log.info("below the connection limit: accepting again", { connections: open });
    } catch (e) {
      this.opts.log.error("cannot accept again after the connection limit; retrying", { error: errorText(e) });
      setTimeout(() => this.resumeBelowLimit(open), 1000);
    }
  }

  /**
   * New certificates: a listener with them starts accepting on the same socket before the old one
   * stops, so no connect is refused in between; open connections are not touched.
   */
  relisten(): void {
    if (this.#paused || this.#stopped) return;
    for (const s of this.#slots) {
      try {
        const next = this.acceptOn(s);
        s.accepting?.stop(false);
        s.accepting = next;
      } catch (e) {
        this.opts.log.error("cannot listen with the reloaded certificates", { address: s.address.address, error: errorText(e) });
      }
    }
  }

  /**
   * TCP keepalive (`--keepalive-time`) for the clients of every listener other hosts can reach, set
   * once on the listening socket: each accepted socket starts with it (docs/bun.md, "Keepalive
   * through the listening socket"), so no client pays four setsockopt calls. Loopback and unix
   * listeners get none: their clients' kernel is ours and reports their end. Again on a reload.
   */
  keepClientsAlive(ms: number): void {
    for (const s of this.#slots) {
      if (s.address.kind !== "tcp" || isLoopback(s.address.tcp.host)) continue;
      try {
        setKeepAlive(s.keeper, ms);
      } catch (e) {
        this.opts.log.warn("cannot set TCP keepalive on a listener; its clients go without", { address: s.address.address, error: errorText(e) });
      }
    }
  }

  /** Stops accepting for good and removes the unix socket files we created; open connections carry on. */
  stop(): void {
    this.#stopped = true;
    this.release();
  }

  private release(): void {
    for (const s of this.#slots) {
      s.accepting?.stop(false);
      s.accepting = null;
      libc().close(s.keeper);
      if (s.address.kind === "unix" && s.file !== null) removeIfSame(s.address.path, s.file);
    }
    this.#slots = [];
  }
}

/** A listen host only this host can reach (a hostname such as `localhost` counts if it says so). */
function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "::1";
}

/** Paths of the unix sockets listening in this network namespace, from /proc/net/unix (empty where unreadable). */
function listeningUnixPaths(): Set<string> {
  const out = new Set<string>();
  let text: string;
  try {
    text = readFileSync("/proc/net/unix", "utf8");
  } catch {
    return out;
  }
  for (const line of text.split("\n").slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON (listening).
    const m = /^\s*\S+\s+\S+\s+\S+\s+([0-9A-Fa-f]+)\s+\S+\s+\S+\s+\S+\s+(.+)$/.exec(line);
    if (m !== null && (parseInt(m[1]!, 16) & 0x10000) !== 0) out.add(m[2]!);
  }
  return out;
}

/** Whether a server answers on the unix socket `path`: it accepts a connect, or the kernel lists it as listening (a full backlog refuses connects). */
async function unixSocketLive(path: string): Promise<boolean> {
  if (listeningUnixPaths().has(path)) return true;
  return await new Promise<boolean>((resolve) => {
    const s = netConnect({ path });
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    setTimeout(() => done(false), 500);
  });
}

/**
 * Makes `path` free for a unix listener (`--listen-addr`, and the admin socket of `--admin-addr`):
 * nothing there is fine; a socket file whose server is gone (a process that died left it) is
 * removed; anything else is left alone and refused: a live socket, a regular file, a directory, a
 * symlink (not followed).
 *
 * @param fail makes the error from what is in the way; default: a ConfigError naming `--listen-addr`.
 * @throws what `fail` makes.
 */
export async function clearStaleSocket(path: string, fail: (why: string) => Error = (why) => new ConfigError("listen-addr", `unix://${path}`, `cannot listen: ${why}`)): Promise<void> {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw fail(`${path}: ${errorText(e)}`);
  }
  const refuse = (what: string) => fail(`${path} ${what}; nothing was changed`);
  if (st.isSymbolicLink()) throw refuse("is a symbolic link, not a socket");
  if (st.isDirectory()) throw refuse("is a directory, not a socket");
  if (!st.isSocket()) throw refuse("exists and is not a socket");
  if (await unixSocketLive(path)) throw fail(`${path} is in use by another process; nothing was changed`);
  unlinkSync(path);
}
