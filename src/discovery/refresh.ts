/**
 * Keeps the endpoint set current while the gateway runs: DNS SRV re-queried on the records' TTL
 * (clamped, jittered, last good set kept on any DNS failure), member-list sync every interval, and
 * `--endpoints-file` re-read on SIGHUP. Each new set is applied atomically to the member table,
 * keeping the health state and connections of members that stay.
 *
 * Precedence: the member list (when sync is on and a member answers) > SRV records >
 * `--endpoints-file` / `--endpoints`. The lower sources stay as seeds: they are asked for the
 * member list when no current member answers, and used when sync is off or has never succeeded.
 *
 * @module
 */
import type { CheckTLS } from "../checks.ts";
import { parseEndpointList, type EndpointSpec, type MemberTable } from "../endpoints.ts";
import { errorText, type Logger } from "../log.ts";
import { fetchMemberList } from "./members.ts";
import { discoverSrv, type SrvOptions } from "./srv.ts";
import { readFileSync } from "node:fs";
import type { DiscoveryStats } from "../metrics.ts";

export interface RefreshOptions {
  srv: SrvOptions | null;
  /** TTL of the initial SRV answer, in seconds. */
  initialTtl: number;
  refreshMinMs: number;
  refreshMaxMs: number;
  /** 0 = member-list sync off. */
  syncIntervalMs: number;
  syncTLS: CheckTLS | null;
  timeoutMs: number;
  endpointsFile: string | null;
}

export interface Refresher {
  /** Re-reads the endpoints file and re-runs discovery now (SIGHUP). */
  refreshNow(): Promise<void>;
  stop(): void;
}

/** Reads `--endpoints-file`: endpoints separated by commas, spaces or lines; `#` starts a comment. */
export function readEndpointsFile(path: string): EndpointSpec[] {
  const text = readFileSync(path, "utf8").replace(/#.*$/gm, "");
  return parseEndpointList(text.split(/[\s,]+/).filter((t) => t !== "").map((t) => t));
}

/**
 * Starts the refresh loops. `seeds` is the set the gateway started with (SRV result or static).
 *
 * @param apply makes a set current (after the caller's self-loop filtering); returns whether it changed anything.
 */
export function startRefresh(opts: {
  options: RefreshOptions;
  seeds: EndpointSpec[];
  table: MemberTable;
  log: Logger;
  apply: (endpoints: EndpointSpec[], source: string) => Promise<void>;
  stats: DiscoveryStats;
}): Refresher {
  const { options: o, log, table, stats } = opts;
  const good = () => {
    stats.refreshes++;
    stats.lastGoodAt = Date.now();
  };
  let seeds = opts.seeds;
  let synced = false;
  let stopped = false;
  const timers = new Set<Timer>();
  const later = (ms: number, fn: () => Promise<void>) => {
    if (stopped) return;
    const t = setTimeout(() => {
      timers.delete(t);
      void fn();
    }, ms * (0.9 + Math.random() * 0.2));
    timers.add(t);
  };
  const clamp = (ms: number) => Math.min(Math.max(ms, o.refreshMinMs), o.refreshMaxMs);

  // --- DNS SRV: on the TTL; on failure keep the last good set and back off ---
  let srvBusy = false;
  let srvFailures = 0;
  const srvRound = async (): Promise<number> => {
    if (o.srv === null || srvBusy) return o.refreshMaxMs;
    srvBusy = true;
    try {
      const r = await discoverSrv(o.srv, log);
      good();
      srvFailures = 0;
      seeds = r.endpoints;
      if (!synced) await opts.apply(seeds, "dns srv");
      return clamp(r.ttl * 1000);
    } catch (e) {
      srvFailures++;
      stats.failures++;
      log.warn("DNS SRV refresh failed; keeping the last good endpoints", { error: errorText(e), endpoints: table.list.map((m) => m.address) });
      return clamp(o.refreshMinMs * 2 ** Math.min(srvFailures - 1, 10));
    } finally {
      srvBusy = false;
    }
  };
  const srvLoop = async () => {
    const next = await srvRound();
    later(next, srvLoop);
  };

  // --- member-list sync: ask a usable member, then the rest, then the seeds ---
  let syncBusy = false;
  const syncRound = async () => {
    if (o.syncIntervalMs === 0 || syncBusy) return;
    syncBusy = true;
    try {
      const current = table.list;
      const asked = new Set<string>();
      const order = [...current.filter((m) => m.active), ...current.filter((m) => !m.active)].map((m) => ({ address: m.address, tls: m.tls }));
      for (const s of seeds) order.push({ address: s.address, tls: s.tls === true });
      let lastError = "no member to ask";
      for (const { address, tls } of order) {
        if (asked.has(address)) continue;
        asked.add(address);
        try {
          const endpoints = await fetchMemberList(address, tls, o.syncTLS, o.timeoutMs);
          good();
          synced = true;
          await opts.apply(endpoints, `member list from ${address}`);
          return;
        } catch (e) {
          lastError = `${address}: ${errorText(e)}`;
        }
      }
      stats.failures++;
      log.warn("member list sync failed; keeping the current endpoints", { error: lastError });
    } finally {
      syncBusy = false;
    }
  };
  const syncLoop = async () => {
    await syncRound();
    later(o.syncIntervalMs, syncLoop);
  };

  if (o.srv !== null) later(clamp(o.initialTtl * 1000), srvLoop);
  if (o.syncIntervalMs > 0) later(o.syncIntervalMs, syncLoop);

  return {
    async refreshNow() {
      if (o.endpointsFile !== null) {
        try {
          const fromFile = readEndpointsFile(o.endpointsFile);
          good();
          if (o.srv === null) {
            seeds = fromFile;
            if (!synced) await opts.apply(seeds, `endpoints file ${o.endpointsFile}`);
          }
        } catch (e) {
          stats.failures++;
          log.error("cannot reload the endpoints file; keeping the current endpoints", { file: o.endpointsFile, error: errorText(e) });
        }
      }
      await srvRound();
      await syncRound();
    },
    stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
  };
}
