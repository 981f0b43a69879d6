/**
 * etcd's `Maintenance.Status` over gRPC (HTTP/2), for members whose JSON API is off
 * (`--enable-grpc-gateway=false` answers `POST /v3/maintenance/status` with 404) but whose gRPC API
 * answers `/etcdserverpb.Maintenance/Status`: one unary call on its own connection, bounded in time
 * (one timer for connect, TLS and the reply) and in size (MAX_REPLY_BYTES of reply), and the
 * hand-written decoder of its StatusResponse protobuf.
 *
 * The connection is made with node:net or node:tls and handed to node:http2 (`createConnection`):
 * `destroy()` of a node:net/node:tls socket cancels a pending connect, while a session from
 * `http2.connect(url)` left a connect to a blackholed member pending, descriptor and all, until the
 * kernel gave up (docs/bun.md, "node:http2: destroy() does not cancel a pending connect").
 *
 * @module
 */
import { STATUS_CODES } from "node:http";
import type { ClientHttp2Session, ClientHttp2Stream, IncomingHttpHeaders, IncomingHttpStatusHeader } from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { formatHostPort } from "../addresses.ts";
import { formatDuration } from "../duration.ts";
import { CLOSED_IN_HANDSHAKE, connectTarget, isTlsError, type HttpTarget } from "../http-client.ts";
import { MAX_REPLY_BYTES, outOfFds } from "../limits.ts";
import { dialErrorText, type NetTarget, readErrorText, tlsErrorText } from "../neterror.ts";

/** What a member says of itself in Maintenance.Status. 64-bit IDs as decimal strings (they exceed 2^53). */
export interface MemberStatus {
  /** header.cluster_id */
  readonly clusterId: string;
  /** header.member_id */
  readonly memberId: string;
  /** The leader's ID as this member sees it; "0" when it knows none. */
  readonly leader: string;
  readonly isLearner: boolean;
  /** etcd's `errors`: "etcdserver: no leader", alarms as "memberID:<decimal> alarm:NOSPACE ". */
  readonly errors: readonly string[];
  /** The member's etcd version, e.g. "3.4.23". */
  readonly version: string;
  /** StatusResponse.raftTerm. */
  readonly raftTerm: string;
}

/**
 * Why a call failed:
 * - `dial`: no connection (refused, unreachable, no such host, out of descriptors). answered = false.
 * - `timeout`: no complete reply within the timeout, wherever it hung (connect, TLS, the reply). answered = false.
 * - `closed`: connected, then the peer closed, reset or sent GOAWAY before a reply. answered = true.
 * - `tls`: a TLS alert from the peer (also one right after the handshake, as TLS 1.3 client
 *   certificate refusals come), a certificate that did not verify, or a peer that does not speak TLS. answered = true.
 * - `protocol`: not HTTP/2 (or no `h2` in ALPN), not gRPC, a malformed frame or protobuf, or a reply over MAX_REPLY_BYTES. answered = true.
 * - `status`: the member answered with a non-zero grpc-status (12 Unimplemented, 14 Unavailable, ...). answered = true.
 */
export type GrpcFailureKind = "dial" | "timeout" | "closed" | "tls" | "protocol" | "status";

/**
 * A failed call. Its message is in Go's words: grpc-go's for a gRPC status
 * (`rpc error: code = Unimplemented desc = unknown service etcdserverpb.Maintenance`) and a timeout,
 * Go's net and crypto/tls words for dial and TLS failures (src/neterror.ts).
 */
export class GrpcFailure extends Error {
  override name = "GrpcFailure";
  readonly kind: GrpcFailureKind;
  /** Whether the peer process did anything at all (see the kinds): a hung or dead member does not. */
  readonly answered: boolean;
  /** With kind `status`, the grpc status name ("Unimplemented"); undefined otherwise. */
  readonly code: string | undefined;

  constructor(kind: GrpcFailureKind, message: string, code?: string) {
    super(message);
    this.kind = kind;
    this.answered = kind !== "dial" && kind !== "timeout";
    this.code = code;
  }
}

/** gRPC status codes by number, named as grpc-go's codes.Code prints them. */
const GRPC_CODES = [
  "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied",
  "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
];

/** The name grpc-go prints for a grpc-status value: "Unimplemented", or `Code(99)` for one it does not know. */
function grpcCodeName(status: string): string {
  const n = Number(status);
  return /^\d+$/.test(status) && n < GRPC_CODES.length ? GRPC_CODES[n]! : `Code(${status})`;
}

const METHOD = "/etcdserverpb.Maintenance/Status";
/** An empty StatusRequest as a gRPC message: not compressed, length 0. */
const EMPTY_REQUEST = new Uint8Array(5);
/** HTTP/2's error codes by number, for the text of a reset or a GOAWAY. */
const H2_ERRORS = [
  "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR",
  "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
];

/**
 * Maintenance.Status of the member at `target`, bounded by `timeoutMs` (connect, TLS with ALPN h2,
 * the reply) and by MAX_REPLY_BYTES (src/limits.ts) of reply. Cleartext is HTTP/2 with prior
 * knowledge (h2c); TLS is verified against `target.tls.serverName` even when it is an IP literal
 * (then sent as no SNI). Never reads the proxy environment.
 *
 * Rejects only with GrpcFailure. Its HTTP/2 session and socket are closed before it settles, and
 * no timer is left behind.
 */
export function grpcStatus(target: HttpTarget, timeoutMs: number): Promise<MemberStatus> {
  return new Promise((resolve, reject) => new StatusCall(target, timeoutMs, resolve, reject).start());
}

/** An error's `code`, when it has a string one. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" && code !== "" ? code : undefined;
}

/** What the reply brought so far. */
interface Reply {
  headers: (IncomingHttpHeaders & IncomingHttpStatusHeader) | undefined;
  trailers: IncomingHttpHeaders | undefined;
  parts: Uint8Array[];
  bytes: number;
  /** The GOAWAY the peer sent, if any. */
  goaway: { code: number } | undefined;
}

/** node:http2, once a first call needed it. */
let http2: typeof import("node:http2") | null = null;

/** One call: its timer, its socket and session, its outcome. */
class StatusCall {
  private readonly net: NetTarget;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private socket: Socket | null = null;
  private session: ClientHttp2Session | null = null;
  private stream: ClientHttp2Stream | null = null;
  private phase: "connect" | "handshake" | "http2" = "connect";
  private settled = false;
  private readonly reply: Reply = { headers: undefined, trailers: undefined, parts: [], bytes: 0, goaway: undefined };

  constructor(
    private readonly target: HttpTarget,
    private readonly timeoutMs: number,
    private readonly resolve: (status: MemberStatus) => void,
    private readonly reject: (failure: GrpcFailure) => void,
  ) {
    this.net = { network: "tcp", address: formatHostPort(target.host, target.port) };
  }

  start(): void {
    this.timer = setTimeout(() => {
      this.fail("timeout", `rpc error: code = DeadlineExceeded desc = context deadline exceeded (timeout ${formatDuration(this.timeoutMs)})`);
    }, this.timeoutMs);
    const tls = this.target.tls;
    let socket: Socket;
    try {
      socket = connectTarget(this.target, ["h2"]);
    } catch (e) {
      this.fail("dial", dialErrorText(e, this.net, { outOfFds: outOfFds() }));
      return;
    }
    this.socket = socket;
    socket.on("connect", () => (tls === null ? this.open() : (this.phase = "handshake")));
    socket.on("secureConnect", () => this.secured(socket as TLSSocket));
    socket.on("error", (e: unknown) => this.failWith(e));
    socket.on("close", () => this.failWith(undefined));
  }

  /** The TLS handshake is done: HTTP/2 only if the peer agreed to `h2`, and only with a verified certificate when asked to verify. */
  private secured(socket: TLSSocket): void {
    if (this.target.tls?.verify === true && !socket.authorized) {
      const why: unknown = socket.authorizationError;
      this.fail("tls", tlsErrorText(typeof why === "object" && why !== null ? why : { code: String(why) }, this.target.tls.serverName));
      return;
    }
    if (socket.alpnProtocol !== "h2") {
      this.fail("protocol", `tls: the server did not agree to HTTP/2 (ALPN ${JSON.stringify(socket.alpnProtocol || "")}, want "h2")`);
      return;
    }
    this.open();
  }

  /** Starts HTTP/2 on the connected socket and sends the call. */
  private open(): void {
    if (this.settled) return;
    this.phase = "http2";
    if (http2 === null) {
      // Loaded on first use: node:http2 adds about 1.5 MiB to every gateway, and only members with
      // the JSON API off need it (docs/fleet.md measures per-gateway memory).
      void import("node:http2").then((m) => {
        http2 = m;
        this.open();
      });
      return;
    }
    const socket = this.socket!;
    const scheme = this.target.tls === null ? "http" : "https";
    try {
      const session = http2.connect(`${scheme}://${this.net.address}`, { createConnection: () => socket, settings: { enablePush: false } });
      this.session = session;
      session.on("error", (e: unknown) => this.failWith(e));
      session.on("goaway", (code: number) => (this.reply.goaway = { code }));
      session.on("close", () => this.failWith(undefined));
      const stream = session.request({ ":method": "POST", ":path": METHOD, "content-type": "application/grpc", te: "trailers" });
      this.stream = stream;
      this.watch(stream);
      stream.end(EMPTY_REQUEST);
    } catch (e) {
      this.fail("protocol", `http2: ${(e as Error).message}`);
    }
  }

  private watch(stream: ClientHttp2Stream): void {
    stream.on("response", (headers) => (this.reply.headers = headers));
    stream.on("trailers", (trailers) => (this.reply.trailers = trailers));
    stream.on("data", (chunk: Uint8Array) => this.received(chunk));
    stream.on("end", () => this.judge());
    stream.on("error", (e: unknown) => this.failWith(e));
    stream.on("close", () => this.judge());
  }

  /** Keeps reply bytes up to MAX_REPLY_BYTES; beyond that (or a message declared larger) the call fails at once. */
  private received(chunk: Uint8Array): void {
    const r = this.reply;
    const before = r.bytes;
    r.bytes += chunk.length;
    if (r.bytes > MAX_REPLY_BYTES) {
      this.fail("protocol", `grpc: reply larger than ${MAX_REPLY_BYTES} bytes`);
      return;
    }
    r.parts.push(chunk);
    if (before >= 5 || r.bytes < 5) return;
    const declared = Buffer.concat(r.parts).readUInt32BE(1);
    if (declared > MAX_REPLY_BYTES - 5) this.fail("protocol", `grpc: received message larger than max (${declared} vs. ${MAX_REPLY_BYTES - 5})`);
  }

  /** The stream ended or closed: the reply is complete, or it is a failure. */
  private judge(): void {
    if (this.settled) return;
    const { headers, trailers } = this.reply;
    const status = trailers?.["grpc-status"] ?? headers?.["grpc-status"];
    if (headers === undefined || (status === undefined && (this.stream?.rstCode ?? 0) !== 0)) {
      // No reply, or one cut short by a reset: how the connection or stream ended says why.
      this.failWith(undefined);
      return;
    }
    const contentType = String(headers["content-type"] ?? "");
    const isGrpc = /^application\/grpc(?:$|[+;])/.test(contentType);
    if (!isGrpc || (status === undefined && headers[":status"] !== 200)) {
      this.fail("protocol", notGrpcText(headers[":status"], contentType));
      return;
    }
    if (status === undefined) {
      this.fail("protocol", "server closed the stream without sending trailers");
      return;
    }
    if (status !== "0") {
      const name = grpcCodeName(String(status));
      const message = trailers?.["grpc-message"] ?? headers["grpc-message"];
      this.fail("status", `rpc error: code = ${name} desc = ${decodeGrpcMessage(String(message ?? ""))}`, name);
      return;
    }
    let decoded: MemberStatus;
    try {
      decoded = decodeStatusResponse(onlyMessage(Buffer.concat(this.reply.parts)));
    } catch (e) {
      this.fail("protocol", (e as Error).message);
      return;
    }
    this.settle(() => this.resolve(decoded));
  }

  /** The connection or the stream failed (`err`), or closed (`err` undefined) before a complete reply: how, depending on how far it got. */
  private failWith(err: unknown): void {
    if (this.settled) return;
    const cause = codeOf(err) === "ERR_HTTP2_STREAM_CANCEL" && (err as Error).cause !== undefined ? (err as Error).cause : err;
    if (isTlsError(cause)) this.fail("tls", tlsErrorText(cause, this.target.tls?.serverName));
    else if (this.phase === "connect") this.fail("dial", dialErrorText(cause ?? new Error("connection closed"), this.net, { outOfFds: outOfFds() }));
    else if (this.phase === "handshake") this.fail("tls", handshakeText(cause, this.net));
    else this.fail(...http2FailureOf(cause, this.stream?.rstCode ?? 0, this.reply.goaway, this.net));
  }

  private fail(kind: GrpcFailureKind, message: string, code?: string): void {
    this.settle(() => this.reject(new GrpcFailure(kind, message, code)));
  }

  /** Stops the timer, closes the session and the socket, then reports the outcome (once). */
  private settle(report: () => void): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.session?.destroy();
    this.socket?.destroy();
    report();
  }
}

/** A TLS handshake that ended without a TLS error: the peer closed or reset at our ClientHello. */
function handshakeText(err: unknown, net: NetTarget): string {
  // Closed at our ClientHello without a TLS byte: a plain server (docs/bun.md, "node:tls errors").
  if (err === undefined || CLOSED_IN_HANDSHAKE.test(String((err as Error).message))) return tlsErrorText({ code: "ERR_SSL_WRONG_VERSION_NUMBER" });
  return `tls: handshake failed: ${readErrorText(err, net)}`;
}

/** HTTP/2 error codes that say the peer broke the protocol rather than gave up. */
const PROTOCOL_ERRORS = new Set([1, 6, 9]); // PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR

/**
 * An HTTP/2 connection or stream that failed (`err`) or ended before a complete reply: `closed`
 * (EOF, a reset, a GOAWAY, the stream refused or cancelled), or `protocol` for a peer that breaks
 * HTTP/2 (not HTTP/2 at all, a malformed frame, a reset for a protocol error).
 */
function http2FailureOf(err: unknown, rstCode: number, goaway: { code: number } | undefined, net: NetTarget): [GrpcFailureKind, string] {
  const code = codeOf(err);
  const h2 = (n: number) => `code ${n} ${H2_ERRORS[n] ?? "UNKNOWN"}`;
  if (code !== undefined && /^E[A-Z]+$/.test(code)) return ["closed", readErrorText(err, net)];
  if (goaway !== undefined) return [PROTOCOL_ERRORS.has(goaway.code) ? "protocol" : "closed", `connection closed before a reply (GOAWAY, ${h2(goaway.code)})`];
  // A RST_STREAM from the peer: ERR_HTTP2_STREAM_ERROR with the stream's rstCode (CANCEL comes without an error).
  if (rstCode !== 0) return [PROTOCOL_ERRORS.has(rstCode) ? "protocol" : "closed", `stream reset before a reply (${h2(rstCode)})`];
  if (code !== undefined && code.startsWith("ERR_HTTP2_") && code !== "ERR_HTTP2_STREAM_CANCEL" && code !== "ERR_HTTP2_GOAWAY_SESSION") {
    // Bun's words for a peer that is not HTTP/2 ("Protocol error") or sent a malformed frame.
    return ["protocol", `http2: ${(err as Error).message}`];
  }
  return ["closed", "connection closed before a reply (EOF)"];
}

/** grpc-go's words for a reply that is not gRPC. */
function notGrpcText(status: number | undefined, contentType: string): string {
  const phrase = status === undefined ? "" : ` (${STATUS_CODES[status] ?? "unknown"})`;
  const type = contentType === "" ? "malformed header: missing HTTP content-type" : `transport: received unexpected content-type ${JSON.stringify(contentType)}`;
  return `unexpected HTTP status code received from server: ${status ?? "none"}${phrase}; ${type}`;
}

/** grpc-message comes percent-encoded; a malformed escape is left as it came. */
function decodeGrpcMessage(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * The one message of a unary reply: a 5-byte prefix (flag 0 = not compressed, 4-byte big-endian
 * length) and that many bytes, nothing after.
 *
 * @throws {Error} in grpc-go's words where it has some.
 */
function onlyMessage(data: Buffer): Uint8Array {
  if (data.length === 0) return onlyMessageFail("grpc: the server sent no reply message");
  if (data.length < 5) return onlyMessageFail(`grpc: truncated message prefix (${data.length} bytes)`);
  if (data[0] !== 0) return onlyMessageFail(data[0] === 1 ? "grpc: compressed flag set with identity or empty encoding" : `grpc: invalid message flag ${data[0]}`);
  const length = data.readUInt32BE(1);
  if (data.length < 5 + length) return onlyMessageFail(`grpc: truncated message (${data.length - 5} of ${length} bytes)`);
  if (data.length > 5 + length) return onlyMessageFail("grpc: more than one reply message to a unary call");
  return data.subarray(5);
}

function onlyMessageFail(message: string): never {
  throw new Error(message);
}

/** A protobuf reader over one message's bytes. */
class Reader {
  pos = 0;
  constructor(readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.bytes.length;
  }

  /** A base-128 varint of at most 64 bits. */
  varint(): bigint {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.bytes.length) throw new Error("truncated varint");
      const b = this.bytes[this.pos++]!;
      if (shift === 63n && b > 1) throw new Error("varint overflows 64 bits");
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
    throw new Error("varint longer than 10 bytes");
  }

  /** The bytes of a length-delimited field. */
  delimited(): Uint8Array {
    const length = this.varint();
    if (length > BigInt(this.bytes.length - this.pos)) throw new Error(`length ${length} past the end of the message (${this.bytes.length - this.pos} bytes left)`);
    const start = this.pos;
    this.pos += Number(length);
    return this.bytes.subarray(start, this.pos);
  }

  /** A field's key: its number and wire type. */
  key(): { field: number; wire: number } {
    const key = this.varint();
    const field = Number(key >> 3n);
    if (field === 0 || key >> 3n > 0x1fffffffn) throw new Error(`invalid field number ${key >> 3n}`);
    return { field, wire: Number(key & 7n) };
  }

  /** Skips a field of an unknown number by its wire type. */
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 2) this.delimited();
    else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      if (this.pos + size > this.bytes.length) throw new Error(`truncated ${size * 8}-bit field`);
      this.pos += size;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

const utf8 = new TextDecoder();

/** The ResponseHeader fields a status uses (1 cluster_id, 2 member_id), merged into `into`. */
function decodeHeader(bytes: Uint8Array, into: { clusterId: string; memberId: string }): void {
  const r = new Reader(bytes);
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1 || field === 2) {
      wantWire(`ResponseHeader field ${field}`, wire, 0);
      const id = BigInt.asUintN(64, r.varint()).toString();
      if (field === 1) into.clusterId = id;
      else into.memberId = id;
    } else r.skip(wire);
  }
}

function wantWire(what: string, wire: number, want: number): void {
  if (wire !== want) throw new Error(`${what}: wire type ${wire}, want ${want}`);
}

/**
 * Decodes a StatusResponse protobuf message (without the 5-byte gRPC prefix) as etcd's gRPC API
 * defines it: 1 header (1 cluster_id, 2 member_id), 2 version, 4 leader, 6 raftTerm, 8 errors
 * (repeated), 10 isLearner; 3, 5, 7 and 9 (sizes and indexes) are checked and dropped. Unknown fields
 * are skipped by wire type; missing ones take protobuf's defaults ("0", "", false, []); an embedded
 * header that comes twice is merged.
 *
 * @throws {Error} on malformed input: a truncated varint, a length past the end, a known field with
 * the wrong wire type, a wire type that is not 0, 1, 2 or 5.
 */
export function decodeStatusResponse(bytes: Uint8Array): MemberStatus {
  const s = { clusterId: "0", memberId: "0", leader: "0", isLearner: false, errors: [] as string[], version: "", raftTerm: "0" };
  const r = new Reader(bytes);
  while (!r.done) {
    const { field, wire } = r.key();
    switch (field) {
      case 1:
        wantWire("StatusResponse.header", wire, 2);
        decodeHeader(r.delimited(), s);
        break;
      case 2:
      case 8: {
        wantWire(`StatusResponse field ${field}`, wire, 2);
        const text = utf8.decode(r.delimited());
        if (field === 2) s.version = text;
        else s.errors.push(text);
        break;
      }
      case 3:
      case 4:
      case 5:
      case 6:
      case 7:
      case 9:
      case 10: {
        wantWire(`StatusResponse field ${field}`, wire, 0);
        const v = BigInt.asUintN(64, r.varint());
        if (field === 4) s.leader = v.toString();
        else if (field === 6) s.raftTerm = v.toString();
        else if (field === 10) s.isLearner = v !== 0n;
        break;
      }
      default:
        r.skip(wire);
    }
  }
  return s;
}
