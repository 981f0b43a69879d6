/**
 * Shared pieces of the fault matrix (test/faults/*.test.ts): every row starts the compiled gateway,
 * puts a fault between it and a member (test/support/faultproxy.ts) or plays the faulty peer itself,
 * and asserts the row's promise, that the bytes that arrived are exactly the bytes sent (SHA-256),
 * and that the gateway's file descriptors come back to what it held after a warm-up connection.
 *
 * | file               | rows                                                                                        |
 * | ------------------ | ------------------------------------------------------------------------------------------- |
 * | dial.test.ts       | refused, SYN blackhole, closed right after accept, accept-and-silence, DNS down              |
 * | stream.test.ts     | stalled mid-stream (--idle-timeout), resets both ways, half-close both ways, slow readers and writers at both ends, 1-byte fragments, data cut after N bytes |
 * | keepalive.test.ts  | a real blackhole mid-stream (a network namespace whose loopback goes down): keepalive bound  |
 * | process.test.ts    | fd exhaustion, a flood beyond --max-connections, SIGTERM mid-transfer, SIGHUP mid-transfer   |
 *
 * A promise the gateway does not keep yet is a `test.failing` next to its row, with the bug described
 * there: it passes while the bug is there and fails once it is fixed (then make it a plain test).
 * Known so far: abandoned SYN-SENT dials keep their fd ~127 s (how many is bounded, dial.test.ts);
 * a client whose member closes right after accepting is not moved to the next member.
 *
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { startGatewayProcess, type GatewayProcess } from "../support/gateway.ts";
import { fdCount, rssKiB, sleep, waitFor } from "../support/net.ts";
import { dial, readAll, type Listening } from "../support/peers.ts";

export const MiB = 1 << 20;

/** The gateway in front of plain TCP members (echo, hash, fault proxies): no etcd health check. */
export const startGateway = (args: string[], opts?: Parameters<typeof startGatewayProcess>[1]) => startGatewayProcess(["--health-check=none", ...args], opts);

export const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Random bytes kept in memory, so any prefix of what was sent can be hashed. */
export interface Payload {
  buf: Buffer;
  hash: string;
  /** SHA-256 of the first `n` bytes. */
  prefix(n: number): string;
}

export function payload(bytes: number): Payload {
  const buf = randomBytes(bytes);
  return { buf, hash: sha256(buf), prefix: (n) => sha256(buf.subarray(0, n)) };
}

/** Writes `buf` in `piece`-sized writes, waiting for `drain` whenever the socket asks to. Rejects if the socket errors or closes first. */
export async function writeAll(s: Socket, buf: Uint8Array, piece = 256 * 1024): Promise<void> {
  for (let at = 0; at < buf.length; at += piece) {
    if (s.destroyed) throw new Error(`socket closed after ${at} of ${buf.length} bytes`);
    if (!s.write(buf.subarray(at, Math.min(at + piece, buf.length)))) {
      await new Promise<void>((resolve, reject) => {
        const done = (e?: Error) => {
          s.off("drain", done).off("close", done);
          if (e !== undefined || s.destroyed) reject(e ?? new Error("socket closed"));
          else resolve();
        };
        s.once("drain", done).once("close", done);
      });
    }
  }
}

export type Received = Awaited<ReturnType<typeof readAll>>;

/** One side of a two-way exchange on a socket. */
export interface Exchange {
  /** What the peer sent, to its EOF or a reset. */
  received: Promise<Received>;
  /** Resolves once everything was written and our FIN sent; rejects if the connection broke first. */
  sent: Promise<void>;
}

/**
 * Sends `send` on `s` while reading whatever comes back, then FIN. The last `holdTail` bytes are
 * held until the peer's FIN has arrived, so they provably flow after the other direction closed.
 */
export function exchange(s: Socket, send: Uint8Array, holdTail = 0): Exchange {
  const received = readAll(s);
  const sent = (async () => {
    await writeAll(s, send.subarray(0, send.length - holdTail));
    if (holdTail > 0) {
      const r = await received;
      if (r.error !== undefined) throw new Error(`peer reset before its FIN: ${r.error}`);
      await writeAll(s, send.subarray(send.length - holdTail));
    }
    s.end();
  })();
  sent.catch(() => {}); // observed by the tests that care; a reset row expects it to fail
  return { received, sent };
}

/**
 * One request and its echo on a fresh connection to `port`: sends `buf`, sends FIN only once all of
 * it is back (a client that half-closes early changes how the gateway counts a member that closes
 * on it), and resolves to what came back, to EOF or reset.
 */
export async function echoRequest(port: number, buf: Uint8Array): Promise<Received> {
  const s = await dial(port);
  const received = readAll(s);
  let back = 0;
  s.on("data", (c: Buffer) => {
    back += c.length;
    if (back >= buf.length) s.end();
  });
  await writeAll(s, buf).catch(() => {});
  return await received;
}

/** Sends `buf` on an open connection to an echo member; resolves to the SHA-256 of the echo once all of it is back. */
export async function echoThrough(s: Socket, buf: Uint8Array, timeoutMs = 10_000): Promise<string> {
  const h = createHash("sha256");
  let back = 0;
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  const onData = (c: Buffer) => {
    h.update(c);
    back += c.length;
    if (back >= buf.length) resolve();
  };
  const onEnd = () => reject(new Error(`the connection ended after ${back} of ${buf.length} echoed bytes`));
  const timer = setTimeout(() => reject(new Error(`${back} of ${buf.length} bytes echoed within ${timeoutMs} ms`)), timeoutMs);
  s.on("data", onData).once("end", onEnd).once("error", reject);
  try {
    await writeAll(s, buf);
    await promise;
    return h.digest("hex");
  } finally {
    clearTimeout(timer);
    s.off("data", onData).off("end", onEnd).off("error", reject);
  }
}

/** A member on 127.0.0.1 (node:net, half-close allowed) that runs `onSocket` for every connection. */
export async function member(onSocket: (s: Socket) => void): Promise<Listening> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s.on("error", () => {}).on("close", () => sockets.delete(s)));
    onSocket(s);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A member that runs `exchange(s, send, holdTail)` on every connection; `sessions` has one entry per connection. */
export async function exchangeMember(send: Uint8Array, holdTail = 0): Promise<Listening & { sessions: Exchange[] }> {
  const sessions: Exchange[] = [];
  const l = await member((s) => sessions.push(exchange(s, send, holdTail)));
  return { ...l, sessions };
}

/**
 * The gateway's open file descriptors once it has served a warm-up connection and settled (two
 * equal readings 100 ms apart): the count each row must come back to.
 */
export async function fdBaseline(gw: GatewayProcess, warmUp: () => Promise<unknown>): Promise<number> {
  await warmUp();
  let last = -1;
  return await waitFor("the gateway's fd count to settle", async () => {
    const now = fdCount(gw.proc.pid);
    const settled = now === last;
    last = now;
    await sleep(100);
    return settled ? now : undefined;
  }, 3000, 0);
}

/** Waits (bounded) until the gateway holds at most `baseline` fds, or at most `baseline + extra()` for fds a row accounts for. */
export async function fdsBack(gw: GatewayProcess, baseline: number, timeoutMs = 5000, extra: () => number = () => 0): Promise<void> {
  await waitFor(`the gateway's fds back to ${baseline}`, () => fdCount(gw.proc.pid) <= baseline + extra(), timeoutMs);
}

/** One sample of a gateway metric from its admin endpoint (0 when absent). `Connection: close`, so no admin socket is left open for the fd checks to count. */
export async function metric(adminPort: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`, { headers: { connection: "close" } })).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`etcd_gateway_${name}`)) continue;
    const m = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m?.[1] !== `etcd_gateway_${name}`) continue;
    const have = (m[2] ?? "").split(",");
    if (want.every((w) => have.includes(w))) return Number(m[3]);
  }
  return 0;
}

/** The access-log records (`--access-log=stderr`) the gateway has written so far. */
export function accessRecords(gw: GatewayProcess): Record<string, unknown>[] {
  return gw.records().filter((r) => "termination" in r);
}

/** A TCP socket as `ss` shows it. */
export interface TcpSocketInfo {
  state: string;
  recvQ: number;
  sendQ: number;
  local: string;
  peer: string;
  /** The `users:((...))` column, when asked for with `processes`. */
  process: string;
}

/** TCP sockets on this host matching an `ss` filter expression, e.g. `( sport = :1234 )`. */
export function tcpSockets(filter: string, processes = false): TcpSocketInfo[] {
  const out = Bun.spawnSync(["ss", processes ? "-tnapH" : "-tnaH", filter]).stdout.toString();
  return out
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      const [state = "", recvQ = "0", sendQ = "0", local = "", peer = "", ...rest] = l.trim().split(/\s+/);
      return { state, recvQ: Number(recvQ), sendQ: Number(sendQ), local, peer, process: rest.join(" ") };
    });
}

/** Samples a process's RSS every `everyMs` until stopped: its reading at the start and its peak. */
export function sampleRss(pid: number, everyMs = 25): { stop(): { baselineKiB: number; peakKiB: number } } {
  const baselineKiB = rssKiB(pid);
  let peakKiB = baselineKiB;
  const timer = setInterval(() => {
    try {
      peakKiB = Math.max(peakKiB, rssKiB(pid));
    } catch {
      // the process has exited
    }
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return { baselineKiB, peakKiB };
    },
  };
}

/** Resolves after `ms`, for racing a promise against a deadline: `await Promise.race([p, after(3000)])`. */
export const after = <T = "timeout">(ms: number, value = "timeout" as T) => sleep(ms).then(() => value);
