/**
 * Test peers on loopback, written with node:net (streams with their own backpressure) so the gateway
 * is checked by code that shares nothing with it. Fault-injecting backends live here too.
 */
import { createHash, randomBytes } from "node:crypto";
import { createServer as createHttpServer } from "node:http";
import { connect, createServer, type Server, type Socket } from "node:net";

export interface Listening {
  port: number;
  close(): Promise<void>;
}

function listen(server: Server): Promise<Listening> {
  const sockets = new Set<Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as { port: number }).port,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      }),
    ),
  );
}

/** An HTTP member that answers every request (an etcd check's included) with `status` and `body`. */
export function httpAnswering(status: number, body: string): Promise<Listening> {
  return listen(createHttpServer((_req, res) => res.writeHead(status).end(body)) as unknown as Server);
}

/** Echoes every byte back; forwards the client's FIN after the echo. */
export function echoServer(): Promise<Listening> {
  return listen(createServer({ allowHalfOpen: true }, (s) => s.on("error", () => {}).pipe(s)));
}

/**
 * Reads until the client's FIN, then sends `replyBytes` random bytes and FIN (a server that replies
 * after EOF). `results` receives one entry per connection.
 */
export function hashServer(replyBytes: number, results: { received: string; sent: string; bytesIn: number }[]): Promise<Listening> {
  return listen(
    createServer({ allowHalfOpen: true }, (s) => {
      const inHash = createHash("sha256");
      let bytesIn = 0;
      s.on("error", () => {});
      s.on("data", (c: Buffer) => {
        inHash.update(c);
        bytesIn += c.length;
      });
      s.on("end", async () => {
        const sent = await writeRandom(s, replyBytes);
        results.push({ received: inHash.digest("hex"), sent, bytesIn });
        s.end();
      });
    }),
  );
}

/** Writes `n` random bytes in 1 MiB pieces, honouring backpressure; resolves to their SHA-256. */
export async function writeRandom(s: Socket, n: number, piece = 1 << 20): Promise<string> {
  const h = createHash("sha256");
  for (let left = n; left > 0; ) {
    const buf = randomBytes(Math.min(piece, left));
    h.update(buf);
    left -= buf.length;
    if (!s.write(buf)) await new Promise((r) => s.once("drain", r));
  }
  return h.digest("hex");
}

/** Connects to 127.0.0.1:port with half-open allowed. */
export function dial(port: number, host = "127.0.0.1"): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, allowHalfOpen: true });
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

/** Reads a socket to EOF; resolves to the SHA-256 and byte count of what arrived. */
export function readAll(s: Socket): Promise<{ hash: string; bytes: number; error?: string }> {
  return new Promise((resolve) => {
    const h = createHash("sha256");
    let bytes = 0;
    let settled = false;
    const settle = (error?: string) => {
      if (settled) return;
      settled = true;
      resolve({ hash: h.digest("hex"), bytes, ...(error === undefined ? {} : { error }) });
    };
    s.on("data", (c: Buffer) => {
      h.update(c);
      bytes += c.length;
    });
    s.once("end", () => settle());
    s.once("error", (e: NodeJS.ErrnoException) => settle(e.code ?? e.message));
  });
}

/** One request/response on a fresh connection: sends `msg`, reads `msg.length` bytes back, closes. */
export async function roundTrip(port: number, msg: string): Promise<string> {
  const s = await dial(port);
  return await new Promise((resolve, reject) => {
    let got = "";
    s.on("data", (c: Buffer) => {
      got += c.toString();
      if (got.length >= msg.length) {
        s.destroy();
        resolve(got);
      }
    });
    s.once("error", reject);
    s.once("end", () => reject(new Error(`EOF after ${JSON.stringify(got)}`)));
    s.write(msg);
  });
}

/**
 * An echo server on a chosen port (so it can be closed and opened again at the same address),
 * calling `onConnection` for each client. `server.close()` stops listening and keeps open
 * connections; see closeServer.
 */
export function echoOnPort(port: number, onConnection: () => void = () => {}): Promise<Server> {
  return new Promise((resolve) => {
    const server = createServer({ allowHalfOpen: true }, (s) => {
      onConnection();
      s.on("error", () => {}).pipe(s);
    });
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

/** Stops listening (open connections stay) and resolves once the server has closed. */
export const closeServer = (s: Server) => new Promise<void>((r) => s.close(() => r()));
