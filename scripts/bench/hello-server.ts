/**
 * The tiny HTTP backend of the small, churn and idle workloads, run as its own process:
 * `bun scripts/bench/hello-server.ts <port>` answers every request with `hello\n` on 127.0.0.1.
 *
 * Idle connections are never closed (`idleTimeout: 0`), so the idle workload's 5,000 connections
 * stay open. A request with `Connection: close` gets the header back, so wrk sees a complete
 * response and reconnects instead of counting the server's close as a read error.
 *
 * @module
 */
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write("usage: bun scripts/bench/hello-server.ts <port>\n");
  process.exit(2);
}

const closeHeaders = { connection: "close" };

Bun.serve({
  hostname: "127.0.0.1",
  port,
  idleTimeout: 0,
  fetch(req) {
    const close = req.headers.get("connection")?.toLowerCase() === "close";
    return close ? new Response("hello\n", { headers: closeHeaders }) : new Response("hello\n");
  },
});
