/**
 * The admin endpoint's request-head parser, its Host check (issue 20: DNS rebinding) and answer
 * encoding (src/admin-http.ts), table-driven; the server's bounds themselves are checked against
 * the binary in test/e2e/admin.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { encodeReply, hostAllowed, parseHead, type Head, type HostRule } from "../../src/admin-http.ts";

const bytes = (s: string) => Buffer.from(s, "latin1");

describe("parseHead", () => {
  const req = (method: string, path: string, query = "", fromBrowser = false, host: string | null = "a"): Head => ({ method, path, query, fromBrowser, host });
  const cases: [string, string, Head | null][] = [
    ["a GET", "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", req("GET", "/metrics")],
    ["a HEAD, HTTP/1.0, no headers", "HEAD /healthz HTTP/1.0\r\n\r\n", req("HEAD", "/healthz", "", false, null)],
    ["the query is kept apart from the path", "GET /metrics?name[]=up HTTP/1.1\r\nHost: a\r\n\r\n", req("GET", "/metrics", "name[]=up")],
    ["absolute form: its authority stands for Host", "GET http://127.0.0.1:23791/status HTTP/1.1\r\nHost: evil.example\r\n\r\n", req("GET", "/status", "", false, "127.0.0.1:23791")],
    ["absolute form names the host even over HTTP/1.0", "GET http://evil.example/status HTTP/1.0\r\n\r\n", req("GET", "/status", "", false, "evil.example")],
    ["dot segments resolve as in a URL", "GET /x/../readyz HTTP/1.1\r\nHost: a\r\n\r\n", req("GET", "/readyz")],
    ["the Host header's name is case-blind, its value kept as sent", "GET /status HTTP/1.1\r\nhOsT:  Evil.Example:80 \r\n\r\n", req("GET", "/status", "", false, "Evil.Example:80")],
    ["an HTTP/1.1 request without Host is 400 (RFC 9112, 3.2)", "GET /status HTTP/1.1\r\nX: y\r\n\r\n", { refuse: 400 }],
    ["two Host headers are 400", "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", { refuse: 400 }],
    ["a Host that is not an authority is 400", "GET /status HTTP/1.1\r\nHost: a/b@c\r\n\r\n", { refuse: 400 }],
    ["an HTTP/1.0 Host is kept", "GET /status HTTP/1.0\r\nHost: [::1]:23791\r\n\r\n", req("GET", "/status", "", false, "[::1]:23791")],
    ["bare LF line ends", "GET /status HTTP/1.1\nHost: a\n\n", req("GET", "/status")],
    ["bytes after the head are ignored", "GET /status HTTP/1.1\r\nHost: a\r\n\r\nbody", req("GET", "/status")],
    ["incomplete: only the request line", "GET /metrics HTTP/1.1\r\n", null],
    ["incomplete: nothing yet", "", null],
    ["a POST goes to the route (which says 405 where it takes none)", "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", req("POST", "/metrics")],
    ["a POST with a bracketed endpoint and a query", "POST /members/[::1]:2379/drain?close-idle=true HTTP/1.1\r\nHost: a\r\n\r\n", req("POST", "/members/[::1]:2379/drain", "close-idle=true")],
    ["a browser's POST (Origin) is marked", "POST /members/a:1/drain HTTP/1.1\r\nHost: a\r\nOrigin: http://evil.example\r\n\r\n", req("POST", "/members/a:1/drain", "", true)],
    ["Sec-Fetch-Site marks it too, in any case", "POST /x HTTP/1.1\r\nHost: a\r\nsec-fetch-site: cross-site\r\n\r\n", req("POST", "/x", "", true)],
    ["a header value that says Origin does not", "POST /x HTTP/1.1\r\nHost: a\r\nX-Note: Origin: no\r\n\r\n", req("POST", "/x")],
    ["OPTIONS * is 405", "OPTIONS * HTTP/1.1\r\n\r\n", { refuse: 405 }],
    ["PUT is 405", "PUT /status HTTP/1.1\r\n\r\n", { refuse: 405 }],
    ["a lower-case get is another method: 405", "get /metrics HTTP/1.1\r\n\r\n", { refuse: 405 }],
    ["garbage is 400", "hello\r\n\r\n", { refuse: 400 }],
    ["HTTP/2.0 is 400", "GET / HTTP/2.0\r\n\r\n", { refuse: 400 }],
    ["two spaces is 400", "GET  /metrics HTTP/1.1\r\n\r\n", { refuse: 400 }],
    ["an unparsable absolute target is 400", "GET http://[/ HTTP/1.1\r\n\r\n", { refuse: 400 }],
  ];
  for (const [name, input, want] of cases) test(name, () => expect(parseHead(bytes(input), 8192)).toEqual(want));

  test("a head of exactly the limit parses; one byte more is 431, complete or not", () => {
    const line = "GET /healthz HTTP/1.1\r\nHost: a\r\nX: ";
    const exact = `${line}${"a".repeat(100 - line.length - 4)}\r\n\r\n`;
    expect(exact).toHaveLength(100);
    expect(parseHead(bytes(exact), 100)).toEqual({ method: "GET", path: "/healthz", query: "", fromBrowser: false, host: "a" });
    expect(parseHead(bytes(`${line}${"a".repeat(100 - line.length - 3)}\r\n\r\n`), 100)).toEqual({ refuse: 431 });
    expect(parseHead(bytes(`${line}${"a".repeat(200)}`), 100)).toEqual({ refuse: 431 });
    expect(parseHead(bytes(`${line}${"a".repeat(50)}`), 100)).toBeNull();
  });
});

describe("hostAllowed (a TCP admin address; issue 20, DNS rebinding)", () => {
  const rule: HostRule = { names: new Set(["gw.internal", "node1"]), any: false };
  const cases: [string, string | null, boolean][] = [
    ["no Host (HTTP/1.0)", null, true],
    ["an IPv4 literal with a port", "127.0.0.1:23791", true],
    ["an IPv4 literal of another address (any IP: rebinding needs a name)", "10.1.2.3", true],
    ["IPv4 as a URL writes it short", "127.1:23791", true],
    ["IPv4 in hex, as a URL reads it", "0x7f.0.0.1", true],
    ["an IPv6 literal", "[::1]:23791", true],
    ["localhost", "localhost:23791", true],
    ["LOCALHOST with a final dot", "LOCALHOST.:23791", true],
    ["a name of the rule, any case, any port", "GW.Internal:8080", true],
    ["another name of the rule, with a final dot", "node1.", true],
    ["a rebinding page's own name", "evil.example:23791", false],
    ["a name that starts with an allowed one", "gw.internal.evil.example", false],
    ["a name ending in localhost", "evil.localhost", false],
    ["a name that looks like an address", "127.0.0.1.nip.io:23791", false],
    ["an empty Host", "", false],
    ["userinfo smuggled in", "127.0.0.1@evil.example", false],
    ["a path smuggled in", "127.0.0.1/evil", false],
    ["not an IP address: five parts", "1.2.3.4.5", false],
  ];
  for (const [name, host, want] of cases) test(name, () => expect(hostAllowed(host, rule)).toBe(want));

  test("`*` in --admin-host-whitelist takes any name", () => {
    expect(hostAllowed("evil.example", { names: new Set(), any: true })).toBe(true);
  });
});

describe("encodeReply", () => {
  test("status line, content type and length, Connection: close, then the body", () => {
    const text = Buffer.from(encodeReply({ status: 200, body: "ok\n" }, false)).toString();
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\nContent-Type: text\/plain;charset=utf-8\r\nContent-Length: 3\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\nConnection: close\r\n\r\nok\n$/);
  });

  test("HEAD: the same headers and no body; extra headers go in", () => {
    const text = Buffer.from(encodeReply({ status: 405, body: "no\n", headers: { Allow: "GET, HEAD" } }, true)).toString();
    expect(text).toStartWith("HTTP/1.1 405 Method Not Allowed\r\n");
    expect(text).toContain("\r\nContent-Length: 3\r\nAllow: GET, HEAD\r\n");
    expect(text).toEndWith("\r\n\r\n");
  });

  test("Content-Length counts UTF-8 bytes", () => {
    expect(Buffer.from(encodeReply({ status: 200, body: "é" }, false)).toString()).toContain("Content-Length: 2\r\n");
  });
});
