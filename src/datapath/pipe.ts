/**
 * The pipe: moves bytes between the two sockets of a proxied connection, unchanged, with
 * backpressure, half-close and reset. It knows nothing of members, dials or policies: each socket
 * (a leg) reports what happened to its owner, and the owner decides.
 *
 * A leg's `out` holds the bytes read from its peer that the kernel did not take yet; while it is
 * non-empty the peer is paused, so each direction buffers at most about one read (≈512 KiB)
 * however slow the reader is. The Bun behaviour this relies on is in docs/bun.md, traps 1–3.
 *
 * @module
 */
import type { Socket, SocketHandler } from "bun";

/** What a leg reports to; the pipe calls these, the owner decides what they mean. */
export interface LegOwner {
  /** The leg's first bytes arrived (once per leg, before they are counted or forwarded). */
  firstData(leg: Leg): void;
  /** `bytes` arrived on a paired leg and are being forwarded to its peer. */
  received(leg: Leg, bytes: number): void;
  /** The kernel took more of the bytes queued for the leg (its reader is reading). */
  drained(leg: Leg): void;
  /** Bytes arrived before the leg has a peer: the owner keeps them; true when the pipe must pause the leg. */
  unpaired(leg: Leg, chunk: Uint8Array): boolean;
  /** The leg's remote end sent FIN (`leg.readDone` is set); the pipe forwards it afterwards. */
  ended(leg: Leg): void;
  /** The leg's socket is gone (`err` on a reset); the owner calls `passClose` when the peer should follow. */
  gone(leg: Leg, err: Error | undefined): void;
}

/**
 * A leg's yes/no state, one bit each of `Leg.bits` (one number instead of a field each: every
 * field is 8 bytes on every open connection, docs/performance.md "Memory per connection"). The
 * accessors below keep the code reading `leg.closed`; subclasses take bits from LEG_BITS_USED on.
 */
const FIN_PENDING = 1;
const READ_DONE = 2;
const WRITE_DONE = 4;
const CLOSED = 8;
const GOT_DATA = 16;
const RESETTING = 32;
export const LEG_BITS_USED = 64;

/** Defines boolean accessors on `proto`, each reading and writing one bit of `bits`. */
export function bitFlags(proto: object, flags: Record<string, number>): void {
  for (const [name, bit] of Object.entries(flags)) {
    Object.defineProperty(proto, name, {
      get(this: { bits: number }) {
        return (this.bits & bit) !== 0;
      },
      set(this: { bits: number }, on: boolean) {
        this.bits = on ? this.bits | bit : this.bits & ~bit;
      },
    });
  }
}

/** One socket of a proxied pair, as `socket.data`. */
export class Leg {
  sock: Socket<Leg> | null = null;
  peer: Leg | null = null;
  /** Bytes from the peer waiting to be written to this leg; the peer is paused while this is set. */
  out: Uint8Array[] | null = null;
  /** The flags declared below (and a subclass's own), one bit each. */
  bits = 0;
  readonly owner: LegOwner;
  /** The peer sent FIN: forward it with shutdown() once `out` is flushed. */
  declare finPending: boolean;
  /** This socket's remote end sent FIN. */
  declare readDone: boolean;
  /** We forwarded a FIN on this socket. */
  declare writeDone: boolean;
  declare closed: boolean;
  /** Bytes have arrived on this socket. */
  declare gotData: boolean;
  /** We are resetting this leg's connection: its close must reset the peer too, never send it a FIN. */
  declare resetting: boolean;
  /** `owner` null: the leg reports to itself (a connection is its own client leg, src/datapath/conn.ts). */
  constructor(owner: LegOwner | null) {
    this.owner = owner ?? (this as unknown as LegOwner);
  }
}
bitFlags(Leg.prototype, { finPending: FIN_PENDING, readDone: READ_DONE, writeDone: WRITE_DONE, closed: CLOSED, gotData: GOT_DATA, resetting: RESETTING });

/** Resets both legs of a pair (either may be unpaired): each peer sees an RST, never a FIN. */
export function resetPair(a: Leg, b: Leg | null): void {
  a.resetting = true;
  if (b !== null) b.resetting = true;
  b?.sock?.terminate();
  a.sock?.terminate();
}

/** Pairs two legs: bytes read on one are written to the other. */
export function pair(a: Leg, b: Leg): void {
  a.peer = b;
  b.peer = a;
}

/** Writes as much of `leg.out` as the kernel takes; once empty, forwards a pending FIN or resumes the peer. */
export function flush(leg: Leg): void {
  const out = leg.out;
  const sock = leg.sock;
  if (out === null || sock === null || leg.closed) return;
  while (out.length > 0) {
    const buf = out[0]!;
    // docs/bun.md, trap 1: write() is unbuffered and may take only part of buf.
    const n = sock.write(buf);
    if (n < 0) return; // closing: the close handler cleans up
    if (n < buf.byteLength) {
      out[0] = buf.subarray(n);
      return; // drain calls us again
    }
    out.shift();
  }
  leg.out = null;
  if (leg.finPending) shutdownWrite(leg);
  else leg.peer?.sock?.resume();
}

/** Sends `chunk` to `leg`, queueing what the kernel does not take; false when the source must pause. */
export function send(leg: Leg, chunk: Uint8Array): boolean {
  if (leg.out !== null) {
    leg.out.push(chunk);
    return false;
  }
  const n = leg.sock!.write(chunk);
  if (n === chunk.byteLength || n < 0) return true;
  leg.out = [n > 0 ? chunk.subarray(n) : chunk];
  return false;
}

/**
 * Forwards a FIN. docs/bun.md, trap 2: end() is a full close(2), so while the other direction still
 * flows the FIN goes out with shutdown() (SHUT_WR); only when that direction is finished too is
 * end() used.
 */
function shutdownWrite(leg: Leg): void {
  leg.finPending = false;
  if (leg.writeDone || leg.closed) return;
  leg.writeDone = true;
  // Its remote end already sent FIN and our queue is empty: close(2) sends the FIN after what the
  // kernel still holds and, with nothing left to read, cannot reset; one syscall instead of two.
  if (leg.readDone) leg.sock!.end();
  else leg.sock!.shutdown();
}

/** Forwards a FIN to `leg` once its queue is written. */
export function forwardFin(leg: Leg): void {
  if (leg.closed) return;
  if (leg.out !== null) leg.finPending = true;
  else shutdownWrite(leg);
}

/** Both directions of `leg` have ended: release the socket (nothing unread, nothing unsent here). */
function closeIfDone(leg: Leg): void {
  if (leg.readDone && leg.writeDone && !leg.closed) leg.sock!.end();
}

/** `leg` is gone: a reset becomes a reset on its peer, a clean close a FIN after the queued bytes. */
export function passClose(leg: Leg, err: Error | undefined): void {
  const peer = leg.peer;
  if (peer === null || peer.closed || peer.sock === null) return;
  if (leg.out !== null) {
    // The peer was paused until these bytes left; they never will. Resume it, or its own FIN
    // would never be seen (a paused socket reports a FIN only once resumed, docs/bun.md).
    leg.out = null;
    peer.sock.resume();
  }
  // terminate() reports a clean close on our own side (docs/bun.md, "terminate()"): `resetting` says it was a reset.
  if (err !== undefined || leg.resetting) peer.sock.terminate();
  else if (!peer.writeDone) forwardFin(peer);
  else closeIfDone(peer);
}

/**
 * The socket handlers both legs share (listeners and Bun.connect add their own `open`). Both sides
 * must be created with `allowHalfOpen: true`: with this `end` handler, that keeps Bun from closing
 * a socket on FIN (docs/bun.md, trap 3).
 */
export const pipeHandlers: Omit<SocketHandler<Leg>, "open"> = {
  data(s, chunk) {
    const leg = s.data;
    if (!leg.gotData) {
      leg.gotData = true;
      leg.owner.firstData(leg);
    }
    const peer = leg.peer;
    if (peer === null) {
      if (leg.owner.unpaired(leg, chunk)) s.pause();
      return;
    }
    if (peer.closed) {
      // The other side is gone; the kernel would answer these bytes with a reset, and so do we.
      s.terminate();
      return;
    }
    leg.owner.received(leg, chunk.byteLength);
    if (!send(peer, chunk)) s.pause();
  },
  drain(s) {
    s.data.owner.drained(s.data);
    flush(s.data);
  },
  end(s) {
    const leg = s.data;
    leg.readDone = true;
    leg.owner.ended(leg);
    if (leg.peer !== null) forwardFin(leg.peer);
    closeIfDone(leg);
  },
  close(s, err) {
    const leg = s.data;
    if (leg.closed) return;
    leg.closed = true;
    leg.owner.gone(leg, err);
  },
};
