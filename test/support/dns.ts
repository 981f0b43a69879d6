/**
 * DNS servers for discovery tests, both on 127.0.0.1 and a port of their own:
 *
 * - `startDnsmasq`: a real dnsmasq answering SRV, A and AAAA records for one domain (unknown names in
 *   it are NXDOMAIN), restartable on the same port with new records.
 * - `startFakeDns`: a scriptable server in Bun (UDP, plus TCP on the same port) that answers each
 *   query as a handler says: records, an error rcode, a truncated UDP answer, or silence.
 * - `queryDns`: one raw query, for what `node:dns` does not show (SRV TTLs, the TC bit).
 *
 * What Bun 1.4.5's resolver (`node:dns/promises` `Resolver`, c-ares) reports, measured against
 * `startFakeDns` (pinned in test/e2e/dns-support.test.ts) with one server and `tries: 1`:
 *
 * | server does                         | `resolveSrv` / `resolve4` gives (`errno`)                     |
 * | ----------------------------------- | ------------------------------------------------------------- |
 * | NOERROR with records                | the records, in the order sent                                |
 * | NOERROR without records (NODATA)    | `ENOTFOUND` (4); Node 20 says `ENODATA`                       |
 * | NXDOMAIN                            | `ENOTFOUND` (4)                                               |
 * | SERVFAIL                            | `ESERVFAIL` (3)                                               |
 * | REFUSED                             | `EREFUSED` (6)                                                |
 * | FORMERR / NOTIMP                    | `EFORMERR` (2) / `ENOTIMP` (5)                                |
 * | no reply                            | `ETIMEOUT` (12), late: see below                              |
 * | nothing listening (ICMP refused)    | `ETIMEOUT` (12) after max(`timeout`, 250 ms), never ECONNREFUSED |
 * | UDP reply with TC set, no records   | retried over TCP on the same port; the TCP answer is used     |
 * | records with TTL 0                  | returned (`ttl: 0`), never served from a cache                |
 *
 * - Error rcodes fail at once after one query, whatever `tries` says (no retry of the same server).
 * - A silent server's `timeout` is rounded up to whole seconds: `timeout: 300` fails after 1.0 s,
 *   1500 after 2.0 s; further tries wait longer (300 × 3 tries → 4.0 s, 1000 × 2 → 3.0 s, 1000 × 3 → 6.0 s).
 * - Errors carry `code`, `errno`, `syscall` (`querySrv`, `queryA`, ...) and `hostname`.
 * - c-ares caches positive answers per `Resolver` for their TTL: a repeat within it never reaches the
 *   server, so tests that change records use TTL 0 or a fresh `Resolver`. Negative answers from
 *   both servers here are not cached.
 *
 * @module
 */
import type { Subprocess, TCPSocketListener } from "bun";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { Resolver } from "node:dns/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One `--srv-host`: `name` is the full service name, e.g. `_etcd-client._tcp.example.com`. */
export interface SrvRecord {
  name: string;
  target: string;
  port: number;
  priority: number;
  weight: number;
}

/** A host name and its addresses (dnsmasq: one `--host-record` per address). */
export interface HostRecord {
  name: string;
  ipv4?: string[];
  ipv6?: string[];
}

export interface DnsmasqOptions {
  srv: SrvRecord[];
  hosts: HostRecord[];
  /** TTL of every record served, in seconds. 0 keeps c-ares from caching anything. @default 0 */
  ttl?: number;
  /** The domain dnsmasq is authoritative for: unknown names under it get NXDOMAIN (else REFUSED). */
  domain: string;
}

export interface Dnsmasq {
  port: number;
  /** `127.0.0.1:<port>`, the form `Resolver.setServers` takes. */
  server: string;
  /** Replaces the records: stops dnsmasq and starts it again on the same port, resolving once it answers. */
  restart(opts: DnsmasqOptions): Promise<void>;
  /** Kills dnsmasq and removes its dir. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Our exit hook for a dnsmasq nobody stopped: a `sh` that SIGKILLs `pid` and removes `dir` once its
 * stdin (a pipe only we hold) reaches EOF, which the kernel brings about when this process ends,
 * however it ends (SIGKILL included). Not `process.on("exit")`: `bun test` never emits it. Not
 * `setpriv --pdeathsig`: dnsmasq's credential changes clear it. Kill the watchdog before `pid` so it
 * never fires at a reused pid.
 */
function killWhenWeEnd(pid: number, dir: string): Subprocess<"pipe", "ignore", "ignore"> {
  const script = 'read _ || { kill -9 "$0"; rm -rf "$1"; } 2>/dev/null';
  const watchdog = Bun.spawn(["sh", "-c", script, String(pid), dir], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
  watchdog.unref();
  return watchdog;
}

/** dnsmasq on PATH, else where Debian's dnsmasq-base puts it (/usr/sbin is not on every PATH). */
function dnsmasqPath(): string {
  const path = Bun.which("dnsmasq") ?? "/usr/sbin/dnsmasq";
  if (!existsSync(path)) throw new Error("dnsmasq not found (Debian: apt-get install dnsmasq-base, or run scripts/ensure-deps.sh)");
  return path;
}

/** A port free on 127.0.0.1 for both UDP and TCP right now (both bound, then released). */
async function freeUdpTcpPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    try {
      Bun.listen({ hostname: "127.0.0.1", port: udp.port, socket: { data() {} } }).stop(true);
      return udp.port;
    } catch {
      // Taken for TCP: try another UDP port.
    } finally {
      udp.close();
    }
  }
  throw new Error("no port free for both UDP and TCP on 127.0.0.1 after 20 attempts");
}

function dnsmasqArgs(opts: DnsmasqOptions, port: number, dir: string): string[] {
  const domain = opts.domain.replace(/\.$/, "");
  return [
    dnsmasqPath(),
    "--keep-in-foreground",
    // No /etc/dnsmasq.conf, no upstream servers, no /etc/hosts: only the records given here.
    "--conf-file=/dev/null",
    "--no-resolv",
    "--no-hosts",
    `--port=${port}`,
    "--listen-address=127.0.0.1",
    "--bind-interfaces",
    `--local=/${domain}/`,
    ...opts.srv.map((s) => `--srv-host=${s.name},${s.target},${s.port},${s.priority},${s.weight}`),
    ...opts.hosts.flatMap((h) => [...(h.ipv4 ?? []), ...(h.ipv6 ?? [])].map((ip) => `--host-record=${h.name},${ip}`)),
    `--local-ttl=${opts.ttl ?? 0}`,
    // Stay who we are: run as root, dnsmasq would otherwise switch to `nobody`.
    "--user=root",
    `--pid-file=${join(dir, "dnsmasq.pid")}`,
  ];
}

/** Error codes that mean a server answered (with an error rcode), as opposed to none answering. */
const ANSWERED = new Set(["ENOTFOUND", "ENODATA", "ESERVFAIL", "EREFUSED", "EFORMERR", "ENOTIMP"]);

/**
 * Starts dnsmasq on a free loopback port serving `opts`, and resolves once it answers a query for
 * the first SRV name (or the domain when there is none). A port taken between the probe and
 * dnsmasq's bind is retried on a new one.
 *
 * @throws when dnsmasq exits or does not answer within 5 s, with its stderr.
 * @example
 * const dns = await startDnsmasq({ domain: "example.com", ttl: 0,
 *   srv: [{ name: "_etcd-client._tcp.example.com", target: "m0.example.com", port: 2379, priority: 10, weight: 0 }],
 *   hosts: [{ name: "m0.example.com", ipv4: ["127.0.0.1"] }] });
 * resolver.setServers([dns.server]);
 */
export async function startDnsmasq(opts: DnsmasqOptions): Promise<Dnsmasq> {
  const dir = mkdtempSync(join(tmpdir(), "dnsmasq-"));
  let proc: Subprocess<"ignore", "ignore", "pipe"> | undefined;
  let watchdog: Subprocess<"pipe", "ignore", "ignore"> | undefined;
  const kill = async () => {
    if (watchdog) {
      watchdog.kill("SIGKILL");
      await watchdog.exited;
      watchdog = undefined;
    }
    if (!proc) return;
    proc.kill("SIGKILL");
    await proc.exited;
    proc = undefined;
  };
  const launch = async (o: DnsmasqOptions, port: number) => {
    const p = Bun.spawn(dnsmasqArgs(o, port, dir), { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    proc = p;
    watchdog = killWhenWeEnd(p.pid, dir);
    const stderr = new Response(p.stderr).text();
    const server = `127.0.0.1:${port}`;
    const probe = o.srv[0]?.name ?? o.domain;
    const deadline = performance.now() + 5000;
    // Poll with raw queries: a Resolver's first try against a port not yet bound costs at least 250 ms,
    // while a raw query learns it at once from the ICMP port-unreachable.
    for (;;) {
      if (p.exitCode !== null || p.signalCode !== null) {
        await kill();
        throw new DnsmasqExited(`dnsmasq exited (${p.exitCode ?? p.signalCode}) on port ${port}:\n${await stderr}`);
      }
      if (await queryDns(server, probe, o.srv.length > 0 ? "SRV" : "A", 100).then(() => true, () => false)) break;
      if (performance.now() > deadline) {
        await kill();
        throw new Error(`dnsmasq on port ${port} did not answer within 5 s:\n${await stderr}`);
      }
      await Bun.sleep(10);
    }
    // And once through c-ares, as the code under test will ask.
    const resolver = new Resolver({ timeout: 1000, tries: 1 });
    resolver.setServers([server]);
    try {
      await (o.srv.length > 0 ? resolver.resolveSrv(probe) : resolver.resolve4(probe));
    } catch (e) {
      if (!ANSWERED.has((e as NodeJS.ErrnoException).code ?? "")) {
        await kill();
        throw new Error(`dnsmasq on port ${port} answers raw queries but node:dns gets ${String(e)}`);
      }
    }
  };

  let port = 0;
  try {
    for (let attempt = 0; ; attempt++) {
      port = await freeUdpTcpPort();
      try {
        await launch(opts, port);
        break;
      } catch (e) {
        if (!(e instanceof DnsmasqExited) || attempt >= 2) throw e;
      }
    }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    port,
    server: `127.0.0.1:${port}`,
    async restart(next) {
      await kill();
      await launch(next, port);
    },
    async stop() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

class DnsmasqExited extends Error {}

// ---------------------------------------------------------------------------------------------
// Wire format (RFC 1035 §4): header, one question, answer records.

export type Rcode = "NOERROR" | "FORMERR" | "SERVFAIL" | "NXDOMAIN" | "NOTIMP" | "REFUSED";
const RCODES: Record<Rcode, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };
const TYPES: Record<string, number> = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 };
const typeName = (n: number) => Object.keys(TYPES).find((k) => TYPES[k] === n) ?? `TYPE${n}`;
const rcodeName = (n: number) => (Object.keys(RCODES) as Rcode[]).find((k) => RCODES[k] === n) ?? `RCODE${n}`;

/** A record the fake server sends. `name` defaults to the question's name. */
export type FakeRecord =
  | { type: "SRV"; name?: string; ttl: number; priority: number; weight: number; port: number; target: string }
  | { type: "A"; name?: string; ttl: number; address: string }
  | { type: "AAAA"; name?: string; ttl: number; address: string };

/** How the fake server answers one query. */
export interface FakeAnswer {
  /** @default "NOERROR" */
  rcode?: Rcode;
  answers?: FakeRecord[];
  /** Over UDP: reply with the TC bit set and no records (the client should retry over TCP, which gets the full answer). */
  truncate?: boolean;
  /** Send nothing at all, over UDP or TCP (the client times out). */
  drop?: boolean;
}

/** A query as the fake server saw it. `name` is lower-cased and has no trailing dot. */
export interface FakeQuery {
  name: string;
  /** `SRV`, `A`, `AAAA`, ... or `TYPE<n>` for types without a name here. */
  type: string;
  id: number;
  transport: "udp" | "tcp";
}

export interface FakeDns {
  port: number;
  /** `127.0.0.1:<port>`, the form `Resolver.setServers` takes. */
  server: string;
  /** Every query received, in order. */
  queries: FakeQuery[];
  /** Closes the UDP socket and the TCP listener (and its connections). */
  close(): void;
}

/** Bytes of a DNS message under construction. */
class Writer {
  private bytes: number[] = [];
  u8(v: number) {
    this.bytes.push(v & 0xff);
    return this;
  }
  u16(v: number) {
    return this.u8(v >> 8).u8(v);
  }
  u32(v: number) {
    return this.u16(v >>> 16).u16(v);
  }
  raw(b: ArrayLike<number>) {
    for (let i = 0; i < b.length; i++) this.u8(b[i]!);
    return this;
  }
  /** A name as uncompressed labels. */
  name(name: string) {
    for (const label of name.replace(/\.$/, "").split(".").filter((l) => l !== "")) {
      const b = new TextEncoder().encode(label);
      if (b.length > 63) throw new Error(`DNS label longer than 63 bytes: ${label}`);
      this.u8(b.length).raw(b);
    }
    return this.u8(0);
  }
  /** A 16-bit length, then what `fill` writes. */
  sized(fill: (w: Writer) => void) {
    const inner = new Writer();
    fill(inner);
    return this.u16(inner.bytes.length).raw(inner.bytes);
  }
  done() {
    return new Uint8Array(this.bytes);
  }
}

/** Reads a possibly compressed name at `offset`; returns it and the offset after it in place. */
function readName(msg: Uint8Array, offset: number): { name: string; end: number } {
  const labels: string[] = [];
  let end = -1;
  for (let steps = 0; steps < 256; steps++) {
    const len = msg[offset];
    if (len === undefined) throw new Error("name runs past the message");
    if ((len & 0xc0) === 0xc0) {
      if (end < 0) end = offset + 2;
      offset = ((len & 0x3f) << 8) | (msg[offset + 1] ?? 0);
      continue;
    }
    if (len === 0) return { name: labels.join("."), end: end < 0 ? offset + 1 : end };
    if (offset + 1 + len > msg.length) throw new Error("label runs past the message");
    labels.push(new TextDecoder().decode(msg.subarray(offset + 1, offset + 1 + len)));
    offset += 1 + len;
  }
  throw new Error("name compression loop");
}

const u16 = (msg: Uint8Array, at: number) => ((msg[at] ?? 0) << 8) | (msg[at + 1] ?? 0);
const u32 = (msg: Uint8Array, at: number) => u16(msg, at) * 0x10000 + u16(msg, at + 2);

function ipv4Bytes(address: string): number[] {
  const parts = address.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`not an IPv4 address: ${address}`);
  return parts;
}

/** 16 bytes of an IPv6 address in hex groups with at most one `::` (no embedded IPv4 form). */
function ipv6Bytes(address: string): number[] {
  const halves = address.split("::");
  const groups = (s: string | undefined) => (s ? s.split(":") : []);
  const head = groups(halves[0]);
  const tail = groups(halves[1]);
  const fill = 8 - head.length - tail.length;
  const all = halves.length === 2 ? [...head, ...Array<string>(fill).fill("0"), ...tail] : head;
  if (halves.length > 2 || fill < 0 || all.length !== 8 || all.some((g) => !/^[0-9a-f]{1,4}$/i.test(g))) {
    throw new Error(`not an IPv6 address in hex groups: ${address}`);
  }
  return all.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff]);
}

interface ParsedQuery {
  id: number;
  flags: number;
  name: string;
  qtype: number;
  /** The question exactly as sent (c-ares may randomise its case and checks the echo). */
  question: Uint8Array;
}

function parseQuery(msg: Uint8Array): ParsedQuery | undefined {
  if (msg.length < 12 || u16(msg, 4) < 1 || (msg[2]! & 0x80) !== 0) return undefined;
  try {
    const { name, end } = readName(msg, 12);
    if (end + 4 > msg.length) return undefined;
    return { id: u16(msg, 0), flags: u16(msg, 2), name: name.toLowerCase(), qtype: u16(msg, end), question: msg.slice(12, end + 4) };
  } catch {
    return undefined;
  }
}

function encodeResponse(q: ParsedQuery, answer: FakeAnswer, truncated: boolean): Uint8Array {
  const records = truncated ? [] : (answer.answers ?? []);
  const opcode = (q.flags >> 11) & 0xf;
  const rd = q.flags & 0x0100;
  const flags = 0x8000 | (opcode << 11) | 0x0400 | (truncated ? 0x0200 : 0) | rd | 0x0080 | RCODES[answer.rcode ?? "NOERROR"];
  const w = new Writer().u16(q.id).u16(flags).u16(1).u16(records.length).u16(0).u16(0).raw(q.question);
  for (const r of records) {
    w.name(r.name ?? q.name).u16(TYPES[r.type]!).u16(1).u32(r.ttl);
    switch (r.type) {
      case "SRV":
        w.sized((d) => d.u16(r.priority).u16(r.weight).u16(r.port).name(r.target));
        break;
      case "A":
        w.sized((d) => d.raw(ipv4Bytes(r.address)));
        break;
      case "AAAA":
        w.sized((d) => d.raw(ipv6Bytes(r.address)));
        break;
    }
  }
  return w.done();
}

/**
 * Starts a DNS server on a free loopback port, UDP and TCP, that answers every query with what
 * `handler` returns for it (it may return a promise, e.g. to answer late). Queries it cannot parse
 * are ignored; an exception in `handler` sends no reply and fails the running test.
 *
 * @example
 * const dns = await startFakeDns((q) => q.type === "SRV"
 *   ? { answers: [{ type: "SRV", ttl: 0, priority: 10, weight: 0, port: 2379, target: "m0.example.com" }] }
 *   : { rcode: "NXDOMAIN" });
 * resolver.setServers([dns.server]);
 */
export async function startFakeDns(handler: (q: FakeQuery) => FakeAnswer | Promise<FakeAnswer>): Promise<FakeDns> {
  const queries: FakeQuery[] = [];
  /** The reply to `msg`, or undefined for none. */
  const reply = async (msg: Uint8Array, transport: "udp" | "tcp"): Promise<Uint8Array | undefined> => {
    const parsed = parseQuery(msg);
    if (!parsed) return undefined;
    const q: FakeQuery = { name: parsed.name, type: typeName(parsed.qtype), id: parsed.id, transport };
    queries.push(q);
    const answer = await handler(q);
    if (answer.drop) return undefined;
    return encodeResponse(parsed, answer, transport === "udp" && answer.truncate === true);
  };

  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = await Bun.udpSocket({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        async data(socket, data, port, address) {
          const out = await reply(data, "udp");
          if (out) socket.send(out, port, address);
        },
        // A late reply to a client that has gone comes back as an ICMP port-unreachable (ECONNREFUSED):
        // harmless here, but without a handler it would crash the test process.
        error() {},
      },
    });
    let tcp: TCPSocketListener<TcpState>;
    try {
      tcp = Bun.listen<TcpState>({
        hostname: "127.0.0.1",
        port: udp.port,
        socket: {
          // One shared `data` object for all connections (docs/bun.md, trap 7): set per socket in open.
          open(socket) {
            socket.data = { inbox: new Uint8Array(0), outbox: new Uint8Array(0) };
          },
          async data(socket, chunk) {
            const st = socket.data;
            st.inbox = concat(st.inbox, chunk);
            // TCP messages are framed by a 2-byte length (RFC 1035 §4.2.2).
            while (st.inbox.length >= 2 && st.inbox.length >= 2 + u16(st.inbox, 0)) {
              const msg = st.inbox.slice(2, 2 + u16(st.inbox, 0));
              st.inbox = st.inbox.slice(2 + msg.length);
              const out = await reply(msg, "tcp");
              if (out) flush(socket, concat(new Writer().u16(out.length).done(), out));
            }
          },
          drain(socket) {
            flush(socket, new Uint8Array(0));
          },
          // A client resetting its connection is not the server's failure.
          error() {},
        },
      });
    } catch {
      udp.close();
      continue;
    }
    return {
      port: udp.port,
      server: `127.0.0.1:${udp.port}`,
      queries,
      close() {
        udp.close();
        tcp.stop(true);
      },
    };
  }
  throw new Error("no port free for both UDP and TCP on 127.0.0.1 after 20 attempts");
}

interface TcpState {
  inbox: Uint8Array;
  outbox: Uint8Array;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Queues `bytes` and writes what the socket takes: `write()` short-writes and does not queue (docs/bun.md, trap 1). */
function flush(socket: { data: TcpState; write(b: Uint8Array): number }, bytes: Uint8Array) {
  const st = socket.data;
  st.outbox = concat(st.outbox, bytes);
  if (st.outbox.length === 0) return;
  const n = socket.write(st.outbox);
  st.outbox = n > 0 ? st.outbox.slice(n) : n < 0 ? new Uint8Array(0) : st.outbox;
}

// ---------------------------------------------------------------------------------------------
// A raw client, for what node:dns hides.

export interface RawRecord {
  name: string;
  type: string;
  ttl: number;
  /** Decoded for A (`1.2.3.4`), AAAA (`0:0:...:1`, uncompressed) and SRV (`priority weight port target`); else hex. */
  data: string;
}

export interface RawResponse {
  rcode: string;
  truncated: boolean;
  answers: RawRecord[];
}

function decodeRdata(msg: Uint8Array, type: number, at: number, len: number): string {
  const rd = msg.subarray(at, at + len);
  if (type === TYPES.A && len === 4) return [...rd].join(".");
  if (type === TYPES.AAAA && len === 16) return Array.from({ length: 8 }, (_, i) => u16(rd, 2 * i).toString(16)).join(":");
  if (type === TYPES.SRV) return `${u16(msg, at)} ${u16(msg, at + 2)} ${u16(msg, at + 4)} ${readName(msg, at + 6).name}`;
  return Buffer.from(rd).toString("hex");
}

/**
 * Sends one query for `name`/`type` over UDP to `server` (`host:port`) and decodes the answer
 * section, keeping each record's TTL. No retries, no TCP fallback: a truncated reply is returned as is.
 *
 * @throws when no reply arrives within `timeoutMs`, or at once when nothing listens there. @default timeoutMs 1000
 * @example (await queryDns(dns.server, "_etcd-client._tcp.example.com", "SRV")).answers[0]?.ttl
 */
export async function queryDns(server: string, name: string, type: "SRV" | "A" | "AAAA", timeoutMs = 1000): Promise<RawResponse> {
  const sep = server.lastIndexOf(":");
  const host = server.slice(0, sep).replace(/^\[|\]$/g, "");
  const port = Number(server.slice(sep + 1));
  const id = Math.floor(Math.random() * 0x10000);
  const query = new Writer().u16(id).u16(0x0100).u16(1).u16(0).u16(0).u16(0).name(name).u16(TYPES[type]!).u16(1).done();
  const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>();
  const socket = await Bun.udpSocket({
    hostname: host.includes(":") ? "::" : "0.0.0.0",
    socket: {
      data(_s, data) {
        if (u16(data, 0) === id) resolve(data);
      },
      // An ICMP port-unreachable arrives here as ECONNREFUSED (without this handler it crashes the
      // process). Bun passes the error as the only argument, not (socket, error) as bun.d.ts says.
      error(e: unknown) {
        reject(new Error(`${server} refused ${type} ${name} (nothing listening): ${String(e)}`));
      },
    },
  });
  const timer = setTimeout(() => reject(new Error(`no reply from ${server} to ${type} ${name} within ${timeoutMs} ms`)), timeoutMs);
  try {
    socket.send(query, port, host);
    const msg = await promise;
    const answers: RawRecord[] = [];
    let at = 12;
    for (let i = 0; i < u16(msg, 4); i++) at = readName(msg, at).end + 4;
    for (let i = 0; i < u16(msg, 6); i++) {
      const rr = readName(msg, at);
      const rtype = u16(msg, rr.end);
      const len = u16(msg, rr.end + 8);
      answers.push({ name: rr.name, type: typeName(rtype), ttl: u32(msg, rr.end + 4), data: decodeRdata(msg, rtype, rr.end + 10, len) });
      at = rr.end + 10 + len;
    }
    return { rcode: rcodeName(msg[3]! & 0xf), truncated: (msg[2]! & 0x02) !== 0, answers };
  } finally {
    clearTimeout(timer);
    socket.close();
  }
}
