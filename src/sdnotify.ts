/**
 * systemd readiness (`sd_notify`): a datagram to the unix socket in `NOTIFY_SOCKET`, as etcd does
 * after it listens. Bun has no unix datagram sockets, so this calls the C library (src/libc.ts).
 *
 * @module
 */
import { ptr } from "bun:ffi";
import { libc, unixAddress } from "./libc.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

/**
 * Sends `state` (e.g. `READY=1`, `STOPPING=1`) to systemd when `NOTIFY_SOCKET` is set.
 *
 * @returns "sent", "unset" (no NOTIFY_SOCKET: not under systemd), or the error text.
 * @example notify("READY=1\nMAINPID=" + process.pid)
 */
export function notify(state: string): "sent" | "unset" | string {
  const path = process.env.NOTIFY_SOCKET;
  if (path === undefined || path === "") return "unset";
  try {
    const lib = libc();
    const { addr, len } = unixAddress(path);
    const msg = Buffer.from(state);
    const fd = lib.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return "socket(AF_UNIX, SOCK_DGRAM) failed";
    try {
      const n = lib.sendto(fd, ptr(msg), BigInt(msg.length), 0, ptr(addr), len);
      return Number(n) === msg.length ? "sent" : `sendto ${path} failed`;
    } finally {
      lib.close(fd);
    }
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}
