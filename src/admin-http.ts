/**
 * The admin endpoint's small HTTP/1.1 server, on Bun.listen: one request per connection (GET or
 * HEAD, and POST for the routes that change something), answered with `Connection: close`, and every resource it takes bounded, so that a flood of
 * admin connections can never take the descriptors the data path needs (issue 12). Bun.serve has
 * no connection cap and no bound on the time a request head may take, hence this file.
 *
 * The bounds follow HAProxy's (`maxconn` on a frontend or stats socket, `timeout http-request`
 * with 408, a fixed request buffer with 431) and Go's net/http (a short lingering close):
 *
 * - at most `connections` connections at once; one more is answered 503 at once and closed;
 * - the request head must arrive whole within `headMs` of the connect (else 408) and fit in
 *   `headBytes` (else 431); bodies are never read, only discarded;
 * - the answer must be written within `answerMs`; after it the write side is shut down (FIN) and
 *   the client gets `lingerMs` to close its side before the socket is closed;
 * - methods other than GET, HEAD and POST: 405 with `Allow: GET, HEAD` (the route answers 405
 *   for a method it does not take); a request line that does not parse: 400.
 *
 * @module
 */
import type { Socket, TCPSocketListener } from "bun";

/** What a route answers; `type` defaults to plain UTF-8 text. HEAD gets the same status and headers, no body. */
export interface Reply {
  status: number;
  body: string;
  type?: string;
  headers?: Record<string, string>;
}

/** A request the route answers: GET, HEAD or POST. */
export interface Request {
  method: string;
  /** The request target's path. */
  path: string;
  /** The query, without `?` ("" when none). */
  query: string;
  /** It carries `Origin` or a `Sec-Fetch-` header: a web browser sent it (a page may make one cross-site). */
  fromBrowser: boolean;
}

/** Answers a request (HEAD as GET: the server leaves the body out). */
export type Route = (req: Request) => Reply | Promise<Reply>;

export interface HttpLimits {
  /** Connections open at once; one more is answered 503 and closed at once. */
  readonly connections: number;
  /** Bytes of the request head (request line, headers, blank line). */
  readonly headBytes: number;
  /** From the connect to the end of the request head. */
  readonly headMs: number;
  /** From the end of the request head to the last byte of the answer handed to the kernel. */
  readonly answerMs: number;
  /** After the answer and our FIN, how long the client has to close its side. */
  readonly lingerMs: number;
}

/** The admin endpoint's bounds, documented in the README (Admin endpoint). */
export const ADMIN_LIMITS: HttpLimits = { connections: 16, headBytes: 8192, headMs: 5000, answerMs: 5000, lingerMs: 1000 };

/** A parsed request head, or the status it is refused with. */
export type Head = Request | { refuse: 400 | 405 | 431 };

const TEXT = "text/plain;charset=utf-8";
const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};
/** 405 for a route that takes GET and HEAD only. */
export const GET_ONLY: Reply = { status: 405, body: "method not allowed: use GET or HEAD\n", headers: { Allow: "GET, HEAD" } };

const REFUSALS: Record<number, Reply> = {
  400: { status: 400, body: "bad request\n" },
  405: GET_ONLY,
  408: { status: 408, body: "request head not received in time\n" },
  431: { status: 431, body: "request head too large\n" },
  500: { status: 500, body: "internal error\n" },
  503: { status: 503, body: "too many admin connections, try again later\n", headers: { "Retry-After": "1" } },
};
/** Headers only browsers send: every POST of theirs carries Origin (Fetch standard), and they add Sec-Fetch-*. */
const BROWSER_HEADER = /\n(origin|sec-fetch-[a-z]+)[ \t]*:/i;
/** RFC 9112: method SP request-target SP HTTP-version; the method is a token. */
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.[01]$/;

/**
 * Parses a request head from the bytes received so far: null while it is incomplete and within
 * `maxBytes`. A single LF is accepted as a line end (RFC 9112, section 2.2).
 */
export function parseHead(bytes: Uint8Array, maxBytes: number): Head | null {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, maxBytes + 4)).toString("latin1");
  const blank = /\r?\n\r?\n/.exec(text);
  if (blank === null || blank.index + blank[0].length > maxBytes) return bytes.byteLength >= maxBytes ? { refuse: 431 } : null;
  const m = REQUEST_LINE.exec(text.slice(0, text.search(/\r?\n/)));
  if (m === null) return { refuse: 400 };
  const [, method, target] = m as unknown as [string, string, string];
  if (method !== "GET" && method !== "HEAD" && method !== "POST") return { refuse: 405 };
  try {
    // Origin form ("/metrics?x") or absolute form ("http://host/metrics"), resolved as a URL would be.
    const url = new URL(target.startsWith("/") ? `http://admin${target}` : target);
    return { method, path: url.pathname, query: url.search.slice(1), fromBrowser: BROWSER_HEADER.test(text.slice(0, blank.index)) };
  } catch {
    return { refuse: 400 };
  }
}

/** The bytes of an answer: status line, headers, and the body unless it answers a HEAD. */
export function encodeReply(r: Reply, head: boolean): Uint8Array {
  const body = Buffer.from(r.body);
  let h = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? ""}\r\nContent-Type: ${r.type ?? TEXT}\r\nContent-Length: ${body.byteLength}\r\n`;
  for (const [k, v] of Object.entries(r.headers ?? {})) h += `${k}: ${v}\r\n`;
  h += `Date: ${new Date().toUTCString()}\r\nConnection: close\r\n\r\n`;
  return head ? Buffer.from(h) : Buffer.concat([Buffer.from(h), body]);
}

/** One admin connection (assigned in `open`: Bun.listen's `data` is shared, docs/bun.md trap 7). */
interface Conn {
  /** Reading the head, writing the answer, or waiting for the client's FIN after ours. */
  phase: "head" | "answer" | "linger";
  head: Buffer;
  /** Answer bytes the kernel has not taken yet (docs/bun.md, trap 1). */
  out: Uint8Array | null;
  timer: ReturnType<typeof setTimeout> | undefined;
  peerEnded: boolean;
  closed: boolean;
}

type AdminSocket = Socket<Conn>;

/** The connections of one admin listener and what happens to each, phase by phase. */
class AdminConnections {
  readonly #open = new Set<AdminSocket>();

  constructor(
    private readonly route: Route,
    private readonly limits: HttpLimits,
  ) {}

  /** A new connection: read its head within `headMs`, or turn it away at the cap. */
  accept(s: AdminSocket): void {
    s.data = { phase: "head", head: Buffer.alloc(0), out: null, timer: undefined, peerEnded: false, closed: false };
    if (this.#open.size >= this.limits.connections) {
      // Turned away at once, so a flood holds no more than `connections` descriptors. A client
      // whose request is already in the kernel's buffer may see a reset instead of the 503.
      s.data.closed = true;
      s.write(encodeReply(REFUSALS[503]!, false));
      s.end();
      return;
    }
    this.#open.add(s);
    this.arm(s, this.limits.headMs);
  }

  received(s: AdminSocket, chunk: Uint8Array): void {
    const c = s.data;
    if (c.phase !== "head") return; // a body, or more after the head: read and dropped
    c.head = Buffer.concat([c.head, chunk]);
    const req = parseHead(c.head, this.limits.headBytes);
    if (req === null) return;
    c.head = Buffer.alloc(0);
    void this.answer(s, req, "method" in req && req.method === "HEAD");
  }

  closed(s: AdminSocket): void {
    s.data.closed = true;
    clearTimeout(s.data.timer);
    this.#open.delete(s);
  }

  private arm(s: AdminSocket, ms: number): void {
    clearTimeout(s.data.timer);
    s.data.timer = setTimeout(() => this.expire(s), ms);
  }

  private expire(s: AdminSocket): void {
    if (s.data.phase === "head") void this.answer(s, { refuse: 408 }, false);
    else if (s.data.phase === "answer") s.terminate();
    else s.end();
  }

  private async answer(s: AdminSocket, req: Head | { refuse: 408 }, head: boolean): Promise<void> {
    s.data.phase = "answer";
    this.arm(s, this.limits.answerMs);
    let reply: Reply;
    try {
      reply = "refuse" in req ? REFUSALS[req.refuse]! : await this.route(req);
    } catch {
      reply = REFUSALS[500]!;
    }
    if (!s.data.closed) this.write(s, encodeReply(reply, head));
  }

  /** Writes what the kernel takes; the rest waits for `drain` (docs/bun.md, trap 1). */
  write(s: AdminSocket, bytes: Uint8Array): void {
    const n = s.write(bytes);
    if (n < 0) return; // closing: the close handler cleans up
    if (n < bytes.byteLength) s.data.out = bytes.subarray(n);
    else this.finish(s);
  }

  /** The answer is all with the kernel: send our FIN and give the client a moment to close (no reset of unread bytes). */
  private finish(s: AdminSocket): void {
    s.data.phase = "linger";
    this.arm(s, this.limits.lingerMs);
    // After the client's FIN nothing is left to read: close(2) cannot reset (docs/bun.md, trap 2).
    if (s.data.peerEnded) s.end();
    else s.shutdown();
  }
}

/**
 * Serves `route` on host:port within `limits`.
 *
 * @throws {Error} from Bun.listen when the address cannot be bound.
 */
export function serveHttp(host: string, port: number, route: Route, limits: HttpLimits = ADMIN_LIMITS): TCPSocketListener<Conn> {
  const conns = new AdminConnections(route, limits);
  return Bun.listen<Conn>({
    hostname: host,
    port,
    // With the end handler: a client that sends its request and then its FIN still gets the answer (docs/bun.md, trap 3).
    allowHalfOpen: true,
    socket: {
      open: (s) => conns.accept(s),
      data: (s, chunk) => conns.received(s, chunk),
      drain(s) {
        const out = s.data.out;
        if (out === null) return;
        s.data.out = null;
        conns.write(s, out);
      },
      end(s) {
        s.data.peerEnded = true;
        // A head that never completed will not now; after our FIN both directions are done.
        if (s.data.phase !== "answer") s.end();
      },
      close: (s) => conns.closed(s),
    },
  });
}
