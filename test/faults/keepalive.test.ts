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
 *
 * The other side of that bound: a peer that is alive but slow (it stops reading, its receive window
 * closes, and it answers every window probe) is never cut, on the member leg or on the client leg of
 * a listener other hosts can reach (in a namespace, a wildcard listener reaches only its loopback).
 * TCP_USER_TIMEOUT, which the gateway set before, cut both (docs/bun.md, "TCP_USER_TIMEOUT cuts slow
 * readers").
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { readAll } from "../support/peers.ts";
import { which } from "../support/process.ts";
import { accessRecords, after, echoThrough, fdBaseline, fdsBack, MiB, payload, startGateway, writeAll, type Payload, type Received } from "./harness.ts";

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

/**
 * A member for the slow-peer rows, on the namespace's 127.0.0.1, printing its port first. `send N`:
 * sends N pseudo-random bytes (seed 7) to each connection, then closes. `slow-reader P`: reads 4 KiB,
 * stops reading for P seconds, then reads to EOF and answers `<bytes> <sha256>`. `sink`: accepts and
 * never reads.
 */
const SLOW_MEMBER = [
  "import hashlib, random, socket, sys, threading, time",
  "mode, arg = sys.argv[1], float(sys.argv[2])",
  "s = socket.socket()",
  "s.bind(('127.0.0.1', 0))",
  "s.listen(16)",
  "print(s.getsockname()[1], flush=True)",
  "held = []",
  "def serve(c):",
  "    if mode == 'send':",
  "        c.sendall(random.Random(7).randbytes(int(arg)))",
  "    elif mode == 'slow-reader':",
  "        h, n = hashlib.sha256(), 0",
  "        first = c.recv(4096)",
  "        h.update(first); n += len(first)",
  "        time.sleep(arg)",
  "        while True:",
  "            b = c.recv(1 << 20)",
  "            if not b: break",
  "            h.update(b); n += len(b)",
  "        c.sendall(f'{n} {h.hexdigest()}'.encode())",
  "    else:",
  "        held.append(c)",
  "        return",
  "    c.close()",
  "while True:",
  "    c, _ = s.accept()",
  "    threading.Thread(target=serve, args=(c,), daemon=True).start()",
].join("\n");

/** A client that reads 4 KiB, stops reading for argv[2] seconds, then reads to EOF: prints `FIN <bytes> <sha256>`, or `RESET <bytes>`. */
const PAUSING_CLIENT = [
  "import hashlib, socket, sys, time",
  "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))",
  "h, n = hashlib.sha256(), 0",
  "first = c.recv(4096)",
  "h.update(first); n += len(first)",
  "time.sleep(float(sys.argv[2]))",
  "try:",
  "    while True:",
  "        b = c.recv(1 << 20)",
  "        if not b: break",
  "        h.update(b); n += len(b)",
  "    print('FIN', n, h.hexdigest(), flush=True)",
  "except ConnectionResetError:",
  "    print('RESET', n, flush=True)",
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

/**
 * A member (`script` run by python3 with `args`) in a fresh network namespace and a gateway inside
 * it, listening on a unix socket (and on `listen`, given); the gateway's pid is gw.proc.pid.
 */
async function isolatedGateway(name: string, script: string, args: string[] = [], listen: string[] = []): Promise<Omit<Isolated, "baseline"> & { memberPort: number }> {
  const member = Bun.spawn(["unshare", "-n", "bash", "-c", 'ip link set lo up && exec python3 -c "$0" "$@"', script, ...args], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  members.push(member);
  const first = await Promise.race([member.stdout.getReader().read(), after(5000, null)]);
  const port = Number(first?.value ? new TextDecoder().decode(first.value).trim() : NaN);
  if (!Number.isInteger(port) || port <= 0) throw new Error("the namespaced member did not print its port within 5 s");
  const socketPath = join(dir, `${name}.sock`);
  const gw = await startGateway([`--listen-addr=unix://${socketPath}`, ...listen.map((a) => `--listen-addr=${a}`), `--endpoints=127.0.0.1:${port}`, "--keepalive-time=1s", "--access-log=stderr"], {
    // nsenter execs the gateway in place: gw.proc.pid is the gateway's own pid.
    wrap: (cmd) => ["nsenter", `--net=/proc/${member.pid}/ns/net`, "--", ...cmd],
  });
  return { member, gw, socketPath, memberPort: port };
}

/** An echo member in a fresh network namespace and a gateway inside it; fds measured after a warm-up exchange. */
async function isolate(name: string, data: Payload): Promise<Isolated> {
  const { member, gw, socketPath } = await isolatedGateway(name, ECHO);
  const entry: Isolated = { member, gw, socketPath, baseline: 0 };
  isolated.push(entry);
  entry.baseline = await fdBaseline(entry.gw, async () => {
    const s = await dialUnix(entry.socketPath);
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
function blackhole(i: { member: Subprocess }) {
  const r = Bun.spawnSync(["nsenter", `--net=/proc/${i.member.pid}/ns/net`, "ip", "link", "set", "lo", "down"]);
  if (r.exitCode !== 0) throw new Error(`ip link set lo down failed: ${r.stderr.toString()}`);
}

/** Receive queues of the TCP sockets on `port` in the namespace of `member`, as `ss` shows them. */
function recvQueues(member: Subprocess, port: number): number[] {
  const out = Bun.spawnSync(["nsenter", `--net=/proc/${member.pid}/ns/net`, "ss", "-tnH", `( sport = :${port} )`]).stdout.toString();
  return out.split("\n").filter((l) => l.trim() !== "").map((l) => Number(l.trim().split(/\s+/)[1]));
}

/** Resolves with what the connection brought, or "timeout" once `ms` have passed since `t0`. */
const within = <T,>(p: Promise<T>, t0: number, ms: number) => Promise.race([p, after(Math.max(0, t0 + ms - performance.now()))]);

afterAll(async () => {
  await stopAllGateways();
  for (const m of members) {
    m.kill("SIGKILL");
    await m.exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!canIsolate)("a real blackhole mid-stream (the member's packets dropped)", () => {
  let idle: { conn: Promise<Received>; gw: GatewayProcess; baseline: number };
  let busy: { closed: Promise<Received>; gw: GatewayProcess };
  let window: Promise<{ took: number; got: Received | "timeout"; gw: GatewayProcess }>;
  let t0 = 0;
  let data: Payload;

  beforeAll(async () => {
    data = payload(MiB);
    window = closedWindowThenVanished();
    window.catch(() => {}); // awaited by its test
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
    busy = { closed: received[1], gw: b.gw };
  }, 30_000);

  /**
   * A member that stops reading during an upload (its window closes; it answers the gateway's window
   * probes), and then vanishes: the probes go unanswered, which is silence like any other.
   */
  async function closedWindowThenVanished() {
    const i = await isolatedGateway("window", SLOW_MEMBER, ["sink", "0"]);
    const s = await dialUnix(i.socketPath);
    s.on("error", () => {});
    const got = readAll(s);
    const upload = payload(16 * MiB);
    void writeAll(s, upload.buf).catch(() => {});
    // The member's receive queue full and no longer growing: its window is closed.
    let last = -1;
    await waitFor("the member's window closed", async () => {
      const q = recvQueues(i.member, i.memberPort)[0] ?? 0;
      const still = q > 0 && q === last;
      last = q;
      await sleep(200);
      return still;
    }, 10_000, 0);
    blackhole(i);
    const start = performance.now();
    const r = await within(got, start, KEEPALIVE_BOUND_MS + SLACK_MS);
    return { took: performance.now() - start, got: r, gw: i.gw };
  }

  test("an idle stream: keepalive ends the member leg within --keepalive-time + 10 s, the client's leg is closed with it, fds come back", async () => {
    const got = await Promise.race([idle.conn, after(KEEPALIVE_BOUND_MS + SLACK_MS)]);
    const took = performance.now() - t0;
    console.log(`real blackhole, idle stream: closed after ${(took / 1000).toFixed(1)} s`);
    expect(got).not.toBe("timeout");
    expect(took).toBeGreaterThan(5000); // keepalive's doing, not something quicker
    // Everything echoed before the blackhole, nothing after.
    expect(got).toEqual({ hash: data.hash, bytes: MiB });
    const record = await waitFor("the stream's access-log record", () => accessRecords(idle.gw).find((r) => r.bytes_from_client === MiB), 3000);
    // Found in issue 20: logged as member-reset, though the member reset nothing (it went silent).
    expect(record.termination).toBe("member-timeout");
    await fdsBack(idle.gw, idle.baseline, 2000);
  });

  // Linux sends no keepalive probes while data is unacknowledged, so a member that vanishes with a
  // request in flight was only given up after tcp_retries2 (15 retransmissions, about 15 minutes)
  // and the client hung that long; the gateway gives up a peer that acknowledges nothing for
  // --keepalive-time + 10 s while bytes wait (src/datapath/stall.ts), the same bound as the idle case.
  test("a stream with a request in flight to the vanished member is closed within the same bound", async () => {
    const got = await within(busy.closed, t0, KEEPALIVE_BOUND_MS + SLACK_MS);
    console.log(`real blackhole, stream with a request in flight: closed after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(got).not.toBe("timeout");
    const record = await waitFor("the stream's access-log record", () => accessRecords(busy.gw).find((r) => Number(r.bytes_from_client) > MiB), 3000);
    expect(record.termination).toBe("member-timeout");
  });

  test("the gateway that held the stream with a request in flight gets its fds back", async () => {
    const busyOne = isolated[1]!;
    await fdsBack(busyOne.gw, busyOne.baseline, 2000);
  });

  test("a member that closed its window and then vanished (window probes unanswered) is dropped within the same bound", async () => {
    const { took, got, gw } = await window;
    console.log(`real blackhole, member with its window closed: closed after ${(took / 1000).toFixed(1)} s`);
    expect(got).not.toBe("timeout");
    const record = await waitFor("the upload's access-log record", () => accessRecords(gw).find((r) => Number(r.bytes_from_client) > MiB), 3000);
    expect(record.termination).toBe("member-timeout");
  });
});

describe.skipIf(!canIsolate)("a slow peer that answers is never cut (found in issue 20: TCP_USER_TIMEOUT reset both)", () => {
  /** Longer than the silence bound, so a gateway that cuts a closed window cuts it. */
  const PAUSE_S = KEEPALIVE_BOUND_MS / 1000 + 3;
  const SIZE = 16 * MiB;
  let slowClient: Promise<{ out: string; gw: GatewayProcess }>;
  let slowMember: Promise<{ reply: string; gw: GatewayProcess }>;
  let upload: Payload;

  beforeAll(() => {
    upload = payload(SIZE);
    slowClient = pausingClient();
    slowMember = pausingMember();
    for (const p of [slowClient, slowMember]) p.catch(() => {}); // awaited by their tests
  });

  /** A client of a wildcard listener (keepalive on the client leg) that stops reading a 16 MiB reply for PAUSE_S, then reads it all. */
  async function pausingClient() {
    const listenPort = freePort(); // free in the host's namespace; the new one has nothing on it
    const i = await isolatedGateway("slow-client", SLOW_MEMBER, ["send", String(SIZE)], [`0.0.0.0:${listenPort}`]);
    const client = Bun.spawn(["nsenter", `--net=/proc/${i.member.pid}/ns/net`, "python3", "-c", PAUSING_CLIENT, String(listenPort), String(PAUSE_S)], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
    members.push(client);
    const out = await Promise.race([new Response(client.stdout).text(), after(PAUSE_S * 1000 + 15_000)]);
    return { out: out.trim(), gw: i.gw };
  }

  /** A member that stops reading a 16 MiB upload for PAUSE_S, then reads it all and answers with its count and hash. */
  async function pausingMember() {
    const i = await isolatedGateway("slow-member", SLOW_MEMBER, ["slow-reader", String(PAUSE_S)]);
    const s = await dialUnix(i.socketPath);
    s.on("error", () => {});
    let reply = "";
    s.on("data", (c: Buffer) => (reply += c.toString()));
    const ended = new Promise<void>((r) => s.once("close", () => r()));
    await writeAll(s, upload.buf).catch(() => {});
    s.end();
    await Promise.race([ended, after(PAUSE_S * 1000 + 15_000)]);
    return { reply, gw: i.gw };
  }

  test("a client that stops reading a reply for longer than --keepalive-time + 10 s gets every byte, then the member's FIN", async () => {
    const expected = Bun.spawnSync(["python3", "-c", `import hashlib, random; print(hashlib.sha256(random.Random(7).randbytes(${SIZE})).hexdigest())`]).stdout.toString().trim();
    const { out, gw } = await slowClient;
    expect(out).toBe(`FIN ${SIZE} ${expected}`);
    const record = await waitFor("the access-log record", () => accessRecords(gw).find((r) => r.bytes_from_member === SIZE), 3000);
    expect(record.termination).toBe("member-close");
  }, 40_000);

  test("a member that stops reading an upload for longer than --keepalive-time + 10 s gets every byte and answers", async () => {
    const { reply, gw } = await slowMember;
    expect(reply).toBe(`${SIZE} ${upload.hash}`);
    const record = await waitFor("the access-log record", () => accessRecords(gw).find((r) => r.bytes_from_client === SIZE), 3000);
    expect(["client-close", "member-close"]).toContain(record.termination as string);
  }, 40_000);
});
