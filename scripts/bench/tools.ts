/**
 * The load tools (wrk, iperf3): how they are run, how their output is read, and what counts as a
 * failed run. Also installs missing tools and records versions and the machine.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { cpus, loadavg, release } from "node:os";
import { runToEnd } from "../../test/support/process.ts";
import { gatewayBinary } from "./contenders.ts";

export interface WrkOptions {
  url: string;
  connections: number;
  threads: number;
  seconds: number;
  /** Extra request headers (`-H`). */
  headers?: string[];
  /** A wrk Lua script (`-s`). */
  script?: string;
}

export interface WrkResult {
  rps: number;
  requests: number;
  /** Latency percentiles from `--latency`, ms. */
  p50Ms: number | null;
  p99Ms: number | null;
  /** wrk's "Socket errors" line (absent means all zero). */
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  non2xx: number;
}

/** The wrk argv for `o` (always `--latency`). */
export function wrkCommand(o: WrkOptions): string[] {
  return [
    "wrk", `-t${o.threads}`, `-c${o.connections}`, `-d${o.seconds}s`, "--latency",
    ...(o.headers ?? []).flatMap((h) => ["-H", h]),
    ...(o.script ? ["-s", o.script] : []),
    o.url,
  ];
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };

/** Reads wrk's text report. @throws when it has no `Requests/sec` line */
export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : null;
  };
  const pct = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m").exec(out);
    return m ? Number(m[1]) * (UNIT_MS[m[2]!] ?? NaN) : null;
  };
  const rps = num(/^Requests\/sec:\s+([\d.]+)/m);
  if (rps === null) throw new Error(`no Requests/sec in wrk output: ${out.trim().split("\n").slice(-3).join(" | ")}`);
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps,
    requests: num(/^\s*(\d+) requests in/m) ?? 0,
    p50Ms: pct("50"),
    p99Ms: pct("99"),
    socketErrors: {
      connect: Number(se?.[1] ?? 0),
      read: Number(se?.[2] ?? 0),
      write: Number(se?.[3] ?? 0),
      timeout: Number(se?.[4] ?? 0),
    },
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/) ?? 0,
  };
}

/** Why a wrk run does not count ("" when it does): socket errors or non-2xx answers. */
export function wrkProblem(r: WrkResult): string {
  const e = r.socketErrors;
  const parts: string[] = [];
  const total = e.connect + e.read + e.write + e.timeout;
  if (total > 0) parts.push(`wrk socket errors (connect ${e.connect}, read ${e.read}, write ${e.write}, timeout ${e.timeout})`);
  if (r.non2xx > 0) parts.push(`${r.non2xx} non-2xx responses`);
  if (r.requests === 0) parts.push("no request completed");
  return parts.join("; ");
}

/**
 * Runs wrk; resolves to its parsed report or throws with wrk's own message (exit code, stderr).
 */
export async function runWrk(o: WrkOptions): Promise<WrkResult> {
  const cmd = wrkCommand(o);
  const wrk = Bun.which("wrk");
  if (wrk === null) throw new Error("wrk not installed");
  const res = await runToEnd([wrk, ...cmd.slice(1)], { timeoutMs: (o.seconds + 15) * 1000 });
  if (res.code !== 0) throw new Error(`wrk exited ${res.code}: ${(res.stderr || res.stdout).trim().split("\n").slice(-2).join(" | ")}`);
  return parseWrk(res.stdout);
}

/** The iperf3 client argv: one stream for `seconds` to 127.0.0.1:port, JSON output, `-R` for server→client. */
export function iperfCommand(port: number | string, seconds: number, reverse: boolean): string[] {
  return ["iperf3", "-c", "127.0.0.1", "-p", String(port), "-t", String(seconds), "-J", ...(reverse ? ["-R"] : [])];
}

/** One iperf3 run: Gbit/s from `end.sum_received.bits_per_second`. @throws with iperf3's error */
export async function runIperf(port: number, seconds: number, reverse: boolean): Promise<number> {
  const iperf = Bun.which("iperf3");
  if (iperf === null) throw new Error("iperf3 not installed");
  const res = await runToEnd([iperf, ...iperfCommand(port, seconds, reverse).slice(1)], { timeoutMs: (seconds + 20) * 1000 });
  let report: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    report = JSON.parse(res.stdout) as typeof report;
  } catch {
    throw new Error(`iperf3 exited ${res.code} without a JSON report: ${(res.stderr || res.stdout).trim().slice(0, 200)}`);
  }
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  const bps = report.end?.sum_received?.bits_per_second;
  if (bps === undefined || !(bps > 0)) throw new Error(`iperf3 exited ${res.code} with no end.sum_received.bits_per_second`);
  return bps / 1e9;
}

/** Debian packages of the tools the bench runs, by program name. */
const PACKAGES: Record<string, string> = { wrk: "wrk", haproxy: "haproxy", iperf3: "iperf3", etcd: "etcd-server", etcdctl: "etcd-client", python3: "python3" };

/**
 * Installs missing tools with `apt-get install -y` (saying so on stderr). Whatever is still
 * missing afterwards is returned; the workloads that need it report that in their cells.
 */
export async function ensureTools(): Promise<string[]> {
  const missing = Object.keys(PACKAGES).filter((p) => Bun.which(p) === null);
  if (missing.length === 0) return [];
  const pkgs = missing.map((p) => PACKAGES[p]!);
  const apt = Bun.which("apt-get");
  if (apt === null || process.getuid?.() !== 0) {
    process.stderr.write(`bench: missing ${missing.join(", ")}; install with: apt-get install -y ${pkgs.join(" ")}\n`);
    return missing;
  }
  process.stderr.write(`bench: installing missing tools: apt-get install -y ${pkgs.join(" ")}\n`);
  let res = await runToEnd([apt, "install", "-y", "-q", ...pkgs], { timeoutMs: 300_000 });
  if (res.code !== 0) {
    process.stderr.write("bench: apt-get install failed; running apt-get update and trying again\n");
    await runToEnd([apt, "update", "-q"], { timeoutMs: 300_000 });
    res = await runToEnd([apt, "install", "-y", "-q", ...pkgs], { timeoutMs: 300_000 });
    if (res.code !== 0) process.stderr.write(`bench: apt-get install failed: ${res.stderr.trim().split("\n").slice(-2).join(" | ")}\n`);
  }
  return Object.keys(PACKAGES).filter((p) => Bun.which(p) === null);
}

/** First line of `cmd`'s output (stdout, else stderr), or "not installed". */
async function versionLine(cmd: string[]): Promise<string> {
  const path = cmd[0] === undefined ? null : cmd[0].startsWith("/") ? cmd[0] : Bun.which(cmd[0]);
  if (path === null || !(await Bun.file(path).exists())) return "not installed";
  const res = await runToEnd([path, ...cmd.slice(1)], { timeoutMs: 10_000 });
  return ((res.stdout.trim() || res.stderr.trim()).split("\n")[0] ?? "").trim();
}

export interface Machine {
  cores: number;
  cpuModel: string;
  kernel: string;
  /** 1-minute load average when the run started (other work on the machine shows here). */
  loadAtStart: number;
  nofileLimit: string;
  versions: Record<string, string>;
}

/** Core count, CPU model, kernel, fd limit, and the versions of every tool and contender. */
export async function describeMachine(): Promise<Machine> {
  const model = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? cpus()[0]?.model ?? "unknown";
  const limits = readFileSync("/proc/self/limits", "utf8");
  const nofile = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  const [etcd, haproxy, wrk, iperf3, gateway] = await Promise.all([
    versionLine(["etcd", "--version"]),
    versionLine(["haproxy", "-v"]),
    versionLine(["wrk", "-v"]),
    versionLine(["iperf3", "--version"]),
    (async () => (await versionLine([gatewayBinary(), "version"])).replace(/\s+/g, " "))(),
  ]);
  return {
    cores: cpus().length,
    cpuModel: model.trim(),
    kernel: `Linux ${release()}`,
    loadAtStart: loadavg()[0] ?? 0,
    nofileLimit: nofile ? `${nofile[1]} soft / ${nofile[2]} hard` : "unknown",
    versions: { bun: `Bun ${Bun.version} (${Bun.revision.slice(0, 9)})`, "etcd-gateway": gateway, etcd, haproxy, wrk, iperf3 },
  };
}
