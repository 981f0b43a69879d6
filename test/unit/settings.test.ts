import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, parseFlags, START_FLAGS } from "../../src/flags.ts";
import { connectionCap } from "../../src/limits.ts";
import { buildSettings, gatherFlags, OTHER_ENV, reloadSettings, serialize } from "../../src/settings.ts";
import { WORKER_ENV } from "../../src/workers.ts";

const parse = (argv: string[]) => buildSettings(gatherFlags(parseFlags(argv, START_FLAGS), {}));

/** The message of the ConfigError that `f` throws, checked to be one line. */
function configError(f: () => unknown): string {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ConfigError);
  const text = (err as Error).message;
  expect(text).not.toContain("\n");
  return text;
}

describe("defaults are etcd gateway start's", () => {
  const o = parse([]);
  test("listen-addr 127.0.0.1:23790", () => expect(o.listenAddrs.map((a) => a.address)).toEqual(["127.0.0.1:23790"]));
  test("endpoints 127.0.0.1:2379", () => expect(o.endpoints.map((e) => e.address)).toEqual(["127.0.0.1:2379"]));
  test("retry-delay 1m0s", () => expect(o.flags["retry-delay"]).toBe(60_000));
  test("connect-timeout 1s, drain-timeout 10s", () => expect([o.flags["connect-timeout"], o.flags["drain-timeout"]]).toEqual([1000, 10_000]));
  test("policy sticky, json logs at info, one process", () => expect([o.flags.policy, o.flags["log-format"], o.flags["log-level"], o.flags.workers]).toEqual(["sticky", "json", "info", 1]));
  test("no discovery", () => expect([o.flags["discovery-srv"], o.flags["discovery-srv-name"], o.flags["insecure-discovery"], o.flags["trusted-ca-file"]]).toEqual([null, null, false, null]));
});

describe("flag syntax follows pflag", () => {
  const cases: { argv: string[]; check: (o: ReturnType<typeof parse>) => unknown; want: unknown }[] = [
    { argv: ["--endpoints=a:1,b:2"], check: (o) => o.endpoints.map((e) => e.address), want: ["a:1", "b:2"] },
    { argv: ["--endpoints", "a:1", "--endpoints=b:2,c:3"], check: (o) => o.endpoints.map((e) => e.address), want: ["a:1", "b:2", "c:3"] },
    { argv: ["--endpoints=infra0.example.com,https://infra1.example.com,infra2.example.com:12379"], check: (o) => o.endpoints.map((e) => [e.address, e.defaultPort === true]), want: [["infra0.example.com:2379", true], ["infra1.example.com:2379", true], ["infra2.example.com:12379", false]] },
    { argv: ["--listen-addr", "[::1]:23790"], check: (o) => o.listenAddrs.map((a) => a.address), want: ["[::1]:23790"] },
    { argv: ["--listen-addr=127.0.0.1:1", "--listen-addr", "unix:///run/etcd.sock"], check: (o) => o.listenAddrs.map((a) => a.address), want: ["127.0.0.1:1", "unix:///run/etcd.sock"] },
    { argv: ["--listen-socket-mode=0600", "--max-connections=100", "--idle-timeout=1h"], check: (o) => [o.flags["listen-socket-mode"], o.flags["max-connections"], o.flags["idle-timeout"]], want: [0o600, 100, 3_600_000] },
    { argv: ["--retry-delay=500ms"], check: (o) => o.flags["retry-delay"], want: 500 },
    { argv: ["--retry-delay", "0"], check: (o) => o.flags["retry-delay"], want: 0 },
    { argv: ["--insecure-discovery"], check: (o) => o.flags["insecure-discovery"], want: true },
    { argv: ["--insecure-discovery=false"], check: (o) => o.flags["insecure-discovery"], want: false },
    { argv: ["--no-insecure-discovery"], check: (o) => o.flags["insecure-discovery"], want: false },
    { argv: ["--policy=round-robin"], check: (o) => o.flags.policy, want: "round-robin" },
    { argv: ["--retry-delay=1s", "--retry-delay=2s"], check: (o) => o.flags["retry-delay"], want: 2000 },
    { argv: ["--connect-timeout=250ms"], check: (o) => o.flags["connect-timeout"], want: 250 },
    { argv: ["--discovery-srv-name=foo"], check: (o) => o.flags["discovery-srv-name"], want: "foo" },
    { argv: ["--discovery-srv=example.com"], check: (o) => o.flags["discovery-srv"], want: "example.com" },
    { argv: ["--workers=2"], check: (o) => o.flags.workers, want: 2 },
    { argv: ["--dns-server=127.0.0.1:8600"], check: (o) => o.flags["dns-server"], want: "127.0.0.1:8600" },
    { argv: ["--dns-server=127.0.0.1"], check: (o) => o.flags["dns-server"], want: "127.0.0.1:53" },
    { argv: ["--dns-server=::1"], check: (o) => o.flags["dns-server"], want: "[::1]:53" },
    { argv: ["--endpoints-auto-sync-interval=30s"], check: (o) => o.flags["endpoints-auto-sync-interval"], want: 30_000 },
    { argv: ["--health-check=tcp", "--health-interval=5s", "--health-rise=4", "--health-fall=1"], check: (o) => [o.health.check, o.health.intervalMs, o.health.rise, o.health.fall], want: ["tcp", 5000, 4, 1] },
    { argv: ["--no-close-on-member-down"], check: (o) => o.flags["close-on-member-down"], want: false },
    { argv: ["--workers", "auto"], check: (o) => o.flags.workers >= 1, want: true },
    { argv: ["--log-format=text", "--log-level=debug"], check: (o) => [o.flags["log-format"], o.flags["log-level"]], want: ["text", "debug"] },
  ];
  for (const c of cases) test(c.argv.join(" "), () => expect(c.check(parse(c.argv))).toEqual(c.want));
});

describe("bad input is a one-line error naming the flag and the value", () => {
  const cases: [string[], string][] = [
    [["--bogus"], "unknown flag: --bogus"],
    [["--bogus-flag", "x"], "unknown flag: --bogus-flag"],
    [["-l", "x"], "unknown flag: -l"],
    [["--listenAddr=1.2.3.4:1"], "unknown flag: --listenAddr"],
    [["extra"], 'unexpected argument "extra"'],
    [["--", "extra"], 'unexpected argument "extra"'],
    [["--retry-delay=123"], '--retry-delay: missing unit in duration "123"'],
    [["--retry-delay=-1s"], '--retry-delay: negative duration "-1s"'],
    [["--connect-timeout=0"], '--connect-timeout: duration "0" must be greater than 0'],
    [["--drain-timeout=soon"], "--drain-timeout: "],
    [["--endpoints"], "--endpoints: flag needs an argument"],
    [["--endpoints="], "--endpoints: no endpoints given"],
    [["--endpoints=127.0.0.1:"], '--endpoints: missing port in address "127.0.0.1:"'],
    [["--endpoints=127.0.0.1:0"], "--endpoints: port 0 out of range 1..65535"],
    [["--endpoints=127.0.0.1:70000"], "--endpoints: port 70000 out of range 1..65535"],
    [["--endpoints=a:1,,b:2"], "--endpoints: empty item"],
    [["--listen-addr=127.0.0.1:99999"], "--listen-addr: port 99999 out of range"],
    [["--listen-addr=:23790"], '--listen-addr: missing host in address ":23790"'],
    [["--listen-addr=127.0.0.1:0"], '--listen-addr: port 0 out of range 1..65535'],
    [["--listen-addr=[::1]:0"], '--listen-addr: port 0 out of range 1..65535'],
    [["--listen-addr=unix:///tmp/a\u0000b.sock"], "--listen-addr: unix socket path holds a control character"],
    [["--config=/dev/zero"], '--config: "/dev/zero" is a character device, not a regular file'],
    [["--endpoints-file=/dev/zero"], '--endpoints-file: "/dev/zero" is a character device, not a regular file'],
    [["--health-cacert=/dev/zero"], '--health-cacert: "/dev/zero" is a character device, not a regular file'],
    [["--endpoints-file=/"], '--endpoints-file: read /: is a directory'],
    [["--policy=random"], '--policy: invalid value "random"; expected one of sticky, round-robin'],
    [["--log-level=loud"], '--log-level: invalid value "loud"'],
    [["--dns-server=not a server"], "--dns-server: "],
    [["--dns-server=dns.local:53"], '--dns-server: DNS server must be an IP address, got "dns.local:53"'],
    [["--discovery-refresh-min=10m"], "--discovery-refresh-min: must not exceed --discovery-refresh-max (5m)"],
    [["--endpoints-file=/nonexistent"], '--endpoints-file: open /nonexistent: no such file or directory'],
    [["--endpoints-auto-sync-interval=often"], "--endpoints-auto-sync-interval: "],
    [["--health-cert=/etc/hostname"], "--health-key: --health-cert and --health-key go together; --health-key is missing"],
    [["--health-cert=/etc/hostname", "--health-key=/etc/hostname"], '--health-cert: "/etc/hostname" holds no PEM certificate'],
    [["--health-cacert=/etc/hostname"], '--health-cacert: "/etc/hostname" holds no PEM certificate'],
    [["--health-check=http"], '--health-check: invalid value "http"; expected one of etcd, health, tcp, none'],
    [["--health-rise=0"], '--health-rise: invalid count "0"; expected 1..100'],
    [["--keepalive-time=10ms"], '--keepalive-time: duration "10ms" must be at least 1s'],
    [["--listen-addr=unix://relative.sock"], "--listen-addr: unix socket path must be absolute"],
    [["--listen-socket-mode=rw"], '--listen-socket-mode: invalid file mode "rw"'],
    [["--max-connections=-1"], '--max-connections: invalid count "-1"'],
    [["--workers=0"], '--workers: invalid worker count "0"; expected 1..64 or auto'],
    [["--workers=two"], '--workers: invalid worker count "two"'],
    [["--insecure-discovery=maybe"], '--insecure-discovery: invalid boolean "maybe"'],
    [["--discovery-srv=not a domain"], '--discovery-srv: invalid domain "not a domain"'],
    [["--discovery-srv-name=a.b"], '--discovery-srv-name: invalid service name "a.b"'],
    [["--trusted-ca-file=/nonexistent/ca.pem"], '--trusted-ca-file: open /nonexistent/ca.pem: no such file or directory'],
    [["--trusted-ca-file=/etc/hostname"], '--trusted-ca-file: "/etc/hostname" holds no PEM certificate'],
  ];
  for (const [argv, message] of cases) {
    // Titles are printed: control characters in them would make the test log binary to grep.
    test(JSON.stringify(argv.join(" ")).slice(1, -1) || "(empty)", () => expect(configError(() => parse(argv))).toContain(message));
  }
});

describe("snapshots", () => {
  test("a snapshot is frozen: nothing but a reload can change the settings in force", () => {
    const s = parse([]);
    expect(Object.isFrozen(s)).toBe(true);
    expect(Object.isFrozen(s.flags)).toBe(true);
    expect(() => ((s.flags as Record<string, unknown>)["connect-timeout"] = 5)).toThrow(TypeError);
  });

  test("a reload applies what is live and keeps the running value of what needs a restart", () => {
    const before = parse(["--listen-addr=127.0.0.1:1", "--connect-timeout=1s", "--policy=sticky", "--workers=1"]);
    const loaded = parse(["--listen-addr=127.0.0.1:2", "--connect-timeout=3s", "--policy=round-robin", "--workers=2"]);
    const r = reloadSettings(before, loaded);
    expect(r.applied).toEqual(["connect-timeout", "policy"]);
    expect(r.restart).toEqual(["listen-addr", "workers"]);
    expect(r.settings.flags["connect-timeout"]).toBe(3000);
    expect(r.settings.flags.policy).toBe("round-robin");
    expect(r.settings.listenAddrs.map((a) => a.address)).toEqual(["127.0.0.1:1"]);
    expect(r.settings.flags.workers).toBe(1);
    expect(r.settings.health.connectTimeoutMs).toBe(3000);
  });

  test("every flag says whether a reload applies it live or needs a restart", () => {
    for (const [name, spec] of Object.entries(START_FLAGS)) expect([name, ["live", "restart"].includes(spec.reload)]).toEqual([name, true]);
  });
});

describe("reloads run one at a time", () => {
  test("a reload requested during another runs after it, so the newest file is applied last", async () => {
    // The file as it is when each reload starts reading it; a slow apply stands for DNS or a member list call.
    let file = "A";
    let applied = "";
    const order: string[] = [];
    const reload = serialize(async () => {
      const read = file;
      order.push(`start ${read}`);
      await Bun.sleep(read === "A" ? 50 : 1);
      applied = read;
      order.push(`end ${read}`);
    });
    const first = reload();
    file = "B";
    const second = reload();
    file = "C";
    const third = reload();
    await Promise.all([first, second, third]);
    expect(order).toEqual(["start A", "end A", "start C", "end C"]);
    expect(applied).toBe("C");
  });

  test("a reload that throws does not block the next one", async () => {
    let n = 0;
    const reload = serialize(async () => {
      if (n++ === 0) throw new Error("boom");
    });
    await expect(reload()).rejects.toThrow("boom");
    await reload();
    expect(n).toBe(2);
  });
});

describe("the --config file's YAML: a duplicated key is an error, every parse error names file, line and column", () => {
  const load = (text: string) => buildSettings(gatherFlags({ config: "/etc/gw.yaml" }, {}, () => text));
  const cases: [string, string, string][] = [
    // Found: Bun.YAML let the second key win, so the first member was silently dropped.
    ["a duplicated key", "endpoints: 127.0.0.1:12379\nendpoints: 127.0.0.1:12399\n", '--config: "/etc/gw.yaml": line 2, column 1: duplicate key "endpoints" (first on line 1)'],
    ["a duplicated key spelt two ways", 'policy: sticky\nretry-delay: 1s\n"policy": ordered\n', '--config: "/etc/gw.yaml": line 3, column 1: duplicate key "policy" (first on line 1)'],
    ["a key three times: the second is named", "policy: a\npolicy: b\npolicy: c\n", '--config: "/etc/gw.yaml": line 2, column 1: duplicate key "policy" (first on line 1)'],
    ["a duplicated key in a nested mapping", "endpoints:\n  - {x: 1, x: 2}\n", '--config: "/etc/gw.yaml": line 2, column 12: duplicate key "x" (first on line 2)'],
    // Found: Bun.YAML said only "YAML Parse error: Unexpected token".
    ["a missing ]", "endpoints: [127.0.0.1:12379, 127.0.0.1:12399\npolicy: sticky\n", '--config: "/etc/gw.yaml": line 2, column 1: flow sequence in block collection must be sufficiently indented and end with a ]'],
    ["a missing }", "endpoints: {a: 1\n", '--config: "/etc/gw.yaml": line 2, column 1: flow map in block collection must be sufficiently indented and end with a }'],
    ["an unclosed quote", 'policy: "sticky\n', '--config: "/etc/gw.yaml": line 2, column 1: missing closing "quote'],
    ["a tab as indentation", "endpoints:\n\t- 127.0.0.1:2379\n", '--config: "/etc/gw.yaml": line 2, column 1: tabs are not allowed as indentation'],
    ["two documents", "policy: sticky\n---\npolicy: ordered\n", '--config: "/etc/gw.yaml": line 2, column 1: source contains multiple documents'],
    ["a mapping as a key", "? {a: 1}\n: x\n", '--config: "/etc/gw.yaml": line 1, column 3: a key must be a flag name, not a list or mapping'],
    ["an alias to nothing", "policy: *nope\n", '--config: "/etc/gw.yaml": unresolved alias'],
  ];
  for (const [name, text, message] of cases) {
    test(name, () => expect(configError(() => load(text))).toStartWith(message));
  }
  test("what parsed before still does: lists, comma strings, numbers, anchors, an empty mapping", () => {
    const s = load("endpoints:\n  - 127.0.0.1:1\n  - 127.0.0.2:2\nhealth-rise: 4\nlisten-addr: 127.0.0.1:5,127.0.0.1:6\n");
    expect([s.endpoints.map((e) => e.address), s.flags["health-rise"], s.listenAddrs.map((a) => a.address)]).toEqual([["127.0.0.1:1", "127.0.0.2:2"], 4, ["127.0.0.1:5", "127.0.0.1:6"]]);
    expect(load("policy: &p ordered\ndiscovery-srv-name: *p\n").flags["discovery-srv-name"]).toBe("ordered");
    expect(load("{}\n").flags.policy).toBe("sticky");
  });
});

describe("ETCD_GATEWAY_* variables: a flag's, or an error naming the variable (as etcd's unrecognized environment variable)", () => {
  const env = (vars: Record<string, string>) => buildSettings(gatherFlags({}, vars));
  const cases: [Record<string, string>, string][] = [
    // Found: ETCD_GATEWAY_ENDPOINT (no S) was ignored, and the gateway proxied to the default 127.0.0.1:2379.
    [{ ETCD_GATEWAY_ENDPOINT: "10.0.0.1:2379" }, "unrecognized environment variable ETCD_GATEWAY_ENDPOINT=10.0.0.1:2379 (did you mean ETCD_GATEWAY_ENDPOINTS?)"],
    [{ ETCD_GATEWAY_RETRYDELAY: "5s" }, "unrecognized environment variable ETCD_GATEWAY_RETRYDELAY=5s (did you mean ETCD_GATEWAY_RETRY_DELAY?)"],
    [{ ETCD_GATEWAY_LISTEN_ADRR: "127.0.0.1:1" }, "unrecognized environment variable ETCD_GATEWAY_LISTEN_ADRR=127.0.0.1:1 (did you mean ETCD_GATEWAY_LISTEN_ADDR?)"],
    [{ ETCD_GATEWAY_FROBNICATE: "yes" }, "unrecognized environment variable ETCD_GATEWAY_FROBNICATE=yes"],
    [{ ETCD_GATEWAY_: "" }, "unrecognized environment variable ETCD_GATEWAY_="],
    [{ ETCD_GATEWAY_X: "\u001b[2J" }, "unrecognized environment variable ETCD_GATEWAY_X=\\u001b[2J"],
  ];
  for (const [vars, message] of cases) test(Object.keys(vars)[0]!, () => expect(configError(() => env(vars))).toBe(message));
  test("every flag's variable, the worker marker and the project's tool variables are known", () => {
    const vars: Record<string, string> = Object.fromEntries(Object.keys(OTHER_ENV).map((k) => [k, "1"]));
    vars.ETCD_GATEWAY_RETRY_DELAY = "5s";
    vars.ETCD_GATEWAY_INSECURE_DISCOVERY = "true";
    expect(env(vars).flags["retry-delay"]).toBe(5000);
    expect(Object.keys(OTHER_ENV)).toEqual(expect.arrayContaining([WORKER_ENV, "ETCD_GATEWAY_BINARY", "ETCD_GATEWAY_SKIP_BUILD", "ETCD_GATEWAY_BEFORE", "ETCD_GATEWAY_BASE_URL"]));
  });
  test("other variables are not the gateway's business: etcd's own, and other cases", () => {
    expect(env({ ETCD_ENDPOINTS: "x", ETCDCTL_API: "3", etcd_gateway_endpoint: "x" }).flags.policy).toBe("sticky");
  });
});

describe("bad input is printed escaped", () => {
  /** Temp dirs the tests made, removed after each. */
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  test("a binary endpoints file: one line, no control characters, no invalid UTF-8, bounded length", () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-binary-"));
    dirs.push(dir);
    const f = join(dir, "endpoints");
    writeFileSync(f, Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 37) % 256)));
    let err: unknown;
    try {
      parse([`--endpoints-file=${f}`]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const text = (err as Error).message;
    expect(text).toStartWith("--endpoints-file: ");
    expect(text).not.toMatch(/[\u0000-\u001f\u007f-\u009f\ufffd\u202e]/);
    expect(text.length).toBeLessThanOrEqual(401);
  });
  test("a terminal escape in a YAML value is shown escaped", () => {
    let err: unknown;
    try {
      buildSettings(gatherFlags({ config: "/x.yaml" }, {}, () => 'policy: "\u001b]0;pwned\u0007"\n'));
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).toBe('--policy (from config file /x.yaml, key "policy"): invalid value "\\u001b]0;pwned\\u0007"; expected one of sticky, round-robin, least-connections, ordered');
  });
});

describe("the connection cap from the open-files limit (HAProxy's maxconn from ulimit-n)", () => {
  const cases: [limit: number, open: number, cap: number][] = [
    [20000, 15, 9968], // (20000 - 15 - 48) / 2, rounded down
    [1024, 12, 482], // (1024 - 12 - 48) / 2
    [32, 13, 5], // the reserve shrinks to a quarter of a tiny limit: (32 - 13 - 8) / 2
    [16, 14, 1], // never below one
    [Infinity, 10, Infinity],
  ];
  for (const [limit, open, cap] of cases) {
    test(`open-files limit ${limit} with ${open} open: ${cap} connections`, () => expect(connectionCap(limit, open)).toBe(cap));
  }
});

describe("a file mode written as a YAML number (issue 20): the mode itself, never more access than asked", () => {
  const load = (text: string) => buildSettings(gatherFlags({ config: "/etc/gw.yaml" }, {}, () => text));
  const modes: [string, number][] = [
    // Found: 0o660 (YAML 1.2 octal) was the number 432, read as the octal text "432": mode 0432.
    ["listen-socket-mode: 0o660\n", 0o660],
    ["listen-socket-mode: 0x1b0\n", 0o660],
    ["listen-socket-mode: 0o600\n", 0o600],
    // Digits are read as octal, as the flag, chmod and YAML 1.1 read 0660.
    ["listen-socket-mode: 0660\n", 0o660],
    ["listen-socket-mode: 660\n", 0o660],
    // A quoted octal string is the flag's text, others' bits included.
    ['listen-socket-mode: "0666"\n', 0o666],
    ["listen-socket-mode: '0777'\n", 0o777],
  ];
  for (const [text, mode] of modes) test(text.trim(), () => expect(load(text).flags["listen-socket-mode"]).toBe(mode));
  test("admin-socket-mode reads the same way", () => expect(load("admin-socket-mode: 0o640\n").flags["admin-socket-mode"]).toBe(0o640));

  const refused: [string, string][] = [
    ["listen-socket-mode: 0o777\n", '--listen-socket-mode (from config file /etc/gw.yaml, key "listen-socket-mode"): the YAML number 0o777 is mode 0777, which gives others access; write the mode as a quoted octal string, like "0666", to mean it'],
    ["listen-socket-mode: 0o666\n", "the YAML number 0o666 is mode 0666, which gives others access"],
    // What a YAML tool writes for 0o660: not read as 0432 any more.
    ["listen-socket-mode: 432\n", "the YAML number 432 is mode 0432, which gives others access"],
    ["listen-socket-mode: 0666\n", "the YAML number 0666 is mode 0666, which gives others access"],
    ["admin-socket-mode: 0o606\n", '--admin-socket-mode (from config file /etc/gw.yaml, key "admin-socket-mode"): the YAML number 0o606 is mode 0606'],
    ["listen-socket-mode: 0o1777\n", 'invalid file mode "0o1777"; expected octal like 0660'],
    ["listen-socket-mode: 0x10000\n", 'invalid file mode "0x10000"; expected octal like 0660'],
    ["listen-socket-mode: 6.6e2\n", 'invalid file mode "6.6e2"'],
    ["listen-socket-mode: 0688\n", 'invalid file mode "0688"'],
  ];
  for (const [text, message] of refused) test(`${text.trim()} is refused`, () => expect(configError(() => load(text))).toContain(message));
});

describe("a number the YAML file cannot hold is named as written (issue 20)", () => {
  const load = (text: string) => buildSettings(gatherFlags({ config: "/etc/gw.yaml" }, {}, () => text));
  const cases: [string, string][] = [
    // Found: "expected a string, got null" (JSON's spelling of Infinity and NaN).
    ["health-fall: 1e400\n", '--health-fall (from config file /etc/gw.yaml, key "health-fall"): expected a whole number, got 1e400 (out of range)'],
    ["connect-timeout: .inf\n", '--connect-timeout (from config file /etc/gw.yaml, key "connect-timeout"): expected a duration, got .inf'],
    ["retry-delay: -.inf\n", "expected a duration, got -.inf"],
    ["health-rise: .nan\n", "expected a whole number, got .nan"],
    ["max-connections: -1e999\n", "expected a whole number, got -1e999 (out of range)"],
    ["policy: .inf\n", "--policy (from config file /etc/gw.yaml, key \"policy\"): expected a string, got .inf"],
    ["endpoints: [127.0.0.1:1, .inf]\n", "expected a string or a list of strings, got .inf"],
  ];
  for (const [text, message] of cases) test(text.trim(), () => expect(configError(() => load(text))).toContain(message));
  test("finite numbers still read as before", () => {
    const s = load("health-fall: 5\nmax-connections: 1e4\nhealth-rise: 0x10\n");
    expect([s.flags["health-fall"], s.flags["max-connections"], s.flags["health-rise"]]).toEqual([5, 10_000, 16]);
  });
});

describe("a control character in an address is named (issue 20)", () => {
  test("a newline in ETCD_GATEWAY_ENDPOINTS", () => {
    // Found: "IPv6 address must be in brackets, as in "[::1]:2379"".
    expect(configError(() => buildSettings(gatherFlags({}, { ETCD_GATEWAY_ENDPOINTS: "127.0.0.1:2379\n127.0.0.1:2380" })))).toBe(
      '--endpoints (from environment ETCD_GATEWAY_ENDPOINTS): control character U+000A (line feed) in endpoint "127.0.0.1:2379\\n127.0.0.1:2380"; separate endpoints with commas',
    );
  });
  const cases: [string[], string][] = [
    [["--endpoints=127.0.0.1:2379\r\n10.0.0.1:2379"], '--endpoints: control character U+000D (carriage return) in endpoint "127.0.0.1:2379\\r\\n10.0.0.1:2379"'],
    [["--endpoints=a.example\t:2379"], "--endpoints: control character U+0009 (tab) in endpoint"],
    [["--listen-addr=127.0.0.1:1\n127.0.0.1:2"], '--listen-addr: control character U+000A (line feed) in address "127.0.0.1:1\\n127.0.0.1:2"'],
    [["--dns-server=127.0.0.1\u0000:53"], "--dns-server: control character U+0000 in address"],
  ];
  for (const [argv, message] of cases) test(JSON.stringify(argv.join(" ")).slice(1, -1), () => expect(configError(() => parse(argv))).toContain(message));
  test("surrounding white space is still trimmed, as before", () => expect(parse(["--endpoints=127.0.0.1:2379\n"]).endpoints.map((e) => e.address)).toEqual(["127.0.0.1:2379"]));
});

describe("an empty --config file (issue 20)", () => {
  const load = (text: string) => buildSettings(gatherFlags({ config: "/etc/gw.yaml" }, {}, () => text));
  // At startup too, as HAProxy ("no listener") and nginx (no "events" section) refuse an empty configuration.
  for (const text of ["", "\n", "# only a comment\n", "~\n", "---\n", "null\n"]) {
    test(`${JSON.stringify(text)} is refused at startup`, () => expect(configError(() => load(text))).toBe('--config: "/etc/gw.yaml": empty (no keys); leave out --config to run on the defaults'));
  }
  test("an explicit empty mapping is a choice: the defaults", () => expect(load("{}\n").flags.policy).toBe("sticky"));
});
