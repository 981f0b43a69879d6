/**
 * Error text through the binary, in etcd's (Go's) words (issue 14, item 1): a refused member's
 * reason in /status, in `etcd-gateway status` and in `deactivated endpoint` reads
 * `dial tcp 127.0.0.1:P: connect: connection refused`, whichever check or dial found it; a member's
 * HTTP failure names the request; a missing file is `open PATH: no such file or directory`; and
 * the no-member warning names the client with its port, as the access log does. The mapping
 * itself is tabled in test/unit/neterror.test.ts.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect as netConnect } from "node:net";
import { join } from "node:path";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort } from "../support/net.ts";
import { echoServer, httpAnswering, roundTrip, type Listening } from "../support/peers.ts";

const servers: Listening[] = [];
const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-errors-"));
afterEach(stopAllGateways);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

const refused = (port: number) => `dial tcp 127.0.0.1:${port}: connect: connection refused`;

async function memberReasons(gw: GatewayProcess): Promise<Record<string, string>> {
  const s = (await (await fetch(`${gw.adminURL!}/status`)).json()) as { members: { endpoint: string; reason: string }[] };
  return Object.fromEntries(s.members.map((m) => [m.endpoint, m.reason]));
}

describe("a refused member, in Go's words", () => {
  for (const check of ["tcp", "etcd", "health"]) {
    test(`--health-check=${check}: /status, \`etcd-gateway status\` and \`deactivated endpoint\` say "dial tcp 127.0.0.1:P: connect: connection refused"`, async () => {
      const echo = await echoServer();
      servers.push(echo);
      const port = freePort();
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port},127.0.0.1:${port}`, `--health-check=${check}`, "--health-interval=200ms", "--health-fall=1"], { admin: true });
      const deactivated = await gw.waitForLog(`"deactivated endpoint","address":"127.0.0.1:${port}"`);
      expect(deactivated.error).toBe(refused(port));
      expect((await memberReasons(gw))[`127.0.0.1:${port}`]).toBe(refused(port));
      const table = runBinary(["status", `--admin-addr=${gw.adminURL!.slice("http://".length)}`]);
      expect(table.stdout).toContain(refused(port));
      expect(gw.lines.join("\n")).not.toMatch(/Unable to connect|Failed to connect|ECONNREFUSED/);
    });
  }

  test("failed dials of the data path, the retry probe and the no-member warning (with the client's port)", async () => {
    const port = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`, "--health-check=none", "--health-fall=1", "--retry-delay=200ms"]);
    // The client's port is chosen here: the gateway may reset the connection before the client's
    // connect completes in node (then it reports ECONNRESET and has no localPort to read).
    const clientPort = freePort();
    const client = netConnect({ host: "127.0.0.1", port: gw.port, localAddress: "127.0.0.1", localPort: clientPort });
    client.on("error", () => {}); // the gateway resets it
    await new Promise((r) => client.once("close", r));
    const deactivated = await gw.waitForLog("deactivated endpoint");
    expect(deactivated.error).toBe(`1 failed dials in a row, last: ${refused(port)}`);
    const noMember = await gw.waitForLog("no endpoint could be reached; closing client connection");
    expect(noMember.client).toBe(`127.0.0.1:${clientPort}`);
    const probe = await gw.waitForLog("failed to activate endpoint (stay inactive for another interval)", 3000);
    expect(probe.error).toBe(refused(port));
    await expect(roundTrip(gw.port, "x")).rejects.toThrow();
    expect(gw.lines.join("\n")).not.toMatch(/Unable to connect|Failed to connect|ECONNREFUSED/);
  });
});

test("a member's HTTP failure names the request, its status and the body", async () => {
  const member = await httpAnswering(503, "not ready\n");
  servers.push(member);
  const port = member.port;
  const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`, "--health-check=etcd", "--health-interval=200ms"], { admin: true });
  const deactivated = await gw.waitForLog("deactivated endpoint");
  expect(deactivated.error).toBe(`Post "http://127.0.0.1:${port}/v3/maintenance/status": 503 Service Unavailable: not ready`);
});

test("a missing --config file is Go's `open PATH: no such file or directory`", () => {
  const path = join(dir, "nope.yaml");
  const r = runBinary(["start", `--config=${path}`]);
  expect(r.code).toBe(1);
  expect(r.stderr.trim()).toBe(`etcd-gateway: --config: open ${path}: no such file or directory`);
});

test("`etcd-gateway status` without a gateway says the dial was refused, in Go's words", () => {
  const port = freePort();
  const r = runBinary(["status", `--admin-addr=127.0.0.1:${port}`]);
  expect(r.code).toBe(1);
  expect(r.stderr.trim()).toBe(`etcd-gateway: cannot reach the admin endpoint at 127.0.0.1:${port}: ${refused(port)} (is the gateway running with --admin-addr=127.0.0.1:${port}?)`);
});
