/**
 * Sockets handed to the gateway as systemd hands them (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES,
 * descriptors from 3; issue 23): adopted by address or by FileDescriptorName=listen, never bound
 * again, a unix socket file never removed; and the errors for what cannot be used: a descriptor
 * that is not a listening socket, an address that matches no --listen-addr, a handover variable
 * that is not one. The process runs under `sh -c 'LISTEN_PID=$$ exec …'`, as systemd sets
 * LISTEN_PID to the pid it starts.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import { libc, listenUnix } from "../../src/libc.ts";
import { BINARY } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { echoServer, roundTrip, type Listening } from "../support/peers.ts";
import { track } from "../support/process.ts";

let echo: Listening;
let dir = "";
const opened: number[] = [];
beforeAll(async () => {
  echo = await echoServer();
  dir = mkdtempSync(join(tmpdir(), "etcd-gateway-activation-"));
});
afterAll(async () => {
  await echo.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(() => {
  for (const fd of opened.splice(0)) libc().close(fd);
});

/** A TCP socket listening on 127.0.0.1:`port` that nobody accepts on: what systemd holds for a socket unit. */
function tcpSocket(port: number): number {
  const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
  const fd = libc().dup((l as unknown as { fd: number }).fd);
  l.stop(true);
  opened.push(fd);
  return fd;
}

interface Run {
  lines: string[];
  exited: Promise<number>;
  kill(sig?: NodeJS.Signals): void;
}

/** Runs `etcd-gateway start args` with `fds` as descriptors 3… and `env`, LISTEN_PID set to its own pid. */
function run(fds: number[], env: Record<string, string>, args: string[]): Run {
  const proc = track(
    Bun.spawn(["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', resolve(BINARY), "start", "--health-check=none", `--endpoints=127.0.0.1:${echo.port}`, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "ignore", "pipe", ...fds],
    }),
  );
  const lines: string[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    for await (const c of proc.stderr as ReadableStream<Uint8Array>) lines.push(...decoder.decode(c).split("\n").filter((l) => l !== ""));
  })();
  return { lines, exited: proc.exited, kill: (sig = "SIGTERM") => proc.kill(sig) };
}

/** Where a /proc fd link points, or "" when it is gone. */
function readlinkOr(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return "";
  }
}

const ready = (r: Run) => waitFor("ready", () => r.lines.find((l) => l.includes("ready to proxy client requests")), 10_000);

test("a TCP socket from systemd is served as the --listen-addr it is bound to, not bound again (the test holds the address, so a bind would fail)", async () => {
  const port = freePort();
  const fd = tcpSocket(port);
  const r = run([fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "etcd-gateway.socket" }, [`--listen-addr=127.0.0.1:${port}`]);
  const line = JSON.parse(await ready(r)) as Record<string, unknown>;
  expect(line["handed-sockets"]).toBe(1);
  expect(line["from-systemd"]).toBe(1);
  expect(await roundTrip(port, "through systemd's socket")).toBe("through systemd's socket");
  r.kill();
  expect(await r.exited).toBe(0);
});

test("with --workers=2, both processes accept on systemd's one socket (the worker is handed it by the primary)", async () => {
  const port = freePort();
  const fd = tcpSocket(port);
  const r = run([fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "etcd-gateway.socket" }, [`--listen-addr=127.0.0.1:${port}`, "--workers=2"]);
  await ready(r);
  const socketInode = readlinkSync(`/proc/self/fd/${fd}`);
  const holders = (pid: number) => readdirSync(`/proc/${pid}/fd`).filter((f) => readlinkOr(`/proc/${pid}/fd/${f}`) === socketInode).length;
  const pids = Bun.spawnSync(["pgrep", "-f", "--", `listen-addr=127.0.0.1:${port}`]).stdout.toString().trim().split("\n").map(Number);
  expect(pids.length).toBe(2);
  for (const pid of pids) expect(holders(pid)).toBeGreaterThan(0);
  for (let i = 0; i < 20; i++) expect(await roundTrip(port, `n${i}`)).toBe(`n${i}`);
  r.kill();
  expect(await r.exited).toBe(0);
});

test("FileDescriptorName=listen makes a socket stand for the --listen-addr of its kind when the addresses differ", async () => {
  const [asked, given] = [freePort(), freePort()];
  const fd = tcpSocket(given);
  const r = run([fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "listen" }, [`--listen-addr=127.0.0.1:${asked}`]);
  await ready(r);
  expect(await roundTrip(given, "by name")).toBe("by name");
  r.kill();
  expect(await r.exited).toBe(0);
});

test("a unix socket from systemd is served and its file is left in place when the gateway stops (systemd owns it)", async () => {
  const path = join(dir, "systemd.sock");
  const { fd } = listenUnix(path, 0o600, 16);
  opened.push(fd);
  const r = run([fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "etcd-gateway.socket" }, [`--listen-addr=unix://${path}`]);
  await ready(r);
  const answer = await new Promise<string>((res, rej) => {
    const s = connect({ path }, () => s.write("over unix"));
    s.on("data", (d: Buffer) => (res(d.toString()), s.destroy()));
    s.on("error", rej);
  });
  expect(answer).toBe("over unix");
  r.kill();
  expect(await r.exited).toBe(0);
  expect(existsSync(path)).toBe(true);
});

test("a socket on an address that is no --listen-addr or --admin-addr is refused with one line naming it, exit 1", async () => {
  const [asked, given] = [freePort(), freePort()];
  const fd = tcpSocket(given);
  const r = run([fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "etcd-gateway.socket" }, [`--listen-addr=127.0.0.1:${asked}`]);
  expect(await r.exited).toBe(1);
  await waitFor("the error", () => r.lines.length > 0 || undefined, 2000);
  expect(r.lines).toEqual([`etcd-gateway: --listen-addr: systemd passed a socket on 127.0.0.1:${given} (descriptor 3, FileDescriptorName=etcd-gateway.socket) that serves none of 127.0.0.1:${asked}; make ListenStream= one of them, or set FileDescriptorName=listen or admin`]);
});

test("a descriptor that is not a listening socket (a file, a connected socket) is refused with one line naming it, exit 1", async () => {
  const file = openSync(join(dir, "not-a-socket"), "w");
  try {
    const r = run([file], { LISTEN_FDS: "1" }, []);
    expect(await r.exited).toBe(1);
    await waitFor("the error", () => r.lines.length > 0 || undefined, 2000);
    expect(r.lines).toEqual(["etcd-gateway: --listen-addr: descriptor 3 from systemd is not a listening socket (not a socket); nothing was started"]);
  } finally {
    closeSync(file);
  }
  const conn = await Bun.connect({ hostname: "127.0.0.1", port: echo.port, socket: { data() {} } });
  try {
    const r = run([(conn as unknown as { fd: number }).fd], { LISTEN_FDS: "1", LISTEN_FDNAMES: "listen" }, []);
    expect(await r.exited).toBe(1);
    await waitFor("the error", () => r.lines.length > 0 || undefined, 2000);
    expect(r.lines).toEqual(["etcd-gateway: --listen-addr: descriptor 3 from systemd (FileDescriptorName=listen) is not a listening socket (not listening); nothing was started"]);
  } finally {
    conn.end();
  }
});

test("LISTEN_FDS meant for another process (LISTEN_PID not ours) is ignored; a handover variable that is not a list is refused", async () => {
  const port = freePort();
  const proc = track(Bun.spawn([resolve(BINARY), "start", "--health-check=none", `--endpoints=127.0.0.1:${echo.port}`, `--listen-addr=127.0.0.1:${port}`], { env: { ...process.env, LISTEN_PID: "1", LISTEN_FDS: "1" }, stdio: ["ignore", "ignore", "pipe"] }));
  const text = new Response(proc.stderr).text();
  await waitFor("the gateway binds its own socket", async () => (await roundTrip(port, "own").catch(() => "")) === "own" || undefined, 10_000);
  proc.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
  expect(await text).not.toContain("handed-sockets");
  const r = run([], { ETCD_GATEWAY_LISTEN_FDS: "{oops" }, []);
  expect(await r.exited).toBe(1);
  await waitFor("the error", () => r.lines.length > 0 || undefined, 2000);
  expect(r.lines[0]).toStartWith("etcd-gateway: --listen-addr: ETCD_GATEWAY_LISTEN_FDS is not the list a gateway hands over: ");
});
