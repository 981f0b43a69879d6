/**
 * The C library on musl (issue 14, item 4): src/libc.ts opens it by name for sd_notify and socket
 * queries. The musl release binary itself cannot run on this Debian machine (it needs a musl-built
 * libstdc++.so.6, which Debian does not package), so this checks the assumption it rests on with
 * musl's own loader: a small C program built with musl-gcc dlopen()s the names src/libc.ts tries, in
 * order, and finds musl's libc (never glibc) with every symbol the gateway binds.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { candidates, SYMBOLS } from "../../src/libc.ts";

const PROGRAM = `
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    void *h = dlopen(argv[i], RTLD_NOW);
    if (!h) { printf("%s: %s\\n", argv[i], dlerror()); continue; }
    printf("opened %s\\n", argv[i]);
    ${Object.keys(SYMBOLS).map((s) => `if (!dlsym(h, "${s}")) printf("missing ${s}\\n");`).join("\n    ")}
    FILE *f = fopen("/proc/self/maps", "r"); char line[512];
    while (fgets(line, sizeof line, f)) if (strstr(line, "libc")) printf("mapped %s", strrchr(line, ' ') + 1);
    return 0;
  }
  return 1;
}
`;

test.skipIf(Bun.which("musl-gcc") === null)("on musl's loader the first name src/libc.ts tries opens musl's libc, with every symbol it binds", () => {
  const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-musl-"));
  try {
    writeFileSync(join(dir, "dl.c"), PROGRAM);
    const cc = Bun.spawnSync(["musl-gcc", "-o", join(dir, "dl"), join(dir, "dl.c")], { stderr: "pipe" });
    expect(cc.stderr.toString()).toBe("");
    const r = Bun.spawnSync([join(dir, "dl"), ...candidates()], { stdout: "pipe" });
    const out = r.stdout.toString();
    expect(r.exitCode).toBe(0);
    expect(out).toContain(`opened ${candidates()[0]}\n`);
    expect(out).not.toContain("missing");
    const mapped = [...new Set(out.split("\n").filter((l) => l.startsWith("mapped ")))];
    expect(mapped.length).toBeGreaterThan(0);
    for (const m of mapped) expect(m).toMatch(/musl/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
