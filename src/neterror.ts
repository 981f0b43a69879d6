/**
 * Error text in Go's words, as etcd (a Go program) and its gateway write it: the one mapping from
 * what Bun, node:net, fetch, the gateway's DNS client and the file system throw to what logs,
 * member reasons (`/status`, `etcd-gateway status`, `deactivated endpoint`) and startup errors say.
 *
 * | what failed | text |
 * | --- | --- |
 * | a dial | `dial tcp 127.0.0.1:2379: connect: connection refused`, `dial tcp 10.0.1.10:2379: i/o timeout` |
 * | a dial, out of descriptors | `dial tcp 127.0.0.1:2379: socket: too many open files` |
 * | a name | `dial tcp: lookup etcd-1.example: no such host`; DNS: `lookup NAME on SERVER: no such host` |
 * | a read | `read tcp 127.0.0.1:2379: read: connection reset by peer` |
 * | TLS | `tls: failed to verify certificate: x509: certificate signed by unknown authority` |
 * | an HTTP request | the dial's text when the connection failed; else `Get "http://127.0.0.1:2379/version": 503 Service Unavailable: <body>`, `…: context deadline exceeded (timeout 1s)` |
 * | a file | `open /etc/etcd-gateway/config.yaml: no such file or directory` |
 *
 * Bun's phrasing ("Failed to connect", "Unable to connect. Is the computer able to access the
 * url?", "Was there a typo in the url or port?") never passes through. Bun reports most connect
 * failures as ECONNREFUSED (docs/bun.md, trap 6): a dial is only called "refused" because Bun says
 * so, and "too many open files" only when the caller found the process out of descriptors.
 *
 * @module
 */
import { STATUS_CODES } from "node:http";
import { formatDuration } from "./duration.ts";

/** Go's text (syscall.Errno) of the errno names that a dial, a read or a file open can give. */
const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset by peer",
  ECONNABORTED: "software caused connection abort",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "no route to host",
  ENETUNREACH: "network is unreachable",
  EHOSTDOWN: "host is down",
  ENETDOWN: "network is down",
  EADDRINUSE: "address already in use",
  EADDRNOTAVAIL: "cannot assign requested address",
  EAFNOSUPPORT: "address family not supported by protocol",
  EPIPE: "broken pipe",
  ENOTCONN: "transport endpoint is not connected",
  EMFILE: "too many open files",
  ENFILE: "too many open files in system",
  ENOBUFS: "no buffer space available",
  ENOMEM: "cannot allocate memory",
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EISDIR: "is a directory",
  ENOTDIR: "not a directory",
  ELOOP: "too many levels of symbolic links",
  ENAMETOOLONG: "file name too long",
  ENOSPC: "no space left on device",
  EROFS: "read-only file system",
  EIO: "input/output error",
  EEXIST: "file exists",
  EINVAL: "invalid argument",
  EAGAIN: "resource temporarily unavailable",
  ENXIO: "no such device or address",
};

/** Where a network error happened: `tcp` and `host:port` (brackets around IPv6), or `unix` and a path. */
export interface NetTarget {
  readonly network: "tcp" | "unix";
  readonly address: string;
}

/** An error's `code`, when it has a string one. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code !== "" ? code : undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Go's text of an errno name (`ECONNREFUSED` -> `connection refused`), or undefined for one it does not know. */
export function errnoText(code: string): string | undefined {
  return ERRNO_TEXT[code];
}

/** A timeout of the gateway's own (an aborted fetch, a DOMException TimeoutError). */
function isTimeout(err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name;
  return name === "TimeoutError" || codeOf(err) === "ETIMEOUT";
}

/** A name that did not resolve: getaddrinfo's ENOTFOUND / EAI_* (Bun: DNS_*), with the name when known. */
function lookupFailure(err: unknown): { host: string | undefined; text: string } | undefined {
  const code = codeOf(err);
  const syscall = (err as { syscall?: unknown } | null)?.syscall;
  if (code === undefined || (syscall !== "getaddrinfo" && !/^(ENOTFOUND|EAI_|DNS_)/.test(code))) return undefined;
  const hostname = (err as { hostname?: unknown }).hostname;
  const host = typeof hostname === "string" ? hostname : undefined;
  const text = /ENOTFOUND|NONAME|NODATA/.test(code) ? "no such host" : /AGAIN|TIMEOUT/.test(code) ? "i/o timeout" : "server misbehaving";
  return { host, text };
}

/** A TLS failure: OpenSSL's verification codes, Bun's ERR_TLS_* / ERR_SSL_* codes and alerts, EPROTO. */
function isTls(err: unknown): boolean {
  const code = codeOf(err) ?? "";
  return /^(ERR_TLS_|ERR_SSL_|EPROTO$)|CERT|UNABLE_TO_|SELF_SIGNED|HOSTNAME_MISMATCH|_ALERT_/.test(code) || /_ALERT_|WRONG_VERSION_NUMBER/.test(messageOf(err));
}

const UNKNOWN_AUTHORITY = /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE|CERT_CHAIN_TOO_LONG)$/;

/** What the peer's TLS alert said, in Go's `remote error: tls: …` words. */
const ALERTS: [RegExp, string][] = [
  [/CERTIFICATE_REQUIRED/, "certificate required"],
  [/UNKNOWN_CA/, "unknown certificate authority"],
  [/BAD_CERTIFICATE/, "bad certificate"],
  [/CERTIFICATE_EXPIRED/, "expired certificate"],
  [/CERTIFICATE_UNKNOWN/, "unknown certificate"],
  [/PROTOCOL_VERSION/, "protocol version not supported"],
  [/NO_APPLICATION_PROTOCOL/, "no application protocol"],
  [/HANDSHAKE_FAILURE/, "handshake failure"],
];

/**
 * A TLS failure in Go's crypto/tls words: `tls: failed to verify certificate: x509: …` for a
 * certificate that does not verify, `remote error: tls: …` for the peer's alert.
 *
 * @example tlsErrorText({ code: "CERT_HAS_EXPIRED" }) // "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"
 */
export function tlsErrorText(err: unknown, serverName?: string): string {
  const code = codeOf(err) ?? "";
  const verify = (why: string) => `tls: failed to verify certificate: x509: ${why}`;
  if (UNKNOWN_AUTHORITY.test(code)) return verify("certificate signed by unknown authority");
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return verify("certificate has expired or is not yet valid");
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID" || code === "HOSTNAME_MISMATCH") return verify(serverName === undefined ? "certificate is not valid for the server name" : `certificate is not valid for ${serverName}`);
  if (code === "CERT_REVOKED") return verify("certificate has been revoked");
  const said = `${code} ${messageOf(err)}`;
  for (const [alert, text] of ALERTS) if (alert.test(said)) return `remote error: tls: ${text}`;
  if (/WRONG_VERSION_NUMBER|HTTP_REQUEST|PACKET_LENGTH_TOO_LONG/.test(said)) return "tls: first record does not look like a TLS handshake";
  if (code === "EPROTO") return "tls: handshake failure";
  if (/not authorized/.test(said)) return verify("certificate not authorized");
  return `tls: ${code !== "" ? code : messageOf(err)}`;
}

/** Text of an error that has no errno: its code, made readable, else its message. */
function otherText(err: unknown): string {
  const code = codeOf(err);
  const message = messageOf(err);
  if (code === undefined) return message;
  // Bun's own advice ("Is the computer able to access the url?") is not Go's and not ours.
  return /^E[A-Z]+: /.test(message) || message === "Failed to connect" ? code : message;
}

/**
 * A failed dial in Go's `net.OpError` words.
 *
 * `outOfFds`: the caller found the process out of descriptors, so a refusal is ours (Bun reports
 * EMFILE as ECONNREFUSED, docs/bun.md, trap 6). `serverName`: the name a certificate was checked against.
 *
 * @example dialErrorText({ code: "ECONNREFUSED" }, { network: "tcp", address: "127.0.0.1:2379" }) // "dial tcp 127.0.0.1:2379: connect: connection refused"
 */
export function dialErrorText(err: unknown, target: NetTarget, opts: { outOfFds?: boolean; serverName?: string } = {}): string {
  const at = `dial ${target.network} ${target.address}`;
  if (isTimeout(err)) return `${at}: i/o timeout`;
  const lookup = lookupFailure(err);
  if (lookup !== undefined) return `dial ${target.network}: lookup ${lookup.host ?? target.address.replace(/:\d+$/, "")}: ${lookup.text}`;
  if (isTls(err)) return tlsErrorText(err, opts.serverName);
  const code = codeOf(err);
  if (opts.outOfFds === true && (code === "ECONNREFUSED" || code === undefined)) return `${at}: socket: too many open files`;
  if (code === "EMFILE" || code === "ENFILE") return `${at}: socket: ${errnoText(code)}`;
  const text = code === undefined ? undefined : errnoText(code);
  return text === undefined ? `${at}: ${otherText(err)}` : `${at}: connect: ${text}`;
}

/** A dial that the gateway gave up on after its connect timeout (Go's DialTimeout says the same). */
export function dialTimeoutText(target: NetTarget): string {
  return `dial ${target.network} ${target.address}: i/o timeout`;
}

/**
 * An established connection that failed (a reset, a broken pipe), in Go's words; `local` is the
 * gateway's end when known.
 *
 * @example readErrorText({ code: "ECONNRESET" }, { network: "tcp", address: "127.0.0.1:2379" }) // "read tcp 127.0.0.1:2379: read: connection reset by peer"
 */
export function readErrorText(err: unknown, target: NetTarget, local?: string): string {
  const code = codeOf(err);
  const op = code === "EPIPE" ? "write" : "read";
  const text = code === undefined ? undefined : errnoText(code);
  const at = `${op} ${target.network} ${local === undefined ? "" : `${local}->`}${target.address}`;
  return `${at}: ${text === undefined ? otherText(err) : `${op}: ${text}`}`;
}

/** `Get`, `Post`: Go's url.Error writes the method so. */
function goMethod(method: string): string {
  return method.charAt(0).toUpperCase() + method.slice(1).toLowerCase();
}

/** `host:port` of an http(s) URL, with the scheme's port when the URL leaves it out. */
function urlTarget(url: string): NetTarget {
  try {
    const u = new URL(url);
    return { network: "tcp", address: `${u.hostname}:${u.port !== "" ? u.port : u.protocol === "https:" ? "443" : "80"}` };
  } catch {
    return { network: "tcp", address: url };
  }
}

/**
 * A failed HTTP request (a fetch that rejected). When the connection itself failed (refused, name,
 * TLS) the text is the dial's alone, the same whether a health check or a client's dial found it:
 * `dial tcp 127.0.0.1:2379: connect: connection refused`. When the request was under way (no
 * answer within `timeoutMs`, the connection closed before the reply) it is Go's `url.Error`:
 * `Get "URL": context deadline exceeded (timeout 1s)`.
 */
export function requestErrorText(err: unknown, method: string, url: string, opts: { timeoutMs?: number; outOfFds?: boolean } = {}): string {
  const prefix = `${goMethod(method)} ${JSON.stringify(url)}: `;
  if (opts.timeoutMs !== undefined || isTimeout(err)) {
    return `${prefix}context deadline exceeded${opts.timeoutMs === undefined ? "" : ` (timeout ${formatDuration(opts.timeoutMs)})`}`;
  }
  // fetch says ECONNRESET for a connection closed (FIN) before a reply as well as for a reset.
  if (codeOf(err) === "ECONNRESET") return `${prefix}connection closed before a reply (EOF or reset)`;
  return dialErrorText(err, urlTarget(url), opts);
}

/**
 * An HTTP answer that is a failure: `Get "URL": 503 Service Unavailable: <body>` (the body on one
 * line, cut at 120 characters).
 */
export function statusErrorText(method: string, url: string, status: number, body: string): string {
  const t = body.replace(/\s+/g, " ").trim();
  const text = t.length > 120 ? `${t.slice(0, 117)}...` : t;
  const phrase = STATUS_CODES[status];
  return `${goMethod(method)} ${JSON.stringify(url)}: ${status}${phrase === undefined ? "" : ` ${phrase}`}${text === "" ? "" : `: ${text}`}`;
}

/** Go's words for the gateway's DNS client's codes (src/discovery/dns.ts). */
const DNS_TEXT: Record<string, string> = {
  ENOTFOUND: "no such host",
  ENODATA: "no such host",
  ESERVFAIL: "server misbehaving",
  EREFUSED: "server misbehaving",
  ETIMEOUT: "i/o timeout",
  ECONNREFUSED: "connection refused",
  EBADRESP: "cannot unmarshal DNS message",
};

/**
 * A failed name lookup in Go's `net.DNSError` words: `lookup NAME on SERVER: no such host`. Takes
 * the gateway's DNS client's errors (code, `hostname`, `server`) and getaddrinfo's.
 */
export function lookupErrorText(err: unknown, name?: string): string {
  const e = err as { hostname?: unknown; server?: unknown } | null;
  const host = typeof e?.hostname === "string" ? e.hostname : name;
  const on = typeof e?.server === "string" ? ` on ${e.server}` : "";
  const code = codeOf(err);
  const text = (code === undefined ? undefined : DNS_TEXT[code]) ?? lookupFailure(err)?.text ?? otherText(err);
  return `lookup ${host ?? "?"}${on}: ${text}`;
}

/**
 * A file that could not be opened or read, in Go's `os.PathError` words.
 *
 * @example fileErrorText({ code: "ENOENT" }, "open", "/etc/etcd-gateway/config.yaml") // "open /etc/etcd-gateway/config.yaml: no such file or directory"
 */
export function fileErrorText(err: unknown, op: "open" | "read" | "write", path: string): string {
  const code = codeOf(err);
  const text = code === undefined ? undefined : errnoText(code);
  return `${op} ${path}: ${text ?? otherText(err)}`;
}
