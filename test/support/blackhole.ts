/**
 * A loopback port that never answers a SYN, for the tests and the failover benchmark: a listener
 * with backlog 0 that never accepts, its accept queue filled by a few held connections. Linux then
 * drops further SYNs (no SYN-ACK, no RST), as a firewall dropping packets would, and a connect to it
 * hangs until the dialer gives up, like a member behind such a firewall.
 *
 * @module
 */
import type { Socket } from "node:net";
import { tcpConnect, tryConnect } from "./net.ts";
import { track, which } from "./process.ts";

export interface Blackhole {
  port: number;
  /** `127.0.0.1:<port>`, the form `--endpoints` takes. */
  address: string;
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

/**
 * Starts a blackholed port on 127.0.0.1 and verifies it before resolving: fills the accept queue
 * until a connect hangs, then checks that one more connect neither completes nor is refused
 * within 700 ms.
 *
 * @throws when python3 is missing or the port still answers SYNs.
 */
export async function startBlackhole(): Promise<Blackhole> {
  // Tracked, so a process that dies (or a bench stopped by Ctrl-C) leaves no listener behind.
  const proc = track(Bun.spawn([which("python3"), "-c", LISTENER], { stdin: "ignore", stdout: "pipe", stderr: "inherit" }));
  const fillers: Socket[] = [];
  const close = async () => {
    for (const s of fillers) s.destroy();
    proc.kill("SIGKILL");
    await proc.exited;
  };
  try {
    const reader = proc.stdout.getReader();
    const first = await Promise.race([reader.read(), Bun.sleep(5000).then(() => null)]);
    reader.releaseLock();
    const port = Number(first?.value ? new TextDecoder().decode(first.value).trim() : NaN);
    if (!Number.isInteger(port) || port <= 0) throw new Error("the blackhole listener did not print its port within 5 s");
    const notDropped = (outcome: string) => new Error(`blackhole 127.0.0.1:${port} does not drop SYNs: a connect ended with ${outcome}`);
    // Connects complete while the queue has room (they are kept open to keep it full); the first that hangs shows it is full.
    for (let i = 0; ; i++) {
      if (i === 8) throw new Error(`port ${port} still completes connects after ${fillers.length} queued connections`);
      const { socket, outcome } = await tryConnect(port, 300);
      if (socket !== null) fillers.push(socket);
      else if (outcome === "timeout") break;
      else throw notDropped(outcome);
    }
    const outcome = await tcpConnect(port, 700);
    if (outcome !== "timeout") throw notDropped(outcome);
    return { port, address: `127.0.0.1:${port}`, close };
  } catch (e) {
    await close();
    throw e;
  }
}
