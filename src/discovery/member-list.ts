/**
 * Member-list sync: ask a member for the cluster's member list (etcd's JSON API on the client
 * URL) and use the voting members' advertised client URLs as the endpoint set, so a rolling
 * replacement of every member needs no gateway restart. etcd's gateway has nothing like it.
 *
 * The request goes as the health checks send theirs (src/health/checks.ts): straight to the
 * member, never through a proxy from the environment, in the scheme the member speaks.
 *
 * @module
 */
import { parseEndpoint, type EndpointSpec } from "../addresses.ts";
import { askMember, hexId } from "../health/checks.ts";
import type { Member } from "../members.ts";
import { statusErrorText } from "../neterror.ts";
import type { TlsFiles } from "../tls.ts";

interface MemberListResponse {
  header?: { cluster_id?: string };
  members?: { ID?: string; name?: string; clientURLs?: string[]; isLearner?: boolean }[];
}

/** What a member listed: the client URLs of the voting members, and the cluster it answered for (hex; null if it did not say). */
export interface MemberList {
  endpoints: EndpointSpec[];
  clusterId: string | null;
}

const LIST_REQUEST = { method: "POST", path: "/v3/cluster/member/list", body: "{}" } as const;

/**
 * `POST /v3/cluster/member/list` on `member` (https when `tls` is set, the endpoint was https, or
 * the member was found to speak TLS); resolves to the client URLs of voting members that
 * advertise any.
 *
 * @throws {Error} on any failure (unreachable, TLS, not etcd, no voting member with a client URL),
 * in Go's words (src/neterror.ts): `dial tcp 10.0.1.10:2379: connect: connection refused`,
 * `Post "http://10.0.1.10:2379/v3/cluster/member/list": 503 Service Unavailable: …`.
 */
export async function fetchMemberList(member: Member, tls: TlsFiles | null, timeoutMs: number): Promise<MemberList> {
  const { reply: r, url } = await askMember(member, LIST_REQUEST, tls, timeoutMs);
  if (r.status < 200 || r.status >= 300) throw new Error(statusErrorText("POST", url, r.status, r.body));
  let body: MemberListResponse;
  try {
    body = JSON.parse(r.body) as MemberListResponse;
  } catch {
    throw new Error(`${statusErrorText("POST", url, r.status, r.body)} (not JSON)`);
  }
  const endpoints: EndpointSpec[] = [];
  const seen = new Set<string>();
  for (const m of body.members ?? []) {
    if (m.isLearner === true) continue;
    for (const u of m.clientURLs ?? []) {
      const ep = parseEndpoint(u);
      if (seen.has(ep.address)) continue;
      seen.add(ep.address);
      endpoints.push(ep);
    }
  }
  if (endpoints.length === 0) throw new Error("member list has no voting member with a client URL");
  const id = body.header?.cluster_id;
  return { endpoints, clusterId: typeof id === "string" ? hexId(id) : null };
}
