/**
 * The one logger of the gateway: JSON lines (etcd's zap shape) or text, on stderr.
 *
 * The messages that etcd's gateway prints (`ready to proxy client requests`, `deactivated endpoint`,
 * `activated`, `failed to activate endpoint (stay inactive for another interval)`) are part of the
 * contract: scripts grep for them. docs/logging.md lists every message.
 *
 * @module
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "json" | "text";
export type LogFields = Record<string, unknown>;

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
export const LOG_FORMATS: readonly LogFormat[] = ["json", "text"];

const rank: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface Logger {
  /** Changes the lowest level written (SIGHUP reload). */
  setLevel(level: LogLevel): void;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

/**
 * Creates a logger writing one line per record to `write` (default: stderr).
 *
 * @example
 * const log = createLogger({ level: "info", format: "json" });
 * log.info("ready to proxy client requests", { endpoints: ["127.0.0.1:2379"] });
 * // {"level":"info","ts":"2026-11-27T12:00:00.000Z","msg":"ready to proxy client requests","endpoints":["127.0.0.1:2379"]}
 */
export function createLogger(opts: {
  level?: LogLevel;
  format?: LogFormat;
  write?: (line: string) => void;
  /** Fields added to every record (e.g. `worker` in worker processes). */
  base?: LogFields;
}): Logger {
  let min = rank[opts.level ?? "info"];
  const format = opts.format ?? "json";
  const write = opts.write ?? ((line: string) => void process.stderr.write(line));
  const emit = (level: LogLevel, msg: string, fields?: LogFields) => {
    if (rank[level] < min) return;
    const ts = new Date().toISOString();
    const all = opts.base === undefined ? fields : { ...opts.base, ...fields };
    write(format === "json" ? jsonLine(level, ts, msg, all) : textLine(level, ts, msg, all));
  };
  return {
    setLevel: (level) => {
      min = rank[level];
    },
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

function jsonLine(level: LogLevel, ts: string, msg: string, fields?: LogFields): string {
  return JSON.stringify({ level, ts, msg, ...fields }, errorReplacer) + "\n";
}

function textLine(level: LogLevel, ts: string, msg: string, fields?: LogFields): string {
  let line = `${ts} ${level.toUpperCase().padEnd(5)} ${msg}`;
  for (const [k, v] of Object.entries(fields ?? {})) {
    const s = typeof v === "string" ? v : JSON.stringify(v, errorReplacer);
    line += ` ${k}=${typeof v === "string" && /[\s"=]/.test(s) ? JSON.stringify(s) : s}`;
  }
  return line + "\n";
}

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? errorText(value) : value;
}

/** One-line text of an error value: `code: message` where a code exists. */
export function errorText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
