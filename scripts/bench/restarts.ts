/**
 * `bun run bench:restarts`: what clients see while the gateway is restarted or upgraded 20 times
 * in a row (issue 23). The same load through each way: 8 connect-request-close loops and 4
 * long-lived keep-alive connections (test/support/load.ts), `GET /version` of a real 3-member etcd
 * cluster, with the kernel's default `net.ipv4.tcp_migrate_req=0` (set for the run, restored after):
 *
 * - upgrade in place: SIGUSR2 to the serving gateway (src/upgrade.ts);
 * - `systemctl restart` with contrib/systemd/etcd-gateway.socket, and without it, under a real
 *   systemd in its own namespaces (root only; test/support/systemd.ts);
 * - blue/green with `--reuse-port`: a second gateway on the same address, then SIGTERM to the first
 *   (the README's recipe before issue 23);
 * - etcd's own gateway, stopped and started again (`etcd gateway start`).
 *
 * Prints a Markdown table; `--write` also puts it in docs/restarts.md (between `<!-- restarts:start -->`
 * and `<!-- restarts:end -->`).
 *
 * @module
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startCluster, type Cluster } from "../../test/support/cluster.ts";
import { startGatewayProcess, stopAllGateways, type GatewayProcess } from "../../test/support/gateway.ts";
import { startLoad, type Load, type LoadReport } from "../../test/support/load.ts";
import { freePort, waitFor } from "../../test/support/net.ts";
import { track, which } from "../../test/support/process.ts";
import { bootSystemd, canBoot } from "../../test/support/systemd.ts";
import { setMigrateReq } from "../../test/support/sysctl.ts";

const { values } = parseArgs({ options: { count: { type: "string", default: "20" }, write: { type: "boolean", default: false } } });
const COUNT = Number(values.count);
const ROOT = resolve(import.meta.dir, "../..");

interface Row {
  way: string;
  report: LoadReport;
  /** Mean seconds per restart or upgrade, from the command to the next answered requests. */
  perSwitchS: number;
}

/** `COUNT` switches under the load; `step(i)` does one and resolves once it is done. */
async function underLoad(port: number, step: (i: number) => Promise<void>): Promise<{ report: LoadReport; perSwitchS: number }> {
  const load: Load = startLoad(port, { loops: 8, longLived: 4 });
  const t0 = performance.now();
  const run = async () => {
    await waitFor("load", () => load.answered > 50 || undefined, 15_000);
    for (let i = 1; i <= COUNT; i++) {
      await step(i);
      const seen = load.answered;
      await waitFor(`answers after switch ${i}`, () => load.answered > seen + 30 || undefined, 30_000);
    }
  };
  const failed = await run().then(() => null, (e: unknown) => e);
  const report = await load.stop();
  if (failed !== null) throw failed;
  return { report, perSwitchS: (performance.now() - t0) / 1000 / COUNT };
}

async function upgradeInPlace(cluster: Cluster): Promise<Row> {
  const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`]);
  let pid = gw.pid;
  const r = await underLoad(gw.port, async (i) => {
    process.kill(pid, "SIGUSR2");
    const rec = await waitFor(`upgrade ${i}`, () => gw.records().filter((x) => x.msg === "upgraded in place: the new gateway serves; draining")[i - 1], 30_000);
    pid = rec.pid as number;
  });
  process.kill(pid, "SIGTERM");
  await stopAllGateways();
  return { way: "upgrade in place (SIGUSR2)", ...r };
}

async function blueGreen(cluster: Cluster): Promise<Row> {
  const port = freePort();
  const args = [`--endpoints=${cluster.endpoints}`, `--listen-addr=127.0.0.1:${port}`, "--reuse-port"];
  let serving: GatewayProcess = await startGatewayProcess(args);
  const r = await underLoad(port, async () => {
    const next = await startGatewayProcess(args);
    await serving.stop("SIGTERM", 15_000);
    serving = next;
  });
  await stopAllGateways();
  return { way: "blue/green with --reuse-port (the README's recipe before issue 23)", ...r };
}

async function etcdOwn(cluster: Cluster): Promise<Row> {
  const port = freePort();
  const start = () => {
    const p = track(Bun.spawn([which("etcd"), "gateway", "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${cluster.endpoints}`], { stdout: "ignore", stderr: "ignore" }));
    return p;
  };
  let proc = start();
  await waitFor("etcd gateway listening", async () => (await fetch(`http://127.0.0.1:${port}/version`).then((x) => x.ok, () => false)) || undefined, 10_000);
  const r = await underLoad(port, async () => {
    proc.kill("SIGTERM");
    await proc.exited;
    proc = start();
  });
  proc.kill("SIGKILL");
  return { way: "etcd gateway: stop, start", ...r };
}

async function systemdRestart(cluster: Cluster, withSocket: boolean): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-bench-systemd-"));
  const port = freePort();
  const units: Record<string, string> = {
    "etcd-gateway.service": readFileSync(join(ROOT, "contrib/systemd/etcd-gateway.service"), "utf8"),
    // 20 restarts in a row are beyond systemd's default start limit (5 in 10 s).
    "etcd-gateway.service.d/bench.conf": "[Unit]\nStartLimitIntervalSec=0\n",
  };
  if (withSocket) units["etcd-gateway.socket"] = readFileSync(join(ROOT, "contrib/systemd/etcd-gateway.socket"), "utf8").replace("ListenStream=127.0.0.1:23790", `ListenStream=127.0.0.1:${port}`);
  const sd = await bootSystemd(dir, units, `listen-addr: 127.0.0.1:${port}\nendpoints: ${cluster.endpoints}\n`);
  try {
    const r = await underLoad(port, async () => {
      const done = await sd.inside("systemctl", "restart", "etcd-gateway");
      if (done.code !== 0) throw new Error(`systemctl restart: ${done.err}`);
    });
    return { way: withSocket ? "`systemctl restart` with etcd-gateway.socket" : "`systemctl restart` without the socket unit (the shipped unit before issue 23)", ...r };
  } finally {
    await sd.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const failedOf = (r: LoadReport) => r.refused + r.reset + r.unanswered;

function table(rows: Row[]): string {
  const head = "| way | answered | refused | reset | unanswered | failed per switch | long-lived cut | connect to answer p50 / p99 / max (ms) | s per switch |\n|---|---:|---:|---:|---:|---:|---:|---|---:|";
  const lines = rows.map(({ way, report: r, perSwitchS }) => `| ${way} | ${r.ok} | ${r.refused} | ${r.reset} | ${r.unanswered} | ${(failedOf(r) / COUNT).toFixed(1)} | ${r.longLived.cut.length} of ${r.longLived.opened} | ${r.p50Ms} / ${r.p99Ms} / ${r.maxMs} | ${perSwitchS.toFixed(1)} |`);
  return [head, ...lines].join("\n");
}

/** Replaces what is between `<!-- name:start -->` and `<!-- name:end -->` in `file`. */
function splice(file: string, name: string, text: string): void {
  const doc = readFileSync(file, "utf8");
  const [a, b] = [`<!-- ${name}:start -->`, `<!-- ${name}:end -->`];
  if (!doc.includes(a) || !doc.includes(b)) throw new Error(`${file} has no ${a} … ${b} section`);
  writeFileSync(file, `${doc.slice(0, doc.indexOf(a) + a.length)}\n${text}\n${doc.slice(doc.indexOf(b))}`);
}

async function main(): Promise<void> {
  const restore = setMigrateReq("0");
  const cluster = await startCluster({ size: 3, timeoutMs: 30_000 });
  const rows: Row[] = [];
  try {
    rows.push(await upgradeInPlace(cluster));
    if (canBoot) rows.push(await systemdRestart(cluster, true), await systemdRestart(cluster, false));
    rows.push(await blueGreen(cluster));
    rows.push(await etcdOwn(cluster));
  } finally {
    await stopAllGateways();
    await cluster.stop();
    restore();
  }
  const text = `${COUNT} restarts or upgrades in a row per way, under 8 connect-request-close loops (each waits 10 ms after a failed connection) and 4 long-lived keep-alive connections (GET /version of a 3-member etcd 3.4 cluster), net.ipv4.tcp_migrate_req=0, measured ${new Date().toISOString().slice(0, 10)} with \`bun run bench:restarts --write\`:\n\n${table(rows)}`;
  console.log(text);
  if (values.write) {
    splice(join(ROOT, "docs/restarts.md"), "restarts", text);
  }
}

if (import.meta.main) {
  await main();
  process.exit(0);
}
