/**
 * Issue 19: the default `etcd` health check with drop-in flags (`--endpoints=127.0.0.1:P,...`, no
 * scheme, no TLS flags, as for `etcd gateway start`) against clusters set up the way operators run
 * them, each a real etcd cluster: the JSON API off, https-only members, client-certificate members,
 * a proxy in the gateway's environment, a NOSPACE alarm raised by one member, and a member of
 * another cluster in the endpoint list. In each, no healthy member may be judged down, clients
 * must work through the gateway, and a hung (SIGSTOP) member in use must still move clients.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCluster, type ClientTLS, type Cluster } from "../support/cluster.ts";
import { makeCerts, type Certs } from "../support/certs.ts";
import { clusterIdHex, memberBehind, restoreCluster, resumeStopped, useSharedCluster, viaGateway } from "../support/etcd.ts";
import { BINARY, promSamples, startGatewayProcess, stopAllGateways, withEnv, type GatewayProcess } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { runToEnd } from "../support/process.ts";

/**
 * Fast checks: liveness of the member in use every 500 ms, a full check every second, and spares
 * checked every second too, so every member is judged several times within a few seconds.
 */
const FAST = ["--health-interval=500ms", "--health-status-interval=1s", "--health-timeout=1s", "--health-spare-interval=1s"];
/** A stopped member in use is down within fall × (interval + timeout) = 3 × 1.5 s, plus slack. */
const STOP_BOUND_MS = 3 * (500 + 1000) + 2000;
/** Per test: a gateway, several check rounds, a stop and its verdict, etcdctl runs (`bun test` alone would allow 5 s). */
const TEST_TIMEOUT_MS = 40_000;
/** Maintenance status over the JSON API, on a connection the member closes after its answer. */
const STATUS = "POST /v3/maintenance/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

// The shared plain 3-member cluster (the proxy and the other-cluster setups); restored after every test.
const plain = useSharedCluster();
// Every gateway a test starts is stopped after it.
afterEach(stopAllGateways);

const records = (gw: GatewayProcess, msg: string, address?: string) =>
  gw.records().filter((r) => r.msg === msg && (address === undefined || r.address === address));
const endpointsOf = (c: Cluster) => c.members.map((m) => m.endpoint);
/** `deactivated endpoint` lines for members of `c`. */
const downOf = (gw: GatewayProcess, c: Cluster) => records(gw, "deactivated endpoint").filter((r) => endpointsOf(c).includes(String(r.address)));
const hexOf = (decimal: string) => BigInt(decimal).toString(16);

/** A gateway with the admin endpoint on (for `/readyz`, `/status`, `/metrics`). */
const gateway = (args: string[], env?: Record<string, string | undefined>) => startGatewayProcess([...args, ...FAST], { admin: true, env });

async function admin(gw: GatewayProcess, path: string): Promise<Response> {
  return await fetch(`${gw.adminURL}${path}`, { signal: AbortSignal.timeout(3000), headers: { connection: "close" } });
}

interface StatusMember {
  endpoint: string;
  state: string;
  alive?: boolean | null;
  clusterId?: string | null;
}
interface Status {
  members: StatusMember[];
  cluster?: { id: string | null; pinned: boolean; alarms: { alarm: string; member: string }[] };
}
const status = async (gw: GatewayProcess) => (await (await admin(gw, "/status")).json()) as Status;

/** The samples of `name` whose labels include every one of `labels`. */
async function samples(gw: GatewayProcess, name: string, ...labels: string[]): Promise<number[]> {
  const text = await (await admin(gw, "/metrics")).text();
  return [...promSamples(text)].filter((s) => s.name === name && labels.every((l) => s.labels.includes(l))).map((s) => s.value);
}

/** Waits until the gateway has run `n` health checks (of any depth) of each of `addresses`. */
async function waitChecked(gw: GatewayProcess, addresses: string[], n = 3): Promise<void> {
  await waitFor(`${n} health checks of each of ${addresses.join(", ")}`, async () => {
    for (const a of addresses) {
      if (!((await gw.metric("etcd_gateway_health_check_duration_seconds_count", `endpoint="${a}"`)) >= n)) return false;
    }
    return true;
  }, 10_000, 100);
}

/**
 * The contract of every setup: after several checks of every member none was judged down,
 * `/readyz` answers 200, etcdctl works through the gateway (a put unless `write` is false, then a
 * get of `key`), and the gateway still runs.
 */
async function expectJudgedRight(gw: GatewayProcess, cluster: Cluster, key: string, opts: { tls?: ClientTLS; write?: boolean } = {}): Promise<void> {
  await waitChecked(gw, endpointsOf(cluster));
  expect(downOf(gw, cluster)).toEqual([]);
  expect((await admin(gw, "/readyz")).status).toBe(200);
  if (opts.write !== false) {
    const put = await viaGateway(gw, ["put", key, "through-the-gateway"], opts.tls);
    expect(put.code, put.stderr).toBe(0);
  }
  const get = await viaGateway(gw, ["get", key, "--print-value-only"], opts.tls);
  expect(get.code, get.stderr).toBe(0);
  expect(get.stdout.trim()).not.toBe("");
  expect(gw.proc.exitCode).toBeNull();
}

/** `cluster ID learned` names a majority of `cluster`'s members, and nothing else, in `from`. */
function expectLearnedFrom(learned: Record<string, unknown>, cluster: Cluster): void {
  const from = learned.from;
  expect(Array.isArray(from), `from in ${JSON.stringify(learned)}`).toBe(true);
  expect((from as unknown[]).length).toBeGreaterThanOrEqual(Math.floor(cluster.members.length / 2) + 1);
  for (const a of from as unknown[]) expect(endpointsOf(cluster)).toContain(String(a));
}

/** `msg` logged exactly once for each member of `cluster`; resolves with those records. */
function expectOncePerMember(gw: GatewayProcess, cluster: Cluster, msg: string) {
  return cluster.members.map((m) => {
    const found = records(gw, msg, m.endpoint);
    expect(found.map((r) => r.address), `"${msg}" for ${m.endpoint}`).toEqual([m.endpoint]);
    return found[0]!;
  });
}

/**
 * SIGSTOPs the member clients reach through the gateway and asserts it is marked down within
 * STOP_BOUND_MS, after which 6 of 6 new etcdctl requests through the gateway succeed on another
 * member of `cluster`. The member stays stopped (the describe's afterEach continues it).
 */
async function expectStopMovesClients(gw: GatewayProcess, cluster: Cluster, tls?: ClientTLS): Promise<void> {
  await waitChecked(gw, endpointsOf(cluster), 2);
  expect(downOf(gw, cluster)).toEqual([]);
  // Idle client connections held through the gateway, one more than there are members: under every
  // policy the member clients reach then carries clients, so it is checked as the member in use.
  const held = await holdConnections(gw, cluster.members.length + 1);
  try {
    await stopMemberInUse(gw, cluster, tls);
  } finally {
    for (const s of held) s.destroy();
  }
}

/** Opens `count` client connections through the gateway and resolves once the gateway has dialled a member for each. */
async function holdConnections(gw: GatewayProcess, count: number): Promise<Socket[]> {
  const held = await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<Socket>((resolve, reject) => {
        const c = connect({ host: "127.0.0.1", port: gw.port }, () => resolve(c));
        c.once("error", reject);
      }),
    ),
  );
  // The reset a member that goes down gets (--close-on-member-down) is expected.
  for (const s of held) s.on("error", () => {});
  await waitFor(`${count} held connections proxied`, async () => (await gw.metric("etcd_gateway_member_connections")) >= count, 5000, 50);
  return held;
}

/** The body of expectStopMovesClients: stop the member behind the gateway, time its verdict, move clients. */
async function stopMemberInUse(gw: GatewayProcess, cluster: Cluster, tls: ClientTLS | undefined): Promise<void> {
  const victim = await memberBehind(cluster, gw, tls);
  const address = cluster.members[victim]!.endpoint;
  const t0 = performance.now();
  process.kill(cluster.members[victim]!.pid, "SIGSTOP");
  const down = await waitFor(`${address} (stopped) marked down`, () => records(gw, "deactivated endpoint", address)[0], STOP_BOUND_MS, 50);
  const tookMs = performance.now() - t0;
  console.log(`stopped member ${address} marked down ${tookMs.toFixed(0)} ms after SIGSTOP: ${String(down.error)}`);
  expect(tookMs).toBeLessThan(STOP_BOUND_MS);
  expect(down).toMatchObject({ level: "warn", from: "up" });
  for (let n = 0; n < 6; n++) {
    const r = await viaGateway(gw, ["endpoint", "status", "-w", "json"], tls);
    expect(r.code, `request ${n + 1} of 6 after the stop: ${r.stderr}`).toBe(0);
    const id = /"member_id":(\d+)/.exec(r.stdout)?.[1] ?? "none";
    const reached = await cluster.indexOfId(id);
    expect(reached, `request ${n + 1} of 6 reached member ID ${id}`).toBeGreaterThanOrEqual(0);
    expect(reached).not.toBe(victim);
  }
  expect(gw.proc.exitCode).toBeNull();
}

describe("members with the JSON API off (--enable-grpc-gateway=false)", () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({ size: 3, extraArgs: () => ["--enable-grpc-gateway=false"] });
  }, 30_000);
  afterEach(async () => {
    await stopAllGateways();
    await restoreCluster(cluster);
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  test("drop-in flags: no member is judged down, their status is checked over gRPC (logged once per member), clients work", async () => {
    const gw = await gateway([`--endpoints=${cluster.endpoints}`]);
    await expectJudgedRight(gw, cluster, "deployments/json-off");
    expectOncePerMember(gw, cluster, "member has the JSON API off: status checked over gRPC");
    const learned = records(gw, "cluster ID learned");
    expect(learned).toHaveLength(1);
    expect(learned[0]).toMatchObject({ "cluster-id": await clusterIdHex(cluster) });
    expectLearnedFrom(learned[0]!, cluster);
  }, TEST_TIMEOUT_MS);

  test("a stopped (SIGSTOP) member in use is marked down within the bound and clients move", async () => {
    const gw = await gateway([`--endpoints=${cluster.endpoints}`]);
    await expectStopMovesClients(gw, cluster);
  }, TEST_TIMEOUT_MS);
});

/** A describe's TLS cluster: certificates in a fresh dir, the cluster, and cleanup. */
function useTLSCluster(clientCertAuth: boolean): { cluster: () => Cluster; certs: () => Certs } {
  let cluster: Cluster | undefined;
  let certs: Certs | undefined;
  let dir: string | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "etcd-gateway-deployments-"));
    certs = await makeCerts(join(dir, "certs"));
    cluster = await startCluster({
      size: 3,
      // Without client-cert auth no trusted CA either: etcd asks for client certificates whenever it has one.
      tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth, trustedCA: clientCertAuth, clientCert: certs.client, clientKey: certs.clientKey },
    });
  }, 30_000);
  afterEach(async () => {
    await stopAllGateways();
    if (cluster) await restoreCluster(cluster);
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return { cluster: () => cluster!, certs: () => certs! };
}

describe("https-only members (no client certificate asked: no --trusted-ca-file), drop-in flags", () => {
  const { cluster, certs } = useTLSCluster(false);

  test("no member is judged down: checks switch to https, unverified (logged once per member with a hint); etcdctl with --cacert works", async () => {
    const c = cluster();
    const gw = await gateway([`--endpoints=${c.endpoints}`]);
    await expectJudgedRight(gw, c, "deployments/https-only", { tls: { ca: certs().ca } });
    for (const r of expectOncePerMember(gw, c, "member serves TLS: health checks use https")) {
      expect(r.verified).toBe(false);
      expect(typeof r.hint === "string" && r.hint.length > 0, `hint in ${JSON.stringify(r)}`).toBe(true);
    }
    const learned = records(gw, "cluster ID learned");
    expect(learned).toHaveLength(1);
    expect(learned[0]).toMatchObject({ "cluster-id": await clusterIdHex(c) });
    expectLearnedFrom(learned[0]!, c);
  }, TEST_TIMEOUT_MS);

  test("a stopped (SIGSTOP) member in use is marked down within the bound and clients move", async () => {
    const gw = await gateway([`--endpoints=${cluster().endpoints}`]);
    await expectStopMovesClients(gw, cluster(), { ca: certs().ca });
  }, TEST_TIMEOUT_MS);
});

describe("members that require a client certificate (--client-cert-auth)", () => {
  const { cluster, certs } = useTLSCluster(true);
  const clientTLS = (): ClientTLS => ({ ca: certs().ca, cert: certs().client, key: certs().clientKey });

  test("drop-in flags: no member is judged down, each is judged by liveness only (logged once, naming --health-cert and --health-key); etcdctl with its own certificate works", async () => {
    const c = cluster();
    const gw = await gateway([`--endpoints=${c.endpoints}`]);
    await expectJudgedRight(gw, c, "deployments/mtls", { tls: clientTLS() });
    for (const r of expectOncePerMember(gw, c, "member needs a client certificate: judged by liveness only")) {
      expect(typeof r.error === "string" && r.error.length > 0, `error in ${JSON.stringify(r)}`).toBe(true);
      expect(String(r.hint)).toContain("--health-cert");
      expect(String(r.hint)).toContain("--health-key");
    }
  }, TEST_TIMEOUT_MS);

  test("drop-in flags: a stopped (SIGSTOP) member in use, which does not even finish a TLS handshake, is marked down within the bound and clients move", async () => {
    const gw = await gateway([`--endpoints=${cluster().endpoints}`]);
    await expectStopMovesClients(gw, cluster(), clientTLS());
  }, TEST_TIMEOUT_MS);

  test("with --health-cacert/--health-cert/--health-key: full checks (no liveness-only line), the cluster ID learned, /status and /metrics say every member is alive", async () => {
    const c = cluster();
    const gw = await gateway([`--endpoints=${c.endpoints}`, `--health-cacert=${certs().ca}`, `--health-cert=${certs().client}`, `--health-key=${certs().clientKey}`]);
    await expectJudgedRight(gw, c, "deployments/mtls-full", { tls: clientTLS() });
    expect(records(gw, "member needs a client certificate: judged by liveness only")).toEqual([]);
    const id = await clusterIdHex(c);
    const learned = records(gw, "cluster ID learned");
    expect(learned).toHaveLength(1);
    expect(learned[0]!["cluster-id"]).toBe(id);
    expectLearnedFrom(learned[0]!, c);
    const s = await status(gw);
    expect(s.cluster).toMatchObject({ id, pinned: false });
    expect(s.cluster?.alarms).toEqual([]);
    for (const m of c.members) {
      expect(s.members.find((x) => x.endpoint === m.endpoint)).toMatchObject({ state: "up", alive: true, clusterId: id });
      expect(await samples(gw, "etcd_gateway_member_alive", `endpoint="${m.endpoint}"`)).toEqual([1]);
    }
  }, TEST_TIMEOUT_MS);
});

/** A "proxy": a real listener on 127.0.0.1 that counts the connections it accepts and closes them. */
function countingProxy() {
  let accepted = 0;
  const server = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        accepted++;
        s.end();
      },
      data() {},
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, accepted: () => accepted, stop: () => server.stop(true) };
}

/** Every proxy variable Go and Bun read, pointing at `url`; NO_PROXY left out, so nothing exempts loopback. */
const proxyEnv = (url: string): Record<string, string | undefined> => ({
  HTTP_PROXY: url,
  http_proxy: url,
  HTTPS_PROXY: url,
  https_proxy: url,
  ALL_PROXY: url,
  all_proxy: url,
  NO_PROXY: undefined,
  no_proxy: undefined,
});

describe("a proxy in the gateway's environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and lower-case)", () => {
  /** Starts the gateway with member-list sync too, and checks the contract and `etcd-gateway status` under `env`. */
  async function expectProxyIgnored(env: Record<string, string | undefined>, key: string): Promise<void> {
    const cluster = plain();
    const gw = await gateway([`--endpoints=${cluster.endpoints}`, "--endpoints-auto-sync-interval=1s"], env);
    await expectJudgedRight(gw, cluster, key);
    // Member-list sync ran (twice) and never failed.
    await waitFor("2 member-list syncs", async () => (await gw.metric("etcd_gateway_discovery_refreshes_total")) >= 2, 10_000, 100);
    expect(records(gw, "member list sync failed; keeping the current endpoints")).toEqual([]);
    const adminAddr = gw.adminURL!.replace("http://", "");
    const cli = await runToEnd([BINARY, "status", `--admin-addr=${adminAddr}`], { timeoutMs: 10_000, env: withEnv({ ...env, NO_COLOR: "1" }) });
    expect(cli.code, `etcd-gateway status: ${cli.stderr}`).toBe(0);
    for (const m of cluster.members) expect(cli.stdout).toContain(m.endpoint);
    expect(downOf(gw, cluster)).toEqual([]);
    expect(gw.proc.exitCode).toBeNull();
  }

  test("a listening proxy: no member is judged down, checks and member-list sync never touch the proxy, `etcd-gateway status` works", async () => {
    const proxy = countingProxy();
    try {
      await expectProxyIgnored(proxyEnv(proxy.url), "deployments/proxy");
      expect(proxy.accepted(), "connections the proxy accepted").toBe(0);
    } finally {
      proxy.stop();
    }
  }, TEST_TIMEOUT_MS);

  test("a proxy on a dead port: the same", async () => {
    await expectProxyIgnored(proxyEnv(`http://127.0.0.1:${freePort()}`), "deployments/dead-proxy");
  }, TEST_TIMEOUT_MS);
});

describe("a NOSPACE alarm raised by one member (--quota-backend-bytes=256 KiB on member 0)", () => {
  const QUOTA = 256 * 1024;
  let cluster: Cluster;
  let alarmMember: string;
  beforeAll(async () => {
    cluster = await startCluster({ size: 3, extraArgs: (i) => (i === 0 ? [`--quota-backend-bytes=${QUOTA}`] : []) });
    alarmMember = hexOf(await cluster.memberIdOf(0));
    const put = await cluster.etcdctl(["put", "deployments/nospace", "written before the alarm"]);
    if (put.code !== 0) throw new Error(`put failed: ${put.stderr}`);
    // Straight to the cluster, never through a gateway: 100 kB values until etcd refuses one.
    const t0 = performance.now();
    const value = "x".repeat(100_000);
    for (let n = 0; ; n++) {
      const r = await cluster.etcdctl(["put", `deployments/fill/${n}`, value]);
      if (r.code !== 0 && /database space exceeded/.test(r.stderr)) break;
      if (n >= 40) throw new Error(`no NOSPACE after ${n} puts of 100 kB; last: ${r.stderr}`);
    }
    const alarms = await cluster.etcdctl(["alarm", "list"]);
    if (!alarms.stdout.includes("alarm:NOSPACE")) throw new Error(`no NOSPACE alarm listed: ${alarms.stdout} ${alarms.stderr}`);
    console.log(`NOSPACE raised by member 0 (${alarmMember}) in ${(performance.now() - t0).toFixed(0)} ms: ${alarms.stdout.trim()}`);
  }, 30_000);
  afterEach(async () => {
    await stopAllGateways();
    // Not restoreCluster: etcd 3.4 answers /health "false" while the alarm is raised.
    await resumeStopped(cluster);
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  test("no member is judged down; the alarm is logged once, listed in /status and set in /metrics; reads work through the gateway", async () => {
    const gw = await gateway([`--endpoints=${cluster.endpoints}`]);
    await expectJudgedRight(gw, cluster, "deployments/nospace", { write: false });
    const raised = await waitFor("cluster alarm raised", () => records(gw, "cluster alarm raised")[0], 8000, 50);
    expect(raised).toMatchObject({ level: "warn", alarm: "NOSPACE", member: alarmMember });
    expect(endpointsOf(cluster)).toContain(String(raised.address));
    expect(records(gw, "cluster alarm raised")).toHaveLength(1);
    const s = await status(gw);
    expect(s.cluster?.alarms).toEqual([{ alarm: "NOSPACE", member: alarmMember }]);
    expect(await samples(gw, "etcd_gateway_cluster_alarm", 'alarm="NOSPACE"', `member="${alarmMember}"`)).toEqual([1]);
    expect(downOf(gw, cluster)).toEqual([]);
  }, TEST_TIMEOUT_MS);

  test("with the alarm raised, a stopped (SIGSTOP) member in use is marked down within the bound and clients move", async () => {
    const gw = await gateway([`--endpoints=${cluster.endpoints}`]);
    await expectStopMovesClients(gw, cluster);
  }, TEST_TIMEOUT_MS);

  test("disarmed (after delete, compaction and defragmentation): `cluster alarm cleared` is logged, the metric and /status drop it, writes work", async () => {
    const gw = await gateway([`--endpoints=${cluster.endpoints}`]);
    await waitFor("cluster alarm raised", () => records(gw, "cluster alarm raised")[0], 8000, 50);
    // Deletes are allowed under NOSPACE; compaction and defragmentation then shrink member 0's
    // database below its quota, so the alarm stays disarmed.
    const step = async (args: string[]) => {
      const r = await cluster.etcdctl(args, { commandTimeout: "10s", timeoutMs: 15_000 });
      expect(r.code, `etcdctl ${args.join(" ")}: ${r.stderr}`).toBe(0);
      return r.stdout;
    };
    await step(["del", "deployments/fill/", "--prefix"]);
    const rev = /"revision":(\d+)/.exec(await step(["endpoint", "status", "-w", "json"]))?.[1];
    await step(["compact", rev ?? "0", "--physical"]);
    await step(["defrag"]);
    await step(["alarm", "disarm"]);
    expect((await cluster.etcdctl(["alarm", "list"])).stdout.trim()).toBe("");
    const cleared = await waitFor("cluster alarm cleared", () => records(gw, "cluster alarm cleared")[0], 8000, 50);
    expect(cleared).toMatchObject({ level: "info", alarm: "NOSPACE", member: alarmMember });
    expect(records(gw, "cluster alarm raised")).toHaveLength(1);
    expect((await status(gw)).cluster?.alarms).toEqual([]);
    // Gone from the metric, or 0.
    expect((await samples(gw, "etcd_gateway_cluster_alarm", 'alarm="NOSPACE"')).filter((v) => v !== 0)).toEqual([]);
    const put = await viaGateway(gw, ["put", "deployments/after-disarm", "ok"]);
    expect(put.code, put.stderr).toBe(0);
    expect(downOf(gw, cluster)).toEqual([]);
    expect(gw.proc.exitCode).toBeNull();
  }, TEST_TIMEOUT_MS);
});

/**
 * Maintenance status over a new connection through the gateway: the raw reply, or "" when the
 * connection was closed or reset with none (or nothing came within `timeoutMs`).
 */
function statusThrough(port: number, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve) => {
    let reply = "";
    const s = connect({ host: "127.0.0.1", port });
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(reply);
    };
    const timer = setTimeout(done, timeoutMs);
    s.on("connect", () => s.write(STATUS));
    s.on("data", (c: Buffer) => (reply += c.toString()));
    s.on("error", done);
    s.on("close", done);
  });
}
/** The cluster ID (decimal) in a JSON-API status reply; etcd's JSON gateway writes IDs as strings. */
const clusterIdIn = (reply: string) => /"cluster_id":"(\d+)"/.exec(reply)?.[1];

describe("a member of another cluster in the endpoint list", () => {
  let foreign: Cluster;
  let mainHex: string;
  let foreignHex: string;
  const KEY = "deployments/only-in-the-main-cluster";
  beforeAll(async () => {
    foreign = await startCluster({ size: 1 });
    mainHex = await clusterIdHex(plain());
    foreignHex = await clusterIdHex(foreign);
    if (mainHex === foreignHex) throw new Error(`both clusters have ID ${mainHex}`);
    const put = await plain().etcdctl(["put", KEY, "main"]);
    if (put.code !== 0) throw new Error(`put failed: ${put.stderr}`);
  }, 30_000);
  afterAll(async () => {
    await foreign?.stop();
  });
  const foreignAddr = () => foreign.members[0]!.endpoint;
  const connectionsTo = (gw: GatewayProcess, address: string) => gw.metric("etcd_gateway_member_connections_total", `endpoint="${address}"`);
  /** The `deactivated endpoint` line for `address`, whose error names cluster `is` and the expected `not`. */
  async function wrongCluster(gw: GatewayProcess, address: string, is: string, not: string) {
    const down = await waitFor(`${address} (a member of cluster ${is}) marked down`, () => records(gw, "deactivated endpoint", address)[0], 8000, 50);
    expect(down).toMatchObject({ level: "warn", to: "down" });
    const m = /member of cluster ([0-9a-f]+), not ([0-9a-f]+)/.exec(String(down.error));
    expect(m?.slice(1), `error: ${String(down.error)}`).toEqual([is, not]);
  }

  test("round-robin: the foreign member is marked down naming both cluster IDs, the cluster ID is learned from the three, 24 new connections all reach the right cluster", async () => {
    const main = plain();
    const gw = await gateway([`--endpoints=${main.endpoints},${foreignAddr()}`, "--policy=round-robin"]);
    await wrongCluster(gw, foreignAddr(), foreignHex, mainHex);
    // Logged once a majority of the four endpoints (three) has reported it.
    await waitFor("cluster ID learned", () => records(gw, "cluster ID learned")[0], 8000, 50);
    const learned = records(gw, "cluster ID learned");
    expect(learned).toHaveLength(1);
    expect(learned[0]!["cluster-id"]).toBe(mainHex);
    expectLearnedFrom(learned[0]!, main);
    await expectJudgedRight(gw, main, KEY, { write: false });
    const mainDec = BigInt(`0x${mainHex}`).toString(10);
    for (let n = 0; n < 24; n++) {
      const reply = await statusThrough(gw.port);
      expect(clusterIdIn(reply), `connection ${n + 1} of 24: ${reply.slice(-200)}`).toBe(mainDec);
    }
    const get = await viaGateway(gw, ["get", KEY, "--print-value-only"]);
    expect(get.stdout.trim()).toBe("main");
    expect(await connectionsTo(gw, foreignAddr())).toBe(0);
    const s = await status(gw);
    expect(s.cluster).toMatchObject({ id: mainHex, pinned: false });
    expect(s.members.find((m) => m.endpoint === foreignAddr())).toMatchObject({ state: "down", alive: true, clusterId: foreignHex });
    for (const m of main.members) expect(s.members.find((x) => x.endpoint === m.endpoint)).toMatchObject({ state: "up", clusterId: mainHex });
  }, TEST_TIMEOUT_MS);

  test("round-robin: a stopped (SIGSTOP) member in use is marked down within the bound and clients move to the right cluster", async () => {
    const main = plain();
    const gw = await gateway([`--endpoints=${main.endpoints},${foreignAddr()}`, "--policy=round-robin"]);
    await wrongCluster(gw, foreignAddr(), foreignHex, mainHex);
    await expectStopMovesClients(gw, main);
    expect(await connectionsTo(gw, foreignAddr())).toBe(0);
  }, TEST_TIMEOUT_MS);

  test("--cluster-id pins the other cluster: the three are marked down, the foreign member is up and takes every connection", async () => {
    const main = plain();
    const gw = await gateway([`--endpoints=${main.endpoints},${foreignAddr()}`, "--policy=round-robin", `--cluster-id=${foreignHex}`]);
    for (const m of main.members) await wrongCluster(gw, m.endpoint, mainHex, foreignHex);
    await waitChecked(gw, [foreignAddr()]);
    expect(records(gw, "deactivated endpoint", foreignAddr())).toEqual([]);
    expect((await admin(gw, "/readyz")).status).toBe(200);
    const foreignDec = BigInt(`0x${foreignHex}`).toString(10);
    for (let n = 0; n < 6; n++) expect(clusterIdIn(await statusThrough(gw.port))).toBe(foreignDec);
    expect((await status(gw)).cluster).toMatchObject({ id: foreignHex, pinned: true });
    expect(gw.proc.exitCode).toBeNull();
  }, TEST_TIMEOUT_MS);

  test("fail-open excludes it: with every member down (a dead port and the foreign one, --cluster-id pinning the main cluster) clients are refused, never sent to the other cluster", async () => {
    // A port the kernel never hands out (below the ephemeral range): a free port chosen here could be
    // chosen again for the gateway's own admin endpoint, which then answered the dial (seen in CI).
    const dead = "127.0.0.1:9";
    const gw = await gateway([`--endpoints=${dead},${foreignAddr()}`, `--cluster-id=${mainHex}`]);
    await wrongCluster(gw, foreignAddr(), foreignHex, mainHex);
    await waitFor(`${dead} marked down`, () => records(gw, "deactivated endpoint", dead)[0], 8000, 50);
    expect((await admin(gw, "/readyz")).status).toBe(503);
    for (let n = 0; n < 6; n++) expect(await statusThrough(gw.port)).toBe("");
    expect(await connectionsTo(gw, foreignAddr())).toBe(0);
    await gw.waitForLog("no endpoint could be reached; closing client connection", 5000);
    expect(gw.proc.exitCode).toBeNull();
  }, TEST_TIMEOUT_MS);
});
