/**
 * The DNS helpers discovery tests stand on: a real dnsmasq (records, TTLs, restart with new records)
 * and the scriptable fake server (each fault as Bun's own resolver, `node:dns/promises`, sees it).
 * The error codes asserted here are the ones tabled in test/support/dns.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Resolver } from "node:dns/promises";
import { queryDns, startDnsmasq, startFakeDns, type Dnsmasq, type DnsmasqOptions, type FakeAnswer, type FakeDns, type FakeRecord } from "../support/dns.ts";

const SERVICE = "_etcd-client._tcp.example.com";

/** A Resolver asking only `server`, once, with a short timeout. */
function resolverFor(server: string, timeout = 300): Resolver {
  const r = new Resolver({ timeout, tries: 1 });
  r.setServers([server]);
  return r;
}

/** The error code a lookup fails with, or "ok". */
const codeOf = (lookup: Promise<unknown>) => lookup.then(() => "ok", (e: NodeJS.ErrnoException) => e.code);

const bySrvPriority = <T extends { priority: number; weight: number }>(records: T[]) =>
  records.toSorted((a, b) => a.priority - b.priority || b.weight - a.weight);

describe("startDnsmasq", () => {
  const first: DnsmasqOptions = {
    domain: "example.com",
    ttl: 30,
    srv: [
      { name: SERVICE, target: "m0.example.com", port: 2379, priority: 10, weight: 60 },
      { name: SERVICE, target: "m1.example.com", port: 22379, priority: 20, weight: 0 },
    ],
    hosts: [
      { name: "m0.example.com", ipv4: ["127.0.0.1", "127.0.0.2"], ipv6: ["::1"] },
      { name: "m1.example.com", ipv4: ["127.0.0.3"] },
    ],
  };
  const second: DnsmasqOptions = {
    domain: "example.com",
    ttl: 0,
    srv: [{ name: SERVICE, target: "m2.example.com", port: 32379, priority: 1, weight: 1 }],
    hosts: [{ name: "m2.example.com", ipv4: ["127.0.0.9"] }],
  };
  let dns: Dnsmasq;
  beforeAll(async () => {
    dns = await startDnsmasq(first);
  });
  afterAll(() => dns.stop());

  test("serves SRV, A and AAAA records, all with the given TTL", async () => {
    const r = resolverFor(dns.server);
    expect(bySrvPriority(await r.resolveSrv(SERVICE))).toEqual([
      { priority: 10, weight: 60, port: 2379, name: "m0.example.com" },
      { priority: 20, weight: 0, port: 22379, name: "m1.example.com" },
    ]);
    expect((await r.resolve4("m0.example.com", { ttl: true })).toSorted((a, b) => a.address.localeCompare(b.address))).toEqual([
      { address: "127.0.0.1", ttl: 30 },
      { address: "127.0.0.2", ttl: 30 },
    ]);
    expect(await r.resolve6("m0.example.com", { ttl: true })).toEqual([{ address: "::1", ttl: 30 }]);
    // node:dns hides SRV TTLs: read them from the wire.
    const raw = await queryDns(dns.server, SERVICE, "SRV");
    expect(raw.rcode).toBe("NOERROR");
    expect(raw.answers.map((a) => a.ttl)).toEqual([30, 30]);
  });

  test("answers NXDOMAIN for unknown names in its domain, no records for a missing type, REFUSED outside the domain", async () => {
    const r = resolverFor(dns.server);
    expect(await codeOf(r.resolve4("nope.example.com"))).toBe("ENOTFOUND");
    expect(await codeOf(r.resolve6("m1.example.com"))).toBe("ENOTFOUND");
    expect(await codeOf(r.resolveSrv("_etcd-server._tcp.example.com"))).toBe("ENOTFOUND");
    expect(await codeOf(r.resolve4("etcd.example.org"))).toBe("EREFUSED");
    expect((await queryDns(dns.server, "nope.example.com", "A")).rcode).toBe("NXDOMAIN");
    expect((await queryDns(dns.server, "m1.example.com", "AAAA")).answers).toEqual([]);
  });

  test("restart serves new records on the same port; a fresh Resolver sees them, one that asked before keeps its cached answer", async () => {
    const before = resolverFor(dns.server);
    await before.resolveSrv(SERVICE);
    const port = dns.port;
    await dns.restart(second);
    expect(dns.port).toBe(port);
    expect(dns.server).toBe(`127.0.0.1:${port}`);
    const fresh = resolverFor(dns.server);
    expect(await fresh.resolveSrv(SERVICE)).toEqual([{ priority: 1, weight: 1, port: 32379, name: "m2.example.com" }]);
    expect(await fresh.resolve4("m2.example.com", { ttl: true })).toEqual([{ address: "127.0.0.9", ttl: 0 }]);
    expect(await codeOf(fresh.resolve4("m0.example.com"))).toBe("ENOTFOUND");
    // c-ares caches per Resolver for the answer's TTL (30 s here): the old members, not the new ones.
    expect(bySrvPriority(await before.resolveSrv(SERVICE)).map((s) => s.port)).toEqual([2379, 22379]);
  });

  test("stop leaves nothing listening on the port", async () => {
    const extra = await startDnsmasq(second);
    await extra.stop();
    await expect(queryDns(extra.server, SERVICE, "SRV", 500)).rejects.toThrow("nothing listening");
    await extra.stop();
  });
});

describe("startFakeDns", () => {
  const srv: FakeRecord[] = [
    { type: "SRV", ttl: 0, priority: 10, weight: 5, port: 2379, target: "m0.example.com" },
    { type: "SRV", ttl: 0, priority: 20, weight: 0, port: 2380, target: "m1.example.com" },
  ];
  let answer: FakeAnswer = {};
  let dns: FakeDns;
  beforeAll(async () => {
    dns = await startFakeDns(async (q) => {
      if (q.name === "late.example.com") await Bun.sleep(100);
      return answer;
    });
  });
  afterAll(() => dns.close());
  /** Sets how the server answers and forgets earlier queries. */
  const answerWith = (a: FakeAnswer) => {
    answer = a;
    dns.queries.length = 0;
  };

  const faults: { what: string; answer: FakeAnswer; code: string }[] = [
    { what: "NOERROR without records (NODATA)", answer: { answers: [] }, code: "ENOTFOUND" },
    { what: "NXDOMAIN", answer: { rcode: "NXDOMAIN" }, code: "ENOTFOUND" },
    { what: "SERVFAIL", answer: { rcode: "SERVFAIL" }, code: "ESERVFAIL" },
    { what: "REFUSED", answer: { rcode: "REFUSED" }, code: "EREFUSED" },
    { what: "FORMERR", answer: { rcode: "FORMERR" }, code: "EFORMERR" },
    { what: "NOTIMP", answer: { rcode: "NOTIMP" }, code: "ENOTIMP" },
  ];
  for (const c of faults) {
    test(`${c.what} reaches resolveSrv and resolve4 as ${c.code}, after one query each`, async () => {
      answerWith(c.answer);
      const r = resolverFor(dns.server);
      expect(await codeOf(r.resolveSrv(SERVICE))).toBe(c.code);
      expect(await codeOf(r.resolve4("m0.example.com"))).toBe(c.code);
      expect(dns.queries.map((q) => `${q.transport} ${q.type} ${q.name}`)).toEqual([`udp SRV ${SERVICE.toLowerCase()}`, "udp A m0.example.com"]);
    });
  }

  test("SRV, A and AAAA records come back as sent, in the order sent", async () => {
    const r = resolverFor(dns.server);
    answerWith({ answers: srv });
    expect(await r.resolveSrv(SERVICE)).toEqual([
      { priority: 10, weight: 5, port: 2379, name: "m0.example.com" },
      { priority: 20, weight: 0, port: 2380, name: "m1.example.com" },
    ]);
    answerWith({ answers: [{ type: "A", ttl: 7, address: "127.0.0.5" }, { type: "A", ttl: 7, address: "10.1.2.3" }] });
    expect(await r.resolve4("m0.example.com", { ttl: true })).toEqual([{ address: "127.0.0.5", ttl: 7 }, { address: "10.1.2.3", ttl: 7 }]);
    answerWith({ answers: [{ type: "AAAA", ttl: 0, address: "fd00::1:2" }, { type: "AAAA", ttl: 0, address: "2001:db8:0:0:0:0:0:1" }] });
    expect(await r.resolve6("m0.example.com", { ttl: true })).toEqual([{ address: "fd00::1:2", ttl: 0 }, { address: "2001:db8::1", ttl: 0 }]);
  });

  test("TTL 0 answers are never cached: each lookup reaches the server; a TTL 30 answer is served from the Resolver's cache", async () => {
    const r = resolverFor(dns.server);
    answerWith({ answers: srv });
    await r.resolveSrv("_ttl0._tcp.example.com");
    await r.resolveSrv("_ttl0._tcp.example.com");
    expect(dns.queries.length).toBe(2);
    answerWith({ answers: srv.map((s) => ({ ...s, ttl: 30 })) });
    await r.resolveSrv("_ttl30._tcp.example.com");
    await r.resolveSrv("_ttl30._tcp.example.com");
    expect(dns.queries.length).toBe(1);
  });

  test("a truncated UDP answer makes the resolver retry over TCP on the same port, and the TCP answer is used", async () => {
    answerWith({ truncate: true, answers: srv });
    const raw = await queryDns(dns.server, SERVICE, "SRV");
    expect(raw).toEqual({ rcode: "NOERROR", truncated: true, answers: [] });
    dns.queries.length = 0;
    expect((await resolverFor(dns.server).resolveSrv(SERVICE)).map((s) => s.port)).toEqual([2379, 2380]);
    expect(dns.queries.map((q) => `${q.transport} ${q.type}`)).toEqual(["udp SRV", "tcp SRV"]);
  });

  test("no reply at all is ETIMEOUT, no sooner than the Resolver's timeout (Bun rounds it up to whole seconds)", async () => {
    answerWith({ drop: true });
    const started = performance.now();
    expect(await codeOf(resolverFor(dns.server, 300).resolve4("m0.example.com"))).toBe("ETIMEOUT");
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(2500);
    expect(dns.queries.length).toBe(1);
  });

  test("a server that is gone is ETIMEOUT too, not ECONNREFUSED, and without the whole-second rounding", async () => {
    const gone = await startFakeDns(() => ({}));
    gone.close();
    const started = performance.now();
    expect(await codeOf(resolverFor(gone.server, 300).resolve4("m0.example.com"))).toBe("ETIMEOUT");
    expect(performance.now() - started).toBeLessThan(900);
  });

  test("a handler may answer late through a promise", async () => {
    answerWith({ answers: [{ type: "A", ttl: 0, address: "127.0.0.7" }] });
    expect(await resolverFor(dns.server, 1000).resolve4("late.example.com")).toEqual(["127.0.0.7"]);
  });
});
