/**
 * Active health checks of one member, each bounded by a timeout. They judge what etcd's gateway
 * cannot see: a member that accepts TCP but has no leader, is a learner, has an alarm, or hangs.
 *
 * @module
 */
import { readReply } from "../limits.ts";
import { errorText } from "../log.ts";
import type { Member } from "../members.ts";
import type { TlsFiles } from "../tls.ts";
import { tcpProbe } from "./probe.ts";

export type CheckKind = "etcd" | "health" | "tcp" | "none";
export const CHECK_KINDS: readonly CheckKind[] = ["etcd", "health", "tcp", "none"];

/** Members that answered 404 on /readyz (etcd older than 3.5.11): checked with /health and status instead. */
const noReadyz = new WeakSet<Member>();

export interface CheckResult {
  ok: boolean;
  /** Why it failed (or what passed), in a few words for the log. */
  reason: string;
}

/**
 * Runs one check of `kind` against `member`; never throws, never outlives `timeoutMs`.
 *
 * - `etcd`: `GET /readyz` (etcd 3.5.11+); where it answers 404 (etcd ≤ 3.5.10, Debian's 3.4),
 *   `GET /health` must say `"health":"true"` and `POST /v3/maintenance/status` must show a leader,
 *   no learner and no alarm. The 404 is remembered per member.
 * - `health`: `GET /health` alone. `tcp`: a connect.
 */
export async function runCheck(kind: Exclude<CheckKind, "none">, member: Member, timeoutMs: number, tls: TlsFiles | null): Promise<CheckResult> {
  if (kind === "tcp") {
    const err = await tcpProbe(member.dialHost, member.endpoint.port, timeoutMs);
    return err === null ? { ok: true, reason: "connected" } : { ok: false, reason: err };
  }
  const scheme = tls !== null || member.tls ? "https" : "http";
  const base = `${scheme}://${member.endpoint.address}`;
  const signal = AbortSignal.timeout(timeoutMs);
  const init = { signal, tls: tls ?? undefined, keepalive: false, headers: { connection: "close" } };
  try {
    if (kind === "etcd" && !noReadyz.has(member)) {
      const r = await fetch(`${base}/readyz`, init);
      const body = await readReply(r);
      if (r.status !== 404) return r.ok ? { ok: true, reason: "readyz ok" } : { ok: false, reason: `readyz ${r.status}: ${oneLine(body)}` };
      noReadyz.add(member);
    }
    const h = await fetch(`${base}/health`, init);
    const health = await readReply(h);
    if (!h.ok || !/"health"\s*:\s*"true"/.test(health)) return { ok: false, reason: `health ${h.status}: ${oneLine(health)}` };
    if (kind === "health") return { ok: true, reason: "health ok" };
    const s = await fetch(`${base}/v3/maintenance/status`, { ...init, method: "POST", body: "{}", headers: { ...init.headers, "content-type": "application/json" } });
    if (!s.ok) return { ok: false, reason: `status ${s.status}: ${oneLine(await readReply(s))}` };
    return judgeStatus(JSON.parse(await readReply(s)) as MaintenanceStatus);
  } catch (e) {
    return { ok: false, reason: signal.aborted ? `check timeout after ${timeoutMs}ms` : errorText(e) };
  }
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
  return { ok: true, reason: "health and status ok" };
}

function oneLine(text: string): string {
  const t = text.replace(/\s+/g, " ").trim();
  return t.length > 120 ? `${t.slice(0, 117)}...` : t;
}
