/**
 * The admin endpoint: /metrics parsed by a real Prometheus text parser with numbers that match the
 * traffic sent, /healthz, /readyz, /status, and the `status` command.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
// @ts-expect-error: the parser ships no type declarations
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { runBinary, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { freePort } from "../support/net.ts";
import { echoServer, roundTrip, type Listening } from "../support/peers.ts";

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
    expect(s.members[1]!.reason).toContain("ECONNREFUSED");
    const table = runBinary(["status", `--admin-addr=127.0.0.1:${admin}`]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`127\\.0\\.0\\.1:${echo.port}\\s+up\\s`));
    expect(table.stdout).toMatch(new RegExp(`127\\.0\\.0\\.1:${refusing}\\s+down\\s.*ECONNREFUSED`));
    const json = runBinary(["status", `--admin-addr=127.0.0.1:${admin}`, "--json"]);
    expect(JSON.parse(json.stdout).members).toHaveLength(2);
  });

  test("`etcd-gateway status` without a gateway is a one-line error, exit 1", () => {
    const r = runBinary(["status", `--admin-addr=127.0.0.1:${freePort()}`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^etcd-gateway: cannot reach the admin endpoint at 127\.0\.0\.1:\d+: /);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });
});
