/**
 * The TLS test infrastructure on its own, before any gateway is put in front of it: the openssl-made
 * certificates are what their names say, and a 3-member etcd cluster serving https with
 * `--client-cert-auth` (plus a learner) behaves as real etcd does for clients with and without a
 * certificate.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { etcdctl, memberStatus, startCluster, type Cluster } from "../support/cluster.ts";
import { makeCerts, type Certs } from "../support/certs.ts";

let dir: string;
let certs: Certs;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "etcd-gateway-tls-"));
  certs = await makeCerts(join(dir, "certs"));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `openssl args`; its stdout and stderr together, and its exit code. */
function openssl(args: string[]): { code: number; output: string } {
  const r = Bun.spawnSync(["openssl", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, output: r.stdout.toString() + r.stderr.toString() };
}

describe("certificates made with openssl", () => {
  test("the member and both client certificates verify against the CA", () => {
    const r = openssl(["verify", "-CAfile", certs.ca, certs.server, certs.client, certs.alice]);
    expect(r.code, r.output).toBe(0);
  });

  test("the member certificate names 127.0.0.1, ::1 and localhost and serves as both server and client", () => {
    const r = openssl(["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage", "-in", certs.server]);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain("IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:localhost");
    expect(r.output).toContain("TLS Web Server Authentication, TLS Web Client Authentication");
  });

  test("the client certificates carry the CNs root and alice", () => {
    expect(openssl(["x509", "-noout", "-subject", "-in", certs.client]).output).toMatch(/CN\s*=\s*root$/m);
    expect(openssl(["x509", "-noout", "-subject", "-in", certs.alice]).output).toMatch(/CN\s*=\s*alice$/m);
  });

  test("the expired certificate ended in the past and fails verification as expired", () => {
    const end = /notAfter=(.+)/.exec(openssl(["x509", "-noout", "-enddate", "-in", certs.expired]).output)?.[1];
    expect(Date.parse(end ?? "")).toBeLessThan(Date.now());
    const r = openssl(["verify", "-CAfile", certs.ca, certs.expired]);
    expect(r.code).not.toBe(0);
    expect(r.output).toContain("certificate has expired");
  });

  test("the certificate from the other CA does not verify against the CA but does against its own", () => {
    const r = openssl(["verify", "-CAfile", certs.ca, certs.otherServer]);
    expect(r.code).not.toBe(0);
    expect(r.output).toContain("unable to get local issuer certificate");
    expect(openssl(["verify", "-CAfile", certs.otherCa, certs.otherServer]).code).toBe(0);
  });

  test("the mismatched key is not the key of the mismatched certificate", () => {
    const certKey = openssl(["x509", "-noout", "-pubkey", "-in", certs.mismatch]).output;
    const pairKey = openssl(["pkey", "-pubout", "-in", certs.mismatchKey]).output;
    expect(certKey).toContain("PUBLIC KEY");
    expect(pairKey).toContain("PUBLIC KEY");
    expect(certKey).not.toBe(pairKey);
  });

  test("a second call on the same dir reuses the files instead of making new ones", async () => {
    const before = statSync(certs.ca).mtimeMs;
    const again = await makeCerts(certs.dir);
    expect(again).toEqual(certs);
    expect(statSync(certs.ca).mtimeMs).toBe(before);
  });
});

describe("a 3-member etcd cluster serving https with --client-cert-auth", () => {
  let cluster: Cluster | undefined;
  const running = (): Cluster => {
    if (cluster === undefined) throw new Error("the cluster did not start");
    return cluster;
  };
  /** etcdctl to member 0 only, with short timeouts: a refusal shows as a failed dial. */
  const toMember0 = (args: string[], tls: { cacert?: string; cert?: string; key?: string }) =>
    etcdctl(args, { endpoints: running().members[0]!.endpoint, dialTimeout: "1s", commandTimeout: "1s", ...tls });

  beforeAll(async () => {
    cluster = await startCluster({ size: 3, dir: join(dir, "cluster"), tls: { cert: certs.server, key: certs.serverKey, ca: certs.ca, clientCertAuth: true } });
  }, 30_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  test("every member advertises an https client URL and answers its status over TLS", async () => {
    const c = running();
    expect(c.members.map((m) => m.clientURL)).toEqual(c.members.map((m) => `https://127.0.0.1:${m.clientPort}`));
    for (const m of c.members) expect(await memberStatus(m.clientPort, 2000, c.clientTLS)).not.toBeNull();
    expect(await c.leaderIndex()).toBeGreaterThanOrEqual(0);
  });

  test("etcdctl with --cacert, --cert and --key puts and gets straight from a member", async () => {
    const tls = { cacert: certs.ca, cert: certs.client, key: certs.clientKey };
    const put = await toMember0(["put", "tls/greeting", "hello over TLS"], tls);
    expect(put.code, put.stderr).toBe(0);
    const get = await toMember0(["get", "tls/greeting", "--print-value-only"], tls);
    expect(get.code, get.stderr).toBe(0);
    expect(get.stdout.trim()).toBe("hello over TLS");
  });

  test("a client without a certificate is refused, by etcdctl and over HTTP", async () => {
    const r = await toMember0(["get", "tls/greeting"], { cacert: certs.ca });
    expect(r.code).not.toBe(0);
    expect(await memberStatus(running().members[0]!.clientPort, 2000, { ca: certs.ca })).toBeNull();
  });

  test("a client certificate signed by another CA is refused", async () => {
    const r = await toMember0(["get", "tls/greeting"], { cacert: certs.ca, cert: certs.otherServer, key: certs.otherServerKey });
    expect(r.code).not.toBe(0);
  });

  test("an added learner runs, reports isLearner and is listed as a learner", async () => {
    const c = running();
    const i = await c.addLearner();
    const learner = c.members[i]!;
    expect(learner.learner).toBe(true);
    expect(learner.clientURL).toStartWith("https://");
    const status = await memberStatus(learner.clientPort, 2000, c.clientTLS);
    expect(status?.isLearner).toBe(true);
    expect(status?.leader).toBe(await c.memberIdOf(await c.leaderIndex()));
    // Member list columns: ID, status, name, peer URL, client URL, is-learner.
    const list = await c.etcdctl(["member", "list"]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toContain(`, started, ${learner.name}, ${learner.peerURL}, ${learner.clientURL}, true`);
  }, 20_000);
});
