/**
 * `etcd-gateway member drain <endpoint>` and `etcd-gateway member ready <endpoint>`: ask a running
 * gateway's admin endpoint to take one member out of rotation (no new connections; with
 * `--close-idle` its idle connections are reset too) or to bring it back, as HAProxy's
 * `set server … state drain|ready` does. The gateway does the work (src/admin.ts); this only asks,
 * on the gateway's unix socket admin address, the only one that takes a drain (issue 20).
 *
 * @module
 */
import type { Status } from "./admin.ts";
import { parseEndpoint, type ListenAddress } from "./addresses.ts";
import { parseFlags, type ParserSpec } from "./flags.ts";
import { errorText } from "./log.ts";
import { askAdmin, CONFIG_FLAG, findAdmin, memberRowProblem, printable } from "./status.ts";

/** Where the commands find the privileged admin address by default: the socket contrib/systemd/etcd-gateway.service's RuntimeDirectory holds. */
export const MEMBER_ADMIN_ADDR = "unix:///run/etcd-gateway/admin.sock";

/** The flags of `etcd-gateway member drain|ready`. */
export const MEMBER_FLAGS = {
  "admin-addr": { type: "string", default: MEMBER_ADMIN_ADDR, valueHint: "unix:///path", description: "the gateway's unix socket --admin-addr (a TCP one is read-only); when not given: ETCD_GATEWAY_ADMIN_ADDR, else the --config file's admin-addr (its unix:///path one), else this default" },
  config: CONFIG_FLAG,
  "close-idle": { type: "boolean", default: false, description: "drain: also reset the member's connections once no byte moved either way for a second" },
} as const;

/** The flags of `etcd-gateway member ready`: drain's, but `--close-idle`, which only a drain takes. */
export const READY_FLAGS = { "admin-addr": MEMBER_FLAGS["admin-addr"], config: MEMBER_FLAGS.config } as const;

export type MemberAction = "drain" | "ready";

/**
 * The one positional argument (the endpoint) and the flags around it, wherever it stands.
 *
 * @throws {Error} when there is not exactly one.
 */
export function splitEndpoint(argv: readonly string[], specs: Readonly<Record<string, ParserSpec>>): { endpoint: string; flags: string[] } {
  const flags: string[] = [];
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith("-")) {
      positional.push(a);
      continue;
    }
    flags.push(a);
    // `--admin-addr 127.0.0.1:23791`: the value is the next argument.
    const name = a.slice(2);
    if (!a.includes("=") && Object.hasOwn(specs, name) && specs[name]!.type === "string" && i + 1 < argv.length) flags.push(argv[++i]!);
  }
  if (positional.length !== 1) throw new Error(positional.length === 0 ? "give the member's endpoint, as `etcd-gateway status` lists it (e.g. 10.0.1.10:2379)" : `one endpoint at a time, got ${positional.length}`);
  return { endpoint: positional[0]!, flags };
}

/** The configured admin address a drain can use: the unix socket one (a TCP one answers 403). */
function unixAdmin(list: ListenAddress[], from: string): ListenAddress {
  const unix = list.find((a) => a.kind === "unix");
  if (unix === undefined) throw new Error(`--admin-addr (from ${from}): ${list.map((a) => a.address).join(",")} has no unix:///path address, the only one that takes a drain; give --admin-addr=unix:///path`);
  return unix;
}

/** Runs `etcd-gateway member <action>` with `argv`; `fail` prints one line and exits 1. */
export async function runMember(action: MemberAction, argv: readonly string[], fail: (message: string) => never): Promise<void> {
  let addr: ListenAddress;
  let endpoint: string;
  let closeIdle: boolean;
  try {
    const split = splitEndpoint(argv, MEMBER_FLAGS);
    const v = parseFlags(split.flags, MEMBER_FLAGS);
    addr = findAdmin(v, process.env, unixAdmin, MEMBER_ADMIN_ADDR);
    closeIdle = v["close-idle"] === true;
    if (closeIdle && action === "ready") throw new Error("--close-idle goes with drain");
    // As the gateway spells its members: scheme stripped, IPv6 in brackets.
    endpoint = parseEndpoint(split.endpoint).address;
  } catch (e) {
    fail(errorText(e));
  }
  const text = await askAdmin(addr, `/members/${encodeURIComponent(endpoint)}/${action}${closeIdle ? "?close-idle=true" : ""}`, fail, "POST");
  let row: Status["members"][number];
  try {
    row = JSON.parse(text) as Status["members"][number];
  } catch (e) {
    fail(`the admin endpoint at ${addr.address} answered something other than JSON: ${printable(errorText(e))}`);
  }
  const problem = memberRowProblem(row);
  if (problem !== null) fail(`the admin endpoint at ${addr.address} answered JSON that is not a member's status: ${problem}`);
  const p = (v: unknown) => printable(String(v));
  const open = `${p(row.connections)} connection${row.connections === 1 ? "" : "s"} open`;
  if (action === "ready") process.stdout.write(`${p(row.endpoint)} is back in rotation (state ${p(row.state)}, ${open})\n`);
  else process.stdout.write(`${p(row.endpoint)} drained: no new connections (state ${p(row.state)}, ${open}${row.closeIdle ? ", each reset once idle for a second" : ""})\n`);
}
