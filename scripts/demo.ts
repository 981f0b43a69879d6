/**
 * `bun run demo`: the README's "try it". Installs Debian's etcd when it is missing, builds
 * dist/etcd-gateway when src/ is newer, starts a 3-member etcd cluster on loopback and the gateway
 * on 127.0.0.1:23790 in front of it, with its admin endpoint on 127.0.0.1:23791 (so that
 * `etcd-gateway status` answers), proves one put/get through it, and keeps everything running
 * until Ctrl-C or SIGTERM, then stops it all and removes the cluster's temp dirs.
 *
 * Usage: bun run demo [-- <gateway flags>]   e.g. bun run demo -- --policy round-robin
 * (a --listen-addr or --admin-addr among the flags replaces the default 127.0.0.1:23790 or
 * 127.0.0.1:23791; ETCD_GATEWAY_BINARY, as in the tests, runs that binary instead of dist/'s)
 */
import type { Subprocess } from "bun";
import { existsSync, readdirSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join, relative, resolve } from "node:path";
import { etcdctl, memberStatus, startCluster, type Cluster } from "../test/support/cluster.ts";

const ROOT = join(import.meta.dir, "..");
const BINARY = process.env.ETCD_GATEWAY_BINARY ?? join(ROOT, "dist", "etcd-gateway");
const DEFAULT_LISTEN = "127.0.0.1:23790";
/** The admin endpoint `etcd-gateway status` asks when given no --admin-addr. */
const DEFAULT_ADMIN = "127.0.0.1:23791";

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
  if (process.env.ETCD_GATEWAY_BINARY !== undefined) return;
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs > newestMtime(join(ROOT, "src"))) return;
  console.log("building dist/etcd-gateway (bun scripts/build.ts)");
  const p = Bun.spawnSync([process.execPath, "scripts/build.ts"], { cwd: ROOT, stdio: ["inherit", "inherit", "inherit"] });
  if (p.exitCode !== 0) throw new Error(`the build failed with exit code ${p.exitCode}`);
}

/** Where `--name` or `--name=value` is in `args`, or -1. */
const flagIndex = (args: readonly string[], name: string) => args.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));

/** The value of the flag at `i` (`--name=value` or `--name value`), or undefined. */
function flagValue(args: readonly string[], i: number): string | undefined {
  if (i < 0) return undefined;
  const a = args[i]!;
  return a.includes("=") ? a.slice(a.indexOf("=") + 1) : args[i + 1];
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

/** What the demo runs, and what to try next. */
interface Running {
  /** The gateway's client address, and its admin endpoint's. */
  readonly gw: string;
  readonly admin: string;
  readonly members: readonly { readonly name: string; readonly endpoint: string; readonly pid: number }[];
  /** The member the gateway's connections go to (sticky), or -1. */
  readonly using: number;
  readonly roundRobin: boolean;
}

/**
 * The lines printed once everything runs: the members, commands to try, and what a killed member
 * does to the gateway's log (src/health/monitor.ts): the member in use is checked every
 * --health-interval (2s) and goes down after --health-fall (3) failed checks in a row, so without
 * traffic `deactivated endpoint` follows the kill within about 4 to 6 s (measured: 5.2 s); a
 * client's connection that fails to dial it has it checked at once (measured: 0.4 s).
 */
function tryIt(r: Running): string[] {
  // Relative to the repository, where the demo is run from; absolute when the binary lies elsewhere.
  const rel = relative(ROOT, resolve(BINARY));
  const bin = rel.startsWith("..") ? resolve(BINARY) : rel;
  const status = `${bin} status${r.admin === DEFAULT_ADMIN ? "" : ` --admin-addr=${r.admin}`}`;
  const victim = r.using >= 0 ? r.members[r.using]! : undefined;
  return [
    "",
    `etcd-gateway is proxying ${r.gw} to the cluster; checked with a put and a get through it.`,
    "",
    "Members:",
    ...r.members.map((m, i) => `  ${m.name}  ${m.endpoint}  pid ${m.pid}${i === r.using ? "   <- the gateway's connections go here now" : ""}`),
    "",
    "Try it from another terminal:",
    `  export ETCDCTL_API=3`,
    `  etcdctl --endpoints=${r.gw} put foo bar`,
    `  etcdctl --endpoints=${r.gw} get foo`,
    `  etcdctl --endpoints=${r.gw} endpoint status -w table   # which member answered`,
    `  etcdctl --endpoints=${r.gw} watch foo                  # keep it open across a failover`,
    `  ${status}   # the members as the gateway sees them (its admin endpoint, ${r.admin})`,
    "",
    r.roundRobin
      ? "See failover (round-robin sends each new connection to the next member): kill one, then run the get again:"
      : "See failover: kill the member the gateway uses, then run the get again:",
    `  kill -9 ${victim?.pid ?? "<pid of a member above>"}`,
    `  The gateway's log then shows a warn line "deactivated endpoint" for ${victim?.endpoint ?? "the member"}`,
    `  ("to":"down", "error":"dial tcp ...: connect: connection refused"), and status shows it down.`,
    "  Without client traffic its health checks find it: within about 4 to 6 s (one every",
    "  --health-interval=2s, down after --health-fall=3 failures). Run the get at once and its",
    "  connection's failed dial has the member checked and taken down within a second, the get",
    "  itself served by another member.",
    "",
    "Ctrl-C (or SIGTERM) stops the gateway and the cluster and removes the temp dirs.",
    "",
  ];
}

async function main(): Promise<void> {
  // `bun run demo -- --flag` may hand the script the `--` too.
  const extra = process.argv.slice(2);
  if (extra[0] === "--") extra.shift();
  const listenFlag = flagIndex(extra, "listen-addr");
  const listen = flagValue(extra, listenFlag) ?? DEFAULT_LISTEN;
  const { host, port } = splitHostPort(listen);
  const adminFlag = flagIndex(extra, "admin-addr");
  const admin = flagValue(extra, adminFlag) ?? DEFAULT_ADMIN;

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

    const args = [BINARY, "start", ...(listenFlag < 0 ? [`--listen-addr=${DEFAULT_LISTEN}`] : []), ...(adminFlag < 0 ? [`--admin-addr=${DEFAULT_ADMIN}`] : []), `--endpoints=${cluster.endpoints}`, ...extra];
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

    console.log(tryIt({ gw, admin, members: cluster.members, using, roundRobin }).join("\n"));
  } catch (e) {
    console.error(`demo failed: ${e instanceof Error ? e.message : String(e)}`);
    await shutdown(1, "failed");
  }
}

await main();
