/**
 * systemd integration: sd_notify READY=1 after listening and STOPPING=1 on drain, through a real
 * unix datagram socket; and the shipped unit (contrib/systemd/etcd-gateway.service) with its
 * example configuration (contrib/etcd-gateway.yaml): `systemd-analyze verify` finds nothing to say,
 * and the unit does what the README says (issue 14, item 3); under a real systemd, with the socket
 * unit (contrib/systemd/etcd-gateway.socket), restarts and upgrades in place refuse nothing (issue 23).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { BINARY, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { useSharedCluster } from "../support/etcd.ts";
import { describeReport, startLoad, type Load } from "../support/load.ts";
import { echoServer, roundTrip } from "../support/peers.ts";
import { which } from "../support/process.ts";
import { bootSystemd, canBoot, type Booted } from "../support/systemd.ts";
import { useMigrateReq } from "../support/sysctl.ts";

afterEach(stopAllGateways);

// A stand-in for systemd's notify socket: python3 binds a unix datagram socket and prints what arrives.
const RECEIVER = [
  "import socket, sys",
  "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
  "s.bind(sys.argv[1])",
  "print('bound', flush=True)",
  "while True: print(s.recv(4096).decode().replace('\\n', '|'), flush=True)",
].join("\n");

test("with NOTIFY_SOCKET set, the gateway sends READY=1 (with MAINPID) once it listens and STOPPING=1 when it drains", async () => {
  const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-notify-"));
  const sock = join(dir, "notify.sock");
  const receiver = Bun.spawn([which("python3"), "-c", RECEIVER, sock], { stdout: "pipe", stderr: "inherit" });
  const got: string[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    for await (const c of receiver.stdout) got.push(...decoder.decode(c).split("\n").filter((l) => l !== ""));
  })();
  try {
    await waitFor("the notify socket", () => existsSync(sock), 5000);
    const env = { ...process.env, NOTIFY_SOCKET: sock };
    const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--health-check=none"], {
      wrap: (cmd) => ["env", `NOTIFY_SOCKET=${env.NOTIFY_SOCKET}`, ...cmd],
    });
    await waitFor("READY=1", () => got.includes(`READY=1|MAINPID=${gw.proc.pid}`), 5000);
    expect(gw.lines.some((l) => l.includes("notified init daemon"))).toBe(true);
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    await waitFor("STOPPING=1", () => got.includes("STOPPING=1"), 5000);
  } finally {
    receiver.kill();
    await receiver.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("without NOTIFY_SOCKET nothing is sent and nothing is logged about it", async () => {
  const gw = await startGatewayProcess(["--endpoints=127.0.0.1:2379", "--health-check=none"], { wrap: (cmd) => ["env", "-u", "NOTIFY_SOCKET", ...cmd] });
  expect(gw.lines.some((l) => l.includes("notif"))).toBe(false);
});

const ROOT = resolve(import.meta.dir, "../..");
const UNIT = join(ROOT, "contrib/systemd/etcd-gateway.service");
const EXAMPLE = join(ROOT, "contrib/etcd-gateway.yaml");

/** The unit's `Key=value` lines (continuations joined), in order. */
function unitEntries(text: string): [string, string][] {
  return text
    .replace(/\\\n/g, " ")
    .split("\n")
    .filter((l) => /^[A-Za-z]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1).trim()]);
}

describe("the shipped unit", () => {
  const text = readFileSync(UNIT, "utf8");
  const entries = unitEntries(text);
  const values = (key: string) => entries.filter(([k]) => k === key).map(([, v]) => v);

  test("`systemd-analyze verify` passes without a word for the service and its socket unit, with ExecStart pointed at the binary under test", () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-unit-"));
    try {
      const unit = join(dir, "etcd-gateway.service");
      writeFileSync(unit, text.replaceAll("/usr/local/bin/etcd-gateway", resolve(BINARY)));
      const socket = join(dir, "etcd-gateway.socket");
      writeFileSync(socket, readFileSync(join(ROOT, "contrib/systemd/etcd-gateway.socket"), "utf8"));
      const r = Bun.spawnSync([which("systemd-analyze"), "verify", unit, socket], { stdout: "pipe", stderr: "pipe" });
      expect(`${r.stdout.toString()}${r.stderr.toString()}`).toBe("");
      expect(r.exitCode).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("reload reaches a file: ExecStart reads /etc/etcd-gateway/config.yaml, in the unit's ConfigurationDirectory, and ExecReload sends SIGHUP", () => {
    expect(values("ExecStart")).toEqual(["/usr/local/bin/etcd-gateway start --config=/etc/etcd-gateway/config.yaml"]);
    expect(values("ConfigurationDirectory")).toEqual(["etcd-gateway"]);
    expect(values("ExecReload")).toEqual(["/bin/kill -HUP $MAINPID"]);
  });

  test("the /run/etcd-gateway and /var/log/etcd-gateway paths the README names exist under DynamicUser and ProtectSystem=strict", () => {
    expect(values("DynamicUser")).toEqual(["yes"]);
    expect(values("ProtectSystem")).toEqual(["strict"]);
    expect(values("RuntimeDirectory")).toEqual(["etcd-gateway"]);
    expect(values("LogsDirectory")).toEqual(["etcd-gateway"]);
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    expect(readme).toContain("unix:///run/etcd-gateway/");
    expect(readme).toContain("/var/log/etcd-gateway/");
    expect(values("LimitNOFILE")).toEqual(["65536"]);
    expect(values("Type")).toEqual(["notify"]);
  });

  test("Documentation= names no placeholder", () => {
    expect(values("Documentation").length).toBeGreaterThan(0);
    for (const d of values("Documentation")) expect(d).not.toMatch(/OWNER|example\.(com|org)|TODO/);
  });

  test("the example configuration starts the gateway, and a reload reads it again", async () => {
    const echo = await echoServer();
    try {
      // Flags beat the file: members on loopback only (the file's 10.0.1.x are never contacted), no checks.
      const gw = await startGatewayProcess([`--config=${EXAMPLE}`, `--endpoints=127.0.0.1:${echo.port}`, `--admin-addr=127.0.0.1:${freePort()}`, "--health-check=none"]);
      expect(await roundTrip(gw.port, "through the unit's config")).toBe("through the unit's config");
      gw.proc.kill("SIGHUP");
      const r = await gw.waitForLog("config reloaded");
      expect(r.reread).toEqual([`config ${EXAMPLE}`]);
    } finally {
      await echo.close();
    }
  });
});

describe("the shipped unit under a real systemd", () => {
  test.skipIf(!canBoot)("starts (READY=1), serves TCP and the unix socket in /run/etcd-gateway, logs to /var/log/etcd-gateway as its dynamic user, applies `systemctl reload`, and stops cleanly", async () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-systemd-"));
    const echo = await echoServer();
    const [port, admin] = [freePort(), freePort()];
    const config = (policy: string) => `listen-addr:\n  - 127.0.0.1:${port}\n  - unix:///run/etcd-gateway/etcd.sock\nendpoints: 127.0.0.1:${echo.port}\nhealth-check: none\npolicy: ${policy}\nadmin-addr: 127.0.0.1:${admin}\naccess-log: /var/log/etcd-gateway/access.log\n`;
    let sd: Booted | undefined;
    try {
      sd = await bootSystemd(dir, { "etcd-gateway.service": readFileSync(UNIT, "utf8") }, config("sticky"));
      const inside = sd.inside;
      const mainPid = await sd.mainPid();
      expect((await inside("sh", "-c", `grep ^Uid: /proc/${mainPid}/status`)).out).not.toMatch(/^Uid:\s+0\s/); // DynamicUser
      expect(await roundTrip(port, "over tcp")).toBe("over tcp");
      const unix = await inside("python3", "-c", "import socket; c = socket.socket(socket.AF_UNIX); c.connect('/run/etcd-gateway/etcd.sock'); c.sendall(b'over unix'); print(c.recv(100).decode())");
      expect(unix.out).toBe("over unix");
      await waitFor("both connections in the access log", async () => {
        const log = (await inside("cat", "/var/log/etcd-gateway/access.log")).out;
        return (log.includes('"client":"unix"') && log.includes('"client":"127.0.0.1:')) || undefined;
      }, 5000, 200);
      writeFileSync(join(dir, "config.yaml"), config("round-robin"));
      expect((await inside("sh", "-c", `cp ${dir}/config.yaml /etc/etcd-gateway/config.yaml && systemctl reload etcd-gateway`)).code).toBe(0);
      await waitFor("the reloaded policy", async () => ((await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { policy: string }).policy === "round-robin" || undefined, 5000);
      expect((await inside("systemctl", "stop", "etcd-gateway")).code).toBe(0);
      expect((await inside("systemctl", "show", "-p", "Result", "-p", "ExecMainStatus", "etcd-gateway")).out.split("\n").sort()).toEqual(["ExecMainStatus=0", "Result=success"]);
    } finally {
      await sd?.stop();
      await echo.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

const SOCKET_UNIT = join(ROOT, "contrib/systemd/etcd-gateway.socket");

describe("restarts and upgrades under a real systemd (issue 23)", () => {
  const cluster = useSharedCluster();
  // The kernel's default: neither way may need tcp_migrate_req=1.
  useMigrateReq("0");

  test.skipIf(!canBoot)("with etcd-gateway.socket, 20 `systemctl restart` under load refuse, reset and leave unanswered nothing; then 5 upgrades by `systemctl kill --kill-whom=main --signal=SIGUSR2` move MainPID to each new gateway, which is alone once the old one drained, and stops cleanly", async () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-systemd-"));
    const port = freePort();
    const socketUnit = readFileSync(SOCKET_UNIT, "utf8").replace("ListenStream=127.0.0.1:23790", `ListenStream=127.0.0.1:${port}`);
    const config = `listen-addr: 127.0.0.1:${port}\nendpoints: ${cluster().endpoints}\n`;
    let sd: Booted | undefined;
    let load: Load | undefined;
    try {
      // 20 restarts in a row are beyond systemd's default start limit (5 in 10 s), which is there for crash loops.
      const noStartLimit = "[Unit]\nStartLimitIntervalSec=0\n";
      sd = await bootSystemd(dir, { "etcd-gateway.socket": socketUnit, "etcd-gateway.service": readFileSync(UNIT, "utf8"), "etcd-gateway.service.d/test.conf": noStartLimit }, config);
      const { inside } = sd;
      // The gateway listens on systemd's socket: its descriptor 3 is the socket the socket unit holds.
      const main = await sd.mainPid();
      expect((await inside("readlink", `/proc/${main}/fd/3`)).out).toMatch(/^socket:/);
      load = startLoad(port, { loops: 8, longLived: 4 });
      await waitFor("load through the first gateway", () => load!.answered > 50 || undefined, 10_000);
      for (let i = 1; i <= 20; i++) {
        const r = await inside("systemctl", "restart", "etcd-gateway");
        expect(r.err).toBe("");
        expect(r.code).toBe(0);
        const seen = load.answered;
        await waitFor(`answers after restart ${i}`, () => load!.answered > seen + 30 || undefined, 10_000);
      }
      const restarts = await load.stop();
      load = undefined;
      console.log(describeReport("20 systemctl restart with etcd-gateway.socket", restarts));
      expect(restarts.failures).toEqual([]);
      expect(restarts.refused + restarts.reset + restarts.unanswered).toBe(0);

      load = startLoad(port, { loops: 8, longLived: 4 });
      for (let i = 1; i <= 5; i++) {
        const before = await sd.mainPid();
        expect((await inside("systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR2", "etcd-gateway")).code).toBe(0);
        await waitFor(`MainPID after upgrade ${i}`, async () => ((await sd!.mainPid()) !== before && (await sd!.mainPid()) > 0) || undefined, 15_000, 100);
        const seen = load.answered;
        await waitFor(`answers after upgrade ${i}`, () => load!.answered > seen + 30 || undefined, 10_000);
      }
      const upgrades = await load.stop();
      load = undefined;
      console.log(describeReport("5 upgrades in place under systemd", upgrades));
      expect(upgrades.refused + upgrades.reset + upgrades.unanswered).toBe(0);
      await waitFor("one gateway left", async () => (await inside("pgrep", "-c", "-f", "etcd-gateway start")).out === "1" || undefined, 15_000, 200);
      const last = await sd.mainPid();
      expect((await inside("pgrep", "-f", "etcd-gateway start")).out).toBe(String(last));
      expect((await inside("systemctl", "is-active", "etcd-gateway")).out).toBe("active");
      // The main process is not systemd's own child now: the unit's ExecStop lets it drain and exit 0, not SIGKILL.
      expect((await inside("systemctl", "stop", "etcd-gateway")).code).toBe(0);
      expect((await inside("systemctl", "show", "-p", "Result", "-p", "ExecMainStatus", "-p", "ExecMainPID", "etcd-gateway")).out.split("\n").sort()).toEqual(["ExecMainPID=" + last, "ExecMainStatus=0", "Result=success"]);
      // systemd still holds the socket: it was never the gateway's to close.
      expect((await inside("systemctl", "is-active", "etcd-gateway.socket")).out).toBe("active");
    } finally {
      await load?.stop();
      await sd?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);
});
