/**
 * The dialer, driven in-process: a Proxy on a loopback port in front of members that are plain
 * sockets in this test, with dials that hang made by replacing Bun.connect (the `Connect` seam).
 * Each test names what the dialer promises: failover within one client connection, the connect
 * timeout, and what counts as evidence against a member.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { connect as netConnect, createServer, type Server, type Socket } from "node:net";
import type { AccessRecord } from "../../src/accesslog.ts";
import type { UpstreamLeg } from "../../src/datapath/conn.ts";
import { bunConnect, type Connect, type DialReports } from "../../src/datapath/dialer.ts";
import { Proxy } from "../../src/datapath/proxy.ts";
import { SocketSet } from "../../src/datapath/sockets.ts";
import { createLogger } from "../../src/log.ts";
import { MemberTable, type Member } from "../../src/members.ts";
import { createPolicy } from "../../src/select.ts";
import { buildSettings, gatherFlags } from "../../src/settings.ts";
import { freePort, waitFor } from "../support/net.ts";
import { dial, echoServer, roundTrip, type Listening } from "../support/peers.ts";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** A proxy with the `ordered` policy over `ports`, reporting into `events`. */
function proxyFor(ports: number[], opts: { connect?: Connect; flags?: Record<string, string> } = {}) {
  const settings = buildSettings(gatherFlags({ endpoints: ports.map((p) => `127.0.0.1:${p}`).join(","), policy: "ordered", ...opts.flags }, {}));
  const table = new MemberTable(settings.endpoints, null);
  const events: string[] = [];
  const reports: DialReports = {
    dialFailed: (m: Member, reason: string) => void events.push(`failed ${m.endpoint.port} ${reason}`),
    dialSucceeded: (m: Member) => void events.push(`ok ${m.endpoint.port}`),
  };
  const records: AccessRecord[] = [];
  const policy = createPolicy("ordered", table);
  const sockets = SocketSet.bind([{ kind: "tcp", tcp: { host: "127.0.0.1", port: 0, address: "127.0.0.1:0" }, address: "127.0.0.1:0" }], { count: 1, socketMode: 0o600, reusePort: false, exclusive: false }, new Map());
  const proxy = new Proxy({
    members: () => table.list,
    sockets,
    accept: sockets.all,
    settings: () => settings,
    policy: () => policy,
    reports,
    accessLog: { write: (r) => void records.push(r), reopen() {}, close: async () => {}, stats: { dropped: 0, writeErrors: 0, reopenFailures: 0 } },
    log: createLogger({ write: () => {} }),
    connect: opts.connect,
  });
  cleanup.push(() => {
    proxy.stopAccepting();
    proxy.closeAll("shut-down");
  });
  return { proxy, table, events, records };
}

/** A member written with node:net; its connections are destroyed at cleanup. */
async function server(onConnection: (s: Socket) => void): Promise<Server> {
  const open = new Set<Socket>();
  const srv = createServer({ allowHalfOpen: true }, (s) => {
    open.add(s);
    s.on("error", () => {}).on("close", () => open.delete(s));
    onConnection(s);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  cleanup.push(() => {
    for (const s of open) s.destroy();
    return new Promise((r) => srv.close(r));
  });
  return srv;
}
const portOf = (s: Server) => (s.address() as { port: number }).port;

async function echo(): Promise<Listening> {
  const e = await echoServer();
  cleanup.push(() => e.close());
  return e;
}

describe("failover within one client connection", () => {
  test("falls back to the next member when the first refuses, and the client never sees it", async () => {
    const closed = freePort();
    const good = await echo();
    const { proxy, events } = proxyFor([closed, good.port]);
    expect(await roundTrip(proxy.port, "hello")).toBe("hello");
    expect(events).toEqual([`failed ${closed} dial tcp 127.0.0.1:${closed}: connect: connection refused`, `ok ${good.port}`]);
  });

  test("a dial that never completes is given up after --connect-timeout and the next member is tried", async () => {
    const good = await echo();
    const hang = freePort();
    // Dials to `hang` neither open nor fail, as with a member that drops SYNs.
    const connect: Connect = (leg, socket, tls) => (leg.member.endpoint.port === hang ? new Promise(() => {}) : bunConnect(leg, socket, tls));
    const { proxy, events, records } = proxyFor([hang, good.port], { connect, flags: { "connect-timeout": "200ms" } });
    const t0 = performance.now();
    expect(await roundTrip(proxy.port, "late")).toBe("late");
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(200);
    expect(events).toEqual([`failed ${hang} dial tcp 127.0.0.1:${hang}: i/o timeout`, `ok ${good.port}`]);
    await waitFor("the access record", () => records.length === 1);
    expect(records[0]).toMatchObject({ member: `127.0.0.1:${good.port}`, attempts: 2, tried: [`127.0.0.1:${hang}`, `127.0.0.1:${good.port}`], termination: "client-close" });
    expect(records[0]!.connect_ms).toBeGreaterThanOrEqual(200);
  });

  test("when every member fails, the client is reset and the record says connect-failed", async () => {
    const { proxy, records, events } = proxyFor([freePort(), freePort()]);
    // Not awaited to connect: the reset may come before node reports the connect (then as its error).
    const s = netConnect(proxy.port, "127.0.0.1");
    const outcome = await new Promise<string>((r) => {
      s.once("error", (e: NodeJS.ErrnoException) => r(e.code ?? e.message));
      s.once("close", () => r("close"));
    });
    expect(outcome).toBe("ECONNRESET");
    expect(events).toHaveLength(2);
    await waitFor("the access record", () => records.length === 1);
    expect(records[0]).toMatchObject({ member: null, connect_ms: null, termination: "connect-failed" });
    expect(proxy.active).toBe(0);
  });

  test("client bytes and a FIN sent while the dial is in flight reach the member that answers", async () => {
    const got: Buffer[] = [];
    let ended!: () => void;
    const endSeen = new Promise<void>((r) => (ended = r));
    const member = await server((s) => {
      s.on("data", (c: Buffer) => got.push(c));
      s.on("end", () => {
        ended();
        s.end("bye");
      });
    });
    const slow: Connect = async (leg, socket, tls) => {
      await Bun.sleep(100); // the client writes and shuts down meanwhile
      return bunConnect(leg, socket, tls);
    };
    const { proxy, records } = proxyFor([portOf(member)], { connect: slow });
    const s = await dial(proxy.port);
    s.end("early bytes");
    const reply = await new Promise<string>((r) => {
      let text = "";
      s.on("data", (c: Buffer) => (text += c.toString()));
      s.on("end", () => r(text));
    });
    await endSeen;
    expect(Buffer.concat(got).toString()).toBe("early bytes");
    expect(reply).toBe("bye");
    // Bytes held until the member connected are counted like any other.
    await waitFor("the access record", () => records.length === 1);
    expect(records[0]).toMatchObject({ bytes_from_client: 11, bytes_from_member: 3 });
  });
  test("a client that keeps sending while the dial is in flight is paused at its second read: the gateway holds a bounded amount, and every byte arrives in order", async () => {
    const LIMIT = 64 * 1024 * 1024;
    let received = 0;
    const memberHash = createHash("sha1");
    const member = await server((s) => {
      s.on("data", (c: Buffer) => {
        received += c.byteLength;
        memberHash.update(c);
      });
      s.on("end", () => s.end(`${received} ${memberHash.digest("hex")}`));
    });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const held: Connect = async (leg, socket, tls) => {
      await gate; // the member connects only when the test says so
      return bunConnect(leg, socket, tls);
    };
    const { proxy } = proxyFor([portOf(member)], { connect: held, flags: { "connect-timeout": "30s" } });
    let reply = "";
    let ended!: () => void;
    const replied = new Promise<void>((r) => (ended = r));
    const client = await Bun.connect({
      hostname: "127.0.0.1",
      port: proxy.port,
      allowHalfOpen: true,
      socket: { data: (_s, d) => void (reply += d.toString()), end: () => ended(), close: () => ended() },
    });
    cleanup.push(() => client.terminate());
    const buf = new Uint8Array(1024 * 1024).map((_, i) => (i * 31 + 7) & 255);
    const sent = createHash("sha1");
    let accepted = 0;
    // Writes until the kernel has taken nothing for 300 ms (or LIMIT bytes): with the gateway not
    // reading any more, that is the kernel's buffers plus what the gateway holds.
    for (let idleSince = performance.now(); accepted < LIMIT && performance.now() - idleSince < 300; ) {
      const n = client.write(buf.subarray(0, Math.min(buf.byteLength, LIMIT - accepted)));
      if (n > 0) {
        sent.update(buf.subarray(0, n));
        accepted += n;
        idleSince = performance.now();
      } else await Bun.sleep(10);
    }
    // Loopback buffers hold a few MiB; a gateway that read on while unpaired would have taken all 64.
    expect(accepted).toBeLessThan(LIMIT / 2);
    release();
    client.shutdown();
    await replied;
    expect(reply).toBe(`${accepted} ${sent.digest("hex")}`);
  });
});

describe("evidence against a member", () => {
  test("a member that resets a connection right after accepting it counts as a failed dial", async () => {
    const resetting = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: (s) => s.terminate(), data() {} } });
    cleanup.push(() => resetting.stop(true));
    const { proxy, events } = proxyFor([resetting.port]);
    const s = await dial(proxy.port);
    await new Promise((r) => s.on("error", () => {}).once("close", r));
    await waitFor("the report", () => events.length >= 2);
    expect(events[0]).toBe(`ok ${resetting.port}`);
    expect(events[1]).toMatch(new RegExp(`^failed ${resetting.port} (reset|closed) right after connect`));
  });

  /** A member that closes each connection as soon as it accepts it, then runs `after` (in the same turn of the event loop). */
  function closingMember(after: () => void = () => {}) {
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: (s) => (s.end(), after()), data() {} } });
    cleanup.push(() => l.stop(true));
    return l;
  }

  /** A Connect that dials only once `ready(leg)` holds (checked every 5 ms). */
  const dialWhen = (ready: (leg: UpstreamLeg) => boolean): Connect => async (leg, socket, tls) => {
    await waitFor("the dial's condition", () => ready(leg), 5000, 5);
    return bunConnect(leg, socket, tls);
  };

  // The evidence rule (src/datapath/dialer.ts, earlyEnd): a close right after accepting counts only
  // if the member did it on its own. Each test below breaks when one clause of that rule is dropped.
  test("a member's close that arrives while the client's bytes still wait unread in the kernel is not held against it", async () => {
    let client: Bun.Socket<undefined> | undefined;
    // The member's FIN goes out first, then the client's bytes, in one turn of the loop: the gateway
    // sees the FIN before it has read the bytes (they are in its socket's receive queue).
    const member = closingMember(() => void client!.write("hello"));
    const { proxy, events } = proxyFor([member.port], { connect: dialWhen(() => client !== undefined) });
    const closed = new Promise<void>((r) => {
      void Bun.connect({ hostname: "127.0.0.1", port: proxy.port, socket: { open: (s) => void (client = s), data() {}, close: () => r() } });
    });
    await closed; // the gateway decides (and reports) before it passes the member's FIN on
    expect(events).toEqual([`ok ${member.port}`]);
  });

  test("a member's close after the client ended (FIN, no bytes) is not held against it", async () => {
    const member = closingMember();
    const { proxy, events } = proxyFor([member.port], { connect: dialWhen((leg) => leg.conn.client.readDone) });
    const s = await dial(proxy.port);
    s.on("error", () => {});
    const closed = new Promise((r) => s.once("close", r));
    s.end(); // FIN before the member is dialled; the dial waits until the gateway has read it
    await closed;
    expect(events).toEqual([`ok ${member.port}`]);
  });

  test("after failures, a member's accept is reported as success only once it sends a byte", async () => {
    const member = await server((s) => void setTimeout(() => s.write("hi"), 150));
    const { proxy, table, events } = proxyFor([portOf(member)]);
    table.update(table.list[0]!, { failures: 2 });
    const s = await dial(proxy.port);
    await Bun.sleep(80);
    expect(events).toEqual([]); // connected, but not yet proven
    await new Promise((r) => s.once("data", r));
    expect(events).toEqual([`ok ${portOf(member)}`]);
    s.destroy();
  });
});
