/**
 * The idle workload: hold many proxied connections open (each has done one HTTP exchange) and
 * read how much the proxy's resident memory grew per connection.
 *
 * The 2 fds per proxied connection and the 20,000-fd cap per process: 5,000 connections are
 * 10,000 fds in the proxy, 5,000 in the client (its own process, scripts/bench/idle-client.ts)
 * and 5,000 in the hello server (another process).
 *
 * @module
 */
import type { FileSink } from "bun";
import { join } from "node:path";
import { helloEnv, HELLO_COMMAND } from "./backends.ts";
import { lineReader, spawnChild } from "./children.ts";
import { emptyMeasured, noteCrash } from "./contenders.ts";
import { totalFdCount, totalRssKiB } from "./net.ts";
import type { Plan, Workload } from "./types.ts";

/** Lets the proxy settle (finish the last writes, release transient buffers) before reading VmRSS. */
const SETTLE_MS = 300;

function clientCommand(port: number | string, plan: Plan): string[] {
  return [process.execPath, join(import.meta.dir, "idle-client.ts"), String(port), String(plan.idleConnections), String(plan.idleBatch), String(plan.idlePauseMs)];
}

export const idleWorkload: Workload = {
  id: "idle",
  title: "Idle connections",
  commands: (plan) => [
    HELLO_COMMAND,
    `bun scripts/bench/idle-client.ts <port> ${plan.idleConnections} ${plan.idleBatch} ${plan.idlePauseMs}   # <port> <count> <batch> <pause-ms>`,
    "grep VmRSS /proc/<proxy-pid>/status   # before the client starts, and with every connection open",
  ],
  setup: (plan) =>
    helloEnv(async (r) => {
      const m = emptyMeasured();
      await Bun.sleep(SETTLE_MS);
      const before = totalRssKiB(r.pids());
      const fdsBefore = totalFdCount(r.pids());
      // The proxy's open fds, sampled while connections open: the fd cap is what ends some proxies.
      let fdsSeen = fdsBefore;
      const sampler = setInterval(() => {
        if (r.crashed() === null) fdsSeen = Math.max(fdsSeen, totalFdCount(r.pids()));
      }, 100);
      const client = spawnChild("idle-client", clientCommand(r.port, plan), { stdout: "pipe", stdin: "pipe" });
      try {
        const nextLine = lineReader(client.proc.stdout as ReadableStream<Uint8Array>, "idle client");
        const stdin = client.proc.stdin as FileSink;
        const batches = Math.ceil(plan.idleConnections / plan.idleBatch);
        const report = JSON.parse(await nextLine(30_000 + batches * (plan.idlePauseMs + 1000))) as { opened: number; failed: number; errors: string[] };
        await Bun.sleep(SETTLE_MS);
        const after = totalRssKiB(r.pids());
        const fdsAfter = totalFdCount(r.pids());
        stdin.write("report\n");
        stdin.flush();
        const { open } = JSON.parse(await nextLine(5000)) as { open: number };
        m.details = { rssBeforeKiB: before, rssAfterKiB: after, fdsBefore, fdsAfter, fdsMaxSeen: fdsSeen, opened: report.opened, failed: report.failed, stillOpen: open, errors: report.errors };
        const crash = r.crashed();
        if (crash !== null) {
          m.failures["*"] = `${r.contender.id} ${crash.replace(/:.*$/, "")} while connections were opening (${report.opened} of ${plan.idleConnections} opened, then ${report.failed} failed; up to ${fdsSeen} fds seen in the proxy)`;
          return m;
        }
        if (report.failed > 0) m.failures["*"] = `${report.failed} of ${plan.idleConnections} connections failed (${report.errors.join("; ")})`;
        else if (open < report.opened) m.failures["*"] = `${report.opened - open} of ${report.opened} connections were closed while held`;
        if (report.opened > 0) {
          m.values["idle.kib"] = (after - before) / report.opened;
          m.values["idle.fds"] = (fdsAfter - fdsBefore) / report.opened;
        }
        m.values["idle.before"] = before / 1024;
        m.values["idle.after"] = after / 1024;
      } finally {
        clearInterval(sampler);
        await client.stop();
      }
      noteCrash(r, m);
      return m;
    }),
};
