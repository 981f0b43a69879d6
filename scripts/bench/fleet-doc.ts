/**
 * The Markdown document the fleet benchmark writes (docs/fleet.md for the recorded run): a summary
 * in words, the machine, one table per scenario, requests by kind, memory, discovery, every window
 * as measured, the method behind every number, and the fleets' commands. The section of the balance
 * mode (`--balance`, scripts/bench/fleet-balance-report.ts), between its markers, is kept when the
 * document is written again, and replaced in place by a new balance run.
 *
 * @module
 */
import { added, discoveryTable, driftCores, memoryTable, requestKindsTable, scenarioTable, windowOf, windowsTable, type FleetRecord, type FleetRun } from "./fleet-report.ts";
import { ROLES, SCENARIO_TEXT } from "./fleet-scenarios.ts";
import { fmt } from "./report.ts";

const SCENARIO_TITLES = { steady: "Steady state", "member-down": "One member down", "leader-change": "Leader change" } as const;

/** The summary in words: what one gateway of each fleet costs in the first scenario, and the baseline's drift. */
function summary(r: FleetRecord): string[] {
  const scenario = r.plan.scenarios[0] ?? "steady";
  const out: string[] = [];
  const first = windowOf(r, "none", "steady");
  const last = windowOf(r, "none-end", "steady");
  const drift = driftCores(r);
  for (const f of r.fleets) {
    const a = added(r, f, scenario);
    if (a === null) continue;
    const noise = drift !== null && Math.abs(a.cores) <= drift ? " (no more than the baseline's drift, below: not measurably different from zero)" : "";
    const st = f.startTransitions;
    const broken = st !== null && st.down > 0 ? ` **Its gateways marked members down ${st.down} times before the first window (last reason: \`${st.lastError ?? "?"}\`), with every member healthy: these figures are not those of a working fleet.**` : "";
    out.push(
      `- **${f.title}**: ${fmt(a.perGatewayMillicores, 3)} millicores of etcd CPU per gateway${noise}, so ${fmt(a.tenThousandCores, 1)} cores for 10,000 gateways; ${fmt(a.requestsPerGateway, 2)} requests/s and ${fmt(a.connsPerGateway, 2)} new connections/s per gateway to the cluster${f.memory === null ? "" : `; ${fmt(f.memory.privateMiB.median, 1)} MiB private memory per gateway`}.${broken}`,
    );
  }
  if (first !== undefined && last !== undefined && drift !== null) {
    out.push(
      `- The baseline measured again at the end used ${fmt(last.etcdCores, 3)} cores against ${fmt(first.etcdCores, 3)} at the start: a drift of ${fmt(last.etcdCores - first.etcdCores, 3)} cores, i.e. ${fmt((drift / r.plan.size) * 1000, 3)} millicores per gateway at ${r.plan.size} gateways. Per-gateway differences smaller than that are noise.`,
    );
  }
  return [`In the ${SCENARIO_TITLES[scenario].toLowerCase()} window, each fleet added to the cluster, over the baseline without gateways:`, "", ...out];
}

function machine(r: FleetRecord): string[] {
  const m = r.machine;
  return [
    "## Machine",
    "",
    `- ${m.cores} cores, ${m.cpuModel}, ${m.kernel}; open files: ${m.nofileLimit} per process (the members and every gateway are processes of their own).`,
    `- Load average (1 min) at the start: ${m.loadAtStart.toFixed(2)}. The machine is shared with other work; the busy cores of the whole machine and the load during each window are in [Every window](#every-window).`,
    `- Bun ${m.versions.bun?.replace(/^Bun /, "") ?? "?"}; ${m.versions["etcd-gateway"] ?? "etcd-gateway ?"}; ${m.versions.etcd ?? "etcd ?"} (\`etcd\` and \`etcdctl\` from Debian).`,
    ...r.notes.map((n) => `- ${n}`),
    "",
  ];
}

function results(r: FleetRecord): string[] {
  const out: string[] = ["## Results", ""];
  out.push(
    "Each row is one window of the fleet in that scenario. *Added* is the fleet's window minus the baseline's (no gateways) window of the same scenario; *per gateway* divides that by the fleet's gateways, *× 10,000* multiplies the per-gateway figure by 10,000. *Per gateway vs etcd's gateway* is our per-gateway figure over etcd's. Request and connection rates are per member, m0 / m1 / m2; `down` is a member that was not running. Client p99 is over the window's puts and ranges to m0, directly (not through any gateway).",
    "",
  );
  for (const s of r.plan.scenarios) out.push(`### ${SCENARIO_TITLES[s]}`, "", `${SCENARIO_TEXT[s]}.`, "", scenarioTable(r, s), "");
  out.push("### Requests by kind", "", `What one gateway asks of the cluster per second in the ${SCENARIO_TITLES[r.plan.scenarios[0] ?? "steady"].toLowerCase()} window, summed over the members, over the baseline.`, "", requestKindsTable(r), "");
  out.push(
    "### Memory",
    "",
    `Gateways: read once, right after the fleet's first window. Members: VmRSS and open descriptors at the end of the ${SCENARIO_TITLES[r.plan.scenarios[0] ?? "steady"].toLowerCase()} window, with each fleet running and without gateways. The members' RSS grows over the run whatever runs in front of them (the client writes all along and Go keeps the heap it grew; compare the baseline at the start and at the end), so it only tells something when it differs from the fleets run just before and after. Their open descriptors show whether a fleet holds connections open to them.`,
    "",
    memoryTable(r),
    "",
  );
  if (r.fleets.some((f) => f.id === "ours-sync" || f.id === "ours-srv")) out.push("### Discovery", "", discoveryTable(r), "");
  out.push("### Every window", "", "As measured: each member's CPU, the whole machine's busy cores (everything on it, the gateways and other work included), the load, what the scenario did, the client's completed requests, and anything that failed.", "", windowsTable(r), "");
  return out;
}

function method(r: FleetRecord): string[] {
  const p = r.plan;
  return [
    "## Method",
    "",
    `- **One run, one cluster.** A 3-member etcd cluster (test/support/cluster.ts: \`etcd\` on loopback, 50 ms heartbeat, 500 ms election timeout, data in a temporary dir) serves every fleet in turn: the baseline without gateways, then each fleet. Before each fleet every member is running and healthy and m${ROLES.leader} leads (\`etcdctl move-leader\` if needed). The client uses m${ROLES.client}, a follower.`,
    `- **Fleets.** ${p.size} gateway processes per fleet, started ${p.startRate} per second, each on a loopback port the kernel picked, each in front of all three members. A fleet counts as up when every gateway listens (read from /proc/net/tcp, so no connection is made); then ${p.settleS} s pass before the first window. Gateways log to files, never to a pipe. A fleet is stopped (SIGKILL) after its windows.`,
    `- **Windows.** ${p.windowS} s each, in the order ${p.scenarios.join(", ")}. The scenario's event happens right after the readings at the start. After the member-down window the member is restarted, and ${p.settleS} s pass before the next window.`,
    "- **etcd CPU.** utime + stime (all threads) from /proc/<pid>/stat of each member, at the start and the end of the window, over the window's length: cores. Members not running at both ends (the killed one) count nothing. *Added* subtracts the baseline's window of the same scenario, so the client's own load and the cluster's own work cancel out.",
    "- **Requests per member.** Each member's /metrics at both ends: `etcd_server_health_success` + `etcd_server_health_failures` (one per `GET /health`) plus `grpc_server_started_total` over all methods (gRPC calls, and the JSON gateway's `POST /v3/...` requests, which etcd 3.4 serves through its own gRPC server: a `POST /v3/maintenance/status` counts as `Status`). Not counted by etcd, so not here: requests answered 404 (`GET /readyz` on etcd 3.4: our `etcd` check asks once per member and remembers the 404), `/metrics` and `/version`.",
    "- **New connections per member.** `ss -E -t` (the kernel's sock_diag destroy events), filtered to the members' client ports, runs through the window: every accepted connection whose socket is destroyed in the window is one line. Added to that: connections open on the port at the end minus those open at the start (/proc/net/tcp, neither listening nor time-wait). So each connection accepted in the window is counted once, whoever closes it and however (a reset leaves no time-wait socket, but is still destroyed). Checked against 200 Python connections: 200 lines. The readings of /metrics at both ends add two connections per member per window to every fleet, baseline included.",
    "- **Gateways' own CPU.** utime + stime of every gateway process over the window (both fleets' gateways are single processes with default flags). They share the machine's 2 cores with the members and the client.",
    "- **Private memory per gateway.** /proc/<pid>/smaps_rollup of each gateway: `Private_Clean + Private_Dirty` (what the gateway alone holds: heap, stacks, pages it wrote; the binary's shared file pages are not in it), median and range over the fleet; RSS and PSS medians beside it. **Members' memory**: VmRSS from /proc/<pid>/status and the count of /proc/<pid>/fd.",
    `- **Client latency.** scripts/bench/fleet-client.ts, a process of its own: ${p.clientRate} requests per second to m${ROLES.client} (${Math.round(p.clientRate * Math.max(0.5, p.windowS - 1))} per window) through etcd's JSON gateway with fetch keep-alive, alternating \`POST /v3/kv/put\` and a linearizable \`POST /v3/kv/range\` of one of 100 keys, one at a time, paced evenly over the window's first ${fmt(Math.max(0.5, p.windowS - 1), 0)} s (it takes a moment to start, so all of its requests fall inside the window and cancel out against the baseline's), each bounded by 5 s; p99 is nearest-rank over each kind's completed requests. Not through the gateways: the point is what the fleet does to everyone else's latency.`,
    `- **Scenarios.** ${Object.values(SCENARIO_TEXT).join("; ")}.`,
    `- **Discovery** (\`--discovery\`): ours with \`--endpoints-auto-sync-interval=${p.syncIntervalS}s\` (member-list calls counted as the members' \`grpc_server_started_total{grpc_method="MemberList"}\`), and ours with \`--discovery-srv\` against a DNS server in the bench process (test/support/dns.ts startFakeDns, which records every query) serving \`_etcd-client._tcp.fleet.test\` SRV records and A records with TTL ${p.syncIntervalS} s; both in the steady scenario only, counted per gateway per minute. etcd's gateway has no member-list sync and resolves \`--discovery-srv\` once, at start.`,
    "- **Noise.** Every figure comes from one window. The baseline is measured again at the end of a full run ([Summary](#summary)): the difference is the cluster's drift over the run, a floor under which per-gateway differences mean nothing. Other work on the machine slows the client and can raise CPU figures through contention; the machine's busy cores per window show how loaded it was.",
    "",
  ];
}

function commands(r: FleetRecord): string[] {
  const line = (f: FleetRun) => {
    const t = f.transitions;
    const logged = t === null ? "" : `; over the run its gateways logged ${t.down} members marked down and ${t.up} up${t.lastError === null ? "" : ` (last reason: \`${t.lastError}\`)`}`;
    const started = `\`${f.command}\`; ${f.gateways} started in ${fmt(f.startSeconds, 1)} s${f.restarts > 0 ? ` (${f.restarts} started again on a new port)` : ""}${logged}`;
    return `- **${f.title}**: ${f.command === null ? "no gateways" : started}${f.failure === null ? "" : `; **failed**: ${f.failure}`}.`;
  };
  return ["## Fleets", "", "One gateway's command (`<port>` is its own port, `<m0>,<m1>,<m2>` the members' client addresses):", "", ...r.fleets.map(line), ""];
}

export const BALANCE_START = "<!-- balance:start -->";
export const BALANCE_END = "<!-- balance:end -->";

/** The balance section of `doc`, markers included, or null when it has none. */
export function balanceSectionOf(doc: string): string | null {
  const a = doc.indexOf(BALANCE_START);
  const b = doc.indexOf(BALANCE_END, a);
  return a < 0 || b < 0 ? null : doc.slice(a, b + BALANCE_END.length);
}

/** `doc` with its balance section replaced by `section`, or `section` added at the end when it has none. */
export function spliceBalance(doc: string, section: string): string {
  const old = balanceSectionOf(doc);
  if (old !== null) return doc.replace(old, () => section);
  return `${doc.trimEnd()}\n\n${section}\n`;
}

/** The whole document; the balance section of `previous` (the document it replaces), if any, is kept at the end. */
export function fleetMarkdown(r: FleetRecord, previous: string | null = null): string {
  const kept = previous === null ? null : balanceSectionOf(previous);
  const doc = fleetCostMarkdown(r);
  return kept === null ? doc : spliceBalance(doc, kept);
}

function fleetCostMarkdown(r: FleetRecord): string {
  return [
    "# What a fleet of gateways costs the etcd cluster",
    "",
    `Generated by \`bun run bench:fleet\` (scripts/bench/fleet.ts) on ${r.startedAt}; the run took ${fmt(r.elapsedS, 0)} s. Rerun it rather than editing this file. The gateway runs on every host, so what one gateway asks of the cluster is multiplied by the number of hosts: ${r.plan.size} gateways of each kind stand in for them here, in front of one 3-member etcd cluster on loopback, one fleet at a time, and the figures are scaled to 10,000.`,
    "",
    "```sh",
    r.command,
    "```",
    "",
    "## Summary",
    "",
    ...summary(r),
    "",
    ...machine(r),
    ...results(r),
    ...method(r),
    ...commands(r),
  ].join("\n");
}
