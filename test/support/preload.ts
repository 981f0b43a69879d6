/**
 * bun test preload: builds dist/etcd-gateway once per run, so process tests always exercise a binary
 * built from the current source (set ETCD_GATEWAY_SKIP_BUILD=1 to reuse an existing one).
 */
if (process.env.ETCD_GATEWAY_SKIP_BUILD !== "1") {
  const root = `${import.meta.dir}/../..`;
  const proc = Bun.spawnSync([process.execPath, "scripts/build.ts"], { cwd: root, stdout: "pipe", stderr: "pipe" });
  if (proc.exitCode !== 0) {
    throw new Error(`building dist/etcd-gateway failed:\n${proc.stdout.toString()}${proc.stderr.toString()}`);
  }
}
