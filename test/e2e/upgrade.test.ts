/**
 * Upgrade in place (SIGUSR2, issue 23): the new gateway takes every listening socket of the old
 * one, so with the kernel's default `net.ipv4.tcp_migrate_req=0` a client under load sees no
 * refused, reset or unanswered connection across 20 upgrades in a row; the old gateway's open
 * connections end by themselves or after `--drain-timeout`; a new gateway that cannot start
 * leaves the old one serving; a second upgrade while one is in progress is refused. Members are a
 * real 3-member etcd cluster, asked `GET /version`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { makeCerts, type Certs } from "../support/certs.ts";
import { useSharedCluster } from "../support/etcd.ts";
import { BINARY, startGatewayProcess, type GatewayProcess } from "../support/gateway.ts";
import { describeReport, startLoad, type LoadReport } from "../support/load.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { alive } from "../support/process.ts";
import { useMigrateReq } from "../support/sysctl.ts";

const cluster = useSharedCluster();
// The kernel's default: a socket closed with connects in its backlog resets them. The upgrade must not need the knob.
useMigrateReq("0");
let dir = "";
let certs: Certs;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "etcd-gateway-upgrade-"));
  certs = await makeCerts(join(dir, "certs"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Gateways that upgrades started: the harness only knows the first of each chain. */
const spawned = new Set<number>();
/** Listen ports of the chains: every gateway of a chain has the same command line, so one an upgrade started and a failing test never saw is found by it. */
const chains = new Set<number>();
afterEach(() => {
  for (const port of chains) {
    const out = Bun.spawnSync(["pgrep", "-f", "--", `listen-addr=127.0.0.1:${port}`]).stdout.toString().trim();
    for (const pid of out === "" ? [] : out.split("\n").map(Number)) spawned.add(pid);
  }
  for (const pid of spawned) if (alive(pid)) process.kill(pid, "SIGKILL");
  spawned.clear();
  chains.clear();
});

/** Starts the first gateway of a chain and remembers its port for the clean-up. */
async function startChain(args: string[], opts: Parameters<typeof startGatewayProcess>[1] = {}): Promise<GatewayProcess> {
  const gw = await startGatewayProcess(args, opts);
  const listen = args.find((a) => a.startsWith("--listen-addr=127.0.0.1:"));
  chains.add(listen === undefined ? gw.port : Number(listen.split(":").pop()));
  return gw;
}

const UPGRADED = "upgraded in place: the new gateway serves; draining";
const FAILED = "upgrade failed; still serving";

/** Sends SIGUSR2 to `pid` and waits for the `n`-th upgrade of this chain; resolves with the new gateway's pid. */
async function upgrade(gw: GatewayProcess, pid: number, n: number): Promise<number> {
  const failedBefore = gw.records().filter((r) => r.msg === FAILED).length;
  process.kill(pid, "SIGUSR2");
  const rec = await waitFor(`upgrade ${n}`, () => {
    const failed = gw.records().filter((r) => r.msg === FAILED)[failedBefore];
    if (failed !== undefined) throw new Error(`upgrade ${n} failed: ${JSON.stringify(failed)}`);
    return gw.records().filter((r) => r.msg === UPGRADED)[n - 1];
  }, 20_000);
  const next = rec.pid as number;
  spawned.add(next);
  return next;
}

/** `count` upgrades under load; each new gateway answers some requests before the next upgrade. */
async function upgradesUnderLoad(gw: GatewayProcess, count: number, tlsCa?: string): Promise<{ report: LoadReport; pids: number[] }> {
  const load = startLoad(gw.port, { loops: 8, longLived: 4, tlsCa });
  const pids = [gw.pid];
  const upgrades = async () => {
    await waitFor("load through the first gateway", () => load.answered > 50 || undefined, 10_000);
    for (let i = 1; i <= count; i++) {
      pids.push(await upgrade(gw, pids[pids.length - 1]!, i));
      const seen = load.answered;
      await waitFor(`answers through gateway ${i + 1}`, () => load.answered > seen + 30 || undefined, 10_000);
    }
  };
  // The load stops whatever happens, so no loop outlives the test.
  const failed = await upgrades().then(() => null, (e: unknown) => e);
  const report = await load.stop();
  if (failed !== null) throw failed;
  return { report, pids };
}

/** GET /version over the unix socket at `path`, the whole answer. */
function viaUnix(path: string): Promise<string> {
  return new Promise<string>((res, rej) => {
    const c = connect({ path }, () => c.write("GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"));
    let got = "";
    c.on("data", (d: Buffer) => (got += d.toString()));
    c.on("close", () => res(got));
    c.on("error", rej);
  });
}

describe("upgrade in place", () => {
  test("20 upgrades in a row under load (8 connect-request-close loops, 4 long-lived), tcp_migrate_req=0: nothing refused, reset or unanswered, no long-lived connection cut; TCP and unix listeners and both admin sockets carry over; the last gateway ends up alone", async () => {
    const sock = join(dir, "etcd.sock");
    const adminSock = join(dir, "admin.sock");
    const port = freePort();
    const gw = await startChain([`--endpoints=${cluster().endpoints}`, `--listen-addr=127.0.0.1:${port}`, `--listen-addr=unix://${sock}`, `--admin-addr=unix://${adminSock}`], { admin: true });
    gw.port = port;
    const { report, pids } = await upgradesUnderLoad(gw, 20);
    console.log(describeReport("20 upgrades in place", report));
    expect(report.failures).toEqual([]);
    expect(report.refused + report.reset + report.unanswered).toBe(0);
    expect(report.longLived.cut).toEqual([]);
    expect(report.ok).toBeGreaterThan(20 * 30);
    const last = pids[pids.length - 1]!;
    await waitFor("every old gateway drained and gone", () => pids.slice(0, -1).every((p) => !alive(p)) || undefined, 15_000);
    // The unix listener and both admin addresses are the last gateway's now.
    expect(await viaUnix(sock)).toStartWith("HTTP/1.1 200");
    const status = (await (await fetch(`${gw.adminURL}/status`)).json()) as { pid: number };
    expect(status.pid).toBe(last);
    const unixStatus = Bun.spawnSync(["curl", "-s", "--unix-socket", adminSock, "http://gateway/status"]).stdout.toString();
    expect((JSON.parse(unixStatus) as { pid: number }).pid).toBe(last);
    // No old gateway removed a socket file on its way out; the last one does when it stops for good.
    process.kill(last, "SIGTERM");
    await waitFor("the last gateway stopped", () => !alive(last) || undefined, 15_000);
    expect(existsSync(sock) || existsSync(adminSock)).toBe(false);
  }, 180_000);

  test("with --workers=2 and TLS termination (--listen-cert): 10 upgrades under load, nothing refused, reset or unanswered; each generation runs its own two processes", async () => {
    const gw = await startChain([`--endpoints=${cluster().endpoints}`, "--workers=2", `--listen-cert=${certs.server}`, `--listen-key=${certs.serverKey}`], { admin: true });
    const { report, pids } = await upgradesUnderLoad(gw, 10, certs.ca);
    console.log(describeReport("10 upgrades in place, --workers=2, TLS", report));
    expect(report.failures).toEqual([]);
    expect(report.refused + report.reset + report.unanswered).toBe(0);
    expect(report.longLived.cut).toEqual([]);
    const last = pids[pids.length - 1]!;
    await waitFor("the old generations gone", () => pids.slice(0, -1).every((p) => !alive(p)) || undefined, 15_000);
    const workers = Bun.spawnSync(["pgrep", "-P", String(last)]).stdout.toString().trim().split("\n").filter((l) => l !== "");
    for (const w of workers) spawned.add(Number(w));
    expect(workers.length).toBe(1);
  }, 180_000);

  test("a connection open across an upgrade stays on the old gateway, still answered, and is closed no sooner than --drain-timeout after the handover", async () => {
    const gw = await startChain([`--endpoints=${cluster().endpoints}`, "--drain-timeout=2s"]);
    const c = connect({ port: gw.port, host: "127.0.0.1" });
    const answers: string[] = [];
    c.on("data", (d: Buffer) => answers.push(d.toString()));
    let closedAt = 0;
    c.on("close", () => (closedAt = Date.now()));
    c.on("error", () => {});
    const ask = async (n: number) => {
      c.write("GET /version HTTP/1.1\r\nHost: etcd\r\n\r\n");
      await waitFor(`answer ${n}`, () => answers.join("").split("HTTP/1.1 200").length - 1 >= n || undefined, 5000);
    };
    await ask(1);
    await upgrade(gw, gw.pid, 1);
    const handedAt = Date.parse(gw.records().find((r) => r.msg === UPGRADED)!.ts as string);
    await ask(2); // the old gateway still carries it
    await waitFor("the connection closed by the drain", () => closedAt || undefined, 10_000);
    expect(closedAt - handedAt).toBeGreaterThanOrEqual(2000);
    expect(gw.records().some((r) => r.msg === "drain timeout reached: closed open connections" && r.connections === 1)).toBe(true);
  }, 60_000);
});

describe("an upgrade that cannot finish", () => {
  /** The binary under test, copied where a test may replace it. */
  function ownBinary(): string {
    const path = join(mkdtempSync(join(dir, "bin-")), "etcd-gateway");
    copyFileSync(resolve(BINARY), path);
    chmodSync(path, 0o755);
    return path;
  }
  /** Replaces the file at `path` as an install would (a new file renamed over it). */
  function replace(path: string, content: string | Buffer): void {
    writeFileSync(`${path}.new`, content);
    chmodSync(`${path}.new`, 0o755);
    renameSync(`${path}.new`, path);
  }

  test("a new binary that exits before it is ready, or a configuration it refuses, leaves the old gateway serving and says why; once fixed, the upgrade goes through", async () => {
    const bin = ownBinary();
    const config = join(dir, "upgrade-config.yaml");
    writeFileSync(config, `endpoints: ${cluster().endpoints}\n`);
    const gw = await startChain([`--config=${config}`], { wrap: (cmd) => [bin, ...cmd.slice(1)] });
    const real = readFileSync(bin);
    const load = startLoad(gw.port, { loops: 8, longLived: 2 });
    const steps = async () => {
      await waitFor("load", () => load.answered > 20 || undefined, 10_000);
      replace(bin, "#!/bin/sh\necho 'etcd-gateway: this build is broken' >&2\nexit 3\n");
      process.kill(gw.pid, "SIGUSR2");
      const failed = await gw.waitForLog(FAILED, 10_000);
      expect(failed.reason).toMatch(/exited before it was ready \(exit code 3\)/);
      expect(gw.lines.some((l) => l.includes("this build is broken"))).toBe(true);
      replace(bin, real);
      writeFileSync(config, `endpoints: ${cluster().endpoints}\npolicy: bogus\n`);
      process.kill(gw.pid, "SIGUSR2");
      await waitFor("the second failure", () => gw.records().filter((r) => r.msg === FAILED).length >= 2 || undefined, 10_000);
      expect(gw.lines.some((l) => l.includes("--policy") && l.includes("bogus"))).toBe(true);
      let seen = load.answered;
      await waitFor("the old gateway still serves", () => load.answered > seen + 20 || undefined, 10_000);
      expect(gw.running()).toBe(true);
      writeFileSync(config, `endpoints: ${cluster().endpoints}\npolicy: round-robin\n`);
      const next = await upgrade(gw, gw.pid, 1);
      seen = load.answered;
      await waitFor("the new gateway serves", () => load.answered > seen + 20 || undefined, 10_000);
      expect(await gw.proc.exited).toBe(0);
      expect(alive(next)).toBe(true);
    };
    const failed = await steps().then(() => null, (e: unknown) => e);
    const r = await load.stop();
    if (failed !== null) throw failed;
    console.log(describeReport("two failed upgrades, then one that worked", r));
    expect(r.refused + r.reset + r.unanswered).toBe(0);
  }, 90_000);

  test("a second SIGUSR2 while the new gateway is still starting is refused, never two new gateways; the draining one refuses too", async () => {
    const bin = ownBinary();
    const gw = await startChain([`--endpoints=${cluster().endpoints}`], { admin: true, wrap: (cmd) => [bin, ...cmd.slice(1)] });
    const real = `${bin}.real`;
    copyFileSync(bin, real);
    chmodSync(real, 0o755);
    // A new binary that takes a while to start: a wrapper that waits, then runs the real one with the descriptors it was given.
    replace(bin, `#!/bin/sh\nsleep 1.5\nexec ${real} "$@"\n`);
    // An open connection keeps the old gateway draining after the handover.
    const held = connect({ port: gw.port, host: "127.0.0.1" });
    held.on("error", () => {});
    await waitFor("the held connection", async () => ((await (await fetch(`${gw.adminURL}/status`)).json()) as { listener: { active: number } }).listener.active === 1 || undefined, 5000);
    process.kill(gw.pid, "SIGUSR2");
    await gw.waitForLog("upgrading in place", 5000);
    process.kill(gw.pid, "SIGUSR2");
    const refused = await gw.waitForLog("upgrade refused: another upgrade is in progress", 5000);
    spawned.add(refused.pid as number);
    const next = (await gw.waitForLog(UPGRADED, 10_000)).pid as number;
    expect(next).toBe(refused.pid as number);
    await sleep(500); // time for a second new gateway to show itself, were there one
    expect(gw.records().filter((r) => r.msg === "upgrading in place: starting the new gateway with the listening sockets").length).toBe(1);
    expect(gw.records().filter((r) => r.msg === "ready to proxy client requests").length).toBe(2);
    process.kill(gw.pid, "SIGUSR2");
    await gw.waitForLog("upgrade refused: this gateway is draining", 5000);
    held.destroy();
    expect(await gw.proc.exited).toBe(0);
  }, 60_000);
});
