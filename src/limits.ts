/**
 * Bounded reads of what comes from outside the process: files named by flags, and HTTP replies
 * from members. Whatever a file or a member holds, the gateway reads at most a fixed size of it.
 *
 * Reading a file never holds the event loop (issue 20): only a regular file is read, opened with
 * O_NONBLOCK so that a FIFO (a named pipe, `<(…)`, a piped `/dev/stdin`) is refused instead of
 * waiting in open(2) for a writer; and the running process reads off the event loop with a time
 * bound (`readFileOffLoop`), so a file system that hangs (NFS, FUSE) fails the read, not the process.
 *
 * @module
 */
import { closeSync, constants, fstatSync, openSync, promises as fsp, readdirSync, readFileSync, readSync, type Stats } from "node:fs";
import { formatDuration } from "./duration.ts";
import { fileErrorText } from "./neterror.ts";

/** Files named by flags (config, endpoints file, certificates): far above any real one. */
export const MAX_FILE_BYTES = 1 << 20;
/** Members' HTTP replies to health checks and member-list calls. */
export const MAX_REPLY_BYTES = 64 << 10;
/** How long `readFileOffLoop` waits for the file system before the read fails. */
export const FILE_READ_TIMEOUT_MS = 5000;

/** How a file named by a flag is read: its whole text, or an Error naming the path. */
export type ReadFile = (path: string) => string;

/** open(2) flags: never wait in open itself (a FIFO without a writer, a tty), never take a controlling terminal. */
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * Why the file behind `st` is not read, or null for a regular file: anything else can block a read
 * (a FIFO until a writer comes, a device forever) or never end (`/dev/zero`).
 */
function notRegular(path: string, st: Stats): string | null {
  if (st.isFile()) return null;
  // Go's words (os.ReadFile of a directory).
  if (st.isDirectory()) return `read ${path}: is a directory`;
  const q = JSON.stringify(path);
  if (st.isFIFO()) return `${q} is a pipe (FIFO), not a regular file (process substitution <(...) and a piped /dev/stdin are pipes too); give a regular file`;
  const kind = st.isCharacterDevice() ? "a character device" : st.isBlockDevice() ? "a block device" : st.isSocket() ? "a socket" : "not a file";
  return `${q} is ${kind}, not a regular file`;
}

const tooLarge = (path: string, maxBytes: number) => new Error(`${JSON.stringify(path)}: larger than ${maxBytes} bytes`);
/** An error of `op` in Go's words, unless it is already one of ours (no errno code). */
const inGoWords = (e: unknown, op: "open" | "read", path: string) => ((e as NodeJS.ErrnoException).code === undefined ? e : new Error(fileErrorText(e, op, path)));

/**
 * Reads a whole regular text file of at most `maxBytes`, without trusting its size, on the calling
 * thread: only where a hung file system may block (tests, startup checks of other modules).
 *
 * @throws {Error} in Go's words: `open <path>: no such file or directory`, `read <path>: is a
 * directory`; or `"<path>" is a pipe (FIFO), not a regular file …`, `"<path>": larger than N bytes`.
 */
export function readFileBounded(path: string, maxBytes = MAX_FILE_BYTES): string {
  let fd: number;
  try {
    fd = openSync(path, OPEN_FLAGS);
  } catch (e) {
    throw inGoWords(e, "open", path);
  }
  try {
    const why = notRegular(path, fstatSync(fd));
    if (why !== null) throw new Error(why);
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
    }
    if (n > maxBytes) throw tooLarge(path, maxBytes);
    return buf.toString("utf8", 0, n);
  } catch (e) {
    throw inGoWords(e, "read", path);
  } finally {
    closeSync(fd);
  }
}

/** The read that outlived its time bound and is still in the kernel, if any. */
let blocked: { path: string; since: number } | null = null;

/**
 * `readFileBounded` off the event loop (Bun's file-system threads), bounded by `timeoutMs`. A read
 * past the bound fails; while it stays stuck in the kernel, every other read fails at once naming
 * it, so a hung file system holds one thread, never more, and never the event loop.
 *
 * `openFlags` is for tests: without O_NONBLOCK, opening a FIFO blocks in the kernel as a hung file
 * system does.
 *
 * @throws {Error} as `readFileBounded`; `read <path>: i/o timeout (…)` past the bound (Go's words).
 */
export async function readFileOffLoop(path: string, opts: { timeoutMs?: number; maxBytes?: number; openFlags?: number } = {}): Promise<string> {
  if (blocked !== null) {
    throw new Error(`read ${blocked.path}: still blocked in the kernel after ${formatDuration(Date.now() - blocked.since)} (a hung file system?); no file is read until it returns`);
  }
  const timeoutMs = opts.timeoutMs ?? FILE_READ_TIMEOUT_MS;
  const step = { op: "open" as "open" | "read" };
  const reading = readAsync(path, opts.maxBytes ?? MAX_FILE_BYTES, opts.openFlags ?? OPEN_FLAGS, step);
  const late = Symbol("late");
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const got = await Promise.race([reading, new Promise<typeof late>((resolve) => (timer = setTimeout(() => resolve(late), timeoutMs)))]);
    if (got !== late) return got;
  } finally {
    clearTimeout(timer);
  }
  const stuck = { path, since: Date.now() - timeoutMs };
  blocked = stuck;
  void reading.catch(() => {}).finally(() => {
    if (blocked === stuck) blocked = null;
  });
  throw new Error(`${step.op} ${path}: i/o timeout (the file system did not answer within ${formatDuration(timeoutMs)})`);
}

async function readAsync(path: string, maxBytes: number, flags: number, step: { op: "open" | "read" }): Promise<string> {
  let file: fsp.FileHandle;
  try {
    file = await fsp.open(path, flags);
  } catch (e) {
    throw inGoWords(e, "open", path);
  }
  step.op = "read";
  try {
    const why = notRegular(path, await file.stat());
    if (why !== null) throw new Error(why);
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await file.read(buf, n, buf.length - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    if (n > maxBytes) throw tooLarge(path, maxBytes);
    return buf.toString("utf8", 0, n);
  } catch (e) {
    throw inGoWords(e, "read", path);
  } finally {
    await file.close().catch(() => {});
  }
}

/** The process's open-files limit, from /proc/self/limits (Bun raises the soft limit to the hard one at start); Infinity where unknown. */
export function openFilesLimit(): number {
  try {
    const line = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return line === null || line[1] === "unlimited" ? Infinity : Number(line[1]);
  } catch {
    return Infinity;
  }
}

/** Descriptors this process has open now (0 where unknown). */
export function openFds(): number {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return 0;
  }
}

/**
 * How many proxied connections fit under the open-files limit, as HAProxy derives maxconn from
 * ulimit-n: each takes two descriptors (client and member), after those open now and a reserve
 * for everything else (health checks, the admin endpoint, DNS, logs). Beyond it the gateway stops
 * accepting instead of running out: accept() failing with EMFILE makes Bun's listener spin, and
 * a dial failing with EMFILE looks like a member refusing (docs/bun.md, trap 6).
 *
 * The reserve is 48 descriptors, or a quarter of a tiny limit.
 *
 * @example connectionCap(20000, 15) // 9968
 */
export function connectionCap(limit: number, open: number): number {
  if (!Number.isFinite(limit)) return Infinity;
  const reserve = Math.min(48, Math.floor(limit / 4));
  return Math.max(1, Math.floor((limit - open - reserve) / 2));
}

/**
 * Whether this process is out of file descriptors right now: a failed connect can then be our own
 * trouble, which Bun reports as ECONNREFUSED like a member refusing (docs/bun.md, trap 6).
 */
export function outOfFds(): boolean {
  try {
    closeSync(openSync("/dev/null", "r"));
    return false;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EMFILE" || code === "ENFILE";
  }
}
