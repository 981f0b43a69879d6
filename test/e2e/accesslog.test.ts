/** --access-log: one JSON line per closed connection, and every termination code from a real scenario. */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Socket as BunSocket } from "bun";
import type { AccessRecord } from "../../src/accesslog.ts";
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startGatewayProcess as startGateway, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { dial, echoServer, readAll, roundTrip, type Listening } from "../support/peers.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-access-"));
const servers: Listening[] = [];
let echo: Listening;
afterEach(stopAllGateways);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

type Line = AccessRecord;
let n = 0;
/** A gateway logging access to its own file; members are plain TCP peers here (no etcd check). */
async function gatewayWithLog(args: string[]): Promise<{ gw: GatewayProcess; lines: () => Line[] }> {
  const file = join(dir, `access-${n++}.log`);
  const gw = await startGateway(["--health-check=none", `--access-log=${file}`, ...args]);
  const lines = () => (existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Line) : []);
  return { gw, lines };
}
const awaitLine = (lines: () => Line[], count = 1) => waitFor(`${count} access log line(s)`, () => (lines().length >= count ? lines() : undefined), 5000, 50);

function memberThat(onData: (s: import("node:net").Socket) => void): Promise<Server & { port: number }> {
  return new Promise((resolve) => {
    const srv = createServer({ allowHalfOpen: true }, (s) => {
      s.on("error", () => {});
      s.on("data", () => onData(s));
    });
    srv.listen(0, "127.0.0.1", () => resolve(Object.assign(srv, { port: (srv.address() as { port: number }).port })));
  });
}

describe("access log termination codes", () => {
  test("client-close, with client, member, connect time and bytes each way", async () => {
    echo = await echoServer();
    servers.push(echo);
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${echo.port}`]);
    const s = await dial(gw.port);
    const got = readAll(s);
    s.end("hello"); // FIN from the client first
    await got;
    const [l] = await awaitLine(lines);
    expect(l).toMatchObject({ member: `127.0.0.1:${echo.port}`, bytes_from_client: 5, bytes_from_member: 5, termination: "client-close" });
    expect(l!.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(l!.connect_ms).toBeGreaterThanOrEqual(0);
    expect(l!.duration_ms).toBeGreaterThanOrEqual(l!.connect_ms!);
  });

  test("member-close", async () => {
    const m = await memberThat((s) => s.end("bye"));
    try {
      const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${m.port}`]);
      const s = await dial(gw.port);
      const got = readAll(s);
      s.write("hi");
      await got;
      s.destroy();
      expect((await awaitLine(lines))[0]).toMatchObject({ termination: "member-close", bytes_from_member: 3 });
    } finally {
      m.close();
    }
  });

  test("member-reset", async () => {
    const m = await memberThat((s) => s.resetAndDestroy());
    try {
      const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${m.port}`]);
      const s = await dial(gw.port);
      const got = readAll(s);
      s.write("hi");
      await got;
      expect((await awaitLine(lines))[0]!.termination).toBe("member-reset");
    } finally {
      m.close();
    }
  });

  test("client-reset", async () => {
    echo ??= await echoServer();
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${echo.port}`]);
    const c = await new Promise<BunSocket>((resolve) => Bun.connect({ hostname: "127.0.0.1", port: gw.port, socket: { open: resolve, data() {} } }));
    c.write("x");
    await sleep(100);
    c.terminate();
    expect((await awaitLine(lines))[0]!.termination).toBe("client-reset");
  });

  test("connect-failed while the member looked usable, then no-member once it is ejected", async () => {
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${freePort()}`, "--health-fall=1"]);
    await roundTrip(gw.port, "x").catch(() => "");
    await roundTrip(gw.port, "x").catch(() => "");
    const ls = await awaitLine(lines, 2);
    expect(ls.map((l) => l.termination)).toEqual(["connect-failed", "no-member"]);
    expect(ls[0]!.member).toBeNull();
  });

  test("idle-timeout", async () => {
    echo ??= await echoServer();
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${echo.port}`, "--idle-timeout=300ms"]);
    const s = await dial(gw.port);
    s.write("x");
    await readAll(s);
    expect((await awaitLine(lines))[0]!.termination).toBe("idle-timeout");
  });

  test("member-down (--close-on-member-down)", async () => {
    // Closing only the listener (open connections stay) makes the tcp check fail.
    const a = await new Promise<Server & { port: number }>((resolve) => {
      const srv = createServer({ allowHalfOpen: true }, (c) => c.on("error", () => {}).pipe(c));
      srv.listen(0, "127.0.0.1", () => resolve(Object.assign(srv, { port: (srv.address() as { port: number }).port })));
    });
    const b = await echoServer();
    servers.push(b);
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${a.port},127.0.0.1:${b.port}`, "--policy=ordered", "--health-check=tcp", "--health-interval=200ms"]);
    const s = await dial(gw.port);
    const got = readAll(s);
    s.write("x");
    await sleep(100);
    a.close(); // the listener goes, its connection stays: the tcp check fails, the member is marked down
    await got;
    expect((await awaitLine(lines))[0]!.termination).toBe("member-down");
  });

  test("drained, and the log is flushed before the process exits", async () => {
    echo ??= await echoServer();
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${echo.port}`, "--drain-timeout=300ms"]);
    const s = await dial(gw.port);
    await new Promise<void>((r) => (s.once("data", () => r()), s.write("x")));
    const closed = readAll(s);
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    await closed;
    expect(lines().map((l) => l.termination)).toEqual(["drained"]);
  });

  test("shut-down (a second signal)", async () => {
    echo ??= await echoServer();
    const { gw, lines } = await gatewayWithLog([`--endpoints=127.0.0.1:${echo.port}`, "--drain-timeout=30s"]);
    const s = await dial(gw.port);
    await new Promise<void>((r) => (s.once("data", () => r()), s.write("x")));
    const closed = readAll(s);
    gw.proc.kill("SIGTERM");
    await gw.waitForLog("draining");
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    await closed;
    expect(lines().map((l) => l.termination)).toEqual(["shut-down"]);
  });
});

test("SIGUSR1 reopens the access log file (logrotate)", async () => {
  echo ??= await echoServer();
  const file = join(dir, "rotate.log");
  const gw = await startGateway(["--health-check=none", `--access-log=${file}`, `--endpoints=127.0.0.1:${echo.port}`]);
  await roundTrip(gw.port, "one");
  await waitFor("the first line", () => existsSync(file) && readFileSync(file, "utf8").includes("client"), 5000, 50);
  renameSync(file, `${file}.1`);
  gw.proc.kill("SIGUSR1");
  await sleep(100);
  await roundTrip(gw.port, "two");
  await waitFor("a line in the new file", () => existsSync(file) && readFileSync(file, "utf8").trim().split("\n").length === 1, 5000, 50);
  expect(readFileSync(`${file}.1`, "utf8").trim().split("\n")).toHaveLength(1);
});
