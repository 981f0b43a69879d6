/**
 * `etcd-gateway status`: asks a running gateway's admin endpoint for its member table and prints
 * it, readable in a terminal, or as JSON; and how any command asks that endpoint (`askAdmin`). What the endpoint says (a member's error text can carry
 * whatever the member sent) is printed with its control characters escaped, so it cannot move the
 * cursor, clear the screen or retitle the terminal; an answer of another shape is one line, never
 * a stack trace. The endpoint is reached over TCP or its unix socket (`--admin-addr=unix:///path`,
 * the only address that takes a drain). Where it is, each command finds as `start` was told
 * (`findAdmin`): `--admin-addr`, else `ETCD_GATEWAY_ADMIN_ADDR`, else the `--config` file's
 * `admin-addr`, else the command's default.
 *
 * @module
 */
import type { Status } from "./admin.ts";
import { parseListenAddress, type ListenAddress } from "./addresses.ts";
import { parseFlags, START_FLAGS } from "./flags.ts";
import { errorText } from "./log.ts";
import { gatherFlags } from "./settings.ts";
import { HttpFailure, httpRequest, requestUrl, type HttpReply, type HttpTarget } from "./http-client.ts";
import { colourAllowed } from "./terminal.ts";

/** `--admin-addr` of `etcd-gateway status`: reads are served on every admin address, TCP included. */
export const ADMIN_ADDR_FLAG = { type: "string", default: "127.0.0.1:23791", valueHint: "host:port|unix:///path", description: "the gateway's --admin-addr; when not given: ETCD_GATEWAY_ADMIN_ADDR, else the --config file's admin-addr (its TCP one first), else this default" } as const;

/** `--config` of `status` and `member drain|ready`: start's file (or `ETCD_GATEWAY_CONFIG`), read for its `admin-addr`. */
export const CONFIG_FLAG = { type: "string", valueHint: "path", description: "the gateway's --config file: ask at its admin-addr when neither --admin-addr nor ETCD_GATEWAY_ADMIN_ADDR is set" } as const;

/** The flags of `etcd-gateway status`. */
export const STATUS_FLAGS = {
  "admin-addr": ADMIN_ADDR_FLAG,
  config: CONFIG_FLAG,
  json: { type: "boolean", default: false, description: "print the raw JSON of /status" },
} as const;

/** Exit codes of `etcd-gateway status` (docs/admin.md): 1 is `fail`'s (bad flag, no answer). */
export const STATUS_EXIT = { ok: 0, unreachable: 1, noUsableMember: 2 } as const;

/** What the gateway says of itself: `ready` (absent before issue 14: then any member up). */
export function anyUsable(s: Status): boolean {
  return typeof s.ready === "boolean" ? s.ready : s.members.some((m) => m.state === "up");
}

/** The address of a parsed `--admin-addr` (`fallback` when absent): `host:port` or `unix:///path`. @throws {Error} naming the flag. */
export function adminAddress(value: unknown, fallback: string = ADMIN_ADDR_FLAG.default): ListenAddress {
  try {
    return parseListenAddress(typeof value === "string" ? value : fallback);
  } catch (e) {
    throw new Error(`--admin-addr: ${errorText(e)}`);
  }
}

/**
 * The gateway's admin addresses as `start` reads them (src/settings.ts): `ETCD_GATEWAY_ADMIN_ADDR`,
 * else the `admin-addr` of the `--config` file (`config`, else `ETCD_GATEWAY_CONFIG`); null when
 * neither names one. Also the source, for messages.
 *
 * @throws {ConfigError} for an unreadable file, or an address that does not parse, naming where it came from.
 */
export function configuredAdmin(config: string | undefined, env: Record<string, string | undefined>): { list: ListenAddress[]; from: string } | null {
  const g = gatherFlags(config === undefined ? {} : { config }, env);
  const raw = g.raw["admin-addr"];
  if (raw === undefined) return null;
  const from = g.origins["admin-addr"] ?? "--admin-addr";
  const text = (Array.isArray(raw) ? raw : [String(raw)]).join(",");
  try {
    return { list: START_FLAGS["admin-addr"].parse(text) as ListenAddress[], from };
  } catch (e) {
    throw new Error(`--admin-addr (from ${from}): ${errorText(e)}`);
  }
}

/**
 * Where a command asks: `--admin-addr` when given; else the configured address `pick` chooses
 * (`configuredAdmin`; `pick` throws when none suits); else `fallback`.
 */
export function findAdmin(v: { readonly "admin-addr"?: unknown; readonly config?: unknown }, env: Record<string, string | undefined>, pick: (list: ListenAddress[], from: string) => ListenAddress, fallback: string): ListenAddress {
  if (v["admin-addr"] !== undefined) return adminAddress(v["admin-addr"]);
  const configured = configuredAdmin(typeof v.config === "string" ? v.config : undefined, env);
  return configured === null ? adminAddress(undefined, fallback) : pick(configured.list, configured.from);
}

/** `status` reads on any admin address: a TCP one first (no socket mode in the way), else the first. */
const anyAdmin = (list: ListenAddress[]) => list.find((a) => a.kind === "tcp") ?? list[0]!;

/**
 * Asks the admin endpoint at `at` (TCP or its unix socket) for `path` and resolves with the body
 * of its 200 answer; anything else (no answer, another status, a redirect) is one line through
 * `fail`. The request goes straight to `at`, never through a proxy from the environment, never
 * follows a redirect, and reads at most 1 MiB (src/http-client.ts).
 */
export async function askAdmin(at: ListenAddress, path: string, fail: (message: string) => never, method: "GET" | "POST" = "GET"): Promise<string> {
  const addr = at.address;
  // Over the unix socket the Host header says localhost, as curl --unix-socket does.
  const target: HttpTarget = at.kind === "tcp" ? { host: at.tcp.host, port: at.tcp.port, tls: null } : { host: "localhost", port: 0, tls: null, unixPath: at.path };
  let r: HttpReply;
  try {
    r = await httpRequest(target, method === "POST" ? { method, path, body: "" } : { method, path }, { timeoutMs: 3000, maxBytes: ADMIN_REPLY_BYTES });
  } catch (e) {
    // HttpFailure's message is already in Go's words; errorText would put its code in front.
    const text = printable(e instanceof HttpFailure ? e.message : errorText(e));
    const hint = e instanceof HttpFailure && e.code === "EACCES" ? " (the socket's mode, --admin-socket-mode, decides who may connect: run this as root or as the gateway's user)" : e instanceof HttpFailure && e.kind === "dial" ? ` (is the gateway running with --admin-addr=${addr}?)` : "";
    fail(`cannot reach the admin endpoint at ${addr}: ${text}${hint}`);
  }
  if (r.truncated) fail(`the admin endpoint at ${addr} answered more than ${ADMIN_REPLY_BYTES} bytes to ${requestUrl(target, path)}; read no further`);
  if (r.status !== 200) {
    // E.g. 403 for a drain over TCP, 404 for an unknown member, 421 for a Host the endpoint does not answer to; a redirect is never followed.
    const line = r.body.split("\n")[0] ?? "";
    const location = r.status >= 300 && r.status < 400 ? ` (a redirect to ${r.headers.location ?? "nowhere"}, not followed)` : "";
    fail(printable(`the admin endpoint at ${addr} answered ${r.status}${line === "" ? "" : `: ${line}`}${location}`));
  }
  return r.body;
}

/** The most of an admin answer the commands read: /status of thousands of members fits. */
const ADMIN_REPLY_BYTES = 1 << 20;

/**
 * Runs `etcd-gateway status` with `argv`; `fail` prints one line and exits 1. Prints the table (or
 * the JSON) and exits 2 when no member is usable, as `etcdctl endpoint health` exits non-zero for
 * an unhealthy cluster, so scripts can use it.
 */
export async function runStatus(argv: readonly string[], fail: (message: string) => never): Promise<void> {
  let addr: ListenAddress;
  let json: boolean;
  try {
    const v = parseFlags(argv, STATUS_FLAGS);
    addr = findAdmin(v, process.env, anyAdmin, ADMIN_ADDR_FLAG.default);
    json = v.json === true;
  } catch (e) {
    fail(errorText(e));
  }
  const text = await askAdmin(addr, "/status", fail);
  let body: Status;
  try {
    body = JSON.parse(text) as Status;
  } catch (e) {
    fail(`the admin endpoint at ${addr.address} answered something other than JSON: ${printable(errorText(e))}`);
  }
  const problem = statusProblem(body);
  if (problem !== null) fail(`the admin endpoint at ${addr.address} answered JSON that is not a gateway's status: ${problem}`);
  process.stdout.write(json ? statusJson(body) : renderStatus(body, colours()));
  if (!anyUsable(body)) {
    process.stderr.write("etcd-gateway: no member is usable\n");
    process.exitCode = STATUS_EXIT.noUsableMember;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
/** What a JSON value is, when it should have been an object. */
const notAnObject = (v: unknown) => `${Array.isArray(v) ? "a list" : v === null ? "null" : typeof v}, not an object`;

/**
 * What makes `body` unfit to print as a gateway's `/status` (renderStatus, statusJson and
 * anyUsable take any value where this finds nothing), or null. Found in issue 20: `[]` and
 * `{"members":"notalist"}` printed a stack trace.
 */
export function statusProblem(body: unknown): string | null {
  if (!isObject(body)) return notAnObject(body);
  if (!Array.isArray(body.members)) return "members is not a list";
  if (!body.members.every(isObject)) return "a member is not an object";
  if (!isObject(body.listener)) return "listener is not an object";
  if (body.cluster === undefined) return null;
  if (!isObject(body.cluster)) return "cluster is not an object";
  if (!Array.isArray(body.cluster.alarms) || !body.cluster.alarms.every(isObject)) return "cluster.alarms is not a list of objects";
  return null;
}

/** The member row `member drain|ready` prints, or what makes `body` unfit for it (null: fit). */
export function memberRowProblem(body: unknown): string | null {
  return isObject(body) ? null : notAnObject(body);
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
