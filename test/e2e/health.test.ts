/**
 * Health checks against real etcd members (Debian's 3.4, which has no /readyz, so the `etcd` check
 * combines /health with maintenance status): quorum loss, a stopped member, a learner, TLS members
 * with client-cert auth, and how each policy spreads connections over real members.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCluster, type Cluster } from "../support/cluster.ts";
import { makeCerts, type Certs } from "../support/certs.ts";
import { memberBehind, useSharedCluster, viaGateway } from "../support/etcd.ts";
import { startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { rssKiB, sleep, waitFor } from "../support/net.ts";

/**
 * Fast checks keep the tests short: liveness every 500 ms, a full check (leader, learner, alarm)
 * every second, down within 3 × 500 ms of the first failing check. The timeout stays generous: on
 * a loaded CI machine a 400 ms timeout turned a learner's verdict into "check timeout".
 */
const FAST = ["--health-interval=500ms", "--health-status-interval=1s", "--health-timeout=2s"];

const records = (gw: GatewayProcess, msg: string, address?: string) =>
  gw.records().filter((r) => r.msg === msg && (address === undefined || r.address === address));

/** Sends one HTTP request over `s` (kept alive) and resolves to the reply head and body. */
function httpOver(s: Socket, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = "";
    const onData = (c: Buffer) => {
      reply += c.toString();
      const headEnd = reply.indexOf("\r\n\r\n");
      const length = /content-length: *(\d+)/i.exec(reply.slice(0, Math.max(headEnd, 0)))?.[1];
      if (headEnd >= 0 && length !== undefined && reply.length >= headEnd + 4 + Number(length)) {
        s.off("data", onData);
        resolve(reply);
      }
    };
    s.on("data", onData);
    s.once("error", reject);
    s.write(request);
  });
}

const STATUS = 'POST /v3/maintenance/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';

// Every gateway a test starts is stopped after it.
afterEach(stopAllGateways);

describe("against a plain 3-member cluster", () => {
  const shared = useSharedCluster();
  let cluster: Cluster;
  beforeEach(() => {
    cluster = shared();
  });

  test("with 2 of 3 members stopped, the survivor is marked down within the status interval and fall × interval, the gateway fails open, and all come back up after rise checks", async () => {
    const put = await cluster.etcdctl(["put", "health/quorum", "kept"]);
    expect(put.code, put.stderr).toBe(0);
    // `ordered` sends clients to member 0, the survivor, so a connection to it is held while it goes down.
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, "--policy=ordered", ...FAST]);
    const survivor = cluster.members[0]!.endpoint;
    await sleep(1000); // every member has passed its first check
    expect(records(gw, "deactivated endpoint")).toHaveLength(0);
    const held = await new Promise<Socket>((r) => {
      const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
    });
    let heldClosed = false;
    held.on("error", () => {}).on("close", () => (heldClosed = true));
    expect(await httpOver(held, STATUS)).toContain("200 OK");
    expect(await memberBehind(cluster, gw)).toBe(0);
    const t0 = performance.now();
    await Promise.all([cluster.kill(1), cluster.kill(2)]);
    const down = await waitFor("the survivor marked down", () => records(gw, "deactivated endpoint", survivor)[0], 8000, 50);
    const tookMs = performance.now() - t0;
    console.log(`survivor marked down ${tookMs.toFixed(0)} ms after losing quorum: ${String(down.error)}`);
    expect(down).toMatchObject({ level: "warn", from: "up", to: "down" });
    // etcd needs an election timeout (500 ms here) to notice it has no leader; the next full check
    // (at most 1 s away) sees it, and every check is full from then on: 3 failing checks at 500 ms.
    expect(tookMs).toBeLessThan(1000 + 3 * 500 + 500 + 2000);
    // Fail open: nothing is usable, the gateway still forwards to the best candidate.
    const serializable = await viaGateway(gw, ["get", "health/quorum", "--print-value-only", "--consistency=s"]);
    expect(serializable.code, serializable.stderr).toBe(0);
    expect(serializable.stdout.trim()).toBe("kept");
    // ...and clients see etcd's own verdict, not a bare reset.
    const s = await new Promise<Socket>((r) => {
      const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
    });
    expect(await httpOver(s, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")).toContain('"health":"false"');
    s.destroy();
    // No usable member was left to take the survivor's clients: its connections stay open
    // (--close-on-member-down fails open), and the one held since before the outage still answers.
    expect(records(gw, "closed connections to a member that went down")).toEqual([]);
    expect(heldClosed).toBe(false);
    expect(await httpOver(held, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")).toContain('"health":"false"');
    held.destroy();
    await Promise.all([cluster.restart(1), cluster.restart(2)]);
    for (const m of cluster.members) await waitFor(`${m.endpoint} up`, () => records(gw, "activated", m.endpoint).length > 0 || !records(gw, "deactivated endpoint", m.endpoint).length, 15_000, 100);
    await waitFor("the survivor activated", () => records(gw, "activated", survivor)[0], 15_000, 100);
    expect(gw.proc.exitCode).toBeNull();
  });

  test("clients cannot eject a healthy member: garbage that etcd closes, and connects reset at once, are not held against it", async () => {
    // Found in 514d668: three connections sending garbage (etcd closes them at once) or three that
    // connect and reset ejected the member, and the ejection reset every other client's connections.
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, "--policy=ordered", "--health-fall=3", ...FAST]);
    const held = await new Promise<Socket>((r) => {
      const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
    });
    let heldClosed = false;
    held.on("error", () => {}).on("close", () => (heldClosed = true));
    expect(await httpOver(held, STATUS)).toContain("200 OK");
    for (let i = 0; i < 10; i++) {
      await new Promise<void>((r) => {
        const c = connect({ host: "127.0.0.1", port: gw.port }, () => c.write("XXXXXXXXXXXXXXXXXXXXXXXX\r\n"));
        c.on("error", () => {}).on("close", () => r());
        c.on("data", () => {});
      });
      await new Promise<void>((r) => {
        const c = connect({ host: "127.0.0.1", port: gw.port }, () => c.resetAndDestroy());
        c.on("error", () => {}).on("close", () => r());
      });
    }
    await sleep(300);
    expect(records(gw, "deactivated endpoint")).toEqual([]);
    expect(heldClosed).toBe(false);
    expect(await httpOver(held, STATUS)).toContain("200 OK");
    held.destroy();
  });

  test("a stopped (SIGSTOP) member in use is marked down, its connections are reset, new clients go elsewhere; SIGCONT brings it back", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, ...FAST]);
    const victim = await memberBehind(cluster, gw);
    const address = cluster.members[victim]!.endpoint;
    // A client connection through the gateway, kept open, to the victim.
    const held = await new Promise<Socket>((r) => {
      const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
    });
    expect(await httpOver(held, STATUS)).toContain("200 OK");
    const heldClosed = new Promise<string>((r) => {
      held.once("error", (e: NodeJS.ErrnoException) => r(e.code ?? e.message));
      held.once("close", () => r("closed"));
    });
    process.kill(cluster.members[victim]!.pid, "SIGSTOP");
    const down = await waitFor("the stopped member marked down", () => records(gw, "deactivated endpoint", address)[0], 8000, 50);
    expect(down).toMatchObject({ to: "down" });
    expect(String(down.error)).toMatch(/timeout/);
    // Reset by the gateway (Bun's node:net reports an idle socket's RST as a plain close).
    expect(["ECONNRESET", "closed"]).toContain(await heldClosed);
    // The reset can reach the client before the gateway's log line reaches this test's reader.
    const closedLog = await waitFor("the close-on-member-down log line", () => records(gw, "closed connections to a member that went down", address)[0], 5000, 50);
    expect(closedLog).toMatchObject({ connections: 1 });
    for (let n = 0; n < 5; n++) {
      const r = await viaGateway(gw, ["get", "health/any", "--consistency=s"]);
      expect(r.code, r.stderr).toBe(0);
    }
    expect(await memberBehind(cluster, gw)).not.toBe(victim);
    process.kill(cluster.members[victim]!.pid, "SIGCONT");
    const up = await waitFor("the member activated after SIGCONT", () => records(gw, "activated", address)[0], 8000, 50);
    expect(up).toMatchObject({ from: "down", to: "up" });
  });

  describe("policies spread long-lived connections over real members as promised", () => {
    const held: Socket[] = [];
    afterEach(() => {
      for (const s of held.splice(0)) s.destroy();
    });
    /** Established connections of the gateway process to each member, read from the kernel (ss -p). */
    const perMember = (pid: number) =>
      cluster.members.slice(0, 3).map((m) => {
        const out = Bun.spawnSync(["ss", "-Htnp", "state", "established", `( dport = :${m.clientPort} )`]).stdout.toString();
        return out.split("\n").filter((l) => l.includes(`pid=${pid},`)).length;
      });
    const cases: [string, (counts: number[]) => void][] = [
      ["sticky", (c) => expect(c.filter((n) => n > 0)).toEqual([300])],
      ["round-robin", (c) => expect(c).toEqual([100, 100, 100])],
      ["least-connections", (c) => c.forEach((n) => expect(Math.abs(n - 100)).toBeLessThanOrEqual(30))],
      ["ordered", (c) => expect(c).toEqual([300, 0, 0])],
    ];
    for (const [policy, promise] of cases) {
      test(policy, async () => {
        const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--policy=${policy}`]);
        const pid = gw.proc.pid;
        for (let i = 0; i < 300; i++) {
          held.push(
            await new Promise<Socket>((r, j) => {
              const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
              c.once("error", j);
            }),
          );
        }
        // The gateway's own connections to members: 300 proxied ones (health checks use fetch, not counted
        // here once they close; wait until exactly the proxied ones remain).
        const counts = await waitFor("300 connections established to members", () => {
          const now = perMember(pid);
          return now.reduce((a, b) => a + b, 0) === 300 ? now : undefined;
        }, 10_000);
        console.log(`${policy}: ${counts.join("/")}`);
        promise(counts);
      });
    }
  });
  test("a learner is marked down under the etcd check and gets no clients", async () => {
    // Last in this group: the learner stays a member of the cluster until the file ends.
    const learner = await cluster.addLearner();
    {
      const address = cluster.members[learner]!.endpoint;
      const endpoints = [...cluster.members.map((m) => m.endpoint)].join(",");
      const gw = await startGatewayProcess([`--endpoints=${endpoints}`, "--policy=round-robin", ...FAST]);
      const down = await waitFor("the learner marked down", () => records(gw, "deactivated endpoint", address)[0], 5000, 50);
      expect(String(down.error)).toContain("learner");
      const learnerId = await cluster.memberIdOf(learner);
      for (let n = 0; n < 12; n++) {
        const s = await new Promise<Socket>((r) => {
          const c = connect({ host: "127.0.0.1", port: gw.port }, () => r(c));
        });
        const reply = await httpOver(s, STATUS);
        s.destroy();
        expect(reply).toContain("200 OK");
        expect(reply).not.toContain(`"member_id":"${learnerId}"`);
      }
    }
  });
});

describe("against a TLS cluster with client-cert auth", () => {
  let cluster: Cluster;
  let certs: Certs;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "etcd-gateway-health-tls-"));
    certs = await makeCerts(dir);
    cluster = await startCluster({
      size: 3,
      tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true, clientCert: certs.client, clientKey: certs.clientKey },
    });
  }, 30_000);
  afterEach(stopAllGateways);
  afterAll(async () => {
    await stopAllGateways();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  /** A gateway whose health checks present the client certificate and trust `ca`. */
  const checkedTrusting = (ca: string) =>
    startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--health-cacert=${ca}`, `--health-cert=${certs.client}`, `--health-key=${certs.clientKey}`, ...FAST]);

  test("members are checked with --health-cert/--health-key and judged up; etcdctl with its own certificate works through the gateway", async () => {
    const gw = await checkedTrusting(certs.ca);
    await sleep(1500);
    expect(records(gw, "deactivated endpoint")).toEqual([]);
    const tls = { ca: certs.ca, cert: certs.client, key: certs.clientKey };
    const put = await viaGateway(gw, ["put", "tls/key", "secret"], tls);
    expect(put.code, put.stderr).toBe(0);
    const get = await viaGateway(gw, ["get", "tls/key", "--print-value-only"], tls);
    expect(get.stdout.trim()).toBe("secret");
  });

  test("with the wrong CA every member is judged down with a reason naming the certificate problem", async () => {
    const gw = await checkedTrusting(certs.otherCa);
    for (const m of cluster.members) {
      const down = await waitFor(`${m.endpoint} down`, () => records(gw, "deactivated endpoint", m.endpoint)[0], 5000, 50);
      console.log(`wrong CA: ${String(down.error)}`);
      expect(String(down.error)).toMatch(/certificate|verify|issuer|self.signed/i);
    }
  });

  test("without a client certificate the members refuse the checks' TLS with an alert: alive, judged by liveness only, the flags that give the full check logged once per member", async () => {
    // Before issue 19 every member was judged down here: a check that fails on every member the
    // same way is the check's fault, and a member that sends a TLS alert is alive.
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--health-cacert=${certs.ca}`, ...FAST]);
    for (const m of cluster.members) {
      const note = await waitFor(`${m.endpoint} judged by liveness`, () => records(gw, "member needs a client certificate: judged by liveness only", m.endpoint)[0], 5000, 50);
      console.log(`no client cert: ${String(note.error)}`);
      expect(String(note.error)).toMatch(/remote error: tls: (bad certificate|certificate required|handshake failure)/);
      expect(String(note.hint)).toContain("--health-cert");
    }
    await sleep(1500); // several more checks of every member
    expect(records(gw, "deactivated endpoint")).toEqual([]);
    for (const m of cluster.members) expect(records(gw, "member needs a client certificate: judged by liveness only", m.endpoint)).toHaveLength(1);
  });
});

describe("--health-fall and --health-rise are counted exactly, in the binary", () => {
  test("a scripted /health server: down at the third failing answer in a row, up at the second passing one", async () => {
    // Each answer the member gives, in order; then it stays healthy.
    const script = ["ok", "bad", "bad", "bad", "ok", "bad", "ok", "ok"];
    const seen: number[] = [];
    const member = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req) {
        if (new URL(req.url).pathname !== "/health") return new Response("no", { status: 404 });
        seen.push(Date.now());
        const ok = (script[seen.length - 1] ?? "ok") === "ok";
        return new Response(JSON.stringify({ health: ok ? "true" : "false" }), { status: ok ? 200 : 503 });
      },
    });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, "--health-check=health", "--health-interval=400ms", "--health-fall=3", "--health-rise=2"]);
      const down = await waitFor("deactivated", () => records(gw, "deactivated endpoint")[0], 10_000, 20);
      const up = await waitFor("activated", () => records(gw, "activated")[0], 10_000, 20);
      await waitFor("one more check", () => seen.length >= 9, 5000, 20);
      // The answer after which each transition was logged (checks are at least 90 ms apart).
      const after = (r: Record<string, unknown>) => seen.filter((t) => t <= Date.parse(String(r.ts))).length;
      expect(after(down)).toBe(4); // ok, then the third "bad" in a row
      expect(after(up)).toBe(8); // "ok, bad" does not count; "ok, ok" does
      expect(records(gw, "deactivated endpoint")).toHaveLength(1);
      expect(records(gw, "activated")).toHaveLength(1);
    } finally {
      member.stop(true);
    }
  });
});

describe("a member's replies are read bounded", () => {
  test("a /health answer with an endless body: the check reads at most 64 KiB, fails, and the gateway's memory stays flat", async () => {
    // Found in 514d668: a member answering with an endless body took the gateway to 1 GB RSS in 1 s.
    const chunk = new Uint8Array(64 * 1024).fill(120);
    let served = 0;
    const member = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => {
        served++;
        return new Response(new ReadableStream({ pull: (c) => c.enqueue(chunk) }), { status: 200 });
      },
    });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, "--health-check=health", "--health-interval=200ms", "--health-fall=1"]);
      const before = rssKiB(gw.proc.pid);
      const down = await waitFor("the member marked down", () => records(gw, "deactivated endpoint")[0], 5000, 20);
      expect(String(down.error)).toMatch(/^Get "http:\/\/127\.0\.0\.1:\d+\/health\?serializable=true": 200 OK: x{100}/);
      await waitFor("several more checks", () => served >= 5, 5000, 20);
      expect(rssKiB(gw.proc.pid) - before).toBeLessThan(64 * 1024);
    } finally {
      member.stop(true);
    }
  });
});
