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
 * The clock, the check and the probe are injected, so the rules are unit-tested without sockets
 * or waiting (test/unit/health.test.ts).
 *
 * @module
 */
import { formatDuration } from "../duration.ts";
import type { Logger } from "../log.ts";
import type { Member, MemberState, MemberTable } from "../members.ts";
import { after } from "../timers.ts";
import type { TlsFiles } from "../tls.ts";
import { runCheck, type CheckKind, type CheckResult } from "./checks.ts";
import { tcpProbe } from "./probe.ts";

/** The health settings in force; read where they are used, so a reload takes effect at the next step. */
export interface HealthSettings {
  readonly check: CheckKind;
  readonly intervalMs: number;
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
}

/** What health needs from the world; `realWorld` in production, fakes in unit tests. */
export interface HealthWorld {
  /** Runs `fn` after `ms`; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
  /** In [0, 1): jitter. */
  random(): number;
  check(kind: Exclude<CheckKind, "none">, member: Member, timeoutMs: number, tls: TlsFiles | null): Promise<CheckResult>;
  /** A TCP connect: null when it connected, else why not. */
  probe(member: Member, timeoutMs: number): Promise<string | null>;
}

export const realWorld: HealthWorld = {
  after,
  random: Math.random,
  check: runCheck,
  probe: (m, timeoutMs) => tcpProbe(m.dialHost, m.endpoint.port, timeoutMs),
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
  probing: boolean;
}

/** etcd's gateway: `--retry-delay=0` means its internal default of 5 minutes. */
const retryMs = (s: HealthSettings) => (s.retryDelayMs > 0 ? s.retryDelayMs : 300_000);
/** Check faster while a member is between states, as HAProxy's fastinter does. */
const fastMs = (s: HealthSettings) => Math.max(Math.min(s.intervalMs / 4, 1000), 100);

export class Health {
  readonly #tracks = new Map<Member, Track>();
  #stopped = false;

  constructor(
    private readonly table: MemberTable,
    private readonly settings: () => HealthSettings,
    private readonly log: Logger,
    private readonly world: HealthWorld = realWorld,
  ) {}

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
    for (const m of removed) {
      this.#tracks.get(m)?.cancel?.();
      this.#tracks.delete(m);
    }
    if (this.active) for (const m of added) this.firstCheck(m);
  }

  /** Settings were reloaded: a switch from `none` to a check starts the checks. */
  settingsChanged(previous: HealthSettings): void {
    if (previous.check === "none" && this.active) this.start();
  }

  /** Cancels checks and probes (at shutdown). */
  stop(): void {
    this.#stopped = true;
    for (const t of this.#tracks.values()) t.cancel?.();
  }

  /** Passive evidence: a dial to `m` failed, or it reset right after connect. */
  dialFailed(m: Member, reason: string): void {
    const failures = m.failures + 1;
    const t = this.track(m);
    if (t.ejected || failures < this.settings().fall) {
      this.table.update(m, { failures });
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

  private track(m: Member): Track {
    let t = this.#tracks.get(m);
    if (t === undefined) {
      t = { checked: false, checkUp: true, ejected: false, okStreak: 0, failStreak: 0, cancel: null, probing: false };
      this.#tracks.set(m, t);
    }
    return t;
  }

  /** Writes the state that follows from `m`'s track. */
  private settle(m: Member, reason: string, failures?: number): void {
    const t = this.track(m);
    const state: MemberState = !t.checkUp ? "down" : t.ejected ? "ejected" : "up";
    const s = this.settings();
    const interval = formatDuration(this.active ? s.intervalMs : retryMs(s));
    this.table.update(m, { state, reason, failures, interval });
  }

  /** Runs `fn` after `ms` unless something is already scheduled for `m`; `probing` is set while it runs. */
  private schedule(m: Member, ms: number, fn: () => Promise<void>): void {
    const t = this.track(m);
    if (this.#stopped || t.cancel !== null) return;
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

  private firstCheck(m: Member): void {
    const s = this.settings();
    this.schedule(m, this.world.random() * Math.min(s.intervalMs, 200), () => this.check(m));
  }

  /** One active check and its consequence; then the next one, never overlapping. */
  private async check(m: Member): Promise<void> {
    const before = this.settings();
    if (before.check === "none") return; // switched off by a reload
    const r = await this.world.check(before.check, m, before.timeoutMs, before.tls);
    if (this.#stopped || m.removed) return;
    const s = this.settings();
    const t = this.track(m);
    if (!t.checked) {
      t.checked = true;
      if (!r.ok) t.checkUp = false;
    }
    let failures: number | undefined;
    if (r.ok) {
      t.failStreak = 0;
      t.okStreak++;
      if (!t.checkUp && t.okStreak >= s.rise) t.checkUp = true;
      if (t.checkUp && t.ejected) {
        // A passing check re-admits a member that failed dials (it may have restarted meanwhile).
        t.ejected = false;
        failures = 0;
      }
    } else {
      t.okStreak = 0;
      t.failStreak++;
      if (t.checkUp && t.failStreak >= s.fall) t.checkUp = false;
    }
    this.settle(m, r.reason, failures);
    const transition = (t.checkUp && t.failStreak > 0) || (!t.checkUp && t.okStreak > 0);
    const jitter = 0.9 + this.world.random() * 0.2;
    this.schedule(m, (transition ? fastMs(s) : s.intervalMs) * jitter, () => this.check(m));
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
