/**
 * Cuts a release: builds the single-file executable for each target with scripts/build.ts, gzips it,
 * packs the glibc targets as .deb (scripts/package-deb.ts) and .rpm (scripts/package-rpm.ts), and
 * writes the assets scripts/install.sh downloads (docs/install.md):
 *
 *   etcd-gateway-<version>-<target>.gz        one per target
 *   etcd-gateway_<version>-1_<arch>.deb       amd64 (linux-x64), arm64 (linux-arm64)
 *   etcd-gateway-<version>-1.<arch>.rpm       x86_64, aarch64
 *   etcd-gateway.service, etcd-gateway.socket contrib/systemd/, for the .gz install
 *   etcd-gateway.yaml                         contrib/etcd-gateway.yaml, the sample config
 *   README.md, LICENSE
 *   VERSION                                   the version, for `install.sh` without --version
 *   install.sh                                the installer, so `<base>/install.sh` can be curl'ed
 *   SHA256SUMS                                `<hex>  <file>` for every file above (sha256sum -c format)
 *   SHA256SUMS.sig                            with --sign-key: `ssh-keygen -Y sign -n etcd-gateway-release`
 *
 * Cross-compiled targets fetch their Bun runtime from the npm registry on first use (docs/bun.md, "Building the binary").
 * The uncompressed binaries and their sourcemaps are removed: the map is embedded in the binary.
 *
 * Usage: bun scripts/release.ts [--out dist/release] [--targets linux-x64,linux-arm64,linux-x64-musl]
 *          [--sign-key <ssh private key, or public key with the private one in ssh-agent>]
 *
 * @module
 */
import { createHash } from "node:crypto";
import { copyFileSync, createReadStream, createWriteStream, existsSync, mkdtempSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { createGzip } from "node:zlib";
import pkg from "../package.json";
import { buildDeb, generateExtras, PackagingError, type DebArch, type Extras } from "./package-deb.ts";
import { buildRpm } from "./package-rpm.ts";

/** The targets we publish; each maps to `--target bun-<target>`. No linux-arm64-musl: install.sh says so. */
const TARGETS = ["linux-x64", "linux-arm64", "linux-x64-musl"] as const;
/** The targets packed as .deb and .rpm, with their Debian architecture; musl builds are not. */
const PACKAGED: Record<string, DebArch> = { "linux-x64": "amd64", "linux-arm64": "arm64" };
/** Files copied into the release as they are, by their name there. */
const COPIED: Record<string, string> = {
  "etcd-gateway.service": "contrib/systemd/etcd-gateway.service",
  "etcd-gateway.socket": "contrib/systemd/etcd-gateway.socket",
  "etcd-gateway.yaml": "contrib/etcd-gateway.yaml",
  "README.md": "README.md",
  "LICENSE": "LICENSE",
  "install.sh": "scripts/install.sh",
};
/** The namespace SHA256SUMS.sig is made for; install.sh verifies with the same (`ssh-keygen -Y verify -n`). */
const SIG_NAMESPACE = "etcd-gateway-release";

const root = resolve(import.meta.dir, "..");

function fail(message: string): never {
  process.stderr.write(`release: ${message}\n`);
  process.exit(1);
}

/** Bytes as `51.3 MB (51,300,123 B)`: the short figure for reading, the exact one for comparing; small files in bytes. */
function size(bytes: number): string {
  if (bytes < 1e6) return `${bytes.toLocaleString("en-US")} B`;
  return `${(bytes / 1e6).toFixed(1)} MB (${bytes.toLocaleString("en-US")} B)`;
}

/** Streams `src` through gzip into `dst` (the binaries are ~100 MB; never held in memory). */
async function gzipFile(src: string, dst: string): Promise<void> {
  await pipeline(createReadStream(src), createGzip({ level: 6 }), createWriteStream(dst));
}

/** The lowercase hex SHA-256 of a file, streamed. */
async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function parseFlags() {
  try {
    return parseArgs({
      options: {
        out: { type: "string", default: "dist/release" },
        targets: { type: "string", default: TARGETS.join(",") },
        "sign-key": { type: "string" },
      },
    }).values;
  } catch (e) {
    fail(`${(e as Error).message}\nusage: bun scripts/release.ts [--out dist/release] [--targets ${TARGETS.join(",")}] [--sign-key <key>]`);
  }
}

/** Whether `name` in the output directory belongs to a release, so an earlier run's copy is removed. */
function isReleaseFile(name: string): boolean {
  return name.startsWith("etcd-gateway") || name in COPIED || ["SHA256SUMS", "SHA256SUMS.sig", "VERSION"].includes(name);
}

/** Builds `target` into `binary` with scripts/build.ts; its chatter goes to stderr. */
function build(target: string, binary: string): void {
  const p = Bun.spawnSync([process.execPath, "scripts/build.ts", "--target", `bun-${target}`, "--outfile", binary], {
    cwd: root, stdout: "pipe", stderr: "pipe",
  });
  process.stderr.write(p.stdout.toString() + p.stderr.toString());
  if (p.exitCode !== 0) fail(`building ${target} failed (exit ${p.exitCode ?? "signal"}); no SHA256SUMS written, the output directory is incomplete`);
  rmSync(`${binary}.map`, { force: true });
}

/**
 * The man page and completions, from a binary that runs on this machine: the host target's if
 * it is in the release, else one built for the host into `scratch`.
 */
function extrasFor(binaries: Map<string, string>, scratch: string): Extras {
  const hostTarget = `linux-${process.arch}`;
  let runnable = binaries.get(hostTarget);
  if (runnable === undefined) {
    runnable = join(scratch, "etcd-gateway-host");
    build(hostTarget, runnable);
  }
  return generateExtras(runnable, join(scratch, "extras"));
}

/** Packs each glibc target as .deb and .rpm into `out`; returns the package paths. */
async function packages(binaries: Map<string, string>, out: string, scratch: string): Promise<string[]> {
  const glibc = [...binaries].filter(([t]) => t in PACKAGED);
  if (glibc.length === 0) return [];
  const made: string[] = [];
  try {
    const extras = extrasFor(binaries, scratch);
    for (const [target, binary] of glibc) {
      const o = { binary, arch: PACKAGED[target]!, version: pkg.version, out, extras };
      made.push(await buildDeb(o), buildRpm(o));
    }
  } catch (e) {
    if (e instanceof PackagingError) fail(`packaging failed: ${e.message}; no SHA256SUMS written`);
    throw e;
  }
  return made;
}

/** Signs SHA256SUMS into SHA256SUMS.sig with `ssh-keygen -Y sign` (it may ask for the key's passphrase). */
function sign(out: string, key: string): void {
  if (!existsSync(key)) fail(`--sign-key ${key}: no such file`);
  const p = Bun.spawnSync(["ssh-keygen", "-q", "-Y", "sign", "-f", resolve(key), "-n", SIG_NAMESPACE, join(out, "SHA256SUMS")], {
    stdin: "inherit", stdout: "pipe", stderr: "pipe",
  });
  if (p.exitCode !== 0 || !existsSync(join(out, "SHA256SUMS.sig"))) {
    fail(`signing SHA256SUMS with ssh-keygen -Y sign failed (exit ${p.exitCode ?? "signal"}): ${p.stderr.toString().trim()}`);
  }
}

async function main(): Promise<void> {
  const values = parseFlags();
  const targets = values.targets!.split(",").map((t) => t.trim()).filter((t) => t !== "");
  if (targets.length === 0) fail("--targets: no targets given");
  for (const t of targets) {
    if (!(TARGETS as readonly string[]).includes(t)) fail(`--targets: unknown target "${t}" (known: ${TARGETS.join(", ")})`);
  }
  const version = pkg.version;
  const out = resolve(values.out!);
  mkdirSync(out, { recursive: true });
  // Stale assets from an earlier run would sit beside a SHA256SUMS that does not list them.
  for (const name of readdirSync(out)) if (isReleaseFile(name)) rmSync(join(out, name), { force: true });

  const started = performance.now();
  const lines = [`etcd-gateway ${version} release in ${out}`];
  const binaries = new Map<string, string>();
  for (const target of targets) {
    const t0 = performance.now();
    const binary = join(out, `etcd-gateway-${version}-${target}`);
    build(target, binary);
    binaries.set(target, binary);
    lines.push(`  built ${target}: ${size(statSync(binary).size)}, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  const scratch = mkdtempSync(join(tmpdir(), "etcd-gateway-release-"));
  try {
    const t0 = performance.now();
    const made = await packages(binaries, out, scratch);
    if (made.length > 0) lines.push(`  packaged ${made.map((p) => basename(p)).join(", ")} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  for (const binary of binaries.values()) {
    await gzipFile(binary, `${binary}.gz`);
    rmSync(binary);
  }
  await Bun.write(join(out, "VERSION"), `${version}\n`);
  for (const [name, src] of Object.entries(COPIED)) copyFileSync(join(root, src), join(out, name));

  const assets = readdirSync(out).filter((n) => isReleaseFile(n) && n !== "SHA256SUMS" && n !== "SHA256SUMS.sig").sort();
  let sums = "";
  for (const name of assets) sums += `${await sha256(join(out, name))}  ${name}\n`;
  await Bun.write(join(out, "SHA256SUMS"), sums);
  if (values["sign-key"]) sign(out, values["sign-key"]);

  for (const name of [...assets, "SHA256SUMS"]) lines.push(`  ${name}  ${size(statSync(join(out, name)).size)}`);
  lines.push(values["sign-key"] ? `  SHA256SUMS.sig  signed with ${values["sign-key"]} (namespace ${SIG_NAMESPACE})` : "  unsigned: no --sign-key given, so no SHA256SUMS.sig");
  lines.push(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

await main();
