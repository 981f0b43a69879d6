/**
 * systemd readiness (`sd_notify`): a datagram to the unix socket in `NOTIFY_SOCKET`, as etcd does
 * after it listens. Bun has no unix datagram sockets, so this calls libc through bun:ffi.
 *
 * @module
 */
import { dlopen, FFIType, ptr } from "bun:ffi";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

let libc: ReturnType<typeof open> | null | undefined;
function open() {
  return dlopen(process.platform === "linux" ? "libc.so.6" : "libc.dylib", {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  });
}

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
    libc ??= open();
    const lib = libc.symbols;
    // struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; }; '@' means the abstract namespace.
    const name = Buffer.from(path.startsWith("@") ? `\0${path.slice(1)}` : path);
    if (name.length > 107) return `NOTIFY_SOCKET path too long: ${path}`;
    const addr = Buffer.alloc(110);
    addr.writeUInt16LE(AF_UNIX, 0);
    name.copy(addr, 2);
    const addrLen = 2 + name.length + (path.startsWith("@") ? 0 : 1);
    const msg = Buffer.from(state);
    const fd = lib.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return "socket(AF_UNIX, SOCK_DGRAM) failed";
    try {
      const n = lib.sendto(fd, ptr(msg), BigInt(msg.length), 0, ptr(addr), addrLen);
      return Number(n) === msg.length ? "sent" : `sendto ${path} failed`;
    } finally {
      lib.close(fd);
    }
  } catch (e) {
    libc = null;
    return e instanceof Error ? e.message : String(e);
  }
}
