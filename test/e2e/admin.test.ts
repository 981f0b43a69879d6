/**
 * The admin endpoint: /metrics parsed by a real Prometheus text parser with numbers that match the
 * traffic sent, /healthz, /readyz, /status, and the `status` command; then its bounds (issue 12,
 * item 6): a flood of half-sent requests under a low fd limit leaves the data path and the health
 * checks alone, at most 32 connections at once (16, and as many again while accepting pauses; what
 * happens at the cap is in test/e2e/admin-access.test.ts), the request head bounded in time and
 * size, and 405 for methods other than GET and HEAD.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:http";
import { connect } from "node:net";
// @ts-expect-error: the parser ships no type declarations
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { fdCount, freePort, sleep, waitFor } from "../support/net.ts";
import { closeServer, dial, echoOnPort, echoServer, httpAnswering, roundTrip, type Listening } from "../support/peers.ts";

interface Family {
  name: string;
  type: string;
  metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }[];
}
const parse = (text: string) => parsePrometheusTextFormat(text) as Family[];
const value = (families: Family[], name: string, labels: Record<string, string> = {}) => {
  const f = families.find((x) => x.name === name);
  if (f === undefined) throw new Error(`no metric family ${name}`);
  const m = f.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v));
  if (m === undefined) throw new Error(`no ${name} with ${JSON.stringify(labels)}`);
  return Number(m.value ?? m.count);
};

const servers: Listening[] = [];
afterEach(stopAllGateways);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

describe("admin endpoint", () => {
  test("/metrics parses as Prometheus text and its counters match the traffic sent", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const refusing = freePort();
    const admin = freePort();
    const gw = await startGatewayProcess([
      `--endpoints=127.0.0.1:${echo.port},127.0.0.1:${refusing}`,
      "--policy=ordered",
      "--health-check=none",
      `--admin-addr=127.0.0.1:${admin}`,
    ]);
    const msg = "x".repeat(1000);
    for (let i = 0; i < 25; i++) expect(await roundTrip(gw.port, msg)).toBe(msg);
    const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    const fams = parse(text);
    const ep = { endpoint: `127.0.0.1:${echo.port}` };
    expect(value(fams, "etcd_gateway_member_connections_total", ep)).toBe(25);
    expect(value(fams, "etcd_gateway_member_sent_bytes_total", ep)).toBe(25_000);
    expect(value(fams, "etcd_gateway_member_received_bytes_total", ep)).toBe(25_000);
    expect(value(fams, "etcd_gateway_listener_accepted_total")).toBe(25);
    expect(value(fams, "etcd_gateway_member_up", ep)).toBe(1);
    expect(value(fams, "etcd_gateway_member_state", { ...ep, state: "up" })).toBe(1);
    // This parser merges the series of a labelled histogram into one, so the histogram is read from
    // the exposition lines themselves.
    expect(fams.find((f) => f.name === "etcd_gateway_member_connect_duration_seconds")?.type).toBe("HISTOGRAM");
    expect(text).toContain(`etcd_gateway_member_connect_duration_seconds_bucket{endpoint="127.0.0.1:${echo.port}",le="+Inf"} 25\n`);
    expect(text).toContain(`etcd_gateway_member_connect_duration_seconds_count{endpoint="127.0.0.1:${echo.port}"} 25\n`);
    expect(text).toContain(`etcd_gateway_member_connect_duration_seconds_count{endpoint="127.0.0.1:${refusing}"} 0\n`);
    expect(value(fams, "etcd_gateway_build_info")).toBe(1);
    // The refusing member was never dialled under "ordered" while the first works.
    expect(value(fams, "etcd_gateway_member_connect_failures_total", { endpoint: `127.0.0.1:${refusing}`, reason: "refused" })).toBe(0);
    for (const name of ["etcd_gateway_member_ejections_total", "etcd_gateway_discovery_refreshes_total", "etcd_gateway_start_time_seconds", "etcd_gateway_listener_connections"]) {
      expect(fams.some((f) => f.name === name)).toBe(true);
    }
  });

  test("connect failures are counted by reason and ejections are counted", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const refusing = freePort();
    const admin = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${refusing},127.0.0.1:${echo.port}`, "--policy=ordered", "--health-check=none", `--admin-addr=127.0.0.1:${admin}`]);
    for (let i = 0; i < 5; i++) await roundTrip(gw.port, "y");
    const fams = parse(await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text());
    const ep = { endpoint: `127.0.0.1:${refusing}` };
    expect(value(fams, "etcd_gateway_member_connect_failures_total", { ...ep, reason: "refused" })).toBe(3); // then ejected
    expect(value(fams, "etcd_gateway_member_ejections_total", ep)).toBe(1);
    expect(value(fams, "etcd_gateway_member_up", ep)).toBe(0);
  });

  test("/healthz is 200; /readyz is 200 while a member is usable and 503 when none is", async () => {
    const echo = await echoServer();
    const admin = freePort();
    await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=tcp", "--health-interval=200ms", `--admin-addr=127.0.0.1:${admin}`]);
    expect((await fetch(`http://127.0.0.1:${admin}/healthz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${admin}/readyz`)).status).toBe(200);
    await echo.close();
    const deadline = performance.now() + 5000;
    let status = 200;
    while (performance.now() < deadline && status === 200) {
      status = (await fetch(`http://127.0.0.1:${admin}/readyz`)).status;
      await Bun.sleep(50);
    }
    expect(status).toBe(503);
  });

  test("/status and `etcd-gateway status` show the members, their state and connections", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const refusing = freePort();
    const admin = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port},127.0.0.1:${refusing}`, "--health-check=tcp", "--health-interval=200ms", `--admin-addr=127.0.0.1:${admin}`]);
    await gw.waitForLog("deactivated endpoint");
    const s = (await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { members: { endpoint: string; state: string; reason: string }[]; pid: number };
    expect(s.pid).toBe(gw.proc.pid);
    expect(s.members.map((m) => [m.endpoint, m.state])).toEqual([
      [`127.0.0.1:${echo.port}`, "up"],
      [`127.0.0.1:${refusing}`, "down"],
    ]);
    expect(s.members[1]!.reason).toBe(`dial tcp 127.0.0.1:${refusing}: connect: connection refused`);
    const table = runBinary(["status", `--admin-addr=127.0.0.1:${admin}`]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`127\\.0\\.0\\.1:${echo.port}\\s+up\\s`));
    expect(table.stdout).toMatch(new RegExp(`127\\.0\\.0\\.1:${refusing}\\s+down\\s.*dial tcp 127\\.0\\.0\\.1:${refusing}: connect: connection refused`));
    const json = runBinary(["status", `--admin-addr=127.0.0.1:${admin}`, "--json"]);
    expect(JSON.parse(json.stdout).members).toHaveLength(2);
  });

  test("`etcd-gateway status` prints a member's 503 body that carries terminal escapes escaped", async () => {
    // A member that answers every request (the etcd check's status call included) with a 503 whose body would retitle the terminal and clear the screen.
    const member = await httpAnswering(503, "\x1b]0;pwned\x07\x1b[2Jnot ready");
    servers.push(member);
    const port = member.port;
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`, "--health-check=etcd", "--health-interval=200ms"], { admin: true });
    await gw.waitForLog("deactivated endpoint");
    const table = runBinary(["status", `--admin-addr=${gw.adminURL!.slice("http://".length)}`]);
    expect(table.code).toBe(2); // its only member is down
    expect(table.stdout).toContain(`Post "http://127.0.0.1:${port}/v3/maintenance/status": 503 Service Unavailable: \\x1b]0;pwned\\x07\\x1b[2Jnot ready`);
    expect(table.stdout).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f]/);
    const json = runBinary(["status", `--admin-addr=${gw.adminURL!.slice("http://".length)}`, "--json"]);
    expect(json.stdout).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f]/);
    expect(JSON.parse(json.stdout).members[0].reason).toBe(`Post "http://127.0.0.1:${port}/v3/maintenance/status": 503 Service Unavailable: \x1b]0;pwned\x07\x1b[2Jnot ready`);
  });

  test("`etcd-gateway status` exits 2 when no member is usable (as /readyz answers 503), 0 again once one is", async () => {
    // Found in issue 14: it exited 0 whatever the members' state, so scripts could not use it.
    const echo = await echoServer();
    const admin = freePort();
    await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=tcp", "--health-interval=200ms", `--admin-addr=127.0.0.1:${admin}`]);
    expect(runBinary(["status", `--admin-addr=127.0.0.1:${admin}`]).code).toBe(0);
    await echo.close();
    await waitFor("/readyz 503", async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 503 || undefined, 5000, 50);
    for (const json of [[], ["--json"]]) {
      const r = runBinary(["status", `--admin-addr=127.0.0.1:${admin}`, ...json]);
      expect([json.join(""), r.code, r.stderr.trim()]).toEqual([json.join(""), 2, "etcd-gateway: no member is usable"]);
      expect(r.stdout).toContain(`127.0.0.1:${echo.port}`); // the table (or the JSON) is printed all the same
    }
    const back = await echoOnPort(echo.port);
    try {
      await waitFor("/readyz 200", async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200 || undefined, 5000, 50);
      expect(runBinary(["status", `--admin-addr=127.0.0.1:${admin}`]).code).toBe(0);
    } finally {
      await closeServer(back);
    }
  });

  test("`etcd-gateway status` without a gateway is a one-line error, exit 1", () => {
    const r = runBinary(["status", `--admin-addr=127.0.0.1:${freePort()}`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^etcd-gateway: cannot reach the admin endpoint at 127\.0\.0\.1:\d+: /);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });
});

/** `promtool check metrics` (Debian's prometheus package; scripts/ensure-deps.sh installs it) on `text`: its exit code and what it said. */
function promtool(text: string): { code: number | null; said: string } {
  const p = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: Buffer.from(text), stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, said: (p.stdout.toString() + p.stderr.toString()).trim() };
}

/** The samples of `name` in an exposition: label block (as written) to value. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of text.matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, "gm"))) out.set(m[1] ?? "", Number(m[2]));
  return out;
}

const limitOf = (pid: number) => Number(/^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"))![1]);

describe("/metrics for Prometheus (issue 14, item 2)", () => {
  test("passes `promtool check metrics`, with the standard process metrics, health-check and connection durations", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=tcp", "--health-interval=100ms"], { admin: true });
    for (let i = 0; i < 5; i++) expect(await roundTrip(gw.port, `m${i}`)).toBe(`m${i}`);
    await sleep(400); // a few checks
    const text = await (await fetch(`${gw.adminURL}/metrics`, { headers: { connection: "close" } })).text();
    expect(promtool(text)).toEqual({ code: 0, said: "" });
    const one = (name: string) => [...samples(text, name).entries()];
    expect(one("process_open_fds")).toEqual([["", expect.any(Number)]]);
    expect(Math.abs(one("process_open_fds")[0]![1] - fdCount(gw.pid))).toBeLessThanOrEqual(3);
    expect(one("process_max_fds")).toEqual([["", limitOf(gw.pid)]]);
    expect(one("process_resident_memory_bytes")[0]![1]).toBeGreaterThan(10 << 20);
    expect(one("process_cpu_seconds_total")[0]![1]).toBeGreaterThan(0);
    const started = one("process_start_time_seconds")[0]![1];
    expect(Math.abs(started - Date.now() / 1000)).toBeLessThan(30);
    const ep = `endpoint="127.0.0.1:${echo.port}"`;
    // The member carries no client between round trips: its checks are full ones (a spare's), at least the first.
    expect(samples(text, "etcd_gateway_health_check_duration_seconds_count").get(`{${ep},depth="full"}`)).toBeGreaterThanOrEqual(1);
    expect(samples(text, "etcd_gateway_health_check_duration_seconds_count").has(`{${ep},depth="liveness"}`)).toBe(true);
    expect(samples(text, "etcd_gateway_connection_duration_seconds_count").get("")).toBe(5);
    expect(samples(text, "etcd_gateway_connection_duration_seconds_bucket").get('{le="+Inf"}')).toBe(5);
    expect(samples(text, "etcd_gateway_connection_duration_seconds_sum").get("")).toBeGreaterThan(0);
  });

  test("with --workers 2: `promtool check metrics` passes, and process metrics are one series per process, labelled worker", async () => {
    const echo = await echoServer();
    servers.push(echo);
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=tcp", "--workers=2"], { admin: true });
    for (let i = 0; i < 20; i++) expect(await roundTrip(gw.port, `w${i}`)).toBe(`w${i}`);
    const text = await (await fetch(`${gw.adminURL}/metrics`, { headers: { connection: "close" } })).text();
    expect(promtool(text)).toEqual({ code: 0, said: "" });
    const worker = Number(Bun.spawnSync(["pgrep", "-P", String(gw.pid)]).stdout.toString().trim());
    for (const name of ["process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds"]) {
      expect([name, [...samples(text, name).keys()]]).toEqual([name, ['{worker="0"}', '{worker="1"}']]);
    }
    expect(samples(text, "process_max_fds").get('{worker="1"}')).toBe(limitOf(worker));
    // Each process's own start: the worker was started by the primary, after it.
    expect(samples(text, "process_start_time_seconds").get('{worker="1"}')!).toBeGreaterThanOrEqual(samples(text, "process_start_time_seconds").get('{worker="0"}')!);
    // Connection durations are summed over the processes, like every data-path counter.
    expect(samples(text, "etcd_gateway_connection_duration_seconds_count").get("")).toBe(20);
  });
});

interface StatusBody {
  ready: boolean;
  members: { endpoint: string; state: string; connections: number; drained?: boolean }[];
}
const statusOf = async (gw: GatewayProcess) => (await (await fetch(`${gw.adminURL}/status`, { headers: { connection: "close" } })).json()) as StatusBody;
const metricsOf = async (gw: GatewayProcess) => (await fetch(`${gw.adminURL}/metrics`, { headers: { connection: "close" } })).text();

describe("removed members (issue 14, item 3)", () => {
  const scratch = mkdtempSync(join(tmpdir(), "etcd-gateway-removed-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  for (const workers of [1, 2]) {
    test(`a member taken out of the endpoint set stays in /status and /metrics as removed while clients are connected to it${workers > 1 ? ", counted over every process (--workers 2)" : ""}`, async () => {
      const [a, b] = [await echoServer(), await echoServer()];
      servers.push(a, b);
      const [A, B] = [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`];
      const eps = join(scratch, `endpoints-${workers}.txt`);
      writeFileSync(eps, `${A}\n${B}\n`);
      const gw = await startGatewayProcess([`--endpoints-file=${eps}`, "--policy=ordered", "--health-check=none", `--workers=${workers}`], { admin: true });
      // Ten connections to A, each proven by a round trip (with --workers the kernel spreads them over both processes).
      const held = await Promise.all(Array.from({ length: 10 }, () => dial(gw.port)));
      for (const s of held) await new Promise<void>((r) => (s.once("data", () => r()), s.write("x")));
      writeFileSync(eps, `${B}\n`);
      gw.proc.kill("SIGHUP");
      await gw.waitForLog("endpoints changed");
      await sleep(100); // the workers adopt the new set
      const st = await statusOf(gw);
      expect(st.members.map((m) => [m.endpoint, m.state, m.connections])).toEqual([
        [B, "up", 0],
        [A, "removed", 10],
      ]);
      const text = await metricsOf(gw);
      expect(promtool(text)).toEqual({ code: 0, said: "" });
      expect(samples(text, "etcd_gateway_member_state").get(`{endpoint="${A}",state="removed"}`)).toBe(1);
      expect(samples(text, "etcd_gateway_member_state").get(`{endpoint="${B}",state="removed"}`)).toBe(0);
      expect(samples(text, "etcd_gateway_member_up").get(`{endpoint="${A}"}`)).toBe(0);
      expect(samples(text, "etcd_gateway_member_connections").get(`{endpoint="${A}"}`)).toBe(10);
      expect(samples(text, "etcd_gateway_member_connections_total").get(`{endpoint="${A}"}`)).toBe(10);
      const table = runBinary(["status", `--admin-addr=${gw.adminURL!.slice("http://".length)}`]);
      expect(table.stdout).toMatch(new RegExp(`${A.replace(/\./g, "\\.")}\\s+removed\\s+10\\s`));
      // The connections still work; new ones go to B.
      expect(await roundTrip(gw.port, "new")).toBe("new");
      for (const s of held.slice(0, 9)) s.destroy();
      await waitFor("9 closed", async () => (await statusOf(gw)).members.find((m) => m.endpoint === A)?.connections === 1 || undefined, 5000, 50);
      held[9]!.destroy();
      await waitFor("A gone from /status", async () => ((await statusOf(gw)).members.length === 1 ? true : undefined), 5000, 50);
      expect(await metricsOf(gw)).not.toContain(A);
    });
  }
});

/** A gateway with the admin endpoint on (`adminURL`), in front of one echo member, no health checks. */
async function adminGateway(): Promise<GatewayProcess> {
  const echo = await echoServer();
  servers.push(echo);
  return startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=none"], { admin: true });
}

/** The admin port of a gateway started with `admin: true`. */
const adminPort = (gw: GatewayProcess) => Number(new URL(gw.adminURL!).port);

/**
 * Sends `parts` on one new connection to the admin endpoint (the first at once, the others `gapMs`
 * apart) and reads until the server closes it, giving up after `giveUpMs`: what arrived (latin1),
 * how long the connection lived, and the error code if it ended with one.
 */
function exchange(port: number, parts: string[], gapMs = 0, giveUpMs = 10_000): Promise<{ text: string; ms: number; error?: string; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let text = "";
    let error: string | undefined;
    let sent = 0;
    const s = connect({ host: "127.0.0.1", port });
    const next = () => {
      if (sent < parts.length && !s.destroyed) s.write(parts[sent++]!);
    };
    const trickle = setInterval(next, Math.max(gapMs, 1));
    const giveUp = setTimeout(() => s.destroy(), giveUpMs);
    s.once("connect", next);
    s.on("data", (c: Buffer) => (text += c.toString("latin1")));
    s.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    s.once("close", () => {
      clearInterval(trickle);
      clearTimeout(giveUp);
      const ms = performance.now() - t0;
      resolve({ text, ms, closedByServer: ms < giveUpMs, ...(error === undefined ? {} : { error }) });
    });
  });
}

/** A round trip through the gateway's data path, or "timeout" after `ms`. */
const tripWithin = (port: number, msg: string, ms: number) => Promise.race([roundTrip(port, msg).catch((e: Error) => e.message), sleep(ms).then(() => "timeout")]);

describe("admin endpoint bounds", () => {
  test("400 half-sent admin requests under a 256-fd limit: round trips and health checks carry on, the endpoint holds at most 32 connections, and closes them within 5 s", async () => {
    const a = await echoServer();
    const b = await echoServer();
    servers.push(a, b);
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${a.port},127.0.0.1:${b.port}`, "--health-check=tcp", "--health-interval=200ms"], {
      admin: true,
      wrap: (cmd) => ["prlimit", "--nofile=256:256", "--", ...cmd],
    });
    expect(await roundTrip(gw.port, "warm")).toBe("warm");
    await sleep(300);
    const baseline = fdCount(gw.pid);
    let peak = baseline;
    const sampler = setInterval(() => {
      if (gw.running()) peak = Math.max(peak, fdCount(gw.pid));
    }, 5);
    // Each sends the first line of a request and nothing more, paced 20 per 20 ms.
    const flood: { opened: number; closed: number | undefined; text: string }[] = [];
    for (let i = 0; i < 400; i++) {
      const rec = { opened: performance.now(), closed: undefined as number | undefined, text: "" };
      const s = connect({ host: "127.0.0.1", port: adminPort(gw) });
      s.once("connect", () => s.write("GET /metrics HTTP/1.1\r\n"));
      s.on("data", (c: Buffer) => (rec.text += c.toString("latin1")));
      s.on("error", () => {});
      s.once("close", () => (rec.closed = performance.now()));
      flood.push(rec);
      if (i % 20 === 19) await sleep(20);
    }
    await sleep(300);
    clearInterval(sampler);
    const floodPeak = peak;
    // While the flood's connections are still open (the bound is 5 s), the data path serves.
    const trips = await Promise.all(Array.from({ length: 10 }, (_, i) => tripWithin(gw.port, `trip ${i}`, 3000)));
    const deadline = performance.now() + 9000;
    while (performance.now() < deadline && flood.some((f) => f.closed === undefined)) await sleep(50);
    const lives = flood.filter((f) => f.closed !== undefined).map((f) => f.closed! - f.opened);
    const st = await fetch(`${gw.adminURL}/status`, { signal: AbortSignal.timeout(2000) })
      .then((r) => r.json() as Promise<{ members: { state: string }[] }>)
      .catch(() => ({ members: [] }));
    expect({
      roundTripsOk: trips.filter((t, i) => t === `trip ${i}`).length,
      floodClosedByServer: lives.length,
      floodClosedWithin6s: lives.filter((ms) => ms <= 6500).length,
      membersUp: st.members.filter((m) => m.state === "up").length,
      deactivations: gw.lines.filter((l) => l.includes("deactivated endpoint")).length,
      // 32 admin connections (twice the cap, while accepting pauses), plus a health probe per member and a little slack.
      fdsOverBaseline: floodPeak - baseline <= 32 + 6 ? "at most 38" : floodPeak - baseline,
    }).toEqual({ roundTripsOk: 10, floodClosedByServer: 400, floodClosedWithin6s: 400, membersUp: 2, deactivations: 0, fdsOverBaseline: "at most 38" });
  }, 40_000);

  test("methods other than GET and HEAD get 405 with Allow: GET, HEAD", async () => {
    const gw = await adminGateway();
    for (const [method, path] of [["POST", "/metrics"], ["PUT", "/status"], ["DELETE", "/healthz"], ["OPTIONS", "/readyz"], ["PATCH", "/nope"]] as const) {
      const r = await fetch(`${gw.adminURL}${path}`, { method, ...(method === "POST" ? { body: "x=1" } : {}) });
      expect([method, r.status, r.headers.get("allow")]).toEqual([method, 405, "GET, HEAD"]);
      expect(await r.text()).toBe("method not allowed: use GET or HEAD\n");
    }
  });

  test("HEAD answers with the GET's status and headers and no body", async () => {
    const gw = await adminGateway();
    const withoutDate = (text: string) => text.replace(/\r\nDate: [^\r]*/, "");
    for (const path of ["/healthz", "/readyz", "/nope"]) {
      const get = await exchange(adminPort(gw), [`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`]);
      const head = await exchange(adminPort(gw), [`HEAD ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`]);
      expect(withoutDate(head.text)).toBe(withoutDate(get.text.slice(0, get.text.indexOf("\r\n\r\n") + 4)));
    }
    const metrics = await exchange(adminPort(gw), ["HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]);
    expect(metrics.text).toMatch(/^HTTP\/1\.1 200 OK\r\nContent-Type: text\/plain; version=0\.0\.4; charset=utf-8\r\nContent-Length: [1-9]\d*\r\n/);
    expect(metrics.text.endsWith("\r\n\r\n")).toBe(true);
  });

  test("a request head over 8 KiB is answered 431 and closed", async () => {
    const gw = await adminGateway();
    const big = await exchange(adminPort(gw), [`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${"a".repeat(9000)}\r\n\r\n`], 0, 3000);
    expect(big.text.split("\r\n")[0]).toBe("HTTP/1.1 431 Request Header Fields Too Large");
    expect(big.closedByServer).toBe(true);
    // Just under the bound is fine.
    const fits = await exchange(adminPort(gw), [`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${"a".repeat(8000)}\r\n\r\n`], 0, 3000);
    expect(fits.text.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
  });

  test("a request head that trickles in is answered 408 and closed 5 s after the connect", async () => {
    const gw = await adminGateway();
    const parts = ["GET /metrics HTTP/1.1\r\n", ...Array.from({ length: 30 }, (_, i) => `X-Slow-${i}: 1\r\n`)];
    const slow = await exchange(adminPort(gw), parts, 300, 9000);
    expect(slow.text.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
    expect(slow.closedByServer).toBe(true);
    expect(slow.ms).toBeGreaterThan(4500);
    expect(slow.ms).toBeLessThan(6500);
  }, 15_000);
});
