/**
 * The clients of the fleet balance benchmark (`bun run bench:fleet --balance`), run as a process of
 * their own so that the bench's sampling never delays them, nor they it:
 * `bun scripts/bench/fleet-balance-client.ts '<json ClientConfig>'`.
 *
 * In front of every gateway port it keeps `perGateway` long-lived HTTP/1.1 keep-alive connections,
 * each sending `GET /version` (a real etcd endpoint, answered without a raft read) every
 * `everyMs` ±20 %, and reconnecting when its connection is closed or a request fails, after a
 * jittered backoff (200–500 ms, doubled after each failure in a row, at most 2 s, so that a fleet
 * whose members are all down is not hammered). It also makes a trickle of short connections, about
 * one per gateway every `shortEveryMs` (connect, `GET /version` with `Connection: close`, read,
 * close). Raw sockets and a minimal response reader (status line, `Content-Length`) keep every
 * connect and close under its control: nothing is pooled or retried behind its back.
 *
 * Every request is exactly REQUEST_BYTES long (a padding header makes it so), so that the bench can
 * tell the connections a gateway relays for these clients from the gateway's own health-check
 * connections by the bytes a member received on each (scripts/bench/fleet-balance-sampler.ts). A
 * long-lived connection sends its first request as soon as it is connected.
 *
 * Every request is bounded by `timeoutMs` (connect included). Outcomes are counted per wall-clock
 * second and appended to `report` as one JSON line per second (a ClientBucket) until the process is
 * killed. Error kinds: `refused` (connect refused), `reset` (ECONNRESET/EPIPE), `timeout` (no full
 * reply within the bound), `closed` (the connection ended before a full reply), `http` (a reply
 * other than 200), `other`. A kept-alive connection the gateway closes while no request is in
 * flight is not an error: it is counted as `dropped` and reconnected.
 *
 * @module
 */
import { appendFileSync } from "node:fs";
import { connect, type Socket } from "node:net";

/** What the bench passes in. */
export interface ClientConfig {
  /** The gateways' listen ports on 127.0.0.1. */
  ports: number[];
  /** Long-lived connections per gateway. */
  perGateway: number;
  /** Mean time between two requests on a long-lived connection. */
  everyMs: number;
  /** Mean time between two short connections to the same gateway. */
  shortEveryMs: number;
  /** Bound on one request (connect included). */
  timeoutMs: number;
  /** The long-lived connections are first opened spread over this long. */
  rampMs: number;
  /** File the per-second buckets are appended to. */
  report: string;
}

/** The size of every request, bytes: a prime far above any health check's request. */
export const REQUEST_BYTES = 1499;

/** `GET /version` of exactly REQUEST_BYTES bytes; `close` adds `Connection: close`. */
function requestText(close: boolean): string {
  const head = `GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n${close ? "Connection: close\r\n" : ""}X-Pad: `;
  return `${head}${"p".repeat(REQUEST_BYTES - head.length - 4)}\r\n\r\n`;
}
const REQUESTS = { keepAlive: requestText(false), close: requestText(true) };

export const ERROR_KINDS = ["refused", "reset", "timeout", "closed", "http", "other"] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

/** One wall-clock second of outcomes. */
export interface ClientBucket {
  /** Unix time, whole seconds. */
  s: number;
  /** Requests answered 200, long-lived and short connections together. */
  ok: number;
  /** Failed requests (and failed connects) by kind, long-lived and short together. */
  errors: Record<ErrorKind, number>;
  /** Of those errors, the ones on short connections. */
  shortErrors: number;
  /** Kept-alive connections closed by the gateway while idle (not an error; reconnected). */
  dropped: number;
  /** Connections established in this second (long-lived and short). */
  connects: number;
  /** Long-lived connections open at the end of the second. */
  open: number;
}

type Outcome = "ok" | ErrorKind;

const emptyErrors = (): Record<ErrorKind, number> => ({ refused: 0, reset: 0, timeout: 0, closed: 0, http: 0, other: 0 });

/** The kind of a socket error. */
function kindOf(e: NodeJS.ErrnoException): ErrorKind {
  if (e.code === "ECONNREFUSED") return "refused";
  if (e.code === "ECONNRESET" || e.code === "EPIPE") return "reset";
  if (e.code === "ETIMEDOUT") return "timeout";
  return "other";
}

/**
 * One client connection and at most one request in flight on it. The first event that ends it
 * (an error, a close, the request's timeout) decides the outcome; an end while idle calls `onIdleEnd`.
 */
class HttpConn {
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (o: Outcome) => void; timer: Timer } | null = null;
  ended = false;
  onIdleEnd: (() => void) | null = null;

  constructor(private readonly sock: Socket) {
    sock.on("data", (c: Buffer) => {
      this.buf = this.buf.length === 0 ? c : Buffer.concat([this.buf, c]);
      this.parse(false);
    });
    sock.on("error", (e: NodeJS.ErrnoException) => this.end(kindOf(e)));
    sock.on("end", () => this.parse(true) || this.end("closed"));
    sock.on("close", () => this.end("closed"));
  }

  /** Resolves the request once a whole reply is in (or, without Content-Length, at the close). */
  private parse(atClose: boolean): boolean {
    if (this.pending === null) return false;
    const head = this.buf.indexOf("\r\n\r\n");
    if (head < 0) return false;
    const headers = this.buf.subarray(0, head).toString("latin1");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(headers)?.[1] ?? 0);
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(headers)?.[1];
    if (length === undefined ? !atClose : this.buf.length < head + 4 + Number(length)) return false;
    this.buf = length === undefined ? Buffer.alloc(0) : this.buf.subarray(head + 4 + Number(length));
    this.settle(status === 200 ? "ok" : "http");
    return true;
  }

  private settle(o: Outcome): void {
    const p = this.pending;
    if (p === null) return;
    this.pending = null;
    clearTimeout(p.timer);
    p.resolve(o);
  }

  /** Ends the connection: the request in flight fails with `kind`, or the idle callback runs. */
  end(kind: ErrorKind): void {
    if (this.ended) return;
    this.ended = true;
    this.sock.destroy();
    if (this.pending !== null) this.settle(kind);
    else this.onIdleEnd?.();
  }

  /** `GET /version`; `close` asks the server to close after the reply. */
  get(close: boolean, timeoutMs: number): Promise<Outcome> {
    if (this.ended) return Promise.resolve("closed");
    return new Promise((resolve) => {
      this.pending = { resolve, timer: setTimeout(() => this.end("timeout"), timeoutMs) };
      this.sock.write(close ? REQUESTS.close : REQUESTS.keepAlive);
    });
  }
}

/** Connects to 127.0.0.1:port within `timeoutMs`: the connection, or why not. */
function open(port: number, timeoutMs: number): Promise<HttpConn | ErrorKind> {
  return new Promise((resolve) => {
    const sock = connect({ host: "127.0.0.1", port });
    const timer = setTimeout(() => done("timeout"), timeoutMs);
    // The listeners go before HttpConn adds its own, which must stay.
    const done = (r: "connected" | ErrorKind) => {
      clearTimeout(timer);
      sock.removeAllListeners("connect");
      sock.removeAllListeners("error");
      if (r !== "connected") sock.on("error", () => undefined).destroy();
      resolve(r === "connected" ? new HttpConn(sock) : r);
    };
    sock.once("connect", () => done("connected"));
    sock.once("error", (e: NodeJS.ErrnoException) => done(kindOf(e)));
  });
}

const buckets = new Map<number, ClientBucket>();
let openLong = 0;

function bucket(): ClientBucket {
  const s = Math.floor(Date.now() / 1000);
  let b = buckets.get(s);
  if (b === undefined) {
    b = { s, ok: 0, errors: emptyErrors(), shortErrors: 0, dropped: 0, connects: 0, open: 0 };
    buckets.set(s, b);
  }
  return b;
}

function count(o: Outcome, short: boolean): void {
  const b = bucket();
  if (o === "ok") b.ok++;
  else {
    b.errors[o]++;
    if (short) b.shortErrors++;
  }
}

const jitter = (mean: number, spread: number) => mean * (1 - spread + 2 * spread * Math.random());
/** Backoff after `fails` failures in a row: 200–500 ms, doubled per further failure, at most 2 s. */
const backoff = (fails: number) => Math.min(2000, (200 + 300 * Math.random()) * 2 ** Math.max(0, fails - 1));

/** One long-lived connection's life, forever: connect, request at once and then every `everyMs`, reconnect on any end. */
async function longLived(cfg: ClientConfig, port: number): Promise<never> {
  await Bun.sleep(Math.random() * cfg.rampMs);
  let fails = 0;
  for (;;) {
    const c = await open(port, cfg.timeoutMs);
    if (typeof c === "string") {
      count(c, false);
      await Bun.sleep(backoff(++fails));
      continue;
    }
    bucket().connects++;
    openLong++;
    let idleEnd: () => void = () => undefined;
    const endedIdle = new Promise<void>((r) => (idleEnd = r));
    c.onIdleEnd = () => {
      bucket().dropped++;
      idleEnd();
    };
    for (let first = true; ; first = false) {
      const wait = first ? Promise.resolve("due" as const) : Bun.sleep(jitter(cfg.everyMs, 0.2)).then(() => "due" as const);
      if ((await Promise.race([wait, endedIdle.then(() => "ended" as const)])) === "ended") {
        fails = 0;
        break;
      }
      const o = await c.get(false, cfg.timeoutMs);
      count(o, false);
      if (o !== "ok") {
        c.end("closed");
        fails++;
        break;
      }
      fails = 0;
    }
    openLong--;
    await Bun.sleep(backoff(Math.max(1, fails)));
  }
}

/** Short connections to one gateway, forever, one every `shortEveryMs` ±50 %. */
async function shortLived(cfg: ClientConfig, port: number): Promise<never> {
  await Bun.sleep(Math.random() * cfg.shortEveryMs);
  for (;;) {
    const t0 = performance.now();
    const c = await open(port, cfg.timeoutMs);
    if (typeof c === "string") count(c, true);
    else {
      bucket().connects++;
      count(await c.get(true, Math.max(1, cfg.timeoutMs - (performance.now() - t0))), true);
      c.end("closed");
    }
    await Bun.sleep(jitter(cfg.shortEveryMs, 0.5));
  }
}

/** Appends every finished second to the report, once a second. */
function flushEverySecond(report: string): void {
  setInterval(() => {
    const now = Math.floor(Date.now() / 1000);
    const done = [...buckets.keys()].filter((s) => s < now).sort((a, b) => a - b);
    const lines: string[] = [];
    for (const s of done) {
      const b = buckets.get(s)!;
      buckets.delete(s);
      lines.push(JSON.stringify({ ...b, open: openLong }));
    }
    // A second without any event is written too, so the bench sees the client alive.
    if (done.length === 0) lines.push(JSON.stringify({ s: now - 1, ok: 0, errors: emptyErrors(), shortErrors: 0, dropped: 0, connects: 0, open: openLong } satisfies ClientBucket));
    appendFileSync(report, `${lines.join("\n")}\n`);
  }, 1000);
}

if (import.meta.main) {
  const cfg = JSON.parse(process.argv[2] ?? "null") as ClientConfig | null;
  if (cfg === null || !Array.isArray(cfg.ports) || typeof cfg.report !== "string") {
    process.stderr.write("usage: bun scripts/bench/fleet-balance-client.ts '<json ClientConfig>'\n");
    process.exit(2);
  }
  flushEverySecond(cfg.report);
  for (const port of cfg.ports) {
    for (let k = 0; k < cfg.perGateway; k++) void longLived(cfg, port);
    void shortLived(cfg, port);
  }
}
