/** --config (YAML) and ETCD_GATEWAY_* environment: precedence, errors naming key and file, SIGHUP reload without losing a byte. */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCerts } from "../support/certs.ts";
import { startDnsmasq } from "../support/dns.ts";
import { runBinary, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { dial, echoOnPort, echoServer, readAll, roundTrip, writeRandom, type Listening } from "../support/peers.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-config-"));
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
const statusOf = async (admin: number) => (await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { policy: string; config: Record<string, string>; members: { endpoint: string }[] };

describe("configuration sources", () => {
  test("precedence is flags > environment > file > defaults", async () => {
    const admin = freePort();
    const cfg = file("precedence.yaml", `policy: round-robin\nretry-delay: 7s\nconnect-timeout: 3s\nhealth-check: none\nendpoints:\n  - 127.0.0.1:2379\n  - 127.0.0.2:2379\n`);
    const env = ["env", `ETCD_GATEWAY_POLICY=least-connections`, `ETCD_GATEWAY_RETRY_DELAY=9s`];
    const gw = await startGatewayProcess([`--config=${cfg}`, "--policy=ordered", `--admin-addr=127.0.0.1:${admin}`], { wrap: (cmd) => [...env, ...cmd] });
    const s = await statusOf(admin);
    expect(s.policy).toBe("ordered"); // flag beats env and file
    expect(s.config["retry-delay"]).toBe("9s"); // env beats file
    expect(s.config["connect-timeout"]).toBe("3s"); // file beats default
    expect(s.members.map((m) => m.endpoint)).toEqual(["127.0.0.1:2379", "127.0.0.2:2379"]); // a YAML list
    expect(gw.proc.exitCode).toBeNull();
  });

  const bad: [string, string, RegExp][] = [
    ["unknown.yaml", "retry-dealy: 5s\n", /^etcd-gateway: --config: ".*unknown\.yaml": unknown key "retry-dealy"$/],
    ["badvalue.yaml", "retry-delay: 123\n", /^etcd-gateway: --retry-delay \(from config file .*badvalue\.yaml, key "retry-delay"\): missing unit in duration "123"$/],
    ["badshape.yaml", "insecure-discovery: maybe\n", /^etcd-gateway: --insecure-discovery \(from config file .*badshape\.yaml, key "insecure-discovery"\): expected true or false/],
    ["notyaml.yaml", "a: [1,\n", /^etcd-gateway: --config: ".*notyaml\.yaml": /],
  ];
  for (const [name, text, pattern] of bad) {
    test(`a bad file is a one-line error naming the key and the file: ${name}`, () => {
      const r = runBinary(["start", `--config=${file(name, text)}`]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toMatch(pattern);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    });
  }
  // Found: Bun.YAML let the last of a duplicated key win (the good member was silently dropped), and
  // said only "YAML Parse error: Unexpected token" for a missing "]". The `yaml` package does both.
  const positioned: [string, string, RegExp][] = [
    ["duplicate.yaml", "endpoints: 127.0.0.1:12379\nendpoints: 127.0.0.1:12399\n", /^etcd-gateway: --config: ".*duplicate\.yaml": line 2, column 1: duplicate key "endpoints" \(first on line 1\)$/],
    ["unclosed.yaml", "endpoints: [127.0.0.1:12379, 127.0.0.1:12399\nhealth-check: none\n", /^etcd-gateway: --config: ".*unclosed\.yaml": line 2, column 1: flow sequence in block collection must be sufficiently indented and end with a \]$/],
  ];
  for (const [name, text, pattern] of positioned) {
    test(`a duplicated key or a YAML syntax error is a one-line error naming file, line and column: ${name}`, () => {
      const r = runBinary(["start", `--config=${file(name, text)}`, `--listen-addr=127.0.0.1:${freePort()}`]);
      expect(r.stderr.trim()).toMatch(pattern);
      expect(r.code).toBe(1);
    });
  }
  test("a missing file names the file", () => {
    const r = runBinary(["start", `--config=${join(dir, "nope.yaml")}`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^etcd-gateway: --config: open .*nope\.yaml: no such file or directory$/);
  });
  test("an unknown ETCD_GATEWAY_* variable is a one-line error naming it (etcd: unrecognized environment variable)", () => {
    // Found: ETCD_GATEWAY_ENDPOINT (no S) was ignored, and the gateway started with the default endpoint.
    const r = runBinary(["start", `--listen-addr=127.0.0.1:${freePort()}`], { ETCD_GATEWAY_ENDPOINT: "127.0.0.1:12379" });
    expect(r.stderr.trim()).toBe("etcd-gateway: unrecognized environment variable ETCD_GATEWAY_ENDPOINT=127.0.0.1:12379 (did you mean ETCD_GATEWAY_ENDPOINTS?)");
    expect(r.code).toBe(1);
  });
  test("a bad environment value names the variable", () => {
    const r = runBinary(["start"], { ETCD_GATEWAY_CONNECT_TIMEOUT: "soon" });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^etcd-gateway: --connect-timeout \(from environment ETCD_GATEWAY_CONNECT_TIMEOUT\): /);
  });
});

describe("SIGHUP", () => {
  test("reloading new endpoints during traffic loses no byte of open connections, and new connections follow the new endpoints", async () => {
    const aPort = freePort();
    const bPort = freePort();
    const a = { n: 0 };
    const b = { n: 0 };
    const [sa, sb] = await Promise.all([echoOnPort(aPort, () => a.n++), echoOnPort(bPort, () => b.n++)]);
    try {
      const cfg = file("reload.yaml", `endpoints: 127.0.0.1:${aPort}\nhealth-check: none\n`);
      const gw = await startGatewayProcess([`--config=${cfg}`]);
      const s = await dial(gw.port);
      const received = readAll(s);
      const sending = writeRandom(s, 48 << 20);
      writeFileSync(cfg, `endpoints: 127.0.0.1:${bPort}\nhealth-check: none\nlog-level: debug\n`);
      gw.proc.kill("SIGHUP");
      const sent = await sending;
      s.end();
      const got = await received;
      expect(got.bytes).toBe(48 << 20);
      expect(got.hash).toBe(sent);
      await gw.waitForLog("config reloaded");
      const reloaded = gw.records().find((r) => r.msg === "config reloaded")!;
      expect(reloaded.applied).toEqual(expect.arrayContaining(["log-level", "endpoints"]));
      for (let i = 0; i < 5; i++) expect(await roundTrip(gw.port, `n${i}`)).toBe(`n${i}`);
      expect(a.n).toBe(1);
      expect(b.n).toBe(5);
      expect(gw.proc.exitCode).toBeNull();
    } finally {
      sa.close();
      sb.close();
    }
  });

  test("a reloaded --keepalive-time reaches the clients a listener other hosts can reach accepts afterwards", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const listen = freePort();
    const text = (keepalive: string) => `listen-addr: 0.0.0.0:${listen}\nendpoints: 127.0.0.1:${echo.port}\nhealth-check: none\nkeepalive-time: ${keepalive}\n`;
    const cfg = file("keepalive.yaml", text("7s"));
    const gw = await startGatewayProcess([`--config=${cfg}`], { listen: false });
    /** The keepalive timer (remaining idle seconds) of the gateway's side of the client connection from `port`. */
    const timer = (port: number) => {
      const out = Bun.spawnSync(["ss", "-tnoH", "state", "established", `( sport = :${listen} and dport = :${port} )`]).stdout.toString();
      return Number(/timer:\(keepalive,([\d.]+)/.exec(out)?.[1] ?? NaN);
    };
    const before = await dial(listen);
    writeFileSync(cfg, text("30s"));
    gw.proc.kill("SIGHUP");
    const reloaded = await gw.waitForLog("config reloaded");
    expect(reloaded.applied).toEqual(["keepalive-time"]);
    const after = await dial(listen);
    const [b, a] = await waitFor("both clients accepted", () => {
      const t = [timer(before.localPort!), timer(after.localPort!)];
      return t.every((x) => !Number.isNaN(x)) ? t : undefined;
    }, 3000, 50);
    before.destroy();
    after.destroy();
    expect(b).toBeLessThanOrEqual(7);
    expect(a).toBeGreaterThan(20);
  });

  test("a bad file on reload is rejected with a log line and the running configuration is kept", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const cfg = file("reject.yaml", `endpoints: 127.0.0.1:${echo.port}\nhealth-check: none\n`);
    const gw = await startGatewayProcess([`--config=${cfg}`]);
    writeFileSync(cfg, "retry-delay: forever\n");
    gw.proc.kill("SIGHUP");
    const r = await gw.waitForLog("config reload rejected; keeping the running configuration");
    expect(String(r.error)).toContain("retry-delay");
    expect(await roundTrip(gw.port, "still")).toBe("still");
  });

  test("a change that needs a restart (listen address) is reported, not half-applied", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const port = freePort();
    const cfg = file("restart.yaml", `listen-addr: 127.0.0.1:${port}\nendpoints: 127.0.0.1:${echo.port}\nhealth-check: none\n`);
    const gw = await startGatewayProcess([`--config=${cfg}`], { listen: false });
    writeFileSync(cfg, `listen-addr: 127.0.0.1:${freePort()}\nendpoints: 127.0.0.1:${echo.port}\nhealth-check: none\n`);
    gw.proc.kill("SIGHUP");
    const r = await gw.waitForLog("config changes need a restart to take effect");
    expect(r.keys).toEqual(["listen-addr"]);
    expect(await roundTrip(port, "same port")).toBe("same port");
  });

  test("with --discovery-srv, /status shows the reloaded policy, connect timeout and retry delay", async () => {
    // Found in 514d668: the admin endpoint held its own copy of the options, which SRV discovery
    // had replaced, so after SIGHUP /status still showed the old values while the data path used the new.
    const echo = await echoServer();
    servers.push(echo);
    const dns = await startDnsmasq({ domain: "reload.test", srv: [{ name: "_etcd-client._tcp.reload.test", target: "m0.reload.test", port: echo.port, priority: 0, weight: 1 }], hosts: [{ name: "m0.reload.test", ipv4: ["127.0.0.1"] }], ttl: 60 });
    try {
      const admin = freePort();
      const cfg = file("srv-reload.yaml", "policy: sticky\nconnect-timeout: 1s\nretry-delay: 1m\nhealth-check: none\n");
      const gw = await startGatewayProcess([`--config=${cfg}`, "--discovery-srv=reload.test", "--insecure-discovery", `--dns-server=${dns.server}`, `--admin-addr=127.0.0.1:${admin}`]);
      expect((await statusOf(admin)).policy).toBe("sticky");
      writeFileSync(cfg, "policy: round-robin\nconnect-timeout: 3s\nretry-delay: 7s\nhealth-check: none\n");
      gw.proc.kill("SIGHUP");
      await gw.waitForLog("config reloaded");
      const s = await statusOf(admin);
      expect([s.policy, s.config["connect-timeout"], s.config["retry-delay"]]).toEqual(["round-robin", "3s", "7s"]);
      expect(await roundTrip(gw.port, "after")).toBe("after");
    } finally {
      await dns.stop();
    }
  });

  test("SIGHUP says what it re-read: the config file and the endpoints file, and which flags changed", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const cfg = file("reread.yaml", "health-check: none\n");
    const eps = file("reread-endpoints.txt", `127.0.0.1:${echo.port}\n`);
    const gw = await startGatewayProcess([`--config=${cfg}`, `--endpoints-file=${eps}`]);
    writeFileSync(cfg, "health-check: none\npolicy: ordered\n");
    gw.proc.kill("SIGHUP");
    const r = await gw.waitForLog("config reloaded");
    expect(r.reread).toEqual([`config ${cfg}`, `endpoints-file ${eps}`]);
    expect(r.applied).toEqual(["policy"]);
    expect(r).not.toHaveProperty("file");
  });

  test("SIGHUP with no file to read and no discovery says there is nothing to reload", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=none"]);
    gw.proc.kill("SIGHUP");
    const r = await gw.waitForLog("nothing to reload");
    expect(r).toMatchObject({ level: "info", reason: "no --config, --endpoints-file or certificate file to read again; flags and environment are read only at start" });
    await Bun.sleep(200);
    expect(gw.lines.filter((l) => /config reloaded|reloading endpoints/.test(l))).toEqual([]);
    expect(await roundTrip(gw.port, "still")).toBe("still");
  });

  test("SIGHUP with only certificate files names them", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const { ca } = await makeCerts(join(dir, "certs"));
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=none", `--health-cacert=${ca}`]);
    gw.proc.kill("SIGHUP");
    const r = await gw.waitForLog("config reloaded");
    expect(r.reread).toEqual([`health-cacert ${ca}`]);
    expect(r.applied).toEqual([]);
  });

  test("--endpoints-file is re-read on SIGHUP", async () => {
    const aPort = freePort();
    const bPort = freePort();
    const a = { n: 0 };
    const b = { n: 0 };
    const [sa, sb] = await Promise.all([echoOnPort(aPort, () => a.n++), echoOnPort(bPort, () => b.n++)]);
    try {
      const eps = file("endpoints.txt", `127.0.0.1:${aPort}\n`);
      const gw = await startGatewayProcess([`--endpoints-file=${eps}`, "--health-check=none"]);
      expect(await roundTrip(gw.port, "a")).toBe("a");
      writeFileSync(eps, `# moved\n127.0.0.1:${bPort}\n`);
      gw.proc.kill("SIGHUP");
      await gw.waitForLog("endpoints changed");
      expect(await roundTrip(gw.port, "b")).toBe("b");
      expect([a.n, b.n]).toEqual([1, 1]);
    } finally {
      sa.close();
      sb.close();
    }
  });
});
