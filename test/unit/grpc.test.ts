/**
 * etcd's Maintenance.Status over gRPC (src/health/grpc.ts): the StatusResponse decoder on a reply
 * captured from etcd 3.4 and on hand-made messages; the call against real etcd 3.4 members with the
 * JSON API off (plain, TLS, TLS with client certificates required); and each kind of failure, with
 * fake peers on 127.0.0.1 that refuse, hang, speak HTTP/1.1, answer a gRPC error, reset, send
 * GOAWAY or never stop sending. Also pins the node:http2 behaviour the module works around
 * (docs/bun.md, "node:http2: destroy() does not cancel a pending connect").
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as httpServer } from "node:http";
import http2, { type Http2Session, type ServerHttp2Stream } from "node:http2";
import { createServer as netServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as tlsServer } from "node:tls";
import { decodeStatusResponse, GrpcFailure, grpcStatus, type MemberStatus } from "../../src/health/grpc.ts";
import type { HttpTarget } from "../../src/http-client.ts";
import { MAX_REPLY_BYTES } from "../../src/limits.ts";
import { startBlackhole } from "../support/blackhole.ts";
import { makeCerts, type Certs } from "../support/certs.ts";
import { startCluster, type Cluster } from "../support/cluster.ts";
import { fdCount, waitFor } from "../support/net.ts";

/** The StatusResponse etcd 3.4.23 (1 member, --name x) sent, after its 5-byte gRPC prefix `000000003d`. */
const CAPTURED = Buffer.from("0a1a08b9aec4abb989e5f7a70110fbfa8ba392e69eebdd01180120021206332e342e32331880a00120fbfa8ba392e69eebdd0128053002380548808001", "hex");
/** That reply as it came on the wire: prefix (not compressed, length 0x3d) and message. */
const CAPTURED_FRAME = Buffer.concat([Buffer.from("000000003d", "hex"), CAPTURED]);

/** Protobuf encoding for hand-made messages: a varint, a field key, and whole fields. */
function varint(v: bigint | number): Buffer {
  let n = BigInt(v);
  const out: number[] = [];
  do {
    const low = Number(n & 0x7fn);
    n >>= 7n;
    out.push(n > 0n ? low | 0x80 : low);
  } while (n > 0n);
  return Buffer.from(out);
}
const key = (field: number, wire: number) => varint((BigInt(field) << 3n) | BigInt(wire));
const vField = (field: number, v: bigint | number) => Buffer.concat([key(field, 0), varint(v)]);
const bField = (field: number, bytes: Buffer | string) => {
  const b = Buffer.from(bytes);
  return Buffer.concat([key(field, 2), varint(b.length), b]);
};
const fixed = (field: number, wire: 1 | 5) => Buffer.concat([key(field, wire), Buffer.alloc(wire === 1 ? 8 : 4, 0xab)]);

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

const plain = (port: number): HttpTarget => ({ host: "127.0.0.1", port, tls: null });

/** The call's failure (the test fails if it resolves, or rejects with anything but a GrpcFailure). */
async function failure(target: HttpTarget, timeoutMs = 2000): Promise<GrpcFailure> {
  const r: unknown = await grpcStatus(target, timeoutMs).then((s) => ({ resolved: s }), (e: unknown) => e);
  if (!(r instanceof GrpcFailure)) throw new Error(`expected a GrpcFailure, got ${JSON.stringify(r)}`);
  return r;
}

/** A node:net (or node:tls) server on 127.0.0.1 port 0, closed with its connections at cleanup. */
async function rawServer(onSocket: (s: Socket) => void, tlsOptions?: { cert: string; key: string }): Promise<{ port: number; open: Set<Socket> }> {
  const open = new Set<Socket>();
  const handle = (s: Socket) => {
    open.add(s);
    s.on("error", () => {}).on("close", () => open.delete(s));
    onSocket(s);
  };
  const srv: Server = tlsOptions === undefined ? netServer(handle) : tlsServer(tlsOptions, handle).on("tlsClientError", () => {});
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  cleanup.push(async () => {
    for (const s of open) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as { port: number }).port, open };
}

/** A node:http2 h2c server answering each stream with `answer`, closed with its sessions at cleanup. */
async function h2Server(answer: (stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void): Promise<{ port: number; streams: ServerHttp2Stream[] }> {
  const sessions = new Set<Http2Session>();
  const streams: ServerHttp2Stream[] = [];
  const srv = http2.createServer();
  srv.on("session", (s) => {
    sessions.add(s);
    s.on("error", () => {}).on("close", () => sessions.delete(s));
  });
  srv.on("stream", (s, headers) => {
    const stream = s as ServerHttp2Stream;
    streams.push(stream);
    stream.on("error", () => {});
    answer(stream, headers);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  cleanup.push(async () => {
    for (const s of sessions) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as { port: number }).port, streams };
}

/** A gRPC reply: headers, `body` as DATA, then trailers with `grpcStatus`. */
function grpcReply(stream: ServerHttp2Stream, body: Buffer, trailers: Record<string, string> = { "grpc-status": "0" }): void {
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  stream.on("wantTrailers", () => stream.sendTrailers(trailers));
  stream.end(body);
}

/** One HTTP/2 frame: 3-byte length, type, flags, stream ID, payload. */
function h2Frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** A hand-written HTTP/2 peer: once the client's preface has come, sends its SETTINGS and then `then`. */
function afterPreface(then: (s: Socket) => void): (s: Socket) => void {
  return (s) => {
    let got = 0;
    let done = false;
    s.on("data", (d: Buffer) => {
      got += d.length;
      if (done || got < 24) return;
      done = true;
      s.write(h2Frame(4, 0, 0));
      then(s);
    });
  };
}

/** Sockets of this host in SYN_SENT towards 127.0.0.1:port (/proc/net/tcp: remote address, state 02). */
function synSent(port: number): number {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1).filter((l) => {
    const f = l.trim().split(/\s+/);
    return f[2] === remote && f[3] === "02";
  }).length;
}

/** Records the timers of exactly `delayMs` set through the global setTimeout while it is installed, and which are still pending. */
function watchTimers(delayMs: number) {
  const real = { set: globalThis.setTimeout, clear: globalThis.clearTimeout };
  const pending = new Set<unknown>();
  let seen = 0;
  globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const t = real.set(() => {
      pending.delete(t);
      fn(...args);
    }, ms);
    if (ms === delayMs) {
      seen++;
      pending.add(t);
    }
    return t;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((t: Parameters<typeof clearTimeout>[0]) => {
    pending.delete(t);
    real.clear(t);
  }) as typeof clearTimeout;
  const restore = () => Object.assign(globalThis, { setTimeout: real.set, clearTimeout: real.clear });
  cleanup.push(restore);
  return { pending, seen: () => seen, restore };
}

describe("decodeStatusResponse", () => {
  test("a reply captured from etcd 3.4.23: 64-bit IDs exact as decimal strings, version, term", () => {
    const s = decodeStatusResponse(CAPTURED);
    // What `etcdctl endpoint status -w json` printed for that member: cluster_id, member_id, leader.
    expect(s).toEqual({
      clusterId: "12101053776118486841",
      memberId: "15985099378392235387",
      leader: "15985099378392235387",
      isLearner: false,
      errors: [],
      version: "3.4.23",
      raftTerm: "2",
    });
    // Above 2^53: a JS number would have rounded them. Hex as etcdctl's table prints member IDs.
    expect(BigInt(s.memberId) > 2n ** 53n && BigInt(s.clusterId) > 2n ** 53n).toBe(true);
    expect(BigInt(s.memberId).toString(16)).toBe("ddd67b312462fd7b");
    // The member ID's varint bytes (after key 0x10), little-endian groups of 7 bits.
    const bytes = [...CAPTURED.subarray(CAPTURED.indexOf(0x10, 2) + 1, CAPTURED.indexOf(0x10, 2) + 11)];
    expect(bytes.reduce((v, b, i) => v | (BigInt(b & 0x7f) << BigInt(7 * i)), 0n)).toBe(BigInt(s.memberId));
  });

  test("errors (repeated field 8, alarms as etcd writes them), isLearner, a leader of 2^64-1", () => {
    const msg = Buffer.concat([
      bField(1, Buffer.concat([vField(1, 7n), vField(2, 2n ** 63n)])),
      bField(2, "3.5.9"),
      vField(4, 2n ** 64n - 1n),
      vField(6, 42),
      bField(8, "etcdserver: no leader"),
      bField(8, "memberID:15985099378392235387 alarm:NOSPACE "),
      vField(10, 1),
    ]);
    expect(decodeStatusResponse(msg)).toEqual({
      clusterId: "7",
      memberId: "9223372036854775808",
      leader: "18446744073709551615",
      isLearner: true,
      errors: ["etcdserver: no leader", "memberID:15985099378392235387 alarm:NOSPACE "],
      version: "3.5.9",
      raftTerm: "42",
    });
  });

  test("missing fields take protobuf's defaults; a header sent twice is merged", () => {
    expect(decodeStatusResponse(new Uint8Array(0))).toEqual({ clusterId: "0", memberId: "0", leader: "0", isLearner: false, errors: [], version: "", raftTerm: "0" });
    const split = Buffer.concat([bField(1, vField(1, 5)), bField(1, vField(2, 6)), vField(10, 0)]);
    expect(decodeStatusResponse(split)).toMatchObject({ clusterId: "5", memberId: "6", isLearner: false });
  });

  test("unknown fields of every wire type (0 varint, 1 64-bit, 2 bytes, 5 32-bit) are skipped, in the header too", () => {
    const unknown = Buffer.concat([vField(99, 2n ** 64n - 1n), fixed(100, 1), bField(101, "x".repeat(300)), fixed(102, 5), vField(536870911, 1)]);
    const header = Buffer.concat([unknown, vField(1, 11), fixed(3, 1), vField(2, 22), bField(5, "?")]);
    const msg = Buffer.concat([unknown, bField(1, header), unknown, vField(4, 22), bField(11, bField(1, "nested")), vField(6, 3), unknown]);
    expect(decodeStatusResponse(msg)).toEqual({ clusterId: "11", memberId: "22", leader: "22", isLearner: false, errors: [], version: "", raftTerm: "3" });
  });

  test("truncated or malformed input throws an Error saying what is wrong", () => {
    const cases: [string, Buffer, RegExp][] = [
      ["a varint cut short", Buffer.from([0x20, 0xff, 0xff]), /truncated varint/],
      ["a key cut short", Buffer.from([0x80]), /truncated varint/],
      ["a length past the end", Buffer.from([0x12, 0x05, 0x33]), /past the end/],
      ["a header length past the end", Buffer.from([0x0a, 0x40, 0x08, 0x01]), /past the end/],
      ["a varint over 10 bytes", Buffer.concat([Buffer.from([0x20]), Buffer.alloc(10, 0xff), Buffer.from([0x01])]), /varint/],
      ["a varint over 64 bits", Buffer.concat([Buffer.from([0x20]), Buffer.alloc(9, 0xff), Buffer.from([0x02])]), /overflows 64 bits/],
      ["a 64-bit field cut short", Buffer.concat([key(99, 1), Buffer.alloc(7)]), /truncated 64-bit/],
      ["a 32-bit field cut short", Buffer.concat([key(99, 5), Buffer.alloc(3)]), /truncated 32-bit/],
      ["a group (wire type 3)", key(99, 3), /unsupported wire type 3/],
      ["wire type 7", key(99, 7), /unsupported wire type 7/],
      ["field number 0", Buffer.from([0x00, 0x01]), /invalid field number 0/],
      ["leader as bytes", bField(4, "1"), /field 4: wire type 2, want 0/],
      ["the header as a varint", vField(1, 1), /header: wire type 0, want 2/],
      ["member_id as bytes", bField(1, bField(2, "1")), /ResponseHeader field 2: wire type 2, want 0/],
    ];
    for (const [what, bytes, message] of cases) expect(() => decodeStatusResponse(bytes), what).toThrow(message);
    // The captured reply cut anywhere inside a field.
    const boundaries = new Set([28, 36, 40, 51, 53, 55, 57]); // where its fields end
    for (let n = 1; n < CAPTURED.length; n++) if (!boundaries.has(n)) expect(() => decodeStatusResponse(CAPTURED.subarray(0, n)), `cut at ${n}`).toThrow(Error);
  });
});

describe("grpcStatus against etcd 3.4 with its JSON API off", () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({ size: 1, extraArgs: () => ["--enable-grpc-gateway=false"] });
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  test("the JSON status the default check asks for answers 404 there", async () => {
    const res = await fetch(`http://127.0.0.1:${cluster.members[0]!.clientPort}/v3/maintenance/status`, { method: "POST", body: "{}", headers: { connection: "close" } });
    await res.arrayBuffer();
    expect(res.status).toBe(404);
  });

  test("Maintenance.Status says what etcdctl endpoint status says: cluster and member IDs, and that the member leads", async () => {
    const s = await grpcStatus(plain(cluster.members[0]!.clientPort), 2000);
    const ctl = await cluster.etcdctl(["endpoint", "status", "-w", "json"]);
    expect(ctl.code).toBe(0);
    // etcdctl prints the IDs as bare JSON numbers above 2^53: read the digits, never JSON.parse them.
    expect(s.clusterId).toBe(/"cluster_id":(\d+)/.exec(ctl.stdout)![1]!);
    expect(s.memberId).toBe(/"member_id":(\d+)/.exec(ctl.stdout)![1]!);
    expect(s.memberId).toBe(await cluster.memberIdOf(0));
    expect(s.leader).toBe(s.memberId);
    expect(s).toMatchObject({ isLearner: false, errors: [], version: "3.4.23" } satisfies Partial<MemberStatus>);
    expect(BigInt(s.raftTerm) >= 1n).toBe(true);
  });

  test("the session and socket are closed when it settles, and its timer is cleared", async () => {
    const target = plain(cluster.members[0]!.clientPort);
    await grpcStatus(target, 2000);
    const timers = watchTimers(43_210);
    const before = fdCount(process.pid);
    await grpcStatus(target, 43_210);
    expect(fdCount(process.pid)).toBe(before);
    expect(timers.seen()).toBe(1);
    expect(timers.pending.size).toBe(0);
    timers.restore();
  });

  test("200 calls one after another leave no descriptor open", async () => {
    const target = plain(cluster.members[0]!.clientPort);
    await grpcStatus(target, 2000);
    const before = fdCount(process.pid);
    for (let i = 0; i < 200; i++) await grpcStatus(target, 2000);
    expect(fdCount(process.pid)).toBe(before);
  }, 30_000);
});

describe("grpcStatus over TLS (etcd 3.4, JSON API off, client certificates required)", () => {
  let dir: string;
  let certs: Certs;
  let cluster: Cluster;
  const pem = (path: string) => readFileSync(path, "utf8");
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "etcd-gateway-grpc-"));
    certs = await makeCerts(join(dir, "certs"));
    // etcd 3.4 asks for a client certificate whenever it has --trusted-ca-file, --client-cert-auth or not.
    const tls = { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true, clientCert: certs.client, clientKey: certs.clientKey };
    cluster = await startCluster({ size: 1, tls, extraArgs: () => ["--enable-grpc-gateway=false"] });
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The member, verified against the CA as 127.0.0.1 and presenting the client certificate, unless `tls` says otherwise. */
  const tlsTarget = (tls: Partial<NonNullable<HttpTarget["tls"]>>): HttpTarget => ({
    host: "127.0.0.1",
    port: cluster.members[0]!.clientPort,
    tls: { ca: pem(certs.ca), cert: pem(certs.client), key: pem(certs.clientKey), serverName: "127.0.0.1", verify: true, ...tls },
  });

  test("verified against its CA (server name an IP literal, or a DNS name of the certificate): the member's status", async () => {
    const id = await cluster.memberIdOf(0);
    for (const serverName of ["127.0.0.1", "localhost"]) {
      const s = await grpcStatus(tlsTarget({ serverName }), 2000);
      expect(s.memberId).toBe(id);
      expect(s.leader).toBe(id);
    }
  });

  test("verify false: any certificate is taken", async () => {
    const s = await grpcStatus(tlsTarget({ ca: undefined, verify: false, serverName: "elsewhere.invalid" }), 2000);
    expect(s.memberId).toBe(await cluster.memberIdOf(0));
  });

  test("no client certificate: kind tls, answered (the member's alert, in Go's words)", async () => {
    const f = await failure(tlsTarget({ cert: undefined, key: undefined }));
    expect(f).toMatchObject({ kind: "tls", answered: true, code: undefined });
    expect(f.message).toMatch(/^remote error: tls: /);
  });

  test("a certificate that does not verify: kind tls, answered, in Go's words", async () => {
    const otherCa = await failure(tlsTarget({ ca: pem(certs.otherCa) }));
    expect(otherCa).toMatchObject({ kind: "tls", answered: true, message: "tls: failed to verify certificate: x509: certificate signed by unknown authority" });
    // The IP literal is checked though it cannot be sent as SNI.
    const wrongName = await failure(tlsTarget({ serverName: "10.9.8.7" }));
    expect(wrongName).toMatchObject({ kind: "tls", answered: true, message: "tls: failed to verify certificate: x509: certificate is not valid for 10.9.8.7" });
  });

  test("TLS to the plain port of a member: kind tls, answered", async () => {
    const plainCluster = await startCluster({ size: 1, extraArgs: () => ["--enable-grpc-gateway=false"] });
    cleanup.push(() => plainCluster.stop());
    const f = await failure({ ...tlsTarget({}), port: plainCluster.members[0]!.clientPort });
    expect(f).toMatchObject({ kind: "tls", answered: true });
  }, 30_000);

  test("a TLS server that never finishes the handshake: timeout", async () => {
    const srv = await rawServer(() => {});
    const f = await failure({ host: "127.0.0.1", port: srv.port, tls: { ca: pem(certs.ca), serverName: "127.0.0.1", verify: true } }, 300);
    expect(f).toMatchObject({ kind: "timeout", answered: false });
  });

  test("a TLS server that does not offer h2 in ALPN: kind protocol", async () => {
    const srv = await rawServer(() => {}, { cert: pem(certs.server), key: pem(certs.serverKey) });
    const f = await failure({ host: "127.0.0.1", port: srv.port, tls: { ca: pem(certs.ca), serverName: "127.0.0.1", verify: true } });
    expect(f).toMatchObject({ kind: "protocol", answered: true });
    expect(f.message).toContain("ALPN");
  });
});

describe("grpcStatus failures, with fake peers on 127.0.0.1", () => {
  test("refused (a port bound, then closed): kind dial, not answered", async () => {
    const srv = netServer();
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const f = await failure(plain(port));
    expect(f).toMatchObject({ kind: "dial", answered: false, code: undefined, message: `dial tcp 127.0.0.1:${port}: connect: connection refused` });
    expect(f.name).toBe("GrpcFailure");
  });

  test("a name that does not resolve: kind dial", async () => {
    const f = await failure({ host: "member.grpc-test.invalid", port: 2379, tls: null });
    expect(f).toMatchObject({ kind: "dial", answered: false, message: "dial tcp: lookup member.grpc-test.invalid: no such host" });
  });

  test("a server that accepts and never answers: timeout within timeoutMs, nothing left open, no timer left", async () => {
    const srv = await rawServer((s) => s.resume());
    const before = fdCount(process.pid);
    const timers = watchTimers(300);
    const t0 = performance.now();
    const f = await failure(plain(srv.port), 300);
    const took = performance.now() - t0;
    timers.restore();
    expect(f).toMatchObject({ kind: "timeout", answered: false, message: "rpc error: code = DeadlineExceeded desc = context deadline exceeded (timeout 300ms)" });
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(300 + 250);
    expect(timers.pending.size).toBe(0);
    // The server's end goes once our socket has closed; then we are back where we started.
    await waitFor("the server to see the close", () => srv.open.size === 0, 2000);
    expect(fdCount(process.pid)).toBe(before);
  });

  test("a blackholed port (SYNs dropped): timeout, and the pending connect is cancelled", async () => {
    const hole = await startBlackhole();
    cleanup.push(() => hole.close());
    const before = fdCount(process.pid);
    const f = await failure(plain(hole.port), 300);
    expect(f).toMatchObject({ kind: "timeout", answered: false });
    expect(synSent(hole.port)).toBe(0);
    expect(fdCount(process.pid)).toBe(before);
  });

  test("an HTTP/1.1 server: kind protocol (or closed), answered", async () => {
    const srv = httpServer((_req, res) => res.end("hello"));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    cleanup.push(() => {
      srv.closeAllConnections();
      return new Promise<void>((r) => srv.close(() => r()));
    });
    const f = await failure(plain((srv.address() as { port: number }).port));
    expect(["protocol", "closed"]).toContain(f.kind);
    expect(f.answered).toBe(true);
  });

  test("a gRPC server without the service (Trailers-Only, grpc-status 12): kind status, code Unimplemented, grpc-go's words", async () => {
    const srv = await h2Server((stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12", "grpc-message": "unknown service etcdserverpb.Maintenance" }, { endStream: true });
    });
    const f = await failure(plain(srv.port));
    expect(f).toMatchObject({ kind: "status", answered: true, code: "Unimplemented", message: "rpc error: code = Unimplemented desc = unknown service etcdserverpb.Maintenance" });
  });

  test("grpc-status 14 in trailers after headers, percent-encoded message: kind status, code Unavailable", async () => {
    const srv = await h2Server((stream) => grpcReply(stream, Buffer.alloc(0), { "grpc-status": "14", "grpc-message": "etcdserver:%20not%20capable" }));
    const f = await failure(plain(srv.port));
    expect(f).toMatchObject({ kind: "status", code: "Unavailable", message: "rpc error: code = Unavailable desc = etcdserver: not capable" });
  });

  test("it sends what etcd's gRPC server expects, and takes a gRPC reply from a server other than etcd", async () => {
    const seen: http2.IncomingHttpHeaders[] = [];
    const srv = await h2Server((stream, headers) => {
      seen.push(headers);
      grpcReply(stream, CAPTURED_FRAME);
    });
    expect(await grpcStatus(plain(srv.port), 2000)).toEqual(decodeStatusResponse(CAPTURED));
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ ":method": "POST", ":path": "/etcdserverpb.Maintenance/Status", ":scheme": "http", ":authority": `127.0.0.1:${srv.port}`, "content-type": "application/grpc", te: "trailers" });
  });

  test("replies that are not gRPC, or break gRPC's framing: kind protocol, answered", async () => {
    const cases: [string, (s: ServerHttp2Stream) => void, RegExp][] = [
      ["a 404 in text/plain", (s) => {
        s.respond({ ":status": 404, "content-type": "text/plain" });
        s.end("nope");
      }, /^unexpected HTTP status code received from server: 404 \(Not Found\); transport: received unexpected content-type "text\/plain"$/],
      ["status 0 and no message", (s) => grpcReply(s, Buffer.alloc(0)), /no reply message/],
      ["no trailers", (s) => {
        s.respond({ ":status": 200, "content-type": "application/grpc" });
        s.end(CAPTURED_FRAME);
      }, /^server closed the stream without sending trailers$/],
      ["a compressed message", (s) => grpcReply(s, Buffer.concat([Buffer.from([1]), CAPTURED_FRAME.subarray(1)])), /compressed flag/],
      ["two messages", (s) => grpcReply(s, Buffer.concat([CAPTURED_FRAME, CAPTURED_FRAME])), /more than one reply message/],
      ["a message cut short", (s) => grpcReply(s, CAPTURED_FRAME.subarray(0, 20)), /truncated message/],
      ["a malformed protobuf", (s) => grpcReply(s, Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x05, 0x08])), /past the end/],
      ["a message declared over 64 KiB", (s) => {
        s.respond({ ":status": 200, "content-type": "application/grpc" });
        s.write(Buffer.from([0, 0, 1, 0, 0]));
      }, /larger than max \(65536 vs\. 65531\)/],
    ];
    for (const [what, answer, message] of cases) {
      const srv = await h2Server(answer);
      const f = await failure(plain(srv.port));
      expect({ what, kind: f.kind, answered: f.answered }).toEqual({ what, kind: "protocol", answered: true });
      expect(f.message, what).toMatch(message);
    }
  });

  test("an endless DATA stream: kind protocol after at most MAX_REPLY_BYTES, and the stream is cancelled", async () => {
    let sent = 0;
    const srv = await h2Server((stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" });
      const chunk = Buffer.alloc(16 << 10, 0x41);
      chunk.writeUInt32BE(0, 0); // a prefix that declares a small message, followed by more and more
      const pump = () => {
        if (stream.destroyed || stream.closed) return;
        sent += chunk.length;
        stream.write(chunk, () => setImmediate(pump));
      };
      pump();
    });
    const t0 = performance.now();
    const f = await failure(plain(srv.port), 5000);
    expect(f).toMatchObject({ kind: "protocol", answered: true, message: `grpc: reply larger than ${MAX_REPLY_BYTES} bytes` });
    expect(performance.now() - t0).toBeLessThan(2000);
    await waitFor("the server's stream to be closed", () => srv.streams[0]!.closed || srv.streams[0]!.destroyed, 2000);
    expect(sent).toBeLessThan(4 << 20);
  });

  test("closed after the preface, reset, GOAWAY or a refused stream before a reply: kind closed, answered", async () => {
    const rstFrame = (code: number) => {
      const p = Buffer.alloc(4);
      p.writeUInt32BE(code);
      return h2Frame(3, 0, 1, p);
    };
    const rst = (code: number) => afterPreface((s) => setImmediate(() => s.write(rstFrame(code))));
    // HEADERS of stream 1, END_HEADERS, in HPACK: `:status: 200` (static entry 8), `content-type: application/grpc` (entry 31's name, literal value).
    const headers = h2Frame(1, 4, 1, Buffer.concat([Buffer.from([0x88, 0x0f, 0x10, 0x10]), Buffer.from("application/grpc")]));
    const partOfMessage = h2Frame(0, 0, 1, Buffer.from([0, 0, 0, 0, 10, 1, 2]));
    const goaway = afterPreface((s) => {
      const p = Buffer.alloc(8);
      p.writeUInt32BE(11, 4); // last stream 0, ENHANCE_YOUR_CALM
      s.end(h2Frame(7, 0, 0, p));
    });
    const cases: [string, (s: Socket) => void, string | RegExp][] = [
      ["EOF at the preface", (s) => s.once("data", () => s.end()), "connection closed before a reply (EOF)"],
      ["a reset", (s) => s.once("data", () => s.resetAndDestroy()), /read: connection reset by peer$/],
      ["GOAWAY", goaway, "connection closed before a reply (GOAWAY, code 11 ENHANCE_YOUR_CALM)"],
      ["RST_STREAM REFUSED_STREAM", rst(7), "stream reset before a reply (code 7 REFUSED_STREAM)"],
      ["HEADERS, then RST_STREAM INTERNAL_ERROR", afterPreface((s) => setImmediate(() => s.write(Buffer.concat([headers, rstFrame(2)])))), "stream reset before a reply (code 2 INTERNAL_ERROR)"],
      ["HEADERS and part of a message, then EOF", afterPreface((s) => setImmediate(() => s.end(Buffer.concat([headers, partOfMessage])))), "connection closed before a reply (EOF)"],
    ];
    for (const [what, onSocket, message] of cases) {
      const srv = await rawServer(onSocket);
      const f = await failure(plain(srv.port));
      expect({ what, kind: f.kind, answered: f.answered }).toEqual({ what, kind: "closed", answered: true });
      expect(f.message, what).toMatch(message);
    }
    const srv = await rawServer(rst(1));
    expect(await failure(plain(srv.port))).toMatchObject({ kind: "protocol", message: "stream reset before a reply (code 1 PROTOCOL_ERROR)" });
  });

  test("a GOAWAY that still lets our stream finish: the reply is taken", async () => {
    const srv = await h2Server((stream) => {
      stream.session?.goaway(0, 1);
      grpcReply(stream, CAPTURED_FRAME);
    });
    expect((await grpcStatus(plain(srv.port), 2000)).memberId).toBe("15985099378392235387");
  });

  test("IPv6: the host in brackets where an address is written", async () => {
    const srv = netServer();
    await new Promise<void>((r) => srv.listen(0, "::1", r));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    expect(await failure({ host: "::1", port, tls: null })).toMatchObject({ kind: "dial", message: `dial tcp [::1]:${port}: connect: connection refused` });
  });
});

// Last: the leaked connect of this test holds a descriptor until the kernel gives up on it.
describe("Bun's node:http2 (docs/bun.md)", () => {
  test("http2.connect: session.destroy() does not cancel a pending connect (the socket stays in SYN_SENT)", async () => {
    const hole = await startBlackhole();
    cleanup.push(async () => {
      await hole.close();
      // With the listener gone the next SYN is refused, and Bun drops the socket.
      await waitFor("the leaked connect to end", () => synSent(hole.port) === 0, 20_000, 100);
    });
    const before = fdCount(process.pid);
    const session = http2.connect(`http://127.0.0.1:${hole.port}`);
    session.on("error", () => {});
    await waitFor("the connect to be in SYN_SENT", () => synSent(hole.port) === 1, 2000);
    const done = new Promise<void>((r) => session.on("close", () => r()));
    session.destroy();
    await done;
    // If this fails, Bun now cancels the connect: grpcStatus could let http2.connect dial itself.
    expect(synSent(hole.port)).toBe(1);
    expect(fdCount(process.pid)).toBe(before + 1);
  }, 30_000);
});
