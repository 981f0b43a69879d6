/**
 * The facts about Bun's sockets that the data path is built on, each pinned by a test named after
 * the behaviour (docs/bun.md has the measurements and what the gateway does about each). When a Bun
 * upgrade changes one of them, its test fails here first, naming the trap to revisit.
 *
 * Everything runs in this process on 127.0.0.1 with kernel-chosen ports, except the EMFILE case (a
 * child under `ulimit -n 64`) and the SYN-dropping port (a small python3 listener, support/blackhole).
 * No test asserts a duration tighter than a generous bound; waits poll for the event they need.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import dns from "node:dns";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBlackhole } from "../support/blackhole.ts";
import { makeCerts } from "../support/certs.ts";
import { startFakeDns } from "../support/dns.ts";
import { sleep, waitFor } from "../support/net.ts";

const HOST = "127.0.0.1";

/** Closers for everything a test opened, run after it (also when it failed), newest first. */
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const close of cleanups.splice(0).reverse()) {
    try {
      await close();
    } catch {
      // already closed
    }
  }
});

interface ListenExtra<D> {
  allowHalfOpen?: boolean;
  tls?: { cert: string; key: string };
  data?: D;
  reusePort?: boolean;
  port?: number;
}

function listen<D = undefined>(socket: SocketHandler<D>, extra: ListenExtra<D> = {}): TCPSocketListener<D> {
  const { reusePort, port, ...rest } = extra;
  // reusePort is typed only on Bun.connect's options (docs/bun.md, "reusePort").
  const l = Bun.listen<D>({ hostname: HOST, port: port ?? 0, socket, ...rest, ...(reusePort === undefined ? {} : ({ reusePort } as object)) });
  cleanups.push(() => l.stop(true));
  return l;
}

interface DialExtra<D> {
  allowHalfOpen?: boolean;
  tls?: { ca?: string; serverName?: string } | boolean;
  data?: D;
}

async function dial<D = undefined>(port: number, socket: SocketHandler<D>, extra: DialExtra<D> = {}): Promise<Socket<D>> {
  const s = await Bun.connect<D>({ hostname: HOST, port, socket, ...extra });
  cleanups.push(() => s.terminate());
  return s;
}

/** A TCP listener that records its accepted sockets (the newest last). */
function acceptor(handlers: Partial<SocketHandler> = {}, extra: ListenExtra<undefined> = {}) {
  const accepted: Socket[] = [];
  const listener = listen<undefined>(
    {
      data() {},
      ...handlers,
      open(s) {
        accepted.push(s);
        handlers.open?.(s);
      },
    },
    extra,
  );
  return { listener, accepted, port: listener.port };
}

const codeOf = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

describe("trap 1: write() takes only what the kernel takes", () => {
  test("write() returns fewer bytes than given when the receiver is paused, and Bun queues none of the rest", async () => {
    let received = 0;
    let ended = false;
    const srv = acceptor(
      {
        open: (s) => s.pause(),
        data: (_s, d) => void (received += d.byteLength),
        end: () => void (ended = true),
      },
      { allowHalfOpen: true },
    );
    let drains = 0;
    const c = await dial(srv.port, { data() {}, drain: () => void drains++ });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);

    const chunk = new Uint8Array(1 << 20);
    const returns: number[] = [];
    while (returns.length < 64) {
      const n = c.write(chunk);
      returns.push(n);
      if (n < chunk.byteLength) break;
    }
    const short = returns.at(-1)!;
    expect(short).toBeGreaterThanOrEqual(0);
    expect(short).toBeLessThan(chunk.byteLength);
    const again = c.write(chunk); // the kernel is still full (measured: 0)
    expect(again).toBeLessThan(chunk.byteLength);
    const accepted = returns.reduce((a, b) => a + b, 0) + again;
    expect(c.bytesWritten).toBe(accepted);
    expect(drains).toBe(0);

    server.resume();
    await waitFor("drain after the receiver reads again", () => drains > 0, 3000);
    c.shutdown();
    await waitFor("the receiver's end", () => ended, 3000);
    // Exactly what write() reported taking arrived: the bytes it did not take were never sent.
    expect(received).toBe(accepted);
  });

  test("write() returns -1 once the socket is closed", async () => {
    const srv = acceptor();
    const c = await dial(srv.port, { data() {} });
    c.end();
    expect(c.write("late")).toBe(-1);
  });
});

describe("trap 2: end() closes both directions", () => {
  test("end() runs the close handler before it returns, and a reply from the peer afterwards draws a reset", async () => {
    let serverEnd = false;
    let serverClosed = false;
    let serverErr: unknown;
    const srv = acceptor(
      {
        end: () => void (serverEnd = true),
        close: (_s, e) => {
          serverClosed = true;
          serverErr = e;
        },
      },
      { allowHalfOpen: true },
    );
    let closed = false;
    let got = 0;
    const c = await dial(srv.port, { data: (_s, d) => void (got += d.byteLength), end() {}, close: () => void (closed = true) }, { allowHalfOpen: true });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);

    c.end();
    expect(closed).toBe(true);
    expect(c.readyState).toBe(-1);

    await waitFor("the FIN at the peer", () => serverEnd, 2000);
    expect(server.write("reply")).toBe(5); // the kernel takes it; the closed socket answers RST
    await waitFor("the peer's close", () => serverClosed, 3000);
    expect(["EPIPE", "ECONNRESET"]).toContain(codeOf(serverErr) ?? "none");
    expect(got).toBe(0);
  });

  test("bytes write() took before end() are lost when the peer sends anything after end()", async () => {
    let received = 0;
    let serverClosed = false;
    let serverErr: unknown;
    const srv = acceptor(
      {
        open: (s) => s.pause(),
        data: (_s, d) => void (received += d.byteLength),
        end() {},
        close: (_s, e) => {
          serverClosed = true;
          serverErr = e;
        },
      },
      { allowHalfOpen: true },
    );
    const c = await dial(srv.port, { data() {}, end() {} }, { allowHalfOpen: true });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    const accepted = fill(c);

    c.end();
    server.write("x"); // reaches a closed socket: RST, which also drops what it had not sent yet
    await sleep(50);
    server.resume();
    await waitFor("the reset at the peer", () => serverClosed, 3000);
    expect(codeOf(serverErr)).toBe("ECONNRESET");
    expect(received).toBeLessThan(accepted);
  });

  test("shutdown() sends a FIN and keeps reading: the reply arrives and every byte write() took is delivered", async () => {
    let received = 0;
    let serverEnd = false;
    const srv = acceptor(
      {
        open: (s) => s.pause(),
        data: (_s, d) => void (received += d.byteLength),
        end: () => void (serverEnd = true),
      },
      { allowHalfOpen: true },
    );
    let reply = "";
    const c = await dial(srv.port, { data: (_s, d) => void (reply += d.toString()), end() {} }, { allowHalfOpen: true });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    const accepted = fill(c);

    c.shutdown();
    expect(c.write("x")).toBe(-1);
    expect(c.readyState).toBe(1); // not -2 ("shutdown" in the types): still open for reading
    server.write("reply");
    server.resume();
    await waitFor("the FIN at the peer", () => serverEnd, 3000);
    expect(received).toBe(accepted);
    await waitFor("the reply", () => reply === "reply", 2000);
  });
});

/** Writes 1 MiB chunks to `s` until the kernel takes less than a chunk; returns the bytes it took. */
function fill(s: Socket<unknown>): number {
  const chunk = new Uint8Array(1 << 20);
  let total = 0;
  for (let i = 0; i < 64; i++) {
    const n = s.write(chunk);
    total += Math.max(n, 0);
    if (n < chunk.byteLength) return total;
  }
  throw new Error("64 MiB went into the kernel without a short write");
}

describe("trap 3: half-close needs allowHalfOpen and an end handler", () => {
  for (const allowHalfOpen of [false, true]) {
    for (const withEnd of [false, true]) {
      const keeps = allowHalfOpen && withEnd;
      test(`a listener's socket with allowHalfOpen ${allowHalfOpen} and ${withEnd ? "an" : "no"} end handler ${keeps ? "stays open for a reply" : "is closed"} after the client's FIN`, async () => {
        let gotEnd = false;
        let closed = false;
        const srv = acceptor({ close: () => void (closed = true), ...(withEnd ? { end: () => void (gotEnd = true) } : {}) }, { allowHalfOpen });
        let reply = "";
        const c = await dial(srv.port, { data: (_s, d) => void (reply += d.toString()), end() {} }, { allowHalfOpen: true });
        c.write("request");
        c.shutdown();
        const server = await waitFor("the accept", () => srv.accepted[0], 2000);
        await waitFor("the FIN seen", () => gotEnd || closed, 2000);
        if (keeps) {
          expect(server.write("reply")).toBe(5);
          await waitFor("the reply after the FIN", () => reply === "reply", 2000);
          expect(closed).toBe(false);
        } else {
          await waitFor("the close", () => closed, 2000);
          expect(server.write("reply")).toBe(-1);
        }
      });
    }
  }

  test("a Bun.connect socket needs the same two: without an end handler the server's FIN closes it", async () => {
    const srv = acceptor({ open: (s) => s.shutdown() }, { allowHalfOpen: true });
    let closedA = false;
    const a = await dial(srv.port, { data() {}, close: () => void (closedA = true) }, { allowHalfOpen: true });
    await waitFor("the close on FIN", () => closedA, 2000);
    expect(a.write("late")).toBe(-1);

    let endB = false;
    const b = await dial(srv.port, { data() {}, end: () => void (endB = true) }, { allowHalfOpen: true });
    await waitFor("the end handler", () => endB, 2000);
    expect(b.write("late")).toBe(4);
  });

  test("after its own shutdown(), a socket gets the peer's FIN as a clean close, not as end", async () => {
    const srv = acceptor({ end() {} }, { allowHalfOpen: true });
    const events: string[] = [];
    const c = await dial(
      srv.port,
      { data: (_s, d) => void events.push(`data ${d}`), end: () => void events.push("end"), close: (_s, e) => void events.push(`close ${codeOf(e) ?? "clean"}`) },
      { allowHalfOpen: true },
    );
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    c.shutdown();
    await sleep(50);
    server.write("bye");
    server.shutdown();
    await waitFor("the close", () => events.some((e) => e.startsWith("close")), 2000);
    expect(events).toEqual(["data bye", "close clean"]);
  });
});

describe("trap 4: timeout() is not an idle timeout", () => {
  test(
    "timeout(1) fires once, about 4 s later, though bytes flow meanwhile, and leaves the socket open",
    async () => {
      const srv = acceptor();
      const fired: number[] = [];
      const c = await dial(srv.port, { data() {}, timeout: () => void fired.push(performance.now()) });
      const start = performance.now();
      c.timeout(1);
      const traffic = setInterval(() => c.write("x"), 100);
      cleanups.push(() => clearInterval(traffic));
      await sleep(1500);
      expect(fired).toHaveLength(0); // not 1 s: Bun's socket timeouts tick every 4 s
      await waitFor("the timeout handler", () => fired.length > 0, 5500);
      clearInterval(traffic);
      expect(fired[0]! - start).toBeGreaterThan(2500);
      expect(c.readyState).toBe(1); // the handler ran; nothing closed the socket
      expect(c.write("still open")).toBe(10);
    },
    9000,
  );
});

/** Sockets in SYN_SENT towards 127.0.0.1:`port` (from /proc/net/tcp: ours are the only ones). */
function synSent(port: number): number {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f[2] === remote && f[3] === "02").length;
}

describe("trap 5: Bun.connect has no connect timeout and cannot be cancelled", () => {
  test(
    "Bun.connect to a port that drops SYNs stays pending with no handle to cancel it; node:net destroy() cancels its connect",
    async () => {
      const hole = await startBlackhole();
      cleanups.push(() => hole.close());
      await waitFor("no connect in flight to the blackhole", () => synSent(hole.port) === 0, 2000);

      let settled = false;
      const p = Bun.connect({ hostname: HOST, port: hole.port, socket: { data() {}, connectError() {} } });
      // It rejects (ECONNREFUSED) once the blackhole is gone, long after this test.
      p.then((s) => s.terminate(), () => {}).finally(() => void (settled = true));
      expect(Object.getPrototypeOf(p)).toBe(Promise.prototype); // a bare promise: nothing to abort
      await sleep(1000);
      expect(settled).toBe(false);
      expect(synSent(hole.port)).toBe(1);

      const n = netConnect({ host: HOST, port: hole.port });
      n.on("error", () => {});
      await waitFor("the node:net connect in flight", () => synSent(hole.port) === 2, 2000);
      n.destroy();
      await waitFor("the node:net connect cancelled", () => synSent(hole.port) === 1, 2000);
      expect(settled).toBe(false);
    },
    8000,
  );
});

describe("trap 6: connect errors are reported as ECONNREFUSED", () => {
  const failure = async (opts: { port: number } | { unix: string }) => {
    let handlerErr: unknown;
    const socket = { data() {}, connectError: (_s: unknown, e: Error) => void (handlerErr = e) };
    const pending = "unix" in opts ? Bun.connect({ unix: opts.unix, socket }) : Bun.connect({ hostname: HOST, port: opts.port, socket });
    const rejection = await pending.then(
      (s) => {
        s.terminate();
        throw new Error("connected");
      },
      (e: unknown) => e,
    );
    return { handlerErr, rejection };
  };
  const fields = (e: unknown) => {
    const x = e as NodeJS.ErrnoException;
    return { code: x.code, errno: x.errno, syscall: x.syscall, message: x.message };
  };

  test("a refused connect gives connectError and a rejection, both ECONNREFUSED -111 'Failed to connect'", async () => {
    const l = Bun.listen({ hostname: HOST, port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    const { handlerErr, rejection } = await failure({ port });
    const refused = { code: "ECONNREFUSED", errno: -111, syscall: "connect", message: "Failed to connect" };
    expect(fields(handlerErr)).toEqual(refused);
    expect(fields(rejection)).toEqual(refused);
  });

  test("a unix socket path that does not exist gives ENOENT -2", async () => {
    const dir = mkdtempSync(join(tmpdir(), "bun-platform-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const { rejection } = await failure({ unix: join(dir, "missing.sock") });
    expect(fields(rejection)).toEqual({ code: "ENOENT", errno: -2, syscall: "connect", message: "Failed to connect" });
  });

  test("running out of file descriptors (EMFILE from socket()) is reported as ECONNREFUSED", async () => {
    const srv = acceptor(); // a listener that would accept: the refusal is invented
    const script = `
      const { openSync } = require("node:fs");
      try { for (;;) openSync("/dev/null", "r"); } catch (e) { if (e.code !== "EMFILE") throw e; }
      const e = await Bun.connect({ hostname: "${HOST}", port: ${srv.port}, socket: { data() {} } }).then(() => null, (e) => e);
      console.log(JSON.stringify(e && { code: e.code, errno: e.errno, syscall: e.syscall, message: e.message }));
    `;
    const proc = Bun.spawn(["bash", "-c", 'ulimit -n 64 && exec "$0" -e "$1"', process.execPath, script], { cwd: tmpdir(), stdout: "pipe", stderr: "pipe" });
    cleanups.push(() => proc.kill());
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    expect(err).toBe("");
    expect(code).toBe(0);
    expect(JSON.parse(out)).toEqual({ code: "ECONNREFUSED", errno: -111, syscall: "connect", message: "Failed to connect" });
    expect(srv.accepted).toHaveLength(0);
  });
});

describe("trap 7: Bun.listen's data option is shared by every accepted socket", () => {
  test("every accepted socket starts with the very same data object as the listener", async () => {
    const shared = { conn: 0 };
    const seen: unknown[] = [];
    const l = listen<{ conn: number }>(
      {
        open(s) {
          seen.push(s.data);
          s.data = { conn: seen.length }; // what the gateway does: its own object per socket
        },
        data() {},
      },
      { data: shared },
    );
    await dial(l.port, { data() {} });
    await dial(l.port, { data() {} });
    await waitFor("two accepts", () => seen.length === 2, 2000);
    expect(seen[0]).toBe(shared);
    expect(seen[1]).toBe(shared);
    expect(l.data).toBe(shared);
    expect(shared).toEqual({ conn: 0 });
  });
});

describe("trap 8: TLS open fires before the handshake when a handshake handler exists", () => {
  let dir: string;
  let tls: { cert: string; key: string };
  let ca: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "bun-platform-tls-"));
    const certs = await makeCerts(dir);
    tls = { cert: readFileSync(certs.server, "utf8"), key: readFileSync(certs.serverKey, "utf8") };
    ca = readFileSync(certs.ca, "utf8");
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("a TLS listener with a handshake handler fires open at the TCP accept, before any ClientHello, and write() there returns 0", async () => {
    const writes: number[] = [];
    const handshakes: boolean[] = [];
    const l = listen(
      {
        open: (s) => void writes.push(s.write("hello")),
        handshake: (_s, ok) => void handshakes.push(ok),
        data() {},
      },
      { tls },
    );
    const raw = await dial(l.port, { data() {} }); // plain TCP: never sends a ClientHello
    await waitFor("open for a client that said nothing", () => writes.length === 1, 2000);
    expect(writes).toEqual([0]);
    expect(handshakes).toEqual([]);
    raw.end();
    await waitFor("the failed handshake", () => handshakes.length === 1, 2000);
    expect(handshakes).toEqual([false]);
  });

  test("a TLS listener without a handshake handler fires open only once the handshake is over", async () => {
    const writes: number[] = [];
    const l = listen({ open: (s) => void writes.push(s.write("hello")), data() {} }, { tls });
    const raw = await dial(l.port, { data() {} });
    await sleep(300);
    expect(writes).toEqual([]); // a TCP connection alone is not an open here

    let got = "";
    await dial(l.port, { data: (_s, d) => void (got += d.toString()) }, { tls: { ca, serverName: "localhost" } });
    await waitFor("the greeting written in open", () => got === "hello", 2000);
    expect(writes).toEqual([5]);

    raw.end(); // a handshake that fails still produces an open, on a socket already gone
    await waitFor("open for the failed handshake", () => writes.length === 2, 2000);
    expect(writes[1]).toBe(-1);
  });

  test("pause() before the handshake holds it back, and drain fires after it for a write() that returned 0", async () => {
    const events: string[] = [];
    let server: Socket | undefined;
    const l = listen(
      {
        open(s) {
          server = s;
          events.push(`write ${s.write("hello")}`);
          s.pause();
        },
        handshake: (_s, ok) => void events.push(`handshake ${ok}`),
        drain: (s) => void events.push(`drain, write ${s.write("hello")}`),
        data() {},
      },
      { tls },
    );
    let clientOpen = false;
    let got = "";
    await dial(l.port, { open: () => void (clientOpen = true), data: (_s, d) => void (got += d.toString()) }, { tls: { ca, serverName: "localhost" } });
    await waitFor("the server's open", () => server, 2000);
    await sleep(300);
    expect(clientOpen).toBe(false); // the paused server has not read the ClientHello
    server!.resume();
    await waitFor("the greeting", () => got === "hello", 2000);
    expect(events).toEqual(["write 0", "handshake true", "drain, write 5"]);
  });

  test("a TLS Bun.connect with a handshake handler fires open before the handshake, and write() there returns 0 (the bytes are dropped)", async () => {
    let got = "";
    const l = listen({ data: (_s, d) => void (got += d.toString()) }, { tls });
    const order: string[] = [];
    await dial(
      l.port,
      {
        open: (s) => void order.push(`open ${s.write("early")}`),
        handshake: (s, ok) => void order.push(`handshake ${ok} ${s.write("late")}`),
        data() {},
      },
      { tls: { ca, serverName: "localhost" } },
    );
    await waitFor("the bytes written after the handshake", () => got === "late", 2000);
    expect(order).toEqual(["open 0", "handshake true 4"]);
  });

  test("a TLS Bun.connect resolves before the handshake: write() right after the await returns 0", async () => {
    let got = "";
    const l = listen({ data: (_s, d) => void (got += d.toString()) }, { tls });
    let opened = false;
    const c = await dial(l.port, { open: () => void (opened = true), data() {} }, { tls: { ca, serverName: "localhost" } });
    expect(opened).toBe(false);
    expect(c.write("too early")).toBe(0);
    await waitFor("open", () => opened, 2000);
    expect(c.write("after open")).toBe(10);
    expect(c.bytesWritten).toBe(10); // plaintext bytes, not TLS records
    await waitFor("the bytes written after open", () => got === "after open", 2000);
  });

  test("a TLS Bun.connect without a handshake handler opens after it, and a certificate that does not verify still opens: authorized false, write() -1", async () => {
    const l = listen({ data() {} }, { tls });
    const seen: { authorized: boolean; write: number; error?: string }[] = [];
    const open = (s: Socket) => void seen.push({ authorized: s.authorized, write: s.write("x"), error: codeOf(s.getAuthorizationError()) });
    await dial(l.port, { open, data() {} }, { tls: { ca, serverName: "localhost" } });
    await dial(l.port, { open, data() {} }, { tls: true }).catch(() => {});
    await waitFor("both opens", () => seen.length === 2, 2000);
    expect(seen[0]).toEqual({ authorized: true, write: 1, error: undefined });
    expect(seen[1]).toEqual({ authorized: false, write: -1, error: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" });
  });
});

describe("trap 9: Bun.connect resolves names with getaddrinfo", () => {
  test("Bun.connect never asks the servers given to dns.setServers(); node:dns resolve4() does", async () => {
    const fake = await startFakeDns(() => ({ answers: [{ type: "A", ttl: 5, address: HOST }] }));
    cleanups.push(() => fake.close());
    const before = dns.getServers();
    dns.setServers([fake.server]);
    cleanups.push(() => dns.setServers(before));
    const srv = acceptor();
    // "localhost" is in /etc/hosts, so getaddrinfo answers it without any DNS server.
    const c = await Bun.connect({ hostname: "localhost", port: srv.port, socket: { data() {} } });
    c.terminate();
    expect(fake.queries).toHaveLength(0);
    expect(await dns.promises.resolve4("localhost")).toEqual([HOST]);
    expect(fake.queries.length).toBeGreaterThan(0);
  });
});

describe("pause() and resume()", () => {
  test("a paused socket still sees the peer's RST at once (close with ECONNRESET)", async () => {
    let err: unknown = null;
    const srv = acceptor({ open: (s) => s.pause(), close: (_s, e) => void (err = e ?? "clean") });
    const c = await dial(srv.port, { data() {} });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    c.write("bytes nobody reads");
    await sleep(50);
    c.terminate();
    await waitFor("the close while paused", () => err !== null, 2000);
    expect(codeOf(err)).toBe("ECONNRESET");
    expect(server.readyState).toBe(-1);
  });

  test("a paused socket's FIN is held back until resume(), after the bytes before it", async () => {
    const events: string[] = [];
    const srv = acceptor(
      {
        open: (s) => s.pause(),
        data: (_s, d) => void events.push(`data ${d.byteLength}`),
        end: () => void events.push("end"),
      },
      { allowHalfOpen: true },
    );
    const c = await dial(srv.port, { data() {}, end() {} }, { allowHalfOpen: true });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    c.write("12345");
    c.shutdown();
    await sleep(300);
    expect(events).toEqual([]);
    expect(server.readyState).toBe(1);
    server.resume();
    await waitFor("the end", () => events.includes("end"), 2000);
    expect(events).toEqual(["data 5", "end"]);
  });
});

describe("terminate()", () => {
  test("terminate() closes at once without an error here and the peer gets ECONNRESET", async () => {
    let err: unknown = null;
    const srv = acceptor({ close: (_s, e) => void (err = e ?? "clean") });
    let localErr: unknown = null;
    const c = await dial(srv.port, { data() {}, close: (_s, e) => void (localErr = e ?? "clean") });
    await waitFor("the accept", () => srv.accepted[0], 2000);
    c.terminate();
    expect(localErr).toBe("clean");
    await waitFor("the peer's close", () => err !== null, 2000);
    expect(codeOf(err)).toBe("ECONNRESET");
  });
});

describe("listeners", () => {
  test("reusePort on Bun.listen shares a port only when both listeners set it", () => {
    const bind = (first: boolean, second: boolean) => {
      const a = Bun.listen({ hostname: HOST, port: 0, socket: { data() {} }, ...({ reusePort: first } as object) });
      try {
        Bun.listen({ hostname: HOST, port: a.port, socket: { data() {} }, ...({ reusePort: second } as object) }).stop(true);
        return "shared";
      } catch (e) {
        return codeOf(e);
      } finally {
        a.stop(true);
      }
    };
    expect(bind(true, true)).toBe("shared");
    expect(bind(true, false)).toBe("EADDRINUSE");
    expect(bind(false, true)).toBe("EADDRINUSE");
    expect(bind(false, false)).toBe("EADDRINUSE");
  });

  test("stop() unlinks a unix listener's path by name, even when another listener owns that path now", async () => {
    const dir = mkdtempSync(join(tmpdir(), "bun-platform-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "gw.sock");
    const handlers = { data() {} };

    const a = Bun.listen({ unix: path, socket: handlers });
    cleanups.push(() => a.stop(true));
    expect(existsSync(path)).toBe(true);
    expect(() => Bun.listen({ unix: path, socket: handlers })).toThrow("Failed to listen");
    unlinkSync(path);
    const b = Bun.listen({ unix: path, socket: handlers });
    cleanups.push(() => b.stop(true));
    const inode = statSync(path).ino;
    expect(inode).toBeGreaterThan(0);

    a.stop(false);
    expect(existsSync(path)).toBe(false); // b's file, removed by a
    const lost = await Bun.connect({ unix: path, socket: { data() {} } }).then(
      (s) => {
        s.terminate();
        return "connected";
      },
      (e: unknown) => codeOf(e),
    );
    expect(lost).toBe("ENOENT");
  });

  test("stop(false) removes the unix path but leaves accepted connections open", async () => {
    const dir = mkdtempSync(join(tmpdir(), "bun-platform-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "gw.sock");
    let echo = "";
    const l = Bun.listen({ unix: path, socket: { data: (s, d) => void s.write(d) } });
    cleanups.push(() => l.stop(true));
    const c = await Bun.connect({ unix: path, socket: { data: (_s, d) => void (echo += d.toString()) } });
    cleanups.push(() => c.terminate());
    l.stop(false);
    expect(existsSync(path)).toBe(false);
    c.write("ping");
    await waitFor("the echo after stop(false)", () => echo === "ping", 2000);
  });
});

describe("socket state", () => {
  test("readyState is 1 while open (also after shutdown() and the peer's FIN) and -1 once closed", async () => {
    let serverEnd = false;
    const srv = acceptor({ end: () => void (serverEnd = true) }, { allowHalfOpen: true });
    let connectErrorState: number | undefined;
    const l = Bun.listen({ hostname: HOST, port: 0, socket: { data() {} } });
    const dead = l.port;
    l.stop(true);
    await Bun.connect({ hostname: HOST, port: dead, socket: { data() {}, connectError: (s) => void (connectErrorState = s.readyState) } }).catch(() => {});
    expect(connectErrorState).toBe(-1);

    const c = await dial(srv.port, { data() {}, end() {} }, { allowHalfOpen: true });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    expect([c.readyState, server.readyState]).toEqual([1, 1]);
    c.shutdown();
    await waitFor("the FIN", () => serverEnd, 2000);
    expect([c.readyState, server.readyState]).toEqual([1, 1]);
    c.end();
    expect(c.readyState).toBe(-1);
  });

  test("bytesWritten counts the bytes write() reported taking (UTF-8 bytes for a string)", async () => {
    const srv = acceptor();
    const c = await dial(srv.port, { data() {} });
    expect(c.bytesWritten).toBe(0);
    expect(c.write("héllo")).toBe(6); // UTF-8 bytes
    expect(c.bytesWritten).toBe(6);
  });

  test("Bun sets TCP_NODELAY on every socket itself: accepted and connected, before any handler asks", async () => {
    // The gateway relies on this and does not call setNoDelay() (one setsockopt less per leg).
    const { dlopen, FFIType, ptr } = await import("bun:ffi");
    const lib = dlopen("libc.so.6", { getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    const nodelay = (sock: Socket<unknown>) => {
      const value = new Int32Array(1);
      const len = new Uint32Array([4]);
      expect(lib.symbols.getsockopt((sock as unknown as { fd: number }).fd, 6 /* IPPROTO_TCP */, 1 /* TCP_NODELAY */, ptr(value), ptr(len))).toBe(0);
      return value[0];
    };
    const srv = acceptor();
    const c = await dial(srv.port, { data() {} });
    const server = await waitFor("the accept", () => srv.accepted[0], 2000);
    expect([nodelay(c), nodelay(server as Socket<unknown>)]).toEqual([1, 1]);
    lib.close();
  });

  test("keepalive options set on a duplicate of a listening socket's descriptor are on every socket Bun accepts from it afterwards (and no TCP_USER_TIMEOUT: docs/bun.md, \"TCP_USER_TIMEOUT cuts slow readers\")", async () => {
    // The gateway sets client keepalive this way, once per listener (Listeners.keepClientsAlive).
    const { dlopen, FFIType, ptr } = await import("bun:ffi");
    const { libc, setKeepAlive } = await import("../../src/libc.ts");
    const lib = dlopen("libc.so.6", { getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    const get = (fd: number, level: number, name: number) => {
      const value = new Int32Array(1);
      const len = new Uint32Array([4]);
      expect(lib.symbols.getsockopt(fd, level, name, ptr(value), ptr(len))).toBe(0);
      return value[0];
    };
    const keepalive = (fd: number) => [get(fd, 1, 9 /* SO_KEEPALIVE */), get(fd, 6, 4 /* TCP_KEEPIDLE */), get(fd, 6, 5 /* TCP_KEEPINTVL */), get(fd, 6, 6 /* TCP_KEEPCNT */), get(fd, 6, 18 /* TCP_USER_TIMEOUT */)];
    const srv = acceptor();
    const keeper = libc().dup((srv.listener as unknown as { fd: number }).fd);
    cleanups.push(() => libc().close(keeper));
    const before = await dial(srv.port, { data() {} });
    setKeepAlive(keeper, 7_500);
    const after = await dial(srv.port, { data() {} });
    await waitFor("both accepts", () => srv.accepted.length === 2, 2000);
    const fdOf = (s: Socket<unknown>) => (s as unknown as { fd: number }).fd;
    expect(keepalive(fdOf(srv.accepted[0]!))[0]).toBe(0); // accepted before: untouched
    expect(keepalive(fdOf(srv.accepted[1]!))).toEqual([1, 7, 1, 10, 0]);
    expect(keepalive(fdOf(after))[0]).toBe(0); // the connecting side is not the listener's
    before.end();
    lib.close();
  });

  test("setKeepAlive(true, ms) returns true and arms the keepalive timer with the delay in milliseconds", async () => {
    const ss = Bun.which("ss");
    const srv = acceptor();
    const c = await dial(srv.port, { data() {} });
    expect(c.setKeepAlive(true, 30_000)).toBe(true);
    if (ss === null) return; // iproute2 missing: the return value is all we can check
    const out = Bun.spawnSync([ss, "-tnoH", "state", "established", `( dport = :${srv.port} )`]).stdout.toString();
    expect(out).toMatch(/timer:\(keepalive,(2\d|30)sec/);
  });
});
