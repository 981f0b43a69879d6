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
 * chunk; a clock read and a few links set only when a client starts waiting. The check runs every
 * TICK_MS while any connection waits so, never otherwise, and looks only at connections whose wait
 * reached the threshold (they are in the order they started waiting).
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
  /**
   * Connections whose client is waiting on its member, linked through the connections themselves
   * (Conn.waitPrev, waitNext; Conn.waiting says it is on): oldest ask first, since a connection is
   * appended when it starts waiting. No allocation and no hashing per request.
   */
  #head: Conn | null = null;
  #tail: Conn | null = null;
  #count = 0;
  #cancel: (() => void) | null = null;

  constructor(
    private readonly host: SuspectHost,
    private readonly world: SuspectWorld = realWorld,
  ) {}

  /** `conn`'s client started waiting on its member (src/datapath/conn.ts, Conn.unanswered). */
  asked(conn: Conn): void {
    if (this.host.suspectAfterMs <= 0) return;
    conn.askedAt = this.world.now();
    this.unlink(conn); // kept in the order of askedAt
    conn.waiting = true;
    conn.waitPrev = this.#tail;
    conn.waitNext = null;
    if (this.#tail === null) this.#head = conn;
    else this.#tail.waitNext = conn;
    this.#tail = conn;
    this.#count++;
    this.#cancel ??= this.world.after(TICK_MS, () => this.tick());
  }

  /** The member answered `conn` (or it closed). */
  answered(conn: Conn): void {
    this.unlink(conn);
  }

  /** Connections waiting now (tests). */
  get waiting(): number {
    return this.#count;
  }

  /** Stops the check (at shutdown). */
  stop(): void {
    this.#cancel?.();
    this.#cancel = null;
    while (this.#head !== null) this.unlink(this.#head);
  }

  private unlink(conn: Conn): void {
    if (conn.waiting !== true) return;
    const { waitPrev: prev, waitNext: next } = conn;
    if (prev === null) this.#head = next;
    else prev.waitNext = next;
    if (next === null) this.#tail = prev;
    else next.waitPrev = prev;
    conn.waiting = false;
    conn.waitPrev = null;
    conn.waitNext = null;
    this.#count--;
  }

  private tick(): void {
    this.#cancel = null;
    const limit = this.host.suspectAfterMs;
    const now = this.world.now();
    let silent: Map<Member, { ms: number; connections: number }> | null = null;
    for (let conn = this.#head; conn !== null; ) {
      const next = conn.waitNext;
      const up = conn.up;
      if (limit <= 0 || up === null || up.sock === null || up.closed || conn.client.closed) this.unlink(conn);
      else {
        const ms = now - conn.askedAt;
        if (ms < limit) break; // the rest started waiting later
        this.unlink(conn); // looked at once per unanswered request; the member's next byte starts over
        if (up.out === null && conn.client.out === null && this.world.unread(conn) === 0) {
          const s = (silent ??= new Map()).get(up.member);
          silent.set(up.member, { ms: Math.max(ms, s?.ms ?? 0), connections: (s?.connections ?? 0) + 1 });
        }
      }
      conn = next;
    }
    if (silent !== null) for (const [member, s] of silent) this.host.suspect(member, s.ms, s.connections);
    if (this.#count > 0) this.#cancel = this.world.after(TICK_MS, () => this.tick());
  }
}
