/**
 * Bounded reads of what comes from outside the process: files named by flags, and HTTP replies
 * from members. Whatever a file or a member holds, the gateway reads at most a fixed size of it.
 *
 * @module
 */
import { closeSync, openSync, readdirSync, readFileSync, readSync } from "node:fs";
import { fileErrorText } from "./neterror.ts";

/** Files named by flags (config, endpoints file, certificates): far above any real one. */
export const MAX_FILE_BYTES = 1 << 20;
/** Members' HTTP replies to health checks and member-list calls. */
export const MAX_REPLY_BYTES = 64 << 10;

/**
 * Reads a whole text file of at most `maxBytes`, without trusting its size (`/dev/zero` reports 0).
 *
 * @throws {Error} in Go's words: `open <path>: no such file or directory`, `read <path>: is a
 * directory`; or `"<path>": larger than N bytes`.
 */
export function readFileBounded(path: string, maxBytes = MAX_FILE_BYTES): string {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new Error(fileErrorText(e, "open", path));
  }
  try {
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
    }
    if (n > maxBytes) throw new Error(`${JSON.stringify(path)}: larger than ${maxBytes} bytes`);
    return buf.toString("utf8", 0, n);
  } catch (e) {
    throw (e as NodeJS.ErrnoException).code === undefined ? e : new Error(fileErrorText(e, "read", path));
  } finally {
    closeSync(fd);
  }
}

/**
 * The body of `r` as text, at most `maxBytes`: a longer body is cut there and the rest is not
 * read (the connection is closed).
 */
export async function readReply(r: Response, maxBytes = MAX_REPLY_BYTES): Promise<string> {
  const reader = r.body?.getReader();
  if (reader === undefined) return "";
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    while (n < maxBytes) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      n += value.byteLength;
    }
  } finally {
    if (n >= maxBytes) void reader.cancel().catch(() => {});
    reader.releaseLock();
  }
  return Buffer.concat(parts).subarray(0, maxBytes).toString("utf8");
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
