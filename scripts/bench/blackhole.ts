/**
 * A blackholed member for the failover workload: a loopback port whose SYNs are never answered.
 * A Python listener with backlog 0 that never accepts, its accept queue filled by a few held
 * connections; Linux then drops further SYNs (no SYN-ACK, no RST), as a firewall dropping packets
 * would, and a connect to it hangs until the dialer gives up.
 *
 * @module
 */
import type { Socket } from "node:net";
import { spawnChild, type Child } from "./children.ts";
import { dial, tcpConnect } from "./net.ts";

export interface Blackhole {
  port: number;
  /** `127.0.0.1:<port>` */
  address: string;
  close(): Promise<void>;
}

// Bun.listen accepts by itself and has no backlog option, hence Python.
const LISTENER = "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\ns.listen(0)\nprint('listening',flush=True)\nwhile True: time.sleep(3600)\n";

/**
 * Starts the blackhole on `port` and verifies it: fills the accept queue, then checks that two
 * further connects neither complete nor are refused within 700 ms each.
 *
 * @throws when python3 is missing or the port still answers SYNs.
 */
export async function startBlackhole(port: number): Promise<Blackhole> {
  const python = Bun.which("python3");
  if (python === null) throw new Error("python3 not installed (needed for the blackhole listener)");
  const child: Child = spawnChild("blackhole", [python, "-c", LISTENER, String(port)]);
  const fillers: Socket[] = [];
  const close = async () => {
    for (const s of fillers) s.destroy();
    await child.stop();
  };
  try {
    for (let i = 0; i < 200 && !(await Bun.file(child.logFile).text()).includes("listening"); i++) {
      if (!child.running()) throw new Error(`blackhole listener exited: ${child.logTail()}`);
      await Bun.sleep(25);
    }
    // Connects complete while the queue has room; the first that hangs shows it is full.
    for (let i = 0; i < 8; i++) {
      const { socket } = await dial(port, 300);
      if (socket === null) break;
      fillers.push(socket);
    }
    for (let i = 0; i < 2; i++) {
      const outcome = await tcpConnect(port, 700);
      if (outcome !== "timeout") throw new Error(`blackhole 127.0.0.1:${port} does not drop SYNs: a connect ended with ${outcome}`);
    }
    return { port, address: `127.0.0.1:${port}`, close };
  } catch (e) {
    await close();
    throw e;
  }
}
