/**
 * Fault matrix, a true blackhole mid-stream: the member's packets vanish (no ACK, no RST, no answer
 * to keepalive probes), which is what TCP keepalive (`--keepalive-time`, then Bun's 10 probes 1 s
 * apart) is there to detect.
 *
 * Loopback cannot drop packets selectively here: there is no iptables or nft, and this kernel has
 * no tc filter actions (u32, gact) to drop by port. And on the shared loopback a fault proxy's kernel
 * keeps ACKing, so keepalive never fires there (stream.test.ts covers that stall with --idle-timeout).
 * So the gateway and its member (a small Python echo server) run in a network namespace of their
 * own, and the fault is that namespace's loopback going down: from then on every packet between
 * them is dropped, silently. The client reaches the gateway over a unix socket, which no network
 * namespace affects (so it sees the gateway's reset as a plain EOF: unix sockets have no RST; the
 * access log says who ended it). Needs root (or user namespaces) and `unshare`, `nsenter`, `ip`;
 * skipped where they are missing.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { waitFor } from "../support/net.ts";
import { readAll } from "../support/peers.ts";
import { which } from "../support/process.ts";
import { accessRecords, after, echoThrough, fdBaseline, fdsBack, MiB, payload, startGateway, type Payload, type Received } from "./harness.ts";

setDefaultTimeout(30_000);

const canIsolate = (() => {
  try {
    for (const tool of ["unshare", "nsenter", "ip", "python3"]) which(tool);
    return Bun.spawnSync(["unshare", "-n", "ip", "link", "set", "lo", "up"]).exitCode === 0;
  } catch {
    return false;
  }
})();
if (!canIsolate) console.warn("keepalive.test.ts: skipped, network namespaces are not available (needs root, unshare, nsenter, ip, python3)");

/** A threaded echo server on the namespace's 127.0.0.1 that prints its port, then serves until killed. */
const ECHO = [
  "import socket, threading",
  "s = socket.socket()",
  "s.bind(('127.0.0.1', 0))",
  "s.listen(16)",
  "print(s.getsockname()[1], flush=True)",
  "def serve(c):",
  "    while True:",
  "        b = c.recv(65536)",
  "        if not b: break",
  "        c.sendall(b)",
  "    c.close()",
  "while True:",
  "    c, _ = s.accept()",
  "    threading.Thread(target=serve, args=(c,), daemon=True).start()",
].join("\n");

/** 1 s of idle time, then 10 probes 1 s apart (Bun's fixed TCP_KEEPINTVL and TCP_KEEPCNT). */
const KEEPALIVE_BOUND_MS = 1000 + 10 * 1000;
const SLACK_MS = 3000;

interface Isolated {
  member: Subprocess<"ignore", "pipe", "inherit">;
  gw: GatewayProcess;
  socketPath: string;
  baseline: number;
}

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-netns-"));
const isolated: Isolated[] = [];
const members: Subprocess[] = [];

/** A member in a fresh network namespace and a gateway inside it, listening on a unix socket; fds measured after a warm-up exchange. */
async function isolate(name: string, data: Payload): Promise<Isolated> {
  const member = Bun.spawn(["unshare", "-n", "bash", "-c", 'ip link set lo up && exec python3 -c "$0"', ECHO], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  members.push(member);
  const first = await Promise.race([member.stdout.getReader().read(), after(5000, null)]);
  const port = Number(first?.value ? new TextDecoder().decode(first.value).trim() : NaN);
  if (!Number.isInteger(port) || port <= 0) throw new Error("the namespaced echo member did not print its port within 5 s");
  const socketPath = join(dir, `${name}.sock`);
  const gw = await startGateway([`--listen-addr=unix://${socketPath}`, `--endpoints=127.0.0.1:${port}`, "--keepalive-time=1s", "--access-log=stderr"], {
    // nsenter execs the gateway in place: gw.proc.pid is the gateway's own pid.
    wrap: (cmd) => ["nsenter", `--net=/proc/${member.pid}/ns/net`, "--", ...cmd],
  });
  const entry: Isolated = { member, gw, socketPath, baseline: 0 };
  isolated.push(entry);
  entry.baseline = await fdBaseline(gw, async () => {
    const s = await dialUnix(socketPath);
    await echoThrough(s, data.buf.subarray(0, 4096));
    s.end();
    await readAll(s);
  });
  return entry;
}

function dialUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ path, allowHalfOpen: true });
    s.once("connect", () => resolve(s)).once("error", reject);
  });
}

/** Drops every packet on the namespace's loopback from now on. */
function blackhole(i: Isolated) {
  const r = Bun.spawnSync(["nsenter", `--net=/proc/${i.member.pid}/ns/net`, "ip", "link", "set", "lo", "down"]);
  if (r.exitCode !== 0) throw new Error(`ip link set lo down failed: ${r.stderr.toString()}`);
}

describe.skipIf(!canIsolate)("a real blackhole mid-stream (the member's packets dropped)", () => {
  let idle: { conn: Promise<Received>; gw: GatewayProcess; baseline: number };
  let busy: { closed: Promise<Received> };
  let t0 = 0;
  let data: Payload;

  beforeAll(async () => {
    data = payload(MiB);
    const [a, b] = await Promise.all([isolate("idle", data), isolate("busy", data)]);
    // One connection each, 1 MiB echoed byte-exact, so both legs are established and have carried data.
    const [sa, sb] = await Promise.all([dialUnix(a.socketPath), dialUnix(b.socketPath)]);
    sa.on("error", () => {});
    sb.on("error", () => {});
    const received = [readAll(sa), readAll(sb)] as const;
    expect(await Promise.all([echoThrough(sa, data.buf), echoThrough(sb, data.buf)])).toEqual([data.hash, data.hash]);
    blackhole(a);
    blackhole(b);
    t0 = performance.now();
    // The busy one sends a request into the blackhole: unacknowledged bytes on the member leg.
    sb.write(data.buf.subarray(0, 64 * 1024));
    idle = { conn: received[0], gw: a.gw, baseline: a.baseline };
    busy = { closed: received[1] };
  }, 30_000);

  afterAll(async () => {
    await stopAllGateways();
    for (const m of members) {
      m.kill("SIGKILL");
      await m.exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  test("an idle stream: keepalive ends the member leg within --keepalive-time + 10 s, the client's leg is closed with it, fds come back", async () => {
    const got = await Promise.race([idle.conn, after(KEEPALIVE_BOUND_MS + SLACK_MS)]);
    const took = performance.now() - t0;
    console.log(`real blackhole, idle stream: closed after ${(took / 1000).toFixed(1)} s`);
    expect(got).not.toBe("timeout");
    expect(took).toBeGreaterThan(5000); // keepalive's doing, not something quicker
    // Everything echoed before the blackhole, nothing after.
    expect(got).toEqual({ hash: data.hash, bytes: MiB });
    const record = await waitFor("the stream's access-log record", () => accessRecords(idle.gw).find((r) => r.bytes_from_client === MiB), 3000);
    expect(record.termination).toBe("member-reset");
    await fdsBack(idle.gw, idle.baseline, 2000);
  });

  // Linux sends no keepalive probes while data is unacknowledged, so a member that vanishes with a
  // request in flight was only given up after tcp_retries2 (15 retransmissions, about 15 minutes)
  // and the client hung that long; TCP_USER_TIMEOUT of --keepalive-time + 10 s (src/libc.ts,
  // setKeepAlive) bounds it the same as the idle case.
  test("a stream with a request in flight to the vanished member is closed within the same bound", async () => {
    const left = t0 + KEEPALIVE_BOUND_MS + SLACK_MS - performance.now();
    const got = await Promise.race([busy.closed, after(Math.max(0, left))]);
    console.log(`real blackhole, stream with a request in flight: closed after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(got).not.toBe("timeout");
  });

  test("the gateway that held the stream with a request in flight gets its fds back", async () => {
    const busyOne = isolated[1]!;
    await fdsBack(busyOne.gw, busyOne.baseline, 2000);
  });
});
