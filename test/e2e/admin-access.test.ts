/**
 * Who may do what on the admin endpoint (issue 20, items 1 and 2), against the binary: over TCP it
 * is read-only for every local user, drains go through a unix socket whose file mode (0600 by
 * default) the kernel enforces, connections that hoard slots cannot starve `/healthz`, and a Host
 * header that names another site (DNS rebinding) is refused with 421.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect, type Server, type Socket } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { BINARY, runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { fdCount, freePort, waitFor } from "../support/net.ts";
import { closeServer, echoOnPort } from "../support/peers.ts";
import { runToEnd } from "../support/process.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-admin-access-"));
// Other users may look inside, so that only the socket's own mode decides who may connect.
chmodSync(dir, 0o755);
const open = new Set<Socket>();
const members: Server[] = [];
afterEach(async () => {
  for (const s of open) s.destroy();
  open.clear();
  await stopAllGateways();
  await Promise.all(members.splice(0).map(closeServer));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Two echo members. */
async function twoMembers(): Promise<{ A: string; B: string }> {
  const [a, b] = [freePort(), freePort()];
  members.push(await echoOnPort(a), await echoOnPort(b));
  return { A: `127.0.0.1:${a}`, B: `127.0.0.1:${b}` };
}

let sockets = 0;
/** A fresh path for a unix socket admin address. */
const socketPath = () => join(dir, `admin-${++sockets}.sock`);
/** `host:port` of the TCP admin address of a gateway started with `admin: true`. */
const tcp = (gw: GatewayProcess) => gw.adminURL!.slice("http://".length);
const adminPort = (gw: GatewayProcess) => Number(new URL(gw.adminURL!).port);

const rows = async (gw: GatewayProcess) => ((await (await fetch(`${gw.adminURL}/status`, { headers: { connection: "close" } })).json()) as { members: { endpoint: string; drained: boolean }[] }).members;

/** The binary run to its end (asynchronously, so servers in this process keep answering), as root or, with `user`, as that user. */
const run = (args: string[], user?: string) => runToEnd([...(user === undefined ? [] : ["runuser", "-u", user, "--"]), BINARY, ...args], { timeoutMs: 10_000, env: { ...process.env, NO_COLOR: "1" } });

const READ_ONLY = "refused: this admin address is read-only; drain and ready are taken on the gateway's unix socket admin address (--admin-addr=unix:///path)";

describe("who may drain (issue 20, item 1)", () => {
  test("over TCP the endpoint is read-only: a drain by any local user is 403 and changes nothing; `member drain` says so on one line", async () => {
    const { A, B } = await twoMembers();
    const gw = await startGatewayProcess([`--endpoints=${A},${B}`, "--health-check=none"], { admin: true });
    const nobody = await run(["member", "drain", A, "--close-idle", `--admin-addr=${tcp(gw)}`], "nobody");
    expect([nobody.code, nobody.stdout, nobody.stderr]).toEqual([1, "", `etcd-gateway: the admin endpoint at ${tcp(gw)} answered 403: ${READ_ONLY}\n`]);
    for (const action of ["drain?close-idle=true", "ready"]) {
      const r = await fetch(`${gw.adminURL}/members/${A}/${action}`, { method: "POST" });
      expect([action, r.status, await r.text()]).toEqual([action, 403, `${READ_ONLY}\n`]);
    }
    expect((await rows(gw)).map((m) => m.drained)).toEqual([false, false]);
    expect((await fetch(`${gw.adminURL}/readyz`)).status).toBe(200);
    expect(gw.lines.filter((l) => l.includes("member drained"))).toEqual([]);
  });

  test("a unix socket admin address takes drains; its mode is 0600, so the kernel refuses other users; reads work on it too, with no Host check", async () => {
    const { A, B } = await twoMembers();
    const sock = socketPath();
    const gw = await startGatewayProcess([`--endpoints=${A},${B}`, "--health-check=none", `--admin-addr=unix://${sock}`], { admin: true });
    expect(await gw.waitForLog("ready to proxy client requests")).toMatchObject({ "admin-addr": `${tcp(gw)},unix://${sock}` });
    const st = statSync(sock);
    expect([st.isSocket(), (st.mode & 0o777).toString(8)]).toEqual([true, "600"]);
    const nobody = await run(["member", "drain", A, `--admin-addr=unix://${sock}`], "nobody");
    expect([nobody.code, nobody.stdout, nobody.stderr]).toEqual([
      1,
      "",
      `etcd-gateway: cannot reach the admin endpoint at unix://${sock}: dial unix ${sock}: connect: permission denied (the socket's mode, --admin-socket-mode, decides who may connect: run this as root or as the gateway's user)\n`,
    ]);
    expect((await rows(gw)).map((m) => m.drained)).toEqual([false, false]);
    const root = await run(["member", "drain", A, "--close-idle", `--admin-addr=unix://${sock}`]);
    expect([root.code, root.stdout, root.stderr]).toEqual([0, `${A} drained: no new connections (state up, 0 connections open, each reset once idle for a second)\n`, ""]);
    expect((await rows(gw)).map((m) => m.drained)).toEqual([true, false]);
    const table = await run(["status", `--admin-addr=unix://${sock}`]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`${A.replace(/\./g, "\\.")}\\s+up,drained\\s`));
    // No browser reaches a unix socket: whatever Host it names is answered.
    const r = await fetch("http://evil.example/status", { unix: sock } as RequestInit);
    expect(r.status).toBe(200);
    expect((await run(["member", "ready", A, `--admin-addr=unix://${sock}`])).code).toBe(0);
    expect((await rows(gw)).map((m) => m.drained)).toEqual([false, false]);
  });

  test("--admin-socket-mode=0660 gives the socket that mode; a bad mode is one line naming the flag, exit 1", async () => {
    const { A } = await twoMembers();
    const sock = socketPath();
    await startGatewayProcess([`--endpoints=${A}`, "--health-check=none", `--admin-addr=unix://${sock}`, "--admin-socket-mode=0660"]);
    expect((statSync(sock).mode & 0o777).toString(8)).toBe("660");
    const bad = runBinary(["start", `--endpoints=${A}`, `--admin-addr=unix://${socketPath()}`, "--admin-socket-mode=rw"]);
    expect([bad.code, bad.stderr]).toEqual([1, 'etcd-gateway: --admin-socket-mode: invalid file mode "rw"; expected octal like 0600\n']);
  });

  test("the socket file: a stale one (its gateway killed) is replaced, a live one or a regular file is refused on one line, and it is removed at exit", async () => {
    const { A } = await twoMembers();
    const sock = socketPath();
    const args = [`--endpoints=${A}`, "--health-check=none", `--admin-addr=unix://${sock}`];
    const first = await startGatewayProcess(args);
    const live = runBinary(["start", `--listen-addr=127.0.0.1:${freePort()}`, ...args]);
    expect([live.code, live.stderr]).toEqual([1, `etcd-gateway: --admin-addr: cannot listen on unix://${sock}: ${sock} is in use by another process; nothing was changed\n`]);
    await first.stop("SIGKILL");
    expect(statSync(sock).isSocket()).toBe(true); // left behind
    const second = await startGatewayProcess(args);
    expect((await run(["member", "drain", A, `--admin-addr=unix://${sock}`])).code).toBe(0);
    expect(await second.stop("SIGTERM", 5000)).toBe(0);
    expect(existsSync(sock)).toBe(false);
    writeFileSync(sock, "not a socket");
    const file = runBinary(["start", `--listen-addr=127.0.0.1:${freePort()}`, ...args]);
    expect([file.code, file.stderr]).toEqual([1, `etcd-gateway: --admin-addr: cannot listen on unix://${sock}: ${sock} exists and is not a socket; nothing was changed\n`]);
  });

  test("`member drain|ready` ask unix:///run/etcd-gateway/admin.sock unless told otherwise", () => {
    if (existsSync("/run/etcd-gateway/admin.sock")) return; // a gateway runs on this host: do not drain its members
    const r = runBinary(["member", "drain", "10.9.9.9:2379"]);
    expect([r.code, r.stderr]).toEqual([
      1,
      "etcd-gateway: cannot reach the admin endpoint at unix:///run/etcd-gateway/admin.sock: dial unix /run/etcd-gateway/admin.sock: connect: no such file or directory (is the gateway running with --admin-addr=unix:///run/etcd-gateway/admin.sock?)\n",
    ]);
  });
});

/** One request on a new connection, read until the server closes it (or `giveUpMs`): the status line and body. */
function request(port: number, text: string, giveUpMs = 3000): Promise<{ status: string; body: string }> {
  return new Promise((resolve) => {
    let got = "";
    const s = connect({ host: "127.0.0.1", port });
    const giveUp = setTimeout(() => s.destroy(), giveUpMs);
    s.once("connect", () => s.write(text));
    s.on("data", (c: Buffer) => (got += c.toString("latin1")));
    s.on("error", (e: NodeJS.ErrnoException) => (got ||= e.code ?? e.message));
    s.once("close", () => {
      clearTimeout(giveUp);
      const split = got.indexOf("\r\n\r\n");
      resolve({ status: got.split("\r\n")[0]!, body: split < 0 ? "" : got.slice(split + 4) });
    });
  });
}

/** A connection to the admin endpoint that sends `text` (maybe nothing) and holds; what it receives is in `got()`. */
function hold(port: number, text: string): { s: Socket; connected: Promise<void>; got(): string; closed(): boolean } {
  let got = "";
  let closed = false;
  const s = connect({ host: "127.0.0.1", port });
  open.add(s);
  const connected = new Promise<void>((r) => s.once("connect", () => (text === "" ? r() : s.write(text, () => r()))));
  s.on("data", (c: Buffer) => (got += c.toString("latin1")));
  s.on("error", () => {});
  s.once("close", () => (closed = true));
  return { s, connected, got: () => got, closed: () => closed };
}

const HEALTHZ = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

describe("connection hoarding (issue 20, item 1)", () => {
  test("100 connections that send nothing take no slot: /healthz and `status` answer at once", async () => {
    const { A } = await twoMembers();
    const gw = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none"], { admin: true });
    const idle = Array.from({ length: 100 }, () => hold(adminPort(gw), ""));
    await Promise.all(idle.map((h) => h.connected));
    const t0 = performance.now();
    expect((await request(adminPort(gw), HEALTHZ)).status).toBe("HTTP/1.1 200 OK");
    expect(performance.now() - t0).toBeLessThan(1000);
    const st = await run(["status", `--admin-addr=${tcp(gw)}`]);
    expect([st.code, st.stderr]).toEqual([0, ""]);
  });

  test("16 connections that never finish their request: a new request is answered, the oldest held is closed with 503 to make room, the log says so once", async () => {
    const { A } = await twoMembers();
    const gw = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none"], { admin: true });
    const base = fdCount(gw.pid);
    const held = Array.from({ length: 16 }, () => hold(adminPort(gw), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
    await Promise.all(held.map((h) => h.connected));
    await waitFor("the 16 held connections inside the gateway", () => fdCount(gw.pid) >= base + 16, 5000, 10);
    expect((await request(adminPort(gw), HEALTHZ)).status).toBe("HTTP/1.1 200 OK");
    await waitFor("the oldest held connection closed", () => held[0]!.closed(), 3000, 10);
    expect(held[0]!.got()).toStartWith("HTTP/1.1 503 Service Unavailable\r\n");
    expect(held[0]!.got()).toEndWith("\r\n\r\nclosed to make room: the admin endpoint is at its connection limit and this connection had not sent its request\n");
    expect(held.slice(1).map((h) => h.closed())).toEqual(Array(15).fill(false));
    expect(await gw.waitForLog("admin connection limit reached")).toMatchObject({ level: "warn", msg: "admin connection limit reached: closed the connection waiting longest on its client", address: tcp(gw), limit: 16, closed: 1 });
    // The others finish their request and are answered.
    for (const h of held.slice(1)) h.s.write("\r\n");
    await waitFor("15 answers", () => held.slice(1).every((h) => h.closed()), 5000, 10);
    expect(held.slice(1).map((h) => h.got().split("\r\n")[0])).toEqual(Array(15).fill("HTTP/1.1 200 OK"));
  });

  test("64 connections that send half a request and reconnect the moment they are closed: 50 probes of /healthz in a row are each answered within 1 s, and the endpoint holds at most 32 descriptors", async () => {
    const { A } = await twoMembers();
    const gw = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none"], { admin: true });
    const base = fdCount(gw.pid);
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, fdCount(gw.pid))), 2);
    let flooding = true;
    let opened = 0;
    const flood = () => {
      if (!flooding) return;
      const h = hold(adminPort(gw), "GET /metrics HTTP/1.1\r\n");
      opened++;
      h.s.resume();
      h.s.once("close", () => {
        open.delete(h.s);
        setImmediate(flood);
      });
    };
    for (let i = 0; i < 64; i++) flood();
    const seen: string[] = [];
    try {
      await waitFor("the flood under way", () => opened > 500, 10_000, 10);
      for (let i = 0; i < 50; i++) {
        const t0 = performance.now();
        const r = await request(adminPort(gw), HEALTHZ, 1000);
        seen.push(performance.now() - t0 < 1000 ? r.status : `${r.status} after ${Math.round(performance.now() - t0)} ms`);
      }
    } finally {
      flooding = false;
      clearInterval(sampler);
    }
    expect(seen).toEqual(Array(50).fill("HTTP/1.1 200 OK"));
    expect(opened).toBeGreaterThan(1000);
    // 32 admin connections at most (twice the cap, while accepting pauses), and a little slack.
    expect(peak - base <= 32 + 4 ? "at most 36" : peak - base).toBe("at most 36");
  }, 30_000);
});

const MISDIRECTED = "misdirected request: the Host header names neither an IP address, localhost nor a name in --admin-host-whitelist (a guard against DNS rebinding)\n";

describe("the Host check (issue 20, item 2: DNS rebinding)", () => {
  test("every path asked with a Host that names another site is 421, as etcd answers a Host not in its --host-whitelist; IP literals, localhost, this host's name and HTTP/1.0 without Host are answered", async () => {
    const { A } = await twoMembers();
    const gw = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none"], { admin: true });
    const port = adminPort(gw);
    for (const path of ["/status", "/metrics", "/healthz", "/readyz", "/nope"]) {
      for (const host of [`evil.example:${port}`, `127.0.0.1.nip.io:${port}`, "evil.example"]) {
        const r = await request(port, `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
        expect([path, host, r.status, r.body]).toEqual([path, host, "HTTP/1.1 421 Misdirected Request", MISDIRECTED]);
      }
    }
    // The authority of an absolute-form target stands for the Host header.
    expect((await request(port, `GET http://evil.example:${port}/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)).status).toBe("HTTP/1.1 421 Misdirected Request");
    expect((await request(port, `POST /members/${A}/drain HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n`)).status).toBe("HTTP/1.1 421 Misdirected Request");
    for (const head of [`Host: 127.0.0.1:${port}`, `Host: localhost:${port}`, `Host: LOCALHOST.:${port}`, `Host: [::1]:${port}`, `Host: 127.1:${port}`, `Host: ${hostname()}:${port}`]) {
      const r = await request(port, `GET /status HTTP/1.1\r\n${head}\r\n\r\n`);
      expect([head, r.status]).toEqual([head, "HTTP/1.1 200 OK"]);
    }
    expect((await request(port, "GET /status HTTP/1.0\r\n\r\n")).status).toBe("HTTP/1.1 200 OK");
    expect((await request(port, "GET /status HTTP/1.1\r\n\r\n")).status).toBe("HTTP/1.1 400 Bad Request");
    expect((await request(port, "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n")).status).toBe("HTTP/1.1 400 Bad Request");
    // Logged once (then at most every 10 s, with the count).
    expect(await gw.waitForLog("DNS rebinding guard")).toMatchObject({ level: "warn", msg: "refused an admin request for another host name (DNS rebinding guard)", address: tcp(gw), host: `evil.example:${port}`, refused: 1 });
    expect(gw.lines.filter((l) => l.includes("DNS rebinding guard"))).toHaveLength(1);
    // What the commands send is answered.
    expect((await run(["status", `--admin-addr=${tcp(gw)}`])).code).toBe(0);
    expect((await run(["status", `--admin-addr=localhost:${port}`])).code).toBe(0);
  });

  test("--admin-host-whitelist: the names it lists are answered, * answers any; a bad name is one line naming the flag, exit 1", async () => {
    const { A } = await twoMembers();
    const listed = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none", "--admin-host-whitelist=gw.example.test,Other.Example.Test."], { admin: true });
    for (const [host, status] of [["gw.example.test:80", "200 OK"], ["other.example.test", "200 OK"], ["GW.EXAMPLE.TEST.", "200 OK"], ["evil.example", "421 Misdirected Request"], ["gw.example.test.evil.example", "421 Misdirected Request"]]) {
      const r = await request(adminPort(listed), `GET /healthz HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      expect([host, r.status]).toEqual([host, `HTTP/1.1 ${status}`]);
    }
    const any = await startGatewayProcess([`--endpoints=${A}`, "--health-check=none", "--admin-host-whitelist=*"], { admin: true });
    expect((await request(adminPort(any), "GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n")).status).toBe("HTTP/1.1 200 OK");
    const bad = runBinary(["start", `--endpoints=${A}`, "--admin-host-whitelist=gw.example.test,evil/example"]);
    expect([bad.code, bad.stderr]).toEqual([1, 'etcd-gateway: --admin-host-whitelist: invalid host name "evil/example"\n']);
  });
});
