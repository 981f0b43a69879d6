/**
 * Flag values at the edge of their range: every duration works across its whole accepted range
 * (JavaScript timers overflow past 2^31-1 ms, about 24.8 days, and fire after 1 ms), values the
 * kernel cannot honour are refused with a range error, and runtime warnings reach the JSON log.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { startFakeDns } from "../support/dns.ts";
import { runBinary, startGatewayProcess, stopAllGateways } from "../support/gateway.ts";
import { sleep, waitFor } from "../support/net.ts";
import { dial, echoServer, roundTrip } from "../support/peers.ts";

afterEach(stopAllGateways);

/** Every stderr line of a gateway is one JSON object (no runtime warning printed as plain text). */
const allJson = (lines: string[]) => lines.filter((l) => l.trim() !== "" && !l.trim().startsWith("{"));

describe("durations longer than a JavaScript timer", () => {
  test("--drain-timeout=600h: SIGTERM waits for the open connection instead of resetting it at once", async () => {
    const echo = await echoServer();
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${echo.port}`, "--health-check=none", "--drain-timeout=600h"]);
      const s = await dial(gw.port);
      let closed = false;
      s.on("error", () => {}).on("close", () => (closed = true));
      gw.proc.kill("SIGTERM");
      await gw.waitForLog("draining");
      await sleep(500);
      expect(closed).toBe(false);
      expect(gw.proc.exitCode).toBeNull();
      expect(allJson(gw.lines)).toEqual([]);
      s.destroy();
      expect(await gw.proc.exited).toBe(0);
    } finally {
      await echo.close();
    }
  });

  test("--health-interval=1000h: one check per member, not a tight loop", async () => {
    let checks = 0;
    const member = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: (s) => void (checks++, s.end()), data() {} } });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, "--health-check=tcp", "--health-interval=1000h"]);
      // The first check falls at a random moment within the first 10 s; the next is 1000 h later.
      await waitFor("the first check", () => checks >= 1, 12_000, 20);
      await sleep(1000);
      expect(checks).toBe(1);
      expect(allJson(gw.lines)).toEqual([]);
    } finally {
      member.stop(true);
    }
  });

  test("--retry-delay=1000h: an ejected member is not probed again within the hour, let alone at once", async () => {
    // A member that accepts and resets is ejected by the first client (--health-fall=1); a retry
    // probe that fired at once would re-admit it, and the next client would eject it again.
    const resetting = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: (s) => s.terminate(), data() {} } });
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${resetting.port}`, "--health-check=none", "--health-fall=1", "--retry-delay=1000h"]);
      // Each client waits for the gateway to pass on the member's reset (a client that ends first
      // would leave the member's behaviour ambiguous).
      for (let i = 0; i < 5; i++) {
        const s = await dial(gw.port).catch(() => null);
        if (s !== null) await new Promise((r) => s.on("error", () => {}).once("close", r));
        await sleep(100);
      }
      await sleep(300);
      expect(gw.lines.filter((l) => l.includes('"deactivated endpoint"'))).toHaveLength(1);
      expect(gw.lines.filter((l) => l.includes('"activated"'))).toHaveLength(0);
      expect(allJson(gw.lines)).toEqual([]);
    } finally {
      resetting.stop(true);
    }
  });

  test("--discovery-refresh-min=720h --discovery-refresh-max=720h: the SRV records are not queried again at once", async () => {
    const echo = await echoServer();
    const dns = await startFakeDns((q) =>
      q.type === "SRV" && q.name.startsWith("_etcd-client._tcp.")
        ? { answers: [{ type: "SRV", ttl: 1, priority: 0, weight: 1, port: echo.port, target: "m0.long.test" }] }
        : q.type === "A" ? { answers: [{ type: "A", ttl: 1, address: "127.0.0.1" }] } : { rcode: "NXDOMAIN" },
    );
    try {
      const gw = await startGatewayProcess(["--discovery-srv=long.test", "--insecure-discovery", `--dns-server=${dns.server}`, "--health-check=none", "--discovery-refresh-min=720h", "--discovery-refresh-max=720h"]);
      const atStart = dns.queries.filter((q) => q.type === "SRV").length;
      await sleep(1000);
      expect(dns.queries.filter((q) => q.type === "SRV").length).toBe(atStart);
      expect(await roundTrip(gw.port, "srv")).toBe("srv");
      expect(allJson(gw.lines)).toEqual([]);
    } finally {
      dns.close();
      await echo.close();
    }
  });
});

describe("values the kernel cannot honour are refused, naming the range", () => {
  const cases: [string, RegExp][] = [
    ["--keepalive-time=10h", /^etcd-gateway: --keepalive-time: duration "10h" must be at most 9h6m7s \(the kernel's TCP_KEEPIDLE limit\)$/],
    ["--connect-timeout=500us", /^etcd-gateway: --connect-timeout: duration "500us" must be at least 1ms$/],
    ["--connect-timeout=1h", /^etcd-gateway: --connect-timeout: duration "1h" must be at most 5m0s/],
  ];
  for (const [flag, message] of cases) {
    test(flag, () => {
      const r = runBinary(["start", flag]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toMatch(message);
    });
  }
});
