import { describe, expect, test } from "bun:test";
import { parseEndpoint, parseEndpointList, parseHostPort, parseListenAddress } from "../../src/addresses.ts";
import { canonicalIP, checkSelfLoops } from "../../src/selfloop.ts";

describe("parseEndpoint", () => {
  const ok: [string, string, number, string, boolean][] = [
    ["127.0.0.1:2379", "127.0.0.1", 2379, "127.0.0.1:2379", false],
    ["http://10.0.0.1:2379", "10.0.0.1", 2379, "10.0.0.1:2379", false],
    ["https://10.0.0.1:2379", "10.0.0.1", 2379, "10.0.0.1:2379", true],
    ["HTTPS://10.0.0.1:2379/", "10.0.0.1", 2379, "10.0.0.1:2379", true],
    ["[::1]:2379", "::1", 2379, "[::1]:2379", false],
    ["https://[fc00::ccf0]:2379", "fc00::ccf0", 2379, "[fc00::ccf0]:2379", true],
    ["infra0.example.com:2379", "infra0.example.com", 2379, "infra0.example.com:2379", false],
    ["infra0.example.com.:2379", "infra0.example.com.", 2379, "infra0.example.com.:2379", false],
    ["localhost:1", "localhost", 1, "localhost:1", false],
    ["  127.0.0.1:65535 ", "127.0.0.1", 65535, "127.0.0.1:65535", false],
  ];
  for (const [input, host, port, address, tls] of ok) {
    test(`${JSON.stringify(input)} is ${address}${tls ? " (TLS)" : ""}`, () => expect(parseEndpoint(input)).toEqual({ host, port, address, tls }));
  }
  // The founding document's own `--endpoints=infra0.example.com,...` (found: "missing port"): etcd's client port.
  const defaulted: [string, string, string, boolean][] = [
    ["infra0.example.com", "infra0.example.com", "infra0.example.com:2379", false],
    ["https://infra0.example.com", "infra0.example.com", "infra0.example.com:2379", true],
    ["http://10.0.0.1/", "10.0.0.1", "10.0.0.1:2379", false],
    ["127.0.0.1", "127.0.0.1", "127.0.0.1:2379", false],
    ["[::1]", "::1", "[::1]:2379", false],
    ["https://[fc00::ccf0]", "fc00::ccf0", "[fc00::ccf0]:2379", true],
  ];
  for (const [input, host, address, tls] of defaulted) {
    test(`${JSON.stringify(input)} without a port is ${address}${tls ? " (TLS)" : ""}, marked as defaulted`, () => expect(parseEndpoint(input)).toEqual({ host, port: 2379, address, tls, defaultPort: true }));
  }
  const bad: [string, RegExp][] = [
    ["127.0.0.1:", /missing port in address "127.0.0.1:"/],
    ["127.0.0.1:0", /port 0 out of range 1..65535/],
    ["127.0.0.1:65536", /port 65536 out of range/],
    ["127.0.0.1:70000", /port 70000 out of range/],
    ["127.0.0.1:abc", /invalid port "abc"/],
    ["127.0.0.1:-1", /invalid port "-1"/],
    ["::1:2379", /IPv6 address must be in brackets/],
    ["::1", /IPv6 address must be in brackets/],
    ["[::1", /missing "]"/],
    ["[::1:2379", /missing "]"/],
    ["[nope]:2379", /invalid IPv6 address/],
    ["[::1]x:2379", /unexpected text after "]"/],
    ["256.1.1.1:2379", /invalid host "256.1.1.1"/],
    ["foo bar:2379", /invalid host/],
    [":2379", /missing host/],
    ["unix:///tmp/x.sock", /unsupported scheme "unix:\/\/"/],
    ["http://", /empty endpoint/],
    ["foo bar", /invalid host "foo bar" in address "foo bar"$/],
    ["https://foo bar", /invalid host "foo bar" in address "foo bar"$/],
  ];
  for (const [input, err] of bad) test(`rejects ${JSON.stringify(input)}`, () => expect(() => parseEndpoint(input)).toThrow(err));
});

describe("parseEndpointList", () => {
  test("splits commas and accumulates repeated flags in order", () => {
    expect(parseEndpointList(["a:1,b:2", "c:3"]).map((e) => e.address)).toEqual(["a:1", "b:2", "c:3"]);
  });
  test("trims spaces around items", () => {
    expect(parseEndpointList(["a:1, b:2"]).map((e) => e.address)).toEqual(["a:1", "b:2"]);
  });
  test("rejects an empty list", () => expect(() => parseEndpointList([""])).toThrow("no endpoints given"));
  test("rejects an empty item", () => expect(() => parseEndpointList(["a:1,,b:2"])).toThrow(/empty item/));
});

describe("parseHostPort (listen addresses)", () => {
  test("accepts IPv4, [IPv6] and hostnames", () => {
    expect(parseHostPort("0.0.0.0:23790").host).toBe("0.0.0.0");
    expect(parseHostPort("[::]:23790").host).toBe("::");
    expect(parseHostPort("localhost:23790").host).toBe("localhost");
  });
  test("keeps the scheme out: a listen address is host:port only", () => {
    expect(() => parseHostPort("http://127.0.0.1:1")).toThrow();
  });
});

describe("canonicalIP compares addresses as addresses (Go's IP.Equal)", () => {
  const cases: [string, string][] = [
    ["127.0.0.1", "127.0.0.1"],
    ["::ffff:127.0.0.1", "127.0.0.1"],
    ["::ffff:7f00:1", "127.0.0.1"],
    ["::FFFF:7F00:0001", "127.0.0.1"],
    ["0:0:0:0:0:ffff:7f00:1", "127.0.0.1"],
    ["0000:0000:0000:0000:0000:ffff:127.0.0.1", "127.0.0.1"],
    ["::ffff:0.0.0.0", "0.0.0.0"],
    ["::1", "0:0:0:0:0:0:0:1"],
    ["0:0:0:0:0:0:0:1", "0:0:0:0:0:0:0:1"],
    ["::", "0:0:0:0:0:0:0:0"],
    ["::0", "0:0:0:0:0:0:0:0"],
    ["fe80::1", "fe80:0:0:0:0:0:0:1"],
    ["FE80:0:0::0001", "fe80:0:0:0:0:0:0:1"],
    ["::7f00:1", "0:0:0:0:0:0:7f00:1"], // IPv4-compatible, not mapped: a different address
  ];
  for (const [ip, want] of cases) test(`${ip} -> ${want}`, () => expect(canonicalIP(ip)).toBe(want));
});

describe("the self-loop guard sees every spelling of the listen address", () => {
  const listen = (text: string) => [parseListenAddress(text)];
  const loops: [string, string][] = [
    ["127.0.0.1:23790", "[::ffff:7f00:1]:23790"],
    ["127.0.0.1:23790", "[::ffff:127.0.0.1]:23790"],
    ["127.0.0.1:23790", "[0:0:0:0:0:ffff:7f00:1]:23790"],
    ["[::1]:23790", "[0:0:0:0:0:0:0:1]:23790"],
    ["[::ffff:127.0.0.1]:23790", "127.0.0.1:23790"],
    ["0.0.0.0:23790", "127.0.0.2:23790"],
    ["[::]:23790", "[::ffff:127.0.0.1]:23790"],
    ["127.0.0.1:23790", "[::]:23790"],
  ];
  for (const [l, ep] of loops) {
    test(`--listen-addr=${l} --endpoints=${ep} is refused`, async () => {
      await expect(checkSelfLoops(listen(l), [parseEndpoint(ep)])).rejects.toThrow("should not resolve to the gateway listen addr");
    });
  }
  test("another port, or another address, is not a loop", async () => {
    await checkSelfLoops(listen("127.0.0.1:23790"), [parseEndpoint("[::ffff:7f00:1]:23791"), parseEndpoint("127.0.0.2:23790")]);
  });
});
