/**
 * A small DNS stub resolver client: one question to one server, answers with their TTLs. It exists
 * because `node:dns` `resolveSrv` drops record TTLs (discovery needs them to know when to look
 * again), and because `--dns-server` should apply to the gateway's own queries rather than through
 * the process-wide `dns.setServers`. Messages follow RFC 1035, SRV RFC 2782, AAAA RFC 3596.
 *
 * @module
 */
import { randomInt } from "node:crypto";
import dgram from "node:dgram";
import { readFileSync } from "node:fs";
import { connect, isIP } from "node:net";
import { formatHostPort, parseHostPort } from "../addresses.ts";

/** The record types the gateway asks for. */
export type DnsType = "SRV" | "A" | "AAAA";

/** One answer record. Names have no trailing dot; an SRV `target` of `"."` means "no service here". */
export type DnsRecord =
  | { type: "SRV"; name: string; ttl: number; priority: number; weight: number; port: number; target: string }
  | { type: "A"; name: string; ttl: number; address: string }
  | { type: "AAAA"; name: string; ttl: number; address: string };

/** The records of one type. */
export type DnsRecordOf<T extends DnsType> = Extract<DnsRecord, { type: T }>;

/** A reply as the server gave it: its RCODE (NOERROR=0, SERVFAIL=2, NXDOMAIN=3, REFUSED=5) and its SRV/A/AAAA answers. */
export interface DnsAnswer { rcode: number; rcodeName: string; records: DnsRecord[] }

/**
 * Why a query failed: `ETIMEOUT` no reply in time, `ESERVFAIL`/`ENOTFOUND`/`EREFUSED` the server's
 * SERVFAIL (and other failure RCODEs)/NXDOMAIN/REFUSED, `ENODATA` the name has no records of the
 * type, `EBADRESP` a malformed reply, `ECONNREFUSED` the server could not be reached or dropped the
 * TCP connection, `EBADQUERY` the server is not an IP address or the name is not a valid DNS name.
 */
export type DnsErrorCode = "ETIMEOUT" | "ESERVFAIL" | "ENOTFOUND" | "ENODATA" | "EREFUSED" | "EBADRESP" | "ECONNREFUSED" | "EBADQUERY";

/**
 * The only error `query` and `resolve` reject with.
 *
 * @example err.message // "ENOTFOUND SRV _etcd-client._tcp.example.com via 10.0.0.2:53: server answered NXDOMAIN"
 */
export class DnsError extends Error {
  override readonly name = "DnsError";
  constructor(readonly code: DnsErrorCode, readonly server: string, readonly hostname: string, readonly type: DnsType, why: string, options?: ErrorOptions) {
    super(`${code} ${type} ${hostname} via ${server}: ${why}`, options);
  }
}

/** Options for `query` and `resolve`. */
export interface DnsQueryOptions {
  /** Overall bound in ms, UDP tries and the TCP retry included. @default 5000 */
  timeoutMs?: number;
  /** UDP sends of the same query, spread evenly over the time left. @default 2 */
  tries?: number;
}

const TYPE_CODE: Record<DnsType, number> = { A: 1, AAAA: 28, SRV: 33 };
const RCODE_NAME = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];
const RCODE_ERROR: Record<number, DnsErrorCode> = { 3: "ENOTFOUND", 5: "EREFUSED" };

type Fail = (code: DnsErrorCode, why: string, cause?: unknown) => DnsError;
interface Server { host: string; port: number; family: 4 | 6 }
interface Reply { rcode: number; truncated: boolean; records: DnsRecord[] }
/** Decodes a reply to our query: undefined for someone else's, a DnsError (EBADRESP) for a malformed one. */
type Read = (message: Uint8Array) => Reply | DnsError | undefined;

/**
 * Asks `server` (`"host:port"`, `"[v6]:port"`, or an IP alone for port 53) for `name`/`type` over
 * UDP, and again over TCP when the UDP reply is truncated (TC bit). Any RCODE is an answer here;
 * see `resolve` for the strict form. Rejects only with `DnsError` (timeouts, malformed replies).
 *
 * @example await query("127.0.0.1:5353", "_etcd-client._tcp.example.com", "SRV", { timeoutMs: 1000 })
 * // { rcode: 0, rcodeName: "NOERROR", records: [{ type: "SRV", name: "_etcd-client._tcp.example.com", ttl: 30, priority: 10, ... }] }
 */
export async function query(server: string, name: string, type: DnsType, opts: DnsQueryOptions = {}): Promise<DnsAnswer> {
  const fail: Fail = (code, why, cause) => new DnsError(code, server, name, type, why, cause === undefined ? undefined : { cause });
  const to = parseServer(server);
  if (!to) throw fail("EBADQUERY", "the DNS server must be an IP address, optionally with a port");
  const question = encodeQuestion(name, type);
  if (!question) throw fail("EBADQUERY", "not a valid DNS name");
  // A random ID (and the question check in decode) makes a forged or stale reply hard to slip in.
  const id = randomInt(0x10000);
  // Header: ID, flags with only RD set (a stub resolver wants the server to recurse), QDCOUNT 1.
  const packet = Uint8Array.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...question]);
  const deadline = performance.now() + (opts.timeoutMs ?? 5000);
  const read: Read = (message) => {
    try {
      return decode(message, id, question);
    } catch (err) {
      return fail("EBADRESP", `malformed reply: ${(err as Error).message}`, err);
    }
  };
  let reply = await overUdp(to, packet, Math.max(1, Math.floor(opts.tries ?? 2)), deadline, read, fail);
  if (reply.truncated) reply = await overTcp(to, packet, deadline, read, fail);
  return { rcode: reply.rcode, rcodeName: RCODE_NAME[reply.rcode] ?? `RCODE${reply.rcode}`, records: reply.records };
}

/**
 * Like `query`, but a reply that is not NOERROR, or has no record of `type`, is a `DnsError`
 * (NXDOMAIN → `ENOTFOUND`, REFUSED → `EREFUSED`, other failures → `ESERVFAIL`, none → `ENODATA`).
 *
 * @example const srvs = await resolve("10.0.0.2", "_etcd-client._tcp.example.com", "SRV") // DnsRecordOf<"SRV">[]
 */
export async function resolve<T extends DnsType>(server: string, name: string, type: T, opts?: DnsQueryOptions): Promise<DnsRecordOf<T>[]> {
  const answer = await query(server, name, type, opts);
  const failed = answer.rcode === 0 ? undefined : (RCODE_ERROR[answer.rcode] ?? "ESERVFAIL");
  if (failed) throw new DnsError(failed, server, name, type, `server answered ${answer.rcodeName}`);
  const records = answer.records.filter((r): r is DnsRecordOf<T> => r.type === type);
  if (records.length === 0) throw new DnsError("ENODATA", server, name, type, `no ${type} records`);
  return records;
}

/**
 * The first `nameserver` of resolv.conf as `host:port`, or `"127.0.0.1:53"` when there is none (as
 * glibc assumes), for when `--dns-server` is not given.
 *
 * @param resolvConf the file's text. @default the contents of /etc/resolv.conf
 * @example systemDnsServer("search example.com\nnameserver 10.0.0.2\n") // "10.0.0.2:53"
 */
export function systemDnsServer(resolvConf?: string): string {
  let text = resolvConf ?? "";
  try {
    text = resolvConf ?? readFileSync("/etc/resolv.conf", "utf8");
  } catch {} // no file: the same as no nameserver line
  for (const line of text.split("\n")) {
    const [key, address] = line.replace(/[#;].*/, "").trim().split(/\s+/);
    if (key === "nameserver" && address !== undefined && isIP(address) !== 0) return formatHostPort(address, 53);
  }
  return "127.0.0.1:53";
}

/** Only IP literals: naming the DNS server by a hostname would need DNS (through getaddrinfo) first. */
function parseServer(text: string): Server | undefined {
  let host = text;
  let port = 53;
  if (isIP(text) === 0 && !/^\[[^\]]*\]$/.test(text)) {
    try {
      ({ host, port } = parseHostPort(text));
    } catch {
      return undefined;
    }
  }
  host = host.replace(/^\[(.*)\]$/, "$1");
  const family = isIP(host);
  return family === 4 || family === 6 ? { host, port, family } : undefined;
}

/** QNAME + QTYPE + QCLASS IN, or undefined for an empty label, a label over 63 bytes or a name over 255. */
function encodeQuestion(name: string, type: DnsType): Uint8Array | undefined {
  const bytes: number[] = [];
  const labels = name === "." ? [] : name.replace(/\.$/, "").split(".");
  for (const label of labels) {
    const b = new TextEncoder().encode(label);
    if (b.length < 1 || b.length > 63) return undefined;
    bytes.push(b.length, ...b);
  }
  if (bytes.length + 1 > 255) return undefined;
  return Uint8Array.from([...bytes, 0, 0, TYPE_CODE[type], 0, 1]);
}

/**
 * Decodes a reply to our question; undefined when it is someone else's (other ID, not a response,
 * other question). Reads go through a DataView, so a message cut short throws RangeError. A
 * truncated (TC) reply's answers are not read: they may be cut mid-record, and TCP asks again.
 */
function decode(message: Uint8Array, id: number, question: Uint8Array): Reply | undefined {
  const v = new DataView(message.buffer, message.byteOffset, message.byteLength);
  if (message.byteLength < 12 || v.getUint16(0) !== id) return undefined;
  const flags = v.getUint16(2);
  if (!(flags & 0x8000) || v.getUint16(4) !== 1) return undefined;
  if (message.byteLength < 12 + question.length) throw new RangeError("reply cut short in the question");
  // Case-insensitive: servers may echo the name in another case. Length bytes (<64) are never letters.
  const fold = (b: number) => (b >= 0x41 && b <= 0x5a ? b | 0x20 : b);
  if (question.some((b, i) => fold(b) !== fold(v.getUint8(12 + i)))) return undefined;
  const reply: Reply = { rcode: flags & 0x0f, truncated: (flags & 0x0200) !== 0, records: [] };
  if (reply.truncated) return reply;
  let at = 12 + question.length;
  for (let i = v.getUint16(6); i > 0; i--) {
    const [name, fixed] = readName(v, at);
    const [type, klass, rawTtl, length] = [v.getUint16(fixed), v.getUint16(fixed + 2), v.getUint32(fixed + 4), v.getUint16(fixed + 8)];
    const start = fixed + 10;
    at = start + length;
    if (at > message.byteLength) throw new RangeError("record data runs past the end of the reply");
    if (klass !== 1 || !Object.values(TYPE_CODE).includes(type)) continue; // CNAME and friends
    const ttl = rawTtl > 0x7fffffff ? 0 : rawTtl; // RFC 2181 §8: a TTL with the top bit set means 0
    if (type === TYPE_CODE.A && length === 4) {
      reply.records.push({ type: "A", name, ttl, address: Array.from(message.subarray(start, at)).join(".") });
    } else if (type === TYPE_CODE.AAAA && length === 16) {
      reply.records.push({ type: "AAAA", name, ttl, address: formatIPv6(v, start) });
    } else if (type === TYPE_CODE.SRV && length >= 7) {
      const [target, end] = readName(v, start + 6);
      if (end !== at) throw new RangeError("SRV target does not end with its record");
      reply.records.push({ type: "SRV", name, ttl, priority: v.getUint16(start), weight: v.getUint16(start + 2), port: v.getUint16(start + 4), target });
    } else throw new RangeError(`record of type ${type} has a wrong length ${length}`);
  }
  return reply;
}

/**
 * Reads a name at `at`, following compression pointers; returns it and the offset after it. Each
 * pointer must go strictly below the previous jump (or the name's start): RFC 1035 §4.1.4 only
 * allows pointers to a prior occurrence, and this rule makes every loop an error rather than a hang.
 */
function readName(v: DataView, at: number): [string, number] {
  const labels: string[] = [];
  let floor = at;
  let after = -1;
  let size = 1;
  for (let len = v.getUint8(at); len !== 0; len = v.getUint8(at)) {
    if (len >= 0xc0) {
      const to = v.getUint16(at) & 0x3fff;
      if (to >= floor) throw new RangeError("compression pointer loop");
      if (after < 0) after = at + 2;
      at = floor = to;
      continue;
    }
    if (len > 63) throw new RangeError("unknown label type");
    if ((size += len + 1) > 255) throw new RangeError("name longer than 255 bytes");
    labels.push(String.fromCharCode(...new Uint8Array(v.buffer, v.byteOffset + at + 1, len)));
    at += len + 1;
  }
  return [labels.length > 0 ? labels.join(".") : ".", after < 0 ? at + 1 : after];
}

/** RFC 5952 text: lower-case hex, the first longest run of two or more zero groups as "::". */
function formatIPv6(v: DataView, at: number): string {
  const text = Array.from({ length: 8 }, (_, i) => v.getUint16(at + 2 * i).toString(16)).join(":");
  const longest = (text.match(/(?:^|:)0(?::0)+(?::|$)/g) ?? []).reduce((a, b) => (b.length > a.length ? b : a), "");
  return longest === "" ? text : text.replace(longest, "::");
}

/**
 * node:dgram rather than Bun.udpSocket: a dgram socket is made for the server's family ("udp6" for
 * an IPv6 server), while Bun.udpSocket binds 0.0.0.0 by default and sending to ::1 fails with
 * EAFNOSUPPORT. connect() makes the kernel drop datagrams from other addresses and report an ICMP
 * port unreachable as ECONNREFUSED instead of a silent timeout.
 */
function overUdp(to: Server, packet: Uint8Array, tries: number, deadline: number, read: Read, fail: Fail): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(to.family === 6 ? "udp6" : "udp4");
    let timer: Timer | undefined;
    const finish = settleOnce(() => { clearTimeout(timer); socket.close(); }, resolve, reject);
    let sent = 0;
    const send = () => {
      const left = deadline - performance.now();
      if (sent === tries || left <= 0) return finish(fail("ETIMEOUT", `no reply to ${sent} UDP tries`));
      socket.send(packet, (err) => err && finish(fail("ECONNREFUSED", `UDP send: ${err.message}`, err)));
      timer = setTimeout(send, left / (tries - sent++));
    };
    socket.on("error", (err) => finish(fail("ECONNREFUSED", `UDP: ${err.message}`, err)));
    socket.on("message", (message) => {
      const reply = read(message);
      if (reply) finish(reply);
    });
    socket.connect(to.port, to.host, send); // cannot throw: parseServer vetted the IP and the port
  });
}

/**
 * The same query over TCP with its 2-byte length prefix (RFC 1035 §4.2.2). node:net rather than
 * Bun.connect: destroy() cancels a pending connect, which Bun.connect cannot (docs/bun.md, trap 5).
 */
function overTcp(to: Server, packet: Uint8Array, deadline: number, read: Read, fail: Fail): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: to.host, port: to.port });
    const timer = setTimeout(() => finish(fail("ETIMEOUT", "no full reply over TCP in time")), Math.max(0, deadline - performance.now()));
    const finish = settleOnce(() => { clearTimeout(timer); socket.destroy(); }, resolve, reject);
    let received = Buffer.alloc(0);
    socket.on("error", (err) => finish(fail("ECONNREFUSED", `TCP: ${err.message}`, err)));
    socket.on("close", () => finish(fail("EBADRESP", "TCP connection closed before a full reply")));
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const size = received.length >= 2 ? received.readUInt16BE(0) : Infinity;
      if (received.length >= 2 + size) finish(read(received.subarray(2, 2 + size)) ?? fail("EBADRESP", "TCP reply is not for our question"));
    });
    socket.write(Uint8Array.from([packet.length >> 8, packet.length & 0xff, ...packet]));
  });
}

/** The first outcome of an exchange wins; `release` (timer, socket) runs exactly once, with it. */
function settleOnce(release: () => void, resolve: (reply: Reply) => void, reject: (err: DnsError) => void) {
  let done = false;
  return (outcome: Reply | DnsError): void => {
    if (done) return;
    done = true;
    release();
    if (outcome instanceof DnsError) reject(outcome);
    else resolve(outcome);
  };
}
