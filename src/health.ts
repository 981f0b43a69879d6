/**
 * Member health: active checks (src/checks.ts) with rise/fall hysteresis, and passive signals from
 * the data path (failed dials, resets right after connect), which eject a member after
 * `--health-fall` in a row. A member is usable (`up`) when its check passes and it is not ejected.
 *
 * Without active checks (`--health-check none`), an ejected member is probed with a bounded TCP
 * connect every `--retry-delay`, as etcd's gateway does (without its unbounded, piling-up probes).
 *
 * Every transition is logged once, with etcd's phrases: `deactivated endpoint` when a member
 * becomes unusable, `activated` when it is usable again.
 *
 * @module
 */
import { connect as netConnect } from "node:net";
import { runCheck, type CheckKind, type CheckTLS } from "./checks.ts";
import { formatDuration } from "./duration.ts";
import type { Member, MemberState, MemberTable } from "./endpoints.ts";
import type { Logger } from "./log.ts";

export interface MemberHealth {
  /** A dial to `member` failed (or was reset right after connect). */
  dialFailed(member: Member, reason: string): void;
  /** A dial to `member` succeeded. */
  dialSucceeded(member: Member): void;
  /** Starts the active checks (no-op with `--health-check none`). */
  start(): void;
  /** The endpoint set changed: check the new members, forget the removed ones. */
  membersChanged(added: readonly Member[], removed: readonly Member[]): void;
  /** Cancels checks and probes (at shutdown). */
  stop(): void;
}

export interface HealthOptions {
  /** @default "etcd" */
  check: CheckKind;
  /** @default 2000 */
  intervalMs: number;
  /** @default 1000 */
  timeoutMs: number;
  /** Passing checks in a row that bring a down member up. @default 2 */
  rise: number;
  /** Failing checks (or failed dials) in a row that take a member down (or eject it). @default 3 */
  fall: number;
  /** `--retry-delay` (0 means 5m, as in etcd): probe interval of ejected members without active checks. */
  retryDelayMs: number;
  /** Bound on one retry probe's connect. */
  connectTimeoutMs: number;
  tls: CheckTLS | null;
}

/** Per-member bookkeeping that only this module needs. */
interface Track {
  /** The first check decides at once (no fall/rise): a learner or dead member is out within one check. */
  checked: boolean;
  checkUp: boolean;
  ejected: boolean;
  okStreak: number;
  failStreak: number;
  timer: Timer | null;
  probing: boolean;
}

/**
 * @param onChange called after every state change, e.g. to close connections to a member that went
 * down or to share the state with worker processes.
 */
export function createMemberHealth(opts: {
  members: MemberTable;
  health: HealthOptions;
  log: Logger;
  onChange?: (member: Member, from: MemberState, to: MemberState) => void;
}): MemberHealth {
  // `h` is read where it is used: a SIGHUP reload changes it in place.
  const { log, health: h } = opts;
  const active = () => h.check !== "none";
  // etcd's gateway: "--retry-delay=0" means its internal default of 5 minutes.
  const retryMs = () => (h.retryDelayMs > 0 ? h.retryDelayMs : 300_000);
  const intervalText = () => formatDuration(active() ? h.intervalMs : retryMs());
  // Check faster while a member is between states, as HAProxy's fastinter does.
  const fastMs = () => Math.max(Math.min(h.intervalMs / 4, 1000), 100);
  const tracks = new Map<Member, Track>();
  const track = (m: Member): Track => {
    let t = tracks.get(m);
    if (t === undefined) tracks.set(m, (t = { checked: false, checkUp: true, ejected: false, okStreak: 0, failStreak: 0, timer: null, probing: false }));
    return t;
  };
  let stopped = false;

  /** Recomputes `m.state` from its track; logs and reports a change. */
  const settle = (m: Member, reason: string) => {
    const t = track(m);
    const to: MemberState = !t.checkUp ? "down" : t.ejected ? "ejected" : "up";
    const from = m.state;
    m.reason = reason;
    if (to === from) return;
    m.state = to;
    m.active = to === "up";
    if (to === "ejected") m.stats.ejections++;
    if (to === "up") log.info("activated", { address: m.address, from, to, reason });
    else if (from === "up") log.warn("deactivated endpoint", { address: m.address, interval: intervalText(), error: reason, from, to });
    else log.warn("member state changed", { address: m.address, from, to, reason });
    opts.onChange?.(m, from, to);
  };

  const schedule = (m: Member, ms: number, fn: () => Promise<void>) => {
    const t = track(m);
    if (stopped || t.timer !== null) return;
    t.timer = setTimeout(async () => {
      t.timer = null;
      t.probing = true;
      try {
        await fn();
      } finally {
        t.probing = false;
      }
    }, ms);
  };

  // --- active checks: one loop per member, never overlapping, each bounded by the timeout ---
  const jitter = (ms: number) => ms * (0.9 + Math.random() * 0.2);
  const check = async (m: Member) => {
    const t = track(m);
    if (!active()) return; // switched to --health-check none by a reload
    const r = await runCheck(h.check, m, h.timeoutMs, h.tls);
    if (stopped || m.removed) return;
    if (!t.checked) {
      t.checked = true;
      if (!r.ok) t.checkUp = false;
    }
    if (r.ok) {
      t.failStreak = 0;
      t.okStreak++;
      if (!t.checkUp && t.okStreak >= h.rise) t.checkUp = true;
      if (t.checkUp && t.ejected) {
        // A passing check re-admits a member that failed dials (it may have restarted meanwhile).
        t.ejected = false;
        m.failures = 0;
      }
    } else {
      t.okStreak = 0;
      t.failStreak++;
      if (t.checkUp && t.failStreak >= h.fall) t.checkUp = false;
    }
    settle(m, r.reason);
    const transition = (t.checkUp && t.failStreak > 0) || (!t.checkUp && t.okStreak > 0);
    schedule(m, jitter(transition ? fastMs() : h.intervalMs), () => check(m));
  };

  // --- without active checks: etcd's retry-delay probe of ejected members ---
  const probe = async (m: Member) => {
    const t = track(m);
    const err = await tcpProbe(m.dialHost, m.endpoint.port, h.connectTimeoutMs);
    if (stopped || !t.ejected) return;
    if (err === null) {
      t.ejected = false;
      m.failures = 0;
      m.lastSuccess = performance.now();
      settle(m, "retry probe connected");
      return;
    }
    log.warn("failed to activate endpoint (stay inactive for another interval)", { address: m.address, interval: intervalText(), error: err });
    schedule(m, retryMs(), () => probe(m));
  };

  return {
    dialFailed(m, reason) {
      m.failures++;
      const t = track(m);
      if (t.ejected || m.failures < h.fall) return;
      t.ejected = true;
      settle(m, `${m.failures} failed dials in a row, last: ${reason}`);
      // A probe still in flight carries on (it sees the member ejected again): one chain per member.
      if (!active() && !t.probing) schedule(m, retryMs(), () => probe(m));
    },
    dialSucceeded(m) {
      m.lastSuccess = performance.now();
      if (m.failures === 0) return;
      m.failures = 0;
      const t = track(m);
      if (!t.ejected) return;
      t.ejected = false;
      settle(m, "dial succeeded");
    },
    start() {
      if (!active()) return;
      // Spread the first checks over a short window so members are not all checked at once.
      for (const m of opts.members.list) schedule(m, Math.random() * Math.min(h.intervalMs, 200), () => check(m));
    },
    membersChanged(added, removed) {
      for (const m of removed) {
        const t = tracks.get(m);
        if (t?.timer) clearTimeout(t.timer);
        tracks.delete(m);
      }
      if (active()) for (const m of added) schedule(m, Math.random() * Math.min(h.intervalMs, 200), () => check(m));
    },
    stop() {
      stopped = true;
      for (const t of tracks.values()) if (t.timer !== null) clearTimeout(t.timer);
    },
  };
}

/**
 * One TCP connect to `host:port`, closed at once; resolves to null on success or the reason of the
 * failure. Uses node:net because its `destroy()` cancels a pending connect, which `Bun.connect`
 * cannot (bun-platform.md trap 5), so a probe of a blackholed member never outlives its timeout.
 */
export function tcpProbe(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const sock = netConnect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(`connect timeout after ${formatDuration(timeoutMs)}`);
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(null);
    });
    sock.once("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(e.code ?? e.message);
    });
  });
}
