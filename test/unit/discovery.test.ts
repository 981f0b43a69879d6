import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readEndpointsFile } from "../../src/flags.ts";
import { judgeStatus, statusFromJson } from "../../src/health/checks.ts";
import { srvNames } from "../../src/discovery/srv.ts";

describe("SRV names are etcd's", () => {
  const cases: [string, string | null, string, string][] = [
    ["example.com", null, "_etcd-client-ssl._tcp.example.com", "_etcd-client._tcp.example.com"],
    ["example.com", "foo", "_etcd-client-ssl-foo._tcp.example.com", "_etcd-client-foo._tcp.example.com"],
  ];
  for (const [domain, name, ssl, plain] of cases) {
    test(`${domain}${name ? ` with --discovery-srv-name=${name}` : ""}`, () => expect(srvNames(domain, name)).toEqual({ ssl, plain }));
  }
});

describe("--endpoints-file", () => {
  const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-epfile-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  test("takes commas, spaces and lines, and # comments", () => {
    const f = join(dir, "a");
    writeFileSync(f, "# the cluster\n127.0.0.1:2379, 127.0.0.2:2379\nhttps://[::1]:2379 # local\n\n");
    expect(readEndpointsFile(f).endpoints.map((e) => e.address)).toEqual(["127.0.0.1:2379", "127.0.0.2:2379", "[::1]:2379"]);
  });
  test("rejects a bad endpoint with the parser's message", () => {
    const f = join(dir, "b");
    writeFileSync(f, "127.0.0.1:\n");
    expect(() => readEndpointsFile(f)).toThrow(/missing port/);
  });
  test("an endpoint without a port is on etcd's client port 2379, as with --endpoints", () => {
    const f = join(dir, "d");
    writeFileSync(f, "infra0.example.com\nhttps://10.0.0.2\n");
    expect(readEndpointsFile(f).endpoints.map((e) => [e.address, e.defaultPort])).toEqual([["infra0.example.com:2379", true], ["10.0.0.2:2379", true]]);
  });
  test("rejects an empty file", () => {
    const f = join(dir, "c");
    writeFileSync(f, "# nothing\n");
    expect(() => readEndpointsFile(f)).toThrow(/no endpoints/);
  });
});

describe("the etcd check's judgement of maintenance status", () => {
  // Member 10276657743932975437 is 8e9e05c52164694d in hex, as etcd prints IDs.
  const self = "10276657743932975437";
  const cases: [object, boolean, RegExp][] = [
    [{ header: { member_id: self }, leader: "123", errors: [] }, true, /^status ok$/],
    [{ leader: "0" }, false, /no leader/],
    [{}, false, /no leader/],
    [{ leader: "1", isLearner: true }, false, /learner/],
    // Alarms are cluster-wide: every member lists every member's. NOSPACE keeps members in service.
    [{ header: { member_id: self }, leader: "1", errors: [`memberID:${self} alarm:NOSPACE `] }, true, /status ok; cluster alarm NOSPACE on 8e9e05c52164694d/],
    [{ header: { member_id: "2" }, leader: "1", errors: [`memberID:${self} alarm:CORRUPT `] }, true, /cluster alarm CORRUPT on 8e9e05c52164694d/],
    // ...but a member's own CORRUPT alarm takes that member out.
    [{ header: { member_id: self }, leader: "1", errors: [`memberID:${self} alarm:CORRUPT `] }, false, /alarm CORRUPT on this member/],
    [{ leader: "1", errors: ["something unexpected"] }, false, /errors: something unexpected/],
  ];
  for (const [status, ok, reason] of cases) {
    test(JSON.stringify(status), () => {
      const r = judgeStatus(statusFromJson(JSON.stringify(status))!);
      expect(r.ok).toBe(ok);
      expect(r.reason).toMatch(reason);
      expect(r.alive).toBe(true);
    });
  }
  test("the facts: the cluster and member IDs in hex, the alarms by the member they are on", () => {
    const r = judgeStatus(statusFromJson(JSON.stringify({ header: { cluster_id: "14841639068965178418", member_id: self }, leader: self, errors: [`memberID:${self} alarm:NOSPACE `] }))!);
    expect(r.facts).toEqual({ clusterId: "cdf818194e3a8c32", memberId: "8e9e05c52164694d", alarms: [{ alarm: "NOSPACE", member: "8e9e05c52164694d" }] });
  });
  test("a reply that is not a JSON object is not a status", () => {
    for (const t of ["", "[]", "null", "42", "{"]) expect(statusFromJson(t)).toBeUndefined();
  });
});
