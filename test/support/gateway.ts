/**
 * The compiled dist/etcd-gateway as a child process, for the tests and the soak and
 * linearizability runs alike: started on a free loopback port (and an admin port when asked),
 * its stderr log kept in memory (and copied to a file when asked), its `/metrics` read on demand.
 *
 * @module
 */
import type { Subprocess } from "bun";
import { appendFileSync, writeFileSync } from "node:fs";
import { freePorts, waitFor } from "./net.ts";
import { track } from "./process.ts";

/** The binary under test: dist/etcd-gateway, or ETCD_GATEWAY_BINARY (e.g. an older build, to show a test fails there). */
export const BINARY = process.env.ETCD_GATEWAY_BINARY ?? `${import.meta.dir}/../../dist/etcd-gateway`;

/** One log line of the gateway: the parsed JSON object, or `{ msg: line }` for a line that is not JSON. */
export type LogRecord = Record<string, unknown>;

export interface GatewayProcess {
  proc: Subprocess<"ignore", "ignore", "pipe">;
  pid: number;
  /** The free port chosen for `--listen-addr` (meaningless when the caller gave its own). */
  port: number;
  /** `127.0.0.1:<port>`: where clients connect. */
  listen: string;
  /** `http://127.0.0.1:<port>` of the admin endpoint, when started with `admin: true`. */
  adminURL: string | undefined;
  /** Where the log is copied, when started with `logFile`. */
  logFile: string | undefined;
  /** Every stderr line so far. */
  lines: string[];
  /** Every stderr line so far, parsed (see LogRecord). */
  records(): LogRecord[];
  /** Whether the process is still running. */
  running(): boolean;
  /** Waits for a line containing (or matching) `match`; resolves with it parsed, or as `{ line }` when it is not JSON. */
  waitForLog(match: string | RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /**
   * One `/metrics` scrape (needs `admin: true`): the sum of the samples of `name` whose labels
   * include `labels` (@default all), or NaN when there is none.
   */
  metric(name: string, labels?: string): Promise<number>;
  /**
   * Sends `signal` (@default SIGKILL), SIGKILLs after `graceMs` when given, waits for the exit and
   * for the last log lines; resolves with the exit code.
   *
   * @example await gw.stop("SIGTERM", 5000) // drain, but not for longer than 5 s
   */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number>;
}

export interface GatewayOptions {
  /** Rewrites the command line, e.g. to run it under `env` or `unshare`. */
  wrap?: (cmd: string[]) => string[];
  /** false: resolve at once instead of when it logs `ready to proxy client requests`. @default true */
  waitReady?: boolean;
  /** Bound on the wait for readiness. @default 10_000 */
  readyTimeoutMs?: number;
  /** false: the listen address comes from elsewhere (a config file), so no --listen-addr is added. @default true */
  listen?: boolean;
  /** Turn the admin endpoint on, on a free port (`--admin-addr`), for `adminURL` and `metric`. @default false */
  admin?: boolean;
  /** Copy every log line to this file, after a first line with the command. */
  logFile?: string;
  /**
   * Environment variables for the gateway on top of this process's own; `undefined` removes one
   * (e.g. `{ HTTP_PROXY: "http://127.0.0.1:9", NO_PROXY: undefined }`). @default this process's environment
   */
  env?: Record<string, string | undefined>;
}

/** Gateways started and not stopped yet, for stopAllGateways. */
const started = new Set<GatewayProcess>();

/**
 * Starts the gateway with `args` on a free loopback port (a --listen-addr in args wins) and, unless
 * `waitReady` is false, resolves once it logs `ready to proxy client requests`.
 *
 * @throws when it exits first or is not ready within `readyTimeoutMs` (it is killed then), with its log.
 * @example const gw = await startGatewayProcess([`--endpoints=${cluster.endpoints}`], { admin: true, logFile: "/tmp/gw.log" })
 */
export async function startGatewayProcess(args: string[], opts: GatewayOptions = {}): Promise<GatewayProcess> {
  const [port, adminPort] = freePorts(opts.admin ? 2 : 1) as [number, number | undefined];
  const hasListen = opts.listen === false || args.some((a) => a.startsWith("--listen-addr"));
  const listen = `127.0.0.1:${port}`;
  const adminURL = adminPort === undefined ? undefined : `http://127.0.0.1:${adminPort}`;
  let cmd = [BINARY, "start", ...(hasListen ? [] : [`--listen-addr=${listen}`]), ...(adminPort === undefined ? [] : [`--admin-addr=127.0.0.1:${adminPort}`]), ...args];
  if (opts.wrap) cmd = opts.wrap(cmd);
  const logFile = opts.logFile;
  if (logFile !== undefined) writeFileSync(logFile, `# ${cmd.join(" ")}\n`);
  // Tracked, so a test runner or a soak that dies anyway leaves no gateway behind.
  const proc = track(Bun.spawn(cmd, { stdin: "ignore", stdout: "ignore", stderr: "pipe", ...(opts.env === undefined ? {} : { env: withEnv(opts.env) }) }));
  const lines: string[] = [];
  const running = () => proc.exitCode === null && proc.signalCode === null;

  const follow = (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    const take = (line: string) => {
      lines.push(line);
      if (logFile !== undefined) appendFileSync(logFile, `${line}\n`);
    };
    for await (const chunk of proc.stderr) {
      buf += decoder.decode(chunk, { stream: true });
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        take(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    if (buf) take(buf);
  })();
  // The last lines after an exit; bounded, since a child of the gateway may hold the pipe open a little longer.
  const followed = () => Promise.race([follow, Bun.sleep(2000)]);

  const gw: GatewayProcess = {
    proc,
    pid: proc.pid,
    port,
    listen,
    adminURL,
    logFile,
    lines,
    records: () =>
      lines.map((l) => {
        try {
          return JSON.parse(l) as LogRecord;
        } catch {
          return { msg: l };
        }
      }),
    running,
    async waitForLog(match, timeoutMs = 10_000) {
      const found = await waitFor(`log line ${String(match)}`, () => {
        const line = lines.find((l) => (typeof match === "string" ? l.includes(match) : match.test(l)));
        return line === undefined ? undefined : { line };
      }, timeoutMs);
      try {
        return JSON.parse(found.line) as Record<string, unknown>;
      } catch {
        return { line: found.line };
      }
    },
    async metric(name, labels) {
      if (adminURL === undefined) throw new Error("metric needs a gateway started with admin: true");
      // No pooled connection left behind: it would count in the gateway's descriptors.
      const res = await fetch(`${adminURL}/metrics`, { signal: AbortSignal.timeout(2000), headers: { connection: "close" } });
      return sumSamples(await res.text(), name, labels);
    },
    async stop(signal = "SIGKILL", graceMs) {
      started.delete(gw);
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (running()) {
        proc.kill(signal);
        if (graceMs !== undefined && signal !== "SIGKILL") timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      }
      const code = await proc.exited;
      clearTimeout(timer);
      await followed();
      return code;
    },
  };
  started.add(gw);

  if (opts.waitReady !== false) {
    const timeoutMs = opts.readyTimeoutMs ?? 10_000;
    try {
      await Promise.race([
        gw.waitForLog("ready to proxy client requests", timeoutMs),
        proc.exited.then((code) => {
          throw new Error(`gateway exited with ${code} before it was ready`);
        }),
      ]);
    } catch (e) {
      await gw.stop();
      throw new Error(`${e instanceof Error ? e.message : String(e)}; its log${logFile === undefined ? "" : ` (${logFile})`}:\n${lines.join("\n")}`);
    }
  }
  return gw;
}

/** This process's environment with `changes` applied: a variable set to `undefined` is left out. */
export function withEnv(changes: Record<string, string | undefined>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...changes })) if (v !== undefined) env[k] = v;
  return env;
}

/** Kills every gateway started and not stopped yet (call in afterEach/afterAll). */
export async function stopAllGateways(): Promise<void> {
  await Promise.all([...started].map((g) => g.stop()));
}

/** Runs the binary to completion with `args`; for CLI tests. */
export function runBinary(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync([BINARY, ...args], { env: { ...process.env, NO_COLOR: "1", ...env }, stdout: "pipe", stderr: "pipe", timeout: 10_000 });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** One sample of a Prometheus text exposition: `labels` is the label block as written (`{a="1",b="2"}`, or ""). */
export interface PromSample {
  name: string;
  labels: string;
  value: number;
}

/**
 * The samples of a Prometheus text exposition, comments left out.
 *
 * @example [...promSamples('a{x="1"} 2\n')] // [{ name: "a", labels: '{x="1"}', value: 2 }]
 */
export function* promSamples(text: string): Generator<PromSample> {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m !== null) yield { name: m[1]!, labels: m[2] ?? "", value: Number(m[3]) };
  }
}

/**
 * The sum of the samples of metric `name` in a Prometheus text exposition whose label block contains
 * `labels` (every label set when absent), or NaN when there is none.
 *
 * @example sumSamples('a{x="1"} 2\na{x="2"} 3\n', "a") // 5
 * @example sumSamples('a{x="1"} 2\na{x="2"} 3\n', "a", 'x="2"') // 3
 */
export function sumSamples(text: string, name: string, labels?: string): number {
  let sum = Number.NaN;
  for (const s of promSamples(text)) {
    if (s.name !== name || (labels !== undefined && !s.labels.includes(labels))) continue;
    sum = (Number.isNaN(sum) ? 0 : sum) + s.value;
  }
  return sum;
}
