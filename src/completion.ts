/**
 * `etcd-gateway completion bash|zsh|fish`: prints a completion script for that shell, generated
 * from the flag tables (START_FLAGS in src/flags.ts, STATUS_FLAGS in src/status.ts, MEMBER_FLAGS in
 * src/drain.ts), so a flag added there is completed without another edit. The scripts are static:
 * a TAB press runs shell code only, never this binary (which takes tens of ms to start).
 *
 * What each flag completes comes from its table entry: `--name=` for a flag with a value, `--name`
 * for a boolean (and `--no-name` for one that is on by default, as the parser takes it); file
 * names for a value hint that has `path` among its alternatives; and the literal words of a value
 * hint with alternatives (`sticky|round-robin|...`, `off|stdout|-|stderr|path`, `N|auto`), leaving
 * out placeholders (`N`, `host:port`, `unix:///path`).
 *
 * @module
 */
import { defineCommand } from "citty";
import { MEMBER_FLAGS, READY_FLAGS } from "./drain.ts";
import { printable, START_FLAGS } from "./flags.ts";
import { fail } from "./serve.ts";
import { STATUS_FLAGS } from "./status.ts";

/** What completion needs of a flag table's entry. */
type TableFlag = { readonly type: "string" | "boolean"; readonly valueHint?: string; readonly default?: string | boolean; readonly description: string };

export interface CompletionFlag {
  /** Without the dashes. */
  readonly name: string;
  readonly boolean: boolean;
  /** Words offered as the value. */
  readonly values: readonly string[];
  /** Whether file names are offered as the value. */
  readonly files: boolean;
  readonly description: string;
}

export interface CompletionCommand {
  readonly name: string;
  readonly description: string;
  readonly flags: readonly CompletionFlag[];
  /** Words offered as the first positional argument. */
  readonly args: readonly string[];
  readonly commands: readonly CompletionCommand[];
}

export const SHELLS = ["bash", "zsh", "fish"] as const;
export type Shell = (typeof SHELLS)[number];

/** A value hint's alternative that is a value as written, not a placeholder (`N`, `host:port`). */
const LITERAL = /^[a-z][a-z0-9./-]*$/;

/** A description cut to its first clause of two words or more, for a shell's menu. */
function summary(text: string): string {
  for (const m of text.matchAll(/; | \(|: /g)) {
    const head = text.slice(0, m.index).trim();
    if (head.includes(" ")) return head;
  }
  return text;
}

const flag = (name: string, description: string, boolean = true): CompletionFlag => ({ name, boolean, values: [], files: false, description });
const HELP = flag("help", "show the help");

/** The completion of each flag of a table (`--help` added). */
export function tableFlags(table: Readonly<Record<string, TableFlag>>): CompletionFlag[] {
  const out = Object.entries(table).flatMap(([name, f]): CompletionFlag[] => {
    const alternatives = f.type === "string" ? (f.valueHint ?? "").split("|") : [];
    const values = alternatives.length > 1 ? alternatives.filter((a) => LITERAL.test(a) && a !== "path") : [];
    const own = { ...flag(name, summary(f.description), f.type === "boolean"), values, files: alternatives.includes("path") };
    return f.type === "boolean" && f.default === true ? [own, flag(`no-${name}`, `turn --${name} off`)] : [own];
  });
  return [...out, HELP];
}

const command = (name: string, description: string, table: Readonly<Record<string, TableFlag>>, args: readonly string[] = []): CompletionCommand => ({ name, description, flags: tableFlags(table), args, commands: [] });


/** The commands and their flags; flags on the root without a command are start's (the first command). */
export const COMPLETION_TREE: CompletionCommand = {
  name: "etcd-gateway",
  description: "",
  flags: [HELP, flag("version", "print the version")],
  args: [],
  commands: [
    command("start", "start the gateway", START_FLAGS),
    command("status", "show the members of a running gateway", STATUS_FLAGS),
    {
      ...command("member", "take a member out of rotation, or bring it back", {}),
      commands: [command("drain", "no new connections to a member", MEMBER_FLAGS), command("ready", "put a drained member back in rotation", READY_FLAGS)],
    },
    command("version", "print the version", {}),
    command("completion", "print a shell completion script", {}, SHELLS),
  ],
};

/** Every command with its path from the root (`[]` for the root, `["member", "drain"]`). */
export function commandPaths(root: CompletionCommand = COMPLETION_TREE): [string[], CompletionCommand][] {
  const out: [string[], CompletionCommand][] = [];
  const walk = (c: CompletionCommand, path: string[]) => {
    out.push([path, c]);
    for (const sub of c.commands) walk(sub, [...path, sub.name]);
  };
  walk(root, []);
  return out;
}

/** The command whose flags the root offers too: `etcd-gateway --endpoints=...` is `start`. */
const defaultCommand = (root: CompletionCommand) => root.commands[0]!;

/** The flags offered on the root: its own, then the default command's (`--help` once). */
const rootFlags = (root: CompletionCommand) => [...root.flags, ...defaultCommand(root).flags.filter((f) => !root.flags.some((r) => r.name === f.name))];

/** As a flag is typed on the command line: `--name=` when it takes a value. */
const typed = (f: CompletionFlag) => `--${f.name}${f.boolean ? "" : "="}`;

/** Throws when a name or word would need quoting in a script: they are all plain in the tables. */
function plain(words: readonly string[]): string {
  for (const w of words) if (!/^[A-Za-z0-9-][A-Za-z0-9./=-]*$/.test(w)) throw new Error(`cannot put ${JSON.stringify(w)} in a completion script`);
  return words.join(" ");
}

/** `bash`'s `case` arms that give `REPLY` for each command path (`"member drain"`). */
function bashArms(root: CompletionCommand, words: (path: string[], c: CompletionCommand) => readonly string[]): string {
  return commandPaths(root)
    .map(([path, c]) => [path.join(" "), plain(words(path, c))] as const)
    .filter(([, list]) => list !== "")
    .map(([key, list]) => `    "${key}") REPLY="${list}" ;;`)
    .join("\n");
}

/** `bash`'s `case` arms of the flags with value completions: `"start --policy") REPLY=...`, then `return 0` for file names. */
function bashValueArms(root: CompletionCommand): string {
  const arms: string[] = [];
  for (const [path, c] of commandPaths(root)) {
    for (const f of c.flags.filter((f) => f.values.length > 0 || f.files)) {
      arms.push(`    "${[...path, `--${f.name}`].join(" ")}") REPLY="${plain(f.values)}"${f.files ? "; return 0" : ""} ;;`);
    }
  }
  return arms.join("\n");
}

/**
 * The bash function that completes: the words before the cursor are read from COMP_LINE (whatever
 * COMP_WORDBREAKS splits), the command they name is found (`@DEFAULT@`: the one that flags without
 * a command belong to), and the candidates, built whole (`--policy=sticky`), lose the part
 * readline does not replace (`--policy=`).
 */
const BASH_MAIN = `_etcd_gateway() {
  local REPLY line=\${COMP_LINE:0:COMP_POINT}
  local cur=\${line##*[[:space:]]} cmd="" want="" w i npos=0
  local -a ws cands=()
  read -ra ws <<<"\${line:0:\${#line}-\${#cur}}"
  for ((i = 1; i < \${#ws[@]}; i++)); do
    w=\${ws[i]}
    if [[ -n $want ]]; then want=""; continue; fi
    case $w in
      --help | --version | -h | -v) ;;
      -*)
        [[ -z $cmd ]] && cmd=@DEFAULT@
        _etcd_gateway_flags "$cmd"
        [[ $w != *=* && " $REPLY " == *" $w= "* ]] && want=$w ;;
      *)
        _etcd_gateway_commands "$cmd"
        if [[ " $REPLY " == *" $w "* ]]; then cmd=\${cmd:+$cmd }$w; else npos=$((npos + 1)); fi ;;
    esac
  done
  local flag=$want value=$cur prefix=""
  if [[ -z $want && $cur == --*=* ]]; then flag=\${cur%%=*} value=\${cur#*=} prefix=\${cur%%=*}=; fi
  if [[ -n $flag ]]; then
    if _etcd_gateway_values "\${cmd:-@DEFAULT@}" "$flag"; then
      compopt -o filenames 2>/dev/null
      mapfile -t cands < <(compgen -f -- "$value")
    fi
    mapfile -t -O \${#cands[@]} cands < <(compgen -W "$REPLY" -- "$value")
    cands=("\${cands[@]/#/$prefix}")
  else
    if [[ $cur == -* ]]; then
      _etcd_gateway_flags "$cmd"
    else
      _etcd_gateway_commands "$cmd"
      [[ -z $REPLY && $npos -eq 0 ]] && _etcd_gateway_args "$cmd"
    fi
    mapfile -t cands < <(compgen -W "$REPLY" -- "$cur")
  fi
  # Readline replaces only what follows the last of COMP_WORDBREAKS (= and : by default) in the word.
  local pre=$cur
  while [[ -n $pre && $COMP_WORDBREAKS != *"\${pre: -1}"* ]]; do pre=\${pre:0:-1}; done
  COMPREPLY=("\${cands[@]#"$pre"}")
  [[ \${#COMPREPLY[@]} -eq 1 && \${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null
  return 0
}
complete -F _etcd_gateway etcd-gateway
`;

/** The bash script: four lookups generated from the tables, then BASH_MAIN. */
export function bashScript(root: CompletionCommand = COMPLETION_TREE): string {
  const lookup = (name: string, arms: string, tail = "") => `_etcd_gateway_${name}() {\n  REPLY=""\n  case "$1" in\n${arms}\n  esac${tail}\n}\n`;
  const flags = (path: string[], c: CompletionCommand) => (path.length === 0 ? rootFlags(root) : c.flags).map(typed);
  return [
    "# bash completion for etcd-gateway, generated by `etcd-gateway completion bash` from its flag tables.",
    "# Load it with: source <(etcd-gateway completion bash)",
    lookup("flags", bashArms(root, flags)),
    lookup("commands", bashArms(root, (_, c) => c.commands.map((s) => s.name))),
    lookup("args", bashArms(root, (_, c) => c.args)),
    `# REPLY: the words a flag's value completes to; status 0: file names too.\n_etcd_gateway_values() {\n  REPLY=""\n  case "$1 $2" in\n${bashValueArms(root)}\n  esac\n  return 1\n}\n`,
    BASH_MAIN.replaceAll("@DEFAULT@", defaultCommand(root).name),
  ].join("\n");
}

/** Text for a zsh `_arguments` spec in single quotes: `[`, `]` and `:` escaped. */
const zshText = (text: string) => text.replace(/[\\[\]:]/g, (c) => `\\${c}`).replace(/'/g, `'\\''`);

/** One zsh `_arguments` spec: `'--policy=[endpoint selection]:policy:(sticky round-robin)'`. */
function zshSpec(f: CompletionFlag): string {
  // After --help or --version nothing else is completed: they end the command.
  const exclusive = f.name === "help" || f.name === "version" ? "(- *)" : "";
  if (f.boolean) return `'${exclusive}--${f.name}[${zshText(f.description)}]'`;
  const action = f.files && f.values.length > 0 ? `{_etcd_gateway_or_files ${plain(f.values)}}` : f.files ? "_files" : f.values.length > 0 ? `(${plain(f.values)})` : " ";
  return `'--${f.name}=[${zshText(f.description)}]:${f.name}:${action}'`;
}

/** The zsh function of one command: its flags, then its subcommands or positional words. */
function zshFunction(path: string[], c: CompletionCommand, root: CompletionCommand): string {
  const name = ["_etcd_gateway", ...path].join("_").replace(/-/g, "_");
  const specs = c.flags.map(zshSpec);
  if (c.commands.length === 0) {
    const args = c.args.length > 0 ? [`'1:${c.name}:(${plain(c.args)})'`] : [];
    return `${name}() {\n  _arguments -s -S \\\n    ${[...specs, ...args].join(" \\\n    ")}\n}\n`;
  }
  const list = c.commands.map((s) => `'${s.name}:${zshText(s.description)}'`).join(" ");
  const fallback = path.length === 0 ? `\n        -*) _etcd_gateway_${defaultCommand(root).name} ;;` : "";
  return `${name}() {
  local curcontext=$curcontext state line
  typeset -A opt_args
  _arguments -C \\
    ${specs.join(" \\\n    ")} \\
    '1: :->command' '*:: :->args'
  case $state in
    command)${path.length === 0 ? `
      # Flags without a command are ${defaultCommand(root).name}'s.
      if [[ $PREFIX == -* ]]; then _etcd_gateway_${defaultCommand(root).name}; return; fi` : ""}
      local -a commands=(${list})
      _describe -t commands command commands ;;
    args)
      case $line[1] in
${c.commands.map((s) => `        ${s.name}) ${name}_${s.name.replace(/-/g, "_")} ;;`).join("\n")}${fallback}
      esac ;;
  esac
}
`;
}

/** The zsh script: autoloaded from `_etcd-gateway` in `$fpath`, or sourced after compinit. */
export function zshScript(root: CompletionCommand = COMPLETION_TREE): string {
  return [
    "#compdef etcd-gateway",
    "# zsh completion for etcd-gateway, generated by `etcd-gateway completion zsh` from its flag tables.",
    "# Save it as _etcd-gateway in a directory of $fpath, or load it with: source <(etcd-gateway completion zsh)",
    "",
    "# A value that is one of the words given, or a file name.",
    "_etcd_gateway_or_files() {\n  _alternative \"values:value:($*)\" 'files:file:_files'\n}\n",
    ...commandPaths(root).map(([path, c]) => zshFunction(path, c, root)),
    'if [[ $funcstack[1] == _etcd-gateway ]]; then _etcd_gateway "$@"; else compdef _etcd_gateway etcd-gateway; fi',
    "",
  ].join("\n");
}

/** A fish single-quoted string. */
const fishText = (text: string) => `'${text.replace(/[\\']/g, (c) => `\\${c}`)}'`;

/** The fish condition under which a command's flags and words are offered. */
function fishCondition(path: string[], root: CompletionCommand): string {
  if (path.length === 0) return "__fish_use_subcommand";
  // A flag without a command is start's: its flags go wherever no other command was typed.
  if (path.length === 1 && path[0] === defaultCommand(root).name) return `not __fish_seen_subcommand_from ${plain(root.commands.slice(1).map((c) => c.name))}`;
  return path.map((p) => `__fish_seen_subcommand_from ${p}`).join("; and ");
}

/** The fish `complete` lines of one command. */
function fishLines(path: string[], c: CompletionCommand, root: CompletionCommand): string[] {
  const when = fishCondition(path, root);
  const base = `complete -c etcd-gateway -n ${fishText(when)}`;
  // The root's flags that the default command has too are offered by its lines.
  const own = path.length === 0 ? c.flags.filter((f) => !defaultCommand(root).flags.some((d) => d.name === f.name)) : c.flags;
  const lines = own.map((f) => {
    const value = f.boolean ? "" : f.files ? " -r -F" : " -x";
    return `${base} -l ${f.name}${value}${f.values.length > 0 ? ` -a ${fishText(plain(f.values))}` : ""} -d ${fishText(f.description)}`;
  });
  const words = [...c.commands.map((s) => s.name), ...c.args];
  if (words.length === 0) return lines;
  const fresh = path.length === 0 ? base : `complete -c etcd-gateway -n ${fishText(`${when}; and not __fish_seen_subcommand_from ${plain(words)}`)}`;
  return [...lines, ...c.commands.map((s) => `${fresh} -a ${s.name} -d ${fishText(s.description)}`), ...(c.args.length > 0 ? [`${fresh} -a ${fishText(plain(c.args))}`] : [])];
}

/** The fish script: saved as etcd-gateway.fish in a completions directory, or sourced. */
export function fishScript(root: CompletionCommand = COMPLETION_TREE): string {
  return [
    "# fish completion for etcd-gateway, generated by `etcd-gateway completion fish` from its flag tables.",
    "# Save it as ~/.config/fish/completions/etcd-gateway.fish, or load it with: etcd-gateway completion fish | source",
    "complete -c etcd-gateway -f",
    ...commandPaths(root).flatMap(([path, c]) => fishLines(path, c, root)),
    "",
  ].join("\n");
}

/** The completion script for `shell`. */
export function completionScript(shell: Shell, root: CompletionCommand = COMPLETION_TREE): string {
  return { bash: bashScript, zsh: zshScript, fish: fishScript }[shell](root);
}

/** `etcd-gateway completion <shell>`. */
export const completion = defineCommand({
  meta: { name: "completion", description: "Print a completion script for bash, zsh or fish to stdout (e.g. source <(etcd-gateway completion bash))" },
  args: { shell: { type: "positional", description: "bash, zsh or fish", required: false } },
  run({ rawArgs }) {
    const words = rawArgs.filter((a) => a !== "--");
    const shell = words[0];
    if (shell === undefined) fail(`completion: give a shell: ${SHELLS.join(", ")}`);
    if (words.length > 1) fail(`completion: one shell at a time, got ${words.length}`);
    if (!(SHELLS as readonly string[]).includes(shell)) fail(`completion: unknown shell ${printable(JSON.stringify(shell))}; expected ${SHELLS.join(", ")}`);
    process.stdout.write(completionScript(shell as Shell));
  },
});
