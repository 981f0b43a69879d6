/**
 * `etcd-gateway status`: asks a running gateway's admin endpoint for its member table and prints
 * it, readable in a terminal, or as JSON; and how any command asks that endpoint (`askAdmin`). What the endpoint says (a member's error text can carry
 * whatever the member sent) is printed with its control characters escaped, so it cannot move the
 * cursor, clear the screen or retitle the terminal.
 *
 * @module
 */
import type { Status } from "./admin.ts";
import { parseHostPort } from "./addresses.ts";
import { parseFlags } from "./flags.ts";
import { errorText } from "./log.ts";
import { HttpFailure, httpRequest, requestUrl } from "./http-client.ts";
import { colourAllowed } from "./terminal.ts";

/** `--admin-addr` of the commands that talk to a running gateway. */
export const ADMIN_ADDR_FLAG = { type: "string", default: "127.0.0.1:23791", valueHint: "host:port", description: "the gateway's --admin-addr" } as const;

/** The flags of `etcd-gateway status`. */
export const STATUS_FLAGS = {
  "admin-addr": ADMIN_ADDR_FLAG,
  json: { type: "boolean", default: false, description: "print the raw JSON of /status" },
} as const;

/** Exit codes of `etcd-gateway status` (README, Admin endpoint): 1 is `fail`'s (bad flag, no answer). */
export const STATUS_EXIT = { ok: 0, unreachable: 1, noUsableMember: 2 } as const;

/** What the gateway says of itself: `ready` (absent before issue 14: then any member up). */
export function anyUsable(s: Status): boolean {
  return typeof s.ready === "boolean" ? s.ready : s.members.some((m) => m.state === "up");
}

/** The address of a parsed `--admin-addr` (its default when absent). @throws {Error} naming the flag. */
export function adminAddress(value: unknown): string {
  try {
    return parseHostPort(typeof value === "string" ? value : ADMIN_ADDR_FLAG.default).address;
  } catch (e) {
    throw new Error(`--admin-addr: ${errorText(e)}`);
  }
}

/**
 * Asks the admin endpoint at `addr` for `path` and resolves with the body of its 200 answer;
 * anything else (no answer, another status, a redirect) is one line through `fail`. The request
 * goes straight to `addr`, never through a proxy from the environment, and reads at most 1 MiB.
 */
export async function askAdmin(addr: string, path: string, fail: (message: string) => never, method: "GET" | "POST" = "GET"): Promise<string> {
  let answer: { status: number; text: string };
  const hp = parseHostPort(addr);
  const target = { host: hp.host, port: hp.port, tls: null };
  try {
    const r = await httpRequest(target, method === "POST" ? { method, path, body: "" } : { method, path }, { timeoutMs: 3000, maxBytes: ADMIN_REPLY_BYTES });
    if (r.truncated) throw new Error(`${requestUrl(target, path)}: the answer is longer than ${ADMIN_REPLY_BYTES} bytes`);
    answer = { status: r.status, text: r.body };
  } catch (e) {
    // HttpFailure's message is already in Go's words; errorText would put its code in front.
    fail(`cannot reach the admin endpoint at ${addr}: ${printable(e instanceof HttpFailure ? e.message : errorText(e))} (is the gateway running with --admin-addr=${addr}?)`);
  }
  // E.g. 503 while the endpoint is at its connection cap, 404 for an unknown member.
  if (answer.status !== 200) fail(`the admin endpoint at ${addr} answered ${answer.status}: ${printable(answer.text.split("\n")[0] ?? "")}`);
  return answer.text;
}

/** The most of an admin answer the commands read: /status of thousands of members fits. */
const ADMIN_REPLY_BYTES = 1 << 20;

/**
 * Runs `etcd-gateway status` with `argv`; `fail` prints one line and exits 1. Prints the table (or
 * the JSON) and exits 2 when no member is usable, as `etcdctl endpoint health` exits non-zero for
 * an unhealthy cluster, so scripts can use it.
 */
export async function runStatus(argv: readonly string[], fail: (message: string) => never): Promise<void> {
  let addr: string;
  let json: boolean;
  try {
    const v = parseFlags(argv, STATUS_FLAGS);
    addr = adminAddress(v["admin-addr"]);
    json = v.json === true;
  } catch (e) {
    fail(errorText(e));
  }
  const text = await askAdmin(addr, "/status", fail);
  let body: Status;
  try {
    body = JSON.parse(text) as Status;
  } catch (e) {
    fail(`the admin endpoint at ${addr} answered something other than JSON: ${printable(errorText(e))}`);
  }
  process.stdout.write(json ? statusJson(body) : renderStatus(body, colours()));
  if (!anyUsable(body)) {
    process.stderr.write("etcd-gateway: no member is usable\n");
    process.exitCode = STATUS_EXIT.noUsableMember;
  }
}

/** Bidirectional-text and line-separator controls: they reorder or break what a terminal shows. */
const UNICODE_CONTROLS = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069";
/** C0 (ESC included), DEL, C1 and the Unicode controls above, and the backslash that starts an escape. */
const UNPRINTABLE = new RegExp(`[\\x00-\\x1f\\x7f-\\x9f\\\\${UNICODE_CONTROLS}]`, "g");
/** What JSON.stringify leaves raw of those: DEL, C1 and the Unicode controls (it escapes C0 itself). */
const JSON_UNPRINTABLE = new RegExp(`[\\x7f-\\x9f${UNICODE_CONTROLS}]`, "g");

const hex = (ch: string, digits: number) => ch.charCodeAt(0).toString(16).padStart(digits, "0");

/**
 * `text` safe to print in a terminal: control characters as `\x1b`-style escapes (`\u202e` above
 * U+00FF), a backslash doubled so an escape stays unambiguous.
 *
 * @example printable("a\x1b]0;t\x07") // "a\\x1b]0;t\\x07" (printed: a\x1b]0;t\x07)
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (ch) => (ch === "\\" ? "\\\\" : ch <= "\xff" ? `\\x${hex(ch, 2)}` : `\\u${hex(ch, 4)}`));
}

/** `--json`: the /status JSON, indented, with DEL, C1 and the Unicode controls as \u escapes too (still the same JSON). */
export function statusJson(s: Status): string {
  return JSON.stringify(s, null, 2).replace(JSON_UNPRINTABLE, (ch) => `\\u${hex(ch, 4)}`) + "\n";
}

export interface Colours {
  green(s: string): string;
  red(s: string): string;
  yellow(s: string): string;
  dim(s: string): string;
}

/** ANSI colours when stdout is a terminal and NO_COLOR is unset; plain text otherwise. */
export function colours(): Colours {
  const on = colourAllowed();
  const wrap = (code: number) => (s: string) => (on ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { green: wrap(32), red: wrap(31), yellow: wrap(33), dim: wrap(2) };
}

/**
 * One line of header, one of the cluster (its ID, and its alarms when any are raised), then one
 * row per member: endpoint, state (`,drained` when an operator drained it), connections, failed
 * dials, reason.
 * Every value from the endpoint is printed through `printable`, numbers too (the answer is not trusted to be ours).
 */
export function renderStatus(s: Status, c: Colours): string {
  const p = (v: unknown) => printable(String(v));
  const head = `etcd-gateway ${p(s.version)}  pid ${p(s.pid)}  up ${p(Math.round(s.uptimeSeconds))}s  listen ${p(s.listener.address)}  policy ${p(s.policy)}  workers ${p(s.workers)}  connections ${p(s.listener.active)} (${p(s.listener.accepted)} accepted)\n`;
  const cl = s.cluster;
  const alarms = cl === undefined || cl.alarms.length === 0 ? "" : `  alarms ${cl.alarms.map((a) => `${p(a.alarm)} on ${p(a.member)}`).join(", ")}`;
  const cluster = cl === undefined ? "" : `cluster ${p(cl.id ?? "not known yet")}${cl.pinned ? " (--cluster-id)" : ""}${alarms}\n`;
  const rows = [["ENDPOINT", "STATE", "CONNS", "TOTAL", "FAILED", "PRIO", "WEIGHT", "REASON"]];
  for (const m of s.members) {
    rows.push([m.endpoint, m.drained === true ? `${m.state},drained` : m.state, m.connections, m.connectionsTotal, m.failedDials, m.priority, m.weight, m.reason].map(p));
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
  return head + cluster + lines.join("\n") + "\n";
}
