/**
 * `bun run demo`: the README's "try it". Installs Debian's etcd when it is missing, builds
 * dist/etcd-gateway when src/ is newer, starts a 3-member etcd cluster on loopback and the gateway
 * on 127.0.0.1:23790 in front of it, proves one put/get through it, and keeps everything running
 * until Ctrl-C or SIGTERM, then stops it all and removes the cluster's temp dirs.
 *
 * Usage: bun run demo [-- <gateway flags>]   e.g. bun run demo -- --policy round-robin
 * (a --listen-addr among the flags replaces the default 127.0.0.1:23790)
 */
import type { Subprocess } from "bun";
import { existsSync, readdirSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { etcdctl, memberStatus, startCluster, type Cluster } from "../test/support/cluster.ts";

const ROOT = join(import.meta.dir, "..");
const BINARY = join(ROOT, "dist", "etcd-gateway");
const DEFAULT_LISTEN = "127.0.0.1:23790";

/** Installs etcd-server and etcd-client with apt-get when `etcd` or `etcdctl` is not on PATH. */
function ensureEtcd(): void {
  if (Bun.which("etcd") !== null && Bun.which("etcdctl") !== null) return;
  if (Bun.which("apt-get") === null) {
    throw new Error("etcd and etcdctl are not on PATH and this is not a Debian-like system (no apt-get): install etcd 3.4 or later yourself");
  }
  const root = process.getuid?.() === 0;
  if (!root && Bun.which("sudo") === null) throw new Error("etcd is missing and installing it needs root: run the demo as root or install sudo");
  console.log(`etcd/etcdctl not found: installing Debian's etcd-server and etcd-client with apt-get${root ? "" : " via sudo (you are not root)"}`);
  // sudo drops most of the environment, so the variable goes through env(1).
  const prefix = root ? ["env"] : ["sudo", "env"];
  for (const step of [["apt-get", "update"], ["apt-get", "install", "-y", "etcd-server", "etcd-client"]]) {
    const p = Bun.spawnSync([...prefix, "DEBIAN_FRONTEND=noninteractive", ...step], { stdio: ["inherit", "inherit", "inherit"] });
    if (p.exitCode !== 0) throw new Error(`${step.join(" ")} failed with exit code ${p.exitCode}`);
  }
  if (Bun.which("etcd") === null || Bun.which("etcdctl") === null) throw new Error("etcd-server/etcd-client installed, but etcd or etcdctl is still not on PATH");
}

/** The newest modification time (ms) of any file under `dir`. */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/** Runs scripts/build.ts unless dist/etcd-gateway is newer than everything in src/. */
function ensureBuilt(): void {
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs > newestMtime(join(ROOT, "src"))) return;
  console.log("building dist/etcd-gateway (bun scripts/build.ts)");
  const p = Bun.spawnSync([process.execPath, "scripts/build.ts"], { cwd: ROOT, stdio: ["inherit", "inherit", "inherit"] });
  if (p.exitCode !== 0) throw new Error(`the build failed with exit code ${p.exitCode}`);
}

/** Host and port of `host:port` or `[v6]:port`. */
function splitHostPort(addr: string): { host: string; port: number } {
  const at = addr.lastIndexOf(":");
  return { host: addr.slice(0, at).replace(/^\[(.*)\]$/, "$1") || "127.0.0.1", port: Number(addr.slice(at + 1)) };
}

/** Whether a TCP connect to host:port succeeds within a second. */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/** Resolves once the gateway accepts connections; rejects when it exits first or takes over 10 s. */
async function waitListening(gateway: Subprocess, host: string, port: number): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (!(await accepts(host, port))) {
    if (gateway.exitCode !== null || gateway.signalCode !== null) {
      throw new Error(`the gateway exited (${gateway.exitCode ?? gateway.signalCode}) before listening on ${host}:${port}; see its log above (is the port in use? pass -- --listen-addr 127.0.0.1:<port>)`);
    }
    if (performance.now() > deadline) throw new Error(`the gateway did not listen on ${host}:${port} within 10 s`);
    await Bun.sleep(50);
  }
}

async function main(): Promise<void> {
  // `bun run demo -- --flag` may hand the script the `--` too.
  const extra = process.argv.slice(2);
  if (extra[0] === "--") extra.shift();
  const listenFlag = extra.findIndex((a) => a === "--listen-addr" || a.startsWith("--listen-addr="));
  const listen = listenFlag < 0 ? DEFAULT_LISTEN : (extra[listenFlag]!.split("=")[1] ?? extra[listenFlag + 1] ?? DEFAULT_LISTEN);
  const { host, port } = splitHostPort(listen);

  ensureEtcd();
  ensureBuilt();

  let cluster: Cluster | undefined;
  let gateway: Subprocess | undefined;
  let stopping = false;
  const shutdown = async (code: number, why: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${why}: stopping the gateway and the cluster`);
    if (gateway !== undefined && gateway.exitCode === null && gateway.signalCode === null) {
      gateway.kill("SIGTERM");
      // The gateway drains on SIGTERM; do not wait for long-lived watches.
      const timer = setTimeout(() => gateway?.kill("SIGKILL"), 3000);
      await gateway.exited;
      clearTimeout(timer);
    }
    if (cluster !== undefined) {
      await cluster.stop();
      console.log(`removed ${cluster.dir}`);
    }
    process.exit(code);
  };
  process.on("SIGINT", () => void shutdown(0, "interrupted"));
  process.on("SIGTERM", () => void shutdown(0, "terminated"));

  try {
    console.log("starting a 3-member etcd cluster on 127.0.0.1");
    cluster = await startCluster({ size: 3 });
    console.log(`cluster healthy: ${cluster.endpoints} (data and logs in ${cluster.dir})\n`);

    const args = [BINARY, "start", ...(listenFlag < 0 ? [`--listen-addr=${DEFAULT_LISTEN}`] : []), `--endpoints=${cluster.endpoints}`, ...extra];
    console.log(`$ ${args.map((a) => a.replace(ROOT + "/", "")).join(" ")}`);
    // Inherited stderr: the gateway's own log shows in this terminal.
    gateway = Bun.spawn(args, { stdin: "ignore", stdout: "inherit", stderr: "inherit" });
    void gateway.exited.then((c) => shutdown(1, `the gateway exited unexpectedly (${c})`));
    await waitListening(gateway, host, port);

    const gw = `${host.includes(":") ? `[${host}]` : host}:${port}`;
    const put = await etcdctl(["put", "demo/hello", "through the gateway"], { endpoints: gw });
    const get = await etcdctl(["get", "demo/hello", "--print-value-only"], { endpoints: gw });
    if (put.code !== 0 || get.stdout.trim() !== "through the gateway") {
      throw new Error(`put/get through the gateway failed:\n${put.stderr}${get.stderr}`);
    }
    // Under sticky (the default) every connection goes to one member: name it. Round-robin has none.
    const roundRobin = extra.some((a) => a.endsWith("round-robin"));
    const status = roundRobin ? null : await memberStatus(port);
    const using = status === null ? -1 : await cluster.indexOfId(status.memberId);

    const lines = [
      "",
      `etcd-gateway is proxying ${gw} to the cluster; checked with a put and a get through it.`,
      "",
      "Members:",
      ...cluster.members.map((m, i) => `  ${m.name}  ${m.endpoint}  pid ${m.pid}${i === using ? "   <- the gateway's connections go here now" : ""}`),
      "",
      "Try it from another terminal:",
      `  export ETCDCTL_API=3`,
      `  etcdctl --endpoints=${gw} put foo bar`,
      `  etcdctl --endpoints=${gw} get foo`,
      `  etcdctl --endpoints=${gw} endpoint status -w table   # which member answered`,
      `  etcdctl --endpoints=${gw} watch foo                  # keep it open across a failover`,
      "",
      roundRobin
        ? "See failover (round-robin sends each new connection to the next member): kill one, then run the get again:"
        : "See failover: kill the member the gateway uses, then run the get again:",
      `  kill -9 ${using >= 0 ? cluster.members[using]!.pid : "<pid of a member above>"}`,
      "  (the gateway logs \"deactivated endpoint\" and serves the next connection from another member)",
      "",
      "Ctrl-C (or SIGTERM) stops the gateway and the cluster and removes the temp dirs.",
      "",
    ];
    console.log(lines.join("\n"));
  } catch (e) {
    console.error(`demo failed: ${e instanceof Error ? e.message : String(e)}`);
    await shutdown(1, "failed");
  }
}

await main();
