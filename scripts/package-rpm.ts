/**
 * Builds the RPM package etcd-gateway-<version>-<release>.<arch>.rpm with rpmbuild from the same
 * file tree as the .deb (stageTree in scripts/package-deb.ts), plus the license under
 * /usr/share/licenses/etcd-gateway/. scripts/release.ts calls it for each glibc target; on its own:
 *
 *   bun scripts/package-rpm.ts --binary <path> --arch amd64|arm64 --version <v> --out <dir>
 *     [--run-with <binary runnable here>] [--maintainer "Name <email>"]
 *
 * The binary is packed as built: rpm's post-install steps (strip, debuginfo, build-id links) are
 * off, because strip drops the .bun section that holds the program (contrib/debian/lintian-overrides).
 * /etc/etcd-gateway/config.yaml is %config(noreplace). Scriptlets: daemon-reload after install and
 * removal, stop the units on erase; nothing is enabled or started.
 *
 * @module
 */
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  ARCHES, buildDate, checkElf, DEFAULT_MAINTAINER, DESCRIPTION, packageCli, PackagingError, root, stageTree, SUMMARY, type PackageOptions,
} from "./package-deb.ts";

const SCRIPTLETS = `
%post
if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null 2>&1 || :; fi

%preun
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl stop etcd-gateway.socket etcd-gateway.service >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null 2>&1 || :; fi
`;

const FILES = `
%files
%attr(0755,root,root) /usr/bin/etcd-gateway
/usr/lib/systemd/system/etcd-gateway.service
/usr/lib/systemd/system/etcd-gateway.socket
%dir /etc/etcd-gateway
%config(noreplace) /etc/etcd-gateway/config.yaml
/usr/share/man/man1/etcd-gateway.1.gz
/usr/share/bash-completion/completions/etcd-gateway
/usr/share/zsh/vendor-completions/_etcd-gateway
/usr/share/fish/vendor_completions.d/etcd-gateway.fish
%dir /usr/share/doc/etcd-gateway
%doc /usr/share/doc/etcd-gateway/README.md
%dir /usr/share/licenses/etcd-gateway
%license /usr/share/licenses/etcd-gateway/LICENSE
`;

function spec(version: string, release: number, packager: string, tree: string): string {
  const date = buildDate().toUTCString().replace(/^(\w+), (\d+) (\w+) (\d+) .*$/, "$1 $3 $2 $4");
  return `Name: etcd-gateway
Version: ${version}
Release: ${release}
Summary: ${SUMMARY}
License: Apache-2.0
Packager: ${packager}

%description
${DESCRIPTION.join("\n")}

%prep

%build

%install
cp -a ${tree}/. %{buildroot}/
${SCRIPTLETS}${FILES}
%changelog
* ${date} ${packager} - ${version}-${release}
- Release ${version}.
`;
}

export interface RpmOptions extends PackageOptions {
  /** The rpm Release: 1 for a release, higher for a repackaging of the same version. */
  release?: number;
}

/** Builds `<out>/etcd-gateway-<version>-<release>.<rpm arch>.rpm` and returns its path. */
export function buildRpm(o: RpmOptions): string {
  if (!(o.arch in ARCHES)) throw new PackagingError(`unknown architecture "${o.arch}" (known: ${Object.keys(ARCHES).join(", ")})`);
  // rpm versions may not contain "-": that separates the release.
  if (!/^[0-9][A-Za-z0-9.+~]*$/.test(o.version)) throw new PackagingError(`"${o.version}" is not an rpm version`);
  checkElf(o.binary, o.arch);
  const rpmArch = ARCHES[o.arch].rpm;
  const release = o.release ?? 1;
  const work = mkdtempSync(join(tmpdir(), "etcd-gateway-rpm-"));
  try {
    const tree = join(work, "tree");
    stageTree(tree, o.binary, o.extras);
    mkdirSync(join(tree, "usr/share/licenses/etcd-gateway"), { recursive: true });
    copyFileSync(join(root, "LICENSE"), join(tree, "usr/share/licenses/etcd-gateway/LICENSE"));
    writeFileSync(join(work, "etcd-gateway.spec"), spec(o.version, release, o.maintainer ?? DEFAULT_MAINTAINER, tree));
    const p = Bun.spawnSync([
      "rpmbuild", "-bb", "--target", `${rpmArch}-linux`,
      "--define", `_topdir ${join(work, "top")}`,
      "--define", `_rpmdir ${join(work, "rpms")}`,
      // The binary goes in as built (see the module comment); gzip keeps a ~110 MB payload quick.
      "--define", "__os_install_post %{nil}",
      "--define", "debug_package %{nil}",
      "--define", "_build_id_links none",
      "--define", "_binary_payload w6.gzdio",
      join(work, "etcd-gateway.spec"),
    ], { stdout: "pipe", stderr: "pipe" });
    if (p.exitCode !== 0) throw new PackagingError(`rpmbuild failed (exit ${p.exitCode ?? "signal"}): ${(p.stderr.toString() + p.stdout.toString()).trim()}`);
    const built = readdirSync(join(work, "rpms", rpmArch)).filter((f) => f.endsWith(".rpm"));
    if (built.length !== 1) throw new PackagingError(`rpmbuild wrote ${built.length} packages, expected one`);
    mkdirSync(o.out, { recursive: true });
    const rpm = join(resolve(o.out), built[0]!);
    renameSync(join(work, "rpms", rpmArch, built[0]!), rpm);
    return rpm;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.main) await packageCli("package-rpm", buildRpm);
