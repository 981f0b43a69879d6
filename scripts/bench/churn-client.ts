/**
 * A client of our own for the per-connection cost table (scripts/bench/per-conn.ts): a fixed number
 * of short connections, each one `GET /` with `Connection: close` read to the server's close, at
 * most `concurrency` at a time. A fixed count (rather than wrk's fixed time) means the calls and the
 * CPU a proxy spent during a pass belong to exactly that many connections.
 *
 * @module
 */
import type { Socket } from "bun";

export interface ChurnResult {
  /** Connections that got the whole `hello\n` reply and closed cleanly. */
  ok: number;
  failed: number;
  /** Up to 5 distinct reasons, with their counts. */
  errors: string[];
  seconds: number;
}

/** Live count of finished connections, for readers that sample it during a pass (the allocation pass). */
export interface ChurnProgress {
  ok: number;
}

interface Exchange {
  got: string;
  finish: (why: string | null) => void;
}

const REPLY_END = "hello\n";

/** One connection: request, reply read to the close; resolves null when good, else why not. */
function exchange(port: number, request: string): Promise<string | null> {
  return new Promise((resolve) => {
    let settled = false;
    const state: Exchange = {
      got: "",
      finish: (why) => {
        if (settled) return;
        settled = true;
        resolve(why);
      },
    };
    Bun.connect<Exchange>({
      hostname: "127.0.0.1",
      port,
      data: state,
      socket: {
        open(s: Socket<Exchange>) {
          s.write(request);
        },
        data(s, chunk) {
          s.data.got += chunk.toString("latin1");
        },
        close(s, err) {
          const got = s.data.got;
          if (err !== undefined) s.data.finish(`${(err as NodeJS.ErrnoException).code ?? err.message} after ${got.length} bytes`);
          else s.data.finish(got.startsWith("HTTP/1.1 200") && got.endsWith(REPLY_END) ? null : `closed after ${JSON.stringify(got.slice(0, 30))}`);
        },
      },
    }).catch((e: unknown) => state.finish(e instanceof Error ? e.message : String(e)));
  });
}

/**
 * Runs `count` connections to 127.0.0.1:port, `concurrency` at a time. Stops starting new ones
 * at `timeoutMs` (those not started count as failed, "not started: timeout") and does not wait
 * longer than that for those in flight.
 */
export async function churn(port: number, count: number, concurrency: number, timeoutMs: number, progress: ChurnProgress = { ok: 0 }): Promise<ChurnResult> {
  const request = `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`;
  const t0 = performance.now();
  const deadline = t0 + timeoutMs;
  const errors = new Map<string, number>();
  let started = 0;
  let failed = 0;
  const fail = (why: string) => {
    failed++;
    errors.set(why, (errors.get(why) ?? 0) + 1);
  };
  const worker = async () => {
    while (started < count && performance.now() < deadline) {
      started++;
      const why = await exchange(port, request);
      if (why === null) progress.ok++;
      else fail(why);
    }
  };
  let timer: Timer | undefined;
  const late = new Promise<void>((r) => (timer = setTimeout(r, timeoutMs + 1000)));
  await Promise.race([Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker)), late]);
  clearTimeout(timer);
  const unfinished = count - progress.ok - failed;
  if (unfinished > 0) {
    failed += unfinished;
    errors.set("not finished: timeout", unfinished);
  }
  return { ok: progress.ok, failed, errors: [...errors].slice(0, 5).map(([e, n]) => `${e} ×${n}`), seconds: (performance.now() - t0) / 1000 };
}
