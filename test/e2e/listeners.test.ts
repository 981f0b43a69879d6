/** Listeners and limits: unix sockets with file permissions, several listeners, --max-connections, --idle-timeout. */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startGatewayProcess as startGateway, stopAllGateways } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { dial, echoServer, readAll, roundTrip, type Listening } from "../support/peers.ts";

/** These members are plain TCP peers, not etcd: no etcd health check. */
const startGatewayProcess = (args: string[], opts?: Parameters<typeof startGateway>[1]) => startGateway(["--health-check=none", ...args], opts);

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-listeners-"));
let echo: Listening;
afterEach(stopAllGateways);
afterAll(async () => {
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** One round trip over a unix socket. */
function unixRoundTrip(path: string, msg: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ path });
    let got = "";
    s.on("connect", () => s.write(msg));
    s.on("data", (c: Buffer) => {
      got += c.toString();
      if (got.length >= msg.length) {
        s.destroy();
        resolve(got);
      }
    });
    s.on("error", reject);
  });
}

describe("listeners", () => {
  test("a unix socket listener with --listen-socket-mode, next to a TCP one; the socket file is removed on exit", async () => {
    echo = await echoServer();
    const path = join(dir, "gw.sock");
    const port = freePort();
    const gw = await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--listen-addr=unix://${path}`, "--listen-socket-mode=0600", `--endpoints=127.0.0.1:${echo.port}`]);
    expect(statSync(path).isSocket()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(await unixRoundTrip(path, "over unix")).toBe("over unix");
    expect(await roundTrip(port, "over tcp")).toBe("over tcp");
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    expect(existsSync(path)).toBe(false);
  });

  test("a stale socket file from a dead process does not stop the gateway from listening", async () => {
    echo ??= await echoServer();
    const path = join(dir, "stale.sock");
    const first = await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${echo.port}`], { waitReady: true });
    await first.stop("SIGKILL"); // leaves the file behind
    expect(existsSync(path)).toBe(true);
    await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${echo.port}`]);
    expect(await unixRoundTrip(path, "again")).toBe("again");
  });

  test("a socket file another live gateway serves is not taken over: one-line error, exit 1", async () => {
    echo ??= await echoServer();
    const path = join(dir, "live.sock");
    await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${echo.port}`]);
    const second = await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${echo.port}`], { waitReady: false });
    expect(await second.proc.exited).toBe(1);
    await waitFor("the error line", () => second.lines.length > 0, 2000);
    expect(second.lines.join("\n")).toMatch(/^etcd-gateway: --listen-addr: cannot listen: .*live\.sock is in use by another process$/);
    expect(await unixRoundTrip(path, "first still serves")).toBe("first still serves");
  });
});

describe("limits", () => {
  test("--max-connections: at the limit new connects are refused (not accepted then closed), and accepted again once one closes", async () => {
    echo ??= await echoServer();
    const port = freePort();
    const gw = await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`, "--max-connections=3"]);
    const held: Socket[] = [];
    for (let i = 0; i < 3; i++) held.push(await dial(port));
    for (const s of held) {
      await new Promise<void>((r) => {
        s.once("data", () => r());
        s.write("x");
      });
    }
    await gw.waitForLog("connection limit reached: stopped accepting");
    await expect(dial(port)).rejects.toThrow(/ECONNREFUSED/);
    held.pop()!.destroy();
    await gw.waitForLog("below the connection limit: accepting again");
    expect(await roundTrip(port, "back")).toBe("back");
    for (const s of held) s.destroy();
  });

  test("--idle-timeout closes a connection with no bytes either way, and leaves a busy one alone", async () => {
    echo ??= await echoServer();
    const port = freePort();
    await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`, "--idle-timeout=600ms"]);
    const idle = await dial(port);
    idle.write("hello");
    const idleEnd = readAll(idle);
    const busy = await dial(port);
    let busyClosed = false;
    busy.on("close", () => (busyClosed = true));
    busy.on("data", () => {});
    const t0 = performance.now();
    const timer = setInterval(() => busy.write("ping"), 150);
    await idleEnd;
    const took = performance.now() - t0;
    expect(took).toBeGreaterThan(500);
    expect(took).toBeLessThan(2500);
    await sleep(300);
    expect(busyClosed).toBe(false);
    clearInterval(timer);
    busy.destroy();
  });

  test("without --idle-timeout an idle connection stays open", async () => {
    echo ??= await echoServer();
    const port = freePort();
    await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`]);
    const s = await dial(port);
    let closed = false;
    s.on("close", () => (closed = true));
    await sleep(1500);
    expect(closed).toBe(false);
    expect(await new Promise<string>((r) => (s.once("data", (c: Buffer) => r(c.toString())), s.write("still")))).toBe("still");
    s.destroy();
  });
});

describe("zero-downtime restart", () => {
  // With the kernel default (0) a connection waiting in the old listener's accept queue at the
  // instant it closes is reset: measured 2 of 518 on a loaded machine, 0 of ~2,500 on a quiet one.
  // tcp_migrate_req=1 (Linux 5.14+) hands such connections to the new listener: that is the setup
  // the README recommends, and the one this test holds to zero failures.
  const knob = "/proc/sys/net/ipv4/tcp_migrate_req";
  let saved: string | undefined;
  beforeAll(() => {
    saved = readFileSync(knob, "utf8").trim();
    writeFileSync(knob, "1");
  });
  afterAll(() => {
    if (saved !== undefined) writeFileSync(knob, saved);
  });

  test("with net.ipv4.tcp_migrate_req=1, a new gateway on the same address (SO_REUSEPORT) takes over while the old one drains: a connect loop across the switch sees no failure", async () => {
    echo ??= await echoServer();
    const port = freePort();
    const args = [`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`];
    const old = await startGatewayProcess(args);
    let ok = 0;
    const failures: string[] = [];
    let running = true;
    const loops = Array.from({ length: 8 }, async () => {
      for (let i = 0; running && i < 5000; i++) {
        try {
          await roundTrip(port, "x");
          ok++;
        } catch (e) {
          failures.push(String(e));
        }
      }
    });
    await sleep(200);
    const fresh = await startGatewayProcess(args);
    await sleep(200);
    old.proc.kill("SIGTERM");
    expect(await old.proc.exited).toBe(0);
    await sleep(500);
    running = false;
    await Promise.all(loops);
    console.log(`zero-downtime restart: ${ok} round trips, ${failures.length} failed`);
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(50);
    expect(fresh.proc.exitCode).toBeNull();
  });

  test("--reuse-port=false makes a second gateway on the same address fail with address in use", async () => {
    echo ??= await echoServer();
    const port = freePort();
    await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`, "--reuse-port=false"]);
    const second = await startGatewayProcess([`--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${echo.port}`], { waitReady: false });
    expect(await second.proc.exited).toBe(1);
  });
});
