/**
 * Active health checks of one member, each bounded by a timeout and by the size of the reply they
 * read. They judge what etcd's gateway cannot see: a member that accepts TCP but has no leader, is
 * a learner, has an alarm, or hangs.
 *
 * @module
 */
import { formatHostPort } from "../addresses.ts";
import { outOfFds, readReply } from "../limits.ts";
import { errorText } from "../log.ts";
import type { Member } from "../members.ts";
import type { TlsFiles } from "../tls.ts";
import { tcpProbe } from "./probe.ts";

export type CheckKind = "etcd" | "health" | "tcp" | "none";
export const CHECK_KINDS: readonly CheckKind[] = ["etcd", "health", "tcp", "none"];


export interface CheckResult {
  /** null: inconclusive because of the gateway's own trouble (out of file descriptors), not the member's. */
  ok: boolean | null;
  /** Why it failed (or what passed), in a few words for the log. */
  reason: string;
}

/**
 * How much a check asks: `full` judges the member as etcd sees itself (leader, learner, alarms);
 * `liveness` only that its process answers, which costs the member far less. Measured on etcd 3.4
 * at a low rate: GET /version on a kept-alive connection 0.02 ms of etcd CPU, POST
 * /v3/maintenance/status 0.5 ms, GET /health 1.5 ms (a quorum read) on a new connection.
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
  try {
    if (kind === "health") {
      const h = await fetch(`${base}/health?serializable=true`, init);
      const health = await readReply(h);
      if (!h.ok || !/"health"\s*:\s*"true"/.test(health)) return failed(`health ${h.status}: ${oneLine(health)}`);
      return { ok: true, reason: "health ok" };
    }
    if (o.depth === "liveness") {
      const v = await fetch(`${base}/version`, init);
      const version = await readReply(v);
      return v.ok ? { ok: true, reason: "version ok" } : failed(`version ${v.status}: ${oneLine(version)}`);
    }
    const s = await fetch(`${base}/v3/maintenance/status`, { ...init, method: "POST", body: "{}", headers: { ...init.headers, "content-type": "application/json" } });
    const body = await readReply(s);
    if (!s.ok) return failed(`status ${s.status}: ${oneLine(body)}`);
    return judgeStatus(JSON.parse(body) as MaintenanceStatus);
  } catch (e) {
    return failed(signal.aborted ? `check timeout after ${o.timeoutMs}ms` : errorText(e));
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

/** etcd's JSON status (IDs are strings): a leader is known, not a learner, no alarm. */
export function judgeStatus(s: MaintenanceStatus): CheckResult {
  if (s.leader === undefined || s.leader === "0") return { ok: false, reason: "no leader" };
  if (s.isLearner === true) return { ok: false, reason: "member is a learner" };
  if (s.errors !== undefined && s.errors.length > 0) return { ok: false, reason: `errors: ${s.errors.join("; ")}` };
  return { ok: true, reason: "status ok" };
}

function oneLine(text: string): string {
  const t = text.replace(/\s+/g, " ").trim();
  return t.length > 120 ? `${t.slice(0, 117)}...` : t;
}
