/**
 * Builds the Debian package etcd-gateway_<version>_<arch>.deb from a built binary with dpkg-deb
 * (docs/install.md, "Packages"). scripts/release.ts calls it for each glibc target; it runs on its own too:
 *
 *   bun scripts/package-deb.ts --binary <path> --arch amd64|arm64 --version <v> --out <dir>
 *     [--run-with <binary runnable here>] [--maintainer "Name <email>"]
 *
 * The file tree (stageTree, shared with scripts/package-rpm.ts):
 *   /usr/bin/etcd-gateway
 *   /usr/lib/systemd/system/etcd-gateway.{service,socket}   contrib/systemd/, ExecStart=/usr/bin/etcd-gateway
 *   /etc/etcd-gateway/config.yaml                           contrib/etcd-gateway.yaml, a conffile
 *   /usr/share/man/man1/etcd-gateway.1.gz                   `bun scripts/man.ts --out <path>`
 *   /usr/share/bash-completion/completions/etcd-gateway     `<binary> completion bash`
 *   /usr/share/zsh/vendor-completions/_etcd-gateway         `<binary> completion zsh`
 *   /usr/share/fish/vendor_completions.d/etcd-gateway.fish  `<binary> completion fish`
 *   /usr/share/doc/etcd-gateway/README.md
 * and for Debian: /usr/share/doc/etcd-gateway/{copyright,changelog.Debian.gz} and
 * /usr/share/lintian/overrides/etcd-gateway (contrib/debian/), plus the maintainer scripts
 * contrib/debian/{postinst,prerm,postrm}.
 *
 * The completions come from running a binary, so packaging arm64 on an x86-64 host needs
 * --run-with pointing at a binary of the same version built for this host.
 *
 * @module
 */
import { createReadStream, chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, closeSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";

export const root = resolve(import.meta.dir, "..");

/** Debian architecture -> ELF e_machine and the rpm architecture. */
export const ARCHES = {
  amd64: { elfMachine: 0x3e, rpm: "x86_64" },
  arm64: { elfMachine: 0xb7, rpm: "aarch64" },
} as const;
export type DebArch = keyof typeof ARCHES;

export const DEFAULT_MAINTAINER = "etcd-gateway maintainers <etcd-gateway@example.org>";

export const SUMMARY = "L4 TCP proxy in front of an etcd cluster";
export const DESCRIPTION = [
  "A drop-in replacement for `etcd gateway start`: it listens on a local address",
  "and forwards each client connection to a healthy member of the etcd cluster,",
  "with active health checks, member drains, reloads without dropped connections",
  "and upgrades in place. One self-contained executable, with systemd units.",
];

/** The man page and completion scripts that go into every package, generated once. */
export interface Extras {
  man: string;
  bash: string;
  zsh: string;
  fish: string;
}

export class PackagingError extends Error {}

function run(cmd: string[], what: string, cwd = root): string {
  const p = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) {
    throw new PackagingError(`${what} failed (\`${cmd.join(" ")}\`, exit ${p.exitCode ?? "signal"}): ${(p.stderr.toString() + p.stdout.toString()).trim()}`);
  }
  return p.stdout.toString();
}

/**
 * Writes the man page (scripts/man.ts) and the three completion scripts (`<runnable> completion
 * <shell>`) into `dir`. Fails naming the missing piece when either interface is not there.
 */
export function generateExtras(runnable: string, dir: string): Extras {
  mkdirSync(dir, { recursive: true });
  const manScript = join(root, "scripts/man.ts");
  if (!existsSync(manScript)) {
    throw new PackagingError("the man page generator scripts/man.ts is missing: packages need `bun scripts/man.ts --out <path>` (etcd-gateway.1)");
  }
  const man = join(dir, "etcd-gateway.1");
  run([process.execPath, manScript, "--out", man], "generating the man page");
  if (!existsSync(man) || statSync(man).size === 0) throw new PackagingError(`bun scripts/man.ts --out ${man} wrote no man page`);
  const extras: Extras = { man, bash: "", zsh: "", fish: "" };
  for (const shell of ["bash", "zsh", "fish"] as const) {
    const p = Bun.spawnSync([runnable, "completion", shell], { stdout: "pipe", stderr: "pipe" });
    const text = p.stdout.toString();
    if (p.exitCode !== 0 || text.trim() === "") {
      throw new PackagingError(
        `\`${runnable} completion ${shell}\` failed (exit ${p.exitCode ?? "signal"}): packages need the shell completion scripts the binary prints; ${p.stderr.toString().trim() || "it printed nothing"}`,
      );
    }
    extras[shell] = join(dir, `completion.${shell}`);
    writeFileSync(extras[shell], text);
  }
  return extras;
}

/** Refuses a binary built for another architecture than the package's (reads the ELF header). */
export function checkElf(binary: string, arch: DebArch): void {
  const header = Buffer.alloc(20);
  const fd = openSync(binary, "r");
  try {
    readSync(fd, header, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (header.toString("latin1", 0, 4) !== "\x7fELF") throw new PackagingError(`${binary} is not an ELF executable`);
  const machine = header.readUInt16LE(18);
  if (machine !== ARCHES[arch].elfMachine) {
    throw new PackagingError(`${binary} is built for ELF machine 0x${machine.toString(16)}, not ${arch} (0x${ARCHES[arch].elfMachine.toString(16)})`);
  }
}

/** The newest GLIBC_x.y symbol version the binary needs (readelf from binutils), e.g. "2.17". */
export function glibcNeeded(binary: string): string {
  const versions = run(["readelf", "--version-info", "--wide", binary], "readelf (binutils)").match(/GLIBC_\d+(?:\.\d+)*/g) ?? [];
  const parsed = versions.map((v) => v.slice(6).split(".").map(Number));
  if (parsed.length === 0) throw new PackagingError(`${binary} names no GLIBC_ symbol version: is it a musl build?`);
  parsed.sort((a, b) => {
    for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
    return 0;
  });
  return parsed.at(-1)!.join(".");
}

/**
 * contrib/systemd/<unit> as the package installs it: the binary at /usr/bin, the README under
 * /usr/share/doc, and the header's manual install steps replaced by the packaged way.
 */
export function packagedUnit(name: string): string {
  const text = readFileSync(join(root, "contrib/systemd", name), "utf8")
    .replaceAll("/usr/local/bin/etcd-gateway", "/usr/bin/etcd-gateway")
    .replaceAll("/usr/local/share/doc/etcd-gateway/", "/usr/share/doc/etcd-gateway/")
    .replace(
      /^# Install[^\n]*\(as root\):\n(?:#  [^\n]*\n)+/m,
      "# Installed by the etcd-gateway package, enabled by nobody: set the endpoints in\n" +
        "# /etc/etcd-gateway/config.yaml, then `systemctl enable --now etcd-gateway` (or etcd-gateway.socket).\n",
    );
  if (text.includes("/usr/local")) throw new PackagingError(`contrib/systemd/${name}: a /usr/local path is left after rewriting it for the package`);
  if (name.endsWith(".service") && !/^ExecStart=\/usr\/bin\/etcd-gateway start /m.test(text)) {
    throw new PackagingError(`contrib/systemd/${name}: no ExecStart=/usr/bin/etcd-gateway start after rewriting it`);
  }
  return text;
}

function put(tree: string, path: string, content: string | Buffer, mode = 0o644): void {
  const dst = join(tree, path);
  mkdirSync(dirname(dst), { recursive: true });
  writeFileSync(dst, content);
  chmodSync(dst, mode);
}

/** Lays out the files common to the .deb and the .rpm under `tree` (see the module comment). */
export function stageTree(tree: string, binary: string, extras: Extras): void {
  mkdirSync(join(tree, "usr/bin"), { recursive: true });
  copyFileSync(binary, join(tree, "usr/bin/etcd-gateway"));
  chmodSync(join(tree, "usr/bin/etcd-gateway"), 0o755);
  for (const unit of ["etcd-gateway.service", "etcd-gateway.socket"]) put(tree, `usr/lib/systemd/system/${unit}`, packagedUnit(unit));
  put(tree, "etc/etcd-gateway/config.yaml", readFileSync(join(root, "contrib/etcd-gateway.yaml")));
  put(tree, "usr/share/man/man1/etcd-gateway.1.gz", gzipSync(readFileSync(extras.man), { level: 9 }));
  put(tree, "usr/share/bash-completion/completions/etcd-gateway", readFileSync(extras.bash));
  put(tree, "usr/share/zsh/vendor-completions/_etcd-gateway", readFileSync(extras.zsh));
  put(tree, "usr/share/fish/vendor_completions.d/etcd-gateway.fish", readFileSync(extras.fish));
  put(tree, "usr/share/doc/etcd-gateway/README.md", readFileSync(join(root, "README.md")));
}

/** RFC 2822 date for changelogs: SOURCE_DATE_EPOCH when set (reproducible builds), else now. */
export function buildDate(): Date {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  return epoch && /^\d+$/.test(epoch) ? new Date(Number(epoch) * 1000) : new Date();
}

function rfc2822(d: Date): string {
  return d.toUTCString().replace(/^(\w+), (\d+) (\w+) (\d+) ([\d:]+) GMT$/, "$1, $2 $3 $4 $5 +0000");
}

/** Total size of the files under `dir` in KiB, as dpkg's Installed-Size wants. */
function installedKiB(dir: string): number {
  let bytes = 0;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) bytes += statSync(join(entry.parentPath, entry.name)).size;
  }
  return Math.ceil(bytes / 1024);
}

function controlFile(version: string, arch: DebArch, maintainer: string, glibc: string, kib: number): string {
  return [
    "Package: etcd-gateway",
    `Version: ${version}`,
    `Architecture: ${arch}`,
    `Maintainer: ${maintainer}`,
    `Installed-Size: ${kib}`,
    `Depends: libc6 (>= ${glibc})`,
    "Section: net",
    "Priority: optional",
    `Description: ${SUMMARY}`,
    ...DESCRIPTION.map((l) => ` ${l}`),
    "",
  ].join("\n");
}

export interface DebOptions extends PackageOptions {
  /** The Debian revision (the package's version is `<version>-<revision>`): 1 for a release, higher for a repackaging. */
  revision?: number;
}

/** Files an upgrade must not overwrite once an operator edited them. */
const CONFFILES = ["/etc/etcd-gateway/config.yaml"];

/** DEBIAN/md5sums: `<md5>  <path>` for every file outside DEBIAN/, as debsums checks them. */
async function md5sums(tree: string): Promise<string> {
  const lines: string[] = [];
  for (const entry of readdirSync(tree, { recursive: true, withFileTypes: true })) {
    const path = join(entry.parentPath, entry.name);
    const rel = path.slice(tree.length + 1);
    // Conffiles are left out, as dpkg keeps their sums itself (dpkg-query --showformat='${Conffiles}').
    if (!entry.isFile() || rel.startsWith("DEBIAN/") || CONFFILES.includes(`/${rel}`)) continue;
    const hash = new Bun.CryptoHasher("md5");
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    lines.push(`${hash.digest("hex")}  ${rel}\n`);
  }
  return lines.sort((a, b) => a.slice(34).localeCompare(b.slice(34))).join("");
}

/** Adds the Debian-only files and DEBIAN/ to a staged tree. */
async function addDebianFiles(tree: string, o: DebOptions, debVersion: string, maintainer: string): Promise<void> {
  const contrib = join(root, "contrib/debian");
  put(tree, "usr/share/doc/etcd-gateway/copyright", readFileSync(join(contrib, "copyright")));
  const changelog = `etcd-gateway (${debVersion}) unstable; urgency=medium\n\n  * Release ${o.version}.\n\n -- ${maintainer}  ${rfc2822(buildDate())}\n`;
  put(tree, "usr/share/doc/etcd-gateway/changelog.Debian.gz", gzipSync(changelog, { level: 9 }));
  put(tree, "usr/share/lintian/overrides/etcd-gateway", readFileSync(join(contrib, "lintian-overrides")));
  const kib = installedKiB(tree);
  put(tree, "DEBIAN/md5sums", await md5sums(tree));
  put(tree, "DEBIAN/control", controlFile(debVersion, o.arch, maintainer, glibcNeeded(o.binary), kib));
  put(tree, "DEBIAN/conffiles", CONFFILES.map((f) => `${f}\n`).join(""));
  for (const script of ["postinst", "prerm", "postrm"]) put(tree, `DEBIAN/${script}`, readFileSync(join(contrib, script)), 0o755);
}

/** Builds `<out>/etcd-gateway_<version>-<revision>_<arch>.deb` and returns its path. */
export async function buildDeb(o: DebOptions): Promise<string> {
  if (!(o.arch in ARCHES)) throw new PackagingError(`unknown architecture "${o.arch}" (known: ${Object.keys(ARCHES).join(", ")})`);
  if (!/^[0-9][A-Za-z0-9.+~-]*$/.test(o.version)) throw new PackagingError(`"${o.version}" is not a Debian version`);
  checkElf(o.binary, o.arch);
  const maintainer = o.maintainer ?? DEFAULT_MAINTAINER;
  const debVersion = `${o.version}-${o.revision ?? 1}`;
  const tree = mkdtempSync(join(tmpdir(), "etcd-gateway-deb-"));
  try {
    chmodSync(tree, 0o755);
    stageTree(tree, o.binary, o.extras);
    await addDebianFiles(tree, o, debVersion, maintainer);
    mkdirSync(o.out, { recursive: true });
    const deb = join(resolve(o.out), `etcd-gateway_${debVersion}_${o.arch}.deb`);
    // gzip: xz on a ~110 MB executable takes a minute on two cores for a few MB less.
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", tree, deb], "dpkg-deb --build");
    return deb;
  } finally {
    rmSync(tree, { recursive: true, force: true });
  }
}

/** The options both package builders take. */
export interface PackageOptions {
  binary: string;
  arch: DebArch;
  /** The upstream version, the binary's `--version`. */
  version: string;
  out: string;
  extras: Extras;
  maintainer?: string;
}

/**
 * The command line of scripts/package-deb.ts and scripts/package-rpm.ts: parses the flags,
 * generates the man page and completions, builds one package and prints its path.
 */
export async function packageCli(tool: string, build: (o: PackageOptions) => string | Promise<string>): Promise<void> {
  const usage = `usage: bun scripts/${tool}.ts --binary <path> --arch amd64|arm64 --version <v> --out <dir> [--run-with <binary runnable here>] [--maintainer "Name <email>"]`;
  const scratch = mkdtempSync(join(tmpdir(), "etcd-gateway-extras-"));
  try {
    let values;
    try {
      values = parseArgs({
        options: {
          binary: { type: "string" }, arch: { type: "string" }, version: { type: "string" }, out: { type: "string", default: "." },
          "run-with": { type: "string" }, maintainer: { type: "string" },
        },
      }).values;
    } catch (e) {
      throw new PackagingError(`${(e as Error).message}\n${usage}`);
    }
    if (!values.binary || !values.arch || !values.version) throw new PackagingError(usage);
    // The cheap checks first: a wrong --arch fails before the man page and completions are made.
    if (!(values.arch in ARCHES)) throw new PackagingError(`unknown architecture "${values.arch}" (known: ${Object.keys(ARCHES).join(", ")})`);
    checkElf(resolve(values.binary), values.arch as DebArch);
    const extras = generateExtras(resolve(values["run-with"] ?? values.binary), scratch);
    const path = await build({ binary: resolve(values.binary), arch: values.arch as DebArch, version: values.version, out: values.out!, extras, maintainer: values.maintainer });
    process.stdout.write(`${path}\n`);
  } catch (e) {
    process.stderr.write(`${tool}: ${e instanceof PackagingError ? e.message : (e as Error).stack}\n`);
    process.exitCode = 1;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

if (import.meta.main) await packageCli("package-deb", buildDeb);
