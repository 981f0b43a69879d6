/**
 * Real X.509 material for TLS tests, made by the `openssl` CLI (no crypto library of ours, so the
 * certificates are exactly what an operator would make): a CA and an unrelated CA, member, client,
 * foreign, expired and mismatched certificates. Keys are EC P-256: generating them takes
 * milliseconds, and both Go (etcd) and BoringSSL (Bun) accept them.
 *
 * @module
 */
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Absolute paths of the PEM files `makeCerts` writes. */
export interface Certs {
  /** The directory holding them all. */
  dir: string;
  /** The CA that signs everything below except `otherServer`: `ca.pem`, `ca-key.pem`. */
  ca: string;
  caKey: string;
  /** A second CA nobody trusts: `other-ca.pem`, `other-ca-key.pem`. */
  otherCa: string;
  otherCaKey: string;
  /**
   * The members' certificate (`server.pem`, `server-key.pem`): SANs `IP:127.0.0.1, IP:::1,
   * DNS:localhost`, extended key usage serverAuth and clientAuth, because etcd 3.4 presents it as a
   * client too (to its peers and to its own gRPC server behind the HTTP/JSON gateway).
   */
  server: string;
  serverKey: string;
  /** A client certificate with CN `root`: `client.pem`, `client-key.pem`. */
  client: string;
  clientKey: string;
  /** A second client certificate, CN `alice`: `alice.pem`, `alice-key.pem`. */
  alice: string;
  aliceKey: string;
  /** A server certificate (same SANs) signed by the other CA: `other-server.pem`, `other-server-key.pem`. */
  otherServer: string;
  otherServerKey: string;
  /** A server certificate (same SANs) signed by the CA that expired in 2021: `expired.pem`, `expired-key.pem`. */
  expired: string;
  expiredKey: string;
  /** `server.pem`'s certificate paired with a key that is not its own: `mismatch.pem`, `mismatch-key.pem`. */
  mismatch: string;
  mismatchKey: string;
}

const FILES = {
  ca: "ca.pem",
  caKey: "ca-key.pem",
  otherCa: "other-ca.pem",
  otherCaKey: "other-ca-key.pem",
  server: "server.pem",
  serverKey: "server-key.pem",
  client: "client.pem",
  clientKey: "client-key.pem",
  alice: "alice.pem",
  aliceKey: "alice-key.pem",
  otherServer: "other-server.pem",
  otherServerKey: "other-server-key.pem",
  expired: "expired.pem",
  expiredKey: "expired-key.pem",
  mismatch: "mismatch.pem",
  mismatchKey: "mismatch-key.pem",
} as const satisfies Record<Exclude<keyof Certs, "dir">, string>;

/**
 * Our own OpenSSL config, so neither the host's openssl.cnf defaults nor its policy leak into the
 * certificates. The `[test_ca]` section exists only for `openssl ca`: in OpenSSL 3.0 `x509 -req`
 * has `-days` but no `-not_before/-not_after`, and only `openssl ca` can set a validity in the past.
 */
const CONFIG = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
`;

/** Runs `openssl args` in `cwd` with our config. @throws with openssl's stderr when it fails */
async function openssl(cwd: string, args: string[]): Promise<void> {
  const proc = Bun.spawn(["openssl", ...args], {
    cwd,
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, OPENSSL_CONF: join(cwd, "openssl.cnf") },
  });
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`openssl ${args.join(" ")} exited ${code}:\n${stderr}`);
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** A self-signed CA certificate and its key. */
const newCA = (cwd: string, cert: string, key: string, cn: string) =>
  openssl(cwd, ["req", "-config", "openssl.cnf", "-x509", "-new", ...EC_KEY, "-keyout", key, "-out", cert, "-days", "3650", "-subj", `/CN=${cn}`, "-extensions", "ca_ext"]);

/** A fresh key and a certificate signing request for `cn`. */
const newRequest = (cwd: string, csr: string, key: string, cn: string) =>
  openssl(cwd, ["req", "-config", "openssl.cnf", "-new", ...EC_KEY, "-keyout", key, "-out", csr, "-subj", `/CN=${cn}`]);

/** Signs `csr` with `ca` for ten years, adding the extensions of config section `ext`. */
const sign = (cwd: string, csr: string, ca: string, caKey: string, out: string, ext: string, serial: number) =>
  openssl(cwd, ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-set_serial", String(serial), "-days", "3650", "-sha256", "-extfile", "openssl.cnf", "-extensions", ext, "-out", out]);

/**
 * Writes the certificates and keys described by `Certs` into `dir` (created when missing) and
 * returns their paths. When every file is already there they are reused as they are, so a test
 * suite pays for the generation once per dir (about 100 ms otherwise). The files are made in a
 * scratch dir and moved in at the end, so an interrupted run leaves no half set; two processes
 * generating into the same empty dir at once may still mix sets: give each its own dir.
 *
 * @throws when `openssl` is missing or fails, with its stderr.
 * @example const certs = await makeCerts(join(tmpdir(), "etcd-gateway-certs"));
 */
export async function makeCerts(dir: string): Promise<Certs> {
  const certs = { dir, ...Object.fromEntries(Object.entries(FILES).map(([k, f]) => [k, join(dir, f)])) } as Certs;
  if (Object.values(FILES).every((f) => existsSync(join(dir, f)))) return certs;

  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(join(dir, ".make-"));
  try {
    writeFileSync(join(work, "openssl.cnf"), CONFIG);
    writeFileSync(join(work, "index.txt"), "");
    writeFileSync(join(work, "serial"), "1000\n");

    // Everything that needs no signature first, all at once: each openssl run is its own process.
    await Promise.all([
      newCA(work, FILES.ca, FILES.caKey, "etcd-gateway test CA"),
      newCA(work, FILES.otherCa, FILES.otherCaKey, "etcd-gateway unrelated CA"),
      newRequest(work, "server.csr", FILES.serverKey, "etcd member"),
      newRequest(work, "client.csr", FILES.clientKey, "root"),
      newRequest(work, "alice.csr", FILES.aliceKey, "alice"),
      newRequest(work, "other-server.csr", FILES.otherServerKey, "etcd member (unrelated CA)"),
      newRequest(work, "expired.csr", FILES.expiredKey, "etcd member (expired)"),
      openssl(work, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", FILES.mismatchKey]),
    ]);
    await Promise.all([
      sign(work, "server.csr", FILES.ca, FILES.caKey, FILES.server, "server_ext", 1),
      sign(work, "client.csr", FILES.ca, FILES.caKey, FILES.client, "client_ext", 2),
      sign(work, "alice.csr", FILES.ca, FILES.caKey, FILES.alice, "client_ext", 3),
      sign(work, "other-server.csr", FILES.otherCa, FILES.otherCaKey, FILES.otherServer, "server_ext", 4),
      openssl(work, [
        "ca", "-batch", "-config", "openssl.cnf", "-notext", "-in", "expired.csr", "-cert", FILES.ca, "-keyfile", FILES.caKey,
        "-startdate", "20200101000000Z", "-enddate", "20210101000000Z", "-extensions", "server_ext", "-out", FILES.expired,
      ]),
    ]);
    writeFileSync(join(work, FILES.mismatch), await Bun.file(join(work, FILES.server)).text());

    for (const f of Object.values(FILES)) renameSync(join(work, f), join(dir, f));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return certs;
}
