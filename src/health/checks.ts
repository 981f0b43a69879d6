/**
 * Active health checks of one member, each bounded by a timeout and by the size of the reply they
 * read. They judge what etcd's gateway cannot see: a member that accepts TCP but has no leader, is
 * a learner, is corrupt, belongs to another cluster, or hangs.
 *
 * Two facts come out of every check, kept apart (docs/selection-and-health.md, "Health"): whether the member is
 * **alive** (its process answered at all: any HTTP status, a TLS alert, a close after connect)
 * and whether it is **healthy**. A check that cannot judge health on a member that answers (its
 * TLS needs a client certificate the gateway lacks, it has no status API) judges it by liveness,
 * and says once how to get the full check: a check that fails on every member the same way is far
 * more likely the check's fault than the cluster's.
 *
 * What each member speaks is learned per member and remembered: https when plain HTTP is closed
 * unanswered and a TLS handshake works (and plain http the other way round), gRPC's
 * Maintenance.Status when the JSON API answers 404. Requests go straight to the member, never
 * through a proxy from the environment (src/http-client.ts).
 *
 * @module
 */
import { errorText } from "../log.ts";
import { HttpFailure, httpRequest, KeptConnection, requestUrl, type HttpReply, type HttpRequestSpec, type HttpTarget } from "../http-client.ts";
import { outOfFds } from "../limits.ts";
import type { Member } from "../members.ts";
import { statusErrorText } from "../neterror.ts";
import type { TlsFiles } from "../tls.ts";
import { GrpcFailure, grpcStatus, type MemberStatus } from "./grpc.ts";
import { tcpProbe } from "./probe.ts";

export type CheckKind = "etcd" | "health" | "tcp" | "none";
export const CHECK_KINDS: readonly CheckKind[] = ["etcd", "health", "tcp", "none"];

/** An alarm as etcd lists it: its type (`NOSPACE`, `CORRUPT`) and the member it is on (hex ID). */
export interface Alarm {
  readonly alarm: string;
  readonly member: string;
}

/** What a member said of itself in a full check. IDs in hex, as etcd prints them. */
export interface StatusFacts {
  /** null when the member did not say (no header). */
  readonly clusterId: string | null;
  readonly memberId: string | null;
  /** Cluster-wide: every member lists every member's alarms. */
  readonly alarms: readonly Alarm[];
}

/** Something a check learned that is worth one log line per member (a fallback it took). */
export interface CheckNote {
  /** What kind of note, so it is logged once per member. */
  readonly key: string;
  readonly level: "info" | "warn";
  readonly msg: string;
  readonly fields: Readonly<Record<string, unknown>>;
}

export interface CheckResult {
  /** null: inconclusive because of the gateway's own trouble (out of file descriptors), not the member's. */
  ok: boolean | null;
  /**
   * Why it failed (or what passed), in a few words for the log, in Go's words where the connection
   * or the request failed (src/neterror.ts): `dial tcp 127.0.0.1:2379: connect: connection refused`,
   * `Get "http://127.0.0.1:2379/version": 503 Service Unavailable: <body>`.
   */
  reason: string;
  /** Whether the member answered at all; absent when the check could not run (`ok` null). */
  alive?: boolean;
  /** From a full check that got the member's status. */
  facts?: StatusFacts;
  notes?: readonly CheckNote[];
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

/** What the checks learned of one member's protocols, and its kept-alive connection. */
interface Session {
  /** The scheme the member was found to speak, when that is not the configured one. */
  scheme: "http" | "https" | null;
  /** Where its status is asked: the JSON API, or gRPC once the JSON API answered 404. */
  status: "json" | "grpc";
  readonly keep: KeptConnection;
}

const sessions = new WeakMap<Member, Session>();
const newSession = (): Session => ({ scheme: null, status: "json", keep: new KeptConnection() });

/** Closes the member's kept-alive check connection and forgets what was learned of it (removed, or shutting down). */
export function forgetMember(m: Member): void {
  sessions.get(m)?.keep.close();
  sessions.delete(m);
}

const STATUS_REQUEST: HttpRequestSpec = { method: "POST", path: "/v3/maintenance/status", body: "{}" };
const VERSION_REQUEST: HttpRequestSpec = { method: "GET", path: "/version" };
const HEALTH_REQUEST: HttpRequestSpec = { method: "GET", path: "/health?serializable=true" };

/**
 * Runs one check of `kind` against `member`; never throws, never outlives `timeoutMs`. Requests go
 * to the member's dial address (the IP the gateway resolved with --dns-server, if any), with TLS
 * verified against the endpoint's name when a CA is given.
 *
 * - `etcd`: full: the member's status (`POST /v3/maintenance/status`, or gRPC's
 *   Maintenance.Status when the JSON API is off), answered locally by the member (no raft read):
 *   a leader is known, not a learner, no CORRUPT alarm on itself. Liveness: `GET /version`.
 * - `health`: `GET /health?serializable=true` (a local read on etcd 3.5+; etcd 3.4 ignores the
 *   parameter and does a quorum read). `tcp`: a connect.
 */
export async function runCheck(kind: Exclude<CheckKind, "none">, member: Member, o: CheckOptions): Promise<CheckResult> {
  if (kind === "tcp") {
    const err = await tcpProbe(member.dialHost, member.endpoint.port, o.timeoutMs);
    return err === null ? { ok: true, reason: "connected", alive: true } : failed(err, false);
  }
  let s = sessions.get(member);
  if (s === undefined) sessions.set(member, (s = newSession()));
  if (!o.keepAlive) s.keep.close();
  const a = new Attempt(member, o, s);
  let r: CheckResult;
  try {
    if (kind === "health") r = await healthCheck(a);
    else r = o.depth === "liveness" ? await liveness(a) : await fullCheck(a);
  } catch (e) {
    r = verdictOfFailure(a, e);
  }
  return a.notes.length === 0 ? r : { ...r, notes: a.notes };
}

/**
 * One request to `member` as the checks make it: in the scheme the member was found to speak (or
 * found now), straight to it, bounded by `timeoutMs`, on a new connection. For the member-list
 * sync (src/discovery/member-list.ts). Resolves with the reply and the URL it came from (for
 * error text, in the scheme used).
 *
 * @throws {HttpFailure} when no reply came.
 */
export async function askMember(member: Member, spec: HttpRequestSpec, tls: TlsFiles | null, timeoutMs: number): Promise<{ reply: HttpReply; url: string }> {
  const a = new Attempt(member, { depth: "full", timeoutMs, tls, keepAlive: false }, sessions.get(member) ?? newSession());
  const reply = await a.request(spec);
  return { reply, url: a.url(spec.path) };
}

/** One check's requests to one member: the deadline they share, the scheme, the notes. */
class Attempt {
  readonly notes: CheckNote[] = [];
  readonly #deadline: number;
  constructor(
    readonly member: Member,
    readonly o: CheckOptions,
    readonly s: Session,
  ) {
    this.#deadline = performance.now() + o.timeoutMs;
  }

  /** The scheme to use: what the member was found to speak, else what was configured. */
  get scheme(): "http" | "https" {
    return this.s.scheme ?? (this.o.tls !== null || this.member.tls ? "https" : "http");
  }

  /** Whether certificates are verified: only against a CA the operator gave. */
  get verified(): boolean {
    return this.o.tls?.ca !== undefined;
  }

  /** Whole milliseconds left of the check's timeout (at least 1): a first request's error text says `(timeout 1s)`. */
  left(): number {
    return Math.max(1, Math.ceil(this.#deadline - performance.now()));
  }

  target(scheme: "http" | "https"): HttpTarget {
    const m = this.member;
    const tls = scheme === "http" ? null : { ca: this.o.tls?.ca, cert: this.o.tls?.cert, key: this.o.tls?.key, serverName: m.endpoint.host, verify: this.verified };
    return { host: m.dialHost, port: m.endpoint.port, tls };
  }

  note(key: string, level: CheckNote["level"], msg: string, fields: Record<string, unknown> = {}): void {
    this.notes.push({ key, level, msg, fields: { address: this.member.address, ...fields } });
  }

  /** The URL of `path` on the member, for error text. */
  url(path: string): string {
    return requestUrl(this.target(this.scheme), path);
  }

  /**
   * Sends `spec` in the member's scheme. When the member turns out to speak the other one (plain
   * HTTP closed unanswered; a TLS handshake answered by plain HTTP), tries that once within the
   * same deadline and, if the member answers in it, remembers it (logged once).
   */
  async request(spec: HttpRequestSpec): Promise<HttpReply> {
    const scheme = this.scheme;
    const keep = this.o.keepAlive ? this.s.keep : undefined;
    // What the first scheme got, given back if the other one gets nothing better.
    let first: { reply: HttpReply } | { error: unknown };
    try {
      const reply = await httpRequest(this.target(scheme), spec, { timeoutMs: this.left(), keep });
      if (scheme === "https" || !httpsOnlyReply(reply)) return reply;
      first = { reply };
    } catch (e) {
      if (!(e instanceof HttpFailure) || !otherSchemeLikely(e, scheme)) throw e;
      first = { error: e };
    }
    const other = scheme === "http" ? "https" : "http";
    try {
      const reply = await httpRequest(this.target(other), spec, { timeoutMs: this.left(), keep });
      this.switchTo(other);
      return reply;
    } catch (e) {
      // A TLS alert is an answer in TLS: the member speaks it (and wants something of us).
      if (other === "https" && e instanceof HttpFailure && e.kind === "tls" && peerAlert(e)) {
        this.switchTo(other);
        throw e;
      }
      if ("reply" in first) return first.reply;
      throw first.error;
    }
  }

  private switchTo(scheme: "http" | "https"): void {
    this.s.scheme = scheme;
    this.s.keep.close();
    if (scheme === "http") return this.note("scheme", "info", "member serves plain http: health checks use http");
    const hint = this.verified ? {} : { hint: "set --health-cacert to verify members' certificates" };
    this.note("scheme", "info", "member serves TLS: health checks use https", { verified: this.verified, ...hint });
  }

  /** Maintenance.Status over gRPC, in the member's scheme. */
  grpc(): Promise<MemberStatus> {
    return grpcStatus(this.target(this.scheme), this.left());
  }
}

/** Go's net/http answers plain HTTP on a TLS port so (etcd's own listener closes instead). */
function httpsOnlyReply(r: HttpReply): boolean {
  return r.status === 400 && /HTTP request to an HTTPS server/i.test(r.body);
}

/** A failure that suggests the member speaks the other scheme: plain HTTP closed unanswered, or TLS answered by something that is not TLS. */
function otherSchemeLikely(e: HttpFailure, scheme: "http" | "https"): boolean {
  if (scheme === "http") return e.kind === "closed" || e.kind === "protocol";
  return e.kind === "tls" && !peerAlert(e) && /ECONNRESET|first record does not look like a TLS handshake|WRONG_VERSION_NUMBER/i.test(`${e.code ?? ""} ${e.message}`);
}

/** The member sent a TLS alert (it refused our certificate or its absence, or the handshake). */
function peerAlert(e: { code?: string | undefined; message: string }): boolean {
  return /ALERT/.test(e.code ?? "") || /remote error: tls:/.test(e.message);
}

/** Liveness: `GET /version` answers 2xx. */
async function liveness(a: Attempt): Promise<CheckResult> {
  const v = await a.request(VERSION_REQUEST);
  if (v.status >= 200 && v.status < 300) return { ok: true, reason: "version ok", alive: true };
  return failed(statusErrorText("GET", a.url(VERSION_REQUEST.path), v.status, v.body), true);
}

/** `health`: `GET /health?serializable=true` says `"health":"true"`. */
async function healthCheck(a: Attempt): Promise<CheckResult> {
  const h = await a.request(HEALTH_REQUEST);
  const text = statusErrorText("GET", a.url(HEALTH_REQUEST.path), h.status, h.body);
  if (h.status < 200 || h.status >= 300) return failed(text, true);
  if (!/"health"\s*:\s*"true"/.test(h.body)) return failed(`${text} (not healthy)`, true);
  return { ok: true, reason: "health ok", alive: true };
}

/**
 * The full check: the member's status over the JSON API, or over gRPC once the JSON API answered
 * 404 (`--enable-grpc-gateway=false`); a member with neither is judged by liveness.
 */
async function fullCheck(a: Attempt): Promise<CheckResult> {
  if (a.s.status === "json") {
    const reply = await a.request(STATUS_REQUEST);
    if (reply.status !== 404) return judgeJsonReply(a, reply);
    a.s.status = "grpc";
    a.note("status-api", "info", "member has the JSON API off: status checked over gRPC");
  }
  try {
    return judgeStatus(await a.grpc());
  } catch (e) {
    if (!(e instanceof GrpcFailure) || !(e.kind === "protocol" || (e.kind === "status" && e.code === "Unimplemented"))) throw e;
    a.note("no-status", "warn", "member status unavailable: judged by liveness only", { error: e.message });
    return await liveness(a);
  }
}

function judgeJsonReply(a: Attempt, r: HttpReply): CheckResult {
  const text = statusErrorText("POST", a.url(STATUS_REQUEST.path), r.status, r.body);
  if (r.status < 200 || r.status >= 300) return failed(text, true);
  const status = statusFromJson(r.body);
  return status === undefined ? failed(`${text} (not JSON)`, true) : judgeStatus(status);
}

/** What a failed request says of the member: a TLS alert means it is alive but will not let the check judge it. */
function verdictOfFailure(a: Attempt, e: unknown): CheckResult {
  if (!(e instanceof HttpFailure) && !(e instanceof GrpcFailure)) return failed(errorText(e), false);
  if (e.kind === "tls" && peerAlert(e)) {
    const hint = a.o.tls?.cert === undefined ? "set --health-cert and --health-key for the full check" : "check that the members trust the CA of --health-cert";
    a.note("tls-alert", "warn", "member needs a client certificate: judged by liveness only", { error: e.message, hint });
    return { ok: true, reason: `alive, judged by liveness only: ${e.message}`, alive: true };
  }
  return failed(e.message, e.answered);
}

/** A failed check, unless the gateway itself is out of descriptors (then it says nothing about the member). */
function failed(reason: string, alive: boolean): CheckResult {
  return outOfFds() ? { ok: null, reason: `not checked: out of file descriptors (${reason})` } : { ok: false, reason, alive };
}

/** etcd's JSON status: 64-bit IDs are decimal strings; fields at their zero value are left out. */
interface JsonStatus {
  header?: { cluster_id?: string; member_id?: string };
  leader?: string;
  isLearner?: boolean;
  errors?: string[];
  version?: string;
  raftTerm?: string;
}

/** The JSON gateway's status reply as a MemberStatus, or undefined when it is not a JSON object. */
export function statusFromJson(text: string): MemberStatus | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
  const j = v as JsonStatus;
  const str = (x: unknown, zero: string) => (typeof x === "string" ? x : zero);
  return {
    clusterId: str(j.header?.cluster_id, "0"),
    memberId: str(j.header?.member_id, "0"),
    leader: str(j.leader, "0"),
    isLearner: j.isLearner === true,
    errors: Array.isArray(j.errors) ? j.errors.filter((e): e is string => typeof e === "string") : [],
    version: str(j.version, ""),
    raftTerm: str(j.raftTerm, "0"),
  };
}

/** A decimal 64-bit ID in hex, as etcd prints IDs (`8e9e05c52164694d`); null for 0 or garbage. */
export function hexId(decimal: string): string | null {
  if (!/^\d{1,20}$/.test(decimal) || /^0+$/.test(decimal)) return null;
  return BigInt(decimal).toString(16);
}

/** etcd's alarm text in `errors`: `memberID:10276657743932975437 alarm:NOSPACE `. */
const ALARM = /^memberID:(\d+)\s+alarm:([A-Z_]+)\s*$/;

/**
 * etcd's status judged: a leader is known, not a learner, no CORRUPT alarm on this member. Alarms
 * are cluster-wide (every member lists all of them), so another member's alarm, and a NOSPACE
 * alarm anywhere, leave this member in service: they are reported (`facts.alarms`), and the
 * operator needs the cluster reachable to compact, defragment and disarm.
 */
export function judgeStatus(s: MemberStatus): CheckResult {
  const memberId = hexId(s.memberId);
  const alarms: Alarm[] = [];
  const other: string[] = [];
  for (const e of s.errors) {
    const m = ALARM.exec(e);
    if (m !== null) alarms.push({ alarm: m[2]!, member: hexId(m[1]!) ?? m[1]! });
    else if (!/no leader/.test(e)) other.push(e.trim());
  }
  const facts: StatusFacts = { clusterId: hexId(s.clusterId), memberId, alarms };
  const verdict = (ok: boolean, reason: string): CheckResult => ({ ok, reason, alive: true, facts });
  if (s.leader === "0" || s.leader === "") return verdict(false, "no leader");
  if (s.isLearner) return verdict(false, "member is a learner");
  const own = alarms.find((a) => a.alarm === "CORRUPT" && a.member === memberId);
  if (own !== undefined) return verdict(false, "alarm CORRUPT on this member");
  if (other.length > 0) return verdict(false, `errors: ${other.join("; ")}`);
  const raised = alarms.map((a) => `${a.alarm} on ${a.member}`);
  return verdict(true, raised.length === 0 ? "status ok" : `status ok; cluster alarm ${raised.join(", ")}`);
}
