/**
 * Keeps the endpoint set current while the gateway runs: DNS SRV re-queried on the records' TTL
 * (clamped, jittered, last good set kept on any DNS failure), member-list sync every interval, and
 * the static endpoints (`--endpoints`, `--endpoints-file`) as a reload gives them. Each new set is
 * applied atomically to the member table, keeping the state and connections of members that stay.
 *
 * Precedence: the member list (when sync is on and a member answers) > SRV records > the static
 * endpoints. The lower sources stay as seeds: they are asked for the member list when no current
 * member answers, and used when sync is off or has never succeeded.
 *
 * @module
 */
import type { EndpointSpec } from "../addresses.ts";
import type { DiscoveryStats } from "../counters.ts";
import { errorText, type Logger } from "../log.ts";
import { Member, type MemberTable } from "../members.ts";
import { after } from "../timers.ts";
import type { TlsFiles } from "../tls.ts";
import { fetchMemberList } from "./member-list.ts";
import { discoverSrv, type SrvOptions } from "./srv.ts";

export interface RefreshOptions {
  srv: SrvOptions | null;
  /** TTL of the initial SRV answer, in seconds. */
  initialTtl: number;
  refreshMinMs: number;
  refreshMaxMs: number;
  /** 0 = member-list sync off. */
  syncIntervalMs: number;
  syncTLS: TlsFiles | null;
  timeoutMs: number;
  /** The gateway's cluster (hex), when known: a member list from another cluster is refused. */
  clusterId: () => string | null;
}

/** Makes a set current (after the caller's self-loop filtering). */
export type ApplyEndpoints = (endpoints: readonly EndpointSpec[], source: string) => Promise<void>;

export class Refresher {
  #seeds: readonly EndpointSpec[];
  #synced = false;
  #stopped = false;
  readonly #timers = new Set<() => void>();
  #srvBusy = false;
  #srvFailures = 0;
  #syncBusy = false;

  /** Starts the refresh loops. `seeds` is the set the gateway started with (SRV result or static). */
  constructor(
    private readonly o: RefreshOptions,
    seeds: readonly EndpointSpec[],
    private readonly table: MemberTable,
    private readonly apply: ApplyEndpoints,
    private readonly stats: DiscoveryStats,
    private readonly log: Logger,
  ) {
    this.#seeds = seeds;
    if (o.srv !== null) this.later(this.clamp(o.initialTtl * 1000), () => this.srvLoop());
    if (o.syncIntervalMs > 0) this.later(o.syncIntervalMs, () => this.syncLoop());
  }

  /** The static endpoints changed (a reload): they become current unless SRV or the member list rule. */
  async staticChanged(endpoints: readonly EndpointSpec[], source: string): Promise<void> {
    if (this.o.srv !== null) return;
    this.#seeds = endpoints;
    if (!this.#synced) await this.apply(endpoints, source);
  }

  /** Re-runs SRV discovery and member-list sync now (SIGHUP). */
  async refreshNow(): Promise<void> {
    await this.srvRound();
    await this.syncRound();
  }

  stop(): void {
    this.#stopped = true;
    for (const cancel of this.#timers) cancel();
    this.#timers.clear();
  }

  private good(): void {
    this.stats.refreshes++;
    this.stats.lastGoodAt = Date.now();
  }

  private later(ms: number, fn: () => Promise<void>): void {
    if (this.#stopped) return;
    const cancel = after(ms * (0.9 + Math.random() * 0.2), () => {
      this.#timers.delete(cancel);
      void fn();
    });
    this.#timers.add(cancel);
  }

  private clamp(ms: number): number {
    return Math.min(Math.max(ms, this.o.refreshMinMs), this.o.refreshMaxMs);
  }

  // --- DNS SRV: on the TTL; on failure keep the last good set and back off ---

  /** One SRV query; returns when to ask again. */
  private async srvRound(): Promise<number> {
    const o = this.o;
    if (o.srv === null || this.#srvBusy) return o.refreshMaxMs;
    this.#srvBusy = true;
    try {
      const r = await discoverSrv(o.srv, this.log);
      this.good();
      this.#srvFailures = 0;
      this.#seeds = r.endpoints;
      if (!this.#synced) await this.apply(r.endpoints, "dns srv");
      return this.clamp(r.ttl * 1000);
    } catch (e) {
      this.#srvFailures++;
      this.stats.failures++;
      this.log.warn("DNS SRV refresh failed; keeping the last good endpoints", { error: errorText(e), endpoints: this.table.list.map((m) => m.address) });
      return this.clamp(o.refreshMinMs * 2 ** Math.min(this.#srvFailures - 1, 10));
    } finally {
      this.#srvBusy = false;
    }
  }

  private async srvLoop(): Promise<void> {
    const next = await this.srvRound();
    this.later(next, () => this.srvLoop());
  }

  // --- member-list sync: ask a usable member, then the rest, then the seeds ---

  private async syncRound(): Promise<void> {
    if (this.o.syncIntervalMs === 0 || this.#syncBusy) return;
    this.#syncBusy = true;
    try {
      let lastError = "no member to ask";
      for (const member of this.whomToAsk()) {
        const address = member.address;
        try {
          const { endpoints, clusterId } = await fetchMemberList(member, this.o.syncTLS, this.o.timeoutMs);
          const ours = this.o.clusterId();
          if (clusterId !== null && ours !== null && clusterId !== ours) throw new Error(`member list of cluster ${clusterId}, not ${ours} (the gateway's cluster)`);
          this.good();
          this.#synced = true;
          await this.apply(endpoints, `member list from ${address}`);
          return;
        } catch (e) {
          // In Go's words already (src/http-client.ts); errorText would put an errno code in front.
          const text = e instanceof Error ? e.message : String(e);
          lastError = text.includes(address) ? text : `${address}: ${text}`;
        }
      }
      this.stats.failures++;
      this.log.warn("member list sync failed; keeping the current endpoints", { error: lastError });
    } finally {
      this.#syncBusy = false;
    }
  }

  /** Usable members first, then the others, then the seeds; each address once; never a member of another cluster. */
  private whomToAsk(): Member[] {
    const current = this.table.list.filter((m) => !m.wrongCluster);
    const order = [...current.filter((m) => m.up), ...current.filter((m) => !m.up)];
    const known = new Set(this.table.list.map((m) => m.address));
    for (const s of this.#seeds) if (!known.has(s.address)) order.push(new Member(s));
    const seen = new Set<string>();
    return order.filter((o) => !seen.has(o.address) && seen.add(o.address));
  }

  private async syncLoop(): Promise<void> {
    await this.syncRound();
    this.later(this.o.syncIntervalMs, () => this.syncLoop());
  }
}
