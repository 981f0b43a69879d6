/**
 * TLS modes against a real TLS etcd cluster with --client-cert-auth: passthrough (the member sees
 * the client's own certificate), origination (--upstream-tls), termination (--listen-cert), their
 * startup errors, certificate reload on SIGHUP, and memory over many TLS handshakes.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import type { Socket as BunSocket } from "bun";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { etcdctl, startCluster, type Cluster } from "../support/cluster.ts";
import { makeCerts, type Certs } from "../support/certs.ts";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, rssKiB, sleep } from "../support/net.ts";

let cluster: Cluster;
let certs: Certs;
let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "etcd-gateway-tls-"));
  certs = await makeCerts(join(dir, "certs"));
  cluster = await startCluster({
    size: 3,
    tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true, clientCert: certs.client, clientKey: certs.clientKey },
  });
}, 60_000);
afterEach(stopAllGateways);
afterAll(async () => {
  await stopAllGateways();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** etcdctl through a gateway; `tls` is what etcdctl itself presents (none for plaintext to the gateway). */
const ctl = (gw: GatewayProcess, args: string[], tls: { cacert?: string; cert?: string; key?: string } = {}) =>
  etcdctl(args, { endpoints: `${tls.cacert ? "https" : "http"}://127.0.0.1:${gw.port}`, dialTimeout: "3s", commandTimeout: "5s", ...tls });

const upstream = () => [`--endpoints=${cluster.endpoints}`, "--upstream-tls", `--upstream-cacert=${certs.ca}`, `--upstream-cert=${certs.client}`, `--upstream-key=${certs.clientKey}`];

describe("passthrough (default)", () => {
  test("etcdctl with its own certificate works through the gateway, and a 64 KiB value comes back byte-exact", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--health-cacert=${certs.ca}`, `--health-cert=${certs.client}`, `--health-key=${certs.clientKey}`]);
    const value = Buffer.from(crypto.getRandomValues(new Uint8Array(48 * 1024))).toString("base64");
    const tls = { cacert: certs.ca, cert: certs.client, key: certs.clientKey };
    expect((await ctl(gw, ["put", "tls/pass", value], tls)).code).toBe(0);
    const got = await ctl(gw, ["get", "tls/pass", "--print-value-only"], tls);
    expect(got.stdout.trim()).toBe(value);
  });
});

describe("origination (--upstream-tls)", () => {
  test("plaintext clients put, get and watch through the gateway, which speaks TLS with its own identity", async () => {
    const gw = await startGatewayProcess(upstream());
    expect((await ctl(gw, ["put", "tls/orig", "hello"])).stdout.trim()).toBe("OK");
    expect((await ctl(gw, ["get", "tls/orig", "--print-value-only"])).stdout.trim()).toBe("hello");
    const watch = Bun.spawn(["etcdctl", `--endpoints=http://127.0.0.1:${gw.port}`, "watch", "tls/w"], { env: { ...process.env, ETCDCTL_API: "3" }, stdout: "pipe", stderr: "ignore" });
    try {
      await sleep(500);
      expect((await ctl(gw, ["put", "tls/w", "event-1"])).code).toBe(0);
      const reader = watch.stdout.getReader();
      let text = "";
      const deadline = performance.now() + 5000;
      while (!text.includes("event-1") && performance.now() < deadline) {
        const r = await Promise.race([reader.read(), sleep(5000).then(() => ({ done: true, value: undefined }))]);
        if (r.done || r.value === undefined) break;
        text += new TextDecoder().decode(r.value);
      }
      expect(text).toContain("event-1");
    } finally {
      watch.kill();
      await watch.exited;
    }
  });

  test("members that do not verify against --upstream-cacert are failed dials with a TLS reason, counted in metrics", async () => {
    const admin = freePort();
    const gw = await startGatewayProcess([...upstream().map((a) => (a.startsWith("--upstream-cacert") ? `--upstream-cacert=${certs.otherCa}` : a)), "--health-check=none", `--admin-addr=127.0.0.1:${admin}`]);
    const r = await ctl(gw, ["get", "x"]);
    expect(r.code).not.toBe(0);
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    expect(metrics).toMatch(/etcd_gateway_tls_handshake_failures_total\{side="member",reason="[^"]+"\} [1-9]/);
    expect(metrics).toMatch(/etcd_gateway_member_connect_failures_total\{endpoint="[^"]+",reason="tls"\} [1-9]/);
    expect(gw.lines.join("\n")).toMatch(/"error":"\d+ failed dials in a row, last: tls: failed to verify certificate: x509: /);
  });
});

describe("termination (--listen-cert)", () => {
  test("clients speak TLS to the gateway; with --listen-client-ca a client certificate is required; re-encrypted to the members", async () => {
    const gw = await startGatewayProcess([...upstream(), `--listen-cert=${certs.server}`, `--listen-key=${certs.serverKey}`, `--listen-client-ca=${certs.ca}`, "--admin-addr=127.0.0.1:" + freePort()]);
    const tls = { cacert: certs.ca, cert: certs.alice, key: certs.aliceKey };
    expect((await ctl(gw, ["put", "tls/term", "v"], tls)).stdout.trim()).toBe("OK");
    expect((await ctl(gw, ["get", "tls/term", "--print-value-only"], tls)).stdout.trim()).toBe("v");
    const noCert = await ctl(gw, ["get", "tls/term"], { cacert: certs.ca });
    expect(noCert.code).not.toBe(0);
    expect(gw.proc.exitCode).toBeNull();
  });

  test("certificates are re-read on SIGHUP without dropping open connections", async () => {
    const cert = join(dir, "listen.pem");
    const key = join(dir, "listen-key.pem");
    copyFileSync(certs.server, cert);
    copyFileSync(certs.serverKey, key);
    const gw = await startGatewayProcess([...upstream(), `--listen-cert=${cert}`, `--listen-key=${key}`, "--health-check=none"]);
    const connectWith = (ca: string) =>
      new Promise<BunSocket>((resolve, reject) => {
        void Bun.connect({ hostname: "127.0.0.1", port: gw.port, tls: { ca: readFileSync(ca, "utf8"), serverName: "localhost" }, socket: { open: (s) => (s.authorized ? resolve(s) : reject(new Error("not authorized"))), data() {}, error: (_s, e) => reject(e) } }).catch(reject);
      });
    const held = await connectWith(certs.ca);
    let heldClosed = false;
    // The held socket's close is watched through a fresh handler object: Bun sockets keep their handlers.
    held.reload({ socket: { data() {}, close: () => void (heldClosed = true) } });
    copyFileSync(certs.otherServer, cert);
    copyFileSync(certs.otherServerKey, key);
    gw.proc.kill("SIGHUP");
    await gw.waitForLog("config reloaded");
    const fresh = await connectWith(certs.otherCa);
    fresh.end();
    await expect(connectWith(certs.ca)).rejects.toThrow();
    expect(heldClosed).toBe(false);
    held.end();
  });

  test("10,000 TLS handshakes do not make the gateway's memory grow without bound", async () => {
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, `--listen-cert=${certs.server}`, `--listen-key=${certs.serverKey}`, "--health-check=none"]);
    const ca = readFileSync(certs.ca, "utf8");
    const handshake = () =>
      new Promise<void>((resolve, reject) => {
        void Bun.connect({ hostname: "127.0.0.1", port: gw.port, tls: { ca, serverName: "localhost" }, socket: { open: (s) => (s.end(), resolve()), data() {}, error: (_s, e) => reject(e) } }).catch(reject);
      });
    const round = async (n: number) => {
      let next = 0;
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next++ < n) await handshake();
      }));
    };
    await round(1000);
    await sleep(300);
    const before = rssKiB(gw.proc.pid);
    await round(9000);
    await sleep(500);
    const after = rssKiB(gw.proc.pid);
    console.log(`TLS handshakes: gateway RSS ${before} KiB after 1,000 -> ${after} KiB after 10,000`);
    expect(after - before).toBeLessThan(40 * 1024);
  }, 120_000);
});

describe("startup errors name the file and the reason", () => {
  const cases: [string, () => string[], RegExp][] = [
    ["an expired listen certificate", () => [`--listen-cert=${certs.expired}`, `--listen-key=${certs.expiredKey}`], /^etcd-gateway: --listen-cert: ".*expired\.pem": certificate expired on /],
    ["a key that does not match", () => [`--listen-cert=${certs.mismatch}`, `--listen-key=${certs.mismatchKey}`], /^etcd-gateway: --listen-key: ".*mismatch-key\.pem" is not the private key of ".*mismatch\.pem"$/],
    ["an unreadable upstream CA", () => ["--upstream-tls", `--upstream-cacert=${join(dir, "nope.pem")}`], /^etcd-gateway: --upstream-cacert: open .*nope\.pem: no such file or directory$/],
    ["an expired upstream client certificate", () => ["--upstream-tls", `--upstream-cert=${certs.expired}`, `--upstream-key=${certs.expiredKey}`], /^etcd-gateway: --upstream-cert: ".*expired\.pem": certificate expired on /],
    ["upstream files without --upstream-tls", () => [`--upstream-cacert=${certs.ca}`], /^etcd-gateway: --upstream-tls: .*need --upstream-tls$/],
  ];
  for (const [name, args, pattern] of cases) {
    test(name, () => {
      const r = runBinary(["start", `--listen-addr=127.0.0.1:${freePort()}`, ...args()]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toMatch(pattern);
    });
  }
});

// Last in the file: it turns on authentication for the shared cluster.
describe("passthrough keeps the client's identity", () => {
  test("RBAC by certificate CN works through the gateway: alice may write alice/ and not bob/", async () => {
    const direct = (args: string[]) => cluster.etcdctl(args); // as root (the launcher's client certificate, CN=root)
    for (const args of [
      ["user", "add", "root", "--new-user-password=root-pw"],
      ["user", "grant-role", "root", "root"],
      ["role", "add", "alice-role"],
      ["role", "grant-permission", "alice-role", "readwrite", "alice/", "--prefix=true"],
      ["user", "add", "alice", "--new-user-password=alice-pw"],
      ["user", "grant-role", "alice", "alice-role"],
      ["auth", "enable"],
    ]) {
      const r = await direct(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
    }
    const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`, "--health-check=tcp"]);
    const alice = { cacert: certs.ca, cert: certs.alice, key: certs.aliceKey };
    const own = await ctl(gw, ["put", "alice/k", "mine"], alice);
    expect(own.stdout.trim(), own.stderr).toBe("OK");
    const other = await ctl(gw, ["put", "bob/k", "not mine"], alice);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toContain("permission denied");
  });
});

describe("termination against hostile clients", () => {
  /** A plain TCP member that echoes and counts the connections it accepts. */
  const countingMember = () => {
    const seen = { accepted: 0 };
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: () => void seen.accepted++, data: (s, d) => void s.write(d) } });
    return { port: l.port, seen, stop: () => l.stop(true) };
  };

  test("no member is dialled for a client that has not finished its TLS handshake, and a silent one is reset after --listen-handshake-timeout", async () => {
    // Found in 514d668: 200 raw TCP connections that never sent a ClientHello held 200 member connections, with no timeout.
    const member = countingMember();
    try {
      const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${member.port}`, `--listen-cert=${certs.server}`, `--listen-key=${certs.serverKey}`, "--health-check=none", "--listen-handshake-timeout=500ms"]);
      const silent = await Promise.all(Array.from({ length: 50 }, () => new Promise<{ closed: boolean; code: string }>((resolve, reject) => {
        const state = { closed: false, code: "" };
        const s = require("node:net").connect({ host: "127.0.0.1", port: gw.port }, () => resolve(state));
        s.on("error", (e: NodeJS.ErrnoException) => (state.code = e.code ?? e.message)).on("close", () => (state.closed = true)).once("error", reject);
      })));
      await sleep(250);
      expect(member.seen.accepted).toBe(0);
      await sleep(1000);
      expect(silent.filter((c) => c.closed)).toHaveLength(50);
      expect(member.seen.accepted).toBe(0);
      // A client that does speak TLS is dialled once, after its handshake, and served.
      const ca = readFileSync(certs.ca, "utf8");
      const reply = await new Promise<string>((resolve, reject) => {
        void Bun.connect({ hostname: "127.0.0.1", port: gw.port, tls: { ca, serverName: "localhost" }, socket: { open: (s) => void s.write("tls hello"), data: (s, d) => void (resolve(d.toString()), s.end()), error: (_s, e) => reject(e) } }).catch(reject);
      });
      expect(reply).toBe("tls hello");
      expect(member.seen.accepted).toBe(1);
    } finally {
      member.stop();
    }
  });

  test("a certificate reload keeps the unix socket listener: its file stays and new clients get the new certificate", async () => {
    // Found in 514d668: Bun's listener.stop() deleted the socket file that the new listener owned.
    const member = countingMember();
    const cert = join(dir, "unix-listen.pem");
    const key = join(dir, "unix-listen-key.pem");
    const path = join(dir, "tls.sock");
    copyFileSync(certs.server, cert);
    copyFileSync(certs.serverKey, key);
    try {
      const gw = await startGatewayProcess([`--listen-addr=unix://${path}`, `--endpoints=127.0.0.1:${member.port}`, `--listen-cert=${cert}`, `--listen-key=${key}`, "--health-check=none"], { listen: false });
      const over = (ca: string) =>
        new Promise<string>((resolve, reject) => {
          void Bun.connect({ unix: path, tls: { ca: readFileSync(ca, "utf8"), serverName: "localhost" }, socket: { open: (s) => void s.write("via unix"), data: (s, d) => void (resolve(d.toString()), s.end()), error: (_s, e) => reject(e) } }).catch(reject);
        });
      expect(await over(certs.ca)).toBe("via unix");
      copyFileSync(certs.otherServer, cert);
      copyFileSync(certs.otherServerKey, key);
      gw.proc.kill("SIGHUP");
      await gw.waitForLog("config reloaded");
      expect(existsSync(path)).toBe(true);
      expect(await over(certs.otherCa)).toBe("via unix");
    } finally {
      member.stop();
    }
  });
});
