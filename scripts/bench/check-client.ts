/**
 * Liveness checks as a fleet of gateways sends them to one member, from one process:
 * `bun scripts/bench/check-client.ts <port> <gateways> <everyMs> <warmSeconds> <seconds> <kept|new> <fullEvery> [ca.pem cert.pem key.pem]`.
 *
 * `kept`: one connection per gateway, opened first (paced), then each sends a check every
 * `everyMs` (each starting at a random phase) on its connection and reads the reply: `GET /version`
 * (liveness), and every `fullEvery`-th time `POST /v3/maintenance/status` (the full check) instead,
 * as the gateway's default schedule does (2 s and 10 s: `fullEvery` 5).
 * `new`: the same request rate (`gateways` per `everyMs`), each request on a new connection that
 * the client closes after the reply, as a check that holds no connection between checks would.
 *
 * With a CA file, over TLS (the member's certificate verified against it), presenting the client
 * certificate and key given after it. Prints `{"ready":true}`
 * once the kept connections are open (at once for `new`), then after `warmSeconds` of checks
 * (not counted) and `seconds` more one line `{"done":n,"failed":n,"errors":[...]}` and exits.
 *
 * @module
 */
import type { Socket } from "bun";

const [port, gateways, everyMs, warmSeconds, seconds] = process.argv.slice(2, 7).map(Number);
const [mode, fullEveryArg, caFile, certFile, keyFile] = process.argv.slice(7);
/** Every how many checks one is the full check (`POST /v3/maintenance/status`); 0: never. */
const fullEvery = Number(fullEveryArg ?? 0);
if (!port || !gateways || !everyMs || warmSeconds === undefined || !seconds || (mode !== "kept" && mode !== "new")) {
  process.stderr.write("usage: bun scripts/bench/check-client.ts <port> <gateways> <everyMs> <warmSeconds> <seconds> <kept|new> <fullEvery> [ca.pem cert.pem key.pem]\n");
  process.exit(2);
}

// No `Connection: close` for a one-check connection either: the client closes it after the reply,
// as a check client without keep-alive does (and Go's server over TLS closed such a connection
// without a reply here).
const LIVENESS = `GET /version HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
const FULL = `POST /v3/maintenance/status HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`;

/** Whether `got` holds a whole HTTP/1.1 reply (Content-Length or chunked). */
function replyDone(got: string): boolean {
  const head = got.indexOf("\r\n\r\n");
  if (head < 0) return false;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(got.slice(0, head));
  if (length) return Buffer.byteLength(got.slice(head + 4)) >= Number(length[1]);
  return got.endsWith("\r\n0\r\n\r\n");
}

let done = 0;
let failed = 0;
const errors = new Map<string, number>();
const fail = (why: string) => {
  failed++;
  errors.set(why, (errors.get(why) ?? 0) + 1);
};

interface Check {
  got: string;
  /** Checks sent on this connection. */
  sent: number;
  waiting: boolean;
  /** What write() did not take yet (before a TLS handshake completes it takes nothing). */
  unsent: string;
}

/** Opens one connection; resolves with it once open (or null). Replies are counted as they complete. */
function open(close: boolean): Promise<Socket<Check> | null> {
  return Bun.connect<Check>({
    hostname: "127.0.0.1",
    port: port!,
    ...(caFile ? { tls: { ca: Bun.file(caFile), ...(certFile && keyFile ? { cert: Bun.file(certFile), key: Bun.file(keyFile) } : {}) } } : {}),
    data: { got: "", sent: Math.floor(Math.random() * Math.max(1, fullEvery)), waiting: false, unsent: "" },
    socket: {
      drain(s) {
        if (s.data.unsent) s.data.unsent = s.data.unsent.slice(s.write(s.data.unsent));
      },
      data(s, chunk) {
        s.data.got += chunk.toString();
        if (s.data.waiting && replyDone(s.data.got)) {
          s.data.waiting = false;
          s.data.got = "";
          done++;
          if (close) s.end();
        }
      },
      close(s) {
        if (s.data.waiting) fail("closed before the reply");
      },
      error(s, e) {
        if (s.data.waiting) fail(e.message);
        s.data.waiting = false;
      },
    },
  }).catch((e: unknown) => {
    fail(e instanceof Error ? e.message : String(e));
    return null;
  });
}

function send(s: Socket<Check>, close: boolean): void {
  if (s.data.waiting) return fail("previous check still unanswered");
  s.data.waiting = true;
  const request = fullEvery > 0 && s.data.sent++ % fullEvery === 0 ? FULL : LIVENESS;
  s.data.unsent = request.slice(s.write(request));
}

const timers: Timer[] = [];
if (mode === "kept") {
  const conns: Socket<Check>[] = [];
  for (let i = 0; i < gateways; i += 200) {
    for (const s of await Promise.all(Array.from({ length: Math.min(200, gateways - i) }, () => open(false)))) if (s) conns.push(s);
    await Bun.sleep(20);
  }
  process.stdout.write(`${JSON.stringify({ ready: true, open: conns.length })}\n`);
  for (const s of conns) timers.push(setTimeout(() => timers.push(setInterval(() => send(s, false), everyMs)), Math.random() * everyMs));
} else {
  process.stdout.write(`${JSON.stringify({ ready: true, open: 0 })}\n`);
  // gateways / everyMs checks per ms, sent in 10 ms slices
  const perSlice = (gateways * 10) / everyMs;
  let owed = 0;
  timers.push(
    setInterval(() => {
      owed += perSlice;
      for (; owed >= 1; owed--) void open(true).then((s) => s && send(s, true));
    }, 10),
  );
}
await Bun.sleep(warmSeconds * 1000);
[done, failed] = [0, 0];
errors.clear();
await Bun.sleep(seconds * 1000);
for (const t of timers) clearInterval(t);
process.stdout.write(`${JSON.stringify({ done, failed, errors: [...errors].slice(0, 5).map(([e, k]) => `${e} ×${k}`) })}\n`);
process.exit(0);
