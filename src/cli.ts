#!/usr/bin/env bun
/**
 * The command line: citty commands only (start, status, member drain|ready, version); each
 * command calls one function. citty dispatches; the help is rendered by src/help.ts (citty's
 * neither wraps nor asks whether stdout is a terminal), and parsing is ours (src/flags.ts), since
 * citty ignores unknown flags and keeps only the last of repeated ones (docs/bun.md, trap 12).
 *
 * @module
 */
import { defineCommand, runMain, type ArgsDef } from "citty";
import pkg from "../package.json" with { type: "json" };
import { printable, START_FLAGS, type FlagSpec } from "./flags.ts";
import { showHelp } from "./help.ts";
import { fail, serve } from "./serve.ts";
import { MEMBER_FLAGS, runMember } from "./drain.ts";
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

/** `member drain|ready <endpoint>`: the endpoint is a positional argument in the help. */
const endpointArg: ArgsDef = { endpoint: { type: "positional", description: "the member, as `etcd-gateway status` lists it (e.g. 10.0.1.10:2379)", required: true } };
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
      args: { ...endpointArg, ...helpArgs({ "admin-addr": MEMBER_FLAGS["admin-addr"] }) },
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

const COMMANDS = { start, status, member, version };

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

if (import.meta.main) {
  const argv = withDefaultCommand(process.argv.slice(2));
  const command = argv[0];
  // citty would print the whole help, then the name in colour on stderr.
  if (command !== undefined && !command.startsWith("-") && !Object.hasOwn(COMMANDS, command)) fail(printable(`unknown command ${JSON.stringify(command)}; commands: ${Object.keys(COMMANDS).join(", ")}`));
  void runMain(main, { rawArgs: argv, showUsage: showHelp });
}
