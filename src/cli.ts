#!/usr/bin/env bun
/**
 * The command line: citty commands only (start, status, member drain|ready, version); each
 * command calls one function. citty dispatches; the help is rendered by src/help.ts (citty's
 * neither wraps nor asks whether stdout is a terminal), and parsing is ours (src/flags.ts), since
 * citty ignores unknown flags and keeps only the last of repeated ones (docs/bun.md, trap 12).
 * Which command the arguments name is found here too (`route`), so that a wrong one is one line
 * `etcd-gateway: ...`, never citty's own message (coloured even on a pipe, without our prefix).
 *
 * @module
 */
import { defineCommand, runCommand, type ArgsDef, type CommandDef } from "citty";
import pkg from "../package.json" with { type: "json" };
import { printable, START_FLAGS, type FlagSpec } from "./flags.ts";
import { completion } from "./completion.ts";
import { showHelp } from "./help.ts";
import { fail, serve } from "./serve.ts";
import { MEMBER_FLAGS, READY_FLAGS, runMember } from "./drain.ts";
import { runStatus, STATUS_FLAGS } from "./status.ts";

/** citty's help table from one of our flag tables. */
function helpArgs(flags: Readonly<Record<string, Pick<FlagSpec, "type" | "description" | "valueHint"> & { default?: string | boolean }>>): ArgsDef {
  return Object.fromEntries(Object.entries(flags).map(([name, spec]) => [name, { type: spec.type, description: spec.description, valueHint: spec.valueHint, default: spec.default }])) as ArgsDef;
}

const start = defineCommand({
  meta: { name: "start", description: "Start the gateway: proxy TCP connections from --listen-addr to the etcd endpoints" },
  args: helpArgs(START_FLAGS),
  run: ({ rawArgs }) => serve(rawArgs),
});

const status = defineCommand({
  meta: { name: "status", description: "Show the members of a running gateway and their state (asks its --admin-addr)" },
  args: helpArgs(STATUS_FLAGS),
  run: ({ rawArgs }) => runStatus(rawArgs, fail),
});

/**
 * `member drain|ready <endpoint>`: the endpoint is a positional argument in the help. Not
 * `required` for citty: runMember says it is missing, in our words (src/drain.ts).
 */
const endpointArg: ArgsDef = { endpoint: { type: "positional", description: "the member, as `etcd-gateway status` lists it (e.g. 10.0.1.10:2379)", required: false } };
const member = defineCommand({
  meta: { name: "member", description: "Take a member of a running gateway out of rotation, or bring it back (asks its --admin-addr)" },
  subCommands: {
    drain: defineCommand({
      meta: { name: "drain", description: "No new connections to the member (open ones carry on; with --close-idle they are reset once idle); health checks go on" },
      args: { ...endpointArg, ...helpArgs(MEMBER_FLAGS) },
      run: ({ rawArgs }) => runMember("drain", rawArgs, fail),
    }),
    ready: defineCommand({
      meta: { name: "ready", description: "Put a drained member back in rotation" },
      args: { ...endpointArg, ...helpArgs(READY_FLAGS) },
      run: ({ rawArgs }) => runMember("ready", rawArgs, fail),
    }),
  },
});

const version = defineCommand({
  meta: { name: "version", description: "Print the version" },
  run() {
    process.stdout.write(`etcd-gateway ${pkg.version}\nBun ${Bun.version}\nPlatform ${process.platform}/${process.arch}\n`);
  },
});

const COMMANDS = { start, status, member, version, completion };

export const main = defineCommand({
  meta: { name: "etcd-gateway", version: pkg.version, description: pkg.description },
  subCommands: COMMANDS,
});

/** citty's own flags on the root: everything else that starts with `-` is a flag of `start`. */
const ROOT_FLAGS = ["--help", "-h", "--version", "-v"];

/**
 * The command line with `start` put in front when it begins with a flag, so that
 * `etcd-gateway --endpoints=...` is `etcd-gateway start --endpoints=...` (the founding document's
 * own command); `--help` and `--version` alone stay the root's.
 */
export function withDefaultCommand(argv: readonly string[]): string[] {
  const first = argv[0];
  return first !== undefined && first.startsWith("-") && !ROOT_FLAGS.includes(first) ? ["start", ...argv] : [...argv];
}

/** Where the arguments lead: the commands from the root down, the arguments left, and why they lead nowhere (null: they lead to a command that runs). */
export interface Route {
  readonly chain: readonly CommandDef[];
  readonly rest: readonly string[];
  readonly problem: string | null;
}

/**
 * Follows `argv` (after `withDefaultCommand`) down the commands: each word names a command among
 * its parent's subcommands until one without subcommands is reached. `problem`, when it stops
 * short: no command, an unknown one, or a flag before the command, worded for `fail`.
 */
export function route(argv: readonly string[]): Route {
  const chain: CommandDef[] = [main as CommandDef];
  let rest = [...argv];
  for (;;) {
    const subs = chain.at(-1)!.subCommands as Record<string, CommandDef> | undefined;
    if (subs === undefined) return { chain, rest, problem: null };
    // `member bogus` is "member: unknown command ..."; the root's have no prefix.
    const at = chain.slice(1).map((c) => `${(c.meta as { name: string }).name}: `).join("");
    const names = `commands: ${Object.keys(subs).join(", ")}`;
    const first = rest[0];
    if (first === undefined) return { chain, rest, problem: `${at}no command given; ${names}` };
    if (first.startsWith("-")) return { chain, rest, problem: `${at}a command goes before ${printable(JSON.stringify(first))}; ${names}` };
    if (!Object.hasOwn(subs, first)) return { chain, rest, problem: `${at}unknown command ${printable(JSON.stringify(first))}; ${names}` };
    chain.push(subs[first]!);
    rest = rest.slice(1);
  }
}

/** citty's built-in flags, which it reads anywhere on the line (before `--`). */
const HELP = ["--help", "-h"];
const VERSION = ["--version", "-v"];

/**
 * Runs the command `argv` names: its help when `--help` is anywhere (before `--`), the version for
 * `--version` alone; a line that leads to no command is one line through `fail` (the help of the
 * command that wants a subcommand first on stdout, when none was given: `etcd-gateway member`);
 * anything citty still refuses is `fail`ed too, its colour removed.
 */
export async function runCli(argv: readonly string[]): Promise<void> {
  const r = route(argv);
  const flags = argv.slice(0, argv.includes("--") ? argv.indexOf("--") : argv.length);
  if (flags.some((a) => HELP.includes(a))) {
    await showHelp(r.chain.at(-1)!, ...r.chain.slice(0, -1));
    return;
  }
  if (argv.length === 1 && VERSION.includes(argv[0]!)) {
    process.stdout.write(`${pkg.version}\n`);
    return;
  }
  if (r.problem !== null) {
    if (r.rest.length === 0) await showHelp(r.chain.at(-1)!, ...r.chain.slice(0, -1));
    fail(r.problem);
  }
  try {
    await runCommand(main, { rawArgs: [...argv] });
  } catch (e) {
    if ((e as Error | null)?.name !== "CLIError") throw e;
    fail(printable((e as Error).message.replace(/\x1b\[[0-9;]*m/g, "")));
  }
}

if (import.meta.main) void runCli(withDefaultCommand(process.argv.slice(2)));
