/**
 * The failover workload, against the real 3-member etcd cluster:
 *
 * - **killed member**: ask through the proxy which member serves it (POST /v3/maintenance/status,
 *   header.member_id), SIGKILL that member, and time (from the kill) until a new TCP connection
 *   completes a read through the proxy, retrying at once after each failed attempt. For a
 *   round-robin proxy the member asked about is just the one that served that connection ("any
 *   member").
 * - **blackholed member**: the proxy is started with a port that drops SYNs
 *   (test/support/blackhole.ts) listed first, in place of the member just killed (which boots again
 *   meanwhile). New connections, started a fixed interval apart, each time one read, bounded by the
 *   attempt timeout (etcd's gateway has no connect timeout: an unlucky connection would wait
 *   ~130 s, so it is counted as "timeout"). A sticky proxy is restarted (a few times at most) until
 *   its random pick falls on the blackhole, so that its failover is what is timed.
 *
 * The read is serializable, so a member answers from its own store: a linearizable read would
 * also wait for a new leader when the killed member led, which is etcd's failover, not the proxy's.
 * Contenders start with a listening-socket check instead of a readiness connection here, since a
 * readiness connection would make the proxy dial (and fail over) before the measurement.
 *
 * @module
 */
import { startBlackhole, type Blackhole } from "../../test/support/blackhole.ts";
import type { Cluster } from "../../test/support/cluster.ts";
import { etcdCluster, memberBehind, STICKY_STARTS } from "./backends.ts";
import { onCleanup } from "./children.ts";
import { CONNECT_TIMEOUT_MS, emptyMeasured, withContender, type Contender } from "./contenders.ts";
import { httpOnce, type HttpResult } from "./net.ts";
import type { Measured, Plan, Workload } from "./types.ts";

export const READ_BODY = '{"key":"Zm9v","serializable":true}';
/** Bound on the wait for the first served request after a kill. */
const KILL_DEADLINE_MS = 10_000;

/** A read through the proxy on a new connection; ok when etcd answered 200 with a header. */
function read(port: number, timeoutMs: number): Promise<HttpResult> {
  return httpOnce(port, "POST", "/v3/kv/range", READ_BODY, timeoutMs);
}
const served = (r: HttpResult) => r.status === 200 && r.body.includes('"header"');
/** Whether a connection met the blackhole: only then does it take the connect timeout or longer (or fail). */
const waited = (r: HttpResult) => !served(r) || r.ms >= 0.9 * CONNECT_TIMEOUT_MS;

/** The killed-member case; resolves to the index of the member it killed (-1 if none). */
async function killCase(c: Contender, cluster: Cluster, plan: Plan, m: Measured): Promise<number> {
  let killed = -1;
  try {
    await withContender(
      c,
      { backends: cluster.members.map((x) => x.endpoint), etcd: true },
      async (r) => {
        killed = await memberBehind(r.port, cluster);
        const t0 = performance.now();
        await cluster.kill(killed);
        const errors = new Map<string, number>();
        let attempts = 0;
        for (; attempts < 5000 && performance.now() - t0 < KILL_DEADLINE_MS; attempts++) {
          const res = await read(r.port, plan.attemptTimeoutMs);
          if (served(res)) {
            m.values["failover.kill"] = performance.now() - t0;
            break;
          }
          const why = res.error ?? `HTTP ${res.status}`;
          errors.set(why, (errors.get(why) ?? 0) + 1);
        }
        m.details.kill = { member: `m${killed}`, attempts, failedAttempts: Object.fromEntries(errors) };
        if (m.values["failover.kill"] === undefined) {
          m.failures["failover.kill"] = `no request served within ${KILL_DEADLINE_MS / 1000} s of the kill (${[...errors].map(([e, k]) => `${e} ×${k}`).join(", ")})`;
        }
        const crash = r.crashed();
        if (crash !== null) m.failures["failover.kill"] = `crashed: ${crash}`;
      },
      "listening",
    );
  } catch (e) {
    m.failures["failover.kill"] = e instanceof Error ? e.message : String(e);
  }
  return killed;
}

/** The blackholed-member case, with the blackhole first and the two members other than `down` after it. */
async function blackholeCase(c: Contender, cluster: Cluster, hole: Blackhole, plan: Plan, m: Measured, down: number): Promise<void> {
  const others = cluster.members.filter((_, i) => i !== (down >= 0 ? down : 0));
  const endpoints = [hole.address, ...others.map((x) => x.endpoint)];
  // The connections of the last start: the one that met the blackhole, or the last one tried.
  let all: HttpResult[] = [];
  let starts = 0;
  let hit = false;
  try {
    // A sticky proxy picks its member at random at start: a start that never tried the blackhole
    // tells nothing about failing over from it, so start it again (bounded) until one does, and
    // keep that start's connections. Its first connection shows the pick (it goes to the
    // picked member; only the blackhole makes it wait the connect timeout), so a start that
    // missed is abandoned before the next connection is due.
    const maxStarts = c.balance === "sticky" ? STICKY_STARTS : 1;
    while (starts < maxStarts && !hit) {
      starts++;
      const last = starts === maxStarts;
      await withContender(
        c,
        { backends: endpoints, etcd: true },
        async (r) => {
          let missed = false;
          const results = await Promise.all(
            Array.from({ length: plan.blackholeConnections }, async (_, i) => {
              await Bun.sleep(i * plan.blackholeSpacingMs);
              if (missed) return null;
              const res = await read(r.port, plan.attemptTimeoutMs);
              if (i === 0 && !last && c.balance === "sticky" && !waited(res)) missed = true;
              return res;
            }),
          );
          const crash = r.crashed();
          if (crash !== null) m.failures["failover.bh"] = `crashed: ${crash}`;
          if (missed) return;
          all = results.filter((x) => x !== null);
          hit = all.some(waited);
        },
        "listening",
      );
    }
  } catch (e) {
    m.failures["failover.bh"] = e instanceof Error ? e.message : String(e);
  }
  const ms = all.filter(served).map((x) => x.ms);
  const timeouts = all.filter((x) => x.error === "timeout").length;
  const errors = all.filter((x) => !served(x) && x.error !== "timeout").map((x) => x.error ?? `HTTP ${x.status}`);
  m.details.blackhole = { ms, timeouts, errors, connections: all.length, starts, hit, timeoutMs: plan.attemptTimeoutMs };
  if (ms.length > 0) m.values["failover.bh_max"] = Math.max(...ms);
  m.values["failover.bh_timeouts"] = timeouts;
  m.values["failover.bh_errors"] = errors.length;
}

export const failoverWorkload: Workload = {
  id: "failover",
  title: "Failover",
  commands: (plan) => [
    "kill -KILL <member serving the proxy>   # found with POST /v3/maintenance/status through the proxy",
    `POST /v3/kv/range ${READ_BODY} on a new connection to 127.0.0.1:<port>, repeated until served (each attempt bounded by ${plan.attemptTimeoutMs} ms)`,
    `blackhole: python3 listen(0), never accept, queue filled; proxy started with --endpoints=<blackhole>,<the two members not killed>; ${plan.blackholeConnections} new connections ${plan.blackholeSpacingMs} ms apart, each bounded by ${plan.attemptTimeoutMs} ms`,
  ],
  async setup(plan) {
    const cluster = await etcdCluster();
    const hole = await startBlackhole();
    const remove = onCleanup(() => hole.close());
    return {
      backends: cluster.members.map((x) => x.endpoint),
      async measure(c) {
        const m = emptyMeasured();
        const killed = await killCase(c, cluster, plan, m);
        // The killed member boots again while the blackhole case runs on the other two (it needs
        // ~1.5 s of the run's time budget otherwise); it must be back before the next contender.
        const restart = killed >= 0 && !cluster.isRunning(killed) ? cluster.restart(killed, 30_000).then(() => null, (e: unknown) => String(e)) : Promise.resolve(null);
        await blackholeCase(c, cluster, hole, plan, m, killed);
        const restartError = await restart;
        if (restartError !== null) throw new Error(`restarting m${killed} failed: ${restartError}`);
        return m;
      },
      async teardown() {
        remove();
        await hole.close();
      },
    };
  },
};
