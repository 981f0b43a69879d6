import { afterEach, describe, expect, test } from "bun:test";
import dgram from "node:dgram";
import { existsSync, readdirSync } from "node:fs";
import { DnsError, query, resolve, systemDnsServer, type DnsRecordOf } from "../../src/discovery/dns.ts";

// Hand-built DNS messages (RFC 1035 §4.1). The question starts at offset 12, so ptr(12) names it.
const T = { A: 1, CNAME: 5, AAAA: 28, SRV: 33 };
const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const u32 = (n: number) => [...u16(n >>> 16), ...u16(n & 0xffff)];
const ptr = (at: number) => [0xc0 | (at >> 8), at & 0xff];
const label = (text: string) => [text.length, ...Buffer.from(text)];
const wire = (name: string) => [...name.split(".").flatMap(label), 0];
const rr = (owner: number[], type: number, ttl: number, rdata: number[]) => [...owner, ...u16(type), ...u16(1), ...u32(ttl), ...u16(rdata.length), ...rdata];
const srv = (priority: number, weight: number, port: number, target: number[]) => [...u16(priority), ...u16(weight), ...u16(port), ...target];
const ipv4 = (text: string) => text.split(".").map(Number);
const idOf = (q: Uint8Array) => (q[0]! << 8) | q[1]!;

/** A reply to the query `q`: its ID and question unless overridden, `answers` as given. */
function reply(q: Uint8Array, o: { rcode?: number; tc?: boolean; id?: number; question?: number[]; answers?: number[][]; ancount?: number } = {}) {
  const answers = o.answers ?? [];
  const flags = 0x8180 | (o.tc ? 0x0200 : 0) | (o.rcode ?? 0);
  const head = [...u16(o.id ?? idOf(q)), ...u16(flags), ...u16(1), ...u16(o.ancount ?? answers.length), 0, 0, 0, 0];
  return Uint8Array.from([...head, ...(o.question ?? q.subarray(12)), ...answers.flat()]);
}

/** What a test server sends back for one query: any number of messages (none = silence). */
type Responder = (q: Uint8Array) => Uint8Array[];
interface TestServer {
  address: string;
  udpQueries: Uint8Array[];
  tcpQueries: Uint8Array[];
  tcpClosed: number;
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A UDP server, and a TCP one on the same port when `tcp` is given (retrying if that port is taken). */
async function dnsServer(udp: Responder, tcp?: Responder, host = "127.0.0.1"): Promise<TestServer> {
  for (let attempt = 0; ; attempt++) {
    const server: TestServer = { address: "", udpQueries: [], tcpQueries: [], tcpClosed: 0 };
    const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
    await new Promise<void>((done) => socket.bind(0, host, done));
    // A reply to a client that already closed its socket (it had its answer from an earlier try)
    // comes back as an ICMP port unreachable, which Bun reports as an `error` (recvmsg
    // ECONNREFUSED): without a listener it was thrown, failing whichever test ran (seen once in CI).
    socket.on("error", () => {});
    socket.on("message", (q, from) => {
      server.udpQueries.push(q);
      for (const m of udp(q)) socket.send(m, from.port, from.address);
    });
    const port = socket.address().port;
    server.address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    if (!tcp) {
      cleanups.push(() => socket.close());
      return server;
    }
    try {
      const listener = Bun.listen<{ buffered: Buffer }>({
        hostname: host,
        port,
        socket: {
          open: (s) => void (s.data = { buffered: Buffer.alloc(0) }), // one data object per socket (trap 7)
          data(s, chunk) {
            s.data.buffered = Buffer.concat([s.data.buffered, chunk]);
            const size = s.data.buffered.length >= 2 ? s.data.buffered.readUInt16BE(0) : Infinity;
            if (s.data.buffered.length < 2 + size) return;
            const q = s.data.buffered.subarray(2, 2 + size);
            server.tcpQueries.push(q);
            for (const m of tcp(q)) s.write(Uint8Array.from([...u16(m.length), ...m]));
          },
          close: () => void server.tcpClosed++,
        },
      });
      cleanups.push(() => (socket.close(), listener.stop(true)));
      return server;
    } catch (err) {
      socket.close();
      if (attempt === 5) throw err;
    }
  }
}

/** The rejection of `promise`, which must be a DnsError. */
async function dnsError(promise: Promise<unknown>): Promise<DnsError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(DnsError);
  return err as DnsError;
}

const SRV_NAME = "_etcd-client._tcp.example.com";
// Offsets inside a reply to SRV_NAME: "_tcp" and "example" labels, and where the answers begin.
const AT_TCP = 12 + 13;
const AT_EXAMPLE = AT_TCP + 5;
const ANSWERS_AT = 12 + wire(SRV_NAME).length + 4;

describe("query and resolve read answers", () => {
  test("every SRV record with its priority, weight, port, target and TTL, in the server's order", async () => {
    const s = await dnsServer((q) => [
      reply(q, {
        answers: [
          rr(ptr(12), T.SRV, 30, srv(10, 60, 2379, wire("infra0.example.com"))),
          rr(ptr(12), T.SRV, 300, srv(10, 40, 2379, wire("infra1.example.com"))),
          rr(ptr(12), T.SRV, 0, srv(20, 0, 22379, wire("infra2.example.com"))),
        ],
      }),
    ]);
    expect(await resolve(s.address, SRV_NAME, "SRV", { timeoutMs: 1000 })).toEqual([
      { type: "SRV", name: SRV_NAME, ttl: 30, priority: 10, weight: 60, port: 2379, target: "infra0.example.com" },
      { type: "SRV", name: SRV_NAME, ttl: 300, priority: 10, weight: 40, port: 2379, target: "infra1.example.com" },
      { type: "SRV", name: SRV_NAME, ttl: 0, priority: 20, weight: 0, port: 22379, target: "infra2.example.com" },
    ]);
  });

  test("A and AAAA addresses with their TTLs, IPv6 in RFC 5952 form", async () => {
    const v6: [number[], string][] = [
      [[0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], "2001:db8::1"],
      [[0, 0, 0, 0, 0, 0, 0, 1], "::1"],
      [[0, 0, 0, 0, 0, 0, 0, 0], "::"],
      [[0xfe80, 0, 0, 0, 1, 0, 0, 1], "fe80::1:0:0:1"],
      [[1, 0, 0, 2, 0, 0, 0, 3], "1:0:0:2::3"],
      [[1, 0, 0, 2, 0, 0, 3, 4], "1::2:0:0:3:4"],
      [[1, 0, 2, 0, 3, 0, 4, 0xabcd], "1:0:2:0:3:0:4:abcd"],
    ];
    const s = await dnsServer((q) => {
      const aaaa = q[q.length - 3] === T.AAAA;
      const answers = aaaa
        ? v6.map(([groups], i) => rr(ptr(12), T.AAAA, 100 + i, groups.flatMap(u16)))
        : [rr(ptr(12), T.A, 30, ipv4("127.0.0.2")), rr(ptr(12), T.A, 0x7fffffff, ipv4("10.1.255.0"))];
      return [reply(q, { answers })];
    });
    expect(await resolve(s.address, "infra1.example.com", "A")).toEqual([
      { type: "A", name: "infra1.example.com", ttl: 30, address: "127.0.0.2" },
      { type: "A", name: "infra1.example.com", ttl: 0x7fffffff, address: "10.1.255.0" },
    ]);
    expect(await resolve(s.address, "infra1.example.com", "AAAA")).toEqual(
      v6.map(([, address], i) => ({ type: "AAAA", name: "infra1.example.com", ttl: 100 + i, address })),
    );
  });

  test("follows compression pointers in owner names and SRV targets, chained", async () => {
    const firstTarget = ANSWERS_AT + 2 + 10 + 6; // after the owner pointer, the fixed fields and the SRV numbers
    const s = await dnsServer((q) => [
      reply(q, {
        answers: [
          rr(ptr(12), T.SRV, 30, srv(0, 0, 2379, [...label("infra0"), ...ptr(AT_EXAMPLE)])),
          rr([...label("_etcd-server-ssl"), ...ptr(AT_TCP)], T.SRV, 31, srv(0, 0, 2380, ptr(firstTarget))),
          rr(ptr(firstTarget), T.A, 32, ipv4("10.0.0.1")),
        ],
      }),
    ]);
    const answer = await query(s.address, SRV_NAME, "SRV");
    expect(answer.records).toEqual([
      { type: "SRV", name: SRV_NAME, ttl: 30, priority: 0, weight: 0, port: 2379, target: "infra0.example.com" },
      { type: "SRV", name: "_etcd-server-ssl._tcp.example.com", ttl: 31, priority: 0, weight: 0, port: 2380, target: "infra0.example.com" },
      { type: "A", name: "infra0.example.com", ttl: 32, address: "10.0.0.1" },
    ]);
  });

  test("skips a CNAME and keeps the A record it leads to", async () => {
    const cnameTarget = 12 + wire("www.example.com").length + 4 + 2 + 10;
    const s = await dnsServer((q) => [
      reply(q, { answers: [rr(ptr(12), T.CNAME, 60, wire("real.example.com")), rr(ptr(cnameTarget), T.A, 42, ipv4("192.0.2.7"))] }),
    ]);
    const expected: DnsRecordOf<"A">[] = [{ type: "A", name: "real.example.com", ttl: 42, address: "192.0.2.7" }];
    expect((await query(s.address, "www.example.com", "A")).records).toEqual(expected);
    expect(await resolve(s.address, "www.example.com", "A")).toEqual(expected);
  });

  test("strips the asked name's trailing dot and keeps an SRV target of '.' (no service)", async () => {
    const s = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.SRV, 5, srv(0, 0, 0, [0]))] })]);
    expect(await resolve(s.address, `${SRV_NAME}.`, "SRV")).toEqual([{ type: "SRV", name: SRV_NAME, ttl: 5, priority: 0, weight: 0, port: 0, target: "." }]);
    expect([...s.udpQueries[0]!.subarray(12)]).toEqual([...wire(SRV_NAME), ...u16(T.SRV), ...u16(1)]);
  });

  test("sets RD, asks one question, and picks a random ID per query", async () => {
    const s = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, ipv4("10.0.0.1"))] })]);
    for (let i = 0; i < 8; i++) await resolve(s.address, "infra0.example.com", "A");
    for (const q of s.udpQueries) expect([...q.subarray(2, 12)]).toEqual([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(new Set(s.udpQueries.map(idOf)).size).toBeGreaterThan(1);
  });
});

describe("RCODEs and empty answers", () => {
  const cases: [number, string, string][] = [
    [2, "SERVFAIL", "ESERVFAIL"],
    [3, "NXDOMAIN", "ENOTFOUND"],
    [5, "REFUSED", "EREFUSED"],
    [4, "NOTIMP", "ESERVFAIL"],
  ];
  for (const [rcode, rcodeName, code] of cases) {
    test(`${rcodeName}: query returns it, resolve rejects with ${code}`, async () => {
      const s = await dnsServer((q) => [reply(q, { rcode })]);
      expect(await query(s.address, SRV_NAME, "SRV")).toEqual({ rcode, rcodeName, records: [] });
      const err = await dnsError(resolve(s.address, SRV_NAME, "SRV"));
      expect(err.code).toBe(code as DnsError["code"]);
      expect(err.message).toContain(rcodeName);
      expect([err.server, err.hostname, err.type]).toEqual([s.address, SRV_NAME, "SRV"]);
    });
  }

  test("NOERROR with no answers, or only a CNAME, is ENODATA", async () => {
    const empty = await dnsServer((q) => [reply(q)]);
    expect((await dnsError(resolve(empty.address, SRV_NAME, "SRV"))).code).toBe("ENODATA");
    const cnameOnly = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.CNAME, 60, wire("elsewhere.example.com"))] })]);
    expect((await dnsError(resolve(cnameOnly.address, "www.example.com", "AAAA"))).code).toBe("ENODATA");
  });
});

describe("transport", () => {
  test("no reply is ETIMEOUT within timeoutMs, after `tries` UDP sends", async () => {
    const s = await dnsServer(() => []);
    const started = performance.now();
    const err = await dnsError(query(s.address, SRV_NAME, "SRV", { timeoutMs: 300, tries: 3 }));
    const elapsed = performance.now() - started;
    expect(err.code).toBe("ETIMEOUT");
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(600);
    expect(s.udpQueries.length).toBe(3);
  });

  test("a truncated UDP reply is asked again over TCP, which gets the full answer", async () => {
    const many = Array.from({ length: 40 }, (_, i) => rr(ptr(12), T.SRV, 60, srv(10, i, 2379, wire(`member-${i}.example.com`))));
    const s = await dnsServer(
      (q) => [reply(q, { tc: true, answers: many.slice(0, 2), ancount: 40 })], // cut mid-list, as a server may
      (q) => [reply(q, { answers: many })],
    );
    const records = await resolve(s.address, SRV_NAME, "SRV", { timeoutMs: 2000 });
    expect(records.length).toBe(40);
    expect(records[39]).toEqual({ type: "SRV", name: SRV_NAME, ttl: 60, priority: 10, weight: 39, port: 2379, target: "member-39.example.com" });
    expect(s.tcpQueries.map((q) => [...q])).toEqual(s.udpQueries.map((q) => [...q]));
  });

  test("a TCP retry that never answers is ETIMEOUT within the same overall timeout, and its connection is closed", async () => {
    const s = await dnsServer((q) => [reply(q, { tc: true })], () => []);
    const started = performance.now();
    expect((await dnsError(query(s.address, SRV_NAME, "SRV", { timeoutMs: 300 }))).code).toBe("ETIMEOUT");
    expect(performance.now() - started).toBeLessThan(600);
    expect(s.tcpQueries.length).toBe(1);
    for (let i = 0; i < 100 && s.tcpClosed === 0; i++) await Bun.sleep(5);
    expect(s.tcpClosed).toBe(1);
  });

  test("ignores replies with another ID or another question, then accepts the right one", async () => {
    const s = await dnsServer((q) => [
      reply(q, { id: idOf(q) ^ 0x5a5a, answers: [rr(ptr(12), T.A, 1, ipv4("6.6.6.6"))] }),
      reply(q, { question: [...wire("evil.example.com"), ...u16(T.A), ...u16(1)], answers: [rr(ptr(12), T.A, 1, ipv4("6.6.6.7"))] }),
      Uint8Array.from([1]),
      reply(q, { answers: [rr(ptr(12), T.A, 7, ipv4("10.0.0.9"))] }),
    ]);
    expect(await resolve(s.address, "infra0.example.com", "A", { timeoutMs: 1000 })).toEqual([{ type: "A", name: "infra0.example.com", ttl: 7, address: "10.0.0.9" }]);
  });

  test("a closed UDP port is ECONNREFUSED at once, not a timeout", async () => {
    const s = await dnsServer(() => []);
    for (const cleanup of cleanups.splice(0)) cleanup();
    const started = performance.now();
    expect((await dnsError(query(s.address, SRV_NAME, "SRV", { timeoutMs: 2000 }))).code).toBe("ECONNREFUSED");
    expect(performance.now() - started).toBeLessThan(1000);
  });

  test("an IPv6 server as [::1]:port", async () => {
    const s = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.A, 9, ipv4("10.0.0.3"))] })], undefined, "::1");
    expect(await resolve(s.address, "infra2.example.com", "A")).toEqual([{ type: "A", name: "infra2.example.com", ttl: 9, address: "10.0.0.3" }]);
  });

  test("every socket is released, whatever the outcome", async () => {
    if (!existsSync("/proc/self/fd")) return; // Linux only
    const ok = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, ipv4("10.0.0.1"))] })]);
    const silent = await dnsServer(() => []);
    const truncated = await dnsServer((q) => [reply(q, { tc: true })], (q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, ipv4("10.0.0.1"))] })]);
    const stalled = await dnsServer((q) => [reply(q, { tc: true })], () => []);
    const bad = await dnsServer((q) => [reply(q, { ancount: 1 })]);
    const round = () =>
      Promise.allSettled([ok, silent, truncated, stalled, bad].map((s) => query(s.address, "infra0.example.com", "A", { timeoutMs: 150 })));
    await round(); // the first round may open runtime descriptors (event loop, DNS) that stay
    const before = readdirSync("/proc/self/fd").length;
    for (let i = 0; i < 5; i++) await round();
    // A leak on any path would add at least 5 descriptors that never go. Other test files in the same
    // process may hold a descriptor for a moment (their children's pipes closing), so the count is
    // polled for up to a second rather than read once.
    let now = readdirSync("/proc/self/fd").length;
    for (let i = 0; i < 50 && now > before; i++) {
      await Bun.sleep(20);
      now = readdirSync("/proc/self/fd").length;
    }
    expect(now).toBeLessThanOrEqual(before);
  });
});

describe("malformed replies are EBADRESP", () => {
  const good = (q: Uint8Array) => reply(q, { answers: [rr(ptr(12), T.SRV, 30, srv(10, 60, 2379, wire("infra0.example.com")))] });
  const cases: [string, Responder][] = [
    ["cut short inside an answer", (q) => [good(q).subarray(0, -3)]],
    ["cut short in the fixed fields", (q) => [good(q).subarray(0, ANSWERS_AT + 5)]],
    ["more answers announced than sent", (q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, ipv4("10.0.0.1"))], ancount: 2 })]],
    ["a pointer to itself", (q) => [reply(q, { answers: [rr(ptr(ANSWERS_AT), T.A, 1, ipv4("10.0.0.1"))] })]],
    ["a label and a pointer back to its start", (q) => [reply(q, { answers: [rr([...label("a"), ...ptr(ANSWERS_AT)], T.A, 1, ipv4("10.0.0.1"))] })]],
    ["two pointers pointing at each other", (q) => [reply(q, { answers: [rr([...ptr(ANSWERS_AT + 2), ...ptr(ANSWERS_AT)], T.A, 1, ipv4("10.0.0.1"))] })]],
    ["a reserved label type", (q) => [reply(q, { answers: [rr([0x40, 0], T.A, 1, ipv4("10.0.0.1"))] })]],
    ["an A record of 5 bytes", (q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, [10, 0, 0, 1, 0])] })]],
    ["an SRV target running past its record", (q) => [reply(q, { answers: [rr(ptr(12), T.SRV, 1, srv(0, 0, 1, [5, 0x61]))] })]],
  ];
  for (const [what, respond] of cases) {
    test(what, async () => {
      const s = await dnsServer(respond);
      const started = performance.now();
      expect((await dnsError(query(s.address, SRV_NAME, "SRV", { timeoutMs: 1000 }))).code).toBe("EBADRESP");
      expect(performance.now() - started).toBeLessThan(500);
    });
  }
});

describe("bad input is EBADQUERY, still a DnsError", () => {
  const cases: [string, string][] = [
    ["dns.example:53", SRV_NAME],
    ["nameserver", SRV_NAME],
    ["127.0.0.1:0", SRV_NAME],
    ["[::1", SRV_NAME],
    ["10.0.0.1:99999", SRV_NAME],
    ["127.0.0.1:53", "a..example.com"],
    ["127.0.0.1:53", `${"x".repeat(64)}.example.com`],
    ["127.0.0.1:53", Array.from({ length: 50 }, () => "abcde").join(".")],
  ];
  for (const [server, name] of cases) {
    test(`${server} ${name.slice(0, 40)}`, async () => expect((await dnsError(query(server, name, "A"))).code).toBe("EBADQUERY"));
  }
});

describe("systemDnsServer", () => {
  const cases: [string, string][] = [
    ["nameserver 10.0.0.2\nnameserver 10.0.0.3\n", "10.0.0.2:53"],
    ["# generated\n; old style comment\nsearch example.com corp\noptions ndots:5 timeout:1\nnameserver   192.168.1.1  # home\n", "192.168.1.1:53"],
    ["nameserver 2001:db8::53\n", "[2001:db8::53]:53"],
    ["nameserver fe80::1%eth0\n", "[fe80::1%eth0]:53"],
    ["nameserver dns.example\nnameserver 1.1.1.1\n", "1.1.1.1:53"],
    ["\tnameserver\t8.8.8.8\r\n", "8.8.8.8:53"],
    ["#nameserver 9.9.9.9\n", "127.0.0.1:53"],
    ["", "127.0.0.1:53"],
  ];
  for (const [text, server] of cases) test(`${JSON.stringify(text).slice(0, 60)} is ${server}`, () => expect(systemDnsServer(text)).toBe(server));

  test("without text it reads /etc/resolv.conf, and query accepts what it returns", async () => {
    expect(systemDnsServer()).toMatch(/^(\d+\.\d+\.\d+\.\d+|\[[^\]]+\]):53$/);
    const s = await dnsServer((q) => [reply(q, { answers: [rr(ptr(12), T.A, 1, ipv4("10.0.0.1"))] })]);
    const port = Number(s.address.split(":")[1]);
    const server = systemDnsServer("nameserver 127.0.0.1\n").replace(/:53$/, `:${port}`);
    expect((await resolve(server, "infra0.example.com", "A")).length).toBe(1);
  });
});
