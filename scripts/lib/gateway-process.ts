/**
 * The compiled gateway (dist/etcd-gateway) as a child of a long-running script: started on free
 * loopback ports with its admin endpoint on, its JSON log kept in memory and copied to a file, its
 * `/metrics` read on demand. For scripts; the tests have their own helper in test/support/.
 *
 * @module
 */
import type { Subprocess } from "bun";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts } from "../../test/support/net.ts";
import { track } from "../../test/support/teardown.ts";

export const GATEWAY_BINARY = join(import.meta.dir, "..", "..", "dist", "etcd-gateway");

/** One log line of the gateway: the parsed JSON object, or `{ msg: line }` for a line that is not JSON. */
export type LogRecord = Record<string, unknown> & { msg?: unknown; level?: unknown };

export interface GatewayChild {
  proc: Subprocess<"ignore", "ignore", "pipe">;
  pid: number;
  /** `127.0.0.1:<port>`: where clients connect. */
  listen: string;
  /** `http://127.0.0.1:<port>` of the admin endpoint. */
  adminURL: string;
  /** Where the log is copied. */
  logFile: string;
  /** Every log line so far. */
  records: LogRecord[];
  /** Whether the process is still running. */
  running(): boolean;
  /** One `/metrics` scrape: the sum of the samples of `name` whose labels include `labels` (@default all), or NaN when none. */
  metric(name: string, labels?: string): Promise<number>;
  /** SIGTERM (drain), then SIGKILL after `graceMs`; resolves with the exit code or signal name. */
  stop(graceMs?: number): Promise<number | string>;
}

/**
 * Starts `dist/etcd-gateway start --endpoints=<endpoints> --admin-addr=… <extraArgs>` on free
 * loopback ports and resolves once it logs `ready to proxy client requests`.
 *
 * @throws when it exits first or is not ready within `readyTimeoutMs` (@default 10_000).
 * @example const gw = await startGateway({ endpoints: cluster.endpoints, logFile: "/tmp/gw.log", extraArgs: ["--health-interval=500ms"] })
 */
export async function startGateway(opts: { endpoints: string; logFile: string; extraArgs?: string[]; readyTimeoutMs?: number }): Promise<GatewayChild> {
  const [port, adminPort] = freePorts(2) as [number, number];
  const listen = `127.0.0.1:${port}`;
  const adminURL = `http://127.0.0.1:${adminPort}`;
  const cmd = [GATEWAY_BINARY, "start", `--listen-addr=${listen}`, `--endpoints=${opts.endpoints}`, `--admin-addr=127.0.0.1:${adminPort}`, ...(opts.extraArgs ?? [])];
  writeFileSync(opts.logFile, `# ${cmd.join(" ")}\n`);
  const proc = track(Bun.spawn(cmd, { stdin: "ignore", stdout: "ignore", stderr: "pipe" }));
  const records: LogRecord[] = [];
  const running = () => proc.exitCode === null && proc.signalCode === null;

  const follow = (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    const take = (line: string) => {
      if (line === "") return;
      appendFileSync(opts.logFile, `${line}\n`);
      try {
        records.push(JSON.parse(line) as LogRecord);
      } catch {
        records.push({ msg: line });
      }
    };
    for await (const chunk of proc.stderr) {
      buf += decoder.decode(chunk, { stream: true });
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        take(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    take(buf);
  })();

  const deadline = performance.now() + (opts.readyTimeoutMs ?? 10_000);
  while (!records.some((r) => r.msg === "ready to proxy client requests")) {
    if (!running() || performance.now() > deadline) {
      const why = running() ? "was not ready in time" : `exited (${proc.exitCode ?? proc.signalCode})`;
      proc.kill("SIGKILL");
      await proc.exited;
      await follow;
      throw new Error(`the gateway ${why}; log ${opts.logFile}:\n${records.slice(-10).map((r) => JSON.stringify(r)).join("\n")}`);
    }
    await Bun.sleep(20);
  }

  return {
    proc,
    pid: proc.pid,
    listen,
    adminURL,
    logFile: opts.logFile,
    records,
    running,
    async metric(name, labels) {
      const res = await fetch(`${adminURL}/metrics`, { signal: AbortSignal.timeout(2000), headers: { connection: "close" } });
      return sumSamples(await res.text(), name, labels);
    },
    async stop(graceMs = 5000) {
      if (running()) {
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
        await proc.exited;
        clearTimeout(timer);
      }
      await follow;
      return proc.signalCode ?? proc.exitCode ?? -1;
    },
  };
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
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m?.[1] !== name || (labels !== undefined && !(m[2] ?? "").includes(labels))) continue;
    sum = (Number.isNaN(sum) ? 0 : sum) + Number(m[3]);
  }
  return sum;
}
