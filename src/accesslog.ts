/**
 * The access log (`--access-log`): one JSON line per closed client connection, with a termination
 * code that says who ended it and why (in the spirit of HAProxy's termination state and Envoy's
 * response flags), to stdout (`stdout` or `-`), stderr or a file. The lines of one event-loop turn
 * go out together at the end of it (as Bun's FileSink did), at once from 64 KiB, and at exit; a
 * path is reopened on SIGUSR1 for logrotate, and the old descriptor closed.
 *
 * Nothing here waits for a reader. A path is opened with O_NONBLOCK, so a FIFO without a reader
 * fails at once (ENXIO) where a plain open would wait for one: at start the gateway runs anyway and
 * opens it again every second. A FIFO, a pipe, a terminal or a socket is written without waiting, in
 * pieces of whole lines of at most PIPE_BUF (4 KiB, which a pipe takes whole or not at all, so the
 * lines of --workers never interleave); what it does not take yet (EAGAIN: the reader is slow) is
 * retried after 10 ms, doubling up to a second while nothing goes through. stdout gets an open file
 * description of its own (/proc/self/fd/1) so that O_NONBLOCK is never set on the one it shares with
 * the parent; a socket (journald) is sent to with MSG_DONTWAIT instead; stderr is the log's own
 * stream, which Bun writes without waiting (docs/bun.md, "process.stdout and process.stderr on a pipe").
 *
 * Every target holds at most about 1 MiB of lines it could not write yet; beyond that lines are
 * dropped and counted (as HAProxy counts the log lines its buffers could not take). A file never gets
 * half a line: what a short write left of a line is cut off again, and written by the next try. A
 * write that fails (a full disk, a FIFO whose reader went away) is retried once a second, so logging
 * resumes by itself; a reopen that fails keeps writing to the old file and tries the path again every
 * second (as nginx keeps the old file when a reopen fails). Each outage is logged once, and so is its
 * end. Regular files are written synchronously, as nginx writes its access log: a hung network
 * filesystem would still hold the event loop.
 *
 * @module
 */
import { closeSync, constants as fsConstants, fstatSync, ftruncateSync, openSync, statSync, writeSync, type Stats } from "node:fs";
import { sendNow } from "./libc.ts";
import type { Logger } from "./log.ts";
import { fileErrorText } from "./neterror.ts";

/**
 * Who ended a connection and why. Documented in docs/logging.md; a contract like the log phrases.
 *
 * - `client-close` / `member-close`: that side closed first (FIN), normally.
 * - `client-reset` / `member-reset`: that side reset the connection (RST).
 * - `client-timeout` / `member-timeout`: that side stopped answering (nothing acknowledged for `--keepalive-time` + 10 s); the gateway reset the connection.
 * - `connect-failed`: a member was usable, but every member was tried and none connected; the client was reset.
 * - `no-member`: no member was usable (all down, ejected or drained) and none of them connected either; the client was reset.
 * - `idle-timeout`: no byte moved either way for `--idle-timeout` (the connection is reset).
 * - `handshake-timeout`: a TLS client did not finish its handshake within `--listen-handshake-timeout`.
 * - `member-down`: reset by `--close-on-member-down`.
 * - `drain-idle`: its member was drained with close-idle and no byte moved either way for a second.
 * - `drained`: still open when `--drain-timeout` ran out.
 * - `rebalanced`: closed cleanly (a FIN each way) at a quiet moment to move it where new connections go (`--rebalance-interval`).
 * - `shut-down`: reset by a second SIGTERM/SIGINT.
 */
export type TerminationCode =
  | "client-close"
  | "member-close"
  | "client-reset"
  | "member-reset"
  | "client-timeout"
  | "member-timeout"
  | "connect-failed"
  | "no-member"
  | "idle-timeout"
  | "handshake-timeout"
  | "member-down"
  | "drain-idle"
  | "drained"
  | "rebalanced"
  | "shut-down";

export interface AccessRecord {
  /** When the connection closed (ISO 8601, UTC). */
  ts: string;
  /** When it was accepted (ISO 8601, UTC). */
  start: string;
  client: string;
  member: string | null;
  /** Dials started: 1 when the first member tried connected, 0 when none was (a TLS client that failed its handshake). */
  attempts: number;
  /** The members dialled, in order (the last is `member` when one connected). */
  tried: string[];
  /** Milliseconds from accept to the member connection (null if none). */
  connect_ms: number | null;
  duration_ms: number;
  bytes_from_client: number;
  bytes_from_member: number;
  termination: TerminationCode;
}

/** What the access log counts, for /metrics (summed over the processes with --workers). */
export interface AccessLogStats {
  /** Lines never written: beyond what is held while the target cannot take them, or still held at exit. */
  dropped: number;
  /** Writes that failed (ENOSPC, EIO, EPIPE, ...; not EAGAIN, a slow reader); each flush that fails counts once. */
  writeErrors: number;
  /** Opens of the path that failed while running: SIGUSR1 reopens, a FIFO without a reader, and their retries every second. */
  reopenFailures: number;
}

export interface AccessLog {
  write(record: AccessRecord): void;
  /** Writes what it can of what is held, then reopens the file (SIGUSR1, after logrotate moved it) and closes the old one. */
  reopen(): void;
  /** Flushes (giving a slow reader up to a second) and closes; what is still held is counted as dropped. Await it before the process exits. */
  close(): Promise<void>;
  readonly stats: AccessLogStats;
}

/** Bytes of lines held while the target cannot take them; lines beyond are dropped. */
const MAX_HELD = 1 << 20;
/** Held lines are written at once from this many bytes on (else at the end of the turn). */
const FLUSH_AT = 64 * 1024;
/** The most a pipe takes whole or not at all (pipe(7)); a FIFO, pipe, terminal or socket gets pieces of whole lines up to this. */
const PIPE_BUF = 4096;
/** The first retry after a slow reader's EAGAIN; doubled while nothing goes through, up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 10;
const RETRY_MAX_MS = 1000;
/** How long close() lets a slow reader take what is held. */
const CLOSE_WAIT_MS = 1000;
const NL = 0x0a;
const { O_WRONLY, O_APPEND, O_CREAT, O_NONBLOCK, O_NOCTTY } = fsConstants;
/** Append mode, so a restart or a reopen never truncates the log (and every process appends whole writes); non-blocking, so a FIFO without a reader fails at once (ENXIO). */
const PATH_FLAGS = O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_NOCTTY;
/** For stdout's own open file description: non-blocking, and never made the controlling terminal. */
const STDOUT_FLAGS = O_WRONLY | O_NONBLOCK | O_NOCTTY;

/**
 * @param target "stdout" (or "-"), "stderr", or a file path, appended to (created with mode 0640).
 * @param log where write and reopen failures (and the recoveries) are reported, once each.
 * @throws {Error} when the file cannot be opened (a FIFO without a reader is no error: it is opened later).
 */
export function openAccessLog(target: string, log: Logger): AccessLog {
  // On stderr the lines are interleaved with the log, whose lines are zap-shaped (`level`, `ts`,
  // `msg`) where these have no `level`: stdout keeps the two apart.
  if (target === "stderr") return streamAccessLog("stderr", process.stderr, log);
  if (target === "stdout" || target === "-") {
    const out = stdoutOutput();
    return out === null ? streamAccessLog("stdout", process.stdout, log) : new FdAccessLog({ name: "stdout", path: "/dev/stdout", open: () => out, reopens: false }, log);
  }
  return new FdAccessLog({ name: target, path: target, open: () => openPath(target), reopens: true }, log);
}

/** An open target, and how it is written. */
interface Output {
  fd: number;
  /**
   * `file`: a regular file, each flush in one write. `pipe`: a FIFO, a pipe, a terminal, written
   * with O_NONBLOCK in pieces of whole lines (at most PIPE_BUF). `socket`: the same, with send(2) and
   * MSG_DONTWAIT.
   */
  kind: "file" | "pipe" | "socket";
  /** Opened by us, in append mode: closed by us, and a short write may be cut back (not stdout's file, whose offset is shared). */
  ours: boolean;
}

interface Target {
  /** The log lines' `file`: the path, or `stdout`. */
  name: string;
  /** In errors, in Go's words: the path, or /dev/stdout. */
  path: string;
  /** @throws ENXIO for a FIFO without a reader */
  open(): Output;
  /** A path: reopened on SIGUSR1, and a FIFO whose reader went away (EPIPE) is retried. stdout is opened once, and a reader that went away stays gone. */
  reopens: boolean;
}

const kindOf = (st: Stats): Output["kind"] => (st.isFile() ? "file" : st.isSocket() ? "socket" : "pipe");

function openPath(path: string): Output {
  const fd = openSync(path, PATH_FLAGS, 0o640);
  try {
    return { fd, kind: kindOf(fstatSync(fd)), ours: true };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** Whether an open failed only because the path is a FIFO that no process reads yet. */
function fifoWithoutReader(e: unknown, path: string): boolean {
  if ((e as { code?: unknown }).code !== "ENXIO") return false;
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}

/**
 * How to write stdout without waiting and without touching what other processes share: a regular
 * file is written as it is (a file never makes a write wait for a reader; its offset is shared); a
 * socket (systemd's journal stream) with MSG_DONTWAIT; a pipe, a FIFO or a terminal through an open
 * file description of our own, whose O_NONBLOCK is ours alone. Null when none applies (no /proc):
 * then process.stdout, which Bun writes without waiting.
 */
function stdoutOutput(): Output | null {
  try {
    const kind = kindOf(fstatSync(1));
    if (kind !== "pipe") return { fd: 1, kind, ours: false };
    return { fd: openSync("/proc/self/fd/1", STDOUT_FLAGS), kind, ours: true };
  } catch {
    return null;
  }
}

/** What the access log needs of process.stdout or process.stderr. */
export interface LineStream {
  write(text: string, done: (error?: Error | null) => void): boolean;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/**
 * Lines to a stream that Bun writes without waiting (process.stderr), and buffers without bound: the
 * bytes whose write has not called back yet are held, at most about 1 MiB, and lines beyond are
 * dropped and counted. A stream whose reader has gone (EPIPE) does not come back: from its first
 * failed write on, lines are dropped and counted, and that is logged once.
 */
export function streamAccessLog(name: "stdout" | "stderr", stream: LineStream, log: Logger): AccessLog {
  return new StreamAccessLog(name, stream, log);
}

class StreamAccessLog implements AccessLog {
  readonly stats: AccessLogStats = { dropped: 0, writeErrors: 0, reopenFailures: 0 };
  /** Bytes and lines written to the stream whose callback has not come yet. */
  #pendingBytes = 0;
  #pendingLines = 0;
  #gone = false;
  #closed = false;
  /** `stats.dropped` when lines started to be dropped for a slow reader; null while none are. */
  #since: number | null = null;
  /** close() waiting for the last callback. */
  #idle: (() => void) | null = null;

  constructor(
    private readonly name: "stdout" | "stderr",
    private readonly stream: LineStream,
    private readonly log: Logger,
  ) {
    // Each write's callback gets its error; without a listener the stream's error would also be thrown.
    stream.on("error", () => {});
  }

  write(r: AccessRecord): void {
    if (this.#gone || this.#closed) {
      this.stats.dropped++;
      return;
    }
    const line = JSON.stringify(r) + "\n";
    const size = Buffer.byteLength(line);
    if (this.#pendingBytes + size > MAX_HELD) {
      this.stats.dropped++;
      if (this.#since === null) this.log.error("access log reader is not keeping up; dropping lines", { file: this.name });
      this.#since ??= this.stats.dropped - 1;
      return;
    }
    this.#pendingBytes += size;
    this.#pendingLines++;
    this.stream.write(line, (error) => this.written(size, error));
  }

  private written(size: number, error?: Error | null): void {
    if (this.#closed) return;
    this.#pendingBytes -= size;
    this.#pendingLines--;
    if (error !== undefined && error !== null) {
      this.stats.writeErrors++;
      this.stats.dropped++;
      if (!this.#gone) this.log.error("access log write failed; dropping lines", { file: this.name, error: fileErrorText(error, "write", `/dev/${this.name}`) });
      this.#gone = true;
    } else if (this.#pendingBytes === 0 && this.#since !== null) {
      this.log.info("access log writing again", { file: this.name, dropped: this.stats.dropped - this.#since });
      this.#since = null;
    }
    if (this.#pendingBytes === 0) this.#idle?.();
  }

  reopen(): void {}

  /** Resolves once what was written has been handed to the descriptor, or after a second; what is still pending then is counted as dropped. */
  async close(): Promise<void> {
    if (this.#pendingBytes > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#idle = resolve;
        timer = setTimeout(resolve, CLOSE_WAIT_MS);
      });
      clearTimeout(timer);
    }
    if (this.#pendingLines > 0) {
      this.stats.dropped += this.#pendingLines;
      if (!this.#gone) this.log.warn("access log closed with lines it could not write", { file: this.name, dropped: this.#pendingLines });
    }
    this.#closed = true;
  }
}

type WriteError = Error & { code?: string };
/** Errnos of a pipe or socket whose reader went away: for stdout, for good. */
const GONE = new Set(["EPIPE", "ECONNRESET", "ENOTCONN"]);

/**
 * Lines to a descriptor of ours: a path (a regular file, a FIFO, a device) or stdout. See the module
 * comment for what it does when the target is slow, full, failing, missing its reader or rotated.
 */
class FdAccessLog implements AccessLog {
  readonly stats: AccessLogStats = { dropped: 0, writeErrors: 0, reopenFailures: 0 };
  /** Null while a FIFO has no reader yet (the open is retried every second). */
  #out: Output | null = null;
  /** Lines not yet taken into a piece, from #head on, with their sizes in bytes. */
  #lines: string[] = [];
  #sizes: number[] = [];
  #head = 0;
  /** The piece being written, from #pieceAt on (whole lines, unless the file could not be cut back). */
  #piece: Uint8Array = new Uint8Array(0);
  #pieceAt = 0;
  /** Bytes held: the rest of the piece and the lines. */
  #heldBytes = 0;
  /** `none`: each turn's lines are written at its end. `blocked`: a slow reader (EAGAIN), retried after #backoff. `failing`: a write or open failed, retried every second. */
  #wait: "none" | "blocked" | "failing" = "none";
  #backoff = RETRY_FIRST_MS;
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** The outage logged (lines dropped for a slow reader, or a failure): `stats.dropped` when it started, and whether a failure was logged. */
  #outage: { since: number; failed: boolean } | null = null;
  #reopenWanted = false;
  #reopenFailing = false;
  /** stdout's reader went away for good: lines are dropped. */
  #gone = false;
  /** After close(): the descriptor is gone (its number may be another file's or socket's now). */
  #closed = false;
  /** A flush is scheduled for the end of this event-loop turn. */
  #soon = false;
  readonly #flushSoon = () => {
    this.#soon = false;
    this.flush();
  };
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(
    private readonly target: Target,
    private readonly log: Logger,
  ) {
    try {
      this.#out = target.open();
    } catch (e) {
      if (!target.reopens || !fifoWithoutReader(e, target.path)) throw e;
      this.stats.reopenFailures++;
      this.#wait = "failing";
      this.#outage = { since: 0, failed: true };
      log.error("access log open failed; holding lines (about 1 MiB, then dropping) and retrying every second", { file: target.name, error: fileErrorText(e, "open", target.path) });
    }
    this.#timer = setInterval(() => this.flush(), 1000);
    this.#timer.unref();
  }

  write(r: AccessRecord): void {
    if (this.#closed || this.#gone) {
      this.stats.dropped++;
      return;
    }
    const line = JSON.stringify(r) + "\n";
    const size = Buffer.byteLength(line);
    if (this.#heldBytes + size > MAX_HELD) return this.drop();
    this.#lines.push(line);
    this.#sizes.push(size);
    this.#heldBytes += size;
    // While blocked or failing, only the retries write (a full disk is tried once a second, as nginx skips it for a second).
    if (this.#wait !== "none") return;
    if (this.#heldBytes >= FLUSH_AT) this.flush();
    else if (!this.#soon) {
      this.#soon = true;
      setImmediate(this.#flushSoon);
    }
  }

  reopen(): void {
    if (this.#closed || !this.target.reopens) return;
    this.flush(); // what was logged before the rotation goes to the old file, as far as it takes it
    if (this.#out === null) return; // a FIFO without a reader: that flush tried to open it
    this.#reopenWanted = true;
    this.flush();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.flush();
    for (const end = performance.now() + CLOSE_WAIT_MS; this.#wait === "blocked" && performance.now() < end; ) {
      await Bun.sleep(RETRY_FIRST_MS);
      this.flush();
    }
    clearTimeout(this.#retry);
    const lost = this.#lines.length - this.#head + this.#piece.subarray(this.#pieceAt).reduce((n, b) => n + (b === NL ? 1 : 0), 0);
    if (lost > 0 && !this.#gone) {
      this.stats.dropped += lost;
      this.log.warn("access log closed with lines it could not write", { file: this.target.name, dropped: lost });
    }
    this.#closed = true;
    if (this.#out?.ours) closeQuietly(this.#out.fd);
  }

  /** A line that did not fit: counted, and the first of an outage logged (a failure was logged already). */
  private drop(): void {
    this.stats.dropped++;
    if (this.#outage !== null) return;
    this.#outage = { since: this.stats.dropped - 1, failed: false };
    this.log.error("access log reader is not keeping up; dropping lines", { file: this.target.name });
  }

  /**
   * Each turn's lines, and the retries: a wanted reopen first (so held lines go to the new file),
   * then what is held, piece by piece, until it is all written or the target stops taking it.
   */
  private flush(): void {
    if (this.#closed || this.#gone) return;
    if (this.#reopenWanted || this.#out === null) this.tryOpen();
    const out = this.#out;
    if (out === null) return;
    let moved = false;
    for (;;) {
      if (this.#pieceAt === this.#piece.length && !this.nextPiece(out.kind)) return this.caughtUp();
      const n = put(out, this.#piece.subarray(this.#pieceAt));
      if (typeof n !== "number") return this.stopped(out, n, moved);
      moved = true;
      this.#pieceAt += n;
      this.#heldBytes -= n;
      // A pipe or socket that took part of a piece is full; a file's short write is followed by the error that stopped it.
      if (this.#pieceAt < this.#piece.length && out.kind !== "file") return this.blocked(true);
    }
  }

  /** Takes the next piece from the lines: all of them for a file, else whole lines up to PIPE_BUF (at least one). False when none is left. */
  private nextPiece(kind: Output["kind"]): boolean {
    const lines = this.#lines;
    if (this.#head === lines.length) return false;
    const room = kind === "file" ? Infinity : PIPE_BUF;
    let end = this.#head + 1;
    for (let bytes = this.#sizes[this.#head]!; end < lines.length && bytes + this.#sizes[end]! <= room; end++) bytes += this.#sizes[end]!;
    this.#piece = Buffer.from(end - this.#head === 1 ? lines[this.#head]! : lines.slice(this.#head, end).join(""));
    this.#pieceAt = 0;
    this.#head = end;
    if (end === lines.length) {
      this.#lines = [];
      this.#sizes = [];
      this.#head = 0;
    } else if (end >= 4096) {
      this.#lines = lines.slice(end);
      this.#sizes = this.#sizes.slice(end);
      this.#head = 0;
    }
    return true;
  }

  /** Everything held is written: back to writing each turn's lines, and the end of an outage logged. */
  private caughtUp(): void {
    this.#wait = "none";
    clearTimeout(this.#retry);
    if (this.#outage === null) return;
    this.log.info("access log writing again", { file: this.target.name, dropped: this.stats.dropped - this.#outage.since });
    this.#outage = null;
  }

  /** A slow reader (EAGAIN, or a pipe that took part of a piece): retried soon, later while nothing goes through. */
  private blocked(moved: boolean): void {
    this.#backoff = moved || this.#wait !== "blocked" ? RETRY_FIRST_MS : Math.min(this.#backoff * 2, RETRY_MAX_MS);
    this.#wait = "blocked";
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => this.flush(), this.#backoff);
    this.#retry.unref();
  }

  private stopped(out: Output, e: WriteError, moved: boolean): void {
    if (e.code === "EAGAIN" || e.code === "EWOULDBLOCK") return this.blocked(moved);
    this.stats.writeErrors++;
    const error = fileErrorText(e, "write", this.target.path);
    if (!this.target.reopens && GONE.has(e.code ?? "")) return this.goneFor(error);
    if (out.kind === "file") this.cutBack(out);
    clearTimeout(this.#retry);
    this.#wait = "failing";
    if (this.#outage?.failed === true) return;
    this.#outage = { since: this.#outage?.since ?? this.stats.dropped, failed: true };
    this.log.error("access log write failed; holding lines (about 1 MiB, then dropping) and retrying every second", { file: this.target.name, error });
  }

  /**
   * A short write may have ended inside a line: cut the file back to the last whole line written,
   * and hold the rest again. If the file cannot be cut, keep what follows the cut instead, so the
   * next write that succeeds completes the line.
   */
  private cutBack(out: Output): void {
    const piece = this.#piece;
    const written = this.#pieceAt;
    const whole = written === 0 ? 0 : piece.lastIndexOf(NL, written - 1) + 1;
    if (written === whole || !out.ours || !truncateTail(out.fd, written - whole)) return;
    this.#piece = piece.subarray(whole);
    this.#pieceAt = 0;
    this.#heldBytes += written - whole;
  }

  /** stdout's reader went away (EPIPE): it does not come back, so what is held and every line from now on is dropped. */
  private goneFor(error: string): void {
    const lost = this.#lines.length - this.#head + this.#piece.subarray(this.#pieceAt).reduce((n, b) => n + (b === NL ? 1 : 0), 0);
    this.stats.dropped += lost;
    this.#gone = true;
    this.#lines = [];
    this.#sizes = [];
    this.#head = 0;
    this.#piece = new Uint8Array(0);
    this.#pieceAt = 0;
    this.#heldBytes = 0;
    clearTimeout(this.#retry);
    this.log.error("access log write failed; dropping lines", { file: this.target.name, error });
  }

  /** Opens the path again (SIGUSR1, or a FIFO that had no reader) and closes the old descriptor; on failure keeps the old one and retries on the next flush. */
  private tryOpen(): void {
    let out: Output;
    try {
      out = this.target.open();
    } catch (e) {
      this.stats.reopenFailures++;
      // Not open yet: the outage was logged when it started.
      if (this.#out !== null && !this.#reopenFailing) this.log.error("access log reopen failed; still writing to the old file, retrying every second", { file: this.target.name, error: fileErrorText(e, "open", this.target.path) });
      if (this.#out !== null) this.#reopenFailing = true;
      return;
    }
    if (this.#out?.ours) closeQuietly(this.#out.fd);
    this.#out = out;
    this.#reopenWanted = false;
    if (this.#reopenFailing) this.log.info("access log reopened", { file: this.target.name });
    this.#reopenFailing = false;
  }
}

/** One write that does not wait (but on a regular file): the bytes taken, or the error with its errno name in `code`. */
function put(out: Output, buf: Uint8Array): number | WriteError {
  if (out.kind === "socket") {
    const n = sendNow(out.fd, buf);
    return typeof n === "number" ? n : Object.assign(new Error(n), { code: n });
  }
  try {
    const n = writeSync(out.fd, buf);
    return n > 0 ? n : Object.assign(new Error("wrote nothing"), { code: "EIO" });
  } catch (e) {
    return e as WriteError;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // the descriptor is gone either way
  }
}

/**
 * Cuts the last `bytes` (part of a line) off the file. With O_APPEND they are the file's last bytes,
 * unless another process (--workers) appended in the instant between; on a full disk its write
 * fails too, so that leaves the moment space is freed.
 *
 * @returns false when the file cannot be cut.
 */
function truncateTail(fd: number, bytes: number): boolean {
  try {
    ftruncateSync(fd, Math.max(0, fstatSync(fd).size - bytes));
    return true;
  } catch {
    return false;
  }
}
