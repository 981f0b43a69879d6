/**
 * `etcd-gateway status` and `member drain` against admin endpoints that misbehave (issue 20, item
 * 3), against the binary: JSON of another shape, an endless answer, a redirect to another host.
 * Each is one line on stderr and exit 1, never a stack trace, never more than 1 MiB read, never a
 * request sent anywhere but the address given.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { BINARY } from "../support/gateway.ts";
import { runToEnd } from "../support/process.ts";

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r()))));
});

/** A server on 127.0.0.1 that calls `answer` with each connection once its first bytes arrive; `connections` counts them. */
async function server(answer: (s: Socket) => void = (s) => s.destroy()): Promise<{ port: number; connections: () => number }> {
  let n = 0;
  const srv = createServer((s) => {
    n++;
    sockets.add(s);
    s.on("error", () => {});
    s.once("close", () => sockets.delete(s));
    s.once("data", () => answer(s));
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return { port: (srv.address() as { port: number }).port, connections: () => n };
}

/** An admin endpoint that answers 200 with `body` as JSON. */
const answering = (body: string) => server((s) => s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));

/** The binary run to its end, asynchronously (the servers here must keep answering). */
const run = (args: string[]) => runToEnd([BINARY, ...args], { timeoutMs: 15_000, env: { ...process.env, NO_COLOR: "1" } });

describe("the commands against an endpoint that misbehaves (issue 20, item 3)", () => {
  const shapes: [string, string, string][] = [
    ["a list", "[]", "a list, not an object"],
    ["members that is not a list", '{"members":"notalist","listener":{}}', "members is not a list"],
    ["null", "null", "null, not an object"],
    ["a member that is not an object", '{"members":[7],"listener":{}}', "a member is not an object"],
    ["no listener", '{"members":[]}', "listener is not an object"],
    ["alarms that are not a list", '{"members":[],"listener":{},"cluster":{"alarms":"NOSPACE"}}', "cluster.alarms is not a list of objects"],
  ];
  for (const [name, body, problem] of shapes) {
    test(`\`status\` given JSON of another shape (${name}): one line, exit 1, no stack trace`, async () => {
      const admin = await answering(body);
      for (const json of [[], ["--json"]]) {
        const r = await run(["status", `--admin-addr=127.0.0.1:${admin.port}`, ...json]);
        expect([json.join(""), r.code, r.stdout, r.stderr]).toEqual([json.join(""), 1, "", `etcd-gateway: the admin endpoint at 127.0.0.1:${admin.port} answered JSON that is not a gateway's status: ${problem}\n`]);
      }
    });
  }

  test("`member drain` given a row that is not an object: one line, exit 1", async () => {
    const admin = await answering("[]");
    const r = await run(["member", "drain", "10.0.0.1:2379", `--admin-addr=127.0.0.1:${admin.port}`]);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, "", `etcd-gateway: the admin endpoint at 127.0.0.1:${admin.port} answered JSON that is not a member's status: a list, not an object\n`]);
  });

  test("`status` given an answer that never ends reads 1 MiB and stops at once, exit 1", async () => {
    let sent = 0;
    const admin = await server((s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"members":[');
      const chunk = Buffer.alloc(64 << 10, 0x20);
      const pump = () => {
        while (!s.destroyed) {
          sent += chunk.length;
          if (!s.write(chunk)) return;
        }
      };
      s.on("drain", pump);
      pump();
    });
    const t0 = performance.now();
    const r = await run(["status", `--admin-addr=127.0.0.1:${admin.port}`]);
    const ms = performance.now() - t0;
    expect([r.code, r.stderr]).toEqual([1, `etcd-gateway: the admin endpoint at 127.0.0.1:${admin.port} answered more than 1048576 bytes to http://127.0.0.1:${admin.port}/status; read no further\n`]);
    // Before issue 20's client it read until its 3 s timeout: 645 MiB and 1.3 GB of memory, measured.
    expect(ms).toBeLessThan(2500);
    expect(sent).toBeLessThan(32 << 20);
  });

  for (const [command, args] of [
    ["member drain", ["member", "drain", "10.0.0.1:2379"]],
    ["status", ["status"]],
  ] as const) {
    test(`\`${command}\` given a 307 to another address does not follow it: one line, exit 1, nothing sent there`, async () => {
      const elsewhere = await server();
      const admin = await server((s) => s.end(`HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:${elsewhere.port}/members/10.0.0.1:2379/drain\r\nContent-Length: 0\r\n\r\n`));
      const r = await run([...args, `--admin-addr=127.0.0.1:${admin.port}`]);
      expect([r.code, r.stdout, r.stderr]).toEqual([1, "", `etcd-gateway: the admin endpoint at 127.0.0.1:${admin.port} answered 307 (a redirect to http://127.0.0.1:${elsewhere.port}/members/10.0.0.1:2379/drain, not followed)\n`]);
      expect([admin.connections(), elsewhere.connections()]).toEqual([1, 0]);
    });
  }
});
