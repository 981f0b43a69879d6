import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { main } from "../../src/cli.ts";
import { BINARY, runBinary, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePort } from "../support/net.ts";
import { echoServer, roundTrip } from "../support/peers.ts";

const port = freePort();

describe("startup errors: one line on stderr naming the flag and value, exit 1", () => {
  const cases: [string[], RegExp][] = [
    [["start", "--bogus"], /^etcd-gateway: unknown flag: --bogus$/],
    [["start", "stray"], /^etcd-gateway: unexpected argument "stray"$/],
    [["start", "--retry-delay=123"], /^etcd-gateway: --retry-delay: missing unit in duration "123"$/],
    [["start", "--endpoints=127.0.0.1:70000"], /^etcd-gateway: --endpoints: port 70000 out of range 1\.\.65535/],
    [["start", "--endpoints=127.0.0.1:"], /^etcd-gateway: --endpoints: missing port in address "127\.0\.0\.1:"$/],
    [["start", "--endpoints="], /^etcd-gateway: --endpoints: no endpoints given$/],
    // A DNS server that is not there: both SRV lookups fail, in etcd's words.
    [["start", "--discovery-srv=example.invalid", `--dns-server=127.0.0.1:${freePort()}`, `--listen-addr=127.0.0.1:${port}`], /^etcd-gateway: --discovery-srv: dns lookup errors: lookup _etcd-client-ssl\._tcp\.example\.invalid on 127\.0\.0\.1:\d+: connection refused and lookup _etcd-client\._tcp\.example\.invalid on 127\.0\.0\.1:\d+: connection refused$/],
    [["start", "--endpoints=nonexistent.invalid:2379", `--listen-addr=127.0.0.1:${port}`], /^etcd-gateway: --endpoints: failed to resolve endpoint host "nonexistent\.invalid": lookup nonexistent\.invalid: no such host$/],
    [["start", `--listen-addr=nonexistent.invalid:${port}`], /^etcd-gateway: --listen-addr: failed to resolve listen host "nonexistent\.invalid"/],
    // Self-loop guard, including the wildcard listen that etcd's gateway misses.
    [["start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=127.0.0.1:${port}`], /^etcd-gateway: --endpoints: endpoint \(127\.0\.0\.1:\d+->127\.0\.0\.1:\d+\) should not resolve to the gateway listen addr/],
    [["start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=http://localhost:${port}`], /should not resolve to the gateway listen addr/],
    // An endpoint without a port is on 2379, and the guard sees it there.
    [["start", "--listen-addr=127.0.0.1:2379", "--endpoints=localhost"], /^etcd-gateway: --endpoints: endpoint \(localhost:2379->127\.0\.0\.1:2379\) should not resolve to the gateway listen addr/],
    [["start", `--listen-addr=0.0.0.0:${port}`, `--endpoints=127.0.0.1:${port}`], /should not resolve to the gateway listen addr \(0\.0\.0\.0:\d+\)/],
    [["start", `--listen-addr=0.0.0.0:${port}`, `--endpoints=127.0.0.2:${port}`], /should not resolve to the gateway listen addr/],
    [["start", `--listen-addr=[::]:${port}`, `--endpoints=[::1]:${port}`], /should not resolve to the gateway listen addr/],
    [["start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=0.0.0.0:${port}`], /should not resolve to the gateway listen addr/],
    // IPv4-mapped IPv6 in any spelling is the IPv4 address (found: 514d668 started, then dialled itself).
    [["start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=[::ffff:7f00:1]:${port}`], /should not resolve to the gateway listen addr \(127\.0\.0\.1:\d+\)/],
    [["start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=[0:0:0:0:0:ffff:127.0.0.1]:${port}`], /should not resolve to the gateway listen addr/],
    [["start", `--listen-addr=[::1]:${port}`, `--endpoints=[0:0:0:0:0:0:0:1]:${port}`], /should not resolve to the gateway listen addr/],
  ];
  for (const [args, pattern] of cases) {
    test(args.slice(1).join(" "), () => {
      const r = runBinary(args);
      expect(r.code).toBe(1);
      expect(r.stderr.trimEnd()).toMatch(pattern);
      expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
    });
  }
});

describe("the founding document's commands work as written", () => {
  afterEach(stopAllGateways);
  // Found: `--endpoints=infra0.example.com,...` was "missing port in address", and flags without a
  // command printed the help and "No command specified.", exit 1.
  test("endpoints without a port are on etcd's client port 2379, and the startup log says which", async () => {
    const gw = await startGatewayProcess(["--endpoints=localhost,https://127.0.0.2,127.0.0.3:12379", "--health-check=none"]);
    const said = await gw.waitForLog("no port given; using etcd's client port 2379");
    expect(said.endpoints).toEqual(["localhost:2379", "127.0.0.2:2379"]);
    expect((await gw.waitForLog("ready to proxy client requests")).endpoints).toEqual(["localhost:2379", "127.0.0.2:2379", "127.0.0.3:12379"]);
  });
  test("flags without a command mean start", async () => {
    const echo = await echoServer();
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=none"], { wrap: (cmd) => cmd.filter((a) => a !== "start") });
      expect(await roundTrip(gw.port, "no command")).toBe("no command");
    } finally {
      await echo.close();
    }
  });
  test("etcd-gateway --discovery-srv=<domain> is start's discovery", () => {
    const r = runBinary(["--discovery-srv=example.invalid", `--dns-server=127.0.0.1:${freePort()}`, `--listen-addr=127.0.0.1:${port}`]);
    expect(r.stderr.trimEnd()).toMatch(/^etcd-gateway: --discovery-srv: dns lookup errors: lookup _etcd-client-ssl\._tcp\.example\.invalid on 127\.0\.0\.1:\d+: /);
    expect(r.code).toBe(1);
  });
  test("an unknown flag without a command is start's error", () => {
    const r = runBinary(["--bogus"]);
    expect([r.code, r.stderr.trimEnd()]).toEqual([1, "etcd-gateway: unknown flag: --bogus"]);
  });
  test("no arguments at all still print the help, exit 1, and say why in one line", () => {
    const r = runBinary([]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("start");
    expect(r.stderr).toMatch(/^etcd-gateway: no command given; commands: start, status, member, [^\n]*\n$/);
  });
});

describe("startup errors at listen time", () => {
  const held = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  afterAll(() => held.stop(true));
  test("an address in use is a one-line error naming --listen-addr, exit 1", () => {
    const r = runBinary(["start", `--listen-addr=127.0.0.1:${held.port}`, "--endpoints=127.0.0.1:1"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`etcd-gateway: --listen-addr: listen tcp 127.0.0.1:${held.port}: bind: address already in use`);
  });
  test("an --admin-addr in use is the same error in Go's words, naming --admin-addr (issue 24, item 6)", () => {
    // Found: `--admin-addr: cannot listen on 127.0.0.1:21191: EADDRINUSE: Failed to listen at 127.0.0.1`, Bun's words.
    const r = runBinary(["start", `--listen-addr=127.0.0.1:${freePort()}`, "--endpoints=127.0.0.1:1", "--health-check=none", `--admin-addr=127.0.0.1:${held.port}`]);
    expect([r.code, r.stderr]).toEqual([1, `etcd-gateway: --admin-addr: listen tcp 127.0.0.1:${held.port}: bind: address already in use\n`]);
  });
});

describe("version and help", () => {
  const pkg = require("../../package.json") as { version: string };
  test("--version prints the version, exit 0", () => {
    const r = runBinary(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });
  test("version prints the version with Bun's, exit 0", () => {
    const r = runBinary(["version"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`etcd-gateway ${pkg.version}`);
    expect(r.stdout).toContain(`Bun ${Bun.version}`);
  });
  test("start --help lists every flag of etcd gateway start with its default", () => {
    const r = runBinary(["start", "--help"]);
    expect(r.code).toBe(0);
    for (const [flag, def] of <[string, string][]>[
      ["--listen-addr", "127.0.0.1:23790"],
      ["--endpoints", "127.0.0.1:2379"],
      ["--retry-delay", "1m0s"],
      ["--connect-timeout", "1s"],
      ["--drain-timeout", "10s"],
    ]) {
      expect(r.stdout).toMatch(new RegExp(`${flag}=<[^>]+>\\s+.*\\(Default: ${def.replaceAll(".", "\\.")}\\)`));
    }
    for (const flag of ["--discovery-srv", "--discovery-srv-name", "--insecure-discovery", "--trusted-ca-file", "--policy", "--log-format", "--log-level"]) {
      expect(r.stdout).toContain(flag);
    }
  });
  test("--help works on the root and on version", () => {
    expect(runBinary(["--help"]).stdout).toContain("start");
    expect(runBinary(["version", "--help"]).code).toBe(0);
  });
  test("an unknown command is a one-line error naming it, exit 1", () => {
    const r = runBinary(["bogus"]);
    const commands = Object.keys(main.subCommands as object);
    expect(commands.slice(0, 4)).toEqual(["start", "status", "member", "version"]);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, "", `etcd-gateway: unknown command "bogus"; commands: ${commands.join(", ")}\n`]);
  });
});

describe("help fits the terminal and is coloured only on one", () => {
  // Found: `start --help` was 211 columns wide (one line per flag) and coloured when piped.
  const { NO_COLOR: _, ...inherited } = process.env;
  const env = { ...inherited, TERM: "xterm-256color" };
  const ESC = "\x1b";
  const widest = (text: string) => Math.max(...text.split("\n").map((l) => l.length));
  const piped = (args: string[], extra: Record<string, string> = {}) => {
    const p = Bun.spawnSync([BINARY, ...args], { env: { ...env, ...extra }, stdout: "pipe", stderr: "pipe" });
    return p.stdout.toString();
  };
  /** Runs the binary on a pseudo-terminal of `cols` columns (util-linux `script`); its output with CRs removed. */
  const onTerminal = (args: string[], cols: number, extra: Record<string, string> = {}) => {
    const cmd = `stty cols ${cols} rows 50; exec ${[BINARY, ...args].map((a) => `'${a}'`).join(" ")}`;
    const p = Bun.spawnSync(["script", "-qec", cmd, "/dev/null"], { env: { ...env, ...extra }, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    return p.stdout.toString().replaceAll("\r", "");
  };
  for (const args of [["start", "--help"], ["--help"], ["status", "--help"], []]) {
    for (const extra of [{}, { NO_COLOR: "1" }] as Record<string, string>[]) {
      test(`${["etcd-gateway", ...args].join(" ")} piped${"NO_COLOR" in extra ? " with NO_COLOR" : ""}: 80 columns, no colour`, () => {
        const out = piped(args, extra);
        expect(out).toContain("USAGE");
        expect(widest(out)).toBeLessThanOrEqual(80);
        expect(out).not.toContain(ESC);
      });
    }
  }
  test("on a terminal: as wide as the terminal, coloured", () => {
    const out = onTerminal(["start", "--help"], 100);
    expect(out).toContain(ESC);
    const plain = out.replace(/\x1b\[\d+m/g, "");
    expect(widest(plain)).toBeLessThanOrEqual(100);
    expect(widest(plain)).toBeGreaterThan(80);
    expect(plain).toContain("--listen-addr=<host:port> (Default: 127.0.0.1:23790)");
  });
  test("on a terminal with NO_COLOR (any value): no colour", () => {
    const out = onTerminal(["start", "--help"], 100, { NO_COLOR: "true" });
    expect(out).toContain("USAGE");
    expect(out).not.toContain(ESC);
  });
});

describe("the README says what the binary does (issue 14, item 5)", () => {
  const readme = readFileSync(join(import.meta.dir, "../../README.md"), "utf8");
  const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, "");

  test("the Commands line names every command of `etcd-gateway --help`", () => {
    const usage = /USAGE\s+etcd-gateway (\S+)/.exec(plain(runBinary(["--help"]).stdout))?.[1];
    expect(usage).toBeDefined();
    const line = /^Commands: .*?(?=\n\n)/ms.exec(readme)?.[0] ?? "";
    for (const command of usage!.split("|")) expect(line).toContain(`\`etcd-gateway ${command}`);
  });

  test("the --keepalive-time default in the flag table (docs/flags.md) and the data path (docs/data-path.md) is the binary's", () => {
    const dflt = /--keepalive-time=<duration>.*\(Default: (\S+)\)/.exec(plain(runBinary(["start", "--help"]).stdout))?.[1];
    expect(dflt).toBe("5s");
    const doc = (name: string) => readFileSync(join(import.meta.dir, "../../docs", name), "utf8");
    expect(doc("flags.md")).toContain(`| \`--keepalive-time\` | \`${dflt}\` |`);
    expect(doc("data-path.md")).toContain(`TCP keepalive (\`--keepalive-time\`, ${dflt!.replace(/s$/, " s")})`);
  });
});
