/**
 * Addresses as operators write them: endpoints (`host:port`, `[v6]:port`, with an optional
 * `http://`/`https://`) and listen addresses (also `unix:///path`). One parser for all of them.
 *
 * @module
 */
import { isIP } from "node:net";

/** A parsed `host:port`. `host` has no brackets; IPv6 literals are bracketed again in `address`. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
  /** `host:port`, or `[v6]:port`: the form used in logs and in `ready to proxy client requests`. */
  readonly address: string;
}

const HOSTNAME = /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;

/** etcd's client port: an endpoint given without a port uses it, as etcd's own tools do. */
export const ETCD_CLIENT_PORT = 2379;

const CONTROL_NAMES: Readonly<Record<string, string>> = { "\n": "line feed", "\r": "carriage return", "\t": "tab" };

/** The first control character of `text`, named (`U+000A (line feed)`), or null when it has none. */
function controlCharacter(text: string): string | null {
  const c = /[\u0000-\u001f\u007f]/.exec(text)?.[0];
  if (c === undefined) return null;
  const code = `U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
  const name = CONTROL_NAMES[c];
  return name === undefined ? code : `${code} (${name})`;
}

/**
 * Parses `host:port`, `[IPv6]:port` or `hostname:port`. The port must be 1..65535; it is required
 * unless `defaultPort` is given, which then stands in for a missing one (not for an empty `host:`).
 *
 * @throws {Error} naming what is wrong with `text`.
 * @example parseHostPort("[::1]:2379") // { host: "::1", port: 2379, address: "[::1]:2379" }
 * @example parseHostPort("[::1]", 2379) // the same
 */
export function parseHostPort(text: string, defaultPort?: number): HostPort {
  const q = JSON.stringify(text);
  const control = controlCharacter(text);
  if (control !== null) throw new Error(`control character ${control} in address ${q}`);
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw new Error(`missing "]" in address ${q}`);
    host = text.slice(1, close);
    if (isIP(host) !== 6) throw new Error(`invalid IPv6 address in ${q}`);
    const after = text.slice(close + 1);
    if (after === "" && defaultPort === undefined) throw new Error(`missing port in address ${q}`);
    if (after !== "" && !after.startsWith(":")) throw new Error(`unexpected text after "]" in address ${q}`);
    portText = after === "" ? String(defaultPort) : after.slice(1);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0 && defaultPort === undefined) throw new Error(`missing port in address ${q}`);
    host = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? String(defaultPort) : text.slice(colon + 1);
    if (host.includes(":")) throw new Error(`IPv6 address must be in brackets, as in "[::1]:2379", in ${q}`);
    if (host === "") throw new Error(`missing host in address ${q}`);
    if (/^[\d.]+$/.test(host) ? isIP(host) !== 4 : !HOSTNAME.test(host)) {
      throw new Error(`invalid host ${JSON.stringify(host)} in address ${q}`);
    }
  }
  return { host, port: parsePort(portText, q), address: formatHostPort(host, Number(portText)) };
}

function parsePort(text: string, q: string): number {
  if (text === "") throw new Error(`missing port in address ${q}`);
  if (!/^\d{1,5}$/.test(text)) throw new Error(`invalid port ${JSON.stringify(text)} in address ${q}`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw new Error(`port ${port} out of range 1..65535 in address ${q}`);
  return port;
}

/** `host:port`, bracketing IPv6 literals. */
export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Where the gateway accepts clients: a TCP address, or a unix socket path (`unix:///run/etcd.sock`). */
export type ListenAddress = { kind: "tcp"; tcp: HostPort; address: string } | { kind: "unix"; path: string; address: string };

/**
 * Parses one `--listen-addr`: `host:port`, `[IPv6]:port`, or `unix://` followed by an absolute path.
 *
 * @example parseListenAddress("unix:///run/etcd-gateway.sock") // { kind: "unix", path: "/run/etcd-gateway.sock", ... }
 */
export function parseListenAddress(text: string): ListenAddress {
  if (text.startsWith("unix:")) {
    const path = text.replace(/^unix:(\/\/)?/, "");
    if (!path.startsWith("/")) throw new Error(`unix socket path must be absolute in ${JSON.stringify(text)}`);
    // The kernel would cut the name at a NUL byte and create a different file.
    if (/[\u0000-\u001f\u007f]/.test(path)) throw new Error(`unix socket path holds a control character in ${JSON.stringify(text)}`);
    if (Buffer.byteLength(path) > 107) throw new Error(`unix socket path too long (max 107 bytes) in ${JSON.stringify(text)}`);
    return { kind: "unix", path, address: `unix://${path}` };
  }
  const tcp = parseHostPort(text);
  return { kind: "tcp", tcp, address: tcp.address };
}

/** An endpoint as discovery yields it: an address plus what RFC 2782 and TLS need. */
export interface EndpointSpec extends HostPort {
  /** Given as `https://` (or from an `_etcd-client-ssl` record): health checks use TLS. */
  readonly tls?: boolean;
  /** Given without a port, so on ETCD_CLIENT_PORT (the startup log says so). */
  readonly defaultPort?: boolean;
  /** SRV priority: lower is preferred. @default 0 */
  readonly priority?: number;
  /** SRV weight within a priority. @default 0 */
  readonly weight?: number;
  /** The IP to dial when the name was resolved by the gateway itself (`--dns-server`). */
  readonly dialHost?: string;
}

/**
 * Parses one `--endpoints` entry: an optional `http://` or `https://` scheme is stripped (as etcd
 * does), surrounding spaces are trimmed, a missing port is etcd's client port 2379 (also for
 * `https://`, as in etcd's own examples).
 *
 * @example parseEndpoint("https://10.0.0.1:2379") // { host: "10.0.0.1", port: 2379, tls: true, ... }
 * @example parseEndpoint("infra0.example.com") // { address: "infra0.example.com:2379", defaultPort: true, ... }
 */
export function parseEndpoint(text: string): EndpointSpec {
  let rest = text.trim();
  // A list with line breaks (ETCD_GATEWAY_ENDPOINTS="$(cat file)") is not read as one address.
  const control = controlCharacter(rest);
  if (control !== null) throw new Error(`control character ${control} in endpoint ${JSON.stringify(text)}; separate endpoints with commas`);
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(rest);
  let tls = false;
  if (scheme) {
    const name = scheme[1]!.toLowerCase();
    if (name !== "http" && name !== "https") {
      throw new Error(`unsupported scheme ${JSON.stringify(name + "://")} in endpoint ${JSON.stringify(text)}`);
    }
    tls = name === "https";
    rest = rest.slice(scheme[0].length).replace(/\/$/, "");
  }
  if (rest === "") throw new Error(`empty endpoint ${JSON.stringify(text)}`);
  const hp = parseHostPort(rest, ETCD_CLIENT_PORT);
  const defaulted = rest.startsWith("[") ? rest.endsWith("]") : !rest.includes(":");
  return defaulted ? { ...hp, tls, defaultPort: true } : { ...hp, tls };
}

/**
 * Splits the accumulated values of a repeatable, comma-separated `--endpoints` flag.
 *
 * @throws {Error} on an empty list or an empty item.
 * @example parseEndpointList(["a:1,b:2", "c:3"]).map((e) => e.address) // ["a:1", "b:2", "c:3"]
 */
export function parseEndpointList(values: readonly string[]): EndpointSpec[] {
  const items = values.flatMap((v) => v.split(","));
  if (items.every((i) => i.trim() === "")) throw new Error("no endpoints given");
  return items.map((item) => {
    if (item.trim() === "") throw new Error(`empty item in ${JSON.stringify(values.join(","))}`);
    return parseEndpoint(item);
  });
}
