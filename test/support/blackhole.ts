/**
 * A loopback address that never answers a SYN: a listener that never accepts, with its accept
 * queue filled, so Linux drops further SYNs (no SYN-ACK, no RST) and a connect hangs until its
 * timeout, like a member behind a firewall that drops packets.
 */
import { connect, type Socket } from "node:net";
import { which } from "./cluster.ts";

export interface Blackhole {
  port: number;
  /** Closes the filler connections and kills the listener process. */
  close(): Promise<void>;
}

// Bun.listen accepts by itself and has no backlog option, so the listener lives in a small Python
// process: backlog 0 (a queue of one on Linux), never accept, print the port, sleep until killed.
const LISTENER = [
  "import socket, sys, time",
  "s = socket.socket()",
  "s.bind(('127.0.0.1', 0))",
  "s.listen(0)",
  "print(s.getsockname()[1], flush=True)",
  "while True: time.sleep(3600)",
].join("\n");

/** Connects to 127.0.0.1:port; resolves to the socket once connected, or null after `timeoutMs` (the attempt is cancelled). */
function tryConnect(port: number, timeoutMs: number): Promise<Socket | null> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    const timer = setTimeout(() => {
      s.destroy();
      resolve(null);
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once("error", () => {
      clearTimeout(timer);
      s.destroy();
      resolve(null);
    });
  });
}

/**
 * Starts a blackholed port on 127.0.0.1 and checks that a connect to it does not complete within
 * 300 ms before resolving.
 *
 * @throws when python3 is missing or the queue cannot be filled.
 */
export async function startBlackhole(): Promise<Blackhole> {
  const proc = Bun.spawn([which("python3"), "-c", LISTENER], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  const close = async () => {
    for (const s of fillers) s.destroy();
    proc.kill("SIGKILL");
    await proc.exited;
  };
  const fillers: Socket[] = [];
  try {
    const reader = proc.stdout.getReader();
    const first = await Promise.race([reader.read(), Bun.sleep(5000).then(() => null)]);
    reader.releaseLock();
    const port = Number(first?.value ? new TextDecoder().decode(first.value).trim() : NaN);
    if (!Number.isInteger(port) || port <= 0) throw new Error("the blackhole listener did not print its port within 5 s");
    // Connect until one hangs: the connections that complete are the ones queued (kept open to keep the queue full).
    for (let i = 0; i < 8; i++) {
      const s = await tryConnect(port, 300);
      if (s === null) return { port, close };
      fillers.push(s);
    }
    throw new Error(`port ${port} still completes connects after ${fillers.length} queued connections`);
  } catch (e) {
    await close();
    throw e;
  }
}
