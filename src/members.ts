/**
 * The member table, and the one writer of member state.
 *
 * A member's state (up, down, ejected), the reason for it, its failed-dial count and whether an
 * operator drained it change only through `MemberTable.update`, which also logs each transition
 * once, with etcd's phrases, and tells subscribers (close-on-member-down, the drain's idle sweep,
 * the worker broadcast). Health (src/health/) decides the state; the admin endpoint (src/admin.ts)
 * the drain; worker processes write what their primary decided; everything else only reads.
 *
 * @module
 */
import type { EndpointSpec, HostPort } from "./addresses.ts";
import { CheckStats, MemberStats } from "./counters.ts";
import type { Logger } from "./log.ts";

/**
 * What the gateway thinks of a member: `up` (usable), `down` (its active health check failed
 * `--health-fall` times) or `ejected` (`--health-fall` dials in a row failed).
 */
export type MemberState = "up" | "down" | "ejected";

/**
 * An operator's drain (the admin endpoint, HAProxy's `set server … state drain`): `off` (in
 * rotation), `keep-open` (no new connections; open ones carry on) or `close-idle` (no new
 * connections, and open ones are reset once idle). Health checks go on either way.
 */
export type Drain = "off" | "keep-open" | "close-idle";

/** What `update` may change. */
export interface MemberChange {
  state?: MemberState;
  drain?: Drain;
  /** Why it was marked down or ejected, or what the last check said. */
  reason?: string;
  /** Failed dials in a row. */
  failures?: number;
  /** For the `deactivated endpoint` log line: when the member is looked at again (Go duration). */
  interval?: string;
  /** Whether it answered its last check at all. */
  alive?: boolean | null;
  /** The cluster ID (hex) it reported, and whether that is another cluster than the gateway's. */
  cluster?: { id: string | null; wrong: boolean };
}

type Writable<T> = { -readonly [K in keyof T]: T[K] };

/** One etcd member as the gateway sees it. */
export class Member {
  readonly state: MemberState = "up";
  readonly drain: Drain = "off";
  readonly reason: string = "";
  /** Dials (or resets right after connect) that failed in a row; 0 after a successful dial. */
  readonly failures: number = 0;
  /** Times the member was ejected (decided in the primary process). */
  readonly ejections: number = 0;
  /**
   * Stall suspicions from client traffic (src/datapath/suspect.ts) and how their confirmation ended:
   * `confirmed` (the member was taken out) or `cleared` (it answered). Counted by health, in the primary.
   */
  readonly suspicions = { confirmed: 0, cleared: 0 };
  /** No longer in the endpoint set (discovery moved on); its open connections carry on (MemberTable.retired). */
  readonly removed: boolean = false;
  /**
   * Whether it answered its last health check at all (an HTTP status of any kind, a TLS alert, a
   * close after connect): false when the check got no answer within `--health-timeout` or was
   * refused; null before the first check and without active checks. Fail-open tries members that
   * answer first (src/select.ts): a hung member's kernel still completes TCP handshakes.
   */
  readonly alive: boolean | null = null;
  /** The cluster ID (hex, as etcd prints it) the member reported in its last full check; null until one did. */
  readonly clusterId: string | null = null;
  /** It reported another cluster's ID than the gateway's: down, and never given a client, fail-open included. */
  readonly wrongCluster: boolean = false;
  readonly tls: boolean;
  readonly priority: number;
  readonly weight: number;
  /** Host to dial: the resolved IP with `--dns-server`, else the endpoint's host (resolved per dial). */
  readonly dialHost: string;
  /** Proxied connections open to this member in this process (dials in flight included); kept by the data path. */
  connections = 0;
  /** Data-path counters for /metrics (this process's share). */
  readonly stats = new MemberStats();
  /** How long its health checks took (in the primary, which runs them). */
  readonly checks = new CheckStats();
  readonly endpoint: HostPort;
  constructor(spec: EndpointSpec) {
    this.endpoint = { host: spec.host, port: spec.port, address: spec.address };
    this.tls = spec.tls === true;
    this.priority = spec.priority ?? 0;
    this.weight = spec.weight ?? 0;
    this.dialHost = spec.dialHost ?? spec.host;
  }
  get address(): string {
    return this.endpoint.address;
  }
  /** Health says up (its checks pass and it is not ejected). */
  get up(): boolean {
    return this.state === "up";
  }
  /** Usable: up and not drained. New connections go to usable members first; `/readyz` is 200 while one is. */
  get usable(): boolean {
    return this.state === "up" && this.drain === "off" && !this.wrongCluster;
  }
}

export type StateListener = (member: Member, from: MemberState, to: MemberState) => void;

/**
 * The members in order (`--endpoints` order; discovered ones by priority). `list` is replaced as a
 * whole, never changed in place, so a reader holding it sees one consistent set.
 */
export class MemberTable {
  #list: readonly Member[];
  /** Removed members with connections still open in this process (pruned as they are read). */
  #retired: Member[] = [];
  readonly #listeners: StateListener[] = [];
  #generation = 0;
  /**
   * @param log where transitions are logged; null in worker processes, whose primary logs them.
   */
  constructor(
    endpoints: readonly EndpointSpec[],
    private readonly log: Logger | null,
  ) {
    this.#list = endpoints.map((e) => new Member(e));
  }

  get list(): readonly Member[] {
    return this.#list;
  }

  /** Changes with every write to the table (set, state, drain, failures): what policies may cache against. */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Members no longer in the endpoint set whose connections in this process are still open: shown
   * as `removed` until the last one closes. Pruned here, so the data path does nothing for it.
   */
  get retired(): readonly Member[] {
    if (this.#retired.some((m) => m.connections <= 0)) this.#retired = this.#retired.filter((m) => m.connections > 0);
    return this.#retired;
  }

  /** Whether any member is usable (`/readyz`, the `status` command's exit code). */
  get anyUsable(): boolean {
    return this.#list.some((m) => m.usable);
  }

  /** Calls `fn` after every state change. */
  onChange(fn: StateListener): void {
    this.#listeners.push(fn);
  }

  /**
   * Makes `next` the endpoint set, keeping the Member (state, connections, counters) of every
   * address that stays. A removed member with open connections is kept aside (`retired`); one that
   * comes back before they close is the same Member again, counted as added (health checks it
   * afresh) and starting up, as a new one would. Returns what changed.
   */
  replace(next: readonly EndpointSpec[]): { added: Member[]; removed: Member[] } {
    const old = new Map(this.#list.map((m) => [m.address, m]));
    const retired = new Map(this.retired.map((m) => [m.address, m]));
    const added: Member[] = [];
    const back: Member[] = [];
    const list = next.map((e) => {
      const kept = old.get(e.address) ?? retired.get(e.address);
      if (kept === undefined) {
        const m = new Member(e);
        added.push(m);
        return m;
      }
      if (!old.delete(e.address)) back.push(kept);
      Object.assign(kept as Writable<Member>, { removed: false, tls: e.tls === true, priority: e.priority ?? 0, weight: e.weight ?? 0, dialHost: e.dialHost ?? e.host });
      return kept;
    });
    const removed = [...old.values()];
    for (const m of removed) (m as Writable<Member>).removed = true;
    this.#retired = [...this.#retired.filter((m) => !back.includes(m)), ...removed.filter((m) => m.connections > 0)];
    this.#list = list;
    this.#generation++;
    for (const m of back) this.update(m, { state: "up", reason: "back in the endpoint set", failures: 0 });
    return { added: added.concat(back), removed };
  }

  /**
   * The one writer of member state: applies `change`, logs a transition once, tells subscribers
   * (after a state or drain change; `from` and `to` are equal when only the drain changed).
   */
  update(m: Member, change: MemberChange): void {
    const w = m as Writable<Member>;
    this.#generation++;
    if (change.failures !== undefined) w.failures = change.failures;
    if (change.reason !== undefined) w.reason = change.reason;
    if (change.alive !== undefined) w.alive = change.alive;
    if (change.cluster !== undefined) {
      w.clusterId = change.cluster.id;
      w.wrongCluster = change.cluster.wrong;
    }
    const drained = change.drain !== undefined && change.drain !== m.drain;
    if (drained) {
      w.drain = change.drain!;
      this.logDrain(m);
    }
    const to = change.state ?? m.state;
    const from = m.state;
    if (to !== from) {
      w.state = to;
      if (to === "ejected") w.ejections++;
      this.logTransition(m, from, to, change.interval);
    }
    if (to !== from || drained) for (const fn of this.#listeners) fn(m, from, to);
  }

  private logDrain(m: Member): void {
    if (m.drain === "off") this.log?.info("member back in rotation", { address: m.address });
    else this.log?.info("member drained: no new connections", { address: m.address, "close-idle": m.drain === "close-idle" });
  }

  private logTransition(m: Member, from: MemberState, to: MemberState, interval: string | undefined): void {
    const log = this.log;
    if (log === null) return;
    const reason = m.reason;
    if (to === "up") log.info("activated", { address: m.address, from, to, reason });
    else if (from === "up") log.warn("deactivated endpoint", { address: m.address, interval, error: reason, from, to });
    else log.warn("member state changed", { address: m.address, from, to, reason });
  }
}
