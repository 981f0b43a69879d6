/**
 * The few C library calls Bun has no API for, through bun:ffi: duplicating a listening socket (so
 * a listener can stop accepting without giving up its address), setting TCP keepalive on a listening
 * socket (its accepted sockets inherit it), binding a unix socket ourselves
 * (Bun's listener removes its socket file by name when it stops), the kernel's send-queue size of
 * a socket and what its TCP_INFO says of the peer, sending a datagram to systemd, and a send that
 * never waits (MSG_DONTWAIT, for the access log to a socket), and what an inherited descriptor is
 * (the address it is bound to, whether it listens; src/inherit.ts). See docs/bun.md, "listener.stop() and unix socket
 * files" and "Listening through a file descriptor".
 *
 * The library is found by name: glibc's `libc.so.6`, or musl's loader, which is also its libc.
 *
 * @module
 */
import { dlopen, FFIType, ptr, read } from "bun:ffi";
import { chmodSync, lstatSync, unlinkSync, type Stats } from "node:fs";

/** The functions bound, by name (test/e2e/musl.test.ts checks musl's C library has each). */
export const SYMBOLS = {
  dup: { args: [FFIType.i32], returns: FFIType.i32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64 },
  ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  getsockname: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
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

const ERRNO_NAMES: Record<number, string> = { 1: "EPERM", 2: "ENOENT", 9: "EBADF", 11: "EAGAIN", 13: "EACCES", 17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR", 24: "EMFILE", 28: "ENOSPC", 30: "EROFS", 36: "ENAMETOOLONG", 88: "ENOTSOCK", 98: "EADDRINUSE", 99: "EADDRNOTAVAIL", 111: "ECONNREFUSED" };

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

/** Why `listenUnix` failed: the call, and its errno's name (`EADDRINUSE`; for chmod, Node's code). */
export class UnixListenError extends Error {
  constructor(
    readonly call: "socket" | "bind" | "chmod" | "listen",
    readonly errno: string,
  ) {
    super(`${call}: ${errno}`);
  }
}

/**
 * A unix stream socket of ours at `path`: socket(2), bind(2), chmod to `mode`, then listen(2), so
 * the mode is in place before any connect can succeed (Bun's listener removes its socket file by
 * name when it stops; this one is ours to keep). Returns the descriptor and the file it made (to
 * remove it later only if it is still ours: `removeIfSame`). A failure after bind undoes it.
 *
 * @throws {UnixListenError}
 */
export function listenUnix(path: string, mode: number, backlog: number): { fd: number; file: Stats } {
  const lib = libc();
  const fd = lib.socket(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | 0o4000 /* SOCK_NONBLOCK */ | 0o2000000 /* SOCK_CLOEXEC */, 0);
  if (fd < 0) throw new UnixListenError("socket", errnoName(errno()));
  const { addr, len } = unixAddress(path);
  if (lib.bind(fd, ptr(addr), len) !== 0) {
    const e = errnoName(errno());
    lib.close(fd);
    throw new UnixListenError("bind", e);
  }
  const file = lstatSync(path);
  const undo = (call: UnixListenError["call"], e: string) => {
    lib.close(fd);
    removeIfSame(path, file);
    return new UnixListenError(call, e);
  };
  try {
    chmodSync(path, mode);
  } catch (e) {
    throw undo("chmod", (e as NodeJS.ErrnoException).code ?? "EINVAL");
  }
  if (lib.listen(fd, backlog) !== 0) throw undo("listen", errnoName(errno()));
  return { fd, file };
}

/** Removes `path` if it is still the file `was` (another process may have bound the path since). */
export function removeIfSame(path: string, was: Stats): void {
  try {
    const now = lstatSync(path);
    if (now.ino === was.ino && now.dev === was.dev) unlinkSync(path);
  } catch {
    // gone already
  }
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

const option = new Int32Array(1);
const optionLength = new Uint32Array(1);

/** setsockopt(2) with an int value; 0, or errno's name of the failure. */
function setIntOption(fd: number, level: number, name: number, value: number): string | 0 {
  option[0] = value;
  return libc().setsockopt(fd, level, name, ptr(option), 4) === 0 ? 0 : errnoName(errno());
}

const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
/** Keepalive probes, one a second, before a silent peer is given up (Bun's fixed values). */
export const KEEPALIVE_PROBES = 10;

/** The idle time `setKeepAlive` sets for `ms`, in whole seconds (1..32767, the kernel's TCP_KEEPIDLE range). */
function keepIdleSeconds(ms: number): number {
  return Math.min(Math.max(Math.floor(ms / 1000), 1), 32_767);
}

/**
 * How long a peer may go without acknowledging anything while bytes to it wait, before the gateway
 * gives it up (src/datapath/stall.ts): the time keepalive takes to give up an idle one, idle time
 * plus one probe a second, KEEPALIVE_PROBES times.
 */
export function silenceLimitMs(keepAliveMs: number): number {
  return (keepIdleSeconds(keepAliveMs) + KEEPALIVE_PROBES) * 1000;
}

/**
 * TCP keepalive as Bun's `setKeepAlive(true, ms)` sets it (idle time in whole seconds, a probe
 * every second, 10 probes; docs/bun.md, "setKeepAlive()"). No TCP_USER_TIMEOUT: since Linux 5.5 it
 * also aborts a live peer whose receive window stays closed that long, though it answers every
 * window probe (docs/bun.md, "TCP_USER_TIMEOUT cuts slow readers"); a peer that stops acknowledging
 * bytes in flight is given up by src/datapath/stall.ts instead. On a listening socket, every socket
 * accepted afterwards starts with these options (docs/bun.md, "Keepalive through the listening socket").
 *
 * @throws {Error} naming the option that the kernel refused.
 */
export function setKeepAlive(fd: number, ms: number): void {
  const steps: [string, number, number, number][] = [
    ["SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, 1],
    ["TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE, keepIdleSeconds(ms)],
    ["TCP_KEEPINTVL", IPPROTO_TCP, TCP_KEEPINTVL, 1],
    ["TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE_PROBES],
  ];
  for (const [label, level, name, value] of steps) {
    const failed = setIntOption(fd, level, name, value);
    if (failed !== 0) throw new Error(`setsockopt ${label}: ${failed}`);
  }
}

const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
/** Names of the errnos a send on a stream whose reader is slow or gone gives, that ERRNO_NAMES lacks. */
const SEND_ERRNO_NAMES: Record<number, string> = { 32: "EPIPE", 104: "ECONNRESET", 105: "ENOBUFS", 107: "ENOTCONN" };

/**
 * send(2) with MSG_DONTWAIT and MSG_NOSIGNAL: this one call does not wait (and raises no SIGPIPE),
 * whatever O_NONBLOCK says on the socket's open file description, which is shared with the processes
 * that hold the same socket (stdout connected to journald; docs/bun.md, "process.stdout and
 * process.stderr on a pipe").
 *
 * @returns the bytes sent, or the errno's name (`EAGAIN` when the socket's send buffer is full).
 */
export function sendNow(fd: number, buf: Uint8Array): number | string {
  const n = Number(libc().sendto(fd, ptr(buf), BigInt(buf.length), MSG_DONTWAIT | MSG_NOSIGNAL, null, 0));
  if (n >= 0) return n;
  const e = errno();
  return SEND_ERRNO_NAMES[e] ?? errnoName(e);
}

const TCP_INFO = 11;
/** struct tcp_info (linux/tcp.h) up to tcpi_last_ack_recv: tcpi_retransmits at byte 2, tcpi_probes at 3, tcpi_last_ack_recv at 56. */
const tcpInfo = new Uint8Array(60);
const tcpInfoView = new DataView(tcpInfo.buffer);
const tcpInfoLength = new Uint32Array(1);

/**
 * How long (ms) the kernel has been waiting on the peer of TCP socket `fd` without an ACK: the time
 * since the last ACK while a retransmission or a window probe is unanswered (`tcpi_retransmits` or
 * `tcpi_probes` above 0), else 0 (nothing unanswered: a peer that keeps its window closed but
 * answers each probe reads 0 between probes). -1 when unknown (not a TCP socket, closed).
 * docs/bun.md, "TCP_USER_TIMEOUT cuts slow readers".
 */
export function unansweredFor(fd: number): number {
  if (fd < 0) return -1;
  tcpInfoLength[0] = tcpInfo.length;
  try {
    if (libc().getsockopt(fd, IPPROTO_TCP, TCP_INFO, ptr(tcpInfo), ptr(tcpInfoLength)) !== 0 || tcpInfoLength[0]! < 60) return -1;
  } catch {
    return -1;
  }
  return tcpInfo[2]! > 0 || tcpInfo[3]! > 0 ? tcpInfoView.getUint32(56, true) : 0;
}

/** What a socket is bound to, as getsockname(2) says: an IP address and port, or a unix socket path. */
export type SocketName = { family: "tcp"; host: string; port: number } | { family: "unix"; path: string };

const nameBuf = new Uint8Array(128);
const nameLen = new Uint32Array(1);

/** Renders an IPv6 address from 16 bytes, compressed as RFC 5952 writes it (`::1`). */
function ipv6Text(b: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (g: number[]) => g.map((x) => x.toString(16)).join(":");
  return best < 0 ? hex(groups) : `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/**
 * The address socket `fd` is bound to: TCP/IP (IPv4 or IPv6) or a unix socket path (`@name` for
 * the abstract namespace, `""` unnamed).
 *
 * @returns the name, or the errno's name (`EBADF`, `ENOTSOCK`) or `family N` for another family.
 */
export function socketName(fd: number): SocketName | string {
  nameLen[0] = nameBuf.length;
  if (libc().getsockname(fd, ptr(nameBuf), ptr(nameLen)) !== 0) return errnoName(errno());
  const view = new DataView(nameBuf.buffer);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === 2) return { family: "tcp", host: [...nameBuf.subarray(4, 8)].join("."), port };
  if (family === 10) return { family: "tcp", host: ipv6Text(nameBuf.subarray(8, 24)), port };
  if (family !== 1) return `family ${family}`;
  const raw = Buffer.from(nameBuf.subarray(2, nameLen[0]!));
  if (raw.length === 0) return { family: "unix", path: "" };
  if (raw[0] === 0) return { family: "unix", path: `@${raw.subarray(1).toString()}` };
  const end = raw.indexOf(0);
  return { family: "unix", path: raw.subarray(0, end < 0 ? raw.length : end).toString() };
}

const SO_TYPE = 3;
const SO_ACCEPTCONN = 30;
const SOCK_STREAM = 1;

/**
 * Whether `fd` is a stream socket in the listening state (SO_TYPE and SO_ACCEPTCONN).
 *
 * @returns true, or why not (`not a socket`, `not a stream socket`, `not listening`, an errno's name).
 */
export function isListeningStream(fd: number): true | string {
  const get = (name: number): number | string => {
    optionLength[0] = 4;
    return libc().getsockopt(fd, SOL_SOCKET, name, ptr(option), ptr(optionLength)) === 0 ? option[0]! : errnoName(errno());
  };
  const type = get(SO_TYPE);
  if (type === "ENOTSOCK") return "not a socket";
  if (typeof type === "string") return type;
  if (type !== SOCK_STREAM) return "not a stream socket";
  return get(SO_ACCEPTCONN) === 1 ? true : "not listening";
}

const FIOCLEX = 0x5451;

/** Marks `fd` close-on-exec, as the gateway's own descriptors are: a process it starts gets only what it hands over. */
export function closeOnExec(fd: number): void {
  libc().ioctl(fd, FIOCLEX, null);
}
