/**
 * Client load across restarts and upgrades (issue 23): loops that connect, send one HTTP/1.1
 * request with `Connection: close`, read the whole answer and close, with every failure sorted as
 * refused, reset or unanswered; and long-lived keep-alive connections that ask again every 100 ms
 * for a while and then close themselves, noting any the gateway closed first. Used by
 * test/e2e/upgrade.test.ts, test/e2e/systemd.test.ts and scripts/bench/restarts.ts, against etcd's
 * `/version` (any HTTP/1.1 server that answers 200 with a Content-Length will do).
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { connect as tcpConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";

export interface LoadOptions {
  /** Concurrent connect-request-close loops. @default 8 */
  loops?: number;
  /** Long-lived connections open at once. @default 4 */
  longLived?: number;
  /** How long a long-lived connection lives before it closes itself: uniform in [min, max] ms. @default [300, 2000] */
  lifeMs?: [number, number];
  /** An answer not complete after this long is unanswered. @default 5000 */
  unansweredMs?: number;
  /** The request path. @default "/version" */
  path?: string;
  /** Speak TLS to the gateway (--listen-cert), trusting this CA file. */
  tlsCa?: string;
}

/** Opens a connection; `ready` fires once requests may be written (after the TLS handshake with TLS). */
type Dial = (port: number) => { socket: Socket; ready: string };

function dialer(caFile: string | undefined): Dial {
  if (caFile === undefined) return (port) => ({ socket: tcpConnect({ port, host: "127.0.0.1" }), ready: "connect" });
  const ca = readFileSync(caFile);
  return (port) => ({ socket: tlsConnect({ port, host: "127.0.0.1", ca }), ready: "secureConnect" });
}

/** A long-lived connection the gateway closed before the client did. */
export interface CutConnection {
  openedAt: number;
  closedAt: number;
  how: string;
}

export interface LoadReport {
  /** Short connections answered. */
  ok: number;
  refused: number;
  reset: number;
  unanswered: number;
  /** One line per failure (the first 20). */
  failures: string[];
  /** Connect to complete answer, of the short connections that were answered (ms). */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Long-lived connections opened, requests they had answered, and those the gateway closed first. */
  longLived: { opened: number; answered: number; cut: CutConnection[] };
}

export interface Load {
  /** Short connections answered so far. */
  readonly answered: number;
  /** Stops every loop, closes every connection, and reports. */
  stop(): Promise<LoadReport>;
}

const statusOk = (text: string) => text.startsWith("HTTP/1.1 200");

/** One short connection: resolves with the time to the complete answer (ms) or throws a classified failure. */
function once(dial: Dial, port: number, path: string, unansweredMs: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const { socket: s, ready } = dial(port);
    let got = "";
    const timer = setTimeout(() => fail("unanswered", `no complete answer in ${unansweredMs} ms`), unansweredMs);
    let settled = false;
    function fail(kind: string, why: string) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      reject(Object.assign(new Error(why), { kind }));
    }
    s.on(ready, () => s.write(`GET ${path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n`));
    s.on("data", (c: Buffer) => (got += c.toString("latin1")));
    s.on("error", (e: NodeJS.ErrnoException) => fail(failureKind(e), `${e.code ?? ""} ${e.message}`));
    s.on("close", () => {
      if (settled) return;
      if (statusOk(got)) {
        settled = true;
        clearTimeout(timer);
        resolve(performance.now() - t0);
      } else fail("unanswered", `closed after ${JSON.stringify(got.slice(0, 40))}`);
    });
  });
}

/** Complete HTTP/1.1 answers at the start of `buf` (Content-Length bodies): how many, and the rest. */
function takeAnswers(buf: string): [number, string] {
  let n = 0;
  for (;;) {
    const head = buf.indexOf("\r\n\r\n");
    if (head < 0) return [n, buf];
    const len = /content-length:\s*(\d+)/i.exec(buf.slice(0, head));
    const end = head + 4 + Number(len?.[1] ?? 0);
    if (buf.length < end) return [n, buf];
    n++;
    buf = buf.slice(end);
  }
}

/** How a long-lived connection ended: closed by the client, cut by the gateway, or never opened (refused, reset). */
type LongEnd = { kind: "mine" } | { kind: "cut"; cut: CutConnection } | { kind: "failed"; failure: string };

/** The failure kind of a socket error: refused, reset, or other. */
const failureKind = (e: NodeJS.ErrnoException) => (e.code === "ECONNREFUSED" ? "refused" : e.code === "ECONNRESET" || e.code === "EPIPE" ? "reset" : "other");

/** One long-lived connection: asks every 100 ms until its life is over, then closes; resolves how it ended. */
function longLived(dial: Dial, port: number, path: string, lifeMs: number, onAnswer: () => void, stopped: () => boolean): Promise<LongEnd> {
  const openedAt = Date.now();
  return new Promise((resolve) => {
    const { socket: s, ready } = dial(port);
    let buf = "";
    let mine = false;
    let opened = false;
    let failure = "unanswered";
    let timer: Timer | undefined;
    const ask = () => {
      if (stopped() || Date.now() - openedAt >= lifeMs) {
        mine = true;
        s.end();
        return;
      }
      s.write(`GET ${path} HTTP/1.1\r\nHost: etcd\r\n\r\n`);
    };
    s.on(ready, () => {
      opened = true;
      ask();
    });
    s.on("data", (c: Buffer) => {
      const [n, rest] = takeAnswers(buf + c.toString("latin1"));
      buf = rest;
      for (let i = 0; i < n; i++) onAnswer();
      if (n > 0) timer = setTimeout(ask, 100);
    });
    s.on("error", (e: NodeJS.ErrnoException) => (failure = failureKind(e)));
    s.on("end", () => {
      if (!mine) s.end();
    });
    s.on("close", (hadError) => {
      clearTimeout(timer);
      if (mine) resolve({ kind: "mine" });
      else if (!opened) resolve({ kind: "failed", failure });
      else resolve({ kind: "cut", cut: { openedAt, closedAt: Date.now(), how: hadError ? "reset" : "closed" } });
    });
  });
}

/**
 * Starts the load on 127.0.0.1:`port` and keeps it up until `stop()`.
 *
 * @example const load = startLoad(gw.port); …upgrade…; const r = await load.stop(); expect(r.refused + r.reset + r.unanswered).toBe(0)
 */
export function startLoad(port: number, opts: LoadOptions = {}): Load {
  const path = opts.path ?? "/version";
  const unansweredMs = opts.unansweredMs ?? 5000;
  const [lifeMin, lifeMax] = opts.lifeMs ?? [300, 2000];
  const dial = dialer(opts.tlsCa);
  let running = true;
  const times: number[] = [];
  const r: LoadReport = { ok: 0, refused: 0, reset: 0, unanswered: 0, failures: [], p50Ms: 0, p99Ms: 0, maxMs: 0, longLived: { opened: 0, answered: 0, cut: [] } };
  /** Counts a failed connection; a client would not retry at once, so neither does the load (10 ms). */
  const failed = async (kind: string, why: string) => {
    if (kind === "refused") r.refused++;
    else if (kind === "reset") r.reset++;
    else r.unanswered++;
    if (r.failures.length < 20) r.failures.push(`${kind}: ${why}`);
    await Bun.sleep(10);
  };
  const loops = Array.from({ length: opts.loops ?? 8 }, async () => {
    // Bounded in count as well as by stop().
    for (let i = 0; running && i < 200_000; i++) {
      try {
        times.push(await once(dial, port, path, unansweredMs));
        r.ok++;
      } catch (e) {
        await failed((e as { kind?: string }).kind ?? "other", (e as Error).message);
      }
    }
  });
  const lives = Array.from({ length: opts.longLived ?? 4 }, async () => {
    for (let i = 0; running && i < 10_000; i++) {
      const end = await longLived(dial, port, path, lifeMin + Math.random() * (lifeMax - lifeMin), () => r.longLived.answered++, () => !running);
      if (end.kind === "failed") {
        await failed(end.failure, "a long-lived connection did not open");
        continue;
      }
      r.longLived.opened++;
      if (end.kind === "cut") r.longLived.cut.push(end.cut);
    }
  });
  return {
    get answered() {
      return r.ok;
    },
    async stop() {
      running = false;
      await Promise.all([...loops, ...lives]);
      times.sort((a, b) => a - b);
      const at = (q: number) => Math.round(times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? 0);
      return { ...r, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: Math.round(times[times.length - 1] ?? 0) };
    },
  };
}

/** One line for the test log and the bench: counts, latencies, long-lived connections. */
export function describeReport(what: string, r: LoadReport): string {
  return `${what}: ${r.ok} answered, ${r.refused} refused, ${r.reset} reset, ${r.unanswered} unanswered; connect to answer p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, max ${r.maxMs} ms; long-lived ${r.longLived.opened} opened, ${r.longLived.answered} answers, ${r.longLived.cut.length} cut by the gateway`;
}
