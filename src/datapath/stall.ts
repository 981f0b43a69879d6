/**
 * Peers that stopped acknowledging: a connection whose peer on either leg has acknowledged nothing
 * for the silence limit (src/libc.ts, silenceLimitMs: `--keepalive-time` + 10 s) while the kernel
 * waits on it (a retransmission or a window probe unanswered) is reset. It replaces TCP_USER_TIMEOUT,
 * which since Linux 5.5 also aborts a live peer that merely keeps its receive window closed
 * (docs/bun.md, "TCP_USER_TIMEOUT cuts slow readers"); as RFC 1122 4.2.2.17 asks and Linux does by
 * default, a peer that answers window probes is kept however long it does not read.
 *
 * An idle leg needs nothing here: TCP keepalive ends it when its peer goes silent (Linux sends no
 * keepalive probes while bytes wait, which is what this covers). Run by the sweep's timer every
 * STALL_SWEEP_MS; a connection is looked at only once it has lived KEEPALIVE_AFTER_MS, and then
 * only while bytes were moved since both legs were last found with nothing waiting, so an idle watch
 * costs no system call. A leg is cut only when it is found silent at two checks in a row: between
 * probes a peer that answers them reads 0 (src/libc.ts, unansweredFor), and a probe in flight at
 * one check is answered by the next.
 *
 * @module
 */
import { sendQueue, unansweredFor } from "../libc.ts";
import { fdOf, type Conn } from "./conn.ts";
import type { Leg } from "./pipe.ts";
import { KEEPALIVE_AFTER_MS } from "./sweep.ts";

/**
 * What one leg's check found: nothing waits to be sent or acknowledged on it; bytes wait and its
 * peer answers (or has not been silent for long); its peer was found silent past the limit at this
 * check and the one before.
 */
const SETTLED = 0;
const WAITING = 1;
const SILENT = 2;
type Found = typeof SETTLED | typeof WAITING | typeof SILENT;

export class Stalls {
  /** Legs found silent past the limit at the last check. */
  #suspects = new Set<Leg>();

  /**
   * Checks the connections in `conns`; `cut` is called for each whose peer went silent (`member`
   * true for the member leg). Returns whether any connection is open (else the sweep can stop).
   */
  sweep(conns: Iterable<Conn> & { readonly size: number }, limitMs: number, cut: (conn: Conn, member: boolean) => void): boolean {
    const now = performance.now();
    const suspects = new Set<Leg>();
    for (const conn of conns) {
      const up = conn.up;
      if (up === null || up.sock === null || up.closed || now - up.connectedAt < KEEPALIVE_AFTER_MS) continue;
      // Every byte written to a leg was counted when it was read from the other: unchanged counts
      // and both legs settled at the last check mean nothing can be waiting now.
      const moved = conn.bytesFromClient + conn.bytesFromMember;
      if (moved === conn.settledAt) continue;
      const member = this.check(up, limitMs, suspects);
      const client = this.check(conn.client, limitMs, suspects);
      if (member === SILENT || client === SILENT) cut(conn, member === SILENT);
      else if (member === SETTLED && client === SETTLED) conn.settledAt = moved;
    }
    this.#suspects = suspects;
    return conns.size > 0;
  }

  private check(leg: Leg, limitMs: number, suspects: Set<Leg>): Found {
    if (leg.closed || leg.sock === null) return SETTLED;
    const fd = fdOf(leg.sock);
    const queued = sendQueue(fd);
    if (queued <= 0) return leg.out === null ? SETTLED : WAITING;
    if (unansweredFor(fd) < limitMs) return WAITING;
    if (this.#suspects.has(leg)) return SILENT;
    suspects.add(leg);
    return WAITING;
  }
}
