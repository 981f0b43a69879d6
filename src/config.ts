/**
 * The flags of `etcd-gateway start`, their defaults, and their validation into `GatewayOptions`.
 * One table (`START_FLAGS`) feeds the help text, the strict argument parser and the README.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { readEndpointsFile } from "./discovery/refresh.ts";
import { errorText } from "./log.ts";
import { CHECK_KINDS } from "./checks.ts";
import { checkKeyPair, readCertificate, readKey, type TlsFiles } from "./tls.ts";
import { formatDuration, parseDuration } from "./duration.ts";
import type { HealthOptions } from "./health.ts";
import { parseEndpointList, parseHostPort, parseListenAddress, type EndpointSpec, type HostPort, type ListenAddress } from "./endpoints.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "./log.ts";
import { POLICY_NAMES, type PolicyName } from "./select.ts";

export interface FlagSpec {
  readonly type: "string" | "boolean";
  readonly description: string;
  readonly default?: string | boolean;
  readonly valueHint?: string;
  /** Repeated occurrences accumulate (comma-separated lists too), as pflag's string slices do. */
  readonly repeatable?: boolean;
}

/** Every flag of `etcd-gateway start`. The first seven are `etcd gateway start`'s, same names and defaults. */
export const START_FLAGS = {
  config: { type: "string", valueHint: "path", description: "YAML file whose keys are these flag names; precedence: flags > ETCD_GATEWAY_* environment > file > defaults; re-read on SIGHUP" },
  "listen-addr": { type: "string", default: "127.0.0.1:23790", valueHint: "host:port", repeatable: true, description: "address to accept client connections on (IPv4, [IPv6]:port, hostname:port, or unix:///path); repeatable" },
  "listen-socket-mode": { type: "string", default: "0660", valueHint: "octal", description: "file mode of unix socket listeners" },
  "reuse-port": { type: "boolean", default: true, description: "listen with SO_REUSEPORT, so a new gateway can start on the same address while the old one drains (zero-downtime restart)" },
  "max-connections": { type: "string", default: "0", valueHint: "N", description: "client connections at most; at the limit the gateway stops accepting (new connects are refused) until one closes (0 = unlimited)" },
  "idle-timeout": { type: "string", default: "0", valueHint: "duration", description: "close a proxied connection with no bytes either way for this long (0 = off: etcd watches are idle for long periods)" },
  endpoints: { type: "string", default: "127.0.0.1:2379", valueHint: "host:port,...", repeatable: true, description: "comma-separated etcd cluster endpoints; repeatable; http:// and https:// are stripped" },
  "discovery-srv": { type: "string", valueHint: "domain", description: "DNS domain used to bootstrap cluster endpoints through SRV records (_etcd-client-ssl._tcp and _etcd-client._tcp), refreshed on their TTL" },
  "discovery-srv-name": { type: "string", valueHint: "name", description: "service name to query when using DNS discovery" },
  "insecure-discovery": { type: "boolean", default: false, description: "accept SRV records that are insecure or susceptible to man-in-the-middle attacks" },
  "trusted-ca-file": { type: "string", valueHint: "path", description: "path to the client server TLS CA file for verifying the discovered endpoints when discovery-srv is provided" },
  "discovery-refresh-min": { type: "string", default: "5s", valueHint: "duration", description: "shortest time between SRV refreshes (the records' TTL is clamped to this range)" },
  "discovery-refresh-max": { type: "string", default: "5m", valueHint: "duration", description: "longest time between SRV refreshes" },
  "dns-server": { type: "string", valueHint: "host:port", description: "DNS server for SRV records and their targets' addresses (default: the first nameserver of /etc/resolv.conf); targets are then dialled by IP" },
  "endpoints-auto-sync-interval": { type: "string", default: "0", valueHint: "duration", description: "ask a member for the member list this often and use the voting members' client URLs as endpoints (0 = off)" },
  "endpoints-file": { type: "string", valueHint: "path", description: "read the endpoints from this file (commas, spaces or lines; # comments) instead of --endpoints; re-read on SIGHUP" },
  "retry-delay": { type: "string", default: "1m0s", valueHint: "duration", description: "duration of delay before retrying failed endpoints (0 means 5m, as etcd)" },
  "connect-timeout": { type: "string", default: "1s", valueHint: "duration", description: "how long one dial to an endpoint may take before the next endpoint is tried" },
  "drain-timeout": { type: "string", default: "10s", valueHint: "duration", description: "on SIGTERM/SIGINT, how long open connections may finish before they are closed" },
  policy: { type: "string", default: "sticky", valueHint: POLICY_NAMES.join("|"), description: "endpoint selection: sticky (one random endpoint until it fails) or round-robin (per connection, like etcd's gateway)" },
  "health-check": { type: "string", default: "etcd", valueHint: CHECK_KINDS.join("|"), description: "active health check: etcd (/readyz, or /health + status: leader, not a learner, no alarm), health (/health), tcp (connect), none" },
  "health-interval": { type: "string", default: "2s", valueHint: "duration", description: "time between health checks of a member (jittered; faster while a member changes state)" },
  "health-timeout": { type: "string", default: "1s", valueHint: "duration", description: "bound on one health check" },
  "health-rise": { type: "string", default: "2", valueHint: "N", description: "passing checks in a row that bring a down member up" },
  "health-fall": { type: "string", default: "3", valueHint: "N", description: "failing checks, or failed dials, in a row that take a member down (eject it)" },
  "health-cacert": { type: "string", valueHint: "path", description: "CA bundle to verify members' TLS certificates in health checks (checks then use https)" },
  "health-cert": { type: "string", valueHint: "path", description: "client certificate for health checks of members with client-cert auth" },
  "health-key": { type: "string", valueHint: "path", description: "key of --health-cert" },
  "upstream-tls": { type: "boolean", default: false, description: "speak TLS to the members with the gateway's own identity (clients speak plaintext to the gateway)" },
  "upstream-cacert": { type: "string", valueHint: "path", description: "CA bundle to verify members' certificates with --upstream-tls (default: the system CAs)" },
  "upstream-cert": { type: "string", valueHint: "path", description: "client certificate the gateway presents to members with --upstream-tls" },
  "upstream-key": { type: "string", valueHint: "path", description: "key of --upstream-cert" },
  "upstream-alpn": { type: "string", default: "h2", valueHint: "h2|http/1.1|h2,http/1.1", description: "ALPN protocols offered to members with --upstream-tls: etcd's gRPC needs h2; HTTP/1.1 clients (the JSON gateway, /metrics) need http/1.1" },
  "upstream-server-name": { type: "string", valueHint: "name", description: "name to verify members' certificates against (default: each endpoint's host)" },
  "listen-cert": { type: "string", valueHint: "path", description: "serve TLS to clients with this certificate (TLS termination)" },
  "listen-key": { type: "string", valueHint: "path", description: "key of --listen-cert" },
  "listen-client-ca": { type: "string", valueHint: "path", description: "require client certificates signed by this CA on TLS listeners" },
  "close-on-member-down": { type: "boolean", default: true, description: "when a member is marked down, reset the connections to it (if a healthy member exists) so clients reconnect to a healthy one" },
  "keepalive-time": { type: "string", default: "5s", valueHint: "duration", description: "TCP keepalive idle time on both legs; Bun then probes every 1s, 10 times, so a silent peer is dropped within this + 10s" },
  "access-log": { type: "string", default: "off", valueHint: "off|stderr|path", description: "one JSON line per closed connection (client, member, times, bytes, termination code); a file is reopened on SIGUSR1" },
  "admin-addr": { type: "string", valueHint: "host:port", description: "serve /metrics, /healthz, /readyz and /status here (off by default; 127.0.0.1:23791 is the documented choice)" },
  workers: { type: "string", default: "1", valueHint: "N|auto", description: "processes accepting on the listen address (SO_REUSEPORT); auto = one per core; they share member state" },
  "log-format": { type: "string", default: "json", valueHint: LOG_FORMATS.join("|"), description: "log format on stderr" },
  "log-level": { type: "string", default: "info", valueHint: LOG_LEVELS.join("|"), description: "lowest level logged" },
} as const satisfies Record<string, FlagSpec>;

export type StartFlag = keyof typeof START_FLAGS;
/** Parsed flag values: strings, booleans, or every occurrence of a repeatable flag. */
export type FlagValues = Partial<Record<StartFlag, string | boolean | string[]>>;

export interface GatewayOptions {
  /** Every listener; the TCP ones also feed the self-loop guard. */
  listenAddrs: ListenAddress[];
  /** Mode of unix socket listeners. @default 0o660 */
  listenSocketMode: number;
  /** SO_REUSEPORT on TCP listeners. @default true */
  reusePort: boolean;
  /** 0 = unlimited. */
  maxConnections: number;
  /** 0 = off. */
  idleTimeoutMs: number;
  endpoints: EndpointSpec[];
  discoverySrv: string | null;
  discoverySrvName: string | null;
  insecureDiscovery: boolean;
  trustedCaFile: string | null;
  /** @default 60000 (0 means 5 minutes, as in etcd) */
  retryDelayMs: number;
  /** @default 1000 */
  connectTimeoutMs: number;
  /** @default 10000 */
  drainTimeoutMs: number;
  /** @default "sticky" */
  policy: PolicyName;
  /** Processes serving the listen address. @default 1 */
  workers: number;
  /** The admin endpoint, or null (off). */
  adminAddr: HostPort | null;
  /** "stderr", a file path, or null (off). */
  accessLog: string | null;
  /** `--upstream-tls`: TLS to members with these files, or null (passthrough). */
  upstreamTls: (TlsFiles & { serverName?: string; alpn: string[] }) | null;
  /** `--listen-cert` etc.: TLS to clients, or null. */
  listenTls: TlsFiles | null;
  health: HealthOptions;
  /** @default true */
  closeOnMemberDown: boolean;
  /** @default 5000 */
  keepAliveMs: number;
  discovery: {
    /** @default 5000 */
    refreshMinMs: number;
    /** @default 300000 */
    refreshMaxMs: number;
    /** "host:port", or null for the system's resolver. */
    dnsServer: string | null;
    /** 0 = off. */
    syncIntervalMs: number;
    endpointsFile: string | null;
  };
  logFormat: LogFormat;
  logLevel: LogLevel;
}

/** A bad flag or value: printed as one line, exit code 1. `flag` is null for stray arguments. */
export class ConfigError extends Error {
  constructor(
    readonly flag: string | null,
    readonly value: string | null,
    reason: string,
    /** Where the value came from when not the command line, e.g. `config file /etc/gw.yaml`. */
    origin?: string,
  ) {
    // One line whatever the input held: control characters are shown escaped.
    const text = flag === null ? reason : `--${flag}${origin ? ` (from ${origin})` : ""}: ${reason}`;
    super(text.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1)));
    this.name = "ConfigError";
  }
}

/** Where each flag's value came from, when not the command line (for error messages). */
export type FlagOrigins = Partial<Record<StartFlag, string>>;

/** The environment variable of a flag: `--retry-delay` is `ETCD_GATEWAY_RETRY_DELAY`. */
export const envName = (flag: string) => `ETCD_GATEWAY_${flag.toUpperCase().replace(/-/g, "_")}`;

/**
 * Merges the sources of flag values: defaults < `--config` file (YAML) < `ETCD_GATEWAY_*`
 * environment < command-line flags. `--config` may itself come from the environment.
 *
 * @throws {ConfigError} naming the file and key for an unreadable file, bad YAML, an unknown key or
 * a value of the wrong shape.
 */
export function gatherFlags(
  flags: FlagValues,
  env: Record<string, string | undefined>,
  readFile: (path: string) => string = (p) => readFileSync(p, "utf8"),
): { values: FlagValues; origins: FlagOrigins; configFile: string | null } {
  const values: FlagValues = {};
  const origins: FlagOrigins = {};
  const names = Object.keys(START_FLAGS) as StartFlag[];
  const configFile = typeof flags.config === "string" ? flags.config : (env[envName("config")] ?? null);
  if (configFile !== null) {
    let doc: unknown;
    try {
      doc = Bun.YAML.parse(readFile(configFile));
    } catch (e) {
      throw new ConfigError("config", configFile, `${JSON.stringify(configFile)}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "cannot read: ENOENT" : errorText(e)}`);
    }
    if (doc !== null && (typeof doc !== "object" || Array.isArray(doc))) throw new ConfigError("config", configFile, `${JSON.stringify(configFile)}: expected a mapping of flag names to values`);
    for (const [key, raw] of Object.entries((doc ?? {}) as Record<string, unknown>)) {
      const where = `config file ${configFile}, key "${key}"`;
      if (!names.includes(key as StartFlag) || key === "config") throw new ConfigError("config", configFile, `${JSON.stringify(configFile)}: unknown key "${key}"`);
      const flag = key as StartFlag;
      if (raw === null || raw === undefined) continue;
      values[flag] = fromFile(flag, raw, where);
      origins[flag] = where;
    }
  }
  for (const flag of names) {
    const v = env[envName(flag)];
    if (v === undefined || flag === "config") continue;
    const spec: FlagSpec = START_FLAGS[flag];
    const where = `environment ${envName(flag)}`;
    if (spec.type === "boolean") {
      if (!/^(true|false|1|0)$/.test(v)) throw new ConfigError(flag, v, `invalid boolean ${JSON.stringify(v)}; expected true or false`, where);
      values[flag] = v === "true" || v === "1";
    } else values[flag] = spec.repeatable ? [v] : v;
    origins[flag] = where;
  }
  for (const flag of names) {
    if (flags[flag] === undefined) continue;
    values[flag] = flags[flag];
    delete origins[flag];
  }
  return { values, origins, configFile };
}

function fromFile(flag: StartFlag, raw: unknown, where: string): string | boolean | string[] {
  const spec: FlagSpec = START_FLAGS[flag];
  const bad = (what: string) => new ConfigError(flag, String(raw), `expected ${what}, got ${JSON.stringify(raw)}`, where);
  if (spec.type === "boolean") {
    if (typeof raw !== "boolean") throw bad("true or false");
    return raw;
  }
  const scalar = (v: unknown) => {
    if (typeof v === "string") return v;
    if (typeof v === "number" && Number.isFinite(v)) return String(v);
    throw bad(spec.repeatable ? "a string or a list of strings" : "a string");
  };
  if (spec.repeatable) return Array.isArray(raw) ? raw.map(scalar) : [scalar(raw)];
  return scalar(raw);
}

/**
 * Validates parsed flag values into options; defaults fill what is absent.
 *
 * @throws {ConfigError} naming the first bad flag and its value.
 * @example buildOptions({ endpoints: ["a:1,b:2"], "retry-delay": "5s" }).retryDelayMs // 5000
 */
export function buildOptions(values: FlagValues, origins: FlagOrigins = {}): GatewayOptions {
  const str = (flag: StartFlag): string => {
    const v = values[flag] ?? (START_FLAGS[flag] as FlagSpec).default ?? "";
    return Array.isArray(v) ? v.join(",") : String(v);
  };
  const check = <T>(flag: StartFlag, fn: (text: string) => T): T => {
    const text = str(flag);
    try {
      return fn(text);
    } catch (e) {
      throw new ConfigError(flag, text, e instanceof Error ? e.message : String(e), origins[flag]);
    }
  };
  const oneOf = <T extends string>(flag: StartFlag, allowed: readonly T[]): T =>
    check(flag, (t) => {
      if (!(allowed as readonly string[]).includes(t)) throw new Error(`invalid value ${JSON.stringify(t)}; expected one of ${allowed.join(", ")}`);
      return t as T;
    });
  const duration = (flag: StartFlag, min = 0) =>
    check(flag, (t) => {
      const ms = parseDuration(t);
      if (ms < min) throw new Error(`duration ${JSON.stringify(t)} must be ${min <= 1 ? "greater than 0" : `at least ${formatDuration(min)}`}`);
      return ms;
    });
  const optional = (flag: StartFlag): string | null => (values[flag] === undefined ? null : str(flag));

  const rawEndpoints = values.endpoints;
  const endpointValues = Array.isArray(rawEndpoints) ? rawEndpoints : [str("endpoints")];
  const rawListen = values["listen-addr"];
  const listenValues = Array.isArray(rawListen) ? rawListen : [str("listen-addr")];
  const opts: GatewayOptions = {
    listenAddrs: check("listen-addr", () => listenValues.flatMap((v) => v.split(",")).map((v) => parseListenAddress(v.trim()))),
    listenSocketMode: check("listen-socket-mode", (t) => {
      if (!/^0?[0-7]{3}$/.test(t)) throw new Error(`invalid file mode ${JSON.stringify(t)}; expected octal like 0660`);
      return parseInt(t, 8);
    }),
    reusePort: values["reuse-port"] !== false,
    maxConnections: check("max-connections", (t) => {
      if (!/^\d+$/.test(t)) throw new Error(`invalid count ${JSON.stringify(t)}`);
      return Number(t);
    }),
    idleTimeoutMs: duration("idle-timeout"),
    endpoints: check("endpoints", () => parseEndpointList(endpointValues)),
    discoverySrv: optional("discovery-srv"),
    discoverySrvName: optional("discovery-srv-name"),
    insecureDiscovery: values["insecure-discovery"] === true,
    trustedCaFile: optional("trusted-ca-file"),
    retryDelayMs: duration("retry-delay"),
    connectTimeoutMs: duration("connect-timeout", 1),
    drainTimeoutMs: duration("drain-timeout"),
    policy: oneOf("policy", POLICY_NAMES),
    workers: check("workers", parseWorkers),
    adminAddr: values["admin-addr"] === undefined ? null : check("admin-addr", parseHostPort),
    upstreamTls: null,
    listenTls: null,
    accessLog: check("access-log", (t) => {
      if (t === "" ) throw new Error("empty value; expected off, stderr or a file path");
      return t === "off" ? null : t;
    }),
    health: {
      check: oneOf("health-check", CHECK_KINDS),
      intervalMs: duration("health-interval", 1),
      timeoutMs: duration("health-timeout", 1),
      rise: check("health-rise", count),
      fall: check("health-fall", count),
      retryDelayMs: 0, // filled below
      connectTimeoutMs: 0,
      tls: null,
    },
    closeOnMemberDown: values["close-on-member-down"] !== false,
    keepAliveMs: duration("keepalive-time", 1000),
    discovery: {
      refreshMinMs: duration("discovery-refresh-min", 1),
      refreshMaxMs: duration("discovery-refresh-max", 1),
      dnsServer: values["dns-server"] === undefined ? null : check("dns-server", parseServer),
      syncIntervalMs: duration("endpoints-auto-sync-interval"),
      endpointsFile: optional("endpoints-file"),
    },
    logFormat: oneOf("log-format", LOG_FORMATS),
    logLevel: oneOf("log-level", LOG_LEVELS),
  };
  if (opts.discoverySrv !== null) check("discovery-srv", validateDomain);
  if (opts.discoverySrvName !== null) {
    check("discovery-srv-name", (t) => {
      if (!/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/.test(t)) throw new Error(`invalid service name ${JSON.stringify(t)}`);
    });
  }
  if (opts.trustedCaFile !== null) check("trusted-ca-file", validateCaFile);
  if (opts.discovery.refreshMinMs > opts.discovery.refreshMaxMs) {
    throw new ConfigError("discovery-refresh-min", str("discovery-refresh-min"), `must not exceed --discovery-refresh-max (${str("discovery-refresh-max")})`);
  }
  if (opts.discovery.endpointsFile !== null) {
    const file = opts.discovery.endpointsFile;
    opts.endpoints = check("endpoints-file", () => {
      try {
        return readEndpointsFile(file);
      } catch (e) {
        throw new Error(`${JSON.stringify(file)}: ${e instanceof Error && "code" in e ? `cannot read: ${String((e as NodeJS.ErrnoException).code)}` : errorText(e)}`);
      }
    });
  }
  opts.health.retryDelayMs = opts.retryDelayMs;
  opts.health.connectTimeoutMs = opts.connectTimeoutMs;
  /** A CA / certificate / key triple of flags, read and checked (expiry, key pair); null when none is set. */
  const tlsFiles = (caFlag: StartFlag, certFlag: StartFlag, keyFlag: StartFlag): TlsFiles | null => {
    const [caPath, certPath, keyPath] = [optional(caFlag), optional(certFlag), optional(keyFlag)];
    if (caPath === null && certPath === null && keyPath === null) return null;
    if ((certPath === null) !== (keyPath === null)) {
      const missing = certPath === null ? certFlag : keyFlag;
      throw new ConfigError(missing, null, `--${certFlag} and --${keyFlag} go together; --${missing} is missing`, origins[missing]);
    }
    const files: TlsFiles = {};
    if (caPath !== null) files.ca = check(caFlag, readCertificate);
    if (certPath !== null && keyPath !== null) {
      files.cert = check(certFlag, readCertificate);
      files.key = check(keyFlag, readKey);
      check(keyFlag, () => checkKeyPair(files.cert!, certPath, files.key!, keyPath));
    }
    return files;
  };
  opts.health.tls = tlsFiles("health-cacert", "health-cert", "health-key");
  const upstream = tlsFiles("upstream-cacert", "upstream-cert", "upstream-key");
  const serverName = optional("upstream-server-name");
  const alpn = check("upstream-alpn", (t) => {
    const list = t.split(",").map((p) => p.trim());
    for (const p of list) if (!/^[\x21-\x7e]{1,255}$/.test(p)) throw new Error(`invalid ALPN protocol ${JSON.stringify(p)}`);
    return list;
  });
  if (values["upstream-tls"] === true) opts.upstreamTls = { ...upstream, serverName: serverName ?? undefined, alpn };
  else if (upstream !== null || serverName !== null) {
    throw new ConfigError("upstream-tls", null, "--upstream-cacert, --upstream-cert, --upstream-key and --upstream-server-name need --upstream-tls");
  }
  const listen = tlsFiles("listen-client-ca", "listen-cert", "listen-key");
  if (listen !== null && listen.cert === undefined) throw new ConfigError("listen-cert", null, "--listen-client-ca needs --listen-cert and --listen-key");
  opts.listenTls = listen;
  // Health checks speak the same TLS as the data path when only --upstream-* is given.
  if (opts.health.tls === null && opts.upstreamTls !== null) opts.health.tls = { ca: opts.upstreamTls.ca, cert: opts.upstreamTls.cert, key: opts.upstreamTls.key };
  return opts;
}

function parseWorkers(text: string): number {
  if (text === "auto") return availableParallelism();
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 64) throw new Error(`invalid worker count ${JSON.stringify(text)}; expected 1..64 or auto`);
  return Number(text);
}

function validateDomain(text: string): void {
  const q = JSON.stringify(text);
  if (text === "") throw new Error("empty domain");
  // The host part of parseHostPort's grammar, reused so there is one definition of a hostname.
  try {
    parseHostPort(`${text}:1`);
  } catch {
    throw new Error(`invalid domain ${q}`);
  }
  if (text.startsWith("[") || text.includes(":")) throw new Error(`invalid domain ${q}`);
}

/** A DNS server address: an IP with a port, or a bare IP for port 53 (a name would need a resolver itself). */
function parseServer(text: string): string {
  const bare = text.replace(/^\[|\]$/g, "");
  const hp = isIP(bare) !== 0 ? parseHostPort(isIP(bare) === 6 ? `[${bare}]:53` : `${bare}:53`) : parseHostPort(text);
  if (isIP(hp.host) === 0) throw new Error(`DNS server must be an IP address, got ${JSON.stringify(text)}`);
  return hp.address;
}

function count(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 100) throw new Error(`invalid count ${JSON.stringify(text)}; expected 1..100`);
  return Number(text);
}

function validateCaFile(path: string): void {
  readCertificate(path);
}
