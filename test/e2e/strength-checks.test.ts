/**
 * Issue 20, test strength: the requests the health checks send, as the member receives them
 * (docs/selection-and-health.md, "Health"): `health` is `GET /health?serializable=true`, `etcd` is
 * `POST /v3/maintenance/status` (body `{}`) for a full check and `GET /version` for the liveness
 * check of the member in use. A fake member records each request line and body off the wire and
 * answers as etcd would, so the checks pass and go on.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { waitFor } from "../support/net.ts";

interface Received {
  line: string;
  body: string;
}

const servers: { server: Server; sockets: Set<Socket> }[] = [];
afterEach(async () => {
  await stopAllGateways();
  for (const { server, sockets } of servers.splice(0)) {
    for (const s of sockets) s.destroy();
    server.close();
  }
});

/**
 * A member speaking just enough HTTP/1.1: each request (on new or kept-alive connections) is
 * recorded, its body read by Content-Length, and answered 200 with `answer(path)`.
 */
async function recordingMember(answer: (path: string) => string): Promise<{ port: number; received: Received[] }> {
  const received: Received[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
    let buf = Buffer.alloc(0);
    s.on("data", (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1").split("\r\n");
        const length = Number(/^content-length:\s*(\d+)$/im.exec(head.join("\n"))?.[1] ?? 0);
        if (buf.length < end + 4 + length) return;
        const body = buf.subarray(end + 4, end + 4 + length).toString("latin1");
        buf = buf.subarray(end + 4 + length);
        received.push({ line: head[0]!, body });
        const reply = answer(head[0]!.split(" ")[1] ?? "");
        s.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(reply)}\r\n\r\n${reply}`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  servers.push({ server, sockets });
  return { port: (server.address() as { port: number }).port, received };
}

/** Rethrows a wait's failure with what the member received. */
const failWith = (received: Received[]) => (e: unknown) => {
  throw new Error(`${String(e)}; the member received: ${JSON.stringify(received)}`);
};

/** etcd 3.4's JSON status of a healthy voting member (IDs as the JSON gateway writes them: decimal strings). */
const STATUS = JSON.stringify({
  header: { cluster_id: "14841639068965178418", member_id: "10276657743932975437", revision: "1", raft_term: "2" },
  version: "3.4.23",
  dbSize: "20480",
  leader: "10276657743932975437",
  raftIndex: "4",
  raftTerm: "2",
});

describe("the health checks' requests, as the member receives them", () => {
  test("--health-check=health: every check is GET /health?serializable=true HTTP/1.1, without a body", async () => {
    const member = await recordingMember((path) => (path.startsWith("/health") ? `{"health":"true"}` : "{}"));
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, "--health-check=health", "--health-interval=100ms", "--health-spare-interval=100ms"]);
    await waitFor("4 checks", () => member.received.length >= 4, 5000).catch(failWith(member.received));
    expect(member.received).toEqual(Array(member.received.length).fill({ line: "GET /health?serializable=true HTTP/1.1", body: "" }));
    // They passed: the member was never taken out.
    expect(gw.lines.filter((l) => l.includes("deactivated endpoint"))).toEqual([]);
  }, 20_000);

  test("--health-check=etcd: a full check is POST /v3/maintenance/status HTTP/1.1 with body {}, the liveness check of the member in use GET /version HTTP/1.1", async () => {
    const member = await recordingMember((path) => (path === "/v3/maintenance/status" ? STATUS : path === "/version" ? `{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}` : "{}"));
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, "--health-interval=100ms", "--health-status-interval=300ms"]);
    const full = { line: "POST /v3/maintenance/status HTTP/1.1", body: "{}" };
    const liveness = { line: "GET /version HTTP/1.1", body: "" };
    await waitFor("a liveness check between two full ones", () => {
      const lines = member.received.map((r) => r.line);
      const second = lines.indexOf(full.line, 1);
      return second > 0 && lines.slice(1, second).includes(liveness.line);
    }, 5000).catch(failWith(member.received));
    // The first check decides alone, and is full.
    expect(member.received[0]).toEqual(full);
    for (const r of member.received) expect([full, liveness]).toContainEqual(r);
    expect(gw.lines.filter((l) => l.includes("deactivated endpoint"))).toEqual([]);
  }, 20_000);
});
