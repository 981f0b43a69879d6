/**
 * Cuts a release: builds the single-file executable for each target with scripts/build.ts, gzips it,
 * and writes the assets scripts/install.sh downloads (docs/install.md):
 *
 *   etcd-gateway-<version>-<target>.gz   one per target
 *   SHA256SUMS                           `<hex>  <file>` for each .gz (sha256sum -c format)
 *   VERSION                              the version, for `install.sh` without --version
 *   install.sh                           the installer, so `<base>/install.sh` can be curl'ed
 *
 * Cross-compiled targets fetch their Bun runtime from the npm registry on first use (docs/bun.md, "Building the binary").
 * The uncompressed binaries and their sourcemaps are removed: the map is embedded in the binary.
 *
 * Usage: bun scripts/release.ts [--out dist/release] [--targets linux-x64,linux-arm64,linux-x64-musl]
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { createGzip } from "node:zlib";
import pkg from "../package.json";

/** The targets we publish; each maps to `--target bun-<target>`. No linux-arm64-musl: install.sh says so. */
const TARGETS = ["linux-x64", "linux-arm64", "linux-x64-musl"] as const;

const root = resolve(import.meta.dir, "..");

function fail(message: string): never {
  process.stderr.write(`release: ${message}\n`);
  process.exit(1);
}

/** Bytes as `51.3 MB (51,300,123 B)`: the short figure for reading, the exact one for comparing. */
function size(bytes: number): string {
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
      },
    }).values;
  } catch (e) {
    fail(`${(e as Error).message}\nusage: bun scripts/release.ts [--out dist/release] [--targets ${TARGETS.join(",")}]`);
  }
}

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
for (const name of readdirSync(out)) {
  if (name.startsWith("etcd-gateway-") || name === "SHA256SUMS" || name === "VERSION" || name === "install.sh") {
    rmSync(join(out, name), { force: true });
  }
}

const started = performance.now();
const produced: { name: string; bytes: number; binaryBytes: number; seconds: number; sha: string }[] = [];
for (const target of targets) {
  const t0 = performance.now();
  const binary = join(out, `etcd-gateway-${version}-${target}`);
  // Build chatter goes to stderr; stdout carries only the summary below.
  const build = Bun.spawnSync([process.execPath, "scripts/build.ts", "--target", `bun-${target}`, "--outfile", binary], {
    cwd: root, stdout: "pipe", stderr: "pipe",
  });
  process.stderr.write(build.stdout.toString() + build.stderr.toString());
  if (build.exitCode !== 0) fail(`building ${target} failed (exit ${build.exitCode ?? "signal"}); no SHA256SUMS written, ${out} is incomplete`);
  const binaryBytes = statSync(binary).size;
  const gz = `${binary}.gz`;
  await gzipFile(binary, gz);
  rmSync(binary);
  rmSync(`${binary}.map`, { force: true });
  const name = `etcd-gateway-${version}-${target}.gz`;
  produced.push({ name, bytes: statSync(gz).size, binaryBytes, seconds: (performance.now() - t0) / 1000, sha: await sha256(gz) });
}

await Bun.write(join(out, "SHA256SUMS"), produced.map((p) => `${p.sha}  ${p.name}\n`).join(""));
await Bun.write(join(out, "VERSION"), `${version}\n`);
await Bun.write(join(out, "install.sh"), Bun.file(join(root, "scripts/install.sh")));

const lines = [`etcd-gateway ${version} release in ${out}`];
for (const p of produced) {
  lines.push(`  ${p.name}  ${size(p.bytes)}, binary ${size(p.binaryBytes)}, ${p.seconds.toFixed(1)} s`);
}
for (const name of ["SHA256SUMS", "VERSION", "install.sh"]) lines.push(`  ${name}  ${statSync(join(out, name)).size} B`);
lines.push(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
process.stdout.write(`${lines.join("\n")}\n`);
