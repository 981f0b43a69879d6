/**
 * The command line's last rough edges, found as a new operator (issue 24, item 6), against the
 * binary: `member drain|ready --help` lists `<endpoint>` as an argument; a command line that names
 * no command, an unknown one or no endpoint is one uncoloured line `etcd-gateway: ...`, exit 1,
 * never citty's own message; `status` and `member` find the gateway's admin endpoint as `start` was
 * told (flag > ETCD_GATEWAY_ADMIN_ADDR > the --config file's admin-addr > default); and the demo
 * (scripts/demo.ts) starts the admin endpoint that `etcd-gateway status` asks.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { BINARY, runBinary, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePorts } from "../support/net.ts";
import { echoServer } from "../support/peers.ts";
import { runToEnd, track } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
/** Help text with its wrapping undone. */
const flat = (text: string) => text.replace(/\s+/g, " ");

describe("member drain|ready --help: the endpoint is an argument, not a flag", () => {
  for (const action of ["drain", "ready"]) {
    test(`member ${action} --help`, () => {
      const r = runBinary(["member", action, "--help"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`USAGE etcd-gateway member ${action} [OPTIONS] <endpoint>\n`);
      expect(r.stdout).toMatch(/\nARGUMENTS\n\n {2}<endpoint>\n {6}the member, as `etcd-gateway status` lists it/);
      expect(r.stdout).not.toContain("--endpoint");
      expect(r.stdout).toContain("--config=<path>");
    });
  }
  test("only the root's help says that flags without a command are start's", () => {
    expect(flat(runBinary(["--help"]).stdout)).toContain("flags without a command are start's.");
    const member = flat(runBinary(["member", "--help"]).stdout);
    expect(member).toContain("Use etcd-gateway member <command> --help for more about a command.");
    expect(member).not.toContain("start's");
  });
});

describe("a command line that leads to no command: one uncoloured line, exit 1", () => {
  // As an operator's shell has it: a colour terminal type, no NO_COLOR, CI or TEST (citty paints unless one of those says not to).
  const { NO_COLOR: _n, CI: _c, TEST: _t, ...inherited } = process.env;
  const env = { ...inherited, TERM: "xterm-256color" };
  const run = (args: string[]) => {
    const p = Bun.spawnSync([BINARY, ...args], { env, stdout: "pipe", stderr: "pipe", timeout: 10_000 });
    return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
  };
  const cases: [string[], RegExp, "help" | "nothing"][] = [
    [["member", "bogus"], /^etcd-gateway: member: unknown command "bogus"; commands: drain, ready$/, "nothing"],
    [["member", "--close-idle", "drain", "10.0.1.10:2379"], /^etcd-gateway: member: a command goes before "--close-idle"; commands: drain, ready$/, "nothing"],
    [["member", "drain"], /^etcd-gateway: give the member's endpoint, as `etcd-gateway status` lists it \(e\.g\. 10\.0\.1\.10:2379\)$/, "nothing"],
    [["member", "ready", "--admin-addr=unix:///nonexistent.sock"], /^etcd-gateway: give the member's endpoint/, "nothing"],
    // Alone, a command that wants a subcommand shows its help on stdout too, as the root does.
    [["member"], /^etcd-gateway: member: no command given; commands: drain, ready$/, "help"],
    [[], /^etcd-gateway: no command given; commands: start, status, member, /, "help"],
  ];
  for (const [args, want, stdout] of cases) {
    test(["etcd-gateway", ...args].join(" "), () => {
      const r = run(args);
      expect([r.code, r.stderr.split("\n").length, r.stderr.includes("\x1b")]).toEqual([1, 2, false]);
      expect(r.stderr.trimEnd()).toMatch(want);
      if (stdout === "nothing") expect(r.stdout).toBe("");
      else expect(r.stdout).toContain(`USAGE etcd-gateway${args.map((a) => ` ${a}`).join("")} `);
    });
  }
});

describe("status and member ask where start was told: flag > ETCD_GATEWAY_ADMIN_ADDR > --config file > default", () => {
  // Nothing listens on these: each command names the address it tried.
  const [flag, envPort, filePort] = freePorts(3) as [number, number, number];
  const config = (name: string, adminAddr: string) => {
    const f = join(dir, name);
    writeFileSync(f, `admin-addr: ${adminAddr}\n`);
    return f;
  };
  const tcpOnly = config("tcp.yaml", `127.0.0.1:${filePort}`);
  const both = config("both.yaml", `[unix://${dir}/none.sock, 127.0.0.1:${filePort}]`);
  /** The admin address `args` asked, from its one-line error. */
  const asked = (args: string[], env: Record<string, string> = {}) => {
    const r = runBinary(args, env);
    expect(r.code).toBe(1);
    return /^etcd-gateway: cannot reach the admin endpoint at (\S+): /.exec(r.stderr)?.[1] ?? r.stderr;
  };
  const envAddr = { ETCD_GATEWAY_ADMIN_ADDR: `127.0.0.1:${envPort}` };
  test("status: the flag first", () => expect(asked(["status", `--admin-addr=127.0.0.1:${flag}`, `--config=${tcpOnly}`], envAddr)).toBe(`127.0.0.1:${flag}`));
  test("status: then ETCD_GATEWAY_ADMIN_ADDR", () => expect(asked(["status", `--config=${tcpOnly}`], envAddr)).toBe(`127.0.0.1:${envPort}`));
  test("status: then the --config file's admin-addr (the flag's or ETCD_GATEWAY_CONFIG's)", () => {
    expect(asked(["status", `--config=${tcpOnly}`])).toBe(`127.0.0.1:${filePort}`);
    expect(asked(["status"], { ETCD_GATEWAY_CONFIG: tcpOnly })).toBe(`127.0.0.1:${filePort}`);
  });
  test("status takes the TCP address of several; member drain|ready the unix socket", () => {
    expect(asked(["status", `--config=${both}`])).toBe(`127.0.0.1:${filePort}`);
    expect(asked(["member", "drain", `--config=${both}`, "10.0.1.10:2379"])).toBe(`unix://${dir}/none.sock`);
    expect(asked(["member", "ready", "10.0.1.10:2379"], { ETCD_GATEWAY_CONFIG: both })).toBe(`unix://${dir}/none.sock`);
    expect(asked(["member", "drain", "10.0.1.10:2379", `--config=${both}`], { ETCD_GATEWAY_ADMIN_ADDR: `unix://${dir}/env.sock` })).toBe(`unix://${dir}/env.sock`);
  });
  test("member drain with only TCP admin addresses configured: one line saying so", () => {
    const r = runBinary(["member", "drain", `--config=${tcpOnly}`, "10.0.1.10:2379"]);
    expect([r.code, r.stderr]).toEqual([1, `etcd-gateway: --admin-addr (from config file ${tcpOnly}, key "admin-addr"): 127.0.0.1:${filePort} has no unix:///path address, the only one that takes a drain; give --admin-addr=unix:///path\n`]);
  });
  test("a bad address in ETCD_GATEWAY_ADMIN_ADDR names the variable", () => {
    const r = runBinary(["status"], { ETCD_GATEWAY_ADMIN_ADDR: "127.0.0.1:99999" });
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith("etcd-gateway: --admin-addr (from environment ETCD_GATEWAY_ADMIN_ADDR): ");
  });

  describe("against a gateway started with the same --config", () => {
    afterEach(stopAllGateways);
    test("status, member drain and member ready given only --config", async () => {
      const echo = await echoServer();
      try {
        const [adminPort] = freePorts(1) as [number];
        const file = join(dir, "gateway.yaml");
        writeFileSync(file, `endpoints: 127.0.0.1:${echo.port}\nhealth-check: none\nadmin-addr: [127.0.0.1:${adminPort}, unix://${dir}/admin.sock]\n`);
        await startGatewayProcess([`--config=${file}`]);
        const member = `127.0.0.1:${echo.port}`;
        const status = runBinary(["status", `--config=${file}`, "--json"]);
        expect([status.code, status.stderr]).toEqual([0, ""]);
        expect((JSON.parse(status.stdout) as { members: { endpoint: string }[] }).members.map((m) => m.endpoint)).toEqual([member]);
        expect(runBinary(["member", "drain", `--config=${file}`, member]).stdout).toStartWith(`${member} drained: no new connections`);
        expect(runBinary(["member", "ready", member], { ETCD_GATEWAY_CONFIG: file }).stdout).toStartWith(`${member} is back in rotation`);
      } finally {
        await echo.close();
      }
    });
  });
});

describe("the demo (bun run demo) starts the admin endpoint and says what a killed member shows", () => {
  test("the status command it prints answers, listing the cluster's three members", async () => {
    const [listen, admin] = freePorts(2) as [number, number];
    // ETCD_GATEWAY_BINARY: the binary under test, not a build into dist/.
    const demo = track(Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/demo.ts"), "--", `--listen-addr=127.0.0.1:${listen}`, `--admin-addr=127.0.0.1:${admin}`], { env: { ...process.env, ETCD_GATEWAY_BINARY: BINARY }, stdin: "ignore", stdout: "pipe", stderr: "ignore" }));
    try {
      let out = "";
      // Read to the end, so the demo's last lines never meet a closed pipe.
      const reading = (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of demo.stdout) out += decoder.decode(chunk, { stream: true });
      })();
      while (!out.includes("Ctrl-C") && !out.includes("demo failed") && demo.exitCode === null) await Bun.sleep(50);
      void reading;
      const command = /^ {2}(\S+ status --admin-addr=\S+)/m.exec(out)?.[1];
      const [program, ...args] = command!.split(" ");
      // The demo names the binary relative to the repository, where it is run from.
      expect(resolve(ROOT, program!)).toBe(resolve(BINARY));
      expect(args).toEqual(["status", `--admin-addr=127.0.0.1:${admin}`]);
      const r = await runToEnd([resolve(ROOT, program!), ...args, "--json"], { timeoutMs: 10_000 });
      expect([r.code, (JSON.parse(r.stdout) as { members: unknown[] }).members.length]).toEqual([0, 3]);
      expect(flat(out)).toContain('The gateway\'s log then shows a warn line "deactivated endpoint"');
      expect(flat(out)).toContain("within about 4 to 6 s");
    } finally {
      // The demo stops its gateway and cluster on SIGTERM, and removes the cluster's files.
      demo.kill("SIGTERM");
      await demo.exited;
    }
  }, 60_000);
});
