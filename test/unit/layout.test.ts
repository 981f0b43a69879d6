/**
 * The layout docs/development.md promises, checked on the source itself: no import
 * cycles in src/, every src/ file says in its first comment what it owns, every file a comment
 * names exists, no function in src/ runs past 80 lines, and test/ never imports from scripts/.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");

function files(dir: string, ext = ".ts"): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith(ext)) out.push(join(d, e.name));
    }
  };
  walk(join(ROOT, dir));
  return out;
}

/** Relative imports of a file (type-only ones too: a cycle of types still ties the files together). */
function imports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/^\s*(?:import|export)\b[^"']*?from\s+["'](\.[^"']+)["']/gm)].map((m) => resolve(dirname(file), m[1]!));
}

describe("src/", () => {
  const src = files("src");

  test("has no import cycles", () => {
    const graph = new Map(src.map((f) => [f, imports(f).filter((i) => i.endsWith(".ts"))]));
    const cycles: string[] = [];
    const state = new Map<string, "visiting" | "done">();
    const visit = (f: string, path: string[]) => {
      if (state.get(f) === "done") return;
      if (state.get(f) === "visiting") {
        cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(ROOT, p)).join(" -> "));
        return;
      }
      state.set(f, "visiting");
      for (const next of graph.get(f) ?? []) visit(next, [...path, f]);
      state.set(f, "done");
    };
    for (const f of src) visit(f, []);
    expect(cycles).toEqual([]);
  });

  test("every file starts with a comment that says what it owns", () => {
    const without = src.filter((f) => !/^(#![^\n]*\n)?\/\*\*\n \* \S/.test(readFileSync(f, "utf8"))).map((f) => relative(ROOT, f));
    expect(without).toEqual([]);
  });

  test("no function is longer than 80 lines", () => {
    // Our formatting puts a function's closing brace alone at the indentation of the line that opens it.
    const CONTROL = /^\s*(?:\}\s*)?(?:if|for|while|switch|catch|else|try|do|finally)\b/;
    const long: string[] = [];
    for (const f of src) {
      const lines = readFileSync(f, "utf8").split("\n");
      lines.forEach((line, i) => {
        if (!/\)[^)]*\{\s*$/.test(line) || CONTROL.test(line) || /^\s*(\/\/|\*)/.test(line)) return;
        const close = new RegExp(`^${/^\s*/.exec(line)![0]}\\}`);
        const end = lines.findIndex((l, j) => j > i && close.test(l));
        if (end > 0 && end - i + 1 > 80) long.push(`${relative(ROOT, f)}:${i + 1} (${end - i + 1} lines)`);
      });
    }
    expect(long).toEqual([]);
  });
});

test("every repository file that a comment in src/, test/ or scripts/ names exists", () => {
  const missing: string[] = [];
  for (const f of [...files("src"), ...files("test"), ...files("scripts")]) {
    for (const m of readFileSync(f, "utf8").matchAll(/(?<![\w/.-])((?:docs|src|test|scripts|contrib)\/[\w./-]*\w)/g)) {
      const path = m[1]!.replace(/[.,:;)]+$/, "");
      if (/[*{]/.test(path) || path.endsWith("/")) continue;
      if (!existsSync(join(ROOT, path))) missing.push(`${relative(ROOT, f)}: ${path}`);
    }
  }
  expect(missing).toEqual([]);
});

test("test/ imports nothing from scripts/, and scripts/ only test/support/", () => {
  const wrong: string[] = [];
  for (const f of files("test")) for (const i of imports(f)) if (relative(ROOT, i).startsWith("scripts/")) wrong.push(`${relative(ROOT, f)} -> ${relative(ROOT, i)}`);
  for (const f of files("scripts")) {
    for (const i of imports(f)) {
      const r = relative(ROOT, i);
      if (r.startsWith("test/") && !r.startsWith("test/support/")) wrong.push(`${relative(ROOT, f)} -> ${r}`);
    }
  }
  expect(wrong).toEqual([]);
});
