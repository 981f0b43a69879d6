/**
 * The access log (`--access-log`): one JSON line per closed client connection, with a termination
 * code that says who ended it and why (in the spirit of HAProxy's termination state and Envoy's
 * response flags). Written through a buffered file sink, flushed every second; the file is reopened
 * on SIGUSR1 for logrotate.
 *
 * @module
 */
import type { FileSink } from "bun";
import { openSync } from "node:fs";

/**
 * Who ended a connection and why. Documented in the README; a contract like the log phrases.
 *
 * - `client-close` / `member-close`: that side closed first (FIN), normally.
 * - `client-reset` / `member-reset`: that side reset the connection (RST).
 * - `connect-failed`: a member was usable, but every member was tried and none connected; the client was reset.
 * - `no-member`: no member was usable (all down or ejected) and none of them connected either; the client was reset.
 * - `idle-timeout`: no byte moved either way for `--idle-timeout` (the connection is reset).
 * - `handshake-timeout`: a TLS client did not finish its handshake within `--listen-handshake-timeout`.
 * - `member-down`: reset by `--close-on-member-down`.
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
  | "drained"
  | "shut-down";

export interface AccessRecord {
  ts: string;
  client: string;
  member: string | null;
  /** Milliseconds from accept to the member connection (null if none). */
  connect_ms: number | null;
  duration_ms: number;
  bytes_from_client: number;
  bytes_from_member: number;
  termination: TerminationCode;
}

export interface AccessLog {
  write(record: AccessRecord): void;
  /** Reopens the file (SIGUSR1, after logrotate moved it). */
  reopen(): void;
  /** Flushes and closes (await it before the process exits). */
  close(): Promise<void>;
}

/**
 * @param target "stderr" or a file path, appended to (created with mode 0640).
 * @throws {Error} when the file cannot be opened.
 */
export function openAccessLog(target: string): AccessLog {
  if (target === "stderr") {
    return { write: (r) => void process.stderr.write(JSON.stringify(r) + "\n"), reopen() {}, close: async () => {} };
  }
  // Opened in append mode, so a restart or a reopen never truncates the log.
  const open = (): FileSink => Bun.file(openSync(target, "a", 0o640)).writer({ highWaterMark: 64 * 1024 });
  let sink = open();
  const timer = setInterval(() => void sink.flush(), 1000);
  timer.unref();
  return {
    write(r) {
      sink.write(JSON.stringify(r) + "\n");
    },
    reopen() {
      void sink.end();
      sink = open();
    },
    async close() {
      clearInterval(timer);
      await sink.end();
    },
  };
}
