/**
 * The help of every command (`--help`, and `etcd-gateway` alone), rendered here rather than by
 * citty, whose help is one line per flag however wide (211 columns for `start`) and coloured even
 * when piped (citty checks only NO_COLOR=1, TERM=dumb, CI and TEST). Here: wrapped to the terminal
 * (80 columns when stdout is not one, src/terminal.ts), coloured only on a terminal without
 * `NO_COLOR`. Flags are listed as etcd's own help lists them: the flag and its default on one
 * line, what it does indented below.
 *
 * @module
 */
import type { ArgDef, ArgsDef, CommandDef, CommandMeta } from "citty";
import { colourAllowed, terminalWidth } from "./terminal.ts";

/** One command's help, as plain data. */
export interface HelpPage {
  /** The command line that runs it, e.g. `etcd-gateway start`. */
  readonly name: string;
  readonly description: string;
  readonly version?: string;
  readonly flags: readonly HelpFlag[];
  /** Positional arguments, in order: name and description (shown as `<name>`). */
  readonly positionals?: readonly (readonly [string, string])[];
  /** Subcommands: name and description. */
  readonly commands: readonly (readonly [string, string])[];
  /** The root command: flags without a command are its default command's (`start`). */
  readonly root?: boolean;
}

export interface HelpFlag {
  readonly name: string;
  readonly boolean: boolean;
  readonly valueHint?: string;
  readonly default?: string | boolean;
  readonly description: string;
}

export interface HelpStyle {
  readonly width: number;
  readonly colour: boolean;
}

/** A word and how it is painted; painting never counts toward the width. */
type Word = { readonly text: string; readonly paint?: keyof typeof PAINT };

const PAINT = { flag: [36, 39], dim: [90, 39], head: [1, 22] } as const;

/** Where a flag's description starts, and a command's continuation lines. */
const INDENT = 6;
/** Narrower than this, text would be cut into pieces too short to read. */
const MIN_WIDTH = 20;

/** The words of `text`, each painted `paint`. */
const words = (text: string, paint?: Word["paint"]): Word[] => text.split(/\s+/).filter((t) => t !== "").map((t) => ({ text: t, paint }));

/**
 * Lays `list` out in lines of at most `width` columns: the first line indented by `first`, the
 * others by `rest`; a word longer than a line is cut.
 */
export function wrap(list: readonly Word[], width: number, first: number, rest: number, colour: boolean): string[] {
  const lines: string[] = [];
  let line: Word[] = [];
  let used = 0;
  const indent = () => (lines.length === 0 ? first : rest);
  const room = () => Math.max(1, width - indent());
  const flush = () => {
    lines.push(" ".repeat(indent()) + render(line, colour));
    line = [];
    used = 0;
  };
  for (const w of list) {
    let text = w.text;
    while (text !== "") {
      const gap = used > 0 ? 1 : 0;
      if (used + gap + text.length <= room()) {
        line.push({ text, paint: w.paint });
        used += gap + text.length;
        break;
      }
      if (used > 0) {
        flush();
        continue;
      }
      // Alone on its line and still too long: cut.
      const n = room();
      line.push({ text: text.slice(0, n), paint: w.paint });
      text = text.slice(n);
      used = n;
      flush();
    }
  }
  if (used > 0 || lines.length === 0) flush();
  return lines;
}

/** One line's words, space-separated, each run of words painted alike in one escape. */
function render(line: readonly Word[], colour: boolean): string {
  const runs: Word[] = [];
  for (const w of line) {
    const last = runs.at(-1);
    if (last !== undefined && (last.paint === w.paint || !colour)) runs[runs.length - 1] = { text: `${last.text} ${w.text}`, paint: last.paint };
    else runs.push(w);
  }
  return runs.map((r) => paint(r.text, r.paint, colour)).join(" ");
}

function paint(text: string, how: Word["paint"], colour: boolean): string {
  if (!colour || how === undefined) return text;
  const [on, off] = PAINT[how];
  return `\x1b[${on}m${text}\x1b[${off}m`;
}

/** `--name=<hint> (Default: x)`, and `--no-name` for a boolean that is on by default. */
function flagWords(f: HelpFlag): Word[] {
  const hint = f.boolean ? "" : `=<${f.valueHint ?? f.name}>`;
  const names = [`--${f.name}${hint}`, ...(f.boolean && f.default === true ? [`--no-${f.name}`] : [])];
  const list = names.flatMap((n, i) => words(i < names.length - 1 ? `${n},` : n, "flag"));
  return f.default === undefined || f.default === "" ? list : [...list, ...words(`(Default: ${String(f.default)})`, "dim")];
}

/** The help text of `page`, every line at most `style.width` columns (at least 20). */
export function renderHelp(page: HelpPage, style: HelpStyle): string {
  const width = Math.max(MIN_WIDTH, style.width);
  const c = style.colour;
  const out: string[] = [];
  const title = `${page.description} (${page.name}${page.version ? ` v${page.version}` : ""})`;
  out.push(...wrap(words(title, "dim"), width, 0, 0, c), "");
  const positionals = page.positionals ?? [];
  const usage = page.commands.length > 0 ? page.commands.map(([n]) => n).join("|") : [...(page.flags.length > 0 ? ["[OPTIONS]"] : []), ...positionals.map(([n]) => `<${n}>`)].join(" ");
  out.push(...wrap([{ text: "USAGE", paint: "head" }, ...words(`${page.name} ${usage}`, "flag")], width, 0, INDENT, c), "");
  if (positionals.length > 0) {
    out.push(render([{ text: "ARGUMENTS", paint: "head" }], c), "");
    for (const [n, d] of positionals) out.push(...wrap(words(`<${n}>`, "flag"), width, 2, INDENT, c), ...(d ? wrap(words(d), width, INDENT, INDENT, c) : []));
    out.push("");
  }
  if (page.flags.length > 0) {
    out.push(render([{ text: "OPTIONS", paint: "head" }], c), "");
    for (const f of page.flags) out.push(...wrap(flagWords(f), width, 2, INDENT, c), ...(f.description ? wrap(words(f.description), width, INDENT, INDENT, c) : []));
    out.push("");
  }
  if (page.commands.length > 0) {
    out.push(render([{ text: "COMMANDS", paint: "head" }], c), "");
    const column = Math.max(...page.commands.map(([n]) => n.length)) + 4;
    // Side by side when the descriptions keep half the width; else each below its name.
    const beside = column <= width / 2;
    for (const [n, d] of page.commands) {
      if (beside) out.push(...wrap([{ text: n.padEnd(column - 3), paint: "flag" }, ...words(d)], width, 2, column, c));
      else out.push(...wrap(words(n, "flag"), width, 2, 2, c), ...wrap(words(d), width, INDENT, INDENT, c));
    }
    out.push("", ...wrap(words(`Use ${page.name} <command> --help for more about a command${page.root === true ? "; flags without a command are start's" : ""}.`), width, 0, 0, c));
  }
  return out.join("\n").replace(/\n+$/, "") + "\n";
}

const resolve = async <T>(v: T | (() => T | Promise<T>) | Promise<T> | undefined): Promise<T | undefined> => (typeof v === "function" ? await (v as () => T | Promise<T>)() : await v);

/** The help page of a citty command; `above`: the commands it is under, the root first. */
export async function helpPage(cmd: CommandDef, ...above: CommandDef[]): Promise<HelpPage> {
  const meta: CommandMeta = (await resolve(cmd.meta)) ?? {};
  const aboveMeta: CommandMeta[] = await Promise.all(above.map(async (c) => (await resolve(c.meta)) ?? {}));
  const args: ArgsDef = (await resolve(cmd.args)) ?? {};
  const subs = (await resolve(cmd.subCommands)) ?? {};
  const commands: [string, string][] = [];
  for (const [name, sub] of Object.entries(subs)) {
    const subMeta: CommandMeta | undefined = await resolve((await resolve(sub))?.meta);
    if (subMeta?.hidden !== true) commands.push([name, subMeta?.description ?? ""]);
  }
  const all = Object.entries(args) as [string, ArgDef][];
  const flags = all.filter(([, a]) => a.type !== "positional").map(([name, a]) => ({
    name,
    boolean: a.type === "boolean",
    valueHint: a.valueHint,
    default: a.default as string | boolean | undefined,
    description: a.description ?? "",
  }));
  const positionals = all.filter(([, a]) => a.type === "positional").map(([name, a]): [string, string] => [name, a.description ?? ""]);
  const name = [...aboveMeta, meta].map((m) => m.name).filter((n) => n !== undefined).join(" ");
  const version = [meta, ...aboveMeta.toReversed()].find((m) => m.version !== undefined)?.version;
  return { name, description: meta.description ?? "", version, flags, positionals, commands, root: above.length === 0 };
}

/** The help of `cmd` (under `above`, the root first), for stdout as it is. */
export async function showHelp(cmd: CommandDef, ...above: CommandDef[]): Promise<void> {
  const page = await helpPage(cmd, ...above);
  process.stdout.write(renderHelp(page, { width: terminalWidth(), colour: colourAllowed() }));
}
