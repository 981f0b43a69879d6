/**
 * Issue 20, test strength: a symlink at a unix listen path is refused and left untouched (docs/flags.md,
 * `--listen-addr`: "a symlink there is an error and is left untouched") also when it points at a
 * stale socket, the one thing the gateway would otherwise replace: a real socket file whose server
 * was killed. Neither the link nor its target may be followed, removed or changed.
 */
import { afterAll, afterEach, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, readlinkSync, rmSync, symlinkSync, writeFileSync, type Stats } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { track, which } from "../support/process.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-strength-listeners-"));
afterEach(stopAllGateways);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** How a connect to the unix socket `path` ends: "connected", or the error code (ECONNREFUSED for a socket nobody serves). */
function unixConnect(path: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const done = (outcome: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done("timeout"), 2000);
    s.once("connect", () => done("connected"));
    s.once("error", (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
  });
}

/** Leaves a stale socket file at `path`: a server binds and listens there, then is SIGKILLed (nothing unlinks it). */
async function staleSocket(path: string): Promise<void> {
  const server = track(Bun.spawn([which("python3"), "-c", [
    "import os, signal, socket",
    "s = socket.socket(socket.AF_UNIX)",
    `s.bind(${JSON.stringify(path)})`,
    "s.listen(16)",
    "os.kill(os.getpid(), signal.SIGKILL)",
  ].join("\n")], { stdin: "ignore", stdout: "ignore", stderr: "inherit" }));
  await server.exited;
  expect(server.signalCode).toBe("SIGKILL");
}

/** What must not change about a file: which file it is, its type and mode, and its status change time (a chmod, a relink). */
const identity = (s: Stats) => ({ dev: s.dev, ino: s.ino, mode: s.mode, ctimeMs: s.ctimeMs, nlink: s.nlink });

test("a symlink at a unix listen path that points at a stale socket is neither followed nor removed: one line naming --listen-addr, exit 1, link and socket as they were", async () => {
  const target = join(dir, "stale.sock");
  await staleSocket(target);
  expect(lstatSync(target).isSocket()).toBe(true);
  expect(await unixConnect(target)).toBe("ECONNREFUSED"); // stale: nobody serves it
  const path = join(dir, "gateway.sock");
  symlinkSync(target, path);
  const [link, socket] = [identity(lstatSync(path)), identity(lstatSync(target))];
  // File times come from a coarse clock: wait until it has moved on, so any change by the gateway shows in ctime.
  const tick = join(dir, "tick");
  await waitFor("the file clock to move on", () => (writeFileSync(tick, ""), lstatSync(tick).ctimeMs > Math.max(link.ctimeMs, socket.ctimeMs)), 2000, 1);

  const gw = await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${freePort()}`, "--health-check=none"], { waitReady: false });
  const code = await Promise.race([gw.proc.exited, sleep(5000).then(() => "still running after 5 s")]);
  expect(code, gw.lines.join("\n")).toBe(1);
  await waitFor("the error line", () => gw.lines.length > 0, 2000);
  await gw.stop();
  expect(gw.lines).toEqual([`etcd-gateway: --listen-addr: cannot listen: ${path} is a symbolic link, not a socket; nothing was changed`]);

  expect(lstatSync(path).isSymbolicLink()).toBe(true);
  expect(identity(lstatSync(path))).toEqual(link);
  expect(readlinkSync(path)).toBe(target);
  expect(lstatSync(target).isSocket()).toBe(true);
  expect(identity(lstatSync(target))).toEqual(socket);
  expect(await unixConnect(target)).toBe("ECONNREFUSED"); // and nothing listens there now
}, 20_000);
