/**
 * The listening sockets of `--listen-addr`, bound once per gateway generation: one per TCP
 * address, or one per process with `--workers` (SO_REUSEPORT), and one per unix socket path; or
 * taken as handed over (src/inherit.ts) from systemd or the gateway being upgraded. The primary
 * holds every one of them for its whole life: a worker that dies and is started again gets the
 * same socket back, an upgrade hands all of them to the new gateway, and so no socket with
 * connects in its backlog is ever closed while a gateway still serves its address
 * (docs/restarts.md).
 *
 * Unix sockets are bound here rather than by Bun, whose listener deletes its socket file by name
 * when it stops, whoever owns the path by then (docs/bun.md, "listener.stop() and unix socket files").
 *
 * @module
 */
import { lstatSync, type Stats } from "node:fs";
import type { ListenAddress } from "../addresses.ts";
import type { Inherited, Owner } from "../inherit.ts";
import { errno, errnoName, libc, listenUnix, removeIfSame, socketName, UnixListenError } from "../libc.ts";
import { errorText } from "../log.ts";

/** One listening socket of an address. */
export interface ListenSocket {
  readonly address: ListenAddress;
  readonly fd: number;
  /** The unix socket file to remove when the gateway stops for good (null: TCP, or a file systemd keeps). */
  readonly file: Stats | null;
  readonly owner: Owner;
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

export interface BindOptions {
  /** Sockets per TCP address: one per process with --workers. */
  readonly count: number;
  /** File mode of unix socket listeners. */
  readonly socketMode: number;
  /** SO_REUSEPORT on TCP listeners (--reuse-port, and always with --workers). */
  readonly reusePort: boolean;
  /** Refuse a TCP address another socket already listens on, even with SO_REUSEPORT. */
  readonly exclusive: boolean;
}

const inUse = (a: ListenAddress) =>
  new ListenError(a.address, `listen ${a.kind} ${a.kind === "tcp" ? a.address : a.path}: bind: address already in use`);

/**
 * Which of `n` sockets of an address process `k` of `m` accepts on: every m-th from k when there
 * are enough to go round, else one shared (k mod n). Every socket has a process, every process a
 * socket, whatever a predecessor's --workers was.
 */
export function shareOf(n: number, m: number, k: number): number[] {
  if (n <= m) return [k % n];
  const out: number[] = [];
  for (let i = k; i < n; i += m) out.push(i);
  return out;
}

/** A TCP socket bound through Bun; we keep a duplicate of it and let Bun's listener go at once. */
function bindTcp(a: Extract<ListenAddress, { kind: "tcp" }>, port: number, opts: BindOptions, first: boolean): number {
  const host = a.tcp.host;
  if (first && opts.exclusive && opts.reusePort && port !== 0) {
    // SO_REUSEPORT would let us join another process's listener: bind once without it to see.
    try {
      Bun.listen({ hostname: host, port, socket: { data() {} } }).stop(true);
    } catch {
      throw inUse(a);
    }
  }
  let l: { fd?: number; stop(closeActive?: boolean): void };
  try {
    // reusePort is typed only on Bun.connect's options in bun-types, but Bun.listen honours it (docs/bun.md).
    l = Bun.listen({ hostname: host, port, ...({ reusePort: opts.reusePort } as object), socket: { data() {} } });
  } catch (e) {
    throw (e as NodeJS.ErrnoException).code === "EADDRINUSE" ? inUse(a) : new ListenError(a.address, `listen tcp ${a.address}: ${errorText(e)}`);
  }
  // Nothing is accepted before the event loop turns: the listener stops before it does.
  const fd = libc().dup(l.fd ?? -1);
  const failed = fd < 0 ? errnoName(errno()) : null;
  l.stop(true);
  if (failed !== null) throw new ListenError(a.address, `listen tcp ${a.address}: dup: ${failed}`);
  return fd;
}

function bindUnix(a: Extract<ListenAddress, { kind: "unix" }>, opts: BindOptions): ListenSocket {
  try {
    const { fd, file } = listenUnix(a.path, opts.socketMode, 511);
    return { address: a, fd, file, owner: "gateway" };
  } catch (e) {
    if (!(e instanceof UnixListenError)) throw e;
    throw e.errno === "EADDRINUSE" ? inUse(a) : new ListenError(a.address, `listen unix ${a.path}: ${e.message}`);
  }
}

/**
 * The unix socket file at `path` to remove when a gateway that took the socket over stops for good:
 * the file there now, if it is a socket and the gateway owns it (never one systemd made). Also
 * used for the admin endpoint's handed socket (src/admin-http.ts).
 */
export function ownedSocketFile(path: string, owner: Owner): Stats | null {
  if (owner !== "gateway") return null;
  try {
    const st = lstatSync(path);
    return st.isSocket() ? st : null;
  } catch {
    return null; // gone: nothing to remove later
  }
}

/** A handed socket of `a`. */
function adopt(a: ListenAddress, s: Inherited): ListenSocket {
  return { address: a, fd: s.fd, file: a.kind === "unix" ? ownedSocketFile(a.path, s.owner) : null, owner: s.owner };
}

/** Every listening socket of the addresses, by address. */
export class SocketSet {
  #closed = false;
  #port: number | undefined;

  private constructor(readonly byAddress: readonly (readonly ListenSocket[])[]) {}

  /**
   * Takes the handed sockets of each address and binds the others.
   *
   * @throws {ListenError} naming the address that cannot be bound (the sockets bound before it are closed).
   */
  static bind(addresses: readonly ListenAddress[], opts: BindOptions, handed: ReadonlyMap<string, readonly Inherited[]>): SocketSet {
    const all: ListenSocket[][] = [];
    try {
      for (const a of addresses) {
        const given = handed.get(a.address);
        if (given !== undefined && given.length > 0) all.push(given.map((s) => adopt(a, s)));
        else if (a.kind === "unix") all.push([bindUnix(a, opts)]);
        else {
          const first = bindTcp(a, a.tcp.port, opts, true);
          const list: ListenSocket[] = [{ address: a, fd: first, file: null, owner: "gateway" }];
          all.push(list);
          const bound = socketName(first);
          const port = typeof bound === "string" || bound.family !== "tcp" ? a.tcp.port : bound.port;
          for (let i = 1; i < opts.count; i++) list.push({ address: a, fd: bindTcp(a, port, opts, false), file: null, owner: "gateway" });
        }
      }
    } catch (e) {
      new SocketSet(all).close(false);
      throw e;
    }
    return new SocketSet(all);
  }

  /** The sockets handed to this process (a worker's, or a single gateway's), as they are. */
  static of(sockets: readonly ListenSocket[]): SocketSet {
    return new SocketSet([sockets]);
  }

  get all(): ListenSocket[] {
    return this.#closed ? [] : this.byAddress.flat();
  }

  /** The sockets process `k` of `m` accepts on (the unix ones are the primary's, k = 0). */
  forProcess(k: number, m: number): ListenSocket[] {
    return this.byAddress.flatMap((list) => {
      if (list[0]?.address.kind === "unix") return k === 0 ? [...list] : [];
      return shareOf(list.length, m, k).map((i) => list[i]!);
    });
  }

  /** The port of the first TCP socket (the kernel's choice for port 0), or 0. */
  get port(): number {
    if (this.#port === undefined) {
      const s = this.byAddress.flat().find((x) => x.address.kind === "tcp");
      const at = s === undefined ? "none" : socketName(s.fd);
      this.#port = typeof at === "string" || at.family !== "tcp" ? 0 : at.port;
    }
    return this.#port;
  }

  /**
   * Closes our descriptors; removes the unix socket files we own unless `keepFiles` (they were
   * handed to a new gateway). A socket systemd owns stays listening in systemd.
   */
  close(keepFiles: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.byAddress.flat()) {
      libc().close(s.fd);
      if (!keepFiles && s.file !== null && s.address.kind === "unix") removeIfSame(s.address.path, s.file);
    }
  }
}
