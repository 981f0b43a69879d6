/**
 * The gateway's HTTP/1.1 client (src/http-client.ts) against real sockets on 127.0.0.1: replies
 * framed every way HTTP/1.x allows, the bounds on head and body, each kind of failure (and whether
 * the peer counts as having answered), kept-alive connections and the stale keep-alive race, the
 * proxy environment ignored, and TLS verified against the certificates of test/support/certs.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as netServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as tlsServer, type TLSSocket, type TlsOptions } from "node:tls";
import { HttpFailure, httpRequest, KeptConnection, requestUrl, type HttpReply, type HttpRequestSpec, type HttpTarget, type HttpTls, type RequestOptions } from "../../src/http-client.ts";
import { startBlackhole } from "../support/blackhole.ts";
import { makeCerts, type Certs } from "../support/certs.ts";
import { fdCount, waitFor } from "../support/net.ts";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

interface TestServer {
  port: number;
  /** Connections accepted so far (TLS: handshakes completed). */
  accepted: number;
  /** Connections open now. */
  open: Set<Socket>;
}

/** A server written with node:net (or node:tls with `tlsOptions`), closed with its connections at cleanup. */
async function startServer(onSocket: (s: Socket, n: number) => void, tlsOptions?: TlsOptions): Promise<TestServer> {
  const state: TestServer = { port: 0, accepted: 0, open: new Set() };
  const handle = (s: Socket) => {
    state.accepted++;
    state.open.add(s);
    s.on("error", () => {}).on("close", () => state.open.delete(s));
    onSocket(s, state.accepted);
  };
  const srv: Server = tlsOptions === undefined ? netServer(handle) : tlsServer(tlsOptions, handle).on("tlsClientError", () => {});
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  state.port = (srv.address() as { port: number }).port;
  cleanup.push(async () => {
    for (const s of state.open) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
  });
  return state;
}

interface SeenRequest {
  line: string;
  headers: Record<string, string>;
  body: string;
}

/** Calls `answer` with each request that arrives on `s` (head, and a body of Content-Length), in order. */
function onRequests(s: Socket, answer: (req: SeenRequest, s: Socket, n: number) => void): void {
  let buf = Buffer.alloc(0);
  let n = 0;
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const [line, ...lines] = buf.subarray(0, end).toString("latin1").split("\r\n");
      const headers = Object.fromEntries(lines.map((h) => [h.slice(0, h.indexOf(":")).toLowerCase(), h.slice(h.indexOf(":") + 1).trim()]));
      const length = Number(headers["content-length"] ?? 0);
      if (buf.length < end + 4 + length) return;
      const body = buf.subarray(end + 4, end + 4 + length).toString();
      buf = buf.subarray(end + 4 + length);
      answer({ line: line!, headers, body }, s, ++n);
    }
  });
}

/** A server answering every request with `reply` (given the request); it records what it saw. */
async function httpServer(reply: (req: SeenRequest, n: number) => string, tlsOptions?: TlsOptions) {
  const seen: SeenRequest[] = [];
  const srv = await startServer((s) => onRequests(s, (req, sock, n) => {
    seen.push(req);
    sock.write(reply(req, n));
  }), tlsOptions);
  return { srv, seen };
}

const ok = (body = "ok", extra = "") => `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
const plain = (port: number): HttpTarget => ({ host: "127.0.0.1", port, tls: null });
const GET: HttpRequestSpec = { method: "GET", path: "/version" };

/** The request's failure (the test fails if it resolves). */
async function failure(target: HttpTarget, spec: HttpRequestSpec, options: RequestOptions): Promise<HttpFailure> {
  const r: HttpReply | unknown = await httpRequest(target, spec, options).then((reply) => ({ resolved: reply }), (e: unknown) => e);
  if (!(r instanceof HttpFailure)) throw new Error(`expected an HttpFailure, got ${JSON.stringify(r)}`);
  return r;
}

/** Sets `vars` in process.env until cleanup. */
function setEnv(vars: Record<string, string | undefined>): void {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, value] of Object.entries(v)) {
      if (value === undefined) delete process.env[k];
      else process.env[k] = value;
    }
  };
  apply(vars);
  cleanup.push(() => apply(before));
}

describe("requests and replies", () => {
  test("GET: request line, default headers, Content-Length body, repeated headers joined", async () => {
    const { srv, seen } = await httpServer(() => ok("hello", "X-A: 1\r\nX-A: 2\r\nContent-Type: text/plain\r\n"));
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 2000 });
    expect(r).toEqual({ status: 200, headers: { "content-length": "5", "x-a": "1, 2", "content-type": "text/plain" }, body: "hello", truncated: false });
    expect(seen[0]!.line).toBe("GET /version HTTP/1.1");
    expect(seen[0]!.headers).toEqual({ host: `127.0.0.1:${srv.port}`, "user-agent": "etcd-gateway", connection: "close" });
  });

  test("POST: the body with Content-Length and Content-Type application/json; the caller's headers win", async () => {
    const { srv, seen } = await httpServer(() => ok("{}"));
    await httpRequest(plain(srv.port), { method: "POST", path: "/v3/maintenance/status", body: '{"a":"é"}' }, { timeoutMs: 2000 });
    expect(seen[0]!.line).toBe("POST /v3/maintenance/status HTTP/1.1");
    expect(seen[0]!.headers["content-length"]).toBe("10");
    expect(seen[0]!.headers["content-type"]).toBe("application/json");
    expect(seen[0]!.body).toBe('{"a":"é"}');
    await httpRequest(plain(srv.port), { method: "POST", path: "/x", body: "a=1", headers: { "content-type": "text/plain", host: "etcd.example:2379" } }, { timeoutMs: 2000 });
    expect(seen[1]!.headers).toMatchObject({ "content-type": "text/plain", host: "etcd.example:2379", "content-length": "3" });
  });

  test("a chunked reply is decoded, with chunk extensions and trailers, even one byte per write", async () => {
    const reply = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
    const srv = await startServer((s) => onRequests(s, () => {
      let i = 0;
      const next = () => {
        if (i < reply.length) s.write(reply[i++]!, () => setImmediate(next));
      };
      next();
    }));
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 5000 });
    expect(r.body).toBe("hello, world");
    expect(r.truncated).toBe(false);
  });

  test("an HTTP/1.0 reply without a length ends with the connection", async () => {
    const srv = await startServer((s) => onRequests(s, () => s.end("HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the end")));
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 2000 });
    expect(r).toEqual({ status: 200, headers: { server: "old" }, body: "until the end", truncated: false });
  });

  test("a 3xx is returned, not followed", async () => {
    const { srv, seen } = await httpServer(() => `HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n`);
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 2000 });
    expect(r.status).toBe(301);
    expect(r.headers.location).toBe("http://127.0.0.1:1/elsewhere");
    expect(seen.length).toBe(1);
  });

  test("HEAD, 204 and 304 replies have no body; a 100 Continue before the reply is skipped", async () => {
    const { srv } = await httpServer((req) =>
      req.line.startsWith("HEAD") ? "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
      : req.line.includes("/204") ? "HTTP/1.1 204 No Content\r\n\r\n"
      : req.line.includes("/304") ? "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
      : `HTTP/1.1 100 Continue\r\n\r\n${ok("after continue")}`);
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    const o = { timeoutMs: 2000, keep };
    expect(await httpRequest(plain(srv.port), { method: "HEAD", path: "/" }, o)).toMatchObject({ status: 200, body: "" });
    expect(await httpRequest(plain(srv.port), { method: "GET", path: "/204" }, o)).toMatchObject({ status: 204, body: "" });
    expect(await httpRequest(plain(srv.port), { method: "GET", path: "/304" }, o)).toMatchObject({ status: 304, body: "" });
    expect(await httpRequest(plain(srv.port), GET, o)).toMatchObject({ status: 200, body: "after continue" });
    // None of them waited for a body, and all went over one connection.
    expect(srv.accepted).toBe(1);
  });

  test("requestUrl: scheme by TLS, IPv6 in brackets", () => {
    expect(requestUrl(plain(2379), "/version")).toBe("http://127.0.0.1:2379/version");
    expect(requestUrl({ host: "::1", port: 2379, tls: { serverName: "x", verify: true } }, "/health?serializable=true")).toBe("https://[::1]:2379/health?serializable=true");
  });

  test("a path or header that cannot be sent throws at once (a caller's bug)", () => {
    expect(() => httpRequest(plain(1), { method: "GET", path: "/a b" }, { timeoutMs: 100 })).toThrow(TypeError);
    expect(() => httpRequest(plain(1), { method: "GET", path: "/", headers: { "x-a": "1\r\nx-b: 2" } }, { timeoutMs: 100 })).toThrow(TypeError);
  });
});

describe("bounds", () => {
  test("an endless body is cut at maxBytes: resolves truncated and closes the connection", async () => {
    const chunk = Buffer.alloc(64 << 10, "x");
    const srv = await startServer((s) => onRequests(s, () => {
      s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
      const pump = () => {
        while (!s.destroyed && s.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`));
      };
      s.on("drain", pump);
      pump();
    }));
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 5000, maxBytes: 100_000 });
    expect(r.truncated).toBe(true);
    expect(r.body.length).toBe(100_000);
    await waitFor("the server to see the connection closed", () => srv.open.size === 0);
  });

  test("a close-delimited body of exactly maxBytes is not truncated; one byte more is", async () => {
    for (const [size, truncated] of [[1000, false], [1001, true]] as const) {
      const srv = await startServer((s) => onRequests(s, () => s.end(`HTTP/1.0 200 OK\r\n\r\n${"y".repeat(size)}`)));
      const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, maxBytes: 1000 });
      expect({ length: r.body.length, truncated: r.truncated }).toEqual({ length: 1000, truncated });
    }
  });

  test("the default bound is 64 KiB", async () => {
    const { srv } = await httpServer(() => ok("z".repeat(100_000)));
    const r = await httpRequest(plain(srv.port), GET, { timeoutMs: 2000 });
    expect({ length: r.body.length, truncated: r.truncated }).toEqual({ length: 64 << 10, truncated: true });
  });

  test("a head over 16 KiB is a protocol failure", async () => {
    const { srv } = await httpServer(() => `HTTP/1.1 200 OK\r\n${"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(400)}Content-Length: 0\r\n\r\n`);
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "protocol", answered: true });
    expect(f.message).toBe(`Get "http://127.0.0.1:${srv.port}/version": net/http: server response headers exceeded 16384 bytes; aborted`);
  });
});

describe("failures", () => {
  test("garbage instead of a reply is a protocol failure quoting its first 40 bytes", async () => {
    const srv = await startServer((s) => s.write("SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n\u0001\u0002"));
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered, code: f.code }).toEqual({ kind: "protocol", answered: true, code: undefined });
    expect(f.message).toBe(`Get "http://127.0.0.1:${srv.port}/version": malformed HTTP response "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5"`);
  });

  test("a bad header line or Content-Length is a protocol failure", async () => {
    for (const reply of ["HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", "HTTP/2 200\r\n\r\n"]) {
      const srv = await startServer((s) => onRequests(s, () => s.write(reply)));
      const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
      expect(f.kind).toBe("protocol");
    }
  });

  test("a peer that closes after accept without a byte: closed, answered", async () => {
    const srv = await startServer((s) => s.end());
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "closed", answered: true });
    expect(f.message).toBe(`Get "http://127.0.0.1:${srv.port}/version": connection closed before a reply (EOF or reset)`);
    expect(srv.accepted).toBe(1); // a new connection is never retried
  });

  test("a peer that resets at the request: closed, answered, ECONNRESET", async () => {
    const srv = await startServer((s) => s.once("data", () => s.resetAndDestroy()));
    const f = await failure(plain(srv.port), { method: "POST", path: "/v3/maintenance/status", body: "{}" }, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered, code: f.code }).toEqual({ kind: "closed", answered: true, code: "ECONNRESET" });
    expect(f.message).toBe(`Post "http://127.0.0.1:${srv.port}/v3/maintenance/status": connection closed before a reply (EOF or reset)`);
  });

  test("a body cut short by the close: closed, unexpected EOF", async () => {
    const srv = await startServer((s) => onRequests(s, () => s.end("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")));
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
    expect(f.kind).toBe("closed");
    expect(f.message).toBe(`Get "http://127.0.0.1:${srv.port}/version": unexpected EOF`);
  });

  test("refused (a port bound, then closed): dial, not answered, in Go's words", async () => {
    const srv = netServer();
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const f = await failure(plain(port), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered, code: f.code }).toEqual({ kind: "dial", answered: false, code: "ECONNREFUSED" });
    expect(f.message).toBe(`dial tcp 127.0.0.1:${port}: connect: connection refused`);
  });

  test("out of descriptors: dial, not answered, `socket: too many open files` (http and https)", async () => {
    const { srv } = await httpServer(() => ok());
    const script = `
      const { openSync } = require("node:fs");
      const { httpRequest } = await import(${JSON.stringify(join(import.meta.dir, "../../src/http-client.ts"))});
      try { for (;;) openSync("/dev/null", "r"); } catch {}
      for (const tls of [null, { serverName: "localhost", verify: false }]) {
        const f = await httpRequest({ host: "127.0.0.1", port: ${srv.port}, tls }, { method: "GET", path: "/" }, { timeoutMs: 2000 }).catch((e) => e);
        console.log(JSON.stringify({ kind: f.kind, answered: f.answered, message: f.message }));
      }`;
    const child = Bun.spawn(["bash", "-c", 'ulimit -n 64 && exec "$0" -e "$1"', process.execPath, script], { stdout: "pipe", stderr: "ignore" });
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    const [out] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    clearTimeout(killer);
    const expected = { kind: "dial", answered: false, message: `dial tcp 127.0.0.1:${srv.port}: socket: too many open files` };
    expect(out.trim().split("\n").map((l) => JSON.parse(l))).toEqual([expected, expected]);
    expect(srv.accepted).toBe(0);
  });

  test("a blackholed target is given up on within the timeout, leaving no descriptor behind (http and https)", async () => {
    const hole = await startBlackhole();
    cleanup.push(() => hole.close());
    const before = fdCount(process.pid);
    for (const tls of [null, { serverName: "localhost", verify: true }]) {
      const started = performance.now();
      const f = await failure({ host: "127.0.0.1", port: hole.port, tls }, GET, { timeoutMs: 300 });
      const took = performance.now() - started;
      expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "timeout", answered: false });
      expect(f.message).toBe(`Get "${tls === null ? "http" : "https"}://127.0.0.1:${hole.port}/version": context deadline exceeded (timeout 300ms)`);
      expect(took).toBeGreaterThanOrEqual(295);
      expect(took).toBeLessThan(300 + 250);
    }
    await waitFor("the connects to be closed", () => fdCount(process.pid) <= before, 2000);
  });

  test("a server that accepts and never answers: timeout (in the reply, and in the TLS handshake)", async () => {
    const srv = await startServer((s) => s.resume()); // reads (so it sees the close), never writes
    const before = fdCount(process.pid);
    for (const tls of [null, { serverName: "localhost", verify: false }]) {
      const f = await failure({ host: "127.0.0.1", port: srv.port, tls }, GET, { timeoutMs: 200 });
      expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "timeout", answered: false });
    }
    await waitFor("the server to see both connections closed", () => srv.open.size === 0, 2000);
    expect(fdCount(process.pid)).toBeLessThanOrEqual(before);
  });
});

describe("kept-alive connections", () => {
  test("two requests reuse one connection; close() closes it", async () => {
    const { srv } = await httpServer(() => ok());
    const keep = new KeptConnection();
    for (let i = 0; i < 3; i++) expect((await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep })).body).toBe("ok");
    expect(srv.accepted).toBe(1);
    expect(srv.open.size).toBe(1);
    keep.close();
    await waitFor("the idle connection to be closed", () => srv.open.size === 0, 2000);
  });

  test("keeping sends no Connection: close; a reply with Connection: close is not kept", async () => {
    const { srv, seen } = await httpServer(() => ok("bye", "Connection: close\r\n"));
    const keep = new KeptConnection();
    await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep });
    await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep });
    expect(seen[0]!.headers.connection).toBeUndefined();
    expect(srv.accepted).toBe(2);
    await waitFor("no connection left open", () => srv.open.size === 0, 2000);
  });

  test("the server closes the idle connection between requests: the next one goes on a new connection", async () => {
    const srv = await startServer((s) => onRequests(s, (_req, sock) => sock.end(ok())));
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep });
    await waitFor("the server to close its end", () => srv.open.size === 0, 2000);
    expect((await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep })).body).toBe("ok");
    expect(srv.accepted).toBe(2);
  });

  test("a reused connection closed as the request goes out is retried once on a new one", async () => {
    // The keep-alive race, made certain: each connection answers its first request and closes at the second.
    const srv = await startServer((s) => onRequests(s, (_req, sock, n) => (n === 1 ? sock.write(ok()) : sock.end())));
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep });
    expect((await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep })).body).toBe("ok");
    expect(srv.accepted).toBe(2);
  });

  test("the retry is made once only: a new connection that closes too fails the request", async () => {
    const srv = await startServer((s, conn) => onRequests(s, (_req, sock, n) => (conn === 1 && n === 1 ? sock.write(ok()) : sock.end())));
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    await httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep });
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000, keep });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "closed", answered: true });
    expect(srv.accepted).toBe(2);
  });

  test("concurrent requests each have a connection; one stays idle afterwards", async () => {
    const { srv } = await httpServer(() => ok());
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    await Promise.all([1, 2].map(() => httpRequest(plain(srv.port), GET, { timeoutMs: 2000, keep })));
    expect(srv.accepted).toBe(2);
    await waitFor("the surplus connection to be closed", () => srv.open.size === 1, 2000);
  });

  test("an idle connection is reused only for the same target", async () => {
    const a = await httpServer(() => ok("a"));
    const b = await httpServer(() => ok("b"));
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    expect((await httpRequest(plain(a.srv.port), GET, { timeoutMs: 2000, keep })).body).toBe("a");
    expect((await httpRequest(plain(b.srv.port), GET, { timeoutMs: 2000, keep })).body).toBe("b");
    await waitFor("a's idle connection to be closed", () => a.srv.open.size === 0, 2000);
    expect(b.srv.open.size).toBe(1);
  });

  test("an idle connection does not hold the process open", async () => {
    const { srv, seen } = await httpServer(() => ok());
    const script = `
      const { httpRequest, KeptConnection } = await import(${JSON.stringify(join(import.meta.dir, "../../src/http-client.ts"))});
      const r = await httpRequest({ host: "127.0.0.1", port: ${srv.port}, tls: null }, { method: "GET", path: "/" }, { timeoutMs: 2000, keep: new KeptConnection() });
      console.log(r.status);`;
    const child = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit", env: { ...process.env, ETCD_GATEWAY_SKIP_BUILD: "1" } });
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    const [out, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    clearTimeout(killer);
    expect({ out: out.trim(), code }).toEqual({ out: "200", code: 0 });
    expect(seen[0]!.headers.connection).toBeUndefined();
  });
});

test("the proxy environment is never used", async () => {
  const proxy = await startServer(() => {});
  const url = `http://127.0.0.1:${proxy.port}`;
  setEnv({ HTTP_PROXY: url, http_proxy: url, HTTPS_PROXY: url, https_proxy: url, ALL_PROXY: url, all_proxy: url, NO_PROXY: undefined, no_proxy: undefined });
  const { srv } = await httpServer(() => ok("direct"));
  expect((await httpRequest(plain(srv.port), GET, { timeoutMs: 2000 })).body).toBe("direct");
  expect(srv.accepted).toBe(1);
  expect(proxy.accepted).toBe(0);
});

describe("TLS", () => {
  let certs: Certs;
  let dir: string;
  const pem = (path: string) => readFileSync(path, "utf8");
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "http-client-test-"));
    certs = await makeCerts(dir);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const serverTls = (o: { other?: boolean; expired?: boolean; clientCa?: boolean } = {}): TlsOptions => ({
    cert: pem(o.other ? certs.otherServer : o.expired ? certs.expired : certs.server),
    key: pem(o.other ? certs.otherServerKey : o.expired ? certs.expiredKey : certs.serverKey),
    ...(o.clientCa ? { ca: pem(certs.ca), requestCert: true, rejectUnauthorized: true } : {}),
  });
  const https = (port: number, tls: Partial<HttpTls>): HttpTarget => ({ host: "127.0.0.1", port, tls: { serverName: "127.0.0.1", verify: true, ...tls } });

  test("verified against the CA; a name is sent as SNI, an IP literal is not; the connection is kept", async () => {
    const names: unknown[] = [];
    const srv = await startServer((s) => {
      names.push((s as TLSSocket).servername);
      onRequests(s, (_req, sock) => sock.write(ok("secure")));
    }, serverTls());
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    for (const serverName of ["127.0.0.1", "localhost", "localhost"]) {
      const r = await httpRequest(https(srv.port, { ca: pem(certs.ca), serverName }), GET, { timeoutMs: 2000, keep });
      expect(r.body).toBe("secure");
    }
    // Another serverName is another target: a connection for 127.0.0.1, then one for localhost, kept.
    expect(srv.accepted).toBe(2);
    expect(names.map((n) => (typeof n === "string" ? n : "none"))).toEqual(["none", "localhost"]);
  });

  test("a certificate from another CA fails verification: tls, answered, naming the problem", async () => {
    const { srv } = await httpServer(() => ok(), serverTls({ other: true }));
    const f = await failure(https(srv.port, { ca: pem(certs.ca) }), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "tls", answered: true });
    expect(f.message).toBe("tls: failed to verify certificate: x509: certificate signed by unknown authority");
    expect(f.code).toBeString();
  });

  test("an expired certificate fails verification", async () => {
    const { srv } = await httpServer(() => ok(), serverTls({ expired: true }));
    const f = await failure(https(srv.port, { ca: pem(certs.ca) }), GET, { timeoutMs: 2000 });
    expect(f.kind).toBe("tls");
    expect(f.message).toBe("tls: failed to verify certificate: x509: certificate has expired or is not yet valid");
  });

  test("verify: false accepts a certificate from an unknown CA", async () => {
    const { srv } = await httpServer(() => ok("anyway"), serverTls({ other: true }));
    expect((await httpRequest(https(srv.port, { verify: false }), GET, { timeoutMs: 2000 })).body).toBe("anyway");
  });

  test("a serverName the certificate does not name fails, a name and an IP literal (checked though not sent)", async () => {
    const { srv } = await httpServer(() => ok(), serverTls());
    for (const serverName of ["wrong.example", "10.1.2.3"]) {
      const f = await failure(https(srv.port, { ca: pem(certs.ca), serverName }), GET, { timeoutMs: 2000 });
      expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "tls", answered: true });
      expect(f.message).toBe(`tls: failed to verify certificate: x509: certificate is not valid for ${serverName}`);
    }
  });

  test("a server that requires a client certificate: refused without one (tls, answered), served with one", async () => {
    const { srv } = await httpServer(() => ok("client ok"), serverTls({ clientCa: true }));
    const f = await failure(https(srv.port, { ca: pem(certs.ca) }), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "tls", answered: true });
    expect(f.message).toBe("remote error: tls: certificate required");
    expect(f.code).toMatch(/CERTIFICATE_REQUIRED|BAD_CERTIFICATE/);
    const r = await httpRequest(https(srv.port, { ca: pem(certs.ca), cert: pem(certs.client), key: pem(certs.clientKey) }), GET, { timeoutMs: 2000 });
    expect(r.body).toBe("client ok");
  });

  test("TLS to a plain-HTTP server (one that answers 400, one that closes at the ClientHello): tls, answered", async () => {
    const go = await startServer((s) => s.once("data", () => s.end("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")));
    const cmux = await startServer((s) => s.once("data", () => s.end()));
    for (const srv of [go, cmux]) {
      const f = await failure(https(srv.port, { ca: pem(certs.ca) }), GET, { timeoutMs: 2000 });
      expect({ kind: f.kind, answered: f.answered, message: f.message }).toEqual({ kind: "tls", answered: true, message: "tls: first record does not look like a TLS handshake" });
    }
  });

  test("plain HTTP to a TLS server: closed, answered", async () => {
    const { srv } = await httpServer(() => ok(), serverTls());
    const f = await failure(plain(srv.port), GET, { timeoutMs: 2000 });
    expect({ kind: f.kind, answered: f.answered }).toEqual({ kind: "closed", answered: true });
  });
});
