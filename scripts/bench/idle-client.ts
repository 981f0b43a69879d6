/**
 * The client side of the idle workload, run as its own process so its descriptors do not count
 * against the bench's: `bun scripts/bench/idle-client.ts <port> <count> <batch> <pauseMs> [path] [end]`.
 *
 * Opens `count` connections to 127.0.0.1:port, `batch` at a time with `pauseMs` between batches;
 * on each sends one `GET <path>` (default `/`) and waits for the reply to end with `end` (default
 * the hello server's `hello\n`), then leaves it open. Prints
 * one JSON line `{"opened":n,"failed":n,"errors":[...]}` when done, then for every line read on
 * stdin prints `{"open":n}` (connections still open), until killed.
 *
 * @module
 */
import type { Socket } from "bun";

const [port, count, batch, pauseMs] = process.argv.slice(2, 6).map(Number);
const [path = "/", end = "hello\n"] = process.argv.slice(6);
if (!port || !count || !batch || pauseMs === undefined || Number.isNaN(pauseMs)) {
  process.stderr.write("usage: bun scripts/bench/idle-client.ts <port> <count> <batch> <pauseMs> [path] [end]\n");
  process.exit(2);
}

/** Bound on one connection's connect + request + reply. */
const EXCHANGE_TIMEOUT_MS = 10_000;
const REQUEST = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;

interface Conn {
  got: string;
  done: ((error: string | null) => void) | null;
  /** The exchange finished (either way); a late open is closed. */
  settled: boolean;
  open: boolean;
}

let open = 0;

/** One connection with one request/reply; resolves to null when it is held open, else why not. */
function exchange(): Promise<string | null> {
  return new Promise((resolve) => {
    const conn: Conn = { got: "", done: null, settled: false, open: false };
    const timer = setTimeout(() => finish("timeout"), EXCHANGE_TIMEOUT_MS);
    const finish = (error: string | null) => {
      if (conn.settled) return;
      conn.settled = true;
      clearTimeout(timer);
      resolve(error);
    };
    conn.done = finish;
    Bun.connect<Conn>({
      hostname: "127.0.0.1",
      port: port!,
      data: conn,
      socket: {
        open(s: Socket<Conn>) {
          if (s.data.settled) {
            s.end();
            return;
          }
          s.data.open = true;
          open++;
          s.write(REQUEST);
        },
        data(s, chunk) {
          s.data.got += chunk.toString();
          if (s.data.got.endsWith(end)) s.data.done?.(null);
        },
        close(s) {
          if (s.data.open) open--;
          s.data.open = false;
          s.data.done?.(`closed after ${JSON.stringify(s.data.got.slice(0, 40))}`);
        },
        error(s, e) {
          s.data.done?.(e.message);
        },
      },
    }).catch((e: unknown) => finish(e instanceof Error ? e.message : String(e)));
  });
}

let opened = 0;
let failed = 0;
const errors = new Map<string, number>();
for (let i = 0; i < Math.ceil(count / batch); i++) {
  const n = Math.min(batch, count - i * batch);
  const results = await Promise.all(Array.from({ length: n }, exchange));
  for (const r of results) {
    if (r === null) opened++;
    else {
      failed++;
      errors.set(r, (errors.get(r) ?? 0) + 1);
    }
  }
  await Bun.sleep(pauseMs);
}
process.stdout.write(`${JSON.stringify({ opened, failed, errors: [...errors].slice(0, 5).map(([e, k]) => `${e} ×${k}`) })}\n`);

for await (const _line of console) process.stdout.write(`${JSON.stringify({ open })}\n`);
