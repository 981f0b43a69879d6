/** Helpers for tests that put the gateway in front of a real etcd cluster (cluster.ts). */
import { afterAll, afterEach, beforeAll } from "bun:test";
import { etcdctl, memberStatus, startCluster, type ClientTLS, type Cluster } from "./cluster.ts";
import { stopAllGateways } from "./gateway.ts";
import type { GatewayProcess } from "./gateway.ts";

/** `etcdctl` through the gateway, with the short timeouts failover tests want. */
export function viaGateway(gw: GatewayProcess, args: string[], tls?: ClientTLS) {
  return etcdctl(args, {
    endpoints: `127.0.0.1:${gw.port}`,
    dialTimeout: "2s",
    commandTimeout: "3s",
    ...(tls ? { cacert: tls.ca, cert: tls.cert, key: tls.key } : {}),
  });
}

/** The index of the member that answers a new connection through the gateway (sticky: the one it uses). */
export async function memberBehind(cluster: Cluster, gw: GatewayProcess, tls?: ClientTLS): Promise<number> {
  const r = await viaGateway(gw, ["endpoint", "status", "-w", "json"], tls);
  if (r.code !== 0) throw new Error(`endpoint status through the gateway failed: ${r.stderr}`);
  // etcdctl prints IDs as bare JSON numbers above 2^53: read the digits, never JSON.parse them.
  const id = /"member_id":(\d+)/.exec(r.stdout)?.[1];
  if (id === undefined) throw new Error(`no member_id in ${r.stdout}`);
  const i = await cluster.indexOfId(id);
  if (i < 0) throw new Error(`member ID ${id} reported through the gateway is not one of the cluster's`);
  return i;
}

/**
 * Brings a cluster back to all members running and healthy after a test killed or stopped some:
 * continues stopped (SIGSTOP) members, restarts killed ones, waits for health.
 */
export async function restoreCluster(cluster: Cluster): Promise<void> {
  for (let i = 0; i < cluster.members.length; i++) {
    if (cluster.isRunning(i)) process.kill(cluster.members[i]!.pid, "SIGCONT");
    else await cluster.restart(i);
  }
  await cluster.waitHealthy();
}

/**
 * Registers hooks for a suite that shares one 3-member cluster: started before the first test,
 * restored after each (gateways stopped, killed or stopped members brought back), stopped after
 * the last. Call inside a describe (or at top level); use the returned getter in tests.
 */
export function useSharedCluster(): () => Cluster {
  let cluster: Cluster | undefined;
  beforeAll(async () => {
    cluster = await startCluster({ size: 3 });
  }, 30_000);
  afterEach(async () => {
    await stopAllGateways();
    if (cluster) await restoreCluster(cluster);
  }, 30_000);
  afterAll(async () => {
    await stopAllGateways();
    await cluster?.stop();
  });
  return () => {
    if (!cluster) throw new Error("the shared cluster is not started yet");
    return cluster;
  };
}

/**
 * The cluster ID that the member at `endpoint` (default: the cluster's first member) reports, in
 * lower-case hex as etcd prints IDs. etcdctl prints IDs as bare JSON numbers above 2^53: the digits
 * are read, never JSON.parse'd.
 */
export async function clusterIdHex(cluster: Cluster, endpoint = cluster.members[0]!.endpoint): Promise<string> {
  const r = await cluster.etcdctl(["endpoint", "status", "-w", "json"], { endpoints: endpoint });
  const id = /"cluster_id":(\d+)/.exec(r.stdout)?.[1];
  if (r.code !== 0 || id === undefined) throw new Error(`no cluster_id from ${endpoint}: ${r.stderr.trim() || r.stdout.trim()}`);
  return BigInt(id).toString(16);
}

/**
 * Continues every stopped (SIGSTOP) member and waits until each answers its status request again;
 * unlike `restoreCluster` it does not wait for `/health`, which etcd 3.4 answers `false` while any
 * alarm (NOSPACE) is raised, and it restarts nobody.
 */
export async function resumeStopped(cluster: Cluster, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < cluster.members.length; i++) {
    if (!cluster.isRunning(i)) continue;
    const m = cluster.members[i]!;
    process.kill(m.pid, "SIGCONT");
    while ((await memberStatus(m.clientPort, 1000, cluster.clientTLS)) === null) {
      if (performance.now() > deadline) throw new Error(`etcd member ${m.name} does not answer after SIGCONT`);
      await Bun.sleep(100);
    }
  }
}
