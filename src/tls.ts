/**
 * Certificates and keys from files, checked at startup (and on reload) so that an expired,
 * mismatched or unreadable one is an error naming the file and the reason, never a surprise at
 * the first handshake.
 *
 * @module
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileBounded, type ReadFile } from "./limits.ts";

/** PEM contents for Bun's `tls` options. */
export interface TlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

/**
 * Reads a PEM certificate (or CA bundle) with `read` and checks that it parses and has not expired.
 *
 * @throws {Error} `"<path>": certificate expired on <date>` and the like.
 */
export function readCertificate(path: string, read: ReadFile = readFileBounded): string {
  const pem = read(path);
  if (!/-----BEGIN CERTIFICATE-----/.test(pem)) throw new Error(`${JSON.stringify(path)} holds no PEM certificate`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch (e) {
    throw new Error(`${JSON.stringify(path)}: not a valid certificate: ${e instanceof Error ? e.message : String(e)}`);
  }
  const now = Date.now();
  if (Date.parse(cert.validTo) < now) throw new Error(`${JSON.stringify(path)}: certificate expired on ${cert.validTo}`);
  if (Date.parse(cert.validFrom) > now) throw new Error(`${JSON.stringify(path)}: certificate not valid before ${cert.validFrom}`);
  return pem;
}

/** Reads a PEM private key with `read`. */
export function readKey(path: string, read: ReadFile = readFileBounded): string {
  const pem = read(path);
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) throw new Error(`${JSON.stringify(path)} holds no PEM private key`);
  return pem;
}

/**
 * Checks that `keyPem` is the private key of `certPem`.
 *
 * @throws {Error} naming both files when they do not belong together.
 */
export function checkKeyPair(certPem: string, certPath: string, keyPem: string, keyPath: string): void {
  let ok = false;
  try {
    ok = new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch (e) {
    throw new Error(`${JSON.stringify(keyPath)}: cannot use the key: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!ok) throw new Error(`${JSON.stringify(keyPath)} is not the private key of ${JSON.stringify(certPath)}`);
}

/** The reason of a TLS failure in a few words, for logs and the metrics' `reason` label. */
export function tlsReason(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && code !== "" && code !== "ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_REQUIRED") return code;
    const alert = /(TLSV1_ALERT_[A-Z_]+|SSLV3_ALERT_[A-Z_]+|CERTIFICATE_[A-Z_]+|[A-Z_]{6,})/.exec(err.message)?.[1];
    return alert ?? err.message.replace(/\s+/g, "_").slice(0, 60);
  }
  return String(err);
}
