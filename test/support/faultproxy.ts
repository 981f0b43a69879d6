/**
 * A fault-injecting TCP proxy for tests, our own small Toxiproxy: it sits between two parties (the
 * gateway and a member, or a client and the gateway) on 127.0.0.1 and forwards bytes, FINs and
 * resets faithfully until told to misbehave. The fault can be switched at any time; it applies to
 * open connections at once (stream faults) and to connections accepted from then on (accept faults).
 *
 * Directions are named from the proxy's own position: `up` flows from whoever connects to the proxy
 * towards the target, `down` flows back. In front of a member, `up` is what the member reads and
 * `down` is what it writes; in front of the gateway, `down` is what the client reads.
 *
 * | fault                 | what the proxy does                                                                  |
 * | --------------------- | ------------------------------------------------------------------------------------ |
 * | `pass`                | forwards bytes, FIN (as a half-close) and RST both ways, with backpressure           |
 * | `blackhole`           | stops reading and writing both sockets, keeps them open; nothing crosses, not even a FIN or RST; lifting it delivers what was held, in order |
 * | `reset-after`         | lets `bytes` through in `direction` (counted from the connection's start), then, as soon as more arrive, resets both sockets (the receiver may get fewer: a reset drops what its kernel had not delivered) |
 * | `cut-after`           | lets exactly `bytes` through in `direction`, then sends a FIN that way and closes the other socket (bytes after the cut are dropped) |
 * | `slow`                | forwards at most `bytesPerTick` every `tickMs` in `direction` (or both), reading no faster than that |
 * | `fragment`            | forwards one byte per write, yielding to the event loop between writes              |
 * | `close-on-accept`     | closes each new connection as soon as it is accepted, without dialling the target    |
 * | `accept-and-silence`  | accepts new connections and never reads or writes them (they stay open)              |
 * | `refuse`              | stops listening (new connects are refused by the kernel); open connections carry on  |
 *
 * Written with `Bun.listen`/`Bun.connect` for exact control of every write (docs/bun.md:
 * `write()` short-writes without queueing, trap 1; `end()` is a full close, trap 2, so FINs go out
 * with `shutdown()`; half-close needs an `end` handler, trap 3; listener `data` is shared, trap 7).
 *
 * @example
 * const proxy = await startFaultProxy(member.port);
 * const gw = await startGatewayProcess([`--endpoints=127.0.0.1:${proxy.port}`, "--health-check=none"]);
 * proxy.set({ kind: "reset-after", bytes: 1 << 20, direction: "down" });
 *
 * @module
 */
import type { Socket, TCPSocketListener } from "bun";

/** `up`: from the side that connects to the proxy towards the target; `down`: back. */
export type Direction = "up" | "down";

export type Fault =
  | { kind: "pass" }
  | { kind: "blackhole" }
  | { kind: "reset-after"; bytes: number; direction: Direction }
  | { kind: "cut-after"; bytes: number; direction: Direction }
  | { kind: "slow"; bytesPerTick: number; /** @default 10 */ tickMs?: number; direction: Direction | "both" }
  | { kind: "fragment"; /** @default "both" */ direction?: Direction | "both" }
  | { kind: "close-on-accept" }
  | { kind: "accept-and-silence" }
  | { kind: "refuse" };

export interface FaultProxyStats {
  /** Connections accepted. */
  accepted: number;
  /** Connections with at least one socket still open. */
  open: number;
  /** Bytes written towards the target, and back. */
  up: number;
  down: number;
  /** Connections to the target that failed (the accepted socket was then reset). */
  targetFailures: number;
}

export interface FaultProxy {
  port: number;
  readonly fault: Fault;
  readonly stats: FaultProxyStats;
  /** Switches the fault, for open connections and new ones. */
  set(fault: Fault): void;
  /** Stops listening and resets every connection. Safe to call twice. */
  close(): void;
}

/** Bytes one direction keeps queued before it stops reading its source. */
const HIGH_WATER = 64 * 1024;

/** One socket of a proxied pair; `queue` holds bytes waiting to be written to it. */
interface Side {
  name: "front" | "back";
  sock: Socket<Side> | null;
  pair: Pair;
  queue: Uint8Array[];
  queued: number;
  /** Bytes written to this socket so far (the count a fault's `bytes` refers to). */
  written: number;
  /** The other side sent FIN: send ours once the queue is empty. */
  finPending: boolean;
  /** The other side was reset: reset this one (held while blackholed). */
  resetPending: boolean;
  /** This socket's peer sent FIN. */
  readEnded: boolean;
  /** We sent FIN on this socket. */
  wroteFin: boolean;
  closed: boolean;
  /** This side's socket may not be read (its queue towards the other side is full, or blackhole). */
  paused: boolean;
  /** Cancels the paced (slow, fragment) write that is scheduled, or null. */
  pacer: (() => void) | null;
  budget: number;
  /** After a cut, what this socket still sends is read and dropped. */
  discard: boolean;
}

interface Pair {
  front: Side;
  back: Side;
}

const running = new Set<FaultProxy>();

/**
 * Starts a fault proxy on a free 127.0.0.1 port forwarding to `targetHost:targetPort`.
 *
 * @default opts.fault `{ kind: "pass" }`, opts.targetHost "127.0.0.1"
 */
export function startFaultProxy(targetPort: number, opts: { fault?: Fault; targetHost?: string } = {}): FaultProxy {
  const targetHost = opts.targetHost ?? "127.0.0.1";
  let fault: Fault = opts.fault ?? { kind: "pass" };
  const pairs = new Set<Pair>();
  const stats: FaultProxyStats = { accepted: 0, open: 0, up: 0, down: 0, targetFailures: 0 };
  let listener: TCPSocketListener<Side> | null = null;
  let boundPort = 0;
  let closedForGood = false;

  const newSide = (name: Side["name"], pair: Pair): Side => ({
    name, sock: null, pair, queue: [], queued: 0, written: 0, finPending: false, resetPending: false,
    readEnded: false, wroteFin: false, closed: false, paused: false, pacer: null, budget: 0, discard: false,
  });
  const other = (s: Side) => (s.name === "front" ? s.pair.back : s.pair.front);
  /** The direction of bytes written to `dst`. */
  const dirOf = (dst: Side): Direction => (dst.name === "back" ? "up" : "down");
  const applies = (d: Direction | "both" | undefined, dst: Side) => d === undefined || d === "both" || d === dirOf(dst);

  /** Both sockets are gone (the back one is marked closed too when it was never dialled or failed). */
  const finished = (pair: Pair) => {
    if (pair.front.closed && pair.back.closed && pairs.delete(pair)) stats.open--;
  };

  /**
   * Resets `s` (RST). It is marked closed first: its close handler must not treat our own
   * terminate() as the peer's clean close and forward a FIN the other way.
   */
  const reset = (s: Side) => {
    clearPacer(s);
    s.queue = [];
    s.queued = 0;
    if (s.closed) return;
    s.closed = true;
    s.sock?.terminate();
    finished(s.pair);
  };
  const resetBoth = (pair: Pair) => {
    for (const s of [pair.front, pair.back]) s.closed ||= s.sock === null; // never connected: nothing to reset
    reset(pair.front);
    reset(pair.back);
  };

  const clearPacer = (s: Side) => {
    s.pacer?.();
    s.pacer = null;
  };

  /** Stops or restarts reading `src`, as the queue it feeds and the fault allow. */
  const regulate = (src: Side) => {
    if (src.sock === null || src.closed) return;
    const highWater = fault.kind === "slow" ? Math.max(HIGH_WATER, 2 * fault.bytesPerTick) : HIGH_WATER;
    const hold = fault.kind === "blackhole" || other(src).queued >= highWater;
    if (hold && !src.paused) src.sock.pause();
    else if (!hold && src.paused) src.sock.resume();
    src.paused = hold;
  };

  /** Both directions of `s` are done: release its socket. */
  const closeIfDone = (s: Side) => {
    if (s.readEnded && s.wroteFin && !s.closed) s.sock?.end();
  };

  /** Writes at most `limit` bytes of `dst.queue`; returns how many the kernel took, or -1 when closing. */
  const writeSome = (dst: Side, limit: number): number => {
    let total = 0;
    while (dst.queue.length > 0 && total < limit) {
      const head = dst.queue[0]!;
      const piece = head.byteLength > limit - total ? head.subarray(0, limit - total) : head;
      const n = dst.sock!.write(piece);
      if (n < 0) return -1;
      total += n;
      if (n < head.byteLength) dst.queue[0] = head.subarray(n);
      else dst.queue.shift();
      if (n < piece.byteLength) break; // the kernel is full: drain calls pump again
    }
    dst.queued -= total;
    dst.written += total;
    if (dirOf(dst) === "up") stats.up += total;
    else stats.down += total;
    return total;
  };

  /** Moves queued bytes to `dst` as the fault says, then forwards a pending FIN or reset. */
  const pump = (dst: Side) => {
    if (dst.sock === null || dst.closed) return;
    if (fault.kind === "blackhole") return;
    if (dst.resetPending) {
      reset(dst);
      return;
    }
    const f = fault;
    if ((f.kind === "slow" || f.kind === "fragment") && applies(f.direction, dst)) {
      const perTick = f.kind === "slow" ? f.bytesPerTick : 1;
      if (dst.budget > 0 && dst.queued > 0) {
        const n = writeSome(dst, dst.budget);
        if (n < 0) return;
        dst.budget -= n;
      }
      if (dst.pacer === null && dst.queued > 0) {
        const next = () => {
          dst.pacer = null;
          dst.budget = perTick;
          pump(dst);
        };
        // Fragments go one per event-loop turn, so each byte tends to reach the reader on its own.
        if (f.kind === "slow") {
          const t = setTimeout(next, f.tickMs ?? 10);
          dst.pacer = () => clearTimeout(t);
        } else {
          const t = setImmediate(next);
          dst.pacer = () => clearImmediate(t);
        }
      }
    } else {
      clearPacer(dst);
      if (writeSome(dst, Infinity) < 0) return;
    }
    regulate(other(dst));
    if (dst.queued === 0 && dst.finPending && !dst.wroteFin) {
      dst.finPending = false;
      dst.wroteFin = true;
      dst.sock.shutdown();
      closeIfDone(dst);
    }
  };

  /** Takes `chunk` read from `src` into the queue towards the other side, applying counting faults. */
  const take = (src: Side, chunk: Uint8Array) => {
    const dst = other(src);
    if (src.discard || dst.closed || dst.wroteFin || dst.finPending) return;
    const f = fault;
    if ((f.kind === "reset-after" || f.kind === "cut-after") && applies(f.direction, dst)) {
      const room = f.bytes - (dst.written + dst.queued);
      if (room < chunk.byteLength) {
        if (room > 0) {
          dst.queue.push(chunk.subarray(0, room));
          dst.queued += room;
        }
        if (f.kind === "reset-after") {
          // The bytes before the limit go out first, then both sockets are reset.
          pump(dst);
          resetBoth(src.pair);
          return;
        }
        // Cut: the last bytes, then FIN towards dst; the source is closed and drained of whatever it still sends.
        src.discard = true;
        dst.finPending = true;
        pump(dst);
        if (!src.closed) src.sock?.end();
        return;
      }
    }
    dst.queue.push(chunk);
    dst.queued += chunk.byteLength;
    pump(dst);
    regulate(src);
  };

  const handlers = {
    data(s: Socket<Side>, chunk: Uint8Array) {
      take(s.data, chunk);
    },
    drain(s: Socket<Side>) {
      pump(s.data);
    },
    end(s: Socket<Side>) {
      const src = s.data;
      src.readEnded = true;
      const dst = other(src);
      if (!src.discard && !dst.closed && !dst.wroteFin) {
        dst.finPending = true;
        pump(dst);
      }
      closeIfDone(src);
    },
    close(s: Socket<Side>, err?: Error) {
      const src = s.data;
      if (src.closed) return;
      src.closed = true;
      clearPacer(src);
      const dst = other(src);
      if (!src.discard && !dst.closed) {
        if (err !== undefined) {
          dst.resetPending = true; // a reset on one side becomes a reset on the other
        } else if (!dst.wroteFin) dst.finPending = true;
        pump(dst);
        if (dst.wroteFin) closeIfDone(dst);
      }
      finished(src.pair);
    },
  };

  const dialTarget = (pair: Pair) => {
    const back = pair.back;
    Bun.connect<Side>({
      hostname: targetHost,
      port: targetPort,
      allowHalfOpen: true,
      data: back,
      socket: {
        ...handlers,
        open(s) {
          back.sock = s;
          if (back.closed) {
            s.terminate(); // the pair was reset while we dialled
            return;
          }
          s.setNoDelay(true);
          // Early bytes, and the front's FIN or reset if it went while we dialled.
          pump(back);
          regulate(pair.front);
        },
      },
    }).catch(() => {
      stats.targetFailures++;
      back.closed = true;
      reset(pair.front);
      finished(pair);
    });
  };

  const listen = () =>
    Bun.listen<Side>({
      hostname: "127.0.0.1",
      // Listening again after `refuse` takes the same port (SO_REUSEADDR is set by Bun).
      port: boundPort,
      allowHalfOpen: true,
      socket: {
        ...handlers,
        open(s) {
          stats.accepted++;
          const pair = { front: null, back: null } as unknown as Pair;
          pair.front = newSide("front", pair);
          pair.back = newSide("back", pair);
          // Trap 7: the listener's data is shared by every socket; each gets its own.
          s.data = pair.front;
          pair.front.sock = s;
          s.setNoDelay(true);
          pairs.add(pair);
          stats.open++;
          if (fault.kind === "close-on-accept") {
            pair.back.closed = true;
            s.end();
            return;
          }
          if (fault.kind === "accept-and-silence") {
            pair.back.closed = true;
            pair.front.paused = true;
            s.pause();
            return;
          }
          regulate(pair.front);
          dialTarget(pair);
        },
      },
    });

  listener = listen();
  const port = (boundPort = listener.port);
  const proxy: FaultProxy = {
    port,
    get fault() {
      return fault;
    },
    stats,
    set(next) {
      const wasRefusing = fault.kind === "refuse";
      fault = next;
      if (next.kind === "refuse" && !wasRefusing) listener?.stop(false);
      if (next.kind !== "refuse" && wasRefusing && !closedForGood) listener = listen();
      for (const pair of pairs) {
        if (pair.back.closed && pair.back.sock === null) continue; // accept faults: nothing to forward
        for (const s of [pair.front, pair.back]) {
          s.budget = 0;
          clearPacer(s);
        }
        pump(pair.front);
        pump(pair.back);
        regulate(pair.front);
        regulate(pair.back);
      }
    },
    close() {
      if (closedForGood) return;
      closedForGood = true;
      running.delete(proxy);
      if (fault.kind !== "refuse") listener?.stop(false);
      for (const pair of pairs) resetBoth(pair);
    },
  };
  running.add(proxy);
  return proxy;
}

/** Closes every fault proxy a test started and did not close (call in afterEach/afterAll). */
export function closeAllFaultProxies(): void {
  for (const p of [...running]) p.close();
}
