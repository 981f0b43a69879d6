/**
 * Active health checks of one member, each bounded by a timeout and by the size of the reply they
 * read. They judge what etcd's gateway cannot see: a member that accepts TCP but has no leader, is
 * a learner, has an alarm, or hangs.
 *
 * @module
 */
import { formatHostPort } from "../addresses.ts";
import { outOfFds, readReply } from "../limits.ts";
import type { Member } from "../members.ts";
import { requestErrorText, statusErrorText } from "../neterror.ts";
import type { TlsFiles } from "../tls.ts";
import { tcpProbe } from "./probe.ts";

export type CheckKind = "etcd" | "health" | "tcp" | "none";
export const CHECK_KINDS: readonly CheckKind[] = ["etcd", "health", "tcp", "none"];


export interface CheckResult {
  /** null: inconclusive because of the gateway's own trouble (out of file descriptors), not the member's. */
  ok: boolean | null;
  /**
   * Why it failed (or what passed), in a few words for the log, in Go's words where the connection
   * or the request failed (src/neterror.ts): `dial tcp 127.0.0.1:2379: connect: connection refused`,
   * `Get "http://127.0.0.1:2379/version": 503 Service Unavailable: <body>`.
   */
  reason: string;
}

/**
 * How much a check asks: `full` judges the member as etcd sees itself (leader, learner, alarms);
 * `liveness` only that its process answers, which costs the member less. Measured on etcd 3.4 at
 * the rate of 10,000 gateways (docs/member-connections.md): GET /version on a kept-alive connection
 * about 0.13 ms of etcd CPU, POST /v3/maintenance/status about 0.5 ms; GET /health is a quorum read.
 */
export type CheckDepth = "full" | "liveness";

export interface CheckOptions {
  depth: CheckDepth;
  timeoutMs: number;
  tls: TlsFiles | null;
  /** Reuse one HTTP connection for the member's checks (the member in use); else a new one each time. */
  keepAlive: boolean;
}

/**
 * Runs one check of `kind` against `member`; never throws, never outlives `timeoutMs`. Requests go
 * to the member's dial address (the IP the gateway resolved with --dns-server, if any), with TLS
 * verified against the endpoint's name.
 *
 * - `etcd`: full: `POST /v3/maintenance/status`, answered locally by the member (no raft read):
 *   a leader is known, not a learner, no alarm. Liveness: `GET /version` answers 200.
 * - `health`: `GET /health?serializable=true` (a local read on etcd 3.5+; etcd 3.4 ignores the
 *   parameter and does a quorum read). `tcp`: a connect.
 */
export async function runCheck(kind: Exclude<CheckKind, "none">, member: Member, o: CheckOptions): Promise<CheckResult> {
  if (kind === "tcp") {
    const err = await tcpProbe(member.dialHost, member.endpoint.port, o.timeoutMs);
    return err === null ? { ok: true, reason: "connected" } : failed(err);
  }
  const scheme = o.tls !== null || member.tls ? "https" : "http";
  const base = `${scheme}://${formatHostPort(member.dialHost, member.endpoint.port)}`;
  const signal = AbortSignal.timeout(o.timeoutMs);
  const tls = scheme === "https" ? { ...o.tls, serverName: member.endpoint.host } : undefined;
  const headers: Record<string, string> = o.keepAlive ? {} : { connection: "close" };
  const init = { signal, tls, keepalive: o.keepAlive, headers };
  let request = { method: "GET", url: `${base}/health?serializable=true` };
  try {
    if (kind === "health") {
      const h = await fetch(request.url, init);
      const health = await readReply(h);
      if (!h.ok) return failed(statusErrorText(request.method, request.url, h.status, health));
      if (!/"health"\s*:\s*"true"/.test(health)) return failed(`${statusErrorText(request.method, request.url, h.status, health)} (not healthy)`);
      return { ok: true, reason: "health ok" };
    }
    if (o.depth === "liveness") {
      request = { method: "GET", url: `${base}/version` };
      const v = await fetch(request.url, init);
      const version = await readReply(v);
      return v.ok ? { ok: true, reason: "version ok" } : failed(statusErrorText(request.method, request.url, v.status, version));
    }
    request = { method: "POST", url: `${base}/v3/maintenance/status` };
    const s = await fetch(request.url, { ...init, method: "POST", body: "{}", headers: { ...init.headers, "content-type": "application/json" } });
    const body = await readReply(s);
    if (!s.ok) return failed(statusErrorText(request.method, request.url, s.status, body));
    const status = parseJson(body);
    return status === undefined ? failed(`${statusErrorText(request.method, request.url, s.status, body)} (not JSON)`) : judgeStatus(status);
  } catch (e) {
    return failed(requestErrorText(e, request.method, request.url, { timeoutMs: signal.aborted ? o.timeoutMs : undefined, outOfFds: outOfFds() }));
  }
}

/** A failed check, unless the gateway itself is out of descriptors (then it says nothing about the member). */
function failed(reason: string): CheckResult {
  return outOfFds() ? { ok: null, reason: `not checked: out of file descriptors (${reason})` } : { ok: false, reason };
}

interface MaintenanceStatus {
  leader?: string;
  isLearner?: boolean;
  errors?: string[];
}

function parseJson(text: string): MaintenanceStatus | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === "object" ? (v as MaintenanceStatus) : undefined;
  } catch {
    return undefined;
  }
}

/** etcd's JSON status (IDs are strings): a leader is known, not a learner, no alarm. */
export function judgeStatus(s: MaintenanceStatus): CheckResult {
  if (s.leader === undefined || s.leader === "0") return { ok: false, reason: "no leader" };
  if (s.isLearner === true) return { ok: false, reason: "member is a learner" };
  if (s.errors !== undefined && s.errors.length > 0) return { ok: false, reason: `errors: ${s.errors.join("; ")}` };
  return { ok: true, reason: "status ok" };
}
