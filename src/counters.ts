/**
 * The counters the data path keeps for `/metrics`: per member and per listener. Counting costs a
 * few additions per chunk or per connection and no allocation. Rendering is in src/metrics.ts.
 *
 * @module
 */

/** Upper bounds (seconds) of the connect-time histogram buckets. */
export const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export type FailureReason = "refused" | "timeout" | "reset" | "tls" | "other";
export const FAILURE_REASONS: readonly FailureReason[] = ["refused", "timeout", "reset", "tls", "other"];

/** One member's data-path counters in this process. */
export class MemberStats {
  connectionsTotal = 0;
  bytesToMember = 0;
  bytesFromMember = 0;
  /** `performance.now()` of the last connection established to the member, 0 if none yet. */
  lastConnectedAt = 0;
  readonly failures: Record<FailureReason, number> = { refused: 0, timeout: 0, reset: 0, tls: 0, other: 0 };
  /** Counts per bucket of CONNECT_BUCKETS (not cumulative), plus +Inf last. */
  readonly connectBuckets = new Float64Array(CONNECT_BUCKETS.length + 1);
  connectSum = 0;

  observeConnect(seconds: number): void {
    this.connectSum += seconds;
    let i = 0;
    while (i < CONNECT_BUCKETS.length && seconds > CONNECT_BUCKETS[i]!) i++;
    this.connectBuckets[i]!++;
  }
}

/** The listeners' counters in this process. */
export class ListenerStats {
  accepted = 0;
  /** Times the gateway stopped accepting at `--max-connections`. */
  limitReached = 0;
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
