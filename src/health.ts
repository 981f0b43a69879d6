/**
 * Member state: a member is marked failed when a dial to it fails, and probed every retry delay
 * until a bounded TCP connect succeeds (etcd's `--retry-delay` monitor, without its unbounded,
 * piling-up probes).
 *
 * @module
 */
import { connect as netConnect } from "node:net";
import { formatDuration } from "./duration.ts";
import type { Member, MemberTable } from "./endpoints.ts";
import type { Logger } from "./log.ts";

export interface MemberHealth {
  /** A dial to `member` failed: mark it failed (logged once) and schedule its probe. */
  dialFailed(member: Member, reason: string): void;
  /** A dial to `member` succeeded: record it, and reactivate the member if it was marked failed. */
  dialSucceeded(member: Member): void;
  /** Cancels pending probes (at shutdown). */
  stop(): void;
}

/**
 * @param retryDelayMs time between probes of a failed member (etcd: `--retry-delay`, 0 means 5m).
 * @param connectTimeoutMs bound on one probe's connect.
 */
export function createMemberHealth(opts: {
  members: MemberTable;
  retryDelayMs: number;
  connectTimeoutMs: number;
  log: Logger;
  /** Called after every change of a member's state (to share it with worker processes). */
  onChange?: () => void;
}): MemberHealth {
  const { log, connectTimeoutMs } = opts;
  // etcd's gateway: "--retry-delay=0" means its internal default of 5 minutes.
  const intervalMs = opts.retryDelayMs > 0 ? opts.retryDelayMs : 300_000;
  const interval = formatDuration(intervalMs);
  const timers = new Map<Member, Timer>();
  const probing = new Set<Member>();
  let stopped = false;

  const activate = (m: Member) => {
    m.active = true;
    m.reason = "";
    const t = timers.get(m);
    if (t) clearTimeout(t);
    timers.delete(m);
    log.info("activated", { address: m.address });
    opts.onChange?.();
  };

  const schedule = (m: Member) => {
    if (stopped || timers.has(m) || probing.has(m)) return;
    timers.set(
      m,
      setTimeout(() => void probe(m), intervalMs),
    );
  };

  // One probe per member at a time: the next is only scheduled once this one has settled.
  const probe = async (m: Member) => {
    timers.delete(m);
    probing.add(m);
    const err = await tcpProbe(m.endpoint.host, m.endpoint.port, connectTimeoutMs);
    probing.delete(m);
    if (stopped || m.active) return;
    if (err === null) {
      m.lastSuccess = performance.now();
      activate(m);
      return;
    }
    m.reason = err;
    log.warn("failed to activate endpoint (stay inactive for another interval)", {
      address: m.address,
      interval,
      error: err,
    });
    schedule(m);
  };

  return {
    dialFailed(m, reason) {
      if (!m.active) return;
      m.active = false;
      m.reason = reason;
      log.warn("deactivated endpoint", { address: m.address, interval, error: reason });
      schedule(m);
      opts.onChange?.();
    },
    dialSucceeded(m) {
      m.lastSuccess = performance.now();
      if (!m.active) activate(m);
    },
    stop() {
      stopped = true;
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
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
