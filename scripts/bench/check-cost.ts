/**
 * What one health-check request costs an etcd member, by kind: the member's CPU per request
 * (schedstat, every thread), `n` requests one after another on one kept connection, on a real
 * 3-member cluster (test/support/cluster.ts), asking a follower. The kinds the gateway sends today
 * (`GET /version`, the JSON gateway's `POST /v3/maintenance/status`) beside what it could send
 * instead over gRPC on HTTP/2 (Maintenance/Status, grpc.health.v1.Health/Check), to tell whether a
 * gRPC full check would cost the cluster less (docs/member-connections.md has the fleet-scale figures).
 *
 * With `--hold N`, it then holds N HTTP/2 connections to the member, each after one
 * Health/Check, and reads how much the member's memory grew per connection (the HTTP/1.1 figure
 * for the connections the gateway keeps today is in docs/member-connections.md).
 *
 * Usage: bun scripts/bench/check-cost.ts [--requests 3000] [--hold 0]
 *
 * @module
 */
import http2 from "node:http2";
import { parseArgs } from "node:util";
import { startCluster } from "../../test/support/cluster.ts";
import { cpuNs, rssKiB } from "../../test/support/net.ts";

const { values: args } = parseArgs({ options: { requests: { type: "string", default: "3000" }, hold: { type: "string", default: "0" } } });
const n = Number(args.requests);
const hold = Number(args.hold);

/** One unary gRPC call with an empty request message; resolves with the reply's grpc-status. */
function grpcCall(session: http2.ClientHttp2Session, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
    let status = "";
    req.on("trailers", (t) => (status = String(t["grpc-status"] ?? "")));
    req.on("response", (h) => (status ||= String(h["grpc-status"] ?? "")));
    req.on("data", () => {});
    req.on("end", () => resolve(status));
    req.on("error", reject);
    req.end(Buffer.from([0, 0, 0, 0, 0]));
  });
}

/** Holds `hold` HTTP/2 connections, each after one Health/Check; says what the member's VmRSS grew by per connection. */
async function holdSessions(url: string, pid: number): Promise<string> {
  await Bun.sleep(2000);
  const before = rssKiB(pid);
  const sessions: http2.ClientHttp2Session[] = [];
  try {
    for (let i = 0; i < hold; i += 100) {
      const batch = Array.from({ length: Math.min(100, hold - i) }, () => http2.connect(url));
      sessions.push(...batch);
      await Promise.all(batch.map((s) => grpcCall(s, "/grpc.health.v1.Health/Check")));
    }
    await Bun.sleep(2000);
    const after = rssKiB(pid);
    return `Holding ${hold} HTTP/2 connections (one Health/Check each), the member's VmRSS grew from ${(before / 1024).toFixed(1)} to ${(after / 1024).toFixed(1)} MiB: ${((after - before) / hold).toFixed(1)} KiB a connection.`;
  } finally {
    for (const s of sessions) s.destroy();
  }
}

const cluster = await startCluster({ size: 3 });
try {
  const leader = await cluster.leaderIndex();
  const m = cluster.members[(leader + 1) % 3]!;
  const url = `http://127.0.0.1:${m.clientPort}`;
  const session = http2.connect(url);
  const kinds: [string, () => Promise<unknown>][] = [
    ["GET /version (HTTP/1.1, what the liveness check sends)", async () => (await fetch(`${url}/version`)).text()],
    ["POST /v3/maintenance/status (JSON gateway, what the full check sends)", async () => (await fetch(`${url}/v3/maintenance/status`, { method: "POST", body: "{}" })).text()],
    ["gRPC etcdserverpb.Maintenance/Status (HTTP/2)", () => grpcCall(session, "/etcdserverpb.Maintenance/Status")],
    ["gRPC grpc.health.v1.Health/Check (HTTP/2)", () => grpcCall(session, "/grpc.health.v1.Health/Check")],
  ];
  const rows: string[] = [];
  for (const [name, call] of kinds) {
    const first = await call();
    if (typeof first === "string" && first !== "0" && !first.startsWith("{")) throw new Error(`${name}: grpc-status ${first}`);
    for (let i = 0; i < Math.min(200, n); i++) await call();
    const ns0 = cpuNs(m.pid);
    for (let i = 0; i < n; i++) await call();
    rows.push(`| ${name} | ${((cpuNs(m.pid) - ns0) / n / 1e6).toFixed(3)} |`);
  }
  session.close();
  if (hold > 0) rows.push("", await holdSessions(url, m.pid));
  const version = Bun.spawnSync(["etcd", "--version"]).stdout.toString().split("\n")[0];
  process.stdout.write(
    [`${version}, a follower of a 3-member cluster on loopback, ${n} requests of each kind one after another on one kept connection:`, "", "| request | ms of member CPU per request |", "| --- | --- |", ...rows, ""].join("\n"),
  );
} finally {
  await cluster.stop();
}
