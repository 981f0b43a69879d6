/**
 * Draining a member for maintenance (issue 14, item 4), against the binary: `etcd-gateway member
 * drain|ready` and `POST /members/<endpoint>/drain|ready` take a member out of rotation under every
 * policy and bring it back, open connections carry on (or, with --close-idle, are reset once idle),
 * health checks go on, /status, /metrics and the log show it, every --workers process follows, a
 * drained member is fail-open's last resort, and a browser cannot do it. Drains go through the
 * gateway's unix socket admin address (issue 20; over TCP they are refused, test/e2e/admin-access.test.ts);
 * reads go through its TCP one.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AccessRecord } from "../../src/accesslog.ts";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { closeServer, dial, echoOnPort, roundTrip } from "../support/peers.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-drain-"));
const open = new Set<Socket>();
const members: Server[] = [];
afterEach(async () => {
  for (const s of open) s.destroy();
  open.clear();
  await stopAllGateways();
  sockets.clear();
  await Promise.all(members.splice(0).map(closeServer));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Two echo members, A and B, counting the connections each gets. */
async function twoMembers(): Promise<{ A: string; B: string; count: { A: number; B: number } }> {
  const count = { A: 0, B: 0 };
  const [a, b] = [freePort(), freePort()];
  members.push(await echoOnPort(a, () => count.A++), await echoOnPort(b, () => count.B++));
  return { A: `127.0.0.1:${a}`, B: `127.0.0.1:${b}`, count };
}

/** The unix socket admin address of each gateway started by `drainable`. */
const sockets = new Map<GatewayProcess, string>();
let started = 0;

/** A gateway with a TCP admin address (`adminURL`, for reads) and a unix socket one (for drains). */
async function drainable(args: string[]): Promise<GatewayProcess> {
  const sock = join(dir, `admin-${++started}.sock`);
  const gw = await startGatewayProcess([...args, `--admin-addr=unix://${sock}`], { admin: true });
  sockets.set(gw, sock);
  return gw;
}

/** `host:port` of the TCP admin address. */
const tcp = (gw: GatewayProcess) => gw.adminURL!.slice("http://".length);
/** `unix:///…` of the unix socket admin address. */
const admin = (gw: GatewayProcess) => `unix://${sockets.get(gw)!}`;
const cli = (gw: GatewayProcess, ...args: string[]) => runBinary(["member", ...args, `--admin-addr=${admin(gw)}`]);
/** A POST to the unix socket admin address. */
const post = (gw: GatewayProcess, path: string, headers: Record<string, string> = {}) => fetch(`http://localhost${path}`, { method: "POST", headers, unix: sockets.get(gw)! } as RequestInit);

interface Row {
  endpoint: string;
  state: string;
  drained: boolean;
  closeIdle: boolean;
  connections: number;
}
const rows = async (gw: GatewayProcess) => ((await (await fetch(`${gw.adminURL}/status`, { headers: { connection: "close" } })).json()) as { members: Row[] }).members;

/** A connection through the gateway, proven by one echoed byte. */
async function held(gw: GatewayProcess): Promise<Socket> {
  const s = await dial(gw.port);
  open.add(s);
  await new Promise<void>((r) => (s.once("data", () => r()), s.write("x")));
  return s;
}

/** Whether `s` still echoes. */
const echoes = (s: Socket) =>
  Promise.race([new Promise<boolean>((r) => (s.once("data", () => r(true)), s.write("y"))), sleep(1000).then(() => false)]).catch(() => false);

/** How `s` ends: "reset", "end", or "open" if it has not within `ms`. */
const ending = (s: Socket, ms: number) =>
  new Promise<string>((r) => {
    s.once("error", (e: NodeJS.ErrnoException) => r(e.code === "ECONNRESET" ? "reset" : String(e.code)));
    s.once("end", () => r("end"));
    setTimeout(() => r("open"), ms);
  });

describe("member drain and ready", () => {
  for (const policy of ["sticky", "round-robin", "least-connections", "ordered"]) {
    test(`${policy}: a drained member gets no new connection and its open one carries on; ready brings it back`, async () => {
      const { A, B, count } = await twoMembers();
      // No checks here: a TCP check would count as a connection to the member (the next test has them).
      const gw = await drainable([`--endpoints=${A},${B}`, `--policy=${policy}`, "--health-check=none"]);
      const before = await held(gw);
      const drained = cli(gw, "drain", A);
      expect([drained.code, drained.stderr]).toEqual([0, ""]);
      expect(drained.stdout).toMatch(new RegExp(`^${A.replace(/\./g, "\\.")} drained: no new connections \\(state up, [01] connections? open\\)\\n$`));
      count.A = 0;
      count.B = 0;
      for (let i = 0; i < 20; i++) expect(await roundTrip(gw.port, `r${i}`)).toBe(`r${i}`);
      expect(count).toEqual({ A: 0, B: 20 });
      expect(await echoes(before)).toBe(true);
      const st = await rows(gw);
      expect(st.map((r) => [r.endpoint, r.state, r.drained, r.closeIdle])).toEqual([
        [A, "up", true, false],
        [B, "up", false, false],
      ]);
      const metrics = await (await fetch(`${gw.adminURL}/metrics`, { headers: { connection: "close" } })).text();
      expect(metrics).toContain(`etcd_gateway_member_drained{endpoint="${A}"} 1\n`);
      expect(metrics).toContain(`etcd_gateway_member_up{endpoint="${A}"} 1\n`);
      expect(await gw.waitForLog("member drained: no new connections")).toMatchObject({ address: A, "close-idle": false });
      const table = runBinary(["status", `--admin-addr=${tcp(gw)}`]);
      expect(table.stdout).toMatch(new RegExp(`${A.replace(/\./g, "\\.")}\\s+up,drained\\s`));
      const ready = cli(gw, "ready", A);
      expect([ready.code, ready.stdout]).toEqual([0, `${A} is back in rotation (state up, ${st[0]!.connections} connection${st[0]!.connections === 1 ? "" : "s"} open)\n`]);
      await gw.waitForLog("member back in rotation");
      expect((await rows(gw)).map((r) => r.drained)).toEqual([false, false]);
      if (policy === "round-robin" || policy === "ordered") {
        count.A = 0;
        for (let i = 0; i < 4; i++) await roundTrip(gw.port, "z");
        expect(count.A).toBeGreaterThan(0);
      }
    });
  }

  test("health checks go on while drained: a drained member that stops answering is marked down", async () => {
    const { A, B } = await twoMembers();
    const gw = await drainable([`--endpoints=${A},${B}`, "--health-check=tcp", "--health-interval=100ms", "--health-spare-interval=200ms"]);
    expect(cli(gw, "drain", A).code).toBe(0);
    await closeServer(members.shift()!);
    await waitFor("A down", async () => (await rows(gw))[0]!.state === "down" || undefined, 5000, 50);
    expect((await rows(gw))[0]!.drained).toBe(true);
  });

  test("--close-idle: a connection idle for a second is reset (access log: drain-idle), a busy one is not; without it, idle ones stay", async () => {
    const { A, B } = await twoMembers();
    const log = join(dir, "close-idle.log");
    const gw = await drainable([`--endpoints=${A},${B}`, "--policy=ordered", "--health-check=none", `--access-log=${log}`]);
    const [idle, busy, keep] = [await held(gw), await held(gw), await held(gw)];
    expect(cli(gw, "drain", A).code).toBe(0);
    await sleep(2500);
    expect(await echoes(keep)).toBe(true); // drained, not close-idle: an idle connection stays
    const pinger = setInterval(() => busy.write("p"), 200);
    try {
      const t0 = performance.now();
      const r = cli(gw, "drain", A, "--close-idle");
      expect([r.code, r.stdout.endsWith(", each reset once idle for a second)\n")]).toEqual([0, true]);
      const [idleEnd, keepEnd] = await Promise.all([ending(idle, 4000), ending(keep, 4000)]);
      expect([idleEnd, keepEnd]).toEqual(["reset", "reset"]);
      expect(performance.now() - t0).toBeLessThan(3500);
      expect(await echoes(busy)).toBe(true);
    } finally {
      clearInterval(pinger);
    }
    expect(await gw.waitForLog("closed idle connections to a drained member")).toMatchObject({ address: A });
    const lines = () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as AccessRecord) : []);
    const logged = await waitFor("2 access log lines", () => (lines().length >= 2 ? lines() : undefined), 5000, 50);
    expect(logged.map((l) => [l.member, l.termination])).toEqual([
      [A, "drain-idle"],
      [A, "drain-idle"],
    ]);
    // Back in rotation: the busy connection is left alone from now on, idle or not.
    expect(cli(gw, "ready", A).code).toBe(0);
    await sleep(2500);
    expect(await echoes(busy)).toBe(true);
  });

  test("a drained member is fail-open's last resort; /readyz is 503 and `status` exits 2 when it is the only member up", async () => {
    const { A } = await twoMembers();
    const refusing = `127.0.0.1:${freePort()}`;
    const log = join(dir, "last-resort.log");
    const gw = await drainable([`--endpoints=${A},${refusing}`, "--policy=ordered", "--health-check=tcp", "--health-interval=100ms", `--access-log=${log}`]);
    await waitFor("the refusing member down", async () => (await rows(gw))[1]!.state === "down" || undefined, 5000, 50);
    expect(cli(gw, "drain", A).code).toBe(0);
    expect((await fetch(`${gw.adminURL}/readyz`)).status).toBe(503);
    expect(runBinary(["status", `--admin-addr=${tcp(gw)}`]).code).toBe(2);
    expect(await roundTrip(gw.port, "last")).toBe("last");
    const line = await waitFor("an access log line", () => (existsSync(log) && readFileSync(log, "utf8").trim() !== "" ? (JSON.parse(readFileSync(log, "utf8").trim().split("\n")[0]!) as AccessRecord) : undefined), 5000, 50);
    expect(line).toMatchObject({ member: A, tried: [refusing, A] });
  });

  test("--workers 2: every process follows the drain, and --close-idle resets idle connections in every process", async () => {
    const { A, B, count } = await twoMembers();
    const gw = await drainable([`--endpoints=${A},${B}`, "--policy=ordered", "--health-check=none", "--workers=2"]);
    const idle = await Promise.all(Array.from({ length: 10 }, () => held(gw)));
    expect((await rows(gw))[0]!.connections).toBe(10);
    expect(cli(gw, "drain", A).code).toBe(0);
    await sleep(100);
    count.A = 0;
    for (let i = 0; i < 40; i++) await roundTrip(gw.port, "w");
    expect(count.A).toBe(0);
    const endings = Promise.all(idle.map((s) => ending(s, 5000)));
    expect(cli(gw, "drain", A, "--close-idle").code).toBe(0);
    expect(await endings).toEqual(Array(10).fill("reset"));
    await waitFor("A's connections gone", async () => (await rows(gw))[0]!.connections === 0 || undefined, 3000, 50);
  });
});

describe("the drain's requests", () => {
  test("unknown member: 404 listing the members, and the command says so on one line, exit 1", async () => {
    const { A, B } = await twoMembers();
    const gw = await drainable([`--endpoints=${A},${B}`, "--health-check=none"]);
    const r = await post(gw, "/members/10.9.9.9:2379/drain");
    expect([r.status, await r.text()]).toEqual([404, `no member 10.9.9.9:2379 in the endpoint set (${A}, ${B})\n`]);
    const c = cli(gw, "drain", "10.9.9.9:2379");
    expect([c.code, c.stdout]).toEqual([1, ""]);
    expect(c.stderr).toBe(`etcd-gateway: the admin endpoint at ${admin(gw)} answered 404: no member 10.9.9.9:2379 in the endpoint set (${A}, ${B})\n`);
    // The endpoint as given to --endpoints, with a scheme, percent-encoded or not.
    expect(cli(gw, "drain", `http://${A}`).code).toBe(0);
    expect((await post(gw, `/members/${encodeURIComponent(B)}/drain?close-idle`)).status).toBe(200);
    expect((await rows(gw)).map((m) => [m.drained, m.closeIdle])).toEqual([
      [true, false],
      [true, true],
    ]);
  });

  test("a browser's POST (Origin, Sec-Fetch-Site) is refused 403; GET of a drain path is 405 Allow: POST; a bad close-idle is 400", async () => {
    const { A, B } = await twoMembers();
    const gw = await drainable([`--endpoints=${A},${B}`, "--health-check=none"]);
    for (const headers of [{ Origin: "http://evil.example" }, { "Sec-Fetch-Site": "cross-site" }] as Record<string, string>[]) {
      const r = await post(gw, `/members/${A}/drain`, headers);
      expect(r.status).toBe(403);
    }
    const get = await fetch(`http://localhost/members/${A}/drain`, { unix: sockets.get(gw)! } as RequestInit);
    expect([get.status, get.headers.get("allow")]).toEqual([405, "POST"]);
    expect((await post(gw, `/members/${A}/drain?close-idle=maybe`)).status).toBe(400);
    expect((await rows(gw)).map((m) => m.drained)).toEqual([false, false]);
    // Everything else still takes GET and HEAD only.
    expect((await post(gw, "/status")).status).toBe(405);
  });
});
