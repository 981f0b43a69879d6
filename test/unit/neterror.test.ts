/**
 * src/neterror.ts: errors in Go's words. A table of error objects as Bun, node:net, fetch, the DNS
 * client and node:fs throw them (their shapes measured in docs/bun.md, trap 6) against the text etcd
 * would log; then the real thing: a refused Bun.connect, node:net connect and fetch each read
 * `dial tcp 127.0.0.1:P: connect: connection refused`.
 */
import { describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { DnsError } from "../../src/discovery/dns.ts";
import { dialErrorText, fileErrorText, lookupErrorText, readErrorText, requestErrorText, statusErrorText, tlsErrorText, type NetTarget } from "../../src/neterror.ts";
import { freePort } from "../support/net.ts";

const T: NetTarget = { network: "tcp", address: "127.0.0.1:12399" };
const V6: NetTarget = { network: "tcp", address: "[::1]:2379" };
const U: NetTarget = { network: "unix", address: "/run/etcd.sock" };
const err = (fields: Record<string, unknown>, message = "Failed to connect") => Object.assign(new Error(message), fields);
/** What fetch rejects with (a TypeError with Bun's advice in its message). */
const fetchErr = (code: string, message: string) => Object.assign(new TypeError(`${code}: ${message}`), { code, errno: 0, path: "http://127.0.0.1:12399/version" });

describe("dialErrorText", () => {
  const rows: [string, unknown, NetTarget, { outOfFds?: boolean; serverName?: string }, string][] = [
    ["Bun.connect refused", err({ code: "ECONNREFUSED", errno: -111, syscall: "connect" }), T, {}, "dial tcp 127.0.0.1:12399: connect: connection refused"],
    ["Bun.connect refused, IPv6", err({ code: "ECONNREFUSED", errno: -111, syscall: "connect" }), V6, {}, "dial tcp [::1]:2379: connect: connection refused"],
    ["Bun.connect refused while out of descriptors", err({ code: "ECONNREFUSED", errno: -111, syscall: "connect" }), T, { outOfFds: true }, "dial tcp 127.0.0.1:12399: socket: too many open files"],
    ["fetch refused", fetchErr("ECONNREFUSED", "Unable to connect. Is the computer able to access the url?"), T, {}, "dial tcp 127.0.0.1:12399: connect: connection refused"],
    ["fetch out of descriptors", fetchErr("EMFILE", "Was there a typo in the url or port?"), T, {}, "dial tcp 127.0.0.1:12399: socket: too many open files"],
    ["node:net refused", err({ code: "ECONNREFUSED", errno: -111, syscall: "connect", address: "127.0.0.1", port: 12399 }, "connect ECONNREFUSED 127.0.0.1:12399"), T, {}, "dial tcp 127.0.0.1:12399: connect: connection refused"],
    ["no route to host", err({ code: "EHOSTUNREACH", errno: -113, syscall: "connect" }, "connect EHOSTUNREACH 10.0.1.10:2379"), T, {}, "dial tcp 127.0.0.1:12399: connect: no route to host"],
    ["network unreachable", err({ code: "ENETUNREACH", errno: -101, syscall: "connect" }), T, {}, "dial tcp 127.0.0.1:12399: connect: network is unreachable"],
    ["the kernel's connect timeout", err({ code: "ETIMEDOUT", errno: -110, syscall: "connect" }), T, {}, "dial tcp 127.0.0.1:12399: connect: connection timed out"],
    ["a timeout of ours", Object.assign(new Error("The operation timed out."), { name: "TimeoutError" }), T, {}, "dial tcp 127.0.0.1:12399: i/o timeout"],
    ["unix path missing", err({ code: "ENOENT", errno: -2, syscall: "connect" }), U, {}, "dial unix /run/etcd.sock: connect: no such file or directory"],
    ["unix path not ours", err({ code: "EACCES", errno: -13, syscall: "connect" }), U, {}, "dial unix /run/etcd.sock: connect: permission denied"],
    ["name not found (Bun.connect)", err({ code: "ENOTFOUND", errno: 4, syscall: "getaddrinfo", hostname: "etcd-1.example" }, "getaddrinfo ENOTFOUND etcd-1.example"), { network: "tcp", address: "etcd-1.example:2379" }, {}, "dial tcp: lookup etcd-1.example: no such host"],
    ["name not found, no hostname given", err({ code: "ENOTFOUND", syscall: "getaddrinfo" }, "getaddrinfo ENOTFOUND"), { network: "tcp", address: "etcd-1.example:2379" }, {}, "dial tcp: lookup etcd-1.example: no such host"],
    ["fetch to a server that is not TLS", fetchErr("EPROTO", "The TLS handshake failed. Does the server speak TLS on this port?"), T, {}, "tls: handshake failure"],
    ["fetch, unknown CA", Object.assign(new TypeError("unable to verify the first certificate"), { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" }), T, {}, "tls: failed to verify certificate: x509: certificate signed by unknown authority"],
    ["fetch, wrong name", Object.assign(new TypeError("ERR_TLS_CERT_ALTNAME_INVALID fetching"), { code: "ERR_TLS_CERT_ALTNAME_INVALID" }), T, { serverName: "etcd.example" }, "tls: failed to verify certificate: x509: certificate is not valid for etcd.example"],
    ["an unknown code keeps the code, not Bun's advice", fetchErr("EWHATEVER", "Was there a typo in the url or port?"), T, {}, "dial tcp 127.0.0.1:12399: EWHATEVER"],
    ["no code at all keeps the message", new Error("something odd"), T, {}, "dial tcp 127.0.0.1:12399: something odd"],
  ];
  for (const [name, e, target, opts, want] of rows) test(name, () => expect(dialErrorText(e, target, opts)).toBe(want));
});

describe("tlsErrorText", () => {
  const rows: [string, unknown, string][] = [
    ["self-signed", { code: "DEPTH_ZERO_SELF_SIGNED_CERT" }, "tls: failed to verify certificate: x509: certificate signed by unknown authority"],
    ["issuer unknown", { code: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" }, "tls: failed to verify certificate: x509: certificate signed by unknown authority"],
    ["expired", { code: "CERT_HAS_EXPIRED" }, "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"],
    ["not yet valid", { code: "CERT_NOT_YET_VALID" }, "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"],
    ["the member wants a client certificate", { code: "ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_REQUIRED" }, "remote error: tls: certificate required"],
    ["the member does not know our CA", err({ code: "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA" }, "tlsv1 alert unknown ca"), "remote error: tls: unknown certificate authority"],
    ["the member rejects our certificate", err({}, "SSLV3_ALERT_BAD_CERTIFICATE"), "remote error: tls: bad certificate"],
    ["plaintext answer to a ClientHello", err({ code: "ERR_SSL_WRONG_VERSION_NUMBER" }, "wrong version number"), "tls: first record does not look like a TLS handshake"],
    ["not authorized, no code", new Error("certificate not authorized"), "tls: failed to verify certificate: x509: certificate not authorized"],
  ];
  for (const [name, e, want] of rows) test(name, () => expect(tlsErrorText(e)).toBe(want));
});

describe("readErrorText, requestErrorText, statusErrorText, lookupErrorText, fileErrorText", () => {
  test("a reset on an open connection", () => {
    expect(readErrorText(err({ code: "ECONNRESET" }, "ECONNRESET"), T)).toBe("read tcp 127.0.0.1:12399: read: connection reset by peer");
    expect(readErrorText(err({ code: "ECONNRESET" }, "ECONNRESET"), T, "127.0.0.1:50000")).toBe("read tcp 127.0.0.1:50000->127.0.0.1:12399: read: connection reset by peer");
    expect(readErrorText(err({ code: "EPIPE" }, "EPIPE: broken pipe, read"), T)).toBe("write tcp 127.0.0.1:12399: write: broken pipe");
  });
  test("a request whose connection failed reads as the dial; one under way names the request", () => {
    const url = "http://127.0.0.1:12399/version";
    expect(requestErrorText(fetchErr("ECONNREFUSED", "Unable to connect. Is the computer able to access the url?"), "GET", url)).toBe("dial tcp 127.0.0.1:12399: connect: connection refused");
    expect(requestErrorText(fetchErr("ECONNREFUSED", "Unable to connect."), "GET", "https://etcd.example/version")).toBe("dial tcp etcd.example:443: connect: connection refused");
    expect(requestErrorText(Object.assign(new Error("The operation timed out."), { name: "TimeoutError" }), "POST", url, { timeoutMs: 1000 })).toBe(`Post "${url}": context deadline exceeded (timeout 1s)`);
    expect(requestErrorText(fetchErr("ECONNRESET", "The socket connection was closed unexpectedly."), "GET", url)).toBe(`Get "${url}": connection closed before a reply (EOF or reset)`);
  });
  test("an HTTP failure: the request, the status line and the body on one line", () => {
    expect(statusErrorText("POST", "http://127.0.0.1:2379/v3/maintenance/status", 503, "not\nready\n")).toBe('Post "http://127.0.0.1:2379/v3/maintenance/status": 503 Service Unavailable: not ready');
    expect(statusErrorText("GET", "http://127.0.0.1:2379/version", 599, "")).toBe('Get "http://127.0.0.1:2379/version": 599');
    expect(statusErrorText("GET", "http://h:1/x", 500, "y".repeat(200))).toBe(`Get "http://h:1/x": 500 Internal Server Error: ${"y".repeat(117)}...`);
  });
  test("DNS failures as Go's DNSError", () => {
    const dns = (code: ConstructorParameters<typeof DnsError>[0]) => new DnsError(code, "10.0.0.2:53", "_etcd-client._tcp.example.com", "SRV", "why");
    expect(lookupErrorText(dns("ENOTFOUND"))).toBe("lookup _etcd-client._tcp.example.com on 10.0.0.2:53: no such host");
    expect(lookupErrorText(dns("ENODATA"))).toBe("lookup _etcd-client._tcp.example.com on 10.0.0.2:53: no such host");
    expect(lookupErrorText(dns("ESERVFAIL"))).toBe("lookup _etcd-client._tcp.example.com on 10.0.0.2:53: server misbehaving");
    expect(lookupErrorText(dns("ETIMEOUT"))).toBe("lookup _etcd-client._tcp.example.com on 10.0.0.2:53: i/o timeout");
    expect(lookupErrorText(err({ code: "ENOTFOUND", syscall: "getaddrinfo", hostname: "nonexistent.invalid" }, "getaddrinfo ENOTFOUND nonexistent.invalid"))).toBe("lookup nonexistent.invalid: no such host");
  });
  test("files as Go's PathError", () => {
    expect(fileErrorText(err({ code: "ENOENT" }, "ENOENT: no such file or directory, open '/x'"), "open", "/etc/etcd-gateway/config.yaml")).toBe("open /etc/etcd-gateway/config.yaml: no such file or directory");
    expect(fileErrorText(err({ code: "EISDIR" }, "EISDIR"), "read", "/")).toBe("read /: is a directory");
  });
});

describe("the real errors of a refused port", () => {
  test("Bun.connect, node:net and fetch all read `dial tcp 127.0.0.1:P: connect: connection refused`", async () => {
    const port = freePort();
    const target: NetTarget = { network: "tcp", address: `127.0.0.1:${port}` };
    const want = `dial tcp 127.0.0.1:${port}: connect: connection refused`;
    const bun = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } }).then(() => null, (e: unknown) => e);
    const net = await new Promise((r) => connect({ host: "127.0.0.1", port }).once("error", r));
    const fetched = await fetch(`http://127.0.0.1:${port}/version`).then(() => null, (e: unknown) => e);
    expect(dialErrorText(bun, target)).toBe(want);
    expect(dialErrorText(net, target)).toBe(want);
    expect(requestErrorText(fetched, "GET", `http://127.0.0.1:${port}/version`)).toBe(want);
  });
});
