/**
 * The workloads: what load each one puts through a contender, and what it reads off. The idle and
 * failover workloads live in their own files; this one holds the wrk and iperf3 workloads and the
 * table of all six.
 *
 * @module
 */
import { join } from "node:path";
import { etcdCluster, helloEnv, HELLO_COMMAND, IPERF_SERVER_COMMAND, iperfServer, memberBehind, STICKY_STARTS } from "./backends.ts";
import { emptyMeasured, noteCrash, withContender, type Running } from "./contenders.ts";
import { failoverWorkload } from "./failover.ts";
import { idleWorkload } from "./idle.ts";
import { iperfCommand, runIperf, runWrk, wrkCommand, wrkProblem, type WrkOptions } from "./tools.ts";
import type { Measured, Plan, Workload } from "./types.ts";

export const ETCD_RANGE_SCRIPT = join(import.meta.dir, "etcd-range.lua");

/** One wrk run through `r`; its numbers go to `<prefix>.rps|p50|p99`, or its problem to the failures. */
async function wrkThrough(r: Running, prefix: string, o: Omit<WrkOptions, "url">, warmSeconds: number, path = "/"): Promise<Measured> {
  const m = emptyMeasured();
  const url = `http://127.0.0.1:${r.port}${path}`;
  if (warmSeconds > 0) await runWrk({ ...o, seconds: warmSeconds, url }); // not measured (Plan.wrkWarmSeconds)
  const res = await runWrk({ ...o, url });
  m.details.wrk = res;
  const problem = wrkProblem(res);
  if (problem !== "") m.failures["*"] = problem;
  m.values[`${prefix}.rps`] = res.rps;
  if (res.p50Ms !== null) m.values[`${prefix}.p50`] = res.p50Ms;
  if (res.p99Ms !== null) m.values[`${prefix}.p99`] = res.p99Ms;
  noteCrash(r, m);
  return m;
}

/** How the report says that each measured wrk window follows an unmeasured one. */
const warmNote = (plan: Plan) => `# each measured window follows ${plan.wrkWarmSeconds} s of the same load, not measured (a fresh start of each contender per round)`;

const small: Workload = {
  id: "small",
  title: "Small request/response",
  commands: (plan) => [
    HELLO_COMMAND,
    wrkCommand({ url: "http://127.0.0.1:<port>/", connections: plan.wrkConnections, threads: plan.wrkThreads, seconds: plan.wrkSeconds.small }).join(" "),
    warmNote(plan),
  ],
  setup: (plan) => helloEnv((r) => wrkThrough(r, "small", { connections: plan.wrkConnections, threads: plan.wrkThreads, seconds: plan.wrkSeconds.small }, plan.wrkWarmSeconds)),
};

const churn: Workload = {
  id: "churn",
  title: "Connection churn",
  commands: (plan) => [
    HELLO_COMMAND,
    wrkCommand({ url: "http://127.0.0.1:<port>/", connections: plan.wrkConnections, threads: plan.wrkThreads, seconds: plan.wrkSeconds.churn, headers: ["Connection: close"] })
      .map((a) => (a.includes(" ") ? `"${a}"` : a))
      .join(" "),
    warmNote(plan),
  ],
  setup: (plan) =>
    helloEnv(async (r) => {
      const m = await wrkThrough(r, "churn", {
        connections: plan.wrkConnections,
        threads: plan.wrkThreads,
        seconds: plan.wrkSeconds.churn,
        headers: ["Connection: close"],
      }, plan.wrkWarmSeconds);
      // One request per connection: requests/s is connections/s. Latency is not reported here.
      const rps = m.values["churn.rps"];
      m.values = rps === undefined ? {} : { "churn.cps": rps };
      return m;
    }),
};

const etcd: Workload = {
  id: "etcd",
  title: "Real etcd reads",
  commands: (plan) => [
    "etcdctl put foo bar   # 3-member etcd cluster on loopback (test/support/cluster.ts)",
    `${wrkCommand({ url: "http://127.0.0.1:<port>/v3/kv/range", connections: plan.wrkConnections, threads: plan.wrkThreads, seconds: plan.wrkSeconds.etcd, script: "scripts/bench/etcd-range.lua" }).join(" ")}   # POST {"key":"Zm9v"}`,
    warmNote(plan),
  ],
  async setup(plan) {
    const cluster = await etcdCluster();
    const backends = cluster.members.map((m) => m.endpoint);
    const options = { connections: plan.wrkConnections, threads: plan.wrkThreads, seconds: plan.wrkSeconds.etcd, script: ETCD_RANGE_SCRIPT };
    return {
      backends,
      async measure(c) {
        // Linearizable reads cost more on a follower (a ReadIndex round trip to the leader), so every
        // row that sends all connections to one member must use the same one: direct and HAProxy
        // (balance first) use m0; a sticky row picks at random at start, so it is started again
        // (bounded) until its pick is m0. etcd's gateway spreads connections over all three.
        const want = 0;
        let member = -1;
        for (let start = 1; start <= (c.balance === "sticky" ? STICKY_STARTS : 1); start++) {
          const m = await withContender(c, { backends, etcd: true }, async (r) => {
            member = c.balance === "round-robin" ? -1 : await memberBehind(r.port, cluster).catch(() => -1);
            if (c.balance === "sticky" && member !== want && start < STICKY_STARTS) return null;
            const m = await wrkThrough(r, "etcd", options, plan.wrkWarmSeconds, "/v3/kv/range");
            delete m.values["etcd.p50"];
            const leader = await cluster.leaderIndex(3000).catch(() => -1);
            m.details.leader = leader < 0 ? null : `m${leader}`;
            m.details.member = c.balance === "round-robin" ? "all (round-robin)" : member < 0 ? null : `m${member}`;
            m.details.starts = start;
            return m;
          });
          if (m !== null) return m;
        }
        throw new Error("unreachable: the last start always measures");
      },
    };
  },
};

const bulk: Workload = {
  id: "bulk",
  title: "Bulk transfer",
  commands: (plan) => [
    IPERF_SERVER_COMMAND("<iperf-port>").join(" "),
    iperfCommand("<port>", plan.iperfSeconds, false).join(" "),
    iperfCommand("<port>", plan.iperfSeconds, true).join(" "),
  ],
  async setup(plan) {
    const first = await iperfServer();
    return {
      backends: [first.address],
      async measure(c) {
        const server = await iperfServer();
        return withContender(c, { backends: [server.address], etcd: false }, async (r) => {
          const m = emptyMeasured();
          // The readiness connect reached iperf3 as a bogus control connection; let it drop that first.
          await Bun.sleep(100);
          for (const [key, reverse] of [["bulk.fwd", false], ["bulk.rev", true]] as const) {
            try {
              m.values[key] = await runIperf(r.port, plan.iperfSeconds, reverse);
            } catch (e) {
              m.failures[key] = e instanceof Error ? e.message : String(e);
            }
          }
          noteCrash(r, m);
          return m;
        });
      },
    };
  },
};

/** Every workload, in the order a run goes through them (grouped by backend). */
export const WORKLOADS: readonly Workload[] = [small, churn, bulk, idleWorkload, etcd, failoverWorkload];
