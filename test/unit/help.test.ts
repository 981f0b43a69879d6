/**
 * The help (src/help.ts): wrapped to the width asked for, every word kept, colour only when asked;
 * and when stdout allows colour and how wide it is (src/terminal.ts).
 */
import { describe, expect, test } from "bun:test";
import type { CommandDef } from "citty";
import { main } from "../../src/cli.ts";
import { START_FLAGS, type FlagSpec } from "../../src/flags.ts";
import { helpPage, renderHelp, wrap, type HelpPage } from "../../src/help.ts";
import { colourAllowed, terminalWidth } from "../../src/terminal.ts";

const sub = (name: string) => (main.subCommands as Record<string, CommandDef>)[name]!;
const pages: [string, () => Promise<HelpPage>][] = [
  ["etcd-gateway", () => helpPage(main)],
  ["etcd-gateway start", () => helpPage(sub("start"), main)],
  ["etcd-gateway status", () => helpPage(sub("status"), main)],
  ["etcd-gateway version", () => helpPage(sub("version"), main)],
];
const ESC = "\x1b";
const strip = (s: string) => s.replace(/\x1b\[\d+m/g, "");
const wordsOf = (s: string) => s.split(/\s+/).filter((w) => w !== "");

describe("help: wrapped, every word kept, colour only when asked", () => {
  for (const [name, load] of pages) {
    for (const width of [20, 40, 60, 80, 100, 200]) {
      test(`${name} at ${width} columns`, async () => {
        const page = await load();
        const plain = renderHelp(page, { width, colour: false });
        const coloured = renderHelp(page, { width, colour: true });
        const long = plain.split("\n").filter((l) => l.length > width);
        expect(long).toEqual([]);
        expect(plain).not.toContain(ESC);
        expect(coloured).toContain(ESC);
        expect(strip(coloured)).toBe(plain);
        // Wrapping moves words, never drops them (the width of 20 may cut a long one).
        if (width >= 40) for (const f of page.flags) expect(wordsOf(plain)).toEqual(expect.arrayContaining(wordsOf(f.description)));
      });
    }
  }
  test("start's help names every flag and each default on the flag's line", async () => {
    const plain = renderHelp(await helpPage(sub("start"), main), { width: 80, colour: false });
    for (const [flag, spec] of Object.entries(START_FLAGS) as [string, FlagSpec][]) {
      const hint = spec.type === "boolean" ? "" : `=<${spec.valueHint}>`;
      const line = plain.split("\n").find((l) => l.startsWith(`  --${flag}${hint}`));
      expect([flag, line !== undefined]).toEqual([flag, true]);
      if (spec.default !== undefined) expect(line).toContain(`(Default: ${String(spec.default)})`);
    }
    expect(plain).toContain("--no-close-on-member-down");
  });
});

describe("wrap", () => {
  const w = (t: string) => t.split(" ").map((text) => ({ text }));
  test("fills lines greedily with the first and later indents", () => expect(wrap(w("aa bb cc dd"), 8, 2, 4, false)).toEqual(["  aa bb", "    cc", "    dd"]));
  test("cuts a word longer than a line", () => expect(wrap(w("abcdefghij"), 6, 0, 2, false)).toEqual(["abcdef", "  ghij"]));
  test("an empty text is one empty line", () => expect(wrap([], 10, 2, 2, false)).toEqual(["  "]));
});

describe("the terminal: colour on a terminal without NO_COLOR, its width, or 80", () => {
  const tty = { isTTY: true, columns: 132 };
  const cases: [string, { isTTY?: boolean; columns?: number }, Record<string, string>, boolean, number][] = [
    ["a terminal", tty, { TERM: "xterm" }, true, 132],
    ["a pipe", { isTTY: false }, { TERM: "xterm" }, false, 80],
    ["a terminal with NO_COLOR=1", tty, { NO_COLOR: "1" }, false, 132],
    ["a terminal with NO_COLOR=true (any value, no-color.org)", tty, { NO_COLOR: "true" }, false, 132],
    ["a terminal with an empty NO_COLOR", tty, { NO_COLOR: "" }, true, 132],
    ["TERM=dumb", tty, { TERM: "dumb" }, false, 132],
    ["a terminal that does not say its width", { isTTY: true }, {}, true, 80],
  ];
  for (const [name, out, env, colour, width] of cases) test(name, () => expect([colourAllowed(out, env), terminalWidth(out)]).toEqual([colour, width]));
});
