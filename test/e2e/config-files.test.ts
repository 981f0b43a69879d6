/**
 * The files flags name, against the compiled binary (issue 20): the socket mode from the YAML file,
 * numbers YAML cannot hold, control characters in addresses, an empty file at startup and on
 * SIGHUP, and FIFOs where a regular file is meant (at startup and on SIGHUP, the gateway serving
 * throughout).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCerts } from "../support/certs.ts";
import { BINARY, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { echoServer, roundTrip, type Listening } from "../support/peers.ts";
import { runToEnd } from "../support/process.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-config-files-"));
const servers: Listening[] = [];
afterEach(stopAllGateways);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
/** Replaces whatever is at `path` with a FIFO that nobody writes. */
const fifoAt = (path: string) => {
  rmSync(path, { force: true });
  expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
  return path;
};
const echo = async () => {
  const s = await echoServer();
  servers.push(s);
  return s;
};
/**
 * Runs `etcd-gateway start ARGS` to its end, killed after 5 s: every case here exits at once (a
 * gateway that starts, or hangs in open(2), is killed and its code is null).
 */
const start = (args: string[], env: Record<string, string | undefined> = {}) => runToEnd([BINARY, "start", ...args], { timeoutMs: 5000, env: { ...process.env, NO_COLOR: "1", ...env } });

describe("listen-socket-mode from the YAML file", () => {
  test("0o660 (YAML 1.2 octal) gives the socket mode 0660, not 0432", async () => {
    // Found: the number 432 was read back as the octal text "432": every local user could connect.
    const sock = join(dir, "mode.sock");
    const cfg = file("mode.yaml", `listen-addr: unix://${sock}\nlisten-socket-mode: 0o660\nendpoints: 127.0.0.1:${(await echo()).port}\nhealth-check: none\n`);
    await startGatewayProcess([`--config=${cfg}`], { listen: false });
    expect((statSync(sock).mode & 0o777).toString(8)).toBe("660");
  });
  test("0o777 is refused: a YAML number never gives others access; a quoted string must ask for it", async () => {
    const sock = join(dir, "mode777.sock");
    const cfg = file("mode777.yaml", `listen-addr: unix://${sock}\nlisten-socket-mode: 0o777\n`);
    const r = await start([`--config=${cfg}`]);
    expect(r.stderr.trim()).toBe(`etcd-gateway: --listen-socket-mode (from config file ${cfg}, key "listen-socket-mode"): the YAML number 0o777 is mode 0777, which gives others access; write the mode as a quoted octal string, like "0666", to mean it`);
    expect(r.code).toBe(1);
  }, 10_000);
});

describe("values named as written", () => {
  const cases: [string, string, string][] = [
    // Found: "expected a string, got null" for both.
    ["fall.yaml", "health-fall: 1e400\n", '--health-fall (from config file FILE, key "health-fall"): expected a whole number, got 1e400 (out of range)'],
    ["inf.yaml", "connect-timeout: .inf\n", '--connect-timeout (from config file FILE, key "connect-timeout"): expected a duration, got .inf'],
  ];
  for (const [name, text, message] of cases) {
    test(`${text.trim()}: one line saying what was written`, async () => {
      const cfg = file(name, text);
      const r = await start([`--config=${cfg}`]);
      expect(r.stderr.trim()).toBe(`etcd-gateway: ${message.replace("FILE", cfg)}`);
      expect(r.code).toBe(1);
    }, 10_000);
  }
  test("a line break in ETCD_GATEWAY_ENDPOINTS is named, with what to write instead", async () => {
    // Found: "IPv6 address must be in brackets, as in "[::1]:2379"".
    const r = await start([`--listen-addr=127.0.0.1:${freePort()}`], { ETCD_GATEWAY_ENDPOINTS: "127.0.0.1:2379\n127.0.0.1:2380" });
    expect(r.stderr.trim()).toBe('etcd-gateway: --endpoints (from environment ETCD_GATEWAY_ENDPOINTS): control character U+000A (line feed) in endpoint "127.0.0.1:2379\\n127.0.0.1:2380"; separate endpoints with commas');
    expect(r.code).toBe(1);
  }, 10_000);
});

describe("an empty --config file", () => {
  test("at startup: exit 1, as HAProxy and nginx refuse an empty configuration", async () => {
    const cfg = file("empty-start.yaml", "# nothing yet\n");
    const r = await start([`--config=${cfg}`, `--listen-addr=127.0.0.1:${freePort()}`]);
    expect(r.stderr.trim()).toBe(`etcd-gateway: --config: ${JSON.stringify(cfg)}: empty (no keys); leave out --config to run on the defaults`);
    expect(r.code).toBe(1);
  }, 10_000);

  test("on SIGHUP: an empty document, or endpoints that would fall back to the default, is rejected at warn level and the running endpoints are kept", async () => {
    // Found: each was applied as "no keys": endpoints became 127.0.0.1:2379 and clients were reset.
    const member = await echo();
    const good = `endpoints: 127.0.0.1:${member.port}\nhealth-check: none\n`;
    const cfg = file("empty-reload.yaml", good);
    const gw = await startGatewayProcess([`--config=${cfg}`]);
    const steps: [string, string][] = [
      ["", `--config: ${JSON.stringify(cfg)}: empty (no keys), as a file being rewritten reads; not applied`],
      ["# being rewritten\n", `--config: ${JSON.stringify(cfg)}: empty (no keys), as a file being rewritten reads; not applied`],
      ["~\n", `--config: ${JSON.stringify(cfg)}: empty (no keys), as a file being rewritten reads; not applied`],
      ["endpoints: ~\nhealth-check: none\n", `--endpoints (from config file ${cfg}): no endpoints given any more (the file's endpoints are null or gone): the default 127.0.0.1:2379 would replace every endpoint in use; write "endpoints: 127.0.0.1:2379" to mean it`],
      ["health-check: none\n", "no endpoints given any more"],
    ];
    for (const [i, [text, why]] of steps.entries()) {
      writeFileSync(cfg, text);
      gw.proc.kill("SIGHUP");
      const r = await outcome(gw, i);
      expect(r.msg).toBe("config reload rejected; keeping the running configuration");
      expect(r.level).toBe("warn");
      expect(String(r.error)).toContain(why);
      expect(await roundTrip(gw.port, `still ${i}`)).toBe(`still ${i}`);
    }
    expect(gw.records().filter((r) => r.msg === "endpoints changed")).toEqual([]);
    // A real change still applies.
    writeFileSync(cfg, `${good}policy: ordered\n`);
    gw.proc.kill("SIGHUP");
    expect(await outcome(gw, steps.length)).toMatchObject({ msg: "config reloaded", applied: ["policy"] });
    expect(gw.running()).toBe(true);
  }, 20_000);
});

describe("a FIFO where a regular file is meant", () => {
  const message = (flag: string, path: string) => `etcd-gateway: --${flag}: ${JSON.stringify(path)} is a pipe (FIFO), not a regular file (process substitution <(...) and a piped /dev/stdin are pipes too); give a regular file`;
  for (const flag of ["config", "endpoints-file", "health-cacert"]) {
    test(`--${flag} naming a FIFO at startup: exit 1 at once, naming the flag and the path`, async () => {
      // Found: open(2) waited for a writer; the process hung before listening.
      const path = fifoAt(join(dir, `${flag}.fifo`));
      const t0 = performance.now();
      const r = await start([`--${flag}=${path}`, `--listen-addr=127.0.0.1:${freePort()}`]);
      expect(r.stderr.trim()).toBe(message(flag, path));
      expect(r.code).toBe(1);
      expect(performance.now() - t0).toBeLessThan(3000);
    }, 10_000);
  }
  test("--config=<(...) (process substitution) is refused the same way", async () => {
    const r = await runToEnd(["bash", "-c", 'exec "$0" start --config=<(printf "policy: sticky\\n") --listen-addr=127.0.0.1:"$1"', BINARY, String(freePort())], { timeoutMs: 5000 });
    expect(r.stderr.trim()).toMatch(/^etcd-gateway: --config: "\/dev\/fd\/\d+" is a pipe \(FIFO\), not a regular file/);
    expect(r.code).toBe(1);
  }, 10_000);

  test("on SIGHUP, a FIFO as --config, --endpoints-file or a certificate is rejected while the gateway keeps serving, and SIGTERM still drains at once", async () => {
    // Found: SIGHUP blocked the whole process in open(2): no client, no /healthz, no SIGTERM.
    const member = await echo();
    const certs = await makeCerts(join(dir, "certs"));
    const ca = join(dir, "reload-ca.pem");
    writeFileSync(ca, await Bun.file(certs.ca).text());
    const cfg = file("fifo-reload.yaml", "health-check: none\n");
    const eps = file("fifo-endpoints.txt", `127.0.0.1:${member.port}\n`);
    const gw = await startGatewayProcess([`--config=${cfg}`, `--endpoints-file=${eps}`, `--health-cacert=${ca}`], { admin: true });
    const steps: [string, string][] = [
      [cfg, "config"],
      [eps, "endpoints-file"],
      [ca, "health-cacert"],
    ];
    for (const [i, [path, flag]] of steps.entries()) {
      const kept = await Bun.file(path).text();
      fifoAt(path);
      gw.proc.kill("SIGHUP");
      const r = await outcome(gw, i);
      expect(r.msg).toBe("config reload rejected; keeping the running configuration");
      expect(r.level).toBe("error");
      expect(String(r.error)).toBe(message(flag, path).replace("etcd-gateway: ", ""));
      await serving(gw, `after ${flag}`);
      unlinkSync(path);
      writeFileSync(path, kept);
    }
    const t0 = performance.now();
    expect(await gw.stop("SIGTERM", 5000)).toBe(0);
    expect(performance.now() - t0).toBeLessThan(2000);
  }, 20_000);
});

/** What the `i`-th (0-based) SIGHUP came to: its `config reloaded` or `config reload rejected` line, waited for (5 s). */
function outcome(gw: GatewayProcess, i: number) {
  return waitFor(`the outcome of SIGHUP ${i + 1}`, () => gw.records().filter((r) => r.msg === "config reloaded" || r.msg === "config reload rejected; keeping the running configuration")[i], 5000);
}

/** The gateway answers: /healthz on its admin endpoint, and a round trip through it to the member. */
async function serving(gw: GatewayProcess, what: string): Promise<void> {
  const res = await fetch(`${gw.adminURL}/healthz`, { signal: AbortSignal.timeout(2000) });
  expect(res.status).toBe(200);
  expect(await roundTrip(gw.port, what)).toBe(what);
}
