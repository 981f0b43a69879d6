/**
 * The gateway's own HTTP/1.1 client, for the requests it makes to members (health checks, the
 * member-list sync, `status` and `member drain`): one request over node:net or node:tls (or, for
 * the admin commands, over a unix socket, plain http only), never
 * through a proxy (no environment is read), never following a redirect, bounded in time (one timer
 * for connect, TLS handshake and the whole reply) and in size (16 KiB of head, `maxBytes` of body),
 * optionally on one kept-alive connection. A failure says whether the peer answered at all (it
 * closed, reset, sent a TLS alert or garbage) or not (refused, timed out), in Go's words
 * (src/neterror.ts).
 *
 * node:net and node:tls rather than Bun.connect, because `destroy()` cancels a pending connect
 * (docs/bun.md, trap 5); how Bun's node:tls reports a refused client certificate and a peer that
 * does not speak TLS is in docs/bun.md, "node:tls errors".
 *
 * @module
 */
import { connect as netConnect, isIP, type Socket } from "node:net";
import { checkServerIdentity, connect as tlsConnect } from "node:tls";
import { formatHostPort } from "./addresses.ts";
import { MAX_REPLY_BYTES, outOfFds } from "./limits.ts";
import { dialErrorText, requestErrorText, tlsErrorText } from "./neterror.ts";

/** Where a request goes. */
export interface HttpTarget {
  /** Host to dial: an IP literal (IPv6 without brackets) or a name (resolved by node:net). */
  readonly host: string;
  readonly port: number;
  /** TLS, or null for plain http. */
  readonly tls: HttpTls | null;
  /**
   * Connect to this unix socket instead of host:port (plain http only: `tls` must be null); `host`
   * is then only what the Host header and the URL in messages say, e.g. `localhost`.
   */
  readonly unixPath?: string;
}

/** TLS settings of a target. */
export interface HttpTls {
  /** PEM contents (not paths). */
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
  /** Name the certificate is verified against; also sent as SNI unless it is an IP literal. */
  readonly serverName: string;
  /** Verify the peer's certificate (against `ca`, or the system roots without one). false: accept any certificate. */
  readonly verify: boolean;
}

/** What to send. */
export interface HttpRequestSpec {
  readonly method: "GET" | "POST" | "HEAD";
  /** Path and query, e.g. "/version" or "/health?serializable=true". */
  readonly path: string;
  /** Sent with Content-Length (and Content-Type: application/json unless `headers` names another). */
  readonly body?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

/** A complete reply (of any status). */
export interface HttpReply {
  readonly status: number;
  /** Header names lower-cased; a repeated header's values joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  /** The body as UTF-8 text, at most `maxBytes` of it (chunked transfer-encoding decoded). */
  readonly body: string;
  /** The body was longer than `maxBytes`: cut there, the rest never read, the connection closed. */
  readonly truncated: boolean;
}

/**
 * Why a request failed:
 * - `dial`: no connection (refused, unreachable, no such host, out of descriptors). answered = false.
 * - `timeout`: no complete reply within the timeout (whether it hung in connect, TLS or the reply). answered = false.
 * - `closed`: connected, then the peer closed or reset before a complete reply. answered = true.
 * - `tls`: the TLS handshake failed: an alert from the peer (also one right after the handshake, as
 *   TLS 1.3 client-certificate refusals come), the peer's certificate did not verify, or the peer
 *   does not speak TLS. answered = true.
 * - `protocol`: the peer sent bytes that are not an HTTP/1.x reply (or a head over 16 KiB). answered = true.
 */
export type HttpFailureKind = "dial" | "timeout" | "closed" | "tls" | "protocol";

/** A failed request; its message is in Go's words (`dial tcp 127.0.0.1:2379: connect: connection refused`). */
export class HttpFailure extends Error {
  override name = "HttpFailure";
  readonly kind: HttpFailureKind;
  /** Whether the peer did anything at all (see the kinds): a live process answers, a hung or dead one does not. */
  readonly answered: boolean;
  /** The errno or TLS code of the underlying error, when there was one (ECONNREFUSED, ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE, ...). */
  readonly code: string | undefined;

  constructor(kind: HttpFailureKind, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.kind = kind;
    this.answered = kind !== "dial" && kind !== "timeout";
    this.code = codeOf(cause);
  }
}

/** An idle socket parked in a KeptConnection, with the handlers that drop it if the peer speaks or goes. */
interface Idle {
  readonly socket: Socket;
  readonly key: string;
  readonly drop: () => void;
}

/** A KeptConnection's state: its idle socket, and how many times it was closed (requests begun before a close do not park). */
interface Slot {
  idle: Idle | null;
  closes: number;
}

const slots = new WeakMap<KeptConnection, Slot>();

function slotOf(keep: KeptConnection): Slot {
  let slot = slots.get(keep);
  if (slot === undefined) slots.set(keep, (slot = { idle: null, closes: 0 }));
  return slot;
}

/** One idle kept-alive connection, reused by the next request to the same target (same host, port and TLS settings); for a member checked every 2 s. */
export class KeptConnection {
  /** Closes the idle connection, if any; a request under way now closes its connection when done. */
  close(): void {
    const slot = slotOf(this);
    slot.closes++;
    const idle = slot.idle;
    slot.idle = null;
    idle?.drop();
  }
}

/** Takes the idle socket of `keep` if it is open and for `key`; an idle socket for another target is closed. */
function takeIdle(keep: KeptConnection, key: string): Socket | null {
  const slot = slotOf(keep);
  const idle = slot.idle;
  if (idle === null) return null;
  slot.idle = null;
  for (const event of ["data", "end", "close", "error"]) idle.socket.off(event, idle.drop);
  if (idle.key !== key || idle.socket.destroyed) {
    idle.socket.destroy();
    return null;
  }
  idle.socket.ref();
  return idle.socket;
}

/**
 * Parks `socket` in `keep` (unref'd, so it never holds the process open), unless `keep` already
 * holds one or was closed since the request began (`closes`): then it is closed. While idle, any
 * byte, FIN, reset or error from the peer drops it.
 */
function park(keep: KeptConnection, closes: number, socket: Socket, key: string): void {
  const slot = slotOf(keep);
  if (slot.idle !== null || slot.closes !== closes) {
    socket.destroy();
    return;
  }
  const drop = () => {
    if (slot.idle?.socket === socket) slot.idle = null;
    socket.destroy();
  };
  for (const event of ["data", "end", "close", "error"]) socket.on(event, drop);
  socket.unref();
  slot.idle = { socket, key, drop };
}

/** Options of one request. */
export interface RequestOptions {
  /** Bound on the whole request: connect, TLS handshake, sending and the complete reply. */
  readonly timeoutMs: number;
  /** @default MAX_REPLY_BYTES from src/limits.ts (64 KiB) */
  readonly maxBytes?: number;
  /** Reuse (and afterwards keep) one idle connection; without it a new connection is made and closed after the reply, with `Connection: close` sent. */
  readonly keep?: KeptConnection;
}

/** The URL of a request, for error text and logs: `http://127.0.0.1:2379/version` (IPv6 in brackets; scheme https with tls). */
export function requestUrl(target: HttpTarget, path: string): string {
  if (target.unixPath !== undefined) return `http://${target.host}${path}`;
  return `${target.tls === null ? "http" : "https"}://${formatHostPort(target.host, target.port)}${path}`;
}

/**
 * Sends one request; resolves with the reply (any status: 3xx are returned, never followed), rejects
 * only with HttpFailure. Never reads the proxy environment.
 *
 * @throws {TypeError} at once (not a rejection) for a path or header that cannot be sent: a caller's bug.
 */
export function httpRequest(target: HttpTarget, spec: HttpRequestSpec, options: RequestOptions): Promise<HttpReply> {
  const bytes = requestBytes(target, spec, options.keep !== undefined);
  return new Promise((resolve, reject) => new Exchange(target, spec, options, bytes, resolve, reject).start());
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The request head and body as sent: defaults first, the caller's headers over them (except Content-Length). */
function requestBytes(target: HttpTarget, spec: HttpRequestSpec, keeping: boolean): Buffer {
  if (!/^\/[\x21-\x7e]*$/.test(spec.path)) throw new TypeError(`invalid request path ${JSON.stringify(spec.path)}`);
  const headers = new Map<string, [string, string]>();
  const set = (name: string, value: string) => {
    if (!TOKEN.test(name) || /[\r\n\0]/.test(value)) throw new TypeError(`invalid request header ${JSON.stringify(`${name}: ${value}`)}`);
    headers.set(name.toLowerCase(), [name, value]);
  };
  set("Host", target.unixPath === undefined ? formatHostPort(target.host, target.port) : target.host);
  set("User-Agent", "etcd-gateway");
  if (spec.body !== undefined) set("Content-Type", "application/json");
  if (!keeping) set("Connection", "close");
  for (const [name, value] of Object.entries(spec.headers ?? {})) set(name, value);
  headers.delete("content-length");
  headers.delete("transfer-encoding");
  const body = Buffer.from(spec.body ?? "", "utf8");
  if (spec.body !== undefined || spec.method === "POST") set("Content-Length", String(body.length));
  const head = [`${spec.method} ${spec.path} HTTP/1.1`, ...[...headers.values()].map(([n, v]) => `${n}: ${v}`), "", ""].join("\r\n");
  return Buffer.concat([Buffer.from(head, "latin1"), body]);
}

/** A keep-alive socket may be reused only for the same host, port and TLS settings. */
function targetKey(t: HttpTarget): string {
  const tls = t.tls === null ? null : [t.tls.serverName, t.tls.verify, t.tls.ca ?? "", t.tls.cert ?? "", t.tls.key ?? ""];
  return JSON.stringify([t.host, t.port, tls, t.unixPath ?? null]);
}

/** An error's `code`, when it has a string one. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" && code !== "" ? code : undefined;
}

/**
 * An error of the TLS layer rather than of the socket: OpenSSL's and Bun's codes (`ERR_SSL_*`,
 * `ERR_TLS_*`, `EPROTO`) and the certificate verification codes (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`,
 * `CERT_HAS_EXPIRED`), as opposed to errnos (`ECONNRESET`) and node's other `ERR_*` codes.
 */
export function isTlsError(err: unknown): boolean {
  const code = codeOf(err);
  if (code === undefined) return false;
  return /^(ERR_SSL_|ERR_TLS_)/.test(code) || code === "EPROTO" || !/^(E[A-Z]+$|EAI_|ERR_|DNS_)/.test(code);
}

/** Bun's node:tls error when the peer closes before the handshake is done (docs/bun.md, "node:tls errors"). */
export const CLOSED_IN_HANDSHAKE = /disconnected before secure TLS connection was established/;

/**
 * Opens a connection to `target`: TCP (or its unix socket), and TLS when it has it, verified against
 * `target.tls.serverName` even when that is an IP literal (then sent as no SNI), offering `alpn`
 * when given. For the gRPC status call too (src/health/grpc.ts).
 *
 * @throws {Error} as node:net and node:tls connect do (a synchronous failure to open a socket).
 */
export function connectTarget(target: HttpTarget, alpn?: string[]): Socket {
  const { host, port, tls } = target;
  if (target.unixPath !== undefined) {
    if (tls !== null) throw new TypeError("TLS over a unix socket is not supported");
    return netConnect({ path: target.unixPath });
  }
  if (tls === null) return netConnect({ host, port });
  return tlsConnect({
    host,
    port,
    servername: isIP(tls.serverName) === 0 ? tls.serverName : undefined,
    ca: tls.ca,
    cert: tls.cert,
    key: tls.key,
    rejectUnauthorized: tls.verify,
    ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
    // Checked against serverName even when it could not be sent (an IP literal): node would check `host`.
    checkServerIdentity: (_host, cert) => checkServerIdentity(tls.serverName, cert),
  });
}

/** What one connection of a request is doing. */
interface Attempt {
  readonly socket: Socket;
  readonly reused: boolean;
  phase: "connect" | "handshake" | "reply";
  /** The first error the socket reported; judged when it closes. */
  error: unknown;
  /** Bytes of the reply received on this connection. */
  received: number;
  readonly reader: ReplyReader;
  detach(): void;
}

/** One request: its timer, its connection (a second one only when a reused one was stale), its outcome. */
class Exchange {
  private readonly url: string;
  private readonly key: string;
  private readonly closes: number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private attempt: Attempt | null = null;
  private settled = false;
  private retried = false;

  constructor(
    private readonly target: HttpTarget,
    private readonly spec: HttpRequestSpec,
    private readonly options: RequestOptions,
    private readonly bytes: Buffer,
    private readonly resolve: (reply: HttpReply) => void,
    private readonly reject: (failure: HttpFailure) => void,
  ) {
    this.url = requestUrl(target, spec.path);
    this.key = targetKey(target);
    this.closes = options.keep === undefined ? 0 : slotOf(options.keep).closes;
  }

  start(): void {
    this.timer = setTimeout(() => {
      this.fail(new HttpFailure("timeout", requestErrorText(undefined, this.spec.method, this.url, { timeoutMs: this.options.timeoutMs })));
    }, this.options.timeoutMs);
    const idle = this.options.keep === undefined ? null : takeIdle(this.options.keep, this.key);
    if (idle !== null) this.run(idle, true);
    else this.dial();
  }

  /** Opens a new connection: TCP, and TLS when the target has it. */
  private dial(): void {
    const tls = this.target.tls;
    let socket: Socket;
    try {
      socket = connectTarget(this.target);
    } catch (e) {
      this.fail(this.dialFailure(e));
      return;
    }
    // Never an unhandled 'error', whatever Bun emits after we stop listening.
    socket.on("error", () => {});
    this.run(socket, false);
  }

  /** Sends the request on `socket` (at once when reused, else once connected) and reads the reply. */
  private run(socket: Socket, reused: boolean): void {
    const tls = this.target.tls !== null;
    const reader = new ReplyReader(this.spec.method, this.options.maxBytes ?? MAX_REPLY_BYTES);
    const send = () => {
      a.phase = "reply";
      socket.write(this.bytes);
    };
    const handlers: [string, (arg: never) => void][] = [
      ["connect", () => (tls ? (a.phase = "handshake") : send())],
      ["secureConnect", send],
      ["data", (chunk: Buffer) => {
        a.received += chunk.length;
        this.outcome(a, reader.push(chunk));
      }],
      ["end", () => this.outcome(a, reader.end())],
      ["error", (e: unknown) => (a.error ??= e)],
      ["close", () => this.closed(a)],
    ];
    const a: Attempt = {
      socket,
      reused,
      phase: reused ? "reply" : "connect",
      error: undefined,
      received: 0,
      reader,
      detach: () => {
        for (const [event, fn] of handlers) socket.off(event, fn as () => void);
      },
    };
    this.attempt = a;
    for (const [event, fn] of handlers) socket.on(event, fn as () => void);
    if (reused) send();
  }

  /** What the reader made of the bytes so far: nothing yet, a reply, or a malformed one. */
  private outcome(a: Attempt, o: Outcome | undefined): void {
    if (o === undefined || this.settled) return;
    if ("malformed" in o) {
      this.fail(new HttpFailure("protocol", `${goMethod(this.spec.method)} ${JSON.stringify(this.url)}: ${o.malformed}`));
      return;
    }
    this.finish();
    a.detach();
    if (o.reusable && this.options.keep !== undefined) park(this.options.keep, this.closes, a.socket, this.key);
    else a.socket.destroy();
    this.resolve(o.reply);
  }

  /** The connection closed before a complete reply: retry a stale reused one once, else fail. */
  private closed(a: Attempt): void {
    if (this.settled || this.attempt !== a) return;
    a.detach();
    if (a.reused && a.received === 0 && !this.retried) {
      // The usual keep-alive race: the peer closed the idle connection as the request went out.
      this.retried = true;
      this.dial();
      return;
    }
    this.fail(this.closedFailure(a));
  }

  private closedFailure(a: Attempt): HttpFailure {
    const e = a.error;
    // node:tls emits `connect` before any TLS byte (docs/bun.md, "node:tls errors"): before it, the dial failed.
    if (a.phase === "connect") return this.dialFailure(e);
    if (isTlsError(e)) return new HttpFailure("tls", tlsErrorText(e, this.target.tls?.serverName), e);
    if (a.phase === "handshake" && (e === undefined || CLOSED_IN_HANDSHAKE.test(String((e as Error).message)))) {
      // Closed at our ClientHello without a TLS byte: a plain-HTTP server (docs/bun.md, "node:tls errors").
      return new HttpFailure("tls", tlsErrorText({ code: "ERR_SSL_WRONG_VERSION_NUMBER" }), e);
    }
    const prefix = `${goMethod(this.spec.method)} ${JSON.stringify(this.url)}: `;
    // After the head, Go's words for a body cut short.
    if (a.reader.inBody) return new HttpFailure("closed", `${prefix}unexpected EOF`, e);
    return new HttpFailure("closed", requestErrorText({ code: "ECONNRESET" }, this.spec.method, this.url), e);
  }

  private dialFailure(e: unknown): HttpFailure {
    const unix = this.target.unixPath;
    const at = unix === undefined ? { network: "tcp" as const, address: formatHostPort(this.target.host, this.target.port) } : { network: "unix" as const, address: unix };
    return new HttpFailure("dial", dialErrorText(e ?? new Error("connection closed"), at, { outOfFds: outOfFds() }), e);
  }

  /** Stops the timer; the request is decided. */
  private finish(): void {
    this.settled = true;
    clearTimeout(this.timer);
  }

  private fail(failure: HttpFailure): void {
    if (this.settled) return;
    this.finish();
    this.attempt?.detach();
    this.attempt?.socket.destroy();
    this.reject(failure);
  }
}

/** `Get`, `Post`, `Head`: Go's url.Error writes the method so. */
function goMethod(method: string): string {
  return method.charAt(0) + method.slice(1).toLowerCase();
}

/** Bound on a reply's head (status line and headers, 1xx heads before it included), and on a chunked body's trailers. */
const MAX_HEAD_BYTES = 16 << 10;
/** Bound on one chunk-size line of a chunked body. */
const MAX_CHUNK_LINE = 4096;

/** A complete reply (and whether its connection may carry another request), or what was malformed, in Go's words. */
type Outcome = { reply: HttpReply; reusable: boolean } | { malformed: string };

/** Bytes as Go's %q would show them, JSON-escaped and ASCII only. */
function quote(bytes: Buffer): string {
  return JSON.stringify(bytes.toString("latin1")).replace(/[\u007f-\u00ff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** Where the reply's head ends (just past its empty line, CRLF or bare LF), or -1. */
function headEnd(buf: Buffer, from: number): number {
  for (let i = buf.indexOf(10, from); i >= 0; i = buf.indexOf(10, i + 1)) {
    if (buf[i + 1] === 10) return i + 2;
    if (buf[i + 1] === 13 && buf[i + 2] === 10) return i + 3;
  }
  return -1;
}

interface Head {
  minor: number;
  status: number;
  headers: Record<string, string>;
}

/** Parses a status line and headers; names lower-cased, repeated ones joined with ", ", folded lines joined. */
function parseHead(text: string, start: Buffer): Head | { malformed: string } {
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  const status = /^HTTP\/1\.(\d) ([1-9]\d\d)(?: .*)?$/.exec(lines[0]!);
  if (status === null) return { malformed: `malformed HTTP response ${quote(start)}` };
  const headers: Record<string, string> = {};
  let last: string | undefined;
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    if (/^[ \t]/.test(line) && last !== undefined) {
      headers[last] = `${headers[last]} ${line.trim()}`;
      continue;
    }
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/.exec(line);
    if (m === null) return { malformed: `malformed MIME header line: ${quote(Buffer.from(line.slice(0, 40), "latin1"))}` };
    last = m[1]!.toLowerCase();
    headers[last] = headers[last] === undefined ? m[2]! : `${headers[last]}, ${m[2]}`;
  }
  return { minor: Number(status[1]), status: Number(status[2]), headers };
}

type Framing = "none" | "length" | "chunked" | "close";

/** How the body of a reply to `method` with `head` is delimited, and its length when given. */
function framingOf(method: string, head: Head): { framing: Framing; length: number } | { malformed: string } {
  const { status, headers } = head;
  if (method === "HEAD" || status < 200 || status === 204 || status === 304) return { framing: "none", length: 0 };
  const te = headers["transfer-encoding"];
  if (te !== undefined) return { framing: te.split(",").at(-1)!.trim().toLowerCase() === "chunked" ? "chunked" : "close", length: 0 };
  const cl = headers["content-length"];
  if (cl === undefined) return { framing: "close", length: 0 };
  const values = new Set(cl.split(",").map((v) => v.trim()));
  const [value] = values;
  if (values.size !== 1 || !/^\d{1,15}$/.test(value!)) return { malformed: `bad Content-Length ${quote(Buffer.from(cl.slice(0, 40), "latin1"))}` };
  const length = Number(value);
  return length === 0 ? { framing: "none", length: 0 } : { framing: "length", length };
}

/**
 * Reads one reply from the bytes of a connection, keeping at most the head bound and `maxBytes`
 * of body: interim 1xx replies (except 101) are skipped, as Go's client does; the body is
 * delimited by Content-Length, chunked transfer-encoding (extensions and trailers tolerated) or the
 * connection's close.
 */
class ReplyReader {
  private state: "head" | "body" | "done" = "head";
  /** Bytes not parsed yet: of the head, or of a line of chunked framing. */
  private pending = Buffer.alloc(0);
  private scanFrom = 0;
  private headBytes = 0;
  /** The first bytes of the reply, for the text of a malformed one. */
  private start = Buffer.alloc(0);
  private head: Head = { minor: 1, status: 0, headers: {} };
  private framing: Framing = "none";
  /** Body bytes still to come: of the whole body (length), or of the current chunk (chunked). */
  private left = 0;
  private chunkStep: "size" | "data" | "crlf" | "trailer" = "size";
  private trailerBytes = 0;
  private parts: Buffer[] = [];
  private size = 0;
  private truncated = false;
  /** Bytes came after the reply: the connection is out of step and must not be reused. */
  private extra = false;

  constructor(
    private readonly method: string,
    private readonly maxBytes: number,
  ) {}

  /** The head is complete and the body is being read. */
  get inBody(): boolean {
    return this.state === "body";
  }

  /** Feeds bytes received; a reply, a malformed one, or undefined while more are needed. */
  push(chunk: Buffer): Outcome | undefined {
    if (this.state === "done") return undefined;
    let rest = chunk;
    while (this.state === "head") {
      const r: Buffer | Outcome | undefined = this.readHead(rest);
      if (!Buffer.isBuffer(r)) return r;
      rest = r;
    }
    return this.readBody(rest);
  }

  /** The peer closed its side: the end of a body delimited by the close; else nothing. */
  end(): Outcome | undefined {
    return this.state === "body" && this.framing === "close" ? this.finish() : undefined;
  }

  /** Adds bytes to the head; the bytes after a complete head, a malformed head, or undefined for more. */
  private readHead(data: Buffer): Buffer | Outcome | undefined {
    const p = (this.pending = Buffer.concat([this.pending, data]));
    if (this.start.length < 40) this.start = Buffer.concat([this.start, data.subarray(0, 40 - this.start.length)]);
    if (!"HTTP/".startsWith(p.subarray(0, 5).toString("latin1"))) return { malformed: `malformed HTTP response ${quote(this.start)}` };
    const end = headEnd(p, this.scanFrom);
    const tooLong = { malformed: `net/http: server response headers exceeded ${MAX_HEAD_BYTES} bytes; aborted` };
    if (end < 0) {
      this.scanFrom = Math.max(0, p.length - 3);
      return this.headBytes + p.length > MAX_HEAD_BYTES ? tooLong : undefined;
    }
    if ((this.headBytes += end) > MAX_HEAD_BYTES) return tooLong;
    const head = parseHead(p.subarray(0, end).toString("latin1"), this.start);
    if ("malformed" in head) return head;
    this.pending = Buffer.alloc(0);
    this.scanFrom = 0;
    const rest = p.subarray(end);
    if (head.status < 200 && head.status !== 101) return rest;
    const framing = framingOf(this.method, head);
    if ("malformed" in framing) return framing;
    this.head = head;
    this.framing = framing.framing;
    this.left = framing.length;
    this.state = "body";
    return rest;
  }

  private readBody(data: Buffer): Outcome | undefined {
    switch (this.framing) {
      case "none":
        this.extra = data.length > 0;
        return this.finish();
      case "close":
        this.collect(data);
        return this.truncated ? this.finish() : undefined;
      case "length": {
        const take = Math.min(this.left, data.length);
        this.collect(data.subarray(0, take));
        this.left -= take;
        this.extra = data.length > take;
        return this.truncated || this.left === 0 ? this.finish() : undefined;
      }
      case "chunked":
        return this.readChunked(data);
    }
  }

  /** Keeps body bytes up to `maxBytes`; one byte more marks the reply truncated. */
  private collect(bytes: Buffer): void {
    const room = this.maxBytes - this.size;
    const kept = bytes.length > room ? bytes.subarray(0, room) : bytes;
    if (bytes.length > room) this.truncated = true;
    this.parts.push(Buffer.from(kept));
    this.size += kept.length;
  }

  private readChunked(data: Buffer): Outcome | undefined {
    const malformed = { malformed: "malformed chunked encoding" };
    let i = 0;
    while (i < data.length) {
      if (this.chunkStep === "data") {
        const take = Math.min(this.left, data.length - i);
        this.collect(data.subarray(i, i + take));
        if (this.truncated) return this.finish();
        i += take;
        if ((this.left -= take) === 0) this.chunkStep = "crlf";
        continue;
      }
      const nl = data.indexOf(10, i);
      this.pending = Buffer.concat([this.pending, data.subarray(i, nl < 0 ? data.length : nl)]);
      if (this.chunkStep === "trailer" ? this.trailerBytes + this.pending.length > MAX_HEAD_BYTES : this.pending.length > MAX_CHUNK_LINE) return malformed;
      if (nl < 0) return undefined;
      i = nl + 1;
      const line = this.pending.toString("latin1").replace(/\r$/, "");
      const done = this.chunkLine(line);
      if (done === null) return malformed;
      if (done) {
        this.extra = i < data.length;
        return this.finish();
      }
    }
    return undefined;
  }

  /** One line of chunked framing: true at the end of the trailers, null when malformed. */
  private chunkLine(line: string): boolean | null {
    this.pending = Buffer.alloc(0);
    if (this.chunkStep === "trailer") {
      // Trailers are read (bounded like a head) and dropped.
      this.trailerBytes += line.length + 1;
      return line === "";
    }
    if (this.chunkStep === "crlf") {
      this.chunkStep = "size";
      return line === "" ? false : null;
    }
    const size = /^([0-9a-fA-F]{1,15})[ \t]*(?:;.*)?$/.exec(line);
    if (size === null) return null;
    this.left = parseInt(size[1]!, 16);
    this.chunkStep = this.left === 0 ? "trailer" : "data";
    return false;
  }

  private finish(): Outcome {
    this.state = "done";
    const { minor, status, headers } = this.head;
    const reply: HttpReply = { status, headers, body: Buffer.concat(this.parts).toString("utf8"), truncated: this.truncated };
    const closes = /(^|,)\s*close\s*(,|$)/i.test(headers.connection ?? "");
    const reusable = !this.truncated && !this.extra && minor === 1 && !closes && this.framing !== "close" && status !== 101;
    return { reply, reusable };
  }
}
