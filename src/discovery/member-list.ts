/**
 * Member-list sync: ask a member for the cluster's member list (etcd's JSON API on the client
 * URL) and use the voting members' advertised client URLs as the endpoint set, so a rolling
 * replacement of every member needs no gateway restart. etcd's gateway has nothing like it.
 *
 * @module
 */
import { outOfFds, readReply } from "../limits.ts";
import { requestErrorText, statusErrorText } from "../neterror.ts";
import type { TlsFiles } from "../tls.ts";
import { parseEndpoint, type EndpointSpec } from "../addresses.ts";

interface MemberListResponse {
  members?: { ID?: string; name?: string; clientURLs?: string[]; isLearner?: boolean }[];
}

/**
 * `POST /v3/cluster/member/list` on `address` (https when `tls` is set or the endpoint was
 * https); resolves to the client URLs of voting members that advertise any.
 *
 * @throws {Error} on any failure (unreachable, TLS, not etcd, no voting member with a client URL),
 * in Go's words (src/neterror.ts): `dial tcp 10.0.1.10:2379: connect: connection refused`,
 * `Post "http://10.0.1.10:2379/v3/cluster/member/list": 503 Service Unavailable: …`.
 */
export async function fetchMemberList(address: string, useTLS: boolean, tls: TlsFiles | null, timeoutMs: number): Promise<EndpointSpec[]> {
  const scheme = useTLS || tls !== null ? "https" : "http";
  const url = `${scheme}://${address}/v3/cluster/member/list`;
  const signal = AbortSignal.timeout(timeoutMs);
  let r: Response;
  let text: string;
  try {
    r = await fetch(url, { method: "POST", body: "{}", headers: { "content-type": "application/json", connection: "close" }, signal, tls: tls ?? undefined } as RequestInit);
    text = await readReply(r);
  } catch (e) {
    throw new Error(requestErrorText(e, "POST", url, { timeoutMs: signal.aborted ? timeoutMs : undefined, outOfFds: outOfFds() }), { cause: e });
  }
  if (!r.ok) throw new Error(statusErrorText("POST", url, r.status, text));
  const body = JSON.parse(text) as MemberListResponse;
  const endpoints: EndpointSpec[] = [];
  const seen = new Set<string>();
  for (const m of body.members ?? []) {
    if (m.isLearner === true) continue;
    for (const url of m.clientURLs ?? []) {
      const ep = parseEndpoint(url);
      if (seen.has(ep.address)) continue;
      seen.add(ep.address);
      endpoints.push(ep);
    }
  }
  if (endpoints.length === 0) throw new Error("member list has no voting member with a client URL");
  return endpoints;
}
