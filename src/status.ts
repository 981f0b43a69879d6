/**
 * `etcd-gateway status`: the member table of a running gateway, readable in a terminal.
 *
 * @module
 */
import type { Status } from "./admin.ts";

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
