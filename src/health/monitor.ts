/**
 * Judges member health and writes the verdict through the member table (src/members.ts):
 * active checks with rise/fall hysteresis, and passive evidence from the data path (failed dials,
 * resets right after connect) that ejects a member after `--health-fall` in a row.
 *
 * A member is `up` when its check passes and it is not ejected; `down` when `--health-fall` checks
 * in a row failed (the first check decides alone); `ejected` after `--health-fall` failed dials,
 * until a passing check or, with `--health-check none`, a TCP probe every `--retry-delay` (etcd's
 * gateway behaviour, without its unbounded, piling-up probes) brings it back.
 *
 * What the checks cost the cluster is multiplied by every host that runs a gateway, so they are
 * spent where they matter (docs/selection-and-health.md, "What health checks cost the cluster"):
 * - the member in use (carrying this gateway's clients, or the one its policy sends the next client
 *   to) gets a cheap liveness check every `--health-interval` on a kept-alive connection, and a full
 *   check (leader, learner, alarm) every `--health-status-interval` (every
 *   `--health-spare-interval` for a member that only still carries connections a fault left on
 *   it); once a full check fails, every check is full until one passes;
 * - a spare (up, no clients) gets a full check every `--health-spare-interval` (Envoy's
 *   no_traffic_interval), on a new connection each time: no idle connection is held on the member;
 * - a down or ejected member is checked at `--health-interval` doubling after each failure up to
 *   `--health-spare-interval` (HAProxy's downinter): checks back off, never speed up, when the
 *   cluster is sick; for a member that does not answer at all (asking it costs the cluster nothing)
 *   up to 5 × `--health-interval`, so a fleet sees it back within seconds.
 * Every wait is jittered ±10 % and the first check of a member falls anywhere in the first
 * interval, so a fleet restarted at once does not check in step.
 *
 * The clock, the check and the probe are injected, so the rules are unit-tested without sockets
 * or waiting (test/unit/health.test.ts).
 *
 * @module
 */
import { formatDuration } from "../duration.ts";
import type { Logger } from "../log.ts";
import type { Member, MemberChange, MemberState, MemberTable } from "../members.ts";
import { after } from "../timers.ts";
import type { TlsFiles } from "../tls.ts";
import { forgetMember, runCheck, type CheckDepth, type CheckKind, type CheckOptions, type CheckResult } from "./checks.ts";
import { ClusterView } from "./cluster.ts";
import { tcpProbe } from "./probe.ts";

/** The health settings in force; read where they are used, so a reload takes effect at the next step. */
export interface HealthSettings {
  readonly check: CheckKind;
  /** Between checks of the member in use (liveness), and the first step of a down member's backoff. */
  readonly intervalMs: number;
  /** Between full checks of the member in use. */
  readonly statusIntervalMs: number;
  /** Between checks of a spare, and the longest backoff of a down member. */
  readonly spareIntervalMs: number;
  readonly timeoutMs: number;
  /** Passing checks in a row that bring a down member up. */
  readonly rise: number;
  /** Failing checks (or failed dials) in a row that take a member down (or eject it). */
  readonly fall: number;
  /** `--retry-delay` (0 means 5m, as in etcd): probe interval of ejected members without active checks. */
  readonly retryDelayMs: number;
  /** Bound on one retry probe's connect. */
  readonly connectTimeoutMs: number;
  readonly tls: TlsFiles | null;
  /** `--cluster-id` (hex): the cluster the members must belong to; null to learn it from them. */
  readonly clusterId: string | null;
}

/** What health needs from the world; `realWorld` in production, fakes in unit tests. */
export interface HealthWorld {
  /** Runs `fn` after `ms`; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
  /** In [0, 1): jitter. */
  random(): number;
  /** Milliseconds on a monotonic clock. */
  now(): number;
  check(kind: Exclude<CheckKind, "none">, member: Member, options: CheckOptions): Promise<CheckResult>;
  /** A TCP connect: null when it connected, else why not. */
  probe(member: Member, timeoutMs: number): Promise<string | null>;
  /** The member left the endpoint set, or health stopped: what the checks hold for it can go. */
  forget(member: Member): void;
}

export const realWorld: HealthWorld = {
  after,
  random: Math.random,
  now: () => performance.now(),
  check: runCheck,
  probe: (m, timeoutMs) => tcpProbe(m.dialHost, m.endpoint.port, timeoutMs),
  forget: forgetMember,
};

/** Per-member bookkeeping that only health needs. */
interface Track {
  /** The first check decides at once (no fall/rise): a learner or dead member is out within one check. */
  checked: boolean;
  checkUp: boolean;
  ejected: boolean;
  okStreak: number;
  failStreak: number;
  cancel: (() => void) | null;
  /** When the next check is due (the world's clock), to bring it forward when the member comes into use. */
  dueAt: number;
  probing: boolean;
  /** When the last full check ran, and whether it failed (then every check is full until one passes). */
  lastFullAt: number;
  fullFailing: boolean;
  /** The notes of its checks already logged (each once per member). */
  noted: Set<string>;
  /** Whether its last check passed but for the cluster it reported (so it can be taken back at once when the gateway's cluster turns out to be its own). */
  passedButCluster: boolean;
  /** When a stall was last suspected (the world's clock), and the confirming checks still running. */
  suspectedAt: number;
  confirming: number;
}

/** etcd's gateway: `--retry-delay=0` means its internal default of 5 minutes. */
const retryMs = (s: HealthSettings) => (s.retryDelayMs > 0 ? s.retryDelayMs : 300_000);
/** The longest wait before a member's first check. */
const FIRST_CHECK_SPREAD_MS = 10_000;
/** Between the checks that confirm or clear a stall suspicion: --health-fall of them, overlapping. */
export const CONFIRM_SPACING_MS = 150;

/**
 * The longest wait between checks of a down member that does not answer at all (refused, timed
 * out), in --health-interval: asking a dead address costs the cluster nothing, and every gateway of a
 * fleet then sees the member back within this many intervals (and --health-rise more), so that new
 * connections spread over it again (issue 22; docs/selection-and-health.md, "Selection and failover").
 */
export const SILENT_BACKOFF_INTERVALS = 5;

/**
 * A down member's wait: the interval doubling with each failure beyond --health-fall, up to the
 * spare interval for a member that answers (an unhealthy member costs the cluster each check), and
 * to SILENT_BACKOFF_INTERVALS intervals for one that does not.
 */
function backoffMs(s: HealthSettings, failStreak: number, silent: boolean): number {
  const cap = Math.max(s.spareIntervalMs, s.intervalMs);
  return Math.min(s.intervalMs * 2 ** Math.max(failStreak - s.fall, 0), silent ? Math.min(cap, SILENT_BACKOFF_INTERVALS * s.intervalMs) : cap);
}

export class Health {
  readonly #tracks = new Map<Member, Track>();
  #stopped = false;
  /** The cluster the members must belong to, and its alarms. */
  readonly cluster: ClusterView;

  constructor(
    private readonly table: MemberTable,
    private readonly settings: () => HealthSettings,
    private readonly log: Logger,
    /** Whether the member carries clients now (or is the one the policy sends the next client to). */
    private readonly inUse: (m: Member) => boolean,
    private readonly world: HealthWorld = realWorld,
    /**
     * Whether new connections go to the member (sticky's or ordered's choice; under round-robin and
     * least-connections, every member in use): it gets a full check every --health-status-interval.
     * A member in use only through open connections left on it after a fault gets its liveness
     * checks as often, and a full one every --health-spare-interval. @default inUse
     */
    private readonly chosen: (m: Member) => boolean = inUse,
  ) {
    this.cluster = new ClusterView(log, settings().clusterId, () => table.list.length);
  }

  private get active(): boolean {
    return this.settings().check !== "none";
  }

  /** Starts the active checks (nothing with `--health-check none`), spread over a short window. */
  start(): void {
    if (!this.active) return;
    for (const m of this.table.list) this.firstCheck(m);
  }

  /** The endpoint set changed: check the new members, forget the removed ones. */
  membersChanged(added: readonly Member[], removed: readonly Member[]): void {
    let changed = false;
    for (const m of removed) {
      this.#tracks.get(m)?.cancel?.();
      this.#tracks.delete(m);
      this.world.forget(m);
      changed = this.cluster.forget(m) || changed;
    }
    if (changed) this.reviewIdentities();
    if (this.active) for (const m of added) this.firstCheck(m);
  }

  /** Settings were reloaded: a switch from `none` to a check starts the checks; a new --cluster-id applies at once. */
  settingsChanged(previous: HealthSettings): void {
    if (previous.check === "none" && this.active) this.start();
    if (this.cluster.pin(this.settings().clusterId)) this.reviewIdentities();
  }

  /** Cancels checks and probes, and closes the checks' kept connections (at shutdown). */
  stop(): void {
    this.#stopped = true;
    for (const [m, t] of this.#tracks) {
      t.cancel?.();
      this.world.forget(m);
    }
  }

  /** Passive evidence: a dial to `m` failed, or it reset right after connect. */
  dialFailed(m: Member, reason: string): void {
    const failures = m.failures + 1;
    const t = this.track(m);
    if (t.ejected || failures < this.settings().fall) {
      this.table.update(m, { failures });
      // Undecided now (a spare that died is otherwise looked at again only a minute later).
      if (m.state === "up") this.bringForward(m);
      return;
    }
    t.ejected = true;
    this.settle(m, `${failures} failed dials in a row, last: ${reason}`, failures);
    // A probe still in flight carries on (it sees the member ejected again): one chain per member.
    if (!this.active && !t.probing) this.schedule(m, retryMs(this.settings()), () => this.probe(m));
  }

  /** Passive evidence: a dial to `m` succeeded (and, after failures, the member proved itself). */
  dialSucceeded(m: Member): void {
    if (m.failures === 0) return;
    const t = this.track(m);
    if (!t.ejected) return this.table.update(m, { failures: 0 });
    t.ejected = false;
    this.settle(m, "dial succeeded", 0);
  }

  /**
   * Passive evidence from client traffic (src/datapath/suspect.ts): client bytes reached `m` and
   * nothing came back for `silentMs`. A suspicion is not a verdict: it starts --health-fall
   * liveness checks at once, CONFIRM_SPACING_MS apart (not waiting for one another), counted like
   * any check, so the member is down only if none answers within --health-timeout. At most one
   * such burst per member per --health-interval, and none for a member that is not up: the steady
   * schedule still never speeds up for a sick cluster.
   */
  stallSuspected(m: Member, silentMs: number): void {
    const s = this.settings();
    const t = this.#tracks.get(m);
    if (t === undefined || s.check === "none" || m.state !== "up" || t.confirming > 0 || this.#stopped) return;
    const now = this.world.now();
    if (now - t.suspectedAt < s.intervalMs) return;
    t.suspectedAt = now;
    t.confirming = s.fall;
    this.log.info("member suspected of a stall; checking it now", { address: m.address, "silent-ms": Math.round(silentMs), checks: s.fall });
    for (let k = 0; k < s.fall; k++) this.world.after(k * CONFIRM_SPACING_MS, () => void this.confirm(m, t));
  }

  /** One check of a stall confirmation; the last one to finish counts the outcome. */
  private async confirm(m: Member, t: Track): Promise<void> {
    const s = this.settings();
    const r = await this.timed(m, s.check === "none" ? "tcp" : s.check, { depth: "liveness", timeoutMs: s.timeoutMs, tls: s.tls, keepAlive: false });
    t.confirming--;
    if (this.#stopped || m.removed) return;
    if (r.ok !== null) this.absorb(m, t, r.ok ? r : { ...r, reason: `${r.reason} (confirming a stall seen on client traffic)` }, "liveness");
    if (t.confirming > 0) return;
    if (m.state === "up") {
      m.suspicions.cleared++;
      this.log.info("stall suspicion cleared: the member answers", { address: m.address });
    } else m.suspicions.confirmed++;
  }

  /**
   * The member now carries clients: if its next check is further away than --health-interval, it
   * comes forward to then (traffic decides where checks go, not sickness).
   */
  cameIntoUse(m: Member): void {
    if (m.state === "up") this.bringForward(m);
  }

  /** Brings `m`'s next check forward to within --health-interval, if it is further away. */
  private bringForward(m: Member): void {
    const t = this.#tracks.get(m);
    const s = this.settings();
    if (t === undefined || t.cancel === null || t.probing || s.check === "none") return;
    if (t.dueAt - this.world.now() <= s.intervalMs) return;
    this.recheck(m, t, s.intervalMs * this.jitter());
  }

  /** Replaces `m`'s scheduled check with one `ms` from now (the caller checked one is scheduled and none runs). */
  private recheck(m: Member, t: Track, ms: number): void {
    t.cancel!();
    t.cancel = null;
    this.schedule(m, ms, () => this.check(m));
  }

  /**
   * Checks `m` fully now, once, and counts the verdict like any check; resolves whether it passed.
   * For deciding on the spot whether a spare (checked rarely) really is there to take clients.
   */
  async verify(m: Member): Promise<boolean> {
    const s = this.settings();
    const t = this.track(m);
    if (s.check === "none" || t.probing) return m.up;
    // A full check passed within --health-status-interval says as much (a fleet whose member went
    // down would otherwise check the member it moves to all at once).
    if (m.up && t.checked && !t.fullFailing && this.world.now() - t.lastFullAt < s.statusIntervalMs) return true;
    const r = await this.timed(m, s.check, { depth: "full", timeoutMs: s.timeoutMs, tls: s.tls, keepAlive: false });
    if (this.#stopped || m.removed) return false;
    if (r.ok === null) return m.up;
    return this.absorb(m, t, r, "full");
  }

  private jitter(): number {
    return 0.9 + this.world.random() * 0.2;
  }

  private track(m: Member): Track {
    let t = this.#tracks.get(m);
    if (t === undefined) {
      t = { checked: false, checkUp: true, ejected: false, okStreak: 0, failStreak: 0, cancel: null, dueAt: 0, probing: false, lastFullAt: -Infinity, fullFailing: false, noted: new Set(), passedButCluster: false, suspectedAt: -Infinity, confirming: 0 };
      this.#tracks.set(m, t);
    }
    return t;
  }

  /** Writes the state that follows from `m`'s track, with `more` of what the check found. */
  private settle(m: Member, reason: string, failures?: number, more: MemberChange = {}): void {
    const t = this.track(m);
    const state: MemberState = !t.checkUp ? "down" : t.ejected ? "ejected" : "up";
    const s = this.settings();
    const interval = formatDuration(this.active ? s.intervalMs : retryMs(s));
    const wasUp = m.up;
    this.table.update(m, { ...more, state, reason, failures, interval });
    if (!wasUp && m.up && this.active) this.recovering(m);
  }

  /**
   * `back` came up: the cluster may have its quorum again (a full outage ending, members returning
   * a few seconds apart). Down members that answered unhealthy ("no leader") back off to
   * --health-spare-interval; their next check comes within SILENT_BACKOFF_INTERVALS intervals, at
   * a random point of that window, so a fleet sees them back within the silent members' bound
   * without checking them all at once (issue 22).
   */
  private recovering(back: Member): void {
    const s = this.settings();
    const window = SILENT_BACKOFF_INTERVALS * s.intervalMs;
    const now = this.world.now();
    for (const m of this.table.list) {
      const t = this.#tracks.get(m);
      if (m === back || m.up || m.alive !== true || t === undefined || t.cancel === null || t.probing || t.dueAt - now <= window) continue;
      this.recheck(m, t, this.world.random() * window);
    }
  }

  /** Runs `fn` after `ms` unless something is already scheduled for `m`; `probing` is set while it runs. */
  private schedule(m: Member, ms: number, fn: () => Promise<void>): void {
    const t = this.track(m);
    if (this.#stopped || t.cancel !== null) return;
    t.dueAt = this.world.now() + ms;
    t.cancel = this.world.after(ms, async () => {
      t.cancel = null;
      t.probing = true;
      try {
        await fn();
      } finally {
        t.probing = false;
      }
    });
  }

  /**
   * The first check is full and falls anywhere within the first interval (at most 10 s), so a
   * fleet started at once does not check in step.
   */
  private firstCheck(m: Member): void {
    this.schedule(m, this.world.random() * Math.min(this.settings().intervalMs, FIRST_CHECK_SPREAD_MS), () => this.check(m));
  }

  /**
   * What the next check of `m` asks, and how it connects. A down member whose full check just
   * passed is confirmed (--health-rise) by liveness checks: every gateway of a fleet checks a
   * returning member, and the full check already said it leads, is a voter and has no alarm
   * (issue 22: a rolling restart cost 1.7x the steady full checks with full confirmations).
   */
  private plan(m: Member, t: Track, s: HealthSettings): CheckOptions {
    const inUse = t.checked && m.state === "up" && this.inUse(m);
    const rising = m.state !== "up" && t.okStreak > 0 && !t.fullFailing;
    const fullEvery = this.chosen(m) ? s.statusIntervalMs : Math.max(s.spareIntervalMs, s.statusIntervalMs);
    const full = !rising && (!inUse || t.fullFailing || this.world.now() - t.lastFullAt >= fullEvery);
    const depth: CheckDepth = full ? "full" : "liveness";
    return { depth, timeoutMs: s.timeoutMs, tls: s.tls, keepAlive: inUse };
  }

  /**
   * When to check `m` next: every --health-interval while its state is undecided (up with a failed
   * check or dial behind it, down with a passing check behind it), whatever its role; a decided
   * down member backs off; the member in use every --health-interval, a spare every
   * --health-spare-interval.
   */
  private nextIn(m: Member, t: Track, s: HealthSettings): number {
    if (m.state !== "up") return t.okStreak > 0 ? s.intervalMs : backoffMs(s, t.failStreak, m.alive === false);
    if (t.failStreak > 0 || m.failures > 0) return s.intervalMs;
    return this.inUse(m) ? s.intervalMs : Math.max(s.spareIntervalMs, s.intervalMs);
  }

  /** One active check and its consequence; then the next one, never overlapping. */
  private async check(m: Member): Promise<void> {
    const before = this.settings();
    if (before.check === "none") return; // switched off by a reload
    const t = this.track(m);
    const plan = this.plan(m, t, before);
    const r = await this.timed(m, before.check, plan);
    if (this.#stopped || m.removed) return;
    if (r.ok !== null) this.absorb(m, t, r, plan.depth);
    const s = this.settings();
    this.schedule(m, this.nextIn(m, t, s) * this.jitter(), () => this.check(m));
  }

  /** One check, its duration observed by depth for /metrics (unless it could not run: out of descriptors). */
  private async timed(m: Member, kind: Exclude<CheckKind, "none">, plan: CheckOptions): Promise<CheckResult> {
    const t0 = this.world.now();
    const r = await this.world.check(kind, m, plan);
    if (r.ok !== null) m.checks[plan.depth].observe((this.world.now() - t0) / 1000);
    return r;
  }

  /**
   * Takes in what a check found: its notes (logged once per member), whether the member answered,
   * the cluster it belongs to and the cluster's alarms, then the verdict; returns whether it passed.
   */
  private absorb(m: Member, t: Track, r: CheckResult, depth: CheckDepth): boolean {
    for (const n of r.notes ?? []) {
      if (t.noted.has(n.key)) continue;
      t.noted.add(n.key);
      this.log[n.level](n.msg, { ...n.fields });
    }
    if (r.alive === true) m.stats.lastHeardAt = this.world.now();
    const more: MemberChange = r.alive === undefined || r.alive === m.alive ? {} : { alive: r.alive };
    let { ok, reason } = r;
    let hard = false;
    const id = r.facts?.clusterId ?? null;
    if (id !== null) {
      if (this.cluster.report(m, id)) this.reviewIdentities(m);
      const wrong = this.cluster.foreign(id);
      if (wrong !== m.wrongCluster || id !== m.clusterId) more.cluster = { id, wrong };
      t.passedButCluster = wrong && ok === true;
      if (wrong) [ok, reason, hard] = [false, this.wrongClusterReason(id), true];
      else this.cluster.setAlarms(r.facts!.alarms, m);
    }
    if (depth === "full") {
      t.lastFullAt = this.world.now();
      t.fullFailing = !ok;
    }
    this.judge(m, t, ok === true, reason, hard, more);
    return ok === true;
  }

  private wrongClusterReason(id: string): string {
    return `member of cluster ${id}, not ${this.cluster.id ?? "?"} (the gateway's cluster${this.cluster.pinned ? ", --cluster-id" : ""})`;
  }

  /**
   * The gateway's cluster changed (learned anew, or --cluster-id reloaded): members that reported
   * another one are taken out at once; those that now belong are back at once if their last check
   * passed but for the cluster, else judged afresh by their next check, within --health-interval.
   * `except` was just judged by its caller.
   */
  private reviewIdentities(except?: Member): void {
    for (const m of this.table.list) {
      if (m === except || m.clusterId === null) continue;
      const wrong = this.cluster.foreign(m.clusterId);
      if (wrong === m.wrongCluster) continue;
      const t = this.track(m);
      if (wrong) {
        t.checked = true;
        t.checkUp = false;
        [t.okStreak, t.failStreak] = [0, 1];
        this.settle(m, this.wrongClusterReason(m.clusterId), undefined, { cluster: { id: m.clusterId, wrong } });
        continue;
      }
      if (t.passedButCluster) {
        [t.checked, t.checkUp, t.okStreak, t.failStreak, t.passedButCluster] = [true, true, 1, 0, false];
        this.settle(m, "status ok; the gateway's cluster", undefined, { cluster: { id: m.clusterId, wrong } });
        continue;
      }
      t.checked = false; // its next check decides alone, as a first one does
      this.table.update(m, { cluster: { id: m.clusterId, wrong } });
      this.bringForward(m);
    }
  }

  /** Rise and fall: `ok` is the latest check's verdict; `hard` takes the member down at once (another cluster's). */
  private judge(m: Member, t: Track, ok: boolean, reason: string, hard = false, more: MemberChange = {}): void {
    const s = this.settings();
    if (!t.checked) {
      t.checked = true;
      t.checkUp = ok;
    } else if (hard && !ok) t.checkUp = false;
    let failures: number | undefined;
    if (ok) {
      t.failStreak = 0;
      t.okStreak++;
      if (!t.checkUp && t.okStreak >= s.rise) t.checkUp = true;
      if (t.checkUp && (t.ejected || m.failures > 0)) {
        // A passing check re-admits a member that failed dials (it may have restarted meanwhile),
        // ejected or not yet: a check connected to it, and a failed dial left counted would keep
        // it out of sticky's choice and on the undecided schedule for good (issue 22).
        t.ejected = false;
        failures = 0;
      }
    } else {
      t.okStreak = 0;
      t.failStreak++;
      if (t.checkUp && t.failStreak >= s.fall) t.checkUp = false;
    }
    this.settle(m, reason, failures, more);
  }

  /** Without active checks: etcd's retry-delay probe of an ejected member. */
  private async probe(m: Member): Promise<void> {
    const t = this.track(m);
    const err = await this.world.probe(m, this.settings().connectTimeoutMs);
    if (this.#stopped || !t.ejected) return;
    if (err === null) {
      t.ejected = false;
      this.settle(m, "retry probe connected", 0);
      return;
    }
    const interval = formatDuration(retryMs(this.settings()));
    this.log.warn("failed to activate endpoint (stay inactive for another interval)", { address: m.address, interval, error: err });
    this.schedule(m, retryMs(this.settings()), () => this.probe(m));
  }
}
