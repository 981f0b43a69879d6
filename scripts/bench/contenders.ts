/**
 * The contenders: one row each. To benchmark another variant of our gateway (more workers, every
 * feature on), add a row here; every workload and the report pick it up.
 *
 * @module
 */
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { freePort } from "../../test/support/net.ts";
import { runToEnd } from "../../test/support/process.ts";
import { benchDir, spawnChild, type Child } from "./children.ts";
import { processTree, waitConnectable, waitListening } from "./net.ts";
import type { Measured, WorkloadId } from "./types.ts";

export const ROOT = join(import.meta.dir, "..", "..");
export const GATEWAY_BIN = join(ROOT, "dist", "etcd-gateway");
/** scripts/bench/minimal-relay.ts, run by this Bun (the `bun-relay` row). */
export const MINIMAL_RELAY = join(ROOT, "scripts", "bench", "minimal-relay.ts");

/** What a contender is put in front of. */
export interface Upstream {
  /** `host:port` of each backend: the etcd members, or one plain server (hello, iperf3). */
  backends: readonly string[];
  /**
   * Whether the backends are etcd members. Health checks are configured only then: with one plain
   * backend there is nothing to choose between, and iperf3 takes every check connection for a
   * test client (and resets the clients queued behind it).
   */
  etcd: boolean;
}

let gatewayBin = GATEWAY_BIN;
let gatewayHelp: string | null = null;

/** The etcd-gateway binary the rows run (a snapshot once `snapshotGateway` ran). */
export function gatewayBinary(): string {
  return gatewayBin;
}

/**
 * Copies `source` (dist/etcd-gateway unless another build is named) into `dir` and runs every
 * etcd-gateway row from the copy, so the whole run measures one binary even if a test run
 * alongside rebuilds dist/ meanwhile.
 */
export function snapshotGateway(dir: string, source = GATEWAY_BIN): { builtAt: string; sha256: string } {
  const copy = join(dir, "etcd-gateway");
  const builtAt = statSync(source).mtime.toISOString().replace(/\.\d+Z$/, "Z");
  copyFileSync(source, copy);
  gatewayBin = copy;
  gatewayHelp = null;
  const hash = new Bun.CryptoHasher("sha256").update(readFileSync(copy)).digest("hex");
  return { builtAt, sha256: hash };
}

/**
 * Builds dist/etcd-gateway (`bun run build`) when `build` is asked for or it is missing, snapshots
 * it (snapshotGateway) and returns the report's notes on it: when it was built, its hash, the git
 * HEAD and whether src/ had uncommitted changes, or that the build failed. With `binary`, that
 * build is measured instead (nothing is built) and the notes name it.
 */
export async function prepareGateway(build: boolean, binary?: string): Promise<string[]> {
  if (binary !== undefined) {
    if (!existsSync(binary)) throw new Error(`--binary: ${binary} does not exist`);
    const snap = snapshotGateway(benchDir(), binary);
    return [`etcd-gateway: ${binary} (modified ${snap.builtAt}, sha256 ${snap.sha256.slice(0, 12)}), copied at the start so the whole run measures one binary.`];
  }
  const notes: string[] = [];
  if (build || !existsSync(GATEWAY_BIN)) {
    process.stderr.write(`bench: building ${relative(ROOT, GATEWAY_BIN)} (bun run build)\n`);
    const res = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build.ts")], { cwd: ROOT, stdout: "inherit", stderr: "inherit" });
    if (res.exitCode !== 0) notes.push("`bun run build` failed: the etcd-gateway rows report the missing binary.");
  }
  if (existsSync(GATEWAY_BIN)) {
    const snap = snapshotGateway(benchDir());
    const head = (await runToEnd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], { timeoutMs: 5000 })).stdout.trim();
    const dirty = (await runToEnd(["git", "-C", ROOT, "status", "--porcelain", "--", "src"], { timeoutMs: 5000 })).stdout.trim() !== "";
    notes.push(
      `etcd-gateway: dist/etcd-gateway built ${snap.builtAt} (sha256 ${snap.sha256.slice(0, 12)}), copied at the start so the whole run measures one binary; git HEAD ${head || "?"}${dirty ? ", with uncommitted changes in src/ (work in progress by other engineers)" : ""}.`,
    );
  }
  return notes;
}

/** Whether the binary's `start --help` lists `flag` (the CLI grows while the bench is in use). */
export function gatewayHasFlag(flag: string): boolean {
  if (gatewayHelp === null) {
    const res = Bun.spawnSync([gatewayBin, "start", "--help"], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
    gatewayHelp = res.stdout.toString() + res.stderr.toString();
  }
  return gatewayHelp.includes(flag);
}

/** How a contender spreads new connections over several members (what the failover notes say). */
export type Balance = "none" | "sticky" | "first" | "round-robin";

export interface Contender {
  /** Short id for `--contenders` and the JSON. */
  id: string;
  /** Column title in the report. */
  title: string;
  /** One of our gateway's variants: the targets are checked for these rows. */
  ours: boolean;
  balance: Balance;
  /**
   * The argv that starts it listening on 127.0.0.1:`port` in front of `up`; null for direct
   * (clients dial the first backend). `dir` holds its files.
   */
  command: ((port: number | string, up: Upstream, dir: string) => string[]) | null;
  /** Files it needs (name to content, written into `dir` before start), e.g. HAProxy's config. */
  files?: (port: number | string, up: Upstream) => Record<string, string>;
  /** The program it runs, checked before start so a missing one is reported, not crashed on. */
  program?: () => string | null;
  /** The processes whose summed VmRSS is its memory, given the started pid. */
  rssPids(pid: number): number[];
  /** Resolves once it accepts connections on `port`; `alive` turns false if it exits. */
  ready(port: number, alive: () => boolean): Promise<void>;
  /** Workloads it sits out, with the reason shown in its cell. */
  skips?: Partial<Record<WorkloadId, string>>;
  /** A variant of ours run only when asked for (`--contenders`, `bun run bench:variants`), to keep the default run under 6 minutes. */
  variant?: boolean;
}

/** Connect timeout given to every proxy that has one (ours: `--connect-timeout`, HAProxy: `timeout connect`). */
export const CONNECT_TIMEOUT_MS = 1000;

/** Readiness as the rows use it: a TCP connect to the listen port succeeds within 10 s. */
const tcpReady = (port: number, alive: () => boolean) => waitConnectable(port, 10_000, alive);

/**
 * HAProxy `mode tcp` in front of `up`: `balance first` (every connection to the first server that
 * is up, like our sticky policy), TCP health checks for etcd members, a 1 s connect timeout with
 * retries redispatched to another server, and client/server timeouts far beyond any workload.
 */
export function haproxyConfig(port: number | string, up: Upstream, nbthread: number | null): string {
  return [
    ...(nbthread === null ? [] : ["global", `    nbthread ${nbthread}`]),
    "defaults",
    "    mode tcp",
    `    timeout connect ${CONNECT_TIMEOUT_MS}ms`,
    "    timeout client 10m",
    "    timeout server 10m",
    "    retries 3",
    "    option redispatch 1",
    "listen bench",
    `    bind 127.0.0.1:${port}`,
    "    balance first",
    ...up.backends.map((b, i) => `    server m${i} ${b}${up.etcd ? " check inter 1s" : ""}`),
    "",
  ].join("\n");
}

const haproxyRow = (id: string, title: string, nbthread: number | null, skips?: Contender["skips"]): Contender => ({
  id,
  title,
  ours: false,
  balance: "first",
  files: (port, up) => ({ [`${id}.cfg`]: haproxyConfig(port, up, nbthread) }),
  // -db: foreground, one process (no master), so the started pid is the one whose RSS counts.
  command: (_port, _up, dir) => [Bun.which("haproxy") ?? "haproxy", "-db", "-f", join(dir, `${id}.cfg`)],
  program: () => Bun.which("haproxy"),
  rssPids: processTree,
  ready: tcpReady,
  skips,
});

/** Our gateway with default settings (no health checks in front of a plain backend). */
const plainGateway = (binary: string, port: number | string, up: Upstream): string[] => [
  binary, "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${up.backends.join(",")}`,
  `--connect-timeout=${CONNECT_TIMEOUT_MS / 1000}s`, "--log-level=warn",
  ...(!up.etcd && gatewayHasFlag("--health-check") ? ["--health-check=none"] : []),
];

/** The rows, in the order each round runs them. */
export const CONTENDERS: readonly Contender[] = [
  {
    id: "direct",
    title: "direct",
    ours: false,
    balance: "none",
    command: null,
    rssPids: () => [],
    ready: async () => {},
    skips: {
      idle: "no proxy process",
      failover: "a client dialing one member has no failover",
    },
  },
  {
    id: "etcd-gateway",
    title: "etcd-gateway",
    ours: true,
    balance: "sticky",
    command: (port, up) => plainGateway(gatewayBinary(), port, up),
    program: gatewayBinary,
    rssPids: processTree,
    ready: tcpReady,
  },
  {
    // An earlier build of ours, ETCD_GATEWAY_BEFORE=<path>, with the same flags: the before/after
    // ratio of a change, measured in one run.
    id: "etcd-gateway-before",
    title: "etcd-gateway (before)",
    ours: true,
    variant: true,
    balance: "sticky",
    command: (port, up) => plainGateway(process.env.ETCD_GATEWAY_BEFORE ?? "ETCD_GATEWAY_BEFORE", port, up),
    program: () => process.env.ETCD_GATEWAY_BEFORE ?? null,
    rssPids: processTree,
    ready: tcpReady,
  },
  {
    // Two processes sharing the port (SO_REUSEPORT), member state decided by the primary.
    id: "etcd-gateway-w2",
    title: "etcd-gateway --workers 2",
    ours: true,
    variant: true,
    balance: "sticky",
    command: (port, up) => [
      gatewayBinary(), "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${up.backends.join(",")}`,
      `--connect-timeout=${CONNECT_TIMEOUT_MS / 1000}s`, "--log-level=warn", "--workers=2",
      ...(!up.etcd ? ["--health-check=none"] : []),
    ],
    program: gatewayBinary,
    rssPids: processTree,
    ready: tcpReady,
  },
  {
    // Every feature on: admin endpoint with metrics, health checks in front of etcd members (the
    // plain backends get none: iperf3 takes a check connection for a test client), a connection
    // limit and an idle timeout that are never reached, access log off (its default).
    id: "etcd-gateway-all",
    title: "etcd-gateway, all features on",
    ours: true,
    variant: true,
    balance: "sticky",
    command: (port, up) => [
      gatewayBinary(), "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${up.backends.join(",")}`,
      `--connect-timeout=${CONNECT_TIMEOUT_MS / 1000}s`, "--log-level=warn", `--admin-addr=127.0.0.1:${freePort()}`,
      "--max-connections=100000", "--idle-timeout=1h", "--health-interval=1s",
      ...(!up.etcd ? ["--health-check=none"] : []),
    ],
    program: gatewayBinary,
    rssPids: processTree,
    ready: tcpReady,
  },
  {
    id: "etcd-gw",
    title: "etcd's gateway",
    ours: false,
    balance: "round-robin",
    command: (port, up) => [Bun.which("etcd") ?? "etcd", "gateway", "start", `--listen-addr=127.0.0.1:${port}`, `--endpoints=${up.backends.join(",")}`],
    program: () => Bun.which("etcd"),
    rssPids: processTree,
    ready: tcpReady,
  },
  {
    // The ceiling of this runtime: the smallest correct relay on Bun.listen/Bun.connect, with no
    // features (scripts/bench/minimal-relay.ts), to the first backend only.
    id: "bun-relay",
    title: "minimal Bun relay",
    ours: false,
    variant: true,
    balance: "first",
    command: (port, up) => [process.execPath, MINIMAL_RELAY, String(port), up.backends[0] ?? "127.0.0.1:0"],
    rssPids: processTree,
    ready: tcpReady,
    skips: { failover: "one upstream, no failover: it is the floor of the data path, not a gateway" },
  },
  haproxyRow("haproxy", "HAProxy (default threads)", null),
  haproxyRow("haproxy-1t", "HAProxy (nbthread 1)", 1, {
    failover: "same config as the default-threads row; failover does not depend on threads",
  }),
];

/** The contender all ratios are taken against. */
export const BASELINE_ID = "etcd-gw";

/** A started contender. */
export interface Running {
  contender: Contender;
  /** Where clients connect: the proxy's listen port, or the first backend's for direct. */
  port: number;
  /** The process (null for direct). */
  child: Child | null;
  /** The pids to read VmRSS of now. */
  pids(): number[];
  /** Null while it runs, else how it ended and its last log lines. */
  crashed(): string | null;
  stop(): Promise<void>;
}

/**
 * Starts `c` on a free loopback port in front of `backends` and waits until it is ready:
 * `readiness` "row" uses the row's own check; "listening" only waits for the listening socket,
 * for the failover workload, where a readiness connection would make the proxy dial a member.
 * A start that exits at once (say, the free port was taken meanwhile) is tried once more. `env` is
 * added to its environment.
 *
 * @throws when its program is missing, or it exits or is not ready within 10 s (with its log tail).
 */
export async function startContender(c: Contender, up: Upstream, readiness: "row" | "listening" = "row", env?: Record<string, string>): Promise<Running> {
  if (c.command === null) {
    const first = up.backends[0];
    if (first === undefined) throw new Error("no backend");
    const direct = Number(first.slice(first.lastIndexOf(":") + 1));
    return { contender: c, port: direct, child: null, pids: () => [], crashed: () => null, stop: async () => {} };
  }
  const program = c.program?.();
  if (program === null || (program !== undefined && !(await Bun.file(program).exists()))) {
    throw new Error(`${c.id}: program not installed (${program ?? "not on PATH"})`);
  }
  const dir = benchDir();
  for (let attempt = 1; ; attempt++) {
    const port = freePort();
    for (const [name, text] of Object.entries(c.files?.(port, up) ?? {})) writeFileSync(join(dir, name), text);
    const child = spawnChild(c.id, c.command(port, up, dir), { env });
    const crashed = () => (child.running() ? null : `exited (${child.proc.exitCode ?? child.proc.signalCode})${child.logTail() ? `: ${child.logTail(3)}` : ""}`);
    try {
      if (readiness === "row") await c.ready(port, child.running);
      else await waitListening(port, 10_000, child.running);
      return { contender: c, port, child, pids: () => c.rssPids(child.pid), crashed, stop: () => child.stop() };
    } catch (e) {
      const exited = crashed();
      await child.stop();
      if (exited !== null && attempt < 2) continue;
      throw new Error(`${c.id} did not start: ${exited ?? (e instanceof Error ? e.message : String(e))}`);
    }
  }
}

/** A measurement with nothing in it yet. */
export function emptyMeasured(): Measured {
  return { values: {}, failures: {}, details: {} };
}

/** If `r` died during the measurement, that is the workload's failure (for every metric). */
export function noteCrash(r: Running, m: Measured): void {
  const crash = r.crashed();
  if (crash !== null) m.failures["*"] = `crashed: ${crash}`;
}

/** Starts `c`, runs `fn` with it, and always stops it afterwards. */
export async function withContender<T>(
  c: Contender,
  up: Upstream,
  fn: (r: Running) => Promise<T>,
  readiness: "row" | "listening" = "row",
): Promise<T> {
  const running = await startContender(c, up, readiness);
  try {
    return await fn(running);
  } finally {
    await running.stop();
  }
}

/** The start command of `c` with placeholders, and the files it writes, for the report. */
export function describeContender(c: Contender, up: Upstream): { command: string; files: Record<string, string> } {
  if (c.command === null) return { command: "(clients connect to the backend itself)", files: {} };
  const cmd = c.command("<port>", up, "<dir>").map((a) => (a === gatewayBin ? "dist/etcd-gateway" : a === process.execPath ? "bun" : a.replace(`${ROOT}/`, "")));
  return { command: cmd.join(" "), files: c.files?.("<port>", up) ?? {} };
}
