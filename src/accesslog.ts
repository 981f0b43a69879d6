/**
 * The access log (`--access-log`): one JSON line per closed client connection, with a termination
 * code that says who ended it and why (in the spirit of HAProxy's termination state and Envoy's
 * response flags), to stdout (`stdout` or `-`), stderr or a file. To a file, the lines of one
 * event-loop turn go out in one write at the end of it (as Bun's FileSink did), at once from
 * 64 KiB, and at exit; the file is reopened on SIGUSR1 for logrotate, and the old descriptor closed.
 *
 * A file that cannot take a write (a full disk, an I/O error) never gets half a line: what a short
 * write left of a line is cut off again, the lines not written are held (about 1 MiB, beyond that
 * dropped and counted) and written by the next try, once a second, so logging resumes by itself.
 * The failure is logged once, and so is the recovery. A reopen that fails keeps writing to the old
 * file and tries the path again every second (as nginx keeps the old file when a reopen fails).
 *
 * @module
 */
import { closeSync, fstatSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { errorText, type Logger } from "./log.ts";

/**
 * Who ended a connection and why. Documented in the README; a contract like the log phrases.
 *
 * - `client-close` / `member-close`: that side closed first (FIN), normally.
 * - `client-reset` / `member-reset`: that side reset the connection (RST).
 * - `connect-failed`: a member was usable, but every member was tried and none connected; the client was reset.
 * - `no-member`: no member was usable (all down, ejected or drained) and none of them connected either; the client was reset.
 * - `idle-timeout`: no byte moved either way for `--idle-timeout` (the connection is reset).
 * - `handshake-timeout`: a TLS client did not finish its handshake within `--listen-handshake-timeout`.
 * - `member-down`: reset by `--close-on-member-down`.
 * - `drain-idle`: its member was drained with close-idle and no byte moved either way for a second.
 * - `drained`: still open when `--drain-timeout` ran out.
 * - `shut-down`: reset by a second SIGTERM/SIGINT.
 */
export type TerminationCode =
  | "client-close"
  | "member-close"
  | "client-reset"
  | "member-reset"
  | "connect-failed"
  | "no-member"
  | "idle-timeout"
  | "handshake-timeout"
  | "member-down"
  | "drain-idle"
  | "drained"
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
  /** Lines never written: beyond what is held while the file cannot take them, or still held at exit. */
  dropped: number;
  /** Writes that failed or were short (ENOSPC, EIO, ...); each flush that fails counts once. */
  writeErrors: number;
  /** Reopens (SIGUSR1, and their retries every second) that could not open the path. */
  reopenFailures: number;
}

export interface AccessLog {
  write(record: AccessRecord): void;
  /** Writes what is held, then reopens the file (SIGUSR1, after logrotate moved it) and closes the old one. */
  reopen(): void;
  /** Flushes and closes (await it before the process exits). */
  close(): Promise<void>;
  readonly stats: AccessLogStats;
}

/**
 * `--access-log` values that name a stream, not a file (`./stdout` is the file). `-` is stdout, as
 * for most tools. On stderr the lines are interleaved with the log, whose lines are zap-shaped
 * (`level`, `ts`, `msg`) where these have no `level`: stdout keeps the two apart.
 */
const STREAMS: Readonly<Record<string, () => LineStream>> = {
  stdout: () => process.stdout,
  "-": () => process.stdout,
  stderr: () => process.stderr,
};

/**
 * @param target "stdout" (or "-"), "stderr", or a file path, appended to (created with mode 0640).
 * @param log where write and reopen failures (and the recoveries) are reported, once each.
 * @throws {Error} when the file cannot be opened.
 */
export function openAccessLog(target: string, log: Logger): AccessLog {
  return Object.hasOwn(STREAMS, target) ? streamAccessLog(target === "-" ? "stdout" : target, STREAMS[target]!(), log) : new FileAccessLog(target, log);
}

/** What the access log needs of process.stdout or process.stderr. */
export interface LineStream {
  write(text: string, done: (error?: Error | null) => void): boolean;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/**
 * Lines to a stream, buffered by the stream itself. A stream whose reader has gone (EPIPE) does not
 * come back: from its first failed write on, lines are dropped and counted, and that is logged once.
 */
export function streamAccessLog(name: string, stream: LineStream, log: Logger): AccessLog {
  const stats: AccessLogStats = { dropped: 0, writeErrors: 0, reopenFailures: 0 };
  let failed = false;
  // Each write's callback gets its error; without a listener the stream's error would also be thrown.
  stream.on("error", () => {});
  const written = (error?: Error | null) => {
    if (error === undefined || error === null) return;
    stats.writeErrors++;
    stats.dropped++;
    if (!failed) log.error("access log write failed; dropping lines", { file: name, error: errorText(error) });
    failed = true;
  };
  return {
    write(r) {
      if (failed) stats.dropped++;
      else stream.write(JSON.stringify(r) + "\n", written);
    },
    reopen() {},
    // Resolves once what was written before has been handed to the descriptor (or failed).
    close: () => new Promise<void>((resolve) => void stream.write("", () => resolve())),
    stats,
  };
}

/** Bytes (about: characters) of lines held while the file cannot take them; lines beyond are dropped. */
const MAX_HELD = 1 << 20;
/** Held lines are written at once from this many bytes on (else at the end of the turn). */
const FLUSH_AT = 64 * 1024;
const NL = 0x0a;

/** Opened in append mode, so a restart or a reopen never truncates the log (and every process appends whole writes). */
const openFile = (path: string) => openSync(path, "a", 0o640);

class FileAccessLog implements AccessLog {
  readonly stats: AccessLogStats = { dropped: 0, writeErrors: 0, reopenFailures: 0 };
  #fd: number;
  /** Bytes a failed flush left unwritten (whole lines, unless the file could not be cut back). */
  #carry: Uint8Array = new Uint8Array(0);
  /** Lines since the last flush. */
  #lines: string[] = [];
  #heldBytes = 0;
  /** `stats.dropped` when writing started to fail; null while writing works. */
  #failingSince: number | null = null;
  #reopenWanted = false;
  #reopenFailing = false;
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
    private readonly path: string,
    private readonly log: Logger,
  ) {
    this.#fd = openFile(path);
    this.#timer = setInterval(() => this.flush(), 1000);
    this.#timer.unref();
  }

  write(r: AccessRecord): void {
    const line = JSON.stringify(r) + "\n";
    if (this.#closed || this.#heldBytes + line.length > MAX_HELD) {
      this.stats.dropped++;
      return;
    }
    this.#lines.push(line);
    this.#heldBytes += line.length;
    // While failing, only the timer retries (once a second, as nginx skips a full disk for a second).
    if (this.#failingSince !== null) return;
    if (this.#heldBytes >= FLUSH_AT) this.flush();
    else if (!this.#soon) {
      this.#soon = true;
      setImmediate(this.#flushSoon);
    }
  }

  reopen(): void {
    if (this.#closed) return;
    this.flush(); // what was logged before the rotation goes to the old file
    this.#reopenWanted = true;
    this.tryReopen();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.flush();
    if (this.#heldBytes > 0) {
      const lost = this.#lines.length + this.#carry.reduce((n, b) => n + (b === NL ? 1 : 0), 0);
      this.stats.dropped += lost;
      this.log.warn("access log closed with lines it could not write", { file: this.path, dropped: lost });
    }
    this.#closed = true;
    try {
      closeSync(this.#fd);
    } catch {
      // nothing left to do with it
    }
  }

  /** Each turn's lines, and the 1 s retries: a wanted reopen first (so held lines go to the new file), then what is held. */
  private flush(): void {
    if (this.#closed) return;
    if (this.#reopenWanted) this.tryReopen();
    if (this.#heldBytes === 0) return;
    const text = Buffer.from(this.#lines.join(""));
    const buf = this.#carry.length === 0 ? text : Buffer.concat([this.#carry, text]);
    this.#lines = [];
    const { written, error } = writeAll(this.#fd, buf);
    if (error === null) {
      this.#carry = new Uint8Array(0);
      this.#heldBytes = 0;
      if (this.#failingSince !== null) {
        this.log.info("access log writing again", { file: this.path, dropped: this.stats.dropped - this.#failingSince });
        this.#failingSince = null;
      }
      return;
    }
    this.stats.writeErrors++;
    // A short write may have ended inside a line: cut the file back to the last whole line written,
    // and keep the rest. If the file cannot be cut, keep what follows the cut instead, so the next
    // write that succeeds completes the line.
    const whole = written === 0 ? 0 : buf.lastIndexOf(NL, written - 1) + 1;
    const kept = cutBack(this.#fd, written - whole) ? whole : written;
    this.#carry = buf.subarray(kept);
    this.#heldBytes = this.#carry.length;
    if (this.#failingSince === null) {
      this.#failingSince = this.stats.dropped;
      this.log.error("access log write failed; holding lines (about 1 MiB, then dropping) and retrying every second", { file: this.path, error });
    }
  }

  /** Opens the path again and closes the old descriptor; on failure keeps the old one and retries on the next flush. */
  private tryReopen(): void {
    let fd: number;
    try {
      fd = openFile(this.path);
    } catch (e) {
      this.stats.reopenFailures++;
      if (!this.#reopenFailing) this.log.error("access log reopen failed; still writing to the old file, retrying every second", { file: this.path, error: errorText(e) });
      this.#reopenFailing = true;
      return;
    }
    try {
      closeSync(this.#fd);
    } catch {
      // the descriptor is gone either way
    }
    this.#fd = fd;
    this.#reopenWanted = false;
    if (this.#reopenFailing) this.log.info("access log reopened", { file: this.path });
    this.#reopenFailing = false;
  }
}

/** Writes all of `buf`, or as much as the file takes: how many bytes went in, and the error that stopped it. */
function writeAll(fd: number, buf: Uint8Array): { written: number; error: string | null } {
  let written = 0;
  try {
    while (written < buf.length) {
      const n = writeSync(fd, buf, written);
      if (n <= 0) return { written, error: "wrote nothing" };
      written += n;
    }
    return { written, error: null };
  } catch (e) {
    return { written, error: errorText(e) };
  }
}

/**
 * Cuts the last `bytes` (part of a line) off the file. With O_APPEND they are the file's last bytes,
 * unless another process (--workers) appended in the instant between; on a full disk its write
 * fails too, so that leaves the moment space is freed.
 *
 * @returns false when the file cannot be cut (a pipe, a device).
 */
function cutBack(fd: number, bytes: number): boolean {
  if (bytes === 0) return true;
  try {
    ftruncateSync(fd, Math.max(0, fstatSync(fd).size - bytes));
    return true;
  } catch {
    return false;
  }
}
