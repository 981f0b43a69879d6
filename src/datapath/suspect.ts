/**
 * Passive stall evidence from client traffic: a member that hangs (SIGSTOP, a stuck disk, a VM
 * pause) still completes TCP handshakes and acknowledges bytes, so only its silence tells. An etcd
 * client talking to a live member gets bytes back within milliseconds; a connection where the
 * client is waiting on the member (it sent a request: a chunk of ASK_BYTES or more, or a second
 * chunk, since the member last answered) and the member then stayed silent for
 * `--health-suspect-after`, makes its member a suspect, and health confirms or clears that at once
 * with checks (src/health/monitor.ts). A suspicion is never a verdict.
 *
 * Any member byte ends a wait, but a chunk smaller than ASK_BYTES may be the member's own PING
 * rather than an answer: grpc-go writes a WINDOW_UPDATE and a PING (30 bytes) on receiving a
 * request, before answering it, and the client acknowledges the PING at once. So the client's next
 * chunk after such a small one, before the member says more, is a wait whatever its size
 * (Conn.maybeAnswered). Without that, a member stopped between the two went unnoticed until the
 * client's next request (test/e2e/hung-member.test.ts, about 1 run in 20; docs/performance.md).
 *
 * Why not any chunk: a client's last bytes after a reply often expect no answer (an HTTP/2
 * WINDOW_UPDATE or a PING acknowledgement after a watch event or a big range: 13–26 bytes), so one
 * small unanswered chunk says nothing; a larger one, or a second, is a request. The bytes are only
 * counted, never parsed. Measured on real etcd traffic (`bun scripts/bench/stall-gaps.ts`,
 * docs/performance.md): so counted, a live member never stayed silent even 500 ms (leases kept
 * alive, puts every 50 ms, a watch with nothing to say, a 20 MB range, a leader moved or killed),
 * where counting from any first chunk found silences of 1.7–12 s.
 *
 * Only silence that is the member's counts: the gateway delivered the client's bytes (nothing of
 * them queued here), and nothing of the member's waits in the kernel or here for a slow client.
 *
 * Cost per connection: an addition and two comparisons per client chunk, one comparison per member
 * chunk; a clock read and a set entry only when a client starts waiting. The check runs every
 * TICK_MS while any connection waits so, never otherwise.
 *
 * @module
 */
import { receiveQueue } from "../libc.ts";
import type { Member } from "../members.ts";
import { fdOf, type Conn } from "./conn.ts";

/** How often waiting connections are looked at: a suspicion comes at most this long after the threshold. */
export const TICK_MS = 100;

export interface SuspectHost {
  /** `--health-suspect-after` in force; 0: off. */
  readonly suspectAfterMs: number;
  /** `member` stayed silent on `connections` connections, the longest for `silentMs`. */
  suspect(member: Member, silentMs: number, connections: number): void;
}

/** The clock, the timer and what the kernel holds, as Suspicions sees them; injectable for tests. */
export interface SuspectWorld {
  now(): number;
  /** Runs `fn` after `ms`; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
  /** Bytes the member sent that wait unread in the kernel for `conn`. */
  unread(conn: Conn): number;
}

const realWorld: SuspectWorld = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
  unread: (conn) => receiveQueue(fdOf(conn.up!.sock)),
};

export class Suspicions {
  /** Connections whose client is waiting on its member. */
  readonly #waiting = new Set<Conn>();
  #cancel: (() => void) | null = null;

  constructor(
    private readonly host: SuspectHost,
    private readonly world: SuspectWorld = realWorld,
  ) {}

  /** `conn`'s client started waiting on its member (src/datapath/conn.ts, Conn.unanswered). */
  asked(conn: Conn): void {
    if (this.host.suspectAfterMs <= 0) return;
    conn.askedAt = this.world.now();
    this.#waiting.add(conn);
    this.#cancel ??= this.world.after(TICK_MS, () => this.tick());
  }

  /** The member answered `conn` (or it closed). */
  answered(conn: Conn): void {
    this.#waiting.delete(conn);
  }

  /** Connections waiting now (tests). */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Stops the check (at shutdown). */
  stop(): void {
    this.#cancel?.();
    this.#cancel = null;
    this.#waiting.clear();
  }

  private tick(): void {
    this.#cancel = null;
    const limit = this.host.suspectAfterMs;
    const now = this.world.now();
    const silent = new Map<Member, { ms: number; connections: number }>();
    for (const conn of this.#waiting) {
      const up = conn.up;
      if (limit <= 0 || up === null || up.sock === null || up.closed || conn.client.closed) {
        this.#waiting.delete(conn);
        continue;
      }
      const ms = now - conn.askedAt;
      if (ms < limit) continue;
      this.#waiting.delete(conn); // looked at once per unanswered request; the member's next byte starts over
      if (up.out !== null || conn.client.out !== null || this.world.unread(conn) !== 0) continue;
      const s = silent.get(up.member);
      silent.set(up.member, { ms: Math.max(ms, s?.ms ?? 0), connections: (s?.connections ?? 0) + 1 });
    }
    for (const [member, s] of silent) this.host.suspect(member, s.ms, s.connections);
    if (this.#waiting.size > 0) this.#cancel = this.world.after(TICK_MS, () => this.tick());
  }
}
