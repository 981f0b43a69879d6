/**
 * The fleet balance benchmark's report: the Markdown section "Balance after faults" (between the
 * markers `<!-- balance:start -->` and `<!-- balance:end -->`, spliced into docs/fleet.md or any
 * `--doc`), one SVG chart per scenario beside it, and the JSON (bench-results/fleet-balance.json).
 *
 * @module
 */
import { ERROR_KINDS, REQUEST_BYTES } from "./fleet-balance-client.ts";
import { analyse, HERD_WINDOW_MS, seconds, type ScenarioResult } from "./fleet-balance-analysis.ts";
import { scenarioText, type BalanceScenario } from "./fleet-balance-faults.ts";
import type { BalancePlan, ScenarioRun } from "./fleet-balance-run.ts";
import { chartSpec, renderSvg, type ChartPanel } from "./fleet-chart.ts";
import { BALANCE_END, BALANCE_START } from "./fleet-doc.ts";
import { fmt } from "./report.ts";
import type { Machine } from "./tools.ts";

export interface ContenderRecord {
  id: string;
  title: string;
  /** One gateway's command, `<port>` and `<m0>,<m1>,<m2>` for its own port and the members. */
  command: string;
  rebalances: boolean;
  skipped: string | null;
  runs: ScenarioRun[];
}

export interface BalanceRecord {
  startedAt: string;
  elapsedS: number;
  command: string;
  plan: BalancePlan;
  machine: Machine;
  notes: string[];
  contenders: ContenderRecord[];
}

const pct = (x: number) => `${fmt(x * 100, 0)} %`;
const shares = (xs: readonly number[]) => xs.map((x) => fmt(x * 100, 0)).join(" / ");
const verdict = (met: boolean) => (met ? "met" : "**missed**");

/** The runs of `scenario`, with what they say. */
function runsOf(r: BalanceRecord, scenario: BalanceScenario): { c: ContenderRecord; run: ScenarioRun; res: ScenarioResult }[] {
  return r.contenders.flatMap((c) => c.runs.filter((run) => run.scenario === scenario).map((run) => ({ c, run, res: analyse(run, r.plan) })));
}

/** One line per contender and scenario: the targets, met or missed. */
function summary(r: BalanceRecord): string[] {
  const out: string[] = [];
  for (const s of r.plan.scenarios) {
    for (const { c, run, res } of runsOf(r, s)) {
      if (run.failure !== null && res.newShares === null) {
        out.push(`- **${s}, ${c.title}**: failed: ${run.failure}`);
        continue;
      }
      const parts: string[] = [];
      const n = res.newShares;
      if (n !== null) parts.push(n.total === 0 ? `new connections ${verdict(false)} (none in the last window)` : `new connections ${verdict(n.met)} (${shares(n.shares)} %)`);
      if (res.openShares !== null) {
        const after = res.balancedAfterS === null ? "not balanced at the end" : `balanced ${fmt(res.balancedAfterS, 0)} s after the last return`;
        const met = res.openShares.met && res.balancedAfterS !== null && res.balancedAfterS <= r.plan.rebalanceMaxS;
        parts.push(`open connections ${c.rebalances ? verdict(met) : res.openShares.met ? "within the band" : "outside the band"} (${shares(res.openShares.shares)} %, ${after})`);
      }
      if (res.herd !== null) parts.push(`outage herd ${verdict(res.herd.met)} (${res.herd.ratio === null ? "no new connections" : `${fmt(res.herd.ratio, 1)}× the fair share`})`);
      const errs = ERROR_KINDS.reduce((a, k) => a + res.errors[k], 0);
      parts.push(`${errs} client error${errs === 1 ? "" : "s"}`);
      out.push(`- **${s}, ${c.title}**: ${parts.join("; ")}${run.failure === null ? "" : `; **failed**: ${run.failure}`}.`);
    }
  }
  for (const c of r.contenders) if (c.skipped !== null) out.push(`- **${c.title}**: not run: ${c.skipped}.`);
  return out;
}

function targetsTable(r: BalanceRecord, s: BalanceScenario): string[] {
  const rows = runsOf(r, s);
  const bound = rows[0]?.res.newShares?.bound;
  const head = [
    "| contender | new client connections, last window: m0 / m1 / m2 % (count; all new connections) | target | clients' open connections at the end: m0 / m1 / m2 % (count; all established) | in 20–47 %? | balanced after | " + (s === "outage" ? "first member back, peak new conn/s vs fair share (≤ 2×) |" : ""),
    `| --- | --- | --- | --- | --- | --- |${s === "outage" ? " --- |" : ""}`,
  ];
  const body = rows.map(({ c, res }) => {
    const n = res.newShares;
    const o = res.openShares;
    const newCell = n === null ? "–" : `${shares(n.shares)} (${fmt(n.total, 0)} in ${fmt(n.windowS, 0)} s; all ${shares(n.allShares)})`;
    const target = n === null ? "–" : `${pct(n.bound[0])}–${pct(n.bound[1])}: ${verdict(n.met)}`;
    const openCell = o === null ? "–" : `${shares(o.shares)} (${o.total}; all ${shares(o.allShares)})`;
    const band = o === null ? "–" : c.rebalances ? verdict(o.met) : o.met ? "yes" : "no";
    const after = res.balancedAfterS === null ? "never" : `${fmt(res.balancedAfterS, 0)} s`;
    const h = res.herd;
    const herdCell = h === null ? "–" : `${fmt(h.peakPerS, 0)}/s on m${h.member} at ${fmt(h.atS, 0)} s vs ${fmt(h.fairPerS, 1)}/s: ${h.ratio === null ? "–" : `${fmt(h.ratio, 1)}×`}, ${verdict(h.met)}`;
    return `| ${c.title} | ${newCell} | ${target} | ${openCell} | ${band} | ${after} |${s === "outage" ? ` ${herdCell} |` : ""}`;
  });
  return [...head, ...body, "", bound === undefined ? "" : `The new-connection target is 1/3 ± 3 standard deviations with each gateway's choice as the unit: ${pct(bound[0])}–${pct(bound[1])} at ${r.plan.size} gateways. The open-connection band (20–47 %) is the target of the contender that rebalances open connections; for the others it is shown for comparison.`];
}

function errorsTable(r: BalanceRecord, s: BalanceScenario): string[] {
  const head = ["| contender | requests ok | " + ERROR_KINDS.join(" | ") + " | idle connections dropped | errors in the steady window | health-check load, steady → scenario (req/s) |", `| --- | --- |${ERROR_KINDS.map(() => " --- |").join("")} --- | --- | --- |`];
  const body = runsOf(r, s).map(({ c, res }) => {
    const l = res.load;
    const load = l.steadyPerS === null || l.scenarioPerS === null ? "–" : `${fmt(l.steadyPerS, 1)} → ${fmt(l.scenarioPerS, 1)}${l.ratio === null ? "" : ` (${fmt(l.ratio, 2)}×)`}`;
    return `| ${c.title} | ${res.ok} | ${ERROR_KINDS.map((k) => res.errors[k]).join(" | ")} | ${res.dropped} | ${res.steadyErrors} | ${load} |`;
  });
  return [...head, ...body];
}

/** The chart panels of `scenario`, one per contender that ran it. */
export function panels(r: BalanceRecord, s: BalanceScenario): ChartPanel[] {
  return r.contenders.flatMap((c) =>
    c.runs.filter((run) => run.scenario === s && run.samples.length > 0).map((run) => {
      const series = seconds(run).flatMap((x) => x.clients.map((open, i) => ({ t: x.t, member: `m${i}`, open })));
      const downs: ChartPanel["downs"] = [];
      for (const e of run.events.filter((x) => x.what === "stop" || x.what === "kill")) {
        const back = run.events.find((x) => x.member === e.member && x.what === "usable" && x.at > e.at);
        const t = (at: number) => (at - run.faultFrom) / 1000;
        downs.push({ from: t(e.at), to: t(back?.at ?? run.end), member: `m${e.member}` });
      }
      return { title: c.title, series, downs };
    }),
  );
}

/** Renders one SVG per scenario; resolves to file name → SVG text. */
export async function charts(r: BalanceRecord): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const s of r.plan.scenarios) {
    const p = panels(r, s);
    if (p.length === 0) continue;
    const spec = chartSpec(`${s}: the clients' open connections per member`, `${r.plan.size} gateways × ${r.plan.clientsPerGateway}; shaded: member down until healthy again`, p);
    out.set(`balance-${s}.svg`, await renderSvg(spec));
  }
  return out;
}

function method(r: BalanceRecord): string[] {
  const p = r.plan;
  const t = p.timing;
  return [
    "### Method",
    "",
    `- **Cluster and fleets.** One real 3-member etcd cluster on loopback (test/support/cluster.ts). For every contender and scenario a fresh fleet of ${p.size} gateways is started (${p.startRate} per second) in front of it, all three members healthy and m1 leading; ${p.settleS} s to settle, a ${p.steadyS} s steady window, then the fault; after the last member is back and healthy, ${p.observeS} s of observation (flapping: ${p.flapObserveS} s); the contender that rebalances is observed until every member holds 20–47 % of the open connections for ${p.bandHoldS} s, at most ${p.rebalanceMaxS} s.`,
    `- **Clients** (scripts/bench/fleet-balance-client.ts, a process of its own): on each gateway ${p.clientsPerGateway} long-lived HTTP/1.1 keep-alive connections, each sending \`GET /version\` every ${fmt(p.requestEveryMs / 1000, 0)} s ±20 %, reconnecting after a jittered 200–500 ms backoff (doubled after each failure in a row, at most 2 s) when closed; plus one short connection (connect, \`GET /version\`, close) per gateway every ${fmt(p.shortEveryMs / 1000, 0)} s ±50 %. Each request is bounded by ${fmt(p.requestTimeoutMs / 1000, 0)} s. Errors: *refused* (connect refused), *reset*, *timeout*, *closed* (the connection ended before a full reply), *http* (not 200). A kept-alive connection closed by the gateway between requests is not an error but *dropped* (and reconnected).`,
    `- **Client connections vs the gateways' own.** Every client request is exactly ${REQUEST_BYTES} bytes (a padding header), and the gateways relay bytes as they are, so a member-side socket that received a non-zero multiple of ${REQUEST_BYTES} bytes (plus one for a FIN; \`bytes_received\` of \`ss -t -i\` once a second, and of \`ss -E -i\` for sockets destroyed between two readings) carries the bench's clients; any other count is a health check (each of our gateways keeps one kept-alive check connection to the member it uses, and a spare member gets a full check on a new connection every \`--health-spare-interval\`) or the member's own (etcd 3.4's JSON gateway dials its own client port). A socket is judged once, at its first sighting with any byte received. The targets, the charts and the shares count client connections; the tables also give the shares of all connections.`,
    "- **Open connections**: the established TCP connections on each member's client port (the member's side), read once a second.",
    "- **New connections**: client connections are counted at their first sighting; *all* new connections as in the cost benchmark (scripts/bench/fleet-measure.ts), only per second: accepted sockets the kernel destroyed (`ss -E`, sock_diag destroy events on the members' client ports) plus the change in connected sockets on those ports between two readings, so a connection opened and closed within a second counts too.",
    `- **Health-check load**: the members' request counters (\`etcd_server_health_*\`, \`grpc_server_started_total\`; etcd counts neither \`/version\` nor \`/metrics\`) over the steady window and from the first fault to the end, each member read right before it is stopped and a restarted one counted from zero; the bench's own \`GET /health\` polls (waiting for a member to be healthy again) are taken out.`,
    `- **Faults.** ${p.scenarios.map((s) => scenarioText(s, t)).join("; ")}. A member is *back* when its \`GET /health\` says healthy. A member's \`GET /health\` is polled every 250 ms after its start until it says healthy.`,
    `- **Outage herd.** From the moment a second member answers healthy (quorum again), for ${HERD_WINDOW_MS / 1000} s: the second with the most new connections on the first member started, against that second's new connections on all members ÷ the members healthy then.`,
    "",
  ];
}

/** The Markdown section, markers included; `images` is the chart directory relative to the document. */
export function balanceSection(r: BalanceRecord, images: string): string {
  const out: string[] = [
    BALANCE_START,
    "## Balance after faults",
    "",
    `Generated by \`bun run bench:fleet --balance\` (scripts/bench/fleet-balance.ts) on ${r.startedAt}; the run took ${fmt(r.elapsedS, 0)} s${r.plan.quick ? " (**--quick**: a smoke run, too short and too small for the targets to mean much)" : ""}. How the connections of a fleet of ${r.plan.size} gateways, each carrying clients, spread over the members after a rolling restart, an outage and a flapping member (issue 22, "Fleet balance").`,
    "",
    "```sh",
    r.command,
    "```",
    "",
    "### Summary",
    "",
    ...summary(r),
    "",
  ];
  for (const s of r.plan.scenarios) {
    out.push(`### ${s[0]!.toUpperCase()}${s.slice(1)}`, "", `${scenarioText(s, r.plan.timing)}.`, "");
    if (runsOf(r, s).some(({ run }) => run.samples.length > 0)) out.push(`![${s}: open connections per member](${images}/balance-${s}.svg)`, "");
    out.push(...targetsTable(r, s), "", ...errorsTable(r, s), "");
  }
  out.push(...method(r), "### Contenders", "", ...r.contenders.map((c) => `- **${c.title}**: \`${c.command}\`${c.skipped === null ? "" : ` (not run: ${c.skipped})`}`), "");
  const m = r.machine;
  out.push(`Machine: ${m.cores} cores, ${m.cpuModel}; Bun ${m.versions.bun?.replace(/^Bun /, "") ?? "?"}; ${m.versions.etcd ?? "etcd ?"}. ${r.notes.join(" ")}`, "", BALANCE_END);
  return out.join("\n");
}

/** The JSON: the plan, and per contender and scenario the results and the readings per second. */
export function balanceJson(r: BalanceRecord): unknown {
  return {
    ...r,
    contenders: r.contenders.map((c) => ({
      ...c,
      runs: c.runs.map((run) => ({
        scenario: run.scenario,
        gateways: run.gateways,
        failure: run.failure,
        dead: run.dead,
        lastBackS: run.lastBackAt === null ? null : (run.lastBackAt - run.faultFrom) / 1000,
        steadyS: (run.steadyTo - run.steadyFrom) / 1000,
        events: run.events.map((e) => ({ ...e, t: (e.at - run.faultFrom) / 1000 })),
        results: analyse(run, r.plan),
        load: run.load,
        seconds: seconds(run),
      })),
    })),
  };
}
