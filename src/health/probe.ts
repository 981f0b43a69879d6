/**
 * One bounded TCP connect, the cheapest proof that a member accepts connections.
 *
 * @module
 */
import { connect as netConnect } from "node:net";
import { formatHostPort } from "../addresses.ts";
import { dialErrorText, dialTimeoutText } from "../neterror.ts";

/**
 * One TCP connect to `host:port`, closed at once; resolves to null on success or the reason of the
 * failure, in Go's words (`dial tcp 127.0.0.1:2379: connect: connection refused`). Uses node:net because its `destroy()` cancels a pending connect, which `Bun.connect`
 * cannot (docs/bun.md, trap 5), so a probe of a blackholed member never outlives its timeout.
 */
export function tcpProbe(host: string, port: number, timeoutMs: number): Promise<string | null> {
  const target = { network: "tcp", address: formatHostPort(host, port) } as const;
  return new Promise((resolve) => {
    const sock = netConnect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(dialTimeoutText(target));
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(null);
    });
    sock.once("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(dialErrorText(e, target));
    });
  });
}
