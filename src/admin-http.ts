/**
 * The admin endpoint's small HTTP/1.1 server, on Bun.listen, over TCP or a unix socket: one
 * request per connection (GET or HEAD, and POST for the routes that change something), answered
 * with `Connection: close`, and every resource it takes bounded, so that a flood of admin
 * connections can never take the descriptors the data path needs (issue 12). Bun.serve has no
 * connection cap and no bound on the time a request head may take, hence this file.
 *
 * The bounds follow HAProxy's (`maxconn` on a frontend or stats socket, `timeout http-request`
 * with 408, a fixed request buffer with 431) and Go's net/http (a short lingering close):
 *
 * - at most `connections` connections at once per listener (issue 20: 16 connections that sent
 *   nothing made every `/healthz` answer 503, so a liveness probe would kill the gateway). At the
 *   cap a new connection evicts the oldest one that waits on its client (its request head not
 *   complete and nothing of it unread, its answer not read, or our FIN sent and its own not come),
 *   as nginx reuses the connections that wait for a request when it runs out of them (its
 *   ngx_drain_connections). When none waits on its client, the new one is let in above the cap
 *   (up to twice it; beyond, 503 and closed) and accepting stops for a turn of the event loop, as
 *   HAProxy stops accepting at `maxconn`: what is in is read, and the rest waits in the kernel's
 *   backlog in order. TCP_DEFER_ACCEPT (HAProxy's `defer-accept`, nginx's `deferred`) keeps a
 *   connection that sends nothing in the kernel for `headMs`;
 * - the request head must arrive whole within `headMs` of the connect (else 408) and fit in
 *   `headBytes` (else 431); bodies are never read, only discarded;
 * - the answer must be written within `answerMs`; after it the write side is shut down (FIN) and
 *   the client gets `lingerMs` to close its side before the socket is closed;
 * - methods other than GET, HEAD and POST: 405 with `Allow: GET, HEAD` (the route answers 405
 *   for a method it does not take); a request line that does not parse, an HTTP/1.1 request
 *   without Host or one with two: 400.
 *
 * Who may do what (issue 20), as HAProxy's `stats socket … mode 600 level admin` and Envoy's admin
 * on a unix socket with a mode: a request that came in on a unix socket listener is
 * `privileged` (its file mode, `--admin-socket-mode`, decides who may connect: the kernel checks
 * it); one over TCP is not, since any local user can connect. On TCP the Host header must name
 * an IP address, `localhost` or an allowed name, else 421, as etcd answers a Host not in its
 * `--host-whitelist` (its guard against DNS rebinding, CVE-2018-5702): a web page can make a
 * browser read a loopback address only through a DNS name it controls.
 *
 * @module
 */
import type { Socket, SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { ptr } from "bun:ffi";
import type { Stats } from "node:fs";
import { isIP } from "node:net";
import type { ListenAddress } from "./addresses.ts";
import type { Inherited, Owner } from "./inherit.ts";
import { errno, errnoName, libc, listenUnix, receiveQueue, removeIfSame, UnixListenError } from "./libc.ts";
import { errorText } from "./log.ts";
import { errnoText } from "./neterror.ts";
import { clearStaleSocket } from "./datapath/listeners.ts";
import { ownedSocketFile } from "./datapath/sockets.ts";

/** What a route answers; `type` defaults to plain UTF-8 text. HEAD gets the same status and headers, no body. */
export interface Reply {
  status: number;
  body: string;
  type?: string;
  headers?: Record<string, string>;
}

/** A request the route answers: GET, HEAD or POST. */
export interface Request {
  method: string;
  /** The request target's path. */
  path: string;
  /** The query, without `?` ("" when none). */
  query: string;
  /** It carries `Origin` or a `Sec-Fetch-` header: a web browser sent it (a page may make one cross-site). */
  fromBrowser: boolean;
  /** The authority the client named: the absolute-form target's, else the Host header's; null without either (HTTP/1.0). */
  host: string | null;
  /** It came in on a privileged listener (a unix socket, reached through its file mode): it may change state. */
  privileged: boolean;
}

/** Answers a request (HEAD as GET: the server leaves the body out). */
export type Route = (req: Request) => Reply | Promise<Reply>;

export interface HttpLimits {
  /** Connections open at once per listener; at the cap one waiting on its client is evicted, else a few more are let in while accepting pauses (twice this at most). */
  readonly connections: number;
  /** Bytes of the request head (request line, headers, blank line). */
  readonly headBytes: number;
  /** From the connect to the end of the request head. */
  readonly headMs: number;
  /** From the end of the request head to the last byte of the answer handed to the kernel. */
  readonly answerMs: number;
  /** After the answer and our FIN, how long the client has to close its side. */
  readonly lingerMs: number;
}

/** The admin endpoint's bounds, documented in docs/admin.md. */
export const ADMIN_LIMITS: HttpLimits = { connections: 16, headBytes: 8192, headMs: 5000, answerMs: 5000, lingerMs: 1000 };

/** The Host names a TCP listener accepts besides IP literals and `localhost`; `any`: no check (`--admin-host-whitelist=*`). */
export interface HostRule {
  readonly names: ReadonlySet<string>;
  readonly any: boolean;
}

/** What happened on a listener that the caller may log: a connection evicted at the cap, a Host refused with 421. */
export type HttpEvent = { kind: "evicted" } | { kind: "misdirected"; host: string };

/** How one listener treats its requests. */
export interface ListenerPolicy {
  /** Requests may change state (a unix socket: its file mode says who may connect). */
  readonly privileged: boolean;
  /** The Host check, or null for none (a unix socket, which no browser can reach). */
  readonly hosts: HostRule | null;
  /** File mode of a unix socket listener. */
  readonly socketMode: number;
  readonly onEvent?: (e: HttpEvent) => void;
}

/** A request as parsed from its head, before the listener adds what it knows. */
export type ParsedRequest = Omit<Request, "privileged">;

/** A parsed request head, or the status it is refused with. */
export type Head = ParsedRequest | { refuse: 400 | 405 | 431 };

const TEXT = "text/plain;charset=utf-8";
const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  421: "Misdirected Request",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};
/** 405 for a route that takes GET and HEAD only. */
export const GET_ONLY: Reply = { status: 405, body: "method not allowed: use GET or HEAD\n", headers: { Allow: "GET, HEAD" } };

const REFUSALS = {
  400: { status: 400, body: "bad request\n" },
  405: GET_ONLY,
  408: { status: 408, body: "request head not received in time\n" },
  421: { status: 421, body: "misdirected request: the Host header names neither an IP address, localhost nor a name in --admin-host-whitelist (a guard against DNS rebinding)\n" },
  431: { status: 431, body: "request head too large\n" },
  500: { status: 500, body: "internal error\n" },
  503: { status: 503, body: "too many admin connections, try again later\n", headers: { "Retry-After": "1" } },
  evicted: { status: 503, body: "closed to make room: the admin endpoint is at its connection limit and this connection had not sent its request\n", headers: { "Retry-After": "1" } },
} satisfies Record<string, Reply>;
/** Headers only browsers send: every POST of theirs carries Origin (Fetch standard), and they add Sec-Fetch-*. */
const BROWSER_HEADER = /\n(origin|sec-fetch-[a-z]+)[ \t]*:/i;
/** RFC 9112: method SP request-target SP HTTP-version; the method is a token. */
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/;
/** RFC 9110 `Host = uri-host [ ":" port ]`: an IP literal in brackets or a reg-name/IPv4 of URI characters. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::\d*)?$/;

/**
 * Parses a request head from the bytes received so far: null while it is incomplete and within
 * `maxBytes`. A single LF is accepted as a line end (RFC 9112, section 2.2). An HTTP/1.1 request
 * without a Host header, with two, or with one that is not an authority is 400 (RFC 9112, 3.2).
 */
export function parseHead(bytes: Uint8Array, maxBytes: number): Head | null {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, maxBytes + 4)).toString("latin1");
  const blank = /\r?\n\r?\n/.exec(text);
  if (blank === null || blank.index + blank[0].length > maxBytes) return bytes.byteLength >= maxBytes ? { refuse: 431 } : null;
  const lines = text.slice(0, blank.index).split(/\r?\n/);
  const m = REQUEST_LINE.exec(lines[0]!);
  if (m === null) return { refuse: 400 };
  const [, method, target, minor] = m as unknown as [string, string, string, string];
  if (method !== "GET" && method !== "HEAD" && method !== "POST") return { refuse: 405 };
  const hosts = lines.slice(1).filter((l) => /^host:/i.test(l)).map((l) => l.slice(5).trim());
  if (hosts.length > 1 || (minor === "1" && hosts.length === 0) || (hosts.length === 1 && !AUTHORITY.test(hosts[0]!))) return { refuse: 400 };
  try {
    // Origin form ("/metrics?x") or absolute form ("http://host/metrics"), resolved as a URL would be.
    const absolute = !target.startsWith("/");
    const url = new URL(absolute ? target : `http://admin${target}`);
    // An absolute-form target's authority stands for the Host header (RFC 9112, 3.2.2).
    const host = absolute ? url.host : (hosts[0] ?? null);
    return { method, path: url.pathname, query: url.search.slice(1), fromBrowser: BROWSER_HEADER.test(`\n${lines.slice(1).join("\n")}`), host };
  } catch {
    return { refuse: 400 };
  }
}

/**
 * Whether a TCP listener answers a request naming `host`: none (HTTP/1.0), an IP literal (in any
 * form a URL takes: `127.1` is 127.0.0.1), `localhost`, or a name of `rule` (case and a final dot
 * aside); any port. A DNS-rebinding page can only send the name of its own site.
 */
export function hostAllowed(host: string | null, rule: HostRule): boolean {
  if (host === null || rule.any) return true;
  if (!AUTHORITY.test(host)) return false;
  let name: string;
  try {
    name = new URL(`http://${host}/`).hostname;
  } catch {
    return false;
  }
  if (name.startsWith("[") || isIP(name) === 4) return true;
  name = name.replace(/\.$/, "");
  return name === "localhost" || rule.names.has(name);
}

/** The bytes of an answer: status line, headers, and the body unless it answers a HEAD. */
export function encodeReply(r: Reply, head: boolean): Uint8Array {
  const body = Buffer.from(r.body);
  let h = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? ""}\r\nContent-Type: ${r.type ?? TEXT}\r\nContent-Length: ${body.byteLength}\r\n`;
  for (const [k, v] of Object.entries(r.headers ?? {})) h += `${k}: ${v}\r\n`;
  h += `Date: ${new Date().toUTCString()}\r\nConnection: close\r\n\r\n`;
  return head ? Buffer.from(h) : Buffer.concat([Buffer.from(h), body]);
}

/** One admin connection (assigned in `open`: Bun.listen's `data` is shared, docs/bun.md trap 7). */
interface Conn {
  /** Reading the head, writing the answer, or waiting for the client's FIN after ours. */
  phase: "head" | "answer" | "linger";
  head: Buffer;
  /** Answer bytes the kernel has not taken yet (docs/bun.md, trap 1). */
  out: Uint8Array | null;
  timer: ReturnType<typeof setTimeout> | undefined;
  peerEnded: boolean;
  closed: boolean;
}

type AdminSocket = Socket<Conn>;

/** A socket's file descriptor (Bun has it, bun-types does not say so, as src/datapath/conn.ts reads it); -1 when unknown. */
function fdOf(s: AdminSocket): number {
  const fd = (s as unknown as { fd?: number }).fd;
  return typeof fd === "number" ? fd : -1;
}

/** The connections of one admin listener and what happens to each, phase by phase. */
class AdminConnections {
  /** Open connections, oldest first (a Set keeps insertion order). */
  readonly #open = new Set<AdminSocket>();

  constructor(
    private readonly route: Route,
    private readonly limits: HttpLimits,
    private readonly policy: ListenerPolicy,
  ) {}

  /** Stops accepting for a turn of the event loop (set by the listener; connects wait in the kernel's backlog). */
  pauseAccepting: () => void = () => {};

  /**
   * A new connection: read its head within `headMs`. At the cap, connections that wait on their
   * client make room; when none does (every one is being answered, or its bytes wait for us to
   * read them), it is let in above the cap, up to twice it, and accepting stops for a turn of the
   * event loop, so that what was accepted is read before more comes in; beyond that, 503.
   */
  accept(s: AdminSocket): void {
    s.data = { phase: "head", head: Buffer.alloc(0), out: null, timer: undefined, peerEnded: false, closed: false };
    const cap = this.limits.connections;
    while (this.#open.size >= cap) if (!this.evictOne()) break;
    if (this.#open.size >= cap) this.pauseAccepting();
    if (this.#open.size >= 2 * cap) {
      // Turned away at once, so a flood holds no more than twice `connections` descriptors. A client
      // whose request is already in the kernel's buffer may see a reset instead of the 503.
      s.data.closed = true;
      s.write(encodeReply(REFUSALS[503], false));
      s.end();
      return;
    }
    this.#open.add(s);
    this.arm(s, this.limits.headMs);
  }

  /**
   * Closes the oldest connection that waits on its client rather than on the gateway: its head
   * is not complete and nothing it sent is left unread in the kernel (503, then closed), its
   * answer is not being read (reset), or it has its answer and our FIN (closed). A connection
   * whose bytes wait for us to read them (a probe accepted in the same turn of the event loop as a
   * flood) is never closed for room. Whether one was closed.
   */
  private evictOne(): boolean {
    for (const s of this.#open) {
      const c = s.data;
      if (c.phase === "answer" && c.out === null) continue; // the gateway is answering it
      if (c.phase === "head" && receiveQueue(fdOf(s)) > 0) continue; // it waits on us
      this.evict(s);
      return true;
    }
    return false;
  }

  private evict(s: AdminSocket): void {
    const c = s.data;
    this.policy.onEvent?.({ kind: "evicted" });
    this.#open.delete(s);
    if (c.phase === "linger") s.end();
    else if (c.phase === "answer") s.terminate();
    else {
      c.closed = true;
      s.write(encodeReply(REFUSALS.evicted, false));
      // close(2) at once (docs/bun.md, trap 2): the descriptor is free for the new connection.
      s.end();
    }
  }

  received(s: AdminSocket, chunk: Uint8Array): void {
    const c = s.data;
    if (c.phase !== "head") return; // a body, or more after the head: read and dropped
    c.head = Buffer.concat([c.head, chunk]);
    const parsed = parseHead(c.head, this.limits.headBytes);
    if (parsed === null) return;
    c.head = Buffer.alloc(0);
    if ("refuse" in parsed) return void this.answer(s, parsed, false);
    const hosts = this.policy.hosts;
    if (hosts !== null && !hostAllowed(parsed.host, hosts)) {
      this.policy.onEvent?.({ kind: "misdirected", host: parsed.host ?? "" });
      return void this.answer(s, { refuse: 421 }, parsed.method === "HEAD");
    }
    void this.answer(s, { ...parsed, privileged: this.policy.privileged }, parsed.method === "HEAD");
  }

  closed(s: AdminSocket): void {
    s.data.closed = true;
    clearTimeout(s.data.timer);
    this.#open.delete(s);
  }

  private arm(s: AdminSocket, ms: number): void {
    clearTimeout(s.data.timer);
    s.data.timer = setTimeout(() => this.expire(s), ms);
  }

  private expire(s: AdminSocket): void {
    if (s.data.phase === "head") void this.answer(s, { refuse: 408 }, false);
    else if (s.data.phase === "answer") s.terminate();
    else s.end();
  }

  private async answer(s: AdminSocket, req: Request | { refuse: keyof typeof REFUSALS }, head: boolean): Promise<void> {
    s.data.phase = "answer";
    this.arm(s, this.limits.answerMs);
    let reply: Reply;
    try {
      reply = "refuse" in req ? REFUSALS[req.refuse] : await this.route(req);
    } catch {
      reply = REFUSALS[500];
    }
    if (!s.data.closed) this.write(s, encodeReply(reply, head));
  }

  /** Writes what the kernel takes; the rest waits for `drain` (docs/bun.md, trap 1). */
  write(s: AdminSocket, bytes: Uint8Array): void {
    const n = s.write(bytes);
    if (n < 0) return; // closing: the close handler cleans up
    if (n < bytes.byteLength) s.data.out = bytes.subarray(n);
    else this.finish(s);
  }

  /** The answer is all with the kernel: send our FIN and give the client a moment to close (no reset of unread bytes). */
  private finish(s: AdminSocket): void {
    s.data.phase = "linger";
    this.arm(s, this.limits.lingerMs);
    // After the client's FIN nothing is left to read: close(2) cannot reset (docs/bun.md, trap 2).
    if (s.data.peerEnded) s.end();
    else s.shutdown();
  }

  /** Bun's socket handlers for a listener of these connections. */
  handlers(): SocketHandler<Conn> {
    return {
      open: (s) => this.accept(s),
      data: (s, chunk) => this.received(s, chunk),
      drain: (s) => {
        const out = s.data.out;
        if (out === null) return;
        s.data.out = null;
        this.write(s, out);
      },
      end(s) {
        s.data.peerEnded = true;
        // A head that never completed will not now; after our FIN both directions are done.
        if (s.data.phase !== "answer") s.end();
      },
      close: (s) => this.closed(s),
    };
  }
}

/** A listening admin address. */
export interface HttpListener {
  readonly address: ListenAddress;
  /** The TCP port (the kernel's choice for port 0); undefined for a unix socket. */
  readonly port: number | undefined;
  /** The listening socket (handed to a new gateway in an upgrade). */
  readonly fd: number;
  /** Who keeps the socket beyond this process. */
  readonly owner: Owner;
  /** Stops accepting (open connections finish) and removes our unix socket file, unless `handedOver`. */
  stop(handedOver?: boolean): void;
}

/**
 * Serves `route` on `address` within `limits` and `policy`. A unix socket path is bound here:
 * a stale socket file (its server gone) is replaced, anything else there is refused; the socket
 * gets `policy.socketMode` before it listens, so no connect can slip in under another mode; the
 * file is removed at stop and at exit, if it is still ours.
 *
 * @throws {Error} `listen tcp <host:port>: bind: <why>` (Go's words) when a TCP address cannot be
 * bound; `cannot listen on <address>: <why>` for a unix socket.
 */
export async function serveHttp(address: ListenAddress, route: Route, policy: ListenerPolicy, limits: HttpLimits = ADMIN_LIMITS, handed?: Inherited): Promise<HttpListener> {
  const conns = new AdminConnections(route, limits, policy);
  // With the end handler: a client that sends its request and then its FIN still gets the answer (docs/bun.md, trap 3).
  const common = { allowHalfOpen: true, socket: conns.handlers() };
  const at = (why: string) => new Error(`cannot listen on ${address.address}: ${why}`);
  if (handed !== undefined) return serveHanded(address, handed, conns, common, limits, at);
  if (address.kind === "tcp") {
    let l: TCPSocketListener<Conn>;
    try {
      l = Bun.listen<Conn>({ hostname: address.tcp.host, port: address.tcp.port, ...common });
    } catch (e) {
      // In Go's words, as --listen-addr's (src/datapath/sockets.ts): `listen tcp 127.0.0.1:23791: bind: address already in use`.
      const go = errnoText((e as NodeJS.ErrnoException).code ?? "");
      throw new Error(`listen tcp ${address.address}: ${go === undefined ? errorText(e) : `bind: ${go}`}`);
    }
    deferAccept(fdOfListener(l), Math.ceil(limits.headMs / 1000));
    const keeper = libc().dup(fdOfListener(l));
    if (keeper < 0) {
      const e = errno();
      l.stop(true);
      throw at(`dup: ${goErrno(errnoName(e))}`);
    }
    const acceptor = new Acceptor(keeper, l, common);
    conns.pauseAccepting = () => acceptor.pause();
    return { address, port: l.port, fd: keeper, owner: "gateway", stop: () => acceptor.stop() };
  }
  const path = address.path;
  // The rule of --listen-addr's unix sockets (src/datapath/listeners.ts).
  await clearStaleSocket(path, at);
  let bound: { fd: number; file: Stats };
  try {
    bound = listenUnix(path, policy.socketMode, 64);
  } catch (e) {
    throw e instanceof UnixListenError ? at(`${e.call}: ${goErrno(e.errno)}`) : e;
  }
  return acceptUnix(address, bound.fd, bound.file, "gateway", conns, common, at);
}

/** A unix socket we accept on; its file, if ours (`file`), is removed at stop and at exit, unless handed over. */
function acceptUnix(address: ListenAddress & { kind: "unix" }, fd: number, file: Stats | null, owner: Owner, conns: AdminConnections, common: AcceptOptions, at: (why: string) => Error): HttpListener {
  let acceptor: Acceptor;
  try {
    acceptor = new Acceptor(fd, null, common);
  } catch (e) {
    libc().close(fd);
    if (file !== null) removeIfSame(address.path, file);
    throw at(errorText(e));
  }
  conns.pauseAccepting = () => acceptor.pause();
  let keep = false;
  const remove = () => !keep && file !== null && removeIfSame(address.path, file);
  process.once("exit", remove);
  return {
    address,
    port: undefined,
    fd,
    owner,
    stop: (handedOver = false) => {
      keep = handedOver;
      acceptor.stop();
      remove();
    },
  };
}

/** Accepting on a socket handed over by systemd or the gateway this one replaces (src/inherit.ts). */
function serveHanded(address: ListenAddress, handed: Inherited, conns: AdminConnections, common: AcceptOptions, limits: HttpLimits, at: (why: string) => Error): HttpListener {
  if (address.kind === "unix") return acceptUnix(address, handed.fd, ownedSocketFile(address.path, handed.owner), handed.owner, conns, common, at);
  deferAccept(handed.fd, Math.ceil(limits.headMs / 1000));
  let acceptor: Acceptor;
  try {
    acceptor = new Acceptor(handed.fd, null, common);
  } catch (e) {
    throw at(errorText(e));
  }
  conns.pauseAccepting = () => acceptor.pause();
  const at2 = handed.at;
  return { address, port: at2.family === "tcp" ? at2.port : undefined, fd: handed.fd, owner: handed.owner, stop: () => acceptor.stop() };
}

type Listener = TCPSocketListener<Conn> | UnixSocketListener<Conn>;
type AcceptOptions = { allowHalfOpen: boolean; socket: SocketHandler<Conn> };

const fdOfListener = (l: Listener) => (l as unknown as { fd: number }).fd;

/**
 * Accepting on a listening socket we keep (`keeper`), through a Bun listener on a duplicate of
 * it, as src/datapath/listeners.ts pauses at `--max-connections`: stopping that listener closes
 * only the duplicate, so the address stays bound and listening and connects wait in the kernel's
 * backlog (in order) until a new listener on a new duplicate accepts them.
 */
class Acceptor {
  #bun: Listener | null;
  #paused = false;
  #stopped = false;

  /** @throws {Error} from Bun.listen when `first` is null and no listener can be made on the keeper. */
  constructor(
    private readonly keeper: number,
    first: Listener | null,
    private readonly options: AcceptOptions,
  ) {
    this.#bun = first ?? this.listen();
  }

  private listen(): Listener {
    const fd = libc().dup(this.keeper);
    if (fd < 0) throw new Error(`dup: ${errnoName(errno())}`);
    try {
      return Bun.listen<Conn>({ fd, ...this.options } as unknown as Parameters<typeof Bun.listen<Conn>>[0]) as Listener;
    } catch (e) {
      libc().close(fd);
      throw e;
    }
  }

  /** Stops accepting until the next turn of the event loop. */
  pause(): void {
    if (this.#paused || this.#stopped) return;
    this.#paused = true;
    this.#bun?.stop(false);
    this.#bun = null;
    setImmediate(() => this.resume());
  }

  private resume(): void {
    if (this.#stopped) return;
    try {
      this.#bun = this.listen();
      this.#paused = false;
    } catch {
      setTimeout(() => this.resume(), 100); // out of descriptors: try again shortly
    }
  }

  stop(): void {
    this.#stopped = true;
    this.#bun?.stop(false);
    this.#bun = null;
    libc().close(this.keeper);
  }
}

const IPPROTO_TCP = 6;
const TCP_DEFER_ACCEPT = 9;

/**
 * TCP_DEFER_ACCEPT on a listening socket, as HAProxy's `bind … defer-accept` and nginx's
 * `listen … deferred` set it for HTTP: the kernel hands over a connection once its first bytes
 * have arrived (or after `seconds`), so a connection that says nothing never takes a slot, and a
 * probe is accepted with its request already there to be read (which spares it at the cap). Best
 * effort: without it the cap still holds.
 */
function deferAccept(fd: number, seconds: number): void {
  if (fd < 0) return;
  try {
    libc().setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, ptr(new Int32Array([seconds])), 4);
  } catch {
    // no C library: the cap and eviction still hold
  }
}

/** An errno in Go's words (`no such file or directory`), else its name. */
const goErrno = (name: string) => errnoText(name) ?? name;


