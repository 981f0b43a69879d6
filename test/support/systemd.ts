/**
 * A real systemd for the tests and the restart benchmark: systemd as PID 1 of a new PID and mount
 * namespace, with only the units given, /etc overlaid, /run and /var/log fresh, and the binary
 * under test at the units' own /usr/local/bin/etcd-gateway. Needs root (CI runs as root).
 *
 * @module
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { BINARY } from "./gateway.ts";
import { waitFor } from "./net.ts";
import { track, which } from "./process.ts";

const SYSTEMD = "/lib/systemd/systemd";
export const canBoot = process.getuid?.() === 0 && existsSync(SYSTEMD) && Bun.which("unshare") !== null && Bun.which("nsenter") !== null;

/**
 * Runs systemd as PID 1 of a new PID and mount namespace, with only our units, /etc overlaid, /run
 * and /var/log fresh, and the binary under test at the unit's own /usr/local/bin/etcd-gateway (on a
 * tmpfs of the namespace: the host's directory is untouched). Copied, not named where it lies: with
 * PrivateTmp=yes the service could not see a binary built under /tmp.
 */
function bootScript(dir: string, config: string): string {
  return [
    "#!/bin/bash",
    "set -e",
    `mount -t tmpfs tmpfs /usr/local/bin && cp ${resolve(BINARY)} /usr/local/bin/etcd-gateway`,
    `mount -t tmpfs tmpfs ${dir}/ov && mkdir ${dir}/ov/upper ${dir}/ov/work`,
    `mount -t overlay overlay -o lowerdir=/etc,upperdir=${dir}/ov/upper,workdir=${dir}/ov/work /etc`,
    "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log",
    `mkdir -p /etc/etcd-gateway && cp ${config} /etc/etcd-gateway/config.yaml`,
    `export SYSTEMD_UNIT_PATH=${dir}/units container=unshare`,
    `exec ${SYSTEMD} --system --unit=gw-test.target --log-target=null`,
  ].join("\n");
}

/** Cgroup directories under the systemd hierarchies, to remove the ones the namespaced systemd leaves behind. */
function cgroupDirs(): Set<string> {
  const out = new Set<string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) (out.add(join(d, e.name)), walk(join(d, e.name)));
  };
  for (const root of ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]) if (existsSync(root)) walk(root);
  return out;
}

/** A systemd booted in its own namespaces with `units` (name to text) and `config` as /etc/etcd-gateway/config.yaml. */
export interface Booted {
  /** Runs a command inside the namespaces; its exit code and trimmed stdout. */
  inside(...cmd: string[]): Promise<{ code: number; out: string; err: string }>;
  /** The service's MainPID as systemd sees it (in the namespace's numbering). */
  mainPid(): Promise<number>;
  /** Kills everything in the namespaces and removes what systemd left behind. */
  stop(): Promise<void>;
}

export async function bootSystemd(dir: string, units: Record<string, string>, config: string): Promise<Booted> {
  const before = cgroupDirs();
  const unitDir = join(dir, "units");
  mkdirSync(unitDir);
  mkdirSync(join(dir, "ov"));
  for (const stub of ["sysinit.target", "basic.target", "shutdown.target", "network.target", "network-online.target", "multi-user.target", "sockets.target", "system.slice"]) writeFileSync(join(unitDir, stub), "[Unit]\nDescription=stub\n");
  const wanted = Object.keys(units).filter((n) => !n.includes("/")).join(" ");
  writeFileSync(join(unitDir, "gw-test.target"), `[Unit]\nDescription=the gateway alone\nWants=${wanted}\n`);
  for (const [name, text] of Object.entries(units)) {
    mkdirSync(dirname(join(unitDir, name)), { recursive: true });
    writeFileSync(join(unitDir, name), text);
  }
  writeFileSync(join(dir, "config.yaml"), config);
  writeFileSync(join(dir, "boot.sh"), bootScript(dir, join(dir, "config.yaml")));
  chmodSync(join(dir, "boot.sh"), 0o755);
  const ns = track(Bun.spawn([which("unshare"), "--pid", "--fork", "--mount", "--mount-proc", join(dir, "boot.sh")], { stdout: Bun.file("/tmp/sd-debug.log"), stderr: Bun.file("/tmp/sd-debug.err") }));
  let init = 0;
  // Not spawnSync: the members may be served by this process's event loop.
  const inside = async (...cmd: string[]) => {
    const p = Bun.spawn([which("nsenter"), "-t", String(init), "-m", "-p", ...cmd], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, out: out.trim(), err: err.trim() };
  };
  const stop = async () => {
    if (init > 0) process.kill(init, "SIGKILL"); // the namespace's init: everything in it goes
    ns.kill("SIGKILL");
    await ns.exited;
    for (const d of [...cgroupDirs()].filter((d) => !before.has(d)).sort((a, b) => b.length - a.length)) {
      try {
        rmdirSync(d);
      } catch {}
    }
  };
  try {
    init = await waitFor("systemd in its namespace", () => Number(readFileSync(`/proc/${ns.pid}/task/${ns.pid}/children`, "utf8").trim().split(" ")[0]) || undefined, 5000);
    await waitFor("etcd-gateway.service active", async () => (await inside("systemctl", "is-active", "etcd-gateway")).out === "active" || undefined, 15_000, 100);
  } catch (e) {
    await stop();
    throw e;
  }
  return { inside, mainPid: async () => Number((await inside("systemctl", "show", "-p", "MainPID", "--value", "etcd-gateway")).out), stop };
}

