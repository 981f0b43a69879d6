/** systemd integration: sd_notify READY=1 after listening and STOPPING=1 on drain, through a real unix datagram socket. */
import { afterEach, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { waitFor } from "../support/net.ts";
import { which } from "../support/process.ts";

afterEach(stopAllGateways);

// A stand-in for systemd's notify socket: python3 binds a unix datagram socket and prints what arrives.
const RECEIVER = [
  "import socket, sys",
  "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
  "s.bind(sys.argv[1])",
  "print('bound', flush=True)",
  "while True: print(s.recv(4096).decode().replace('\\n', '|'), flush=True)",
].join("\n");

test("with NOTIFY_SOCKET set, the gateway sends READY=1 (with MAINPID) once it listens and STOPPING=1 when it drains", async () => {
  const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-notify-"));
  const sock = join(dir, "notify.sock");
  const receiver = Bun.spawn([which("python3"), "-c", RECEIVER, sock], { stdout: "pipe", stderr: "inherit" });
  const got: string[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    for await (const c of receiver.stdout) got.push(...decoder.decode(c).split("\n").filter((l) => l !== ""));
  })();
  try {
    await waitFor("the notify socket", () => existsSync(sock), 5000);
    const env = { ...process.env, NOTIFY_SOCKET: sock };
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--health-check=none"], {
      wrap: (cmd) => ["env", `NOTIFY_SOCKET=${env.NOTIFY_SOCKET}`, ...cmd],
    });
    await waitFor("READY=1", () => got.includes(`READY=1|MAINPID=${gw.proc.pid}`), 5000);
    expect(gw.lines.some((l) => l.includes("notified init daemon"))).toBe(true);
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    await waitFor("STOPPING=1", () => got.includes("STOPPING=1"), 5000);
  } finally {
    receiver.kill();
    await receiver.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("without NOTIFY_SOCKET nothing is sent and nothing is logged about it", async () => {
  const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--health-check=none"], { wrap: (cmd) => ["env", "-u", "NOTIFY_SOCKET", ...cmd] });
  expect(gw.lines.some((l) => l.includes("notif"))).toBe(false);
});
