/**
 * `bun scripts/bench/return-seen.ts`: how soon every gateway of a fleet sees a returning member as
 * usable again (issue 22: sticky spreads new connections over a member only once a gateway sees it
 * back). N gateways with default flags (or `--before <binary>`'s) run in front of a real 3-member
 * cluster; one member is stopped (SIGTERM) for `--down` seconds, long enough for the checks of a
 * down member to reach their longest wait, and started again. Per gateway: the time from the
 * member answering `/health` again to the gateway's `activated` line for it. Prints a Markdown table.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { startCluster } from "../../test/support/cluster.ts";
import { BINARY, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../../test/support/gateway.ts";
import { sleep } from "../../test/support/net.ts";

const { values } = parseArgs({
  options: { size: { type: "string", default: "30" }, down: { type: "string", default: "60" }, before: { type: "string" } },
});
const SIZE = Number(values.size);
const DOWN_S = Number(values.down);
const VICTIM = 2;

/** The nearest-rank quantile `q` of sorted `xs`. */
const quantile = (xs: readonly number[], q: number) => xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]!;

async function measure(binary: string): Promise<{ seen: number[]; missing: number; sawDown: number }> {
  const cluster = await startCluster();
  const gws: GatewayProcess[] = [];
  try {
    for (let i = 0; i < SIZE; i++) {
      gws.push(await startGatewayProcess([`--endpoints=${cluster.endpoints}`], { wrap: (cmd) => [binary, ...cmd.slice(1)] }));
      await sleep(50);
    }
    await sleep(12_000); // every first check done
    const victim = cluster.members[VICTIM]!;
    const before = gws.map((g) => g.records().length);
    await cluster.kill(VICTIM, "SIGTERM");
    await sleep(DOWN_S * 1000);
    const from = gws.map((g) => g.records().length);
    // Only gateways that saw it down can see it back (a spare is checked every 60 s: one down for
    // less may not have been checked meanwhile).
    const sawDown = gws.filter((g, i) => g.records().slice(before[i], from[i]).some((r) => r.msg === "deactivated endpoint" && r.address === victim.endpoint));
    await cluster.restart(VICTIM, 30_000);
    const healthyAt = performance.now();
    const seenAt = new Map<GatewayProcess, number>();
    while (seenAt.size < sawDown.length && performance.now() - healthyAt < 120_000) {
      gws.forEach((g, i) => {
        if (seenAt.has(g) || !sawDown.includes(g)) return;
        if (g.records().slice(from[i]).some((r) => r.msg === "activated" && r.address === victim.endpoint)) seenAt.set(g, performance.now());
      });
      await sleep(100);
    }
    const seen = [...seenAt.values()].map((t) => (t - healthyAt) / 1000).sort((a, b) => a - b);
    return { seen, missing: sawDown.length - seen.length, sawDown: sawDown.length };
  } finally {
    await stopAllGateways();
    await cluster.stop();
  }
}

const contenders: [string, string][] = [["this build", BINARY]];
if (values.before !== undefined) contenders.push([`before (${values.before})`, values.before]);
console.log(`| gateways | member down | contender | gateways that saw it down | seen usable after it answered /health again: median / p90 / max (s) | never within 120 s |`);
console.log(`| --- | --- | --- | --- | --- | --- |`);
for (const [name, binary] of contenders) {
  const { seen, missing, sawDown } = await measure(binary);
  const f = (x: number) => x.toFixed(1);
  const cells = seen.length === 0 ? "–" : `${f(quantile(seen, 0.5))} / ${f(quantile(seen, 0.9))} / ${f(seen[seen.length - 1]!)}`;
  console.log(`| ${SIZE} | ${DOWN_S} s | ${name} | ${sawDown} | ${cells} | ${missing} |`);
}
process.exit(0);
