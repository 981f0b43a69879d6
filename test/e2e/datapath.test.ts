/**
 * The data path against real sockets: byte exactness, half-close, backpressure, resets, fd hygiene,
 * drain and fd exhaustion. Peers are node:net (test/support/peers.ts); the gateway is the binary.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Socket as BunSocket } from "bun";
import { createHash, randomBytes } from "node:crypto";
import { startGatewayProcess as startGateway, stopAllGateways } from "../support/gateway.ts";
import { cpuSeconds, fdCount, freePort, rssKiB, sleep, waitFor } from "../support/net.ts";
import { dial, echoServer, hashServer, readAll, roundTrip, writeRandom, type Listening } from "../support/peers.ts";

/** These members are plain TCP peers, not etcd: no etcd health check (see health.test.ts for those). */
const startGatewayProcess = (args: string[], opts?: Parameters<typeof startGateway>[1]) => startGateway(["--health-check=none", ...args], opts);

const MiB = 1 << 20;
const servers: Listening[] = [];
afterEach(stopAllGateways);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});
const keep = (s: Listening) => (servers.push(s), s);

describe("byte exactness", () => {
  test("64 MiB each way at once through an echo member arrive unchanged (SHA-256)", async () => {
    const echo = keep(await echoServer());
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`]);
    const s = await dial(gw.port);
    const received = readAll(s);
    const sent = await writeRandom(s, 64 * MiB);
    s.end();
    const got = await received;
    expect(got.error).toBeUndefined();
    expect(got.bytes).toBe(64 * MiB);
    expect(got.hash).toBe(sent);
  });

  test("a client that sends 64 MiB and half-closes still gets the 64 MiB the member sends after EOF", async () => {
    const results: { received: string; sent: string; bytesIn: number }[] = [];
    const member = keep(await hashServer(64 * MiB, results));
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`]);
    const s = await dial(gw.port);
    const received = readAll(s);
    const sent = await writeRandom(s, 64 * MiB);
    s.end(); // node:net with allowHalfOpen: FIN only, keep reading
    const got = await received;
    expect(results).toHaveLength(1);
    expect(results[0]!.bytesIn).toBe(64 * MiB);
    expect(results[0]!.received).toBe(sent);
    expect(got.bytes).toBe(64 * MiB);
    expect(got.hash).toBe(results[0]!.sent);
  });

  test("client bytes and FIN sent before the upstream connects are delivered, after failing over from a refusing endpoint", async () => {
    const results: { received: string; sent: string; bytesIn: number }[] = [];
    const member = keep(await hashServer(1000, results));
    const refusing = freePort();
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${refusing},127.0.0.1:${member.port}`, "--policy=round-robin"]);
    for (let i = 0; i < 4; i++) {
      const s = await dial(gw.port);
      const received = readAll(s);
      const payload = randomBytes(100_000);
      s.end(payload); // data and FIN at once, before the gateway has dialled anything
      const got = await received;
      expect(got.bytes).toBe(1000);
      expect(results.at(-1)!.received).toBe(createHash("sha256").update(payload).digest("hex"));
    }
  });
});

describe("backpressure", () => {
  test("a slow reader keeps the gateway's memory bounded and loses no byte", async () => {
    let receiverHash = createHash("sha256");
    let receivedBytes = 0;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const { createServer } = await import("node:net");
    const server = createServer({ allowHalfOpen: true }, (s) => {
      // A pause after every chunk: far slower than the sender.
      s.on("data", (c: Buffer) => {
        receiverHash.update(c);
        receivedBytes += c.length;
        s.pause();
        setTimeout(() => s.resume(), 4);
      });
      s.on("end", () => {
        s.end();
        done();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${port}`]);
      const pid = gw.proc.pid;
      await sleep(200); // let the runtime settle before the baseline
      const baseline = rssKiB(pid);
      let peak = baseline;
      const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(pid))), 50);
      const s = await dial(gw.port);
      s.on("data", () => {});
      const sender = createHash("sha256");
      let sentBytes = 0;
      // A fixed volume (not a fixed time), so a loaded machine makes the test slower, not weaker.
      const piece = randomBytes(MiB);
      while (sentBytes < 128 * MiB) {
        const buf = Buffer.from(piece); // distinct content per piece
        buf.writeUInt32BE(sentBytes >>> 0, 0);
        sender.update(buf);
        sentBytes += buf.length;
        if (!s.write(buf)) await new Promise((r) => s.once("drain", r));
      }
      s.end();
      await finished;
      clearInterval(sampler);
      const growthMiB = (peak - baseline) / 1024;
      console.log(`slow reader: sent ${(sentBytes / MiB).toFixed(0)} MiB, gateway RSS ${baseline} KiB -> peak ${peak} KiB`);
      expect(sentBytes).toBe(128 * MiB);
      expect(growthMiB).toBeLessThan(48);
      expect(receivedBytes).toBe(sentBytes);
      expect(receiverHash.digest("hex")).toBe(sender.digest("hex"));
      s.destroy();
    } finally {
      server.close();
    }
  });
});

describe("resets", () => {
  test("a member's reset reaches the client as a reset", async () => {
    const member = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: { data: (s) => s.terminate() },
    });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`]);
      const s = await dial(gw.port);
      const result = readAll(s);
      s.write("hello");
      expect((await result).error).toBe("ECONNRESET");
    } finally {
      member.stop(true);
    }
  });

  test("a client's reset reaches the member as a reset", async () => {
    let memberError: string | undefined = "not closed";
    let closed!: () => void;
    const wasClosed = new Promise<void>((r) => (closed = r));
    const member = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        data() {},
        end() {},
        close(_s, err) {
          memberError = (err as NodeJS.ErrnoException | undefined)?.code;
          closed();
        },
      },
    });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`]);
      const client = await new Promise<BunSocket>((resolve) =>
        Bun.connect({ hostname: "127.0.0.1", port: gw.port, socket: { open: resolve, data() {} } }),
      );
      client.write("hello");
      await sleep(100);
      client.terminate();
      await wasClosed;
      expect(memberError).toBe("ECONNRESET");
    } finally {
      member.stop(true);
    }
  });
});

describe("file descriptors", () => {
  test("5000 short connections leave no file descriptor behind", async () => {
    const echo = keep(await echoServer());
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`]);
    expect(await roundTrip(gw.port, "warm")).toBe("warm");
    await sleep(100);
    const baseline = fdCount(gw.proc.pid);
    let next = 0;
    let failures = 0;
    const worker = async () => {
      while (next < 5000) {
        const i = next++;
        if ((await roundTrip(gw.port, `m${i}`).catch(() => "")) !== `m${i}`) failures++;
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    expect(failures).toBe(0);
    await waitFor("gateway fds back to baseline", () => fdCount(gw.proc.pid) <= baseline, 5000);
  });
});

describe("lifecycle", () => {
  test("after SIGTERM an open connection keeps working until it closes, new ones are refused, then exit 0", async () => {
    const echo = keep(await echoServer());
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--drain-timeout=20s"]);
    const s = await dial(gw.port);
    const echoed = (msg: string) =>
      new Promise<string>((resolve) => {
        s.once("data", (c: Buffer) => resolve(c.toString()));
        s.write(msg);
      });
    expect(await echoed("before")).toBe("before");
    gw.proc.kill("SIGTERM");
    await gw.waitForLog("draining");
    expect(await echoed("during drain")).toBe("during drain");
    await expect(dial(gw.port)).rejects.toThrow();
    expect(gw.proc.exitCode).toBeNull();
    const t0 = performance.now();
    s.end();
    expect(await gw.proc.exited).toBe(0);
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  test("--drain-timeout bounds the drain: connections still open are closed and the process exits 0", async () => {
    const echo = keep(await echoServer());
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--drain-timeout=500ms"]);
    const s = await dial(gw.port);
    // One echoed byte proves the gateway has accepted and paired the connection before the signal.
    await new Promise<void>((r) => {
      s.once("data", () => r());
      s.write("x");
    });
    const result = readAll(s);
    const t0 = performance.now();
    gw.proc.kill("SIGTERM");
    expect(await gw.proc.exited).toBe(0);
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(5000);
    await result;
    expect(gw.lines.join("\n")).toContain("drain timeout reached");
  });

  test("running out of file descriptors does not end the process, and it serves again once clients leave", async () => {
    const echo = keep(await echoServer());
    const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`], {
      wrap: (cmd) => ["bash", "-c", 'ulimit -n 32 && exec "$@"', "--", ...cmd],
    });
    const clients = [];
    for (let i = 0; i < 40; i++) clients.push(await dial(gw.port));
    await sleep(500);
    const cpu0 = cpuSeconds(gw.proc.pid);
    await sleep(1000);
    const cpuPerSecond = cpuSeconds(gw.proc.pid) - cpu0;
    expect(gw.proc.exitCode).toBeNull();
    for (const c of clients) c.destroy();
    await waitFor("a round trip through the recovered gateway", async () => (await roundTrip(gw.port, "back")) === "back", 10_000, 200);
    expect(gw.proc.exitCode).toBeNull();
    console.log(`fd exhaustion: gateway CPU while out of fds ${cpuPerSecond.toFixed(2)} s/s`);
    expect(cpuPerSecond).toBeLessThan(0.5); // backs off instead of spinning on accept
  });
});
