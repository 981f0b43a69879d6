/**
 * The listening sockets: TCP and unix socket listeners, optionally serving TLS; pausing at
 * `--max-connections`; re-opening with new certificates on reload.
 *
 * @module
 */
import type { SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { chmodSync, existsSync, unlinkSync } from "node:fs";
import { connect as netConnect } from "node:net";
import type { ListenAddress } from "../addresses.ts";
import type { ListenerStats } from "../counters.ts";
import { ConfigError } from "../flags.ts";
import { errorText, type Logger } from "../log.ts";
import type { TlsFiles } from "../tls.ts";
import type { Leg } from "./pipe.ts";

type Listener = TCPSocketListener<Leg> | UnixSocketListener<Leg>;

export interface ListenersOptions {
  readonly addresses: readonly ListenAddress[];
  /** File mode of unix socket listeners. */
  readonly socketMode: number;
  /** SO_REUSEPORT on TCP listeners. */
  readonly reusePort: boolean;
  /** Handlers for plaintext listeners, and for TLS ones (with a `handshake` handler). */
  readonly handlers: SocketHandler<Leg>;
  readonly tlsHandlers: SocketHandler<Leg>;
  readonly stats: ListenerStats;
  readonly log: Logger;
}

/** What the listeners read from the settings in force. */
export interface ListenersSettings {
  readonly maxConnections: number;
  readonly listenTls: TlsFiles | null;
}

export class Listeners {
  #open: Listener[] = [];
  #paused = false;
  #stopped = false;
  /** The port of the first TCP listener (0 when there is none). */
  readonly port: number;

  /** @throws {Error} from Bun.listen (e.g. EADDRINUSE). */
  constructor(
    private readonly opts: ListenersOptions,
    private readonly settings: () => ListenersSettings,
  ) {
    this.#open = this.listenAll();
    const first = opts.addresses.findIndex((a) => a.kind === "tcp");
    this.port = first < 0 ? 0 : (this.#open[first] as TCPSocketListener<Leg>).port;
  }

  /** Opens every address; on a failure closes what it opened and throws. */
  private listenAll(): Listener[] {
    const opened: Listener[] = [];
    try {
      for (const a of this.opts.addresses) opened.push(this.listen(a));
    } catch (e) {
      for (const l of opened) l.stop(true);
      throw e;
    }
    return opened;
  }

  private listen(a: ListenAddress): Listener {
    const t = this.settings().listenTls;
    const mutual = t?.ca !== undefined;
    const tls = t === null ? {} : { tls: { cert: t.cert, key: t.key, ca: t.ca, requestCert: mutual, rejectUnauthorized: mutual } };
    const socket = t === null ? this.opts.handlers : this.opts.tlsHandlers;
    if (a.kind === "tcp") {
      // reusePort is typed only on Bun.connect's options in bun-types, but Bun.listen honours it (docs/bun.md).
      return Bun.listen<Leg>({ hostname: a.tcp.host, port: a.tcp.port, allowHalfOpen: true, ...({ reusePort: this.opts.reusePort } as object), ...tls, socket });
    }
    // Our own file after a pause (a stale one from a dead process was cleared at startup).
    if (existsSync(a.path)) unlinkSync(a.path);
    const l = Bun.listen<Leg>({ unix: a.path, allowHalfOpen: true, ...tls, socket });
    chmodSync(a.path, this.opts.socketMode);
    return l;
  }

  /**
   * `--max-connections`: with `open` connections, stop accepting at the limit (the listening
   * sockets close, so the kernel refuses new connects) rather than accept and close.
   */
  checkLimit(open: number): void {
    const max = this.settings().maxConnections;
    if (this.#paused || this.#stopped || max === 0 || open < max) return;
    this.#paused = true;
    this.opts.stats.limitReached++;
    for (const l of this.#open) l.stop(false);
    this.opts.log.warn("connection limit reached: stopped accepting", { "max-connections": max });
  }

  /** Listens again once below the limit (after a connection closed, or the limit was raised). */
  resumeBelowLimit(open: number): void {
    const max = this.settings().maxConnections;
    if (!this.#paused || this.#stopped || (max > 0 && open >= max)) return;
    try {
      this.#open = this.listenAll();
      this.#paused = false;
      this.opts.log.info("below the connection limit: accepting again", { connections: open });
    } catch (e) {
      this.opts.log.error("cannot listen again after the connection limit; retrying", { error: errorText(e) });
      setTimeout(() => this.resumeBelowLimit(open), 1000);
    }
  }

  /**
   * New certificates: with SO_REUSEPORT the new listeners open before the old ones close, so no
   * connect is refused in between; open connections are not touched.
   */
  relisten(): void {
    if (this.#paused || this.#stopped) return;
    try {
      const old = this.#open;
      if (!this.opts.reusePort) for (const l of old) l.stop(false);
      this.#open = this.listenAll();
      if (this.opts.reusePort) for (const l of old) l.stop(false);
    } catch (e) {
      this.opts.log.error("cannot listen with the reloaded certificates", { error: errorText(e) });
    }
  }

  /** Stops accepting for good and removes unix socket files; open connections carry on. */
  stop(): void {
    this.#stopped = true;
    for (const l of this.#open) l.stop(false);
    for (const a of this.opts.addresses) if (a.kind === "unix" && existsSync(a.path)) unlinkSync(a.path);
  }
}

/**
 * A socket file at `path` is only removed when nothing answers on it (a process that died left it);
 * a live one means another process serves there.
 *
 * @throws {ConfigError} naming the address when another process serves on it.
 */
export async function clearStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = netConnect({ path });
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    setTimeout(() => done(false), 500);
  });
  if (live) throw new ConfigError("listen-addr", `unix://${path}`, `cannot listen: ${path} is in use by another process`);
  unlinkSync(path);
}
