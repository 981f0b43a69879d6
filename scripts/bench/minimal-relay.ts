/**
 * The smallest correct TCP relay on Bun.listen / Bun.connect: the ceiling of this runtime, the
 * `bun-relay` row of the benchmarks and of the per-connection cost table (scripts/bench/per-conn.ts).
 *
 *   bun scripts/bench/minimal-relay.ts <listen-port> <upstream-host:port>
 *
 * It listens on 127.0.0.1 and relays every client to the one upstream. No features: no health
 * checks, metrics, timeouts, limits, logging, socket options (no setNoDelay, no setKeepAlive), and
 * no pause of a new client while its upstream connects (its first read waits in a queue; a second
 * one pauses it). Bun's pause() and resume() each cost an epoll_ctl, so they are called only when
 * needed. But it is correct where Bun needs care
 * (docs/bun.md): a write queue per socket with pause / drain / resume (trap 1), a FIN forwarded
 * with shutdown() and a socket closed with one end() only when both directions are done (trap 2),
 * allowHalfOpen with an end handler on both sides (trap 3), and its own state object per accepted
 * socket (trap 7). A reset on one side is passed on as a reset (terminate()).
 *
 * Whatever our gateway spends per connection beyond this is ours to remove; what this spends
 * beyond HAProxy is Bun's.
 *
 * @module
 */
import type { Socket, SocketHandler } from "bun";

/**
 * One socket of a relayed pair. `backlog`: bytes for this socket that its kernel buffer did not
 * take yet (the other side is paused meanwhile). Flags: `finWanted`, send FIN once the backlog is
 * written (or once connected); `eof`, the remote end sent FIN; `finSent`, we did; `gone`, closed;
 * `paused`, we paused reading it (Bun's pause() and resume() each cost an epoll_ctl, so only when needed).
 */
class End {
  finWanted = false;
  eof = false;
  finSent = false;
  gone = false;
  paused = false;
  constructor(
    public sock: Socket<End> | null,
    public other: End | null,
    public backlog: Uint8Array[] | null = null,
  ) {}
}

function pause(e: End): void {
  e.paused = true;
  e.sock!.pause();
}

function resume(e: End | null): void {
  if (e === null || !e.paused || e.gone) return;
  e.paused = false;
  e.sock!.resume();
}

/** FIN on `e`: shutdown() while its other direction still flows, else one close(2) (docs/bun.md, trap 2). */
function fin(e: End): void {
  if (e.gone || e.finSent) return;
  if (e.sock === null || e.backlog !== null) {
    e.finWanted = true;
    return;
  }
  e.finSent = true;
  if (e.eof) e.sock.end();
  else e.sock.shutdown();
}

/** Writes `e.backlog` as far as the kernel takes it; once empty, the FIN waiting or a resume of the other side. */
function writeBacklog(e: End): void {
  const q = e.backlog;
  if (q === null || e.sock === null || e.gone) return;
  while (q.length > 0) {
    const head = q[0]!;
    const took = e.sock.write(head);
    if (took < 0) return;
    if (took < head.byteLength) {
      q[0] = head.subarray(took);
      return;
    }
    q.shift();
  }
  e.backlog = null;
  if (e.finWanted) fin(e);
  else resume(e.other);
}

const handlers: Omit<SocketHandler<End>, "open"> = {
  data(s, chunk) {
    const to = s.data.other!;
    if (to.gone) {
      s.terminate();
      return;
    }
    if (to.sock === null) {
      // Not connected yet: keep the first read without pausing (the usual case: the request comes
      // with the accept), pause on a second one, so at most about one read waits here.
      if (to.backlog === null) to.backlog = [chunk];
      else {
        to.backlog.push(chunk);
        pause(s.data);
      }
      return;
    }
    if (to.backlog !== null) {
      to.backlog.push(chunk);
      pause(s.data);
      return;
    }
    const took = to.sock.write(chunk);
    if (took >= 0 && took < chunk.byteLength) {
      to.backlog = [chunk.subarray(took)];
      pause(s.data);
    }
  },
  drain(s) {
    writeBacklog(s.data);
  },
  end(s) {
    s.data.eof = true;
    fin(s.data.other!);
  },
  close(s, err) {
    const e = s.data;
    e.gone = true;
    const to = e.other;
    if (to === null || to.gone || to.sock === null) return;
    if (e.backlog !== null) {
      e.backlog = null; // never to be written: let the paused side read its FIN
      resume(to);
    }
    // A FIN after our own shutdown() arrives here as a clean close (docs/bun.md, trap 3).
    if (err !== undefined) to.sock.terminate();
    else if (!to.finSent) fin(to);
    else if (to.eof) to.sock.end();
  },
};

const [portText, upstream] = process.argv.slice(2);
const port = Number(portText);
const colon = upstream?.lastIndexOf(":") ?? -1;
if (!Number.isInteger(port) || port < 0 || upstream === undefined || colon < 0) {
  process.stderr.write("usage: bun scripts/bench/minimal-relay.ts <listen-port> <upstream-host:port>\n");
  process.exit(2);
}
const upHost = upstream.slice(0, colon).replace(/^\[|\]$/g, "");
const upPort = Number(upstream.slice(colon + 1));

const upHandlers: SocketHandler<End> = {
  ...handlers,
  open(s) {
    const up = s.data;
    up.sock = s;
    if (up.other!.gone) {
      s.terminate();
      return;
    }
    // The client was paused only if it sent two reads before this (they wait in up.backlog).
    if (up.backlog !== null) writeBacklog(up);
    else if (up.finWanted) fin(up);
  },
};

Bun.listen<End>({
  hostname: "127.0.0.1",
  port,
  allowHalfOpen: true,
  socket: {
    ...handlers,
    open(s) {
      // docs/bun.md, trap 7: the listener's data object is shared; each socket gets its own.
      const client = new End(s, null);
      const up = new End(null, client);
      client.other = up;
      s.data = client;
      Bun.connect<End>({ hostname: upHost, port: upPort, allowHalfOpen: true, data: up, socket: upHandlers }).catch(() => {
        up.gone = true;
        if (!client.gone) client.sock?.terminate();
      });
    },
  },
});
