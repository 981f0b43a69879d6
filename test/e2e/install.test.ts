/**
 * The release-and-install path, offline: scripts/release.ts builds the host target into a temp dir,
 * signing SHA256SUMS with a throwaway ssh key, Bun.serve publishes it on loopback, and
 * scripts/install.sh installs from there under sh (dash here). Variants of the release (a tampered
 * .gz, a SHA256SUMS without the entry, a SHA256SUMS changed after signing, no signature) are served
 * side by side.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, normalize } from "node:path";
import pkg from "../../package.json";

const root = join(import.meta.dir, "../..");
const TARGET = "linux-x64";
const asset = `etcd-gateway-${pkg.version}-${TARGET}.gz`;
/** Everything a linux-x64 release holds besides the .gz and SHA256SUMS (scripts/release.ts). */
const OTHER_ASSETS = [
  `etcd-gateway_${pkg.version}-1_amd64.deb`, `etcd-gateway-${pkg.version}-1.x86_64.rpm`, "etcd-gateway.service", "etcd-gateway.socket",
  "etcd-gateway.yaml", "README.md", "LICENSE", "VERSION", "install.sh",
];
/** Copied into the release unchanged, by their name there. */
const COPIES: Record<string, string> = {
  "etcd-gateway.service": "contrib/systemd/etcd-gateway.service", "etcd-gateway.socket": "contrib/systemd/etcd-gateway.socket",
  "etcd-gateway.yaml": "contrib/etcd-gateway.yaml", "README.md": "README.md", "LICENSE": "LICENSE", "install.sh": "scripts/install.sh",
};

let work = "";
let server: ReturnType<typeof Bun.serve> | undefined;
let base = "";
let releaseStdout = "";
/** Throwaway ssh keys: `release` signs the release, `other` signs nothing. */
const key = (name: string) => join(work, "keys", name);

/** Copies the release into `<work>/served/<name>` and lets `change` alter the copy. */
function variant(name: string, change: (dir: string) => void): void {
  const dir = join(work, "served", name);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(join(work, "served", "good"))) copyFileSync(join(work, "served", "good", f), join(dir, f));
  change(dir);
}

/**
 * Runs install.sh asynchronously (the loopback server answers from this same process, so spawnSync
 * would deadlock). A bare environment: no proxy variables, no ETCD_GATEWAY_BASE_URL, no ~/.curlrc.
 */
async function install(args: string[], env: Record<string, string> = {}) {
  const proc = Bun.spawn(["sh", join(root, "scripts/install.sh"), ...args], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: work, TMPDIR: join(work, "installer-tmp"), ...env },
    stdout: "pipe", stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Makes the throwaway keys and an allowed_signers file naming `release` as release@example.org. */
function makeKeys(): void {
  mkdirSync(join(work, "keys"));
  for (const name of ["release", "other"]) {
    const p = Bun.spawnSync(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key(name)], { stdout: "pipe", stderr: "pipe" });
    if (p.exitCode !== 0) throw new Error(`ssh-keygen failed: ${p.stderr.toString()}`);
  }
  writeFileSync(key("allowed_signers"), `# release keys\nrelease@example.org namespaces="etcd-gateway-release" ${readFileSync(key("release.pub"), "utf8")}`);
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "etcd-gateway-install-"));
  makeKeys();
  const release = Bun.spawn([process.execPath, "scripts/release.ts", "--targets", TARGET, "--out", join(work, "served", "good"), "--sign-key", key("release")], {
    cwd: root, stdout: "pipe", stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([new Response(release.stdout).text(), new Response(release.stderr).text(), release.exited]);
  if (code !== 0) throw new Error(`scripts/release.ts failed (exit ${code}):\n${out}${err}`);
  releaseStdout = out;

  variant("tampered", (dir) => {
    const bytes = readFileSync(join(dir, asset));
    bytes[bytes.length >> 1]! ^= 0xff;
    writeFileSync(join(dir, asset), bytes);
  });
  // Lines for other files stay, including one whose name merely starts with the asset's name.
  variant("no-entry", (dir) => {
    const [line] = readFileSync(join(dir, "SHA256SUMS"), "utf8").split("\n");
    const hex = line!.split("  ")[0];
    writeFileSync(join(dir, "SHA256SUMS"), `${hex}  etcd-gateway-${pkg.version}-linux-arm64.gz\n${hex}  ${asset}.old\n`);
  });
  // The .gz still matches its line: only the signature can tell that another line changed.
  variant("resummed", (dir) => {
    const sums = readFileSync(join(dir, "SHA256SUMS"), "utf8");
    writeFileSync(join(dir, "SHA256SUMS"), sums.replace(/^[0-9a-f]{64}(?=  README\.md$)/m, "0".repeat(64)));
  });
  variant("unsigned", (dir) => rmSync(join(dir, "SHA256SUMS.sig")));

  mkdirSync(join(work, "installer-tmp"));
  const served = join(work, "served");
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const path = normalize(decodeURIComponent(new URL(req.url).pathname));
      const file = Bun.file(join(served, path));
      if (path.includes("..") || !(await file.exists())) return new Response("not found", { status: 404 });
      return new Response(file);
    },
  });
  base = `http://127.0.0.1:${server.port}`;
}, 120_000);

afterAll(async () => {
  await server?.stop(true);
  if (work !== "") rmSync(work, { recursive: true, force: true });
});

describe("release assets", () => {
  test("the release holds the .gz, the .deb and .rpm, the units, the sample config, README.md, LICENSE, VERSION, install.sh and a signed SHA256SUMS", () => {
    const dir = join(work, "served", "good");
    expect(readdirSync(dir).sort()).toEqual([asset, ...OTHER_ASSETS, "SHA256SUMS", "SHA256SUMS.sig"].sort());
    for (const [name, src] of Object.entries(COPIES)) expect(readFileSync(join(dir, name), "utf8")).toBe(readFileSync(join(root, src), "utf8"));
    expect(readFileSync(join(dir, "VERSION"), "utf8")).toBe(`${pkg.version}\n`);
    expect(releaseStdout).toContain("SHA256SUMS.sig  signed with");
  });

  test("SHA256SUMS has one sha256sum line for every asset, and sha256sum -c accepts it", () => {
    const dir = join(work, "served", "good");
    const names = readFileSync(join(dir, "SHA256SUMS"), "utf8").trimEnd().split("\n").map((l) => l.match(/^[0-9a-f]{64} {2}(\S+)$/)?.[1]);
    expect(names.sort()).toEqual([asset, ...OTHER_ASSETS].sort());
    const check = Bun.spawnSync(["sha256sum", "--strict", "-c", "SHA256SUMS"], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(check.stdout.toString().trimEnd().split("\n").sort()).toEqual(names.map((n) => `${n}: OK`).sort());
    expect(check.exitCode).toBe(0);
  });

  test("SHA256SUMS.sig verifies with ssh-keygen -Y verify as docs/install.md shows", () => {
    const dir = join(work, "served", "good");
    const verify = Bun.spawnSync(["ssh-keygen", "-Y", "verify", "-f", key("allowed_signers"), "-I", "release@example.org", "-n", "etcd-gateway-release", "-s", join(dir, "SHA256SUMS.sig")], {
      stdin: readFileSync(join(dir, "SHA256SUMS")), stdout: "pipe", stderr: "pipe",
    });
    expect(verify.stdout.toString()).toContain('Good "etcd-gateway-release" signature for release@example.org');
    expect(verify.exitCode).toBe(0);
  });
});

describe("install.sh against a loopback release", () => {
  const installs = [
    { name: "version from the VERSION file at --base-url", args: (prefix: string) => ["--base-url", `${base}/good`, "--prefix", prefix], env: () => ({}) },
    { name: "explicit --version=v<version> and ETCD_GATEWAY_BASE_URL", args: (prefix: string) => [`--version=v${pkg.version}`, `--prefix=${prefix}`], env: () => ({ ETCD_GATEWAY_BASE_URL: `${base}/good/` }) },
  ];
  for (const c of installs) {
    test(`installs <prefix>/bin/etcd-gateway, mode 0755, that prints the package version (${c.name})`, async () => {
      const prefix = join(work, `prefix-${installs.indexOf(c)}`);
      const r = await install(c.args(prefix), c.env());
      expect(r.stderr).not.toContain("error");
      expect(r.code).toBe(0);
      const bin = join(prefix, "bin", "etcd-gateway");
      expect(r.stdout).toBe(`installed etcd-gateway ${pkg.version} to ${bin}\n`);
      expect((await Bun.file(bin).stat()).mode & 0o777).toBe(0o755);
      const v = Bun.spawnSync([bin, "--version"], { stdout: "pipe", stderr: "pipe" });
      expect(v.exitCode).toBe(0);
      expect(v.stdout.toString().trim()).toBe(pkg.version);
      expect(readdirSync(join(prefix, "bin"))).toEqual(["etcd-gateway"]);
    }, 20_000);
  }

  const refusals = [
    { name: "a tampered .gz is refused with a checksum mismatch", dir: "tampered", stderr: new RegExp(`error: checksum mismatch for ${asset.replaceAll(".", "\\.")}: expected [0-9a-f]{64}, got [0-9a-f]{64}`) },
    { name: "a SHA256SUMS without the asset's entry is refused", dir: "no-entry", stderr: new RegExp(`error: SHA256SUMS has no entry for ${asset.replaceAll(".", "\\.")}`) },
    { name: "a missing release is a download error", dir: "nonexistent", stderr: /error: cannot download http:\/\/127\.0\.0\.1:\d+\/nonexistent\/VERSION/ },
  ];
  for (const c of refusals) {
    test(`${c.name}: exit 1, nothing at the prefix`, async () => {
      const prefix = join(work, `refused-${c.dir}`);
      const r = await install(["--base-url", `${base}/${c.dir}`, "--prefix", prefix]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(c.stderr);
      expect(r.stdout).toBe("");
      expect(existsSync(prefix)).toBe(false);
    }, 20_000);
  }

  const signed = [
    { name: "the release key's .pub", file: "release.pub", principal: "etcd-gateway-release" },
    { name: "an allowed_signers file", file: "allowed_signers", principal: "release@example.org" },
  ];
  for (const c of signed) {
    test(`--verify-key with ${c.name} verifies SHA256SUMS.sig, then installs`, async () => {
      const prefix = join(work, `signed-${c.file}`);
      const r = await install(["--base-url", `${base}/good`, "--prefix", prefix, "--verify-key", key(c.file)]);
      expect(r.stderr).toContain(`SHA256SUMS signature verified (${c.principal}, ${key(c.file)})`);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`installed etcd-gateway ${pkg.version} to ${join(prefix, "bin", "etcd-gateway")}\n`);
    }, 20_000);
  }

  const badSignatures = [
    { name: "a SHA256SUMS changed after signing", dir: "resummed", file: "release.pub", stderr: "error: bad signature: SHA256SUMS.sig does not verify SHA256SUMS" },
    { name: "another key's .pub", dir: "good", file: "other.pub", stderr: "error: bad signature: SHA256SUMS.sig does not verify SHA256SUMS" },
    { name: "an allowed_signers file without the signer", dir: "good", file: "other.pub.allowed", stderr: "error: SHA256SUMS.sig is not signed by a key in" },
    { name: "an unsigned release", dir: "unsigned", file: "release.pub", stderr: "/unsigned/SHA256SUMS.sig (--verify-key needs a signed release)" },
  ];
  for (const c of badSignatures) {
    test(`--verify-key refuses ${c.name}: exit 1, nothing at the prefix`, async () => {
      writeFileSync(key("other.pub.allowed"), `someone@example.org ${readFileSync(key("other.pub"), "utf8")}`);
      const prefix = join(work, `refused-sig-${badSignatures.indexOf(c)}`);
      const r = await install(["--base-url", `${base}/${c.dir}`, "--prefix", prefix, "--verify-key", key(c.file)]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(c.stderr);
      expect(existsSync(prefix)).toBe(false);
    }, 20_000);
  }

  test("without --base-url or ETCD_GATEWAY_BASE_URL it names the unfilled OWNER placeholder", async () => {
    const r = await install(["--version", pkg.version, "--prefix", join(work, "refused-placeholder")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no release location filled in (REPO=OWNER/etcd-gateway)");
  });

  // uname and ldd shims stand in for other machines; a target this release lacks shows as a failed download.
  const machines = [
    { os: "Linux", machine: "aarch64", ldd: "ldd (Ubuntu GLIBC 2.39-0ubuntu8) 2.39", says: "cannot download", target: "linux-arm64" },
    { os: "Linux", machine: "arm64", ldd: "ldd (GNU libc) 2.38", says: "cannot download", target: "linux-arm64" },
    { os: "Linux", machine: "x86_64", ldd: "musl libc (x86_64)\nVersion 1.2.4", says: "cannot download", target: "linux-x64-musl" },
    { os: "Linux", machine: "aarch64", ldd: "musl libc (aarch64)\nVersion 1.2.4", says: "error: no musl build for linux-arm64" },
    { os: "Linux", machine: "riscv64", ldd: "ldd (GNU libc) 2.38", says: "error: unsupported CPU architecture: riscv64" },
    { os: "Darwin", machine: "arm64", ldd: "", says: "error: unsupported OS: Darwin (etcd-gateway releases are Linux-only)" },
  ];
  for (const m of machines) {
    test(`${m.os} ${m.machine} with ldd "${m.ldd.split("\n")[0]}" -> ${m.target ?? "refused"}`, async () => {
      const shims = join(work, "shims", `${m.os}-${m.machine}-${machines.indexOf(m)}`);
      mkdirSync(shims, { recursive: true });
      writeFileSync(join(shims, "uname"), `#!/bin/sh\ncase "$1" in -s) echo "${m.os}" ;; -m) echo "${m.machine}" ;; esac\n`, { mode: 0o755 });
      // musl's ldd prints its banner on stderr and exits 1.
      writeFileSync(join(shims, "ldd"), `#!/bin/sh\nprintf '${m.ldd}\\n' >&2\nexit 1\n`, { mode: 0o755 });
      const prefix = join(work, "refused-machine");
      const r = await install(["--base-url", `${base}/good`, "--prefix", prefix], { PATH: `${shims}:${process.env.PATH ?? "/usr/bin:/bin"}` });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(m.says);
      if (m.target) expect(r.stderr).toContain(`/good/etcd-gateway-${pkg.version}-${m.target}.gz`);
      expect(existsSync(prefix)).toBe(false);
    });
  }

  test("an unknown flag prints the usage and exits 1", async () => {
    const r = await install(["--bogus"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Usage: install.sh");
    expect(r.stderr).toContain("error: unknown argument: --bogus");
  });

  // Runs last: every install above, successful or refused, used $TMPDIR = <work>/installer-tmp.
  test("temporary directories are removed on success and failure alike", async () => {
    expect(readdirSync(join(work, "installer-tmp"))).toEqual([]);
    // The check above means something only if the installer really works under $TMPDIR.
    const unusable = await install(["--base-url", `${base}/good`, "--prefix", join(work, "refused-notmp")], { TMPDIR: join(work, "no-such-dir") });
    expect(unusable.code).toBe(1);
    expect(unusable.stderr).toContain("error: cannot create a temporary directory");
  });
});
