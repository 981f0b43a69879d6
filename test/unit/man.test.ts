/**
 * The man page scripts/man.ts writes: rendered by man and groff without a warning, every section
 * the page promises, every flag of every table with its default and environment variable (so the
 * page cannot drift from the binary), and roff escaping that leaves no request or hyphen to chance.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { MEMBER_FLAGS } from "../../src/drain.ts";
import { envName, START_FLAGS } from "../../src/flags.ts";
import { STATUS_FLAGS } from "../../src/status.ts";

const ROOT = resolve(import.meta.dir, "../..");
const dir = mkdtempSync(join(tmpdir(), "eg-man-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function spawn(cmd: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync(cmd, { cwd: ROOT, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** `bun scripts/man.ts --out <path>`, as the package build calls it. */
function writePage(name: string, env: Record<string, string> = {}): string {
  const out = join(dir, name);
  const r = spawn([process.execPath, "scripts/man.ts", "--out", out], env);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return out;
}

const page = writePage("etcd-gateway.1", { SOURCE_DATE_EPOCH: "1700000000" });
const source = readFileSync(page, "utf8");
/** As roff source spells text that a user types: every hyphen `\-`. */
const typed = (text: string) => text.replace(/-/g, "\\-");

describe("rendering", () => {
  test("man renders it with no warning", () => {
    const r = spawn(["man", "--warnings", "-l", page], { MANWIDTH: "80" });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("ETCD-GATEWAY(1)");
  });

  test("groff -man -ww finds nothing to warn about", () => {
    const r = spawn(["groff", "-man", "-ww", "-z", page]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });

  test("has every section, in order", () => {
    const sections = [...source.matchAll(/^\.SH (.*)$/gm)].map((m) => m[1]!.replace(/"/g, ""));
    expect(sections).toEqual(["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "ENVIRONMENT", "SEE ALSO"]);
    for (const s of ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM, SIGINT"]) expect(source).toContain(`.TP\n\\fB${s}\\fR\n`);
    expect(source).toContain("/etc/etcd\\-gateway/config.yaml");
    expect(source).toContain("\\fBetcd\\fR(1), \\fBetcdctl\\fR(1)");
  });

  test("is the same page for the same SOURCE_DATE_EPOCH, dated by it", () => {
    expect(readFileSync(writePage("again.1", { SOURCE_DATE_EPOCH: "1700000000" }), "utf8")).toBe(source);
    expect(source).toMatch(/^\.TH ETCD\\-GATEWAY 1 2023\\-11\\-14 /m);
  });
});

describe("every flag of every table is on the page", () => {
  const tables = { start: START_FLAGS, status: STATUS_FLAGS, "member drain": MEMBER_FLAGS } as const;
  for (const [command, table] of Object.entries(tables)) {
    test(command, () => {
      const section = source.slice(source.indexOf(`.SS "etcd\\-gateway ${typed(command)}"`));
      for (const [name, spec] of Object.entries(table)) {
        const hint = spec.type === "string" ? `=\\fI${typed(spec.valueHint ?? name)}\\fR` : "";
        expect(section).toContain(`.TP\n\\fB\\-\\-${typed(name)}\\fR${hint}`);
        const fallback = "default" in spec ? spec.default : undefined;
        if (fallback !== undefined && fallback !== "") expect(section).toContain(`Default: ${typed(String(fallback))}.`);
        if (command === "start") expect(section).toContain(`Environment: \\fB${envName(name)}\\fR.`);
      }
    });
  }
});

describe("roff escaping", () => {
  const lines = source.split("\n");

  test("a line that begins with . or ' is one of the page's requests", () => {
    const requests = lines.filter((l) => /^[.']/.test(l)).map((l) => l.split(" ")[0]);
    expect([...new Set(requests)].sort()).toEqual([".PP", ".SH", ".SS", ".TH", ".TP", '.\\"', ".ad", ".br", ".nh"].sort());
  });

  test("every hyphen is \\- and every character ASCII", () => {
    const text = lines.filter((l) => !l.startsWith('.\\"'));
    expect(text.filter((l) => /(^|[^\\])-/.test(l))).toEqual([]);
    expect(text.filter((l) => /[^\x20-\x7e]/.test(l))).toEqual([]);
  });
});

test("without --out: one line, exit 1", () => {
  const r = spawn([process.execPath, "scripts/man.ts"]);
  expect(r.code).toBe(1);
  expect(r.stderr).toBe("etcd-gateway: man: give --out <path>\n");
});
