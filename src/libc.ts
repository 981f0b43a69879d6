/**
 * The few C library calls Bun has no API for, through bun:ffi: duplicating a listening socket (so
 * a listener can stop accepting without giving up its address), binding a unix socket ourselves
 * (Bun's listener removes its socket file by name when it stops), the kernel's send-queue size of
 * a socket, and sending a datagram to systemd. See docs/bun.md, "listener.stop() and unix socket
 * files" and "Listening through a file descriptor".
 *
 * The library is found by name: glibc's `libc.so.6`, or musl's loader, which is also its libc.
 *
 * @module
 */
import { dlopen, FFIType, ptr, read } from "bun:ffi";

/** The functions bound, by name (test/e2e/musl.test.ts checks musl's C library has each). */
export const SYMBOLS = {
  dup: { args: [FFIType.i32], returns: FFIType.i32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64 },
  ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;

type Libc = ReturnType<typeof dlopen<typeof SYMBOLS>>["symbols"];

/**
 * Where the C library may be, most common first. On musl the first already works: musl's loader
 * answers any `libc.*` name with itself (measured with Debian's musl 1.2.3, test/e2e/musl.test.ts),
 * so glibc is never loaded into a musl process; the musl names are for loaders that do not.
 */
export function candidates(): string[] {
  const arch = process.arch === "arm64" ? "aarch64" : "x86_64";
  return ["libc.so.6", `libc.musl-${arch}.so.1`, `/lib/ld-musl-${arch}.so.1`, "libc.so"];
}

let loaded: Libc | undefined;
let loadError: string | undefined;

/**
 * The C library's functions.
 *
 * @throws {Error} naming every library tried when none loads (not Linux, or an unknown libc).
 */
export function libc(): Libc {
  if (loaded !== undefined) return loaded;
  if (loadError !== undefined) throw new Error(loadError);
  const tried: string[] = [];
  for (const name of candidates()) {
    try {
      loaded = dlopen(name, SYMBOLS).symbols;
      return loaded;
    } catch (e) {
      tried.push(`${name}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  loadError = `cannot load the C library (${tried.join("; ")})`;
  throw new Error(loadError);
}

/** errno of the last failed call (read right after it, before anything else runs). */
export function errno(): number {
  return read.i32(libc().__errno_location()!, 0);
}

const ERRNO_NAMES: Record<number, string> = { 1: "EPERM", 2: "ENOENT", 11: "EAGAIN", 13: "EACCES", 17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR", 24: "EMFILE", 28: "ENOSPC", 30: "EROFS", 36: "ENAMETOOLONG", 98: "EADDRINUSE", 99: "EADDRNOTAVAIL", 111: "ECONNREFUSED" };

/** An errno as its name (`EADDRINUSE`), or `errno N`. */
export function errnoName(n: number): string {
  return ERRNO_NAMES[n] ?? `errno ${n}`;
}

/** `struct sockaddr_un` for `path` ('@' at the start: the abstract namespace). */
export function unixAddress(path: string): { addr: Buffer; len: number } {
  const abstract = path.startsWith("@");
  const name = Buffer.from(abstract ? `\0${path.slice(1)}` : path);
  if (name.length > 107) throw new Error(`unix socket path too long: ${path}`);
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(1 /* AF_UNIX */, 0);
  name.copy(addr, 2);
  return { addr, len: 2 + name.length + (abstract ? 0 : 1) };
}

const SIOCOUTQ = 0x5411;
const FIONREAD = 0x541b;
const queued = new Int32Array(1);

function ioctlInt(fd: number, request: number): number {
  if (fd < 0) return -1;
  try {
    return libc().ioctl(fd, request, ptr(queued)) === 0 ? queued[0]! : -1;
  } catch {
    return -1;
  }
}

/** Bytes in a socket's send queue (not yet sent or not yet acknowledged), or -1 when unknown. */
export function sendQueue(fd: number): number {
  return ioctlInt(fd, SIOCOUTQ);
}

/** Bytes that arrived on a socket and are not read yet (a paused socket keeps them), or -1 when unknown. */
export function receiveQueue(fd: number): number {
  return ioctlInt(fd, FIONREAD);
}
