/**
 * What the gateway knows of the cluster as a whole, from its members' full checks: which cluster
 * it fronts (its ID, pinned with `--cluster-id` or learned from the members), and the alarms
 * raised in it. Health (src/health/monitor.ts) feeds it and acts on its verdicts; the admin
 * endpoint shows it.
 *
 * The ID is learned as etcd's own members refuse a peer of another cluster: the ID more members
 * report than any other is the cluster's, so one member of another cluster in the endpoint list (a
 * typo, a stale DNS record, a rebuilt cluster) is outvoted and refused. A tie decides nothing
 * (nobody is refused on one member's word against another's); one member alone that answers is
 * the cluster. The ID is logged (`cluster ID learned`) once a majority of the endpoint set
 * reports it.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import type { Member } from "../members.ts";
import type { Alarm } from "./checks.ts";

export class ClusterView {
  /** The cluster ID each member reported in its last full check (hex). */
  readonly #reported = new Map<Member, string>();
  #pinned: string | null;
  #id: string | null;
  /** The learned ID last logged (`cluster ID learned`, `cluster ID changed`). */
  #announced: string | null = null;
  #alarms: readonly Alarm[] = [];

  /** @param size how many members the endpoint set has now (a majority of them confirms a learned ID in the log). */
  constructor(
    private readonly log: Logger,
    pinned: string | null,
    private readonly size: () => number,
  ) {
    this.#pinned = pinned;
    this.#id = pinned;
  }

  /** The gateway's cluster: the pinned ID, else the learned one; null until a member reported one. */
  get id(): string | null {
    return this.#id;
  }

  get pinned(): boolean {
    return this.#pinned !== null;
  }

  /** The alarms raised in the cluster, as the member checked most recently listed them. */
  get alarms(): readonly Alarm[] {
    return this.#alarms;
  }

  /** Whether `id` is another cluster's (false while the gateway's is not known yet). */
  foreign(id: string | null): boolean {
    return id !== null && this.#id !== null && id !== this.#id;
  }

  /** `--cluster-id` changed (a reload): resolves whether the gateway's cluster changed. */
  pin(id: string | null): boolean {
    if (id === this.#pinned) return false;
    this.#pinned = id;
    return this.decide();
  }

  /** `m` reported cluster `id` in a full check; resolves whether the gateway's cluster changed. */
  report(m: Member, id: string): boolean {
    if (this.#reported.get(m) === id) return false;
    this.#reported.set(m, id);
    const changed = this.decide();
    this.announce();
    return changed;
  }

  /** `m` left the endpoint set. */
  forget(m: Member): boolean {
    return this.#reported.delete(m) && this.decide();
  }

  /** The alarms a member of the gateway's cluster listed: logged as they are raised and cleared. */
  setAlarms(alarms: readonly Alarm[], reportedBy: Member): void {
    const key = (a: Alarm) => `${a.alarm} ${a.member}`;
    const before = new Set(this.#alarms.map(key));
    const now = new Set(alarms.map(key));
    for (const a of alarms) if (!before.has(key(a))) this.log.warn("cluster alarm raised", { alarm: a.alarm, member: a.member, address: reportedBy.address });
    for (const a of this.#alarms) if (!now.has(key(a))) this.log.info("cluster alarm cleared", { alarm: a.alarm, member: a.member, address: reportedBy.address });
    this.#alarms = alarms;
  }

  /** Recomputes the gateway's cluster. */
  private decide(): boolean {
    const next = this.#pinned ?? this.majority();
    if (next === this.#id) return false;
    this.#id = next;
    return true;
  }

  /**
   * Logs a learned ID once a majority of the endpoint set reports it (until then it is used, but
   * one member's word): `cluster ID learned`, or `cluster ID changed` after another was logged.
   */
  private announce(): void {
    const id = this.#id;
    if (this.#pinned !== null || id === null || id === this.#announced) return;
    const from = [...this.#reported].filter(([, r]) => r === id).map(([m]) => m.address);
    if (from.length < Math.floor(this.size() / 2) + 1) return;
    if (this.#announced === null) this.log.info("cluster ID learned", { "cluster-id": id, from });
    else this.log.warn("cluster ID changed", { "cluster-id": id, previous: this.#announced, from });
    this.#announced = id;
  }

  /** The ID more members report than any other; null on a tie (or before any report). */
  private majority(): string | null {
    const votes = new Map<string, number>();
    for (const id of this.#reported.values()) votes.set(id, (votes.get(id) ?? 0) + 1);
    let best: string | null = null;
    let most = 0;
    let tied = false;
    for (const [id, n] of votes) {
      if (n > most) [best, most, tied] = [id, n, false];
      else if (n === most) tied = true;
    }
    return tied ? null : best;
  }
}
