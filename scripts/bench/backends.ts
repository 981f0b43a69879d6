/**
 * What the contenders proxy to: the hello HTTP server, an iperf3 server, and a real 3-member
 * etcd cluster. Each is started once per run on first use and stopped at the end (or on Ctrl-C).
 *
 * @module
 */
import { join } from "node:path";
import { etcdctl, startCluster, type Cluster } from "../../test/support/cluster.ts";
import { freePort } from "../../test/support/net.ts";
import { onCleanup, spawnChild, type Child } from "./children.ts";
import { withContender, type Running } from "./contenders.ts";
import { httpOnce, waitConnectable, waitListening } from "./net.ts";
import type { Measured, WorkloadEnv } from "./types.ts";

/** A backend process listening on 127.0.0.1:port. */
export interface Server {
  port: number;
  /** `127.0.0.1:<port>` */
  address: string;
  child: Child;
}

const started: { stop(): Promise<void> }[] = [];
let hello: Promise<Server> | null = null;
let iperf: Promise<Server> | null = null;
let cluster: Promise<Cluster> | null = null;

/** The hello HTTP server (scripts/bench/hello-server.ts under this Bun), started on first call. */
export function helloServer(): Promise<Server> {
  hello ??= (async () => {
    const port = freePort();
    const child = spawnChild("hello-server", [process.execPath, join(import.meta.dir, "hello-server.ts"), String(port)]);
    started.push(child);
    await waitConnectable(port, 10_000, child.running).catch((e: unknown) => {
      throw new Error(`hello server did not start: ${child.logTail() || String(e)}`);
    });
    return { port, address: `127.0.0.1:${port}`, child };
  })();
  return hello;
}

/** A workload in front of the hello server: each measurement starts the contender and runs `fn` through it. */
export async function helloEnv(fn: (r: Running) => Promise<Measured>): Promise<WorkloadEnv> {
  const hello = await helloServer();
  const up = { backends: [hello.address], etcd: false };
  return { backends: up.backends, measure: (c) => withContender(c, up, fn) };
}

/** The hello server command, for the report. */
export const HELLO_COMMAND = "bun scripts/bench/hello-server.ts <port>";

/** An iperf3 server bound to 127.0.0.1 (`iperf3 -s -B 127.0.0.1 -p <port>`); started anew if it died. */
export async function iperfServer(): Promise<Server> {
  const current = await iperf?.catch(() => null);
  if (current && current.child.running()) return current;
  iperf = (async () => {
    const bin = Bun.which("iperf3");
    if (bin === null) throw new Error("iperf3 not installed");
    const port = freePort();
    const child = spawnChild("iperf3-server", [bin, ...IPERF_SERVER_COMMAND(port).slice(1)]);
    started.push(child);
    // Wait for the socket rather than connecting: iperf3 would take a bare connect for a test.
    await waitListening(port, 10_000, child.running).catch((e: unknown) => {
      throw new Error(`iperf3 server did not start: ${child.logTail() || String(e)}`);
    });
    return { port, address: `127.0.0.1:${port}`, child };
  })();
  return iperf;
}

export const IPERF_SERVER_COMMAND = (port: number | string) => ["iperf3", "-s", "-B", "127.0.0.1", "-p", String(port)];

/** The 3-member etcd cluster with key `foo` = `bar`, started on first call. */
export function etcdCluster(): Promise<Cluster> {
  cluster ??= (async () => {
    const c = await startCluster({ size: 3, timeoutMs: 30_000 });
    const removeCleanup = onCleanup(() => c.stop());
    started.push({ stop: async () => (removeCleanup(), await c.stop()) });
    const put = await etcdctl(["put", "foo", "bar"], { endpoints: c.endpoints });
    if (put.code !== 0) throw new Error(`etcdctl put foo failed: ${put.stderr.trim()}`);
    return c;
  })();
  return cluster;
}

/**
 * Starts of a sticky contender allowed per measurement where its random pick matters (the etcd
 * reads and blackhole cases): the chance that 10 picks out of 3 members all miss one is 1.7 %.
 */
export const STICKY_STARTS = 10;

/** Which member (index) serves a new connection through 127.0.0.1:port, from POST /v3/maintenance/status. @throws when none answers */
export async function memberBehind(port: number, cluster: Cluster): Promise<number> {
  const res = await httpOnce(port, "POST", "/v3/maintenance/status", "{}", 3000);
  let id: string | undefined;
  try {
    id = res.status === 200 ? (JSON.parse(res.body) as { header?: { member_id?: string } }).header?.member_id : undefined;
  } catch {
    id = undefined;
  }
  if (id === undefined) throw new Error(`status through the proxy failed: ${res.error ?? `HTTP ${res.status}`}`);
  const i = await cluster.indexOfId(id);
  if (i < 0) throw new Error(`status names unknown member ${id}`);
  return i;
}

/** Stops every backend started so far. */
export async function stopBackends(): Promise<void> {
  await Promise.allSettled(started.splice(0).map((s) => s.stop()));
  hello = iperf = cluster = null;
}
