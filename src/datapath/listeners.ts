/**
 * Accepting on the listening sockets (src/datapath/sockets.ts binds or is handed them), optionally
 * serving TLS; pausing at `--max-connections`; accepting with new certificates on reload.
 *
 * Bun accepts on a duplicate of each socket. Pausing closes only the duplicate, so the address
 * stays ours and new connects wait in the kernel's backlog until a slot frees, as with HAProxy's
 * maxconn; nobody else can bind it meanwhile (docs/bun.md, "Listening through a file descriptor").
 * Stopping closes the duplicates only: the sockets themselves belong to their SocketSet, which the
 * gateway closes, or hands to its successor (docs/restarts.md).
 *
 * @module
 */
import type { SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { lstatSync, readFileSync, unlinkSync, type Stats } from "node:fs";
import { connect as netConnect } from "node:net";
import type { ListenerStats } from "../counters.ts";
import { ConfigError } from "../flags.ts";
import { errno, errnoName, libc, setKeepAlive } from "../libc.ts";
import { errorText, type Logger } from "../log.ts";
import type { TlsFiles } from "../tls.ts";
import type { Leg } from "./pipe.ts";
import type { ListenSocket } from "./sockets.ts";

type Listener = TCPSocketListener<Leg> | UnixSocketListener<Leg>;

export interface ListenersOptions {
  /** The sockets this process accepts on. */
  readonly sockets: readonly ListenSocket[];
  /** Handlers for plaintext listeners, and for TLS ones (with a `handshake` handler). */
  readonly handlers: SocketHandler<Leg>;
  readonly tlsHandlers: SocketHandler<Leg>;
  readonly stats: ListenerStats;
  readonly log: Logger;
}

/**
 * What the listeners read from the settings in force, read at each use: the proxy's getters (no
 * object per accepted connection, docs/performance.md "Memory per connection").
 */
export interface ListenersSettings {
  /** Client connections at most (Infinity: no limit). */
  readonly maxConnections: number;
  readonly listenTls: TlsFiles | null;
}

/** One socket, and Bun's listener on a duplicate of it (null while paused). */
interface Slot {
  readonly socket: ListenSocket;
  accepting: Listener | null;
}

export class Listeners {
  #slots: Slot[] = [];
  #paused = false;
  #stopped = false;

  /** Accepts on every socket. @throws {Error} when Bun cannot listen on one (those started before it are stopped). */
  constructor(
    private readonly opts: ListenersOptions,
    private readonly settings: ListenersSettings,
  ) {
    try {
      for (const socket of opts.sockets) {
        const slot: Slot = { socket, accepting: null };
        this.#slots.push(slot);
        slot.accepting = this.acceptOn(slot);
      }
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  private tlsOptions(): object {
    const t = this.settings.listenTls;
    if (t === null) return {};
    const mutual = t.ca !== undefined;
    return { tls: { cert: t.cert, key: t.key, ca: t.ca, requestCert: mutual, rejectUnauthorized: mutual } };
  }

  private handlers(): SocketHandler<Leg> {
    return this.settings.listenTls === null ? this.opts.handlers : this.opts.tlsHandlers;
  }

  /** A Bun listener on a new duplicate of the slot's socket. */
  private acceptOn(slot: Slot): Listener {
    const fd = libc().dup(slot.socket.fd);
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
    const max = this.settings.maxConnections;
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
    const max = this.settings.maxConnections;
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
        this.opts.log.error("cannot listen with the reloaded certificates", { address: s.socket.address.address, error: errorText(e) });
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
      const a = s.socket.address;
      if (a.kind !== "tcp" || isLoopback(a.tcp.host)) continue;
      try {
        setKeepAlive(s.socket.fd, ms);
      } catch (e) {
        this.opts.log.warn("cannot set TCP keepalive on a listener; its clients go without", { address: a.address, error: errorText(e) });
      }
    }
  }

  /** Stops accepting for good; open connections carry on, and the sockets stay open until their SocketSet closes. */
  stop(): void {
    this.#stopped = true;
    for (const s of this.#slots) {
      s.accepting?.stop(false);
      s.accepting = null;
    }
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
