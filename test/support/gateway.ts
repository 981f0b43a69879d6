/** Runs the compiled dist/etcd-gateway as a child process and follows its log. */
import type { Subprocess } from "bun";
import { freePort, waitFor } from "./net.ts";

/** The binary under test: dist/etcd-gateway, or ETCD_GATEWAY_BINARY (e.g. an older build, to show a test fails there). */
export const BINARY = process.env.ETCD_GATEWAY_BINARY ?? `${import.meta.dir}/../../dist/etcd-gateway`;

export interface GatewayProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  /** Every stderr line so far, parsed when JSON. */
  lines: string[];
  records(): Record<string, unknown>[];
  waitForLog(match: string | RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Kills the process (SIGKILL unless another signal is given) and waits for it. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

const running = new Set<GatewayProcess>();

/** Starts the gateway on a free loopback port with `args` (a --listen-addr in args wins). */
export async function startGatewayProcess(
  args: string[],
  opts: { wrap?: (cmd: string[]) => string[]; waitReady?: boolean; /** false: the listen address comes from elsewhere (a config file) */ listen?: boolean } = {},
): Promise<GatewayProcess> {
  const port = freePort();
  const hasListen = opts.listen === false || args.some((a) => a.startsWith("--listen-addr"));
  let cmd = [BINARY, "start", ...(hasListen ? [] : [`--listen-addr=127.0.0.1:${port}`]), ...args];
  if (opts.wrap) cmd = opts.wrap(cmd);
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const lines: string[] = [];
  const gw: GatewayProcess = {
    proc,
    port,
    lines,
    records: () =>
      lines.flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      }),
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
    async stop(signal = "SIGKILL") {
      running.delete(gw);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return await proc.exited;
    },
  };
  running.add(gw);
  void (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stderr) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        lines.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    if (buf) lines.push(buf);
  })();
  if (opts.waitReady !== false) {
    await Promise.race([
      gw.waitForLog("ready to proxy client requests"),
      proc.exited.then((code) => {
        throw new Error(`gateway exited with ${code} before it was ready:\n${lines.join("\n")}`);
      }),
    ]);
  }
  return gw;
}

/** Kills every gateway a test started and did not stop (call in afterEach/afterAll). */
export async function stopAllGateways(): Promise<void> {
  await Promise.all([...running].map((g) => g.stop()));
}

/** Runs the binary to completion with `args`; for CLI tests. */
export function runBinary(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync([BINARY, ...args], { env: { ...process.env, NO_COLOR: "1", ...env }, stdout: "pipe", stderr: "pipe", timeout: 10_000 });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}
