/**
 * A real etcd cluster on loopback, for the e2e tests, the soak and linearizability runs, the
 * benchmarks and the demo: N members of the `etcd` found on PATH (Debian's etcd-server), each with
 * its own free client and peer ports and a fresh data dir, and an `etcdctl` runner. Members log to
 * a file in their own dir, never to our stderr, so a test runner is not kept waiting on a pipe a
 * member holds open.
 *
 * With `tls`, members serve their client URLs over https (optionally requiring client certificates)
 * while peer traffic stays plain http on loopback: a gateway only ever sees client URLs, and plain
 * peers keep the cluster's start and its failure modes independent of the certificates under test.
 * `addLearner` grows the cluster by a non-voting member (etcd 3.4 allows one learner at a time).
 *
 * @module
 */
import type { Subprocess } from "bun";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts, sleep } from "./net.ts";
import { runToEnd, track, which, type RunResult } from "./process.ts";

export interface ClusterMember {
  /** etcd's `--name`: `m0`, `m1`, ... */
  name: string;
  clientPort: number;
  peerPort: number;
  /** `http://127.0.0.1:<clientPort>`, or `https://` when the cluster was started with `tls`. */
  clientURL: string;
  /** Always plain `http://127.0.0.1:<peerPort>`, TLS or not. */
  peerURL: string;
  /** `127.0.0.1:<clientPort>`, the form `--endpoints` takes. */
  endpoint: string;
  /** The member's own dir: its data dir `data/` and its log `etcd.log`. */
  dir: string;
  logFile: string;
  /** The current process (replaced by `restart`). */
  proc: Subprocess<"ignore", number, number>;
  pid: number;
  /** True for a member added by `Cluster.addLearner` (a learner until someone promotes it). */
  learner?: boolean;
}

export interface Cluster {
  /** The root dir holding one dir per member. */
  readonly dir: string;
  readonly members: ClusterMember[];
  /**
   * The client addresses of the members `startCluster` started, comma separated:
   * `127.0.0.1:p0,127.0.0.1:p1,...`. Learners added later are not in it: they refuse most requests.
   */
  readonly endpoints: string;
  /** The credentials this launcher presents to the members (`tls.ca` plus its client pair), or undefined for plain http. */
  readonly clientTLS: ClientTLS | undefined;
  /** Sends `signal` to member `i` and waits for it to exit. @default signal "SIGKILL" */
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts member `i` again on its ports and data dir (`--initial-cluster-state existing`) and waits until it is healthy. */
  restart(i: number, timeoutMs?: number): Promise<void>;
  /** Waits until member `i` (or every running member) answers `/health` with `"health":"true"`. @throws with the log tail on timeout */
  waitHealthy(i?: number, timeoutMs?: number): Promise<void>;
  /** The index of the member every running member agrees is the leader; waits (bounded) for one. */
  leaderIndex(timeoutMs?: number): Promise<number>;
  /** Member `i`'s raft ID as a decimal string (IDs exceed 2^53, so never a JS number). */
  memberIdOf(i: number): Promise<string>;
  /** The index of the member whose ID is `id` (decimal or hex string), or -1. */
  indexOfId(id: string): Promise<number>;
  /** Whether member `i`'s process is running. */
  isRunning(i: number): boolean;
  /**
   * Runs `etcdctl` against this cluster: `opts.endpoints` default to `endpoints`, and the TLS options
   * to `clientTLS`. Never throws for a failing command.
   */
  etcdctl(args: string[], opts?: EtcdctlOptions): Promise<EtcdctlResult>;
  /**
   * Adds a learner (`etcdctl member add mN --learner`) on fresh ports, starts it with
   * `--initial-cluster-state existing`, and resolves with its index in `members` once it answers
   * its status request as a learner. `restart` and `stop` handle it like any member. On a cluster
   * younger than 5 s this waits: etcd refuses membership changes until its members have been
   * connected that long. `timeoutMs` bounds the whole and defaults to the cluster's start bound.
   *
   * @throws when etcd refuses (3.4 allows one learner at a time) or the learner does not come up; it is then removed again.
   */
  addLearner(timeoutMs?: number): Promise<number>;
  /** Kills every member, waits for them, and removes the dirs this cluster created. */
  stop(): Promise<void>;
}

/** The certificates of a cluster whose members serve their client URLs over https. */
export interface ClusterTLS {
  /** The members' certificate (`--cert-file`). It needs clientAuth usage too: etcd 3.4 presents it to its own gRPC server. */
  cert: string;
  /** Its key (`--key-file`). */
  key: string;
  /** The CA members trust for client certificates (`--trusted-ca-file`) and the launcher trusts for theirs. */
  ca: string;
  /** `--client-cert-auth`: members refuse clients without a certificate signed by `ca`. @default false */
  clientCertAuth?: boolean;
  /**
   * false: members get no `--trusted-ca-file`, so they ask clients for no certificate at all (https
   * only). etcd turns client-certificate auth on whenever a trusted CA is set, whatever
   * `clientCertAuth` says. @default true
   */
  trustedCA?: boolean;
  /** The certificate the launcher and `Cluster.etcdctl` present. @default cert */
  clientCert?: string;
  /** Its key. @default key */
  clientKey?: string;
}

/** What a client presents to a TLS member: the CA it trusts, and its own certificate pair when members ask for one. */
export interface ClientTLS {
  ca: string;
  cert?: string;
  key?: string;
}

export interface ClusterOptions {
  /** Members. @default 3 */
  size?: number;
  /** Root dir for the member dirs; created under os.tmpdir() when absent (and then removed by stop). */
  dir?: string;
  /** Bound on the start, health included. @default 20_000 */
  timeoutMs?: number;
  /** Serve client URLs over https with these certificates. @default undefined (plain http) */
  tls?: ClusterTLS;
  /**
   * More etcd flags for member `i` (restarts and learners included), e.g. `--enable-grpc-gateway=false`
   * for all, or `--quota-backend-bytes` for one. @default none
   */
  extraArgs?: (i: number) => string[];
}

/** Options of one `etcdctl` run. */
export interface EtcdctlOptions {
  /** `--endpoints`, e.g. `127.0.0.1:2379` or a comma list. */
  endpoints?: string;
  /** `--dial-timeout`. @default "2s" */
  dialTimeout?: string;
  /** `--command-timeout`. @default "5s" */
  commandTimeout?: string;
  /** The process is killed after this long (and the result has code null). @default 10_000 */
  timeoutMs?: number;
  /** `--cacert`: with it etcdctl speaks TLS even to scheme-less endpoints. */
  cacert?: string;
  /** `--cert`, the client certificate. */
  cert?: string;
  /** `--key`, its key. */
  key?: string;
}

/** What an etcdctl run printed; `code` is null when it was killed at `timeoutMs`. */
export type EtcdctlResult = RunResult;

/**
 * Runs `etcdctl` (API v3) with `args` and collects its output; never throws for a failing command.
 *
 * @example await etcdctl(["put", "foo", "bar"], { endpoints: "127.0.0.1:23790" })
 */
export async function etcdctl(args: string[], opts: EtcdctlOptions = {}): Promise<EtcdctlResult> {
  const cmd = [
    which("etcdctl"),
    ...(opts.endpoints ? [`--endpoints=${opts.endpoints}`] : []),
    `--dial-timeout=${opts.dialTimeout ?? "2s"}`,
    `--command-timeout=${opts.commandTimeout ?? "5s"}`,
    ...(opts.cacert ? [`--cacert=${opts.cacert}`] : []),
    ...(opts.cert ? [`--cert=${opts.cert}`] : []),
    ...(opts.key ? [`--key=${opts.key}`] : []),
    ...args,
  ];
  return await runToEnd(cmd, { timeoutMs: opts.timeoutMs ?? 10_000, env: { ...process.env, ETCDCTL_API: "3" } });
}

/** The last `lines` lines of a file, or a note that it is missing. */
function tail(path: string, lines = 20): string {
  if (!existsSync(path)) return `(no log at ${path})`;
  return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

/** What `memberStatus` reads from a member's maintenance status. */
export interface MemberStatus {
  /** The answering member's ID, decimal. */
  memberId: string;
  /** The leader's ID as that member sees it, decimal; "0" when it knows none. */
  leader: string;
  /** Whether the answering member is a learner. */
  isLearner: boolean;
}

/** The origin and fetch options for a member on `127.0.0.1:port`: https with `tls`, plain http without. */
function memberRequest(port: number, tls: ClientTLS | undefined): { origin: string; init: BunFetchRequestInit } {
  // No pooled connection left behind: it would pin a member (or a gateway's client slot) open.
  const init: BunFetchRequestInit = { headers: { connection: "close" } };
  if (tls === undefined) return { origin: `http://127.0.0.1:${port}`, init };
  init.tls = {
    ca: Bun.file(tls.ca),
    ...(tls.cert !== undefined ? { cert: Bun.file(tls.cert) } : {}),
    ...(tls.key !== undefined ? { key: Bun.file(tls.key) } : {}),
  };
  return { origin: `https://127.0.0.1:${port}`, init };
}

/**
 * The maintenance status of the etcd member reachable at `127.0.0.1:port` (a member or a gateway in
 * front of one), over etcd's JSON gateway: it encodes 64-bit IDs as decimal strings, so nothing is
 * rounded. Over https when `tls` is given (its cert and key are presented when set). Null when it
 * does not answer within `timeoutMs`, TLS failures included. A member started with
 * `--enable-grpc-gateway=false` answers the JSON path 404: it is then asked over gRPC (`etcdctl
 * endpoint status`) instead.
 *
 * @example const s = await memberStatus(m.clientPort, 2000, { ca, cert, key }); s?.isLearner
 */
export async function memberStatus(port: number, timeoutMs = 2000, tls?: ClientTLS): Promise<MemberStatus | null> {
  const { origin, init } = memberRequest(port, tls);
  try {
    const res = await fetch(`${origin}/v3/maintenance/status`, { ...init, method: "POST", body: "{}", signal: AbortSignal.timeout(timeoutMs) });
    if (res.status === 404) return await memberStatusOverGrpc(port, timeoutMs, tls);
    if (!res.ok) return null;
    // The JSON gateway leaves out fields at their zero value: no isLearner means false.
    const body = (await res.json()) as { header?: { member_id?: string }; leader?: string; isLearner?: boolean };
    const memberId = body.header?.member_id;
    if (memberId === undefined) return null;
    return { memberId, leader: body.leader ?? "0", isLearner: body.isLearner === true };
  } catch {
    return null;
  }
}

/**
 * `memberStatus` for a member with the JSON API off: `etcdctl endpoint status -w json` over gRPC.
 * etcdctl prints IDs as bare JSON numbers above 2^53, so the digits are read, never JSON.parse'd;
 * it leaves `isLearner` out when false.
 */
async function memberStatusOverGrpc(port: number, timeoutMs: number, tls: ClientTLS | undefined): Promise<MemberStatus | null> {
  const seconds = `${Math.max(1, Math.ceil(timeoutMs / 1000))}s`;
  const r = await etcdctl(["endpoint", "status", "-w", "json"], {
    endpoints: `127.0.0.1:${port}`,
    dialTimeout: seconds,
    commandTimeout: seconds,
    timeoutMs: timeoutMs + 1000,
    ...etcdctlTLS(tls),
  });
  const memberId = /"member_id":(\d+)/.exec(r.stdout)?.[1];
  if (r.code !== 0 || memberId === undefined) return null;
  return { memberId, leader: /"leader":(\d+)/.exec(r.stdout)?.[1] ?? "0", isLearner: /"isLearner":true/.test(r.stdout) };
}

/** Whether `127.0.0.1:port/health` says `"health":"true"` within `timeoutMs`. */
async function healthy(port: number, tls: ClientTLS | undefined, timeoutMs = 1000): Promise<boolean> {
  const { origin, init } = memberRequest(port, tls);
  try {
    const res = await fetch(`${origin}/health`, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    const body = (await res.json()) as { health?: string };
    return body.health === "true";
  } catch {
    return false;
  }
}

/** A member ID in decimal, from decimal or `0x`-less hex as etcdctl prints it in tables. */
function decimalId(id: string): string {
  return /^[0-9]+$/.test(id) ? id : BigInt(`0x${id}`).toString(10);
}

/**
 * Starts a `size`-member etcd cluster on 127.0.0.1 and resolves once every member is healthy.
 * Elections are fast (50 ms heartbeat, 500 ms election timeout) so failover tests stay short.
 * With `tls`, client URLs are https and every request of the launcher presents `clientTLS`.
 *
 * @throws when a member exits or the cluster is not healthy within `timeoutMs`, with the log tails.
 * @example const cluster = await startCluster(); try { ... } finally { await cluster.stop(); }
 * @example await startCluster({ size: 3, tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true } })
 */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const size = opts.size ?? 3;
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const ownRoot = opts.dir === undefined;
  const root = opts.dir ?? mkdtempSync(join(tmpdir(), "etcd-cluster-"));
  mkdirSync(root, { recursive: true });
  // A port taken by someone else between freePorts() and etcd's bind makes a member exit: try anew.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(size, root, ownRoot, timeoutMs, opts.tls, opts.extraArgs ?? (() => []));
    } catch (e) {
      const portTaken = e instanceof MemberExited && /address already in use/.test(e.message);
      if (attempt >= 3 || !portTaken) {
        if (ownRoot) rmSync(root, { recursive: true, force: true });
        throw e;
      }
    }
  }
}

class MemberExited extends Error {}

/** etcdctl's TLS flags for `tls`. */
function etcdctlTLS(tls: ClientTLS | undefined): Pick<EtcdctlOptions, "cacert" | "cert" | "key"> {
  return tls === undefined ? {} : { cacert: tls.ca, cert: tls.cert, key: tls.key };
}

async function startOnce(size: number, root: string, ownRoot: boolean, timeoutMs: number, tls: ClusterTLS | undefined, extraArgs: (i: number) => string[]): Promise<Cluster> {
  const etcd = which("etcd");
  const token = `etcd-gateway-cluster-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const ports = freePorts(size * 2);
  const members: ClusterMember[] = [];
  const initialCluster = Array.from({ length: size }, (_, i) => `m${i}=http://127.0.0.1:${ports[2 * i + 1]!}`).join(",");
  // A learner joins with the membership etcd printed when it was added, which names the learner too.
  const initialClusterOf = new Map<string, string>();
  const ids = new Map<number, string>();
  const scheme = tls === undefined ? "http" : "https";
  const clientTLS: ClientTLS | undefined = tls && { ca: tls.ca, cert: tls.clientCert ?? tls.cert, key: tls.clientKey ?? tls.key };
  const tlsFlags =
    tls === undefined
      ? []
      : [
          `--cert-file=${tls.cert}`,
          `--key-file=${tls.key}`,
          ...(tls.trustedCA === false ? [] : [`--trusted-ca-file=${tls.ca}`]),
          ...(tls.clientCertAuth ? ["--client-cert-auth"] : []),
        ];

  /** A fresh dir and the addresses of member `m<i>`. */
  const newMember = (i: number, clientPort: number, peerPort: number): Omit<ClusterMember, "proc" | "pid"> => {
    const dir = join(root, `m${i}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    return {
      name: `m${i}`,
      clientPort,
      peerPort,
      clientURL: `${scheme}://127.0.0.1:${clientPort}`,
      peerURL: `http://127.0.0.1:${peerPort}`,
      endpoint: `127.0.0.1:${clientPort}`,
      dir,
      logFile: join(dir, "etcd.log"),
    };
  };

  const spawnMember = (m: Omit<ClusterMember, "proc" | "pid">, state: "new" | "existing") => {
    const log = openSync(m.logFile, "a");
    const args = [
      etcd,
      `--name=${m.name}`,
      `--data-dir=${join(m.dir, "data")}`,
      `--listen-client-urls=${m.clientURL}`,
      `--advertise-client-urls=${m.clientURL}`,
      `--listen-peer-urls=${m.peerURL}`,
      `--initial-advertise-peer-urls=${m.peerURL}`,
      `--initial-cluster=${initialClusterOf.get(m.name) ?? initialCluster}`,
      `--initial-cluster-state=${state}`,
      `--initial-cluster-token=${token}`,
      ...tlsFlags,
      ...extraArgs(Number(m.name.slice(1))),
      "--heartbeat-interval=50",
      "--election-timeout=500",
      "--logger=zap",
      "--log-outputs=stderr",
    ];
    try {
      const proc = Bun.spawn(args, { stdin: "ignore", stdout: log, stderr: log });
      track(proc);
      return proc;
    } finally {
      // The child has its own copy of the descriptor.
      closeSync(log);
    }
  };

  for (let i = 0; i < size; i++) {
    const base = newMember(i, ports[2 * i]!, ports[2 * i + 1]!);
    const proc = spawnMember(base, "new");
    members.push({ ...base, proc, pid: proc.pid });
  }

  const member = (i: number): ClusterMember => {
    const m = members[i];
    if (m === undefined) throw new Error(`no member ${i} in a ${members.length}-member cluster`);
    return m;
  };
  const isRunning = (i: number) => {
    const p = member(i).proc;
    return p.exitCode === null && p.signalCode === null;
  };
  const running = () => members.map((_, i) => i).filter(isRunning);
  const exited = (m: ClusterMember) => new MemberExited(`etcd member ${m.name} exited (${m.proc.exitCode ?? m.proc.signalCode}); log ${m.logFile}:\n${tail(m.logFile)}`);

  const waitHealthy = async (i?: number, waitMs = timeoutMs) => {
    const which = i === undefined ? running() : [i];
    const deadline = performance.now() + waitMs;
    for (const j of which) {
      const m = member(j);
      for (;;) {
        if (!isRunning(j)) throw exited(m);
        if (await healthy(m.clientPort, clientTLS)) break;
        if (performance.now() > deadline) {
          throw new Error(`etcd member ${m.name} (${m.clientURL}) not healthy after ${waitMs} ms; log ${m.logFile}:\n${tail(m.logFile)}`);
        }
        await sleep(100);
      }
    }
  };

  const memberIdOf = async (i: number): Promise<string> => {
    const known = ids.get(i);
    if (known !== undefined) return known;
    const s = await memberStatus(member(i).clientPort, 2000, clientTLS);
    if (s === null) throw new Error(`etcd member ${member(i).name} did not answer its status request`);
    ids.set(i, s.memberId);
    return s.memberId;
  };

  const cluster: Cluster = {
    dir: root,
    members,
    endpoints: members.map((m) => m.endpoint).join(","),
    clientTLS,
    async kill(i, signal = "SIGKILL") {
      const p = member(i).proc;
      if (isRunning(i)) p.kill(signal);
      await p.exited;
    },
    async restart(i, waitMs = timeoutMs) {
      if (isRunning(i)) throw new Error(`etcd member ${member(i).name} is still running`);
      const m = member(i);
      m.proc = spawnMember(m, "existing");
      m.pid = m.proc.pid;
      await waitHealthy(i, waitMs);
    },
    waitHealthy,
    async leaderIndex(waitMs = 10_000) {
      // Learn every running member's ID first: the leader field names an ID, not an address.
      for (const j of running()) await memberIdOf(j);
      const deadline = performance.now() + waitMs;
      for (;;) {
        const views = await Promise.all(running().map((j) => memberStatus(member(j).clientPort, 2000, clientTLS)));
        const leaders = new Set(views.map((v) => v?.leader ?? "0"));
        const [leader] = leaders;
        if (leaders.size === 1 && leader !== undefined && leader !== "0") {
          const idx = await cluster.indexOfId(leader);
          if (idx >= 0 && isRunning(idx)) return idx;
        }
        if (performance.now() > deadline) throw new Error(`no agreed etcd leader after ${waitMs} ms (members report ${[...leaders].join(", ")})`);
        await sleep(100);
      }
    },
    memberIdOf,
    async indexOfId(id) {
      const dec = decimalId(id);
      for (let j = 0; j < members.length; j++) {
        const known = ids.get(j) ?? (isRunning(j) ? await memberIdOf(j).catch(() => undefined) : undefined);
        if (known === dec) return j;
      }
      return -1;
    },
    isRunning,
    etcdctl: (args, opts = {}) => etcdctl(args, { endpoints: cluster.endpoints, ...etcdctlTLS(clientTLS), ...opts }),
    async addLearner(waitMs = timeoutMs) {
      const [clientPort, peerPort] = freePorts(2) as [number, number];
      const index = members.length;
      const base = newMember(index, clientPort, peerPort);
      // Ask the running voters: a learner (an earlier one) would refuse the membership change.
      const voters = members.filter((m, j) => m.learner !== true && isRunning(j)).map((m) => m.endpoint).join(",");
      const deadline = performance.now() + waitMs;
      let add: EtcdctlResult;
      for (;;) {
        add = await cluster.etcdctl(["member", "add", base.name, "--learner", `--peer-urls=${base.peerURL}`], { endpoints: voters });
        // etcd's strict reconfig check refuses membership changes until the member asked has been
        // connected to every voter for 5 s (etcdserver HealthInterval): a fresh cluster must wait.
        if (add.code === 0 || !/unhealthy cluster/.test(add.stderr) || performance.now() > deadline) break;
        await sleep(250);
      }
      // etcdctl pads the hex ID to 16 columns with spaces: "Member  5da5f470b6e37c8 added".
      const hexId = /Member\s+([0-9a-f]+)\s+added/.exec(add.stdout)?.[1];
      const joined = /ETCD_INITIAL_CLUSTER="([^"]+)"/.exec(add.stdout)?.[1];
      if (add.code !== 0 || hexId === undefined || joined === undefined) {
        rmSync(base.dir, { recursive: true, force: true });
        throw new Error(`etcdctl member add ${base.name} --learner failed (${add.code}): ${add.stderr.trim() || add.stdout.trim()}`);
      }
      initialClusterOf.set(base.name, joined);
      const proc = spawnMember(base, "existing");
      const m: ClusterMember = { ...base, proc, pid: proc.pid, learner: true };
      members.push(m);
      // etcdctl prints IDs in hex; an all-digit hex ID would fool decimalId, so convert here.
      ids.set(index, BigInt(`0x${hexId}`).toString(10));

      try {
        // Ready once it answers as a learner and has heard from a leader, so it is in the raft group.
        for (;;) {
          if (!isRunning(index)) throw exited(m);
          const s = await memberStatus(clientPort, 1000, clientTLS);
          if (s?.isLearner === true && s.leader !== "0") break;
          if (performance.now() > deadline) throw new Error(`etcd learner ${m.name} (${m.clientURL}) not up after ${waitMs} ms; log ${m.logFile}:\n${tail(m.logFile)}`);
          await sleep(100);
        }
      } catch (e) {
        proc.kill("SIGKILL");
        await proc.exited;
        members.splice(members.indexOf(m), 1);
        ids.delete(index);
        initialClusterOf.delete(base.name);
        await cluster.etcdctl(["member", "remove", hexId], { endpoints: voters });
        rmSync(base.dir, { recursive: true, force: true });
        throw e;
      }
      return index;
    },
    async stop() {
      await Promise.all(members.map((m) => {
        m.proc.kill("SIGKILL");
        return m.proc.exited;
      }));
      if (ownRoot) rmSync(root, { recursive: true, force: true });
      else for (const m of members) rmSync(m.dir, { recursive: true, force: true });
    },
  };

  try {
    await waitHealthy(undefined, timeoutMs);
    for (let j = 0; j < size; j++) await memberIdOf(j);
  } catch (e) {
    await Promise.all(members.map((m) => (m.proc.kill("SIGKILL"), m.proc.exited)));
    throw e;
  }
  return cluster;
}
