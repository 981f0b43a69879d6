/**
 * The counters the data path keeps for `/metrics`: per member and per listener, and the histogram
 * they and the health checks use. Counting costs a few additions per chunk or per connection and no
 * allocation. Rendering is in src/metrics.ts.
 *
 * @module
 */

/** Upper bounds (seconds) of the connect-time and health-check-time histogram buckets. */
export const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Upper bounds (seconds) of the client-connection lifetime histogram: a request, up to a day-long watch. */
export const CONNECTION_BUCKETS = [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400];

export type FailureReason = "refused" | "timeout" | "reset" | "tls" | "other";
export const FAILURE_REASONS: readonly FailureReason[] = ["refused", "timeout", "reset", "tls", "other"];

/** A histogram's counts as they survive JSON (IPC from a worker): per bucket, not cumulative, +Inf last. */
export interface HistogramData {
  readonly counts: number[];
  sum: number;
}

/** A Prometheus histogram over fixed `bounds`: one comparison per bucket passed and two additions per observation. */
export class Histogram implements HistogramData {
  readonly counts: number[];
  sum = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }
  observe(value: number): void {
    this.sum += value;
    let i = 0;
    while (i < this.bounds.length && value > this.bounds[i]!) i++;
    this.counts[i]!++;
  }
  /** The bounds are known from the metric; only the counts travel. */
  toJSON(): HistogramData {
    return { counts: this.counts, sum: this.sum };
  }
}

/** Adds `from`'s counts to `into`'s (the same bounds). */
export function addHistogram(into: HistogramData, from: HistogramData): void {
  into.sum += from.sum;
  from.counts.forEach((n, i) => (into.counts[i] = (into.counts[i] ?? 0) + n));
}

/** One member's data-path counters as they survive JSON (a worker's share, sent to the primary). */
export interface MemberCounts {
  connectionsTotal: number;
  /** Open connections closed to move them elsewhere (--rebalance-interval). */
  rebalanced: number;
  bytesToMember: number;
  bytesFromMember: number;
  lastConnectedAt: number;
  lastHeardAt: number;
  readonly failures: Record<FailureReason, number>;
  /** Dial to connected, seconds. */
  readonly connect: HistogramData;
}

/** One member's data-path counters in this process. */
export class MemberStats implements MemberCounts {
  connectionsTotal = 0;
  rebalanced = 0;
  bytesToMember = 0;
  bytesFromMember = 0;
  /** `performance.now()` of the last connection established to the member, 0 if none yet. */
  lastConnectedAt = 0;
  /**
   * `performance.now()` of the last sign of a live member process: a byte it sent on a proxied
   * connection (its first, per connection), or an answer to a health check; 0 if none yet.
   */
  lastHeardAt = 0;
  readonly failures: Record<FailureReason, number> = { refused: 0, timeout: 0, reset: 0, tls: 0, other: 0 };
  readonly connect = new Histogram(CONNECT_BUCKETS);
}

/** How long the active checks of one member took, by depth (kept by src/health/monitor.ts, in the primary). */
export class CheckStats {
  readonly full = new Histogram(CONNECT_BUCKETS);
  readonly liveness = new Histogram(CONNECT_BUCKETS);
}

/** The listeners' counters in this process. */
export class ListenerStats {
  accepted = 0;
  /** Times the gateway stopped accepting at `--max-connections`. */
  limitReached = 0;
  /** Client connections from accept to close, seconds (observed when a connection is released). */
  readonly duration = new Histogram(CONNECTION_BUCKETS);
  /** TLS handshake failures by `side|reason` (side: client for termination, member for origination). */
  readonly tlsFailures = new Map<string, number>();
  countTlsFailure(side: "client" | "member", reason: string): void {
    const k = `${side}|${reason}`;
    this.tlsFailures.set(k, (this.tlsFailures.get(k) ?? 0) + 1);
  }
}

/** What discovery (src/discovery/refresh.ts) counts. */
export interface DiscoveryStats {
  refreshes: number;
  failures: number;
  /** Date.now() of the last good answer, 0 if none. */
  lastGoodAt: number;
}
