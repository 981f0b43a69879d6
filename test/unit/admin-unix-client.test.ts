/**
 * The unix socket transport of src/http-client.ts (issue 20: `status` and `member drain|ready`
 * reach a gateway's unix socket admin address): the request goes over the socket with
 * `Host: localhost`, replies are read and bounded as over TCP, failures are in Go's words for a
 * unix dial, and TLS over a unix socket is refused.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HttpFailure, httpRequest, KeptConnection, requestUrl, type HttpTarget } from "../../src/http-client.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-unix-client-"));
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** A server on a new unix socket path that answers each request head with `reply(head)`; the heads it saw. */
async function unixServer(reply: (head: string) => string): Promise<{ path: string; heads: string[] }> {
  const path = join(dir, `s${++n}.sock`);
  const heads: string[] = [];
  const open = new Set<Socket>();
  const srv: Server = createServer((s) => {
    open.add(s);
    s.on("close", () => open.delete(s)).on("error", () => {});
    let buf = "";
    s.on("data", (d: Buffer) => {
      buf += d.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.slice(0, end);
      buf = buf.slice(end + 4);
      heads.push(head);
      s.write(reply(head));
    });
  });
  await new Promise<void>((r) => srv.listen(path, r));
  cleanup.push(() => {
    for (const s of open) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { path, heads };
}

const at = (path: string): HttpTarget => ({ host: "localhost", port: 0, tls: null, unixPath: path });
const ok = (body: string) => `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

describe("httpRequest over a unix socket", () => {
  test("GET and POST go over the socket with Host: localhost; the reply is read as over TCP", async () => {
    const srv = await unixServer(() => ok('{"ok":true}'));
    const get = await httpRequest(at(srv.path), { method: "GET", path: "/status" }, { timeoutMs: 2000 });
    expect([get.status, get.body, get.truncated]).toEqual([200, '{"ok":true}', false]);
    const post = await httpRequest(at(srv.path), { method: "POST", path: "/members/a%3A1/drain", body: "" }, { timeoutMs: 2000 });
    expect(post.status).toBe(200);
    expect(srv.heads.map((h) => h.split("\r\n").filter((l) => /^(GET|POST|Host:|Content-Length:)/.test(l)))).toEqual([
      ["GET /status HTTP/1.1", "Host: localhost"],
      ["POST /members/a%3A1/drain HTTP/1.1", "Host: localhost", "Content-Length: 0"],
    ]);
  });

  test("a reply longer than maxBytes is cut there and marked truncated", async () => {
    const srv = await unixServer(() => ok("x".repeat(5000)));
    const r = await httpRequest(at(srv.path), { method: "GET", path: "/status" }, { timeoutMs: 2000, maxBytes: 1000 });
    expect([r.body.length, r.truncated]).toEqual([1000, true]);
  });

  test("a kept connection is reused over the same socket", async () => {
    const srv = await unixServer(() => ok("k"));
    const keep = new KeptConnection();
    cleanup.push(() => keep.close());
    for (let i = 0; i < 3; i++) expect((await httpRequest(at(srv.path), { method: "GET", path: "/metrics" }, { timeoutMs: 2000, keep })).body).toBe("k");
    expect(srv.heads).toHaveLength(3);
  });

  test("failures in Go's words for a unix dial: no socket, a file nobody listens on; a dial failure is no answer", async () => {
    const missing = join(dir, "missing.sock");
    const e1 = await httpRequest(at(missing), { method: "GET", path: "/status" }, { timeoutMs: 2000 }).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(HttpFailure);
    expect([(e1 as HttpFailure).kind, (e1 as HttpFailure).answered, (e1 as HttpFailure).message]).toEqual(["dial", false, `dial unix ${missing}: connect: no such file or directory`]);
    const notSocket = join(dir, "plain-file");
    writeFileSync(notSocket, "");
    const e2 = (await httpRequest(at(notSocket), { method: "GET", path: "/status" }, { timeoutMs: 2000 }).catch((e: unknown) => e)) as HttpFailure;
    expect([e2.kind, e2.message]).toEqual(["dial", `dial unix ${notSocket}: connect: connection refused`]);
  });

  test("TLS over a unix socket is refused as a failed dial; the URL in messages names the Host", async () => {
    const srv = await unixServer(() => ok("never"));
    const target: HttpTarget = { ...at(srv.path), tls: { serverName: "localhost", verify: true } };
    const e = (await httpRequest(target, { method: "GET", path: "/status" }, { timeoutMs: 2000 }).catch((x: unknown) => x)) as HttpFailure;
    expect([e.kind, e.message]).toEqual(["dial", `dial unix ${srv.path}: TLS over a unix socket is not supported`]);
    expect(srv.heads).toEqual([]);
    expect(requestUrl(at(srv.path), "/status")).toBe("http://localhost/status");
  });
});
