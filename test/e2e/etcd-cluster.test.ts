/**
 * The compiled gateway in front of a real 3-member etcd cluster (Debian's etcd 3.4): etcdctl through
 * it, a watch surviving the loss of its member, failover for new connections, and dead endpoints
 * (refusing and blackholed) that must not slow new connections beyond the connect timeout.
 *
 * One cluster serves the whole file; a test that kills a member gets it restarted in afterEach.
 * Times are the gateway's own (its log timestamps) or a client's own span, never a fixed wait:
 * a test waits for what it expects and then checks how long the gateway took against docs/selection-and-health.md.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { startBlackhole, type Blackhole } from "../support/blackhole.ts";
import { etcdctl, startCluster, type Cluster } from "../support/cluster.ts";
import { memberBehind, useSharedCluster, viaGateway } from "../support/etcd.ts";
import { startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";
import { which } from "../support/process.ts";

// One cluster for the file; what a test kills is brought back before the next one.
const shared = useSharedCluster();
let cluster: Cluster;
beforeEach(() => {
  cluster = shared();
});

afterEach(stopAllGateways);

const gatewayMember = (gw: GatewayProcess) => memberBehind(cluster, gw);

/**
 * Makes sure member `i` is not the leader (moves leadership to another member when it is), so
 * killing it does not leave the cluster leaderless for an election, which cancels watches that
 * require a leader (etcdctl's do) and fails linearizable reads.
 */
async function ensureNotLeader(i: number): Promise<void> {
  if ((await cluster.leaderIndex()) !== i) return;
  const target = cluster.members.findIndex((_, j) => j !== i && cluster.isRunning(j));
  const hexId = BigInt(await cluster.memberIdOf(target)).toString(16);
  const r = await etcdctl(["move-leader", hexId], { endpoints: cluster.members[i]!.endpoint });
  expect(r.code, `move-leader ${hexId}: ${r.stderr}`).toBe(0);
  await waitFor(`leadership to leave ${cluster.members[i]!.name}`, async () => (await cluster.leaderIndex()) !== i, 10_000, 100);
}

/** `etcdctl put` straight to a running member other than `except`, retried while the cluster settles. */
async function putDirect(key: string, value: string, except: number): Promise<void> {
  const others = cluster.members.filter((_, j) => j !== except && cluster.isRunning(j)).map((m) => m.endpoint);
  let last = "";
  const deadline = performance.now() + 10_000;
  while (performance.now() < deadline) {
    const r = await etcdctl(["put", key, value], { endpoints: others.join(","), dialTimeout: "1s", commandTimeout: "2s" });
    if (r.code === 0) return;
    last = r.stderr;
    await sleep(100);
  }
  throw new Error(`put ${key}=${value} to ${others.join(",")} kept failing: ${last}`);
}

/** One `GET path` over a fresh TCP connection to `port`; resolves to the whole HTTP reply. */
function httpGet(port: number, path: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port });
    let reply = "";
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no complete ${path} reply within ${timeoutMs} ms (got ${JSON.stringify(reply)})`));
    }, timeoutMs);
    s.on("connect", () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    s.on("data", (c: Buffer) => (reply += c.toString()));
    s.on("end", () => {
      clearTimeout(timer);
      s.destroy();
      resolve(reply);
    });
    s.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/**
 * The longest the gateway may take with its default health flags to mark a member in use that was
 * killed (docs/selection-and-health.md, "Detection bounds"): --health-fall (3) checks in a row fail, each started at most
 * --health-interval (2 s, +10 % jitter) after the previous one ended and each lasting at most
 * --health-timeout (1 s). That is a hung member's bound; a killed one refuses at once, so it can
 * only be quicker (measured 4.0-6.2 s in 30 kills with one or two CPU hogs on two cores).
 */
const DEACTIVATION_BOUND_MS = 3 * (2000 * 1.1 + 1000);

/**
 * Waits until the gateway has checked every member once (`alive` in /status), so that the member
 * a test kills next has passed its first check and needs --health-fall failures: the same path on
 * every run, instead of a first check that falls before or after the kill by chance.
 */
async function everyMemberChecked(gw: GatewayProcess): Promise<void> {
  await waitFor("a first health check of every member", async () => {
    const res = await fetch(`${gw.adminURL}/status`, { headers: { connection: "close" } });
    const members = ((await res.json()) as { members: { alive: boolean | null }[] }).members;
    return members.length === cluster.members.length && members.every((m) => m.alive === true);
  }, 10_000, 50);
}

/**
 * Waits for the gateway's `deactivated endpoint` line for `address`, and resolves to the gateway's
 * own span: the line's timestamp minus `since` (epoch ms, taken just before the kill).
 */
async function deactivatedSince(gw: GatewayProcess, address: string, since: number): Promise<number> {
  const line = await waitFor(`"deactivated endpoint" for ${address}`, () => gw.records().find((r) => r.msg === "deactivated endpoint" && r.address === address), DEACTIVATION_BOUND_MS + 10_000, 50);
  return Date.parse(String(line.ts)) - since;
}

describe("gateway in front of a 3-member etcd cluster", () => {
  test("etcdctl put then get through the gateway returns the value", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`]);
    const put = await viaGateway(gw, ["put", "e2e/greeting", "hello through the gateway"]);
    expect(put.code, put.stderr).toBe(0);
    expect(put.stdout.trim()).toBe("OK");
    const get = await viaGateway(gw, ["get", "e2e/greeting", "--print-value-only"]);
    expect(get.code, get.stderr).toBe(0);
    expect(get.stdout.trim()).toBe("hello through the gateway");
  });

  test("a watch through the gateway keeps receiving events after the member it is connected to is killed", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`], { admin: true });
    await everyMemberChecked(gw);
    const victim = await gatewayMember(gw);
    await ensureNotLeader(victim);
    const key = `e2e/watch-${Date.now()}`;

    // Watch from the revision after the current one, so no event is missed while the watch is set up.
    const start = await etcdctl(["put", key, "0", "-w", "json"], { endpoints: cluster.members[victim]!.endpoint });
    expect(start.code, start.stderr).toBe(0);
    const rev = Number(/"revision":(\d+)/.exec(start.stdout)?.[1]);
    expect(rev).toBeGreaterThan(0);

    const watch = Bun.spawn(
      [which("etcdctl"), `--endpoints=127.0.0.1:${gw.port}`, "--dial-timeout=2s", "watch", key, `--rev=${rev + 1}`],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ETCDCTL_API: "3" } },
    );
    let out = "";
    let err = "";
    void (async () => {
      const decoder = new TextDecoder();
      for await (const c of watch.stdout) out += decoder.decode(c, { stream: true });
    })();
    void (async () => {
      const decoder = new TextDecoder();
      for await (const c of watch.stderr) err += decoder.decode(c, { stream: true });
    })();
    // etcdctl prints each event as three lines: PUT, key, value.
    const seen = (v: string) => out.includes(`PUT\n${key}\n${v}\n`);
    const state = () => `watch stdout:\n${out}\nwatch stderr:\n${err}\nexit: ${watch.exitCode ?? watch.signalCode ?? "running"}`;

    /** Waits for events `values`, failing with what the watch printed so far. */
    const waitEvents = async (what: string, values: string[], timeoutMs: number) => {
      try {
        await waitFor(what, () => values.every(seen), timeoutMs, 50);
      } catch (e) {
        throw new Error(`${String(e)}\n${state()}`);
      }
    };

    try {
      await putDirect(key, "1", victim);
      await waitEvents("the first event", ["1"], 5_000);

      const killedAt = Date.now();
      await cluster.kill(victim, "SIGKILL");
      for (const v of ["2", "3", "4", "5"]) await putDirect(key, v, victim);
      await waitEvents("events 2..5 after the kill", ["2", "3", "4", "5"], 15_000);
      expect(watch.exitCode, state()).toBeNull();
      // The health checks mark the killed member down within the documented bound (docs/selection-and-health.md), by the gateway's clock.
      expect(await deactivatedSince(gw, cluster.members[victim]!.endpoint, killedAt)).toBeLessThanOrEqual(DEACTIVATION_BOUND_MS);
    } finally {
      watch.kill("SIGKILL");
      await watch.exited;
    }
  }, 60_000);

  test("after the member the gateway uses is killed, 20 new etcdctl gets in a row all succeed and the gateway logs it deactivated", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`], { admin: true });
    await everyMemberChecked(gw);
    const put = await viaGateway(gw, ["put", "e2e/failover", "still here"]);
    expect(put.code, put.stderr).toBe(0);
    const victim = await gatewayMember(gw);
    // A leaderless moment would fail linearizable gets for reasons that are not the gateway's.
    await ensureNotLeader(victim);
    const killedAt = Date.now();
    await cluster.kill(victim, "SIGKILL");

    const failures: string[] = [];
    for (let n = 1; n <= 20; n++) {
      const r = await viaGateway(gw, ["get", "e2e/failover", "--print-value-only"]);
      if (r.code !== 0 || r.stdout.trim() !== "still here") failures.push(`get #${n}: code ${r.code}, stdout ${JSON.stringify(r.stdout)}, stderr ${r.stderr.trim()}`);
    }
    expect(failures).toEqual([]);

    // The health checks mark the killed member down within the documented bound (docs/selection-and-health.md), by the gateway's clock.
    expect(await deactivatedSince(gw, cluster.members[victim]!.endpoint, killedAt)).toBeLessThanOrEqual(DEACTIVATION_BOUND_MS);
  }, 60_000);

  describe("with a refusing and a blackholed endpoint listed before the members", () => {
    let blackhole: Blackhole | undefined;
    afterEach(async () => {
      await blackhole?.close();
      blackhole = undefined;
    });

    test("round-robin serves each new connection within --connect-timeout plus a little", async () => {
      blackhole = await startBlackhole();
      const refusing = freePort();
      const dead = [`127.0.0.1:${refusing}`, `127.0.0.1:${blackhole.port}`];
      const gw = await startGatewayProcess([
        "--policy=round-robin",
        "--connect-timeout=500ms",
        `--endpoints=${[...dead, cluster.endpoints].join(",")}`,
      ]);

      // Raw HTTP, not etcdctl: this times the gateway, not a Go process starting. GET /version, which
      // a member answers from memory: GET /health is a raft round on etcd 3.4, whose time on a busy
      // disk is the cluster's, not the gateway's.
      const boundMs = 500 + 700;
      const times: number[] = [];
      for (let n = 1; n <= 10; n++) {
        const t0 = performance.now();
        const reply = await httpGet(gw.port, "/version", 5_000);
        times.push(Math.round(performance.now() - t0));
        expect(reply, `reply #${n}`).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*"etcdserver":"3\./);
      }
      expect(times.filter((t) => t >= boundMs), `times (ms): ${times.join(", ")}`).toEqual([]);

      // Both dead endpoints were dropped, each for its own reason. Waited for: their first checks fall
      // anywhere in the first --health-interval (2 s) and the blackhole's lasts --health-timeout (1 s),
      // while the ten requests above may be done in less.
      const reasonFor = (addr: string) =>
        waitFor(`"deactivated endpoint" for ${addr}`, () => gw.records().find((r) => r.msg === "deactivated endpoint" && r.address === addr)?.error, 10_000, 50);
      expect(String(await reasonFor(dead[0]!))).toMatch(/refused/i);
      expect(String(await reasonFor(dead[1]!))).toMatch(/timeout/i);
    }, 30_000);
  });
});
