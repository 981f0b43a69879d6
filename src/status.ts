/**
 * `etcd-gateway status`: asks a running gateway's admin endpoint for its member table and prints
 * it, readable in a terminal, or as JSON.
 *
 * @module
 */
import type { Status } from "./admin.ts";
import { parseHostPort } from "./addresses.ts";
import { parseFlags } from "./flags.ts";
import { errorText } from "./log.ts";

/** The flags of `etcd-gateway status`. */
export const STATUS_FLAGS = {
  "admin-addr": { type: "string", default: "127.0.0.1:23791", valueHint: "host:port", description: "the gateway's --admin-addr" },
  json: { type: "boolean", default: false, description: "print the raw JSON of /status" },
} as const;

/**
 * Runs `etcd-gateway status` with `argv`; `fail` prints one line and exits 1.
 */
export async function runStatus(argv: readonly string[], fail: (message: string) => never): Promise<void> {
  let addr: string;
  let json: boolean;
  try {
    const v = parseFlags(argv, STATUS_FLAGS);
    const text = typeof v["admin-addr"] === "string" ? v["admin-addr"] : STATUS_FLAGS["admin-addr"].default;
    try {
      addr = parseHostPort(text).address;
    } catch (e) {
      throw new Error(`--admin-addr: ${errorText(e)}`);
    }
    json = v.json === true;
  } catch (e) {
    fail(errorText(e));
  }
  let body: Status;
  try {
    const r = await fetch(`http://${addr}/status`, { signal: AbortSignal.timeout(3000) });
    body = (await r.json()) as Status;
  } catch (e) {
    fail(`cannot reach the admin endpoint at ${addr}: ${errorText(e)} (is the gateway running with --admin-addr=${addr}?)`);
  }
  process.stdout.write(json ? JSON.stringify(body, null, 2) + "\n" : renderStatus(body, colours()));
}

export interface Colours {
  green(s: string): string;
  red(s: string): string;
  yellow(s: string): string;
  dim(s: string): string;
}

/** ANSI colours when stdout is a terminal and NO_COLOR is unset; plain text otherwise. */
export function colours(): Colours {
  const on = process.stdout.isTTY === true && !process.env.NO_COLOR && process.env.TERM !== "dumb";
  const wrap = (code: number) => (s: string) => (on ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { green: wrap(32), red: wrap(31), yellow: wrap(33), dim: wrap(2) };
}

/** One line of header, then one row per member: endpoint, state, connections, failed dials, reason. */
export function renderStatus(s: Status, c: Colours): string {
  const head = `etcd-gateway ${s.version}  pid ${s.pid}  up ${Math.round(s.uptimeSeconds)}s  listen ${s.listener.address}  policy ${s.policy}  workers ${s.workers}  connections ${s.listener.active} (${s.listener.accepted} accepted)\n`;
  const rows = [["ENDPOINT", "STATE", "CONNS", "TOTAL", "FAILED", "PRIO", "WEIGHT", "REASON"]];
  for (const m of s.members) {
    rows.push([m.endpoint, m.state, String(m.connections), String(m.connectionsTotal), String(m.failedDials), String(m.priority), String(m.weight), m.reason]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const paint = (state: string, text: string) => (state === "up" ? c.green(text) : state === "down" ? c.red(text) : c.yellow(text));
  const lines = rows.map((r, i) =>
    r
      .map((cell, j) => {
        const padded = j === r.length - 1 ? cell : cell.padEnd(widths[j]!);
        if (i === 0) return c.dim(padded);
        return j === 1 ? paint(cell, padded) : padded;
      })
      .join("  ")
      .trimEnd(),
  );
  return head + lines.join("\n") + "\n";
}
