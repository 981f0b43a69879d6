/**
 * The .deb (scripts/package-deb.ts) and .rpm (scripts/package-rpm.ts) of the binary under test, for
 * amd64/x86_64: their file lists and metadata, lintian, and a full dpkg life cycle (install,
 * reinstall over an edited conffile, remove, purge) in a private mount namespace whose /usr, /etc,
 * /var and /run are overlays or tmpfs, so the host's files and dpkg database never change.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import pkg from "../../package.json";
import { BINARY } from "../support/gateway.ts";
import { runToEnd, which } from "../support/process.ts";

const root = join(import.meta.dir, "../..");
const DEB_NAME = `etcd-gateway_${pkg.version}-1_amd64.deb`;
const RPM_NAME = `etcd-gateway-${pkg.version}-1.x86_64.rpm`;

/** Every file both packages install, by absolute path. */
const FILES = [
  "/etc/etcd-gateway/config.yaml",
  "/usr/bin/etcd-gateway",
  "/usr/lib/systemd/system/etcd-gateway.service",
  "/usr/lib/systemd/system/etcd-gateway.socket",
  "/usr/share/bash-completion/completions/etcd-gateway",
  "/usr/share/doc/etcd-gateway/README.md",
  "/usr/share/fish/vendor_completions.d/etcd-gateway.fish",
  "/usr/share/man/man1/etcd-gateway.1.gz",
  "/usr/share/zsh/vendor-completions/_etcd-gateway",
];
const DEB_FILES = [
  ...FILES,
  "/usr/share/doc/etcd-gateway/changelog.Debian.gz",
  "/usr/share/doc/etcd-gateway/copyright",
  "/usr/share/lintian/overrides/etcd-gateway",
].sort();
const RPM_FILES = [...FILES, "/usr/share/licenses/etcd-gateway/LICENSE"].sort();

let work = "";
let deb = "";
let rpm = "";
/** The .deb unpacked with dpkg-deb -x. */
let tree = "";

async function run(cmd: string[], timeoutMs = 60_000) {
  return runToEnd(cmd, { timeoutMs, env: { ...process.env, LC_ALL: "C" } });
}

async function ok(cmd: string[], timeoutMs = 60_000): Promise<string> {
  const r = await run(cmd, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  for (const tool of ["dpkg-deb", "dpkg", "lintian", "rpm", "rpmbuild", "unshare"]) which(tool);
  work = mkdtempSync(join(tmpdir(), "etcd-gateway-package-"));
  const args = ["--binary", BINARY, "--arch", "amd64", "--version", pkg.version, "--out", work];
  const [debOut, rpmOut] = await Promise.all([
    ok([process.execPath, join(root, "scripts/package-deb.ts"), ...args]),
    ok([process.execPath, join(root, "scripts/package-rpm.ts"), ...args]),
  ]);
  deb = debOut.trim();
  rpm = rpmOut.trim();
  tree = join(work, "tree");
  await ok(["dpkg-deb", "-x", deb, tree]);
}, 120_000);

afterAll(() => {
  if (work !== "") rmSync(work, { recursive: true, force: true });
});

describe("the .deb", () => {
  test("is named etcd-gateway_<version>-1_amd64.deb and holds exactly the documented files", async () => {
    expect(deb).toBe(join(work, DEB_NAME));
    const listing = await ok(["dpkg-deb", "--contents", deb]);
    const files = listing.split("\n").filter((l) => l.startsWith("-")).map((l) => l.split(/\s+/).at(-1)!.slice(1)).sort();
    expect(files).toEqual(DEB_FILES);
    expect(listing).toMatch(/^-rwxr-xr-x root\/root\s+\d+ \S+ \S+ \.\/usr\/bin\/etcd-gateway$/m);
    expect(listing).toMatch(/^-rw-r--r-- root\/root\s+\d+ \S+ \S+ \.\/etc\/etcd-gateway\/config\.yaml$/m);
  });

  test("control: version, architecture, libc6 dependency; config.yaml is the one conffile", async () => {
    const fields = await ok(["dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends"]);
    expect(fields).toMatch(new RegExp(`^Package: etcd-gateway\nVersion: ${pkg.version.replaceAll(".", "\\.")}-1\nArchitecture: amd64\nDepends: libc6 \\(>= 2\\.\\d+\\)\n$`));
    expect(await ok(["dpkg-deb", "--info", deb, "conffiles"])).toBe("/etc/etcd-gateway/config.yaml\n");
    for (const script of ["postinst", "prerm", "postrm"]) {
      expect(await ok(["dpkg-deb", "--info", deb, script])).toBe(readFileSync(join(root, "contrib/debian", script), "utf8"));
    }
  });

  test("the units run /usr/bin/etcd-gateway and name no /usr/local path; the config is the sample", () => {
    const service = readFileSync(join(tree, "usr/lib/systemd/system/etcd-gateway.service"), "utf8");
    expect(service).toContain("\nExecStart=/usr/bin/etcd-gateway start --config=/etc/etcd-gateway/config.yaml\n");
    expect(service).toContain("\nDocumentation=file:/usr/share/doc/etcd-gateway/README.md\n");
    expect(service).not.toContain("/usr/local");
    expect(readFileSync(join(tree, "usr/lib/systemd/system/etcd-gateway.socket"), "utf8")).not.toContain("/usr/local");
    expect(readFileSync(join(tree, "etc/etcd-gateway/config.yaml"), "utf8")).toBe(readFileSync(join(root, "contrib/etcd-gateway.yaml"), "utf8"));
  });

  test("the man page is gzipped roff; the completions are what the binary prints", async () => {
    expect(gunzipSync(readFileSync(join(tree, "usr/share/man/man1/etcd-gateway.1.gz"))).toString()).toMatch(/^\.TH /m);
    const paths = { bash: "usr/share/bash-completion/completions/etcd-gateway", zsh: "usr/share/zsh/vendor-completions/_etcd-gateway", fish: "usr/share/fish/vendor_completions.d/etcd-gateway.fish" };
    for (const [shell, path] of Object.entries(paths)) {
      expect(readFileSync(join(tree, path), "utf8")).toBe(await ok([BINARY, "completion", shell]));
    }
  });

  test("copyright is machine-readable (DEP-5), Apache-2.0; changelog.Debian.gz names the version", () => {
    const copyright = readFileSync(join(tree, "usr/share/doc/etcd-gateway/copyright"), "utf8");
    expect(copyright).toStartWith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n");
    expect(copyright).toMatch(/^Files: \*\nCopyright: .+\nLicense: Apache-2\.0$/m);
    const changelog = gunzipSync(readFileSync(join(tree, "usr/share/doc/etcd-gateway/changelog.Debian.gz"))).toString();
    expect(changelog).toStartWith(`etcd-gateway (${pkg.version}-1) unstable; urgency=medium\n`);
  });

  test("lintian reports no error and no warning (the rest is overridden in the package)", async () => {
    const r = await run(["lintian", "--fail-on", "error,warning", deb], 120_000);
    expect(r.stdout.split("\n").filter((l) => /^[EW]: /.test(l))).toEqual([]);
    expect(r.code).toBe(0);
  }, 120_000);

  test("a binary of another architecture is refused before anything is built", async () => {
    const r = await run([process.execPath, join(root, "scripts/package-deb.ts"), "--binary", BINARY, "--arch", "arm64", "--version", pkg.version, "--out", join(work, "refused")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is built for ELF machine 0x3e, not arm64 (0xb7)");
    expect(existsSync(join(work, "refused"))).toBe(false);
  });
});

/**
 * The dpkg life cycle as one shell script in a private mount namespace: /usr, /etc and /var are
 * overlays whose upper layers live on a tmpfs, /run is an empty tmpfs (no systemd for the maintainer
 * scripts to reach). Each step prints `key=value` lines.
 */
const LIFECYCLE = `set -eu
w="$1"; deb="$2"
mount -t tmpfs tmpfs "$w"
for d in usr etc var; do
  mkdir -p "$w/$d.up" "$w/$d.work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$w/$d.up,workdir=$w/$d.work" "/$d"
done
mount -t tmpfs tmpfs /run
present() { for f in ${FILES.join(" ")}; do [ -e "$f" ] && echo "$1=$f"; done; true; }
dpkg -i "$deb" >/dev/null
present installed
echo "version=$(/usr/bin/etcd-gateway --version)"
echo "status=$(dpkg-query -W -f='\${Status}' etcd-gateway)"
echo "# edited by the operator" >> /etc/etcd-gateway/config.yaml
dpkg -i "$deb" >/dev/null
echo "edit-after-reinstall=$(grep -c '^# edited by the operator$' /etc/etcd-gateway/config.yaml || true)"
# What the gateway and the operator make at run time: the unit's LogsDirectory, an enabled unit.
mkdir -p /var/log/private/etcd-gateway /etc/systemd/system/multi-user.target.wants
ln -s private/etcd-gateway /var/log/etcd-gateway
echo '{}' > /var/log/private/etcd-gateway/access.log
ln -s /usr/lib/systemd/system/etcd-gateway.service /etc/systemd/system/multi-user.target.wants/etcd-gateway.service
dpkg -r etcd-gateway >/dev/null
present removed
dpkg --purge etcd-gateway >/dev/null
present purged
for f in /etc/etcd-gateway /var/log/etcd-gateway /var/log/private/etcd-gateway /etc/systemd/system/multi-user.target.wants/etcd-gateway.service; do
  { [ -e "$f" ] || [ -L "$f" ]; } && echo "left=$f"
done
echo "status-after-purge=$(dpkg-query -W -f='\${Status}' etcd-gateway 2>/dev/null || echo none)"
`;

describe("dpkg install, reinstall, remove, purge in a throwaway root", () => {
  let out = new Map<string, string[]>();
  const hostStatus = async () => (await run(["dpkg-query", "-W", "-f=${Status}", "etcd-gateway"])).stdout;
  let hostBefore = "";

  beforeAll(async () => {
    hostBefore = await hostStatus();
    const mnt = join(work, "mnt");
    mkdirSync(mnt);
    writeFileSync(join(work, "lifecycle.sh"), LIFECYCLE);
    const r = await run(["unshare", "--mount", "--propagation", "private", "sh", join(work, "lifecycle.sh"), mnt, deb], 120_000);
    if (r.code !== 0) throw new Error(`the dpkg life cycle failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
    out = new Map();
    for (const line of r.stdout.split("\n").filter((l) => l.includes("="))) {
      const [key, ...rest] = line.split("=");
      out.set(key!, [...(out.get(key!) ?? []), rest.join("=")]);
    }
  }, 120_000);

  test("dpkg -i installs every file and the binary runs --version", () => {
    expect(out.get("installed")).toEqual(FILES);
    expect(out.get("version")).toEqual([pkg.version]);
    expect(out.get("status")).toEqual(["install ok installed"]);
  });

  test("an operator's edit of /etc/etcd-gateway/config.yaml survives a reinstall (conffile)", () => {
    expect(out.get("edit-after-reinstall")).toEqual(["1"]);
  });

  test("dpkg -r keeps only the conffile; dpkg --purge removes it, the log directory and the enablement link", () => {
    expect(out.get("removed")).toEqual(["/etc/etcd-gateway/config.yaml"]);
    expect(out.get("purged")).toBeUndefined();
    expect(out.get("left")).toBeUndefined();
    expect(out.get("status-after-purge")).toEqual(["none"]);
  });

  test("the host's files and dpkg database are untouched", async () => {
    expect(existsSync("/usr/bin/etcd-gateway")).toBe(false);
    expect(await hostStatus()).toBe(hostBefore);
    expect(readdirSync(join(work, "mnt"))).toEqual([]);
  });
});

describe("the .rpm", () => {
  test("is named etcd-gateway-<version>-1.x86_64.rpm, holds the same files plus the license, config.yaml is %config(noreplace)", async () => {
    expect(rpm).toBe(join(work, RPM_NAME));
    const files = (await ok(["rpm", "-qp", "--queryformat", "[%{FILENAMES} %{FILEMODES:perms} %{FILEFLAGS:fflags}\n]", rpm])).trim().split("\n");
    const regular = files.filter((l) => l.split(" ")[1]!.startsWith("-"));
    expect(regular.map((l) => l.split(" ")[0]).sort()).toEqual(RPM_FILES);
    expect(regular).toContain("/usr/bin/etcd-gateway -rwxr-xr-x ");
    expect(regular).toContain("/etc/etcd-gateway/config.yaml -rw-r--r-- cn");
    expect(await ok(["rpm", "-qp", "--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}", rpm])).toBe(`etcd-gateway ${pkg.version} 1 x86_64 Apache-2.0`);
  });

  test("installs into an rpm --root and the binary there runs --version", async () => {
    const rpmRoot = join(work, "rpmroot");
    await ok(["rpm", "-i", "--root", rpmRoot, "--nodeps", "--noscripts", rpm]);
    expect(await ok([join(rpmRoot, "usr/bin/etcd-gateway"), "--version"])).toBe(`${pkg.version}\n`);
    expect(await ok(["rpm", "-q", "--root", rpmRoot, "etcd-gateway"])).toBe(`etcd-gateway-${pkg.version}-1.x86_64\n`);
  });
});
