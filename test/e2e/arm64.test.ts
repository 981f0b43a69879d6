/**
 * The linux-arm64 release binary is run, not only built (issue 24, item 3): scripts/build.ts
 * cross-compiles it into a temp dir, its ELF header must say AArch64, and it runs under
 * qemu-aarch64-static (user-mode emulation, with Debian's arm64 glibc from libc6-arm64-cross as the
 * sysroot; scripts/ensure-deps.sh installs both): `--version`, and `start` in front of a real etcd
 * cluster, proxying etcdctl and HTTP. Not the full suite: every other test runs the host binary.
 *
 * Cross-compiling fetches Bun's arm64 runtime from the npm registry on first use (docs/bun.md,
 * "Building the binary"). Without network that fails, and so does this file: it never skips.
 * Timings (build, qemu start) are printed; docs/install.md, "Which builds are tested where", has them.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../../package.json";
import { useSharedCluster, viaGateway } from "../support/etcd.ts";
import { startGatewayProcess } from "../support/gateway.ts";
import { runToEnd, which } from "../support/process.ts";

const root = join(import.meta.dir, "../..");
/** Debian's arm64 glibc and loader (libc6-arm64-cross): qemu looks up /lib/ld-linux-aarch64.so.1 and the libraries under it. */
const SYSROOT = "/usr/aarch64-linux-gnu";
const EM_AARCH64 = 183;

let work = "";
let binary = "";

/** The command that runs the arm64 binary with `args` under qemu-user on this x86-64 host. */
function underQemu(args: string[]): string[] {
  return [which("qemu-aarch64-static"), "-L", SYSROOT, binary, ...args];
}

/** The ELF header fields that identify the machine, and the program interpreter (PT_INTERP). */
function elfInfo(path: string): { magic: string; class64: boolean; littleEndian: boolean; machine: number; interpreter: string } {
  const head = Buffer.alloc(4096);
  const fd = openSync(path, "r");
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  // ELF64, little-endian (checked below): e_machine at 18, e_phoff at 32, e_phentsize at 54, e_phnum at 56.
  const phoff = Number(head.readBigUInt64LE(32));
  const phentsize = head.readUInt16LE(54);
  let interpreter = "";
  for (let i = 0; i < head.readUInt16LE(56); i++) {
    const ph = phoff + i * phentsize;
    if (ph + phentsize > head.length || head.readUInt32LE(ph) !== 3) continue; // PT_INTERP
    const offset = Number(head.readBigUInt64LE(ph + 8));
    const size = Number(head.readBigUInt64LE(ph + 32));
    interpreter = head.subarray(offset, offset + size).toString("latin1").replace(/\0+$/, "");
  }
  return {
    magic: head.subarray(0, 4).toString("latin1"),
    class64: head[4] === 2,
    littleEndian: head[5] === 1,
    machine: head.readUInt16LE(18),
    interpreter,
  };
}

beforeAll(async () => {
  which("qemu-aarch64-static");
  work = mkdtempSync(join(tmpdir(), "etcd-gateway-arm64-"));
  binary = join(work, "etcd-gateway");
  const t0 = performance.now();
  const r = await runToEnd([process.execPath, join(root, "scripts/build.ts"), "--target", "bun-linux-arm64", "--outfile", binary], { timeoutMs: 120_000 });
  if (r.code !== 0) {
    // Bun says "Failed to download 'bun-linux-aarch64-v<version>': <reason>" when it cannot fetch the runtime.
    const download = /Failed to download/.test(r.stderr)
      ? `Bun fetches the arm64 runtime (bun-linux-aarch64-v${Bun.version}) from the npm registry on first use and caches it in ` +
        "~/.bun/install/cache: without network access (or a filled cache) this test fails, by design, rather than skip. "
      : "";
    throw new Error(`cross-compiling linux-arm64 with scripts/build.ts failed (exit ${r.code}). ${download}Its output:\n${r.stdout}${r.stderr}`);
  }
  console.log(`arm64: cross-build with scripts/build.ts took ${Math.round(performance.now() - t0)} ms`);
}, 130_000);

afterAll(() => {
  if (work !== "") rmSync(work, { recursive: true, force: true });
});

describe("linux-arm64 binary", () => {
  const cluster = useSharedCluster();

  test("is an ELF64 little-endian AArch64 executable (e_machine 183) with the glibc aarch64 loader", () => {
    const elf = elfInfo(binary);
    expect(elf.magic).toBe("\x7fELF");
    expect(elf.class64).toBe(true);
    expect(elf.littleEndian).toBe(true);
    expect(elf.machine).toBe(EM_AARCH64);
    expect(elf.interpreter).toBe("/lib/ld-linux-aarch64.so.1");
  });

  test("--version under qemu-aarch64-static prints the package.json version", async () => {
    const t0 = performance.now();
    const r = await runToEnd(underQemu(["--version"]), { timeoutMs: 30_000 });
    console.log(`arm64: --version under qemu took ${Math.round(performance.now() - t0)} ms`);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  }, 40_000);

  // Bun's JIT (JavaScriptCore's DFG tier) works under qemu-user: no BUN_JSC_useJIT=0 needed.
  // BUN_BE_BUN=1 makes the compiled binary act as the bun CLI, so it can run a probe script.
  // numberOfDFGCompiles reports 1,000,000 when the JIT is off (as with BUN_JSC_useJIT=0).
  test("Bun's JIT compiles hot code in the arm64 runtime under qemu", async () => {
    const probe = join(work, "jit-probe.js");
    writeFileSync(probe, [
      'const { numberOfDFGCompiles } = require("bun:jsc");',
      "function f(x) { let s = 0; for (let i = 0; i < 100; i++) s = (s + i * x) | 0; return s; }",
      "let a = 0; for (let i = 0; i < 200000; i++) a ^= f(i);",
      "console.log(JSON.stringify({ arch: process.arch, dfg: numberOfDFGCompiles(f), a }));",
    ].join("\n"));
    const r = await runToEnd(underQemu([probe]), { timeoutMs: 30_000, env: { ...process.env, BUN_BE_BUN: "1" } });
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { arch: string; dfg: number };
    expect(out.arch).toBe("arm64");
    expect(out.dfg).toBeGreaterThan(0);
    expect(out.dfg).toBeLessThan(1_000_000);
  }, 40_000);

  test("start under qemu-aarch64-static proxies etcdctl and HTTP to a real etcd cluster, and drains on SIGTERM", async () => {
    const c = cluster();
    const t0 = performance.now();
    // Emulated, it starts in about 1 s on a 2-core machine; the bound leaves room for a slow CI host.
    const gw = await startGatewayProcess([`--endpoints=${c.endpoints}`], {
      wrap: (cmd) => underQemu(cmd.slice(1)),
      readyTimeoutMs: 30_000,
    });
    console.log(`arm64: start under qemu until "ready to proxy client requests" took ${Math.round(performance.now() - t0)} ms`);

    const put = await viaGateway(gw, ["put", "arm64-key", "through-qemu"]);
    expect(put.stderr).toBe("");
    expect(put.stdout.trim()).toBe("OK");
    // The write reached the cluster itself, not something the gateway answered on its own.
    const direct = await c.etcdctl(["get", "arm64-key", "--print-value-only"]);
    expect(direct.stdout.trim()).toBe("through-qemu");
    const got = await viaGateway(gw, ["get", "arm64-key", "--print-value-only"]);
    expect(got.stdout.trim()).toBe("through-qemu");

    const res = await fetch(`http://${gw.listen}/version`, { signal: AbortSignal.timeout(10_000), headers: { connection: "close" } });
    expect(res.status).toBe(200);
    expect(Object.keys((await res.json()) as object)).toContain("etcdserver");

    expect(await gw.stop("SIGTERM", 15_000)).toBe(0);
    expect(gw.lines.some((l) => l.includes('"msg":"stopped"'))).toBe(true);
  }, 60_000);
});
