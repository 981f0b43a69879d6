/**
 * The documentation follows the text and the code (issue 24, item 7): every relative link of
 * README.md and docs/*.md reaches a file, and a heading there when it names one; the flag
 * reference in docs/flags.md has a row for every flag of `etcd-gateway start` and no other, with
 * the binary's own default (src/flags.ts).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { START_FLAGS } from "../../src/flags.ts";

const ROOT = resolve(import.meta.dir, "../..");
const pages = ["README.md", ...readdirSync(join(ROOT, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];

/** GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to dashes, repeats numbered). */
function anchors(text: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  const body = text.replace(/```[\s\S]*?```/g, "");
  for (const m of body.matchAll(/^#{1,6} (.+)$/gm)) {
    const base = m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, "").replace(/ /g, "-");
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  for (const m of body.matchAll(/<a (?:name|id)="([^"]+)"/g)) out.add(m[1]!);
  return out;
}

describe("links", () => {
  for (const page of pages) {
    test(`every relative link of ${page} reaches its file and heading`, () => {
      const text = readFileSync(join(ROOT, page), "utf8").replace(/```[\s\S]*?```/g, "").replace(/`[^`\n]*`/g, "");
      const broken: string[] = [];
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z]+:/.test(target)) continue;
        const [path, anchor] = target.split("#") as [string, string | undefined];
        const file = path === "" ? join(ROOT, page) : resolve(dirname(join(ROOT, page)), path);
        if (!existsSync(file)) {
          broken.push(`${target}: no such file`);
          continue;
        }
        if (anchor !== undefined && statSync(file).isFile() && file.endsWith(".md") && !anchors(readFileSync(file, "utf8")).has(anchor)) broken.push(`${target}: no such heading`);
      }
      expect(broken).toEqual([]);
    });
  }
});

describe("docs/flags.md holds the flag table", () => {
  const rows = readFileSync(join(ROOT, "docs/flags.md"), "utf8")
    .split("\n")
    .filter((l) => l.startsWith("| `--"))
    .map((l) => l.split("|").map((c) => c.trim()));
  const named = rows.flatMap(([, names, dflt]) => [...names!.matchAll(/`--([a-z0-9-]+)`/g)].map((m) => ({ name: m[1]!, dflt: dflt! })));

  test("a row for every flag of `etcd-gateway start`, and none for a flag it does not have", () => {
    expect(named.map((r) => r.name).sort()).toEqual(Object.keys(START_FLAGS).sort());
  });

  test("each default written as a value (in backticks) is the binary's default", () => {
    const wrong = named.filter(({ name, dflt }) => {
      const m = /^`([^`]*)`$/.exec(dflt);
      if (m === null) return false; // words ("off", "system", "learned") describe a default with no value
      const spec = START_FLAGS[name as keyof typeof START_FLAGS] as { default?: unknown };
      return String(spec.default) !== m[1];
    });
    expect(wrong).toEqual([]);
  });
});
