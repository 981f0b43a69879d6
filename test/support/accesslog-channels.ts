/**
 * Pipes and unix socket pairs made with the C library, for the access log tests: Bun has no
 * pipe(2), and a Bun.spawn "pipe" is a socket pair that Bun reads by itself whether or not anything
 * consumes it (docs/bun.md, "process.stdout and process.stderr on a pipe"), so a reader that stops
 * reading needs a channel of the test's own.
 *
 * @module
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { candidates } from "../../src/libc.ts";

const symbols = {
  pipe2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  socketpair: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
} as const;

let lib: ReturnType<typeof dlopen<typeof symbols>>["symbols"] | undefined;
function load(): NonNullable<typeof lib> {
  for (const name of candidates()) {
    try {
      return (lib ??= dlopen(name, symbols).symbols);
    } catch {
      // the next name
    }
  }
  throw new Error("cannot load the C library");
}

const O_CLOEXEC = 0o2000000;

/**
 * A pipe, or a unix stream socket pair (what systemd gives a service whose output goes to the
 * journal): [read end, write end], both blocking, both closed on exec (Bun.spawn dups what it passes).
 *
 * @throws when the kernel refuses
 */
export function channel(kind: "pipe" | "socket"): [number, number] {
  const fds = new Int32Array(2);
  const rc = kind === "pipe" ? load().pipe2(ptr(fds), O_CLOEXEC) : load().socketpair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | O_CLOEXEC, 0, ptr(fds));
  if (rc !== 0) throw new Error(`${kind === "pipe" ? "pipe2" : "socketpair"} failed`);
  return [fds[0]!, fds[1]!];
}
