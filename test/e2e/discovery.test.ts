/**
 * Discovery against real DNS servers and a real etcd cluster: dnsmasq SRV records followed as
 * they change, DNS faults from a fake server that never empty the endpoint set, TLS-verified
 * `_etcd-client-ssl` records, and member-list sync following `etcdctl member add/remove`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCluster, type Cluster } from "../support/cluster.ts";
import { makeCerts } from "../support/certs.ts";
import { startDnsmasq, startFakeDns, type FakeAnswer, type SrvRecord } from "../support/dns.ts";
import { viaGateway } from "../support/etcd.ts";
import { startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, sleep, waitFor } from "../support/net.ts";

const DOMAIN = "etcd.test";
let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster({ size: 3 });
}, 60_000);
afterEach(stopAllGateways);
afterAll(async () => {
  await stopAllGateways();
  await cluster?.stop();
});

const srvFor = (indexes: number[]): SrvRecord[] =>
  indexes.map((i) => ({ name: `_etcd-client._tcp.${DOMAIN}`, target: `m${i}.${DOMAIN}`, port: cluster.members[i]!.clientPort, priority: 0, weight: 10 }));
const hosts = () => cluster.members.map((_, i) => ({ name: `m${i}.${DOMAIN}`, ipv4: ["127.0.0.1"] }));
const endpointsOf = async (admin: number) =>
  ((await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { members: { endpoint: string }[] }).members.map((m) => m.endpoint).sort();

describe("DNS SRV with dnsmasq", () => {
  test("the gateway discovers the cluster, etcdctl works through it, and it follows changed records within the TTL window", async () => {
    const dns = await startDnsmasq({ domain: DOMAIN, srv: srvFor([0, 1]), hosts: hosts(), ttl: 1 });
    try {
      const admin = freePort();
      const gw = await startGatewayProcess([`--discovery-srv=${DOMAIN}`, "--insecure-discovery", `--dns-server=${dns.server}`, "--discovery-refresh-min=1s", `--admin-addr=127.0.0.1:${admin}`]);
      expect(gw.records().find((r) => r.msg === "discovered cluster from SRV")).toBeDefined();
      expect(await endpointsOf(admin)).toEqual([`m0.${DOMAIN}:${cluster.members[0]!.clientPort}`, `m1.${DOMAIN}:${cluster.members[1]!.clientPort}`].sort());
      expect((await viaGateway(gw, ["put", "disc/k", "v"])).stdout.trim()).toBe("OK");
      // Replace the records: member 1 out, member 2 in.
      await dns.restart({ domain: DOMAIN, srv: srvFor([0, 2]), hosts: hosts(), ttl: 1 });
      const t0 = performance.now();
      await waitFor("the new endpoint set", async () => JSON.stringify(await endpointsOf(admin)) === JSON.stringify([`m0.${DOMAIN}:${cluster.members[0]!.clientPort}`, `m2.${DOMAIN}:${cluster.members[2]!.clientPort}`].sort()), 8000, 100);
      console.log(`followed the SRV change in ${(performance.now() - t0).toFixed(0)} ms (TTL 1 s, refresh-min 1 s)`);
      const changed = gw.records().find((r) => r.msg === "endpoints changed")!;
      expect(changed).toMatchObject({ source: "dns srv", added: [`m2.${DOMAIN}:${cluster.members[2]!.clientPort}`], removed: [`m1.${DOMAIN}:${cluster.members[1]!.clientPort}`] });
      expect((await viaGateway(gw, ["get", "disc/k", "--print-value-only"])).stdout.trim()).toBe("v");
    } finally {
      await dns.stop();
    }
  });

  test("with --dns-server, health checks reach members by the addresses that server gave: names the system cannot resolve stay up", async () => {
    // Found in 514d668: the checks (and member-list sync) resolved member names through the system
    // resolver, so every member was marked down forever (getaddrinfo ENOTFOUND; /readyz 503).
    const dns = await startDnsmasq({ domain: DOMAIN, srv: srvFor([0, 1, 2]), hosts: hosts(), ttl: 60 });
    try {
      const admin = freePort();
      const gw = await startGatewayProcess([`--discovery-srv=${DOMAIN}`, "--insecure-discovery", `--dns-server=${dns.server}`, "--health-interval=300ms", `--admin-addr=127.0.0.1:${admin}`]);
      await sleep(1500); // several checks of every member
      expect(gw.records().filter((r) => r.msg === "deactivated endpoint")).toEqual([]);
      expect((await fetch(`http://127.0.0.1:${admin}/readyz`)).status).toBe(200);
      expect((await viaGateway(gw, ["put", "disc/dns-server", "v"])).stdout.trim()).toBe("OK");
    } finally {
      await dns.stop();
    }
  });

  test("startup fails with etcd's message when both lookups fail, and never falls back to 127.0.0.1:2379", async () => {
    const dns = await startDnsmasq({ domain: DOMAIN, srv: [], hosts: [], ttl: 1 });
    try {
      const gw = await startGatewayProcess([`--discovery-srv=${DOMAIN}`, `--dns-server=${dns.server}`], { waitReady: false });
      expect(await gw.proc.exited).toBe(1);
      await waitFor("the error", () => gw.lines.some((l) => l.startsWith("etcd-gateway:")), 2000);
      expect(gw.lines.find((l) => l.startsWith("etcd-gateway:"))).toMatch(/--discovery-srv: dns lookup errors: lookup _etcd-client-ssl\._tcp\.etcd\.test on [\d.:]+: no such host and lookup _etcd-client\._tcp\.etcd\.test on [\d.:]+: no such host$/);
    } finally {
      await dns.stop();
    }
  });
});

describe("DNS faults from a fake server keep the last good set", () => {
  for (const [fault, answer] of [
    ["SERVFAIL", { rcode: "SERVFAIL" }],
    ["NXDOMAIN", { rcode: "NXDOMAIN" }],
    ["an empty answer", { rcode: "NOERROR", answers: [] }],
    ["a timeout", { drop: true }],
  ] as [string, FakeAnswer][]) {
    test(`${fault} on refresh: the endpoints stay, and traffic keeps flowing`, async () => {
      let healthy = true;
      const records = (): FakeAnswer => ({
        answers: [0, 1, 2].map((i) => ({ type: "SRV" as const, ttl: 1, priority: 0, weight: 1, port: cluster.members[i]!.clientPort, target: `m${i}.${DOMAIN}` })),
      });
      const dns = await startFakeDns((q) => {
        if (q.type === "A") return { answers: [{ type: "A", ttl: 1, address: "127.0.0.1" }] };
        if (q.name.startsWith("_etcd-client-ssl")) return { rcode: "NXDOMAIN" };
        return healthy ? records() : answer;
      });
      try {
        const admin = freePort();
        const gw = await startGatewayProcess([`--discovery-srv=${DOMAIN}`, "--insecure-discovery", `--dns-server=${dns.server}`, "--discovery-refresh-min=1s", `--admin-addr=127.0.0.1:${admin}`]);
        const before = await endpointsOf(admin);
        expect(before).toHaveLength(3);
        healthy = false;
        await gw.waitForLog("DNS SRV refresh failed; keeping the last good endpoints", 8000);
        expect(await endpointsOf(admin)).toEqual(before);
        expect((await viaGateway(gw, ["put", "disc/fault", fault])).stdout.trim()).toBe("OK");
        const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
        expect(metrics).toMatch(/etcd_gateway_discovery_failures_total [1-9]/);
      } finally {
        dns.close();
      }
    }, 30_000);
  }

  test("TTL 0 and a truncated UDP answer (retried over TCP) are handled", async () => {
    const dns = await startFakeDns((q) => {
      if (q.type === "A") return { answers: [{ type: "A", ttl: 0, address: "127.0.0.1" }] };
      if (q.name.startsWith("_etcd-client-ssl")) return { rcode: "NXDOMAIN" };
      const answers = [0, 1, 2].map((i) => ({ type: "SRV" as const, ttl: 0, priority: 0, weight: 1, port: cluster.members[i]!.clientPort, target: `m${i}.${DOMAIN}` }));
      return q.transport === "udp" ? { truncate: true } : { answers };
    });
    try {
      const admin = freePort();
      const gw = await startGatewayProcess([`--discovery-srv=${DOMAIN}`, "--insecure-discovery", `--dns-server=${dns.server}`, "--discovery-refresh-min=1s", `--admin-addr=127.0.0.1:${admin}`]);
      expect(await endpointsOf(admin)).toHaveLength(3);
      expect(dns.queries.some((q) => q.transport === "tcp")).toBe(true);
      // TTL 0 is clamped to --discovery-refresh-min: about one query per second, not a flood.
      const n0 = dns.queries.length;
      await sleep(2500);
      const perSecond = (dns.queries.length - n0) / 2.5;
      expect(perSecond).toBeLessThan(10);
      expect(perSecond).toBeGreaterThan(0);
      expect(gw.proc.exitCode).toBeNull();
    } finally {
      dns.close();
    }
  });
});

describe("_etcd-client-ssl records are verified with a real TLS handshake", () => {
  test("members whose certificate verifies for the domain are kept; one from another CA is dropped with a clear log line", async () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-srv-tls-"));
    const certs = await makeCerts(join(dir, "certs"));
    const tlsCluster = await startCluster({ size: 3, tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca } });
    // A "member" with a certificate from a CA nobody trusts.
    const rogue = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: readFileSync(certs.otherServer, "utf8"), key: readFileSync(certs.otherServerKey, "utf8") },
      socket: { data() {} },
    });
    // The discovery domain is the TLS server name: the test certificates name "localhost".
    const domain = "localhost";
    const dns = await startDnsmasq({
      domain,
      srv: [
        ...tlsCluster.members.map((m, i) => ({ name: `_etcd-client-ssl._tcp.${domain}`, target: `m${i}.${domain}`, port: m.clientPort, priority: 0, weight: 1 })),
        { name: `_etcd-client-ssl._tcp.${domain}`, target: `rogue.${domain}`, port: rogue.port, priority: 0, weight: 1 },
      ],
      hosts: [...tlsCluster.members.map((_, i) => ({ name: `m${i}.${domain}`, ipv4: ["127.0.0.1"] })), { name: `rogue.${domain}`, ipv4: ["127.0.0.1"] }],
      ttl: 30,
    });
    try {
      const admin = freePort();
      const gw = await startGatewayProcess([`--discovery-srv=${domain}`, `--trusted-ca-file=${certs.ca}`, `--dns-server=${dns.server}`, `--admin-addr=127.0.0.1:${admin}`, "--health-check=tcp"]);
      const dropped = gw.records().find((r) => r.msg === "failed to validate discovered endpoint");
      expect(dropped).toMatchObject({ endpoint: `rogue.${domain}:${rogue.port}` });
      console.log(`dropped: ${String(dropped?.error)}`);
      expect(String(dropped?.error)).toMatch(/certificate|verify|self.signed|issuer/i);
      expect(await endpointsOf(admin)).toEqual(tlsCluster.members.map((m, i) => `m${i}.${domain}:${m.clientPort}`).sort());
    } finally {
      await dns.stop();
      rogue.stop(true);
      await tlsCluster.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("member-list sync", () => {
  test("the endpoint set follows etcdctl member add (learner excluded until promoted) and member remove", async () => {
    const admin = freePort();
    const gw: GatewayProcess = await startGatewayProcess([`--endpoints=${cluster.members[0]!.endpoint}`, "--endpoints-auto-sync-interval=500ms", `--admin-addr=127.0.0.1:${admin}`]);
    const all = () => cluster.members.slice(0, 3).map((m) => m.endpoint).sort();
    await waitFor("the three voting members", async () => JSON.stringify(await endpointsOf(admin)) === JSON.stringify(all()), 5000, 100);
    const learner = await cluster.addLearner();
    await sleep(1500); // a few sync rounds: the learner must not appear
    expect(await endpointsOf(admin)).toEqual(all());
    const id = BigInt(await cluster.memberIdOf(learner)).toString(16);
    const promote = await cluster.etcdctl(["member", "promote", id]);
    expect(promote.code, promote.stderr).toBe(0);
    const four = [...all(), cluster.members[learner]!.endpoint].sort();
    await waitFor("the promoted member", async () => JSON.stringify(await endpointsOf(admin)) === JSON.stringify(four), 5000, 100);
    const removedId = BigInt(await cluster.memberIdOf(2)).toString(16);
    const removed = await cluster.etcdctl(["member", "remove", removedId], { endpoints: cluster.members[0]!.endpoint });
    expect(removed.code, removed.stderr).toBe(0);
    const three = four.filter((e) => e !== cluster.members[2]!.endpoint);
    await waitFor("member 2 gone", async () => JSON.stringify(await endpointsOf(admin)) === JSON.stringify(three), 5000, 100);
    expect(gw.records().filter((r) => r.msg === "endpoints changed").length).toBeGreaterThanOrEqual(2);
  }, 60_000);
});
