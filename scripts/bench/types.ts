/**
 * Shapes shared by the bench modules: workload ids, the run plan, and one measurement (sample).
 *
 * @module
 */
import type { Contender } from "./contenders.ts";

export const WORKLOAD_IDS = ["small", "churn", "bulk", "idle", "etcd", "failover"] as const;
export type WorkloadId = (typeof WORKLOAD_IDS)[number];

/** Sizes and durations of one run; `--quick` swaps in the short plan. */
export interface Plan {
  quick: boolean;
  /** Rounds: every contender runs once per round, in table order (A B C D A B C D ...). */
  rounds: number;
  /** wrk run length per workload, seconds. */
  wrkSeconds: { small: number; etcd: number; churn: number };
  /**
   * The same wrk load, not measured, before each measured window: every contender is started afresh
   * for each round, and a runtime with a JIT (ours, the relay) runs slower in its first seconds than
   * a gateway that has run for a while (docs/performance.md, "Memory per connection").
   */
  wrkWarmSeconds: number;
  /** wrk connections (keep-alive ones for small/etcd; concurrent churners for churn). */
  wrkConnections: number;
  /** wrk threads: 1, so wrk takes one of the 2 cores and the proxy + backend share the other. */
  wrkThreads: number;
  /** iperf3 `-t`, seconds, per direction. */
  iperfSeconds: number;
  /** Idle connections held through the proxy, opened `idleBatch` at a time with `idlePauseMs` between. */
  idleConnections: number;
  idleBatch: number;
  idlePauseMs: number;
  /** Connections (one request each) in the blackhole case, started `blackholeSpacingMs` apart. */
  blackholeConnections: number;
  blackholeSpacingMs: number;
  /** Bound on one failover client attempt (connect + request + reply). */
  attemptTimeoutMs: number;
}

/** What one measurement returns (the runner adds workload, contender and round). */
export interface Measured {
  values: Record<string, number>;
  failures: Record<string, string>;
  details: Record<string, unknown>;
}

/** A workload with its backends running. */
export interface WorkloadEnv {
  /** The addresses the contenders proxy to (`host:port`); direct dials the first. */
  backends: string[];
  /** Starts `c`, puts the load through it, stops it. */
  measure(c: Contender, round: number): Promise<Measured>;
  /** Stops what only this workload uses (shared backends are stopped at the end of the run). */
  teardown?(): Promise<void>;
}

export interface Workload {
  id: WorkloadId;
  title: string;
  /** The exact commands, with `<port>` for the contender's listen port, for the report. */
  commands(plan: Plan): string[];
  /** Starts (or reuses) the backends. */
  setup(plan: Plan): Promise<WorkloadEnv>;
}

/** One contender's result for one workload in one round. */
export interface Sample {
  workload: WorkloadId;
  contender: string;
  round: number;
  /** Metric key (see report.ts METRICS) to value. */
  values: Record<string, number>;
  /** Metric key (or "*" for the whole workload) to why there is no number: crash, refusal, socket errors. */
  failures: Record<string, string>;
  /** Raw facts kept for the JSON (wrk socket errors, members killed, per-connection times, ...). */
  details: Record<string, unknown>;
}
