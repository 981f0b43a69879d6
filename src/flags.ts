/**
 * The flags of `etcd-gateway start`: one table gives each flag's default, help text, how its value
 * is validated, and whether a reload (SIGHUP) applies it live or it needs a restart. The table
 * feeds the help text, the strict parser below, the settings snapshots (src/settings.ts) and
 * docs/flags.md (held to it by test/unit/docs.test.ts). The seven entries after `config` are `etcd gateway start`'s, with its names and defaults.
 *
 * The parser follows pflag (the library etcd's flags use), for what citty leaves out (docs/bun.md,
 * trap 12): unknown flags and stray arguments are errors, and repeatable flags accumulate.
 *
 * @module
 */
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { parseEndpointList, parseHostPort, parseListenAddress, type EndpointSpec } from "./addresses.ts";
import { formatDuration, parseDuration } from "./duration.ts";
import { CHECK_KINDS } from "./health/checks.ts";
import { readFileBounded, type ReadFile } from "./limits.ts";
import { LOG_FORMATS, LOG_LEVELS } from "./log.ts";
import { POLICY_NAMES } from "./select.ts";
import { readCertificate, readKey } from "./tls.ts";

/** A PEM file as read at startup or reload: a reload sees new contents under the same path. */
export interface PemFile {
  readonly path: string;
  readonly pem: string;
}
const pem = (check: (path: string, read?: ReadFile) => string) => (path: string, read?: ReadFile): PemFile => ({ path, pem: check(path, read) });
const certificate = pem(readCertificate);
const privateKey = pem(readKey);

/** `live`: a reload applies a new value to new connections and checks; `restart`: it is reported, not applied. */
export type Reload = "live" | "restart";

interface Common {
  readonly description: string;
  readonly valueHint?: string;
  readonly reload: Reload;
}
/** A flag with a value; `parse` validates the text (repeated occurrences joined by commas) and throws a one-line reason. */
export interface StringFlag<T = unknown> extends Common {
  readonly type: "string";
  readonly default?: string;
  /** Repeated occurrences accumulate (comma-separated lists too), as pflag's string slices do. */
  readonly repeatable?: boolean;
  /** `read` reads a file the value names: src/settings.ts passes the files it read ahead, off the event loop. */
  readonly parse: (text: string, read?: ReadFile) => T;
}
export interface BooleanFlag extends Common {
  readonly type: "boolean";
  readonly default: boolean;
}
export type FlagSpec = StringFlag | BooleanFlag;

// --- value parsers: each throws an Error whose message is the reason, without the flag's name ---

/** A Go duration in ms, at least `min` and at most `max` (every value in between works: see src/timers.ts). */
function duration(min = 0, max = Infinity, why = ""): (text: string) => number {
  return (t) => {
    const ms = parseDuration(t);
    const q = JSON.stringify(t);
    if (ms === 0 && min > 0) throw new Error(`duration ${q} must be greater than 0`);
    if (ms < min) throw new Error(`duration ${q} must be at least ${formatDuration(min)}`);
    if (ms > max) throw new Error(`duration ${q} must be at most ${formatDuration(max)}${why}`);
    return ms;
  };
}

function oneOf<T extends string>(allowed: readonly T[]): (text: string) => T {
  return (t) => {
    if (!(allowed as readonly string[]).includes(t)) throw new Error(`invalid value ${JSON.stringify(t)}; expected one of ${allowed.join(", ")}`);
    return t as T;
  };
}

function count(t: string): number {
  if (!/^\d+$/.test(t) || Number(t) < 1 || Number(t) > 100) throw new Error(`invalid count ${JSON.stringify(t)}; expected 1..100`);
  return Number(t);
}

function path(t: string): string {
  if (t === "") throw new Error("empty path");
  return t;
}

function workers(t: string): number {
  if (t === "auto") return availableParallelism();
  if (!/^\d+$/.test(t) || Number(t) < 1 || Number(t) > 64) throw new Error(`invalid worker count ${JSON.stringify(t)}; expected 1..64 or auto`);
  return Number(t);
}

function domain(t: string): string {
  const q = JSON.stringify(t);
  if (t === "") throw new Error("empty domain");
  // The host part of parseHostPort's grammar, reused so there is one definition of a hostname.
  try {
    parseHostPort(`${t}:1`);
  } catch {
    throw new Error(`invalid domain ${q}`);
  }
  if (t.startsWith("[") || t.includes(":")) throw new Error(`invalid domain ${q}`);
  return t;
}

/** A DNS server address: an IP with a port, or a bare IP for port 53 (a name would need a resolver itself). */
function dnsServer(t: string): string {
  const bare = t.replace(/^\[|\]$/g, "");
  const hp = isIP(bare) !== 0 ? parseHostPort(isIP(bare) === 6 ? `[${bare}]:53` : `${bare}:53`) : parseHostPort(t);
  if (isIP(hp.host) === 0) throw new Error(`DNS server must be an IP address, got ${JSON.stringify(t)}`);
  return hp.address;
}

/** Reads `--endpoints-file`: endpoints separated by commas, spaces or lines; `#` starts a comment. */
export function readEndpointsFile(file: string, read: ReadFile = readFileBounded): { path: string; endpoints: EndpointSpec[] } {
  const text = read(file);
  const items = text.replace(/#.*$/gm, "").split(/[\s,]+/).filter((t) => t !== "");
  try {
    return { path: file, endpoints: parseEndpointList(items) };
  } catch (e) {
    throw new Error(`${JSON.stringify(file)}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function alpn(t: string): string[] {
  const list = t.split(",").map((p) => p.trim());
  for (const p of list) if (!/^[\x21-\x7e]{1,255}$/.test(p)) throw new Error(`invalid ALPN protocol ${JSON.stringify(p)}`);
  return list;
}

const text = (t: string) => t;

/** An etcd cluster ID as etcd prints it (hex, `cdf818194e3a8c32`; `0x` and leading zeros allowed), in etcd's form. */
function clusterId(t: string): string {
  if (!/^(0x)?[0-9a-fA-F]{1,16}$/.test(t)) throw new Error(`expected a cluster ID in hex, as etcd logs it (e.g. cdf818194e3a8c32), got ${JSON.stringify(t)}`);
  const id = BigInt(`0x${t.replace(/^0x/, "")}`);
  if (id === 0n) throw new Error("a cluster ID is never 0");
  return id.toString(16);
}

/** Every flag of `etcd-gateway start`. */
export const START_FLAGS = {
  config: { type: "string", reload: "restart", valueHint: "path", parse: path, description: "YAML file whose keys are these flag names; precedence: flags > ETCD_GATEWAY_* environment > file > defaults; re-read on SIGHUP" },
  "listen-addr": { type: "string", reload: "restart", default: "127.0.0.1:23790", valueHint: "host:port", repeatable: true, parse: (t) => t.split(",").map((v) => parseListenAddress(v.trim())), description: "address to accept client connections on (IPv4, [IPv6]:port, hostname:port, or unix:///path); repeatable" },
  endpoints: { type: "string", reload: "live", default: "127.0.0.1:2379", valueHint: "host:port,...", repeatable: true, parse: (t) => parseEndpointList([t]), description: "comma-separated etcd cluster endpoints; repeatable; http:// and https:// are stripped; without a port, etcd's client port 2379" },
  "discovery-srv": { type: "string", reload: "restart", valueHint: "domain", parse: domain, description: "DNS domain used to bootstrap cluster endpoints through SRV records (_etcd-client-ssl._tcp and _etcd-client._tcp), refreshed on their TTL" },
  "discovery-srv-name": {
    type: "string", reload: "restart", valueHint: "name", description: "service name to query when using DNS discovery",
    parse: (t) => {
      if (!/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/.test(t)) throw new Error(`invalid service name ${JSON.stringify(t)}`);
      return t;
    },
  },
  "insecure-discovery": { type: "boolean", reload: "restart", default: false, description: "accept SRV records that are insecure or susceptible to man-in-the-middle attacks" },
  "trusted-ca-file": { type: "string", reload: "restart", valueHint: "path", parse: (t, read) => (readCertificate(t, read), t), description: "path to the client server TLS CA file for verifying the discovered endpoints when discovery-srv is provided" },
  "retry-delay": { type: "string", reload: "live", default: "1m0s", valueHint: "duration", parse: duration(), description: "duration of delay before retrying failed endpoints (0 means 5m, as etcd)" },
  "listen-socket-mode": {
    type: "string", reload: "restart", default: "0660", valueHint: "octal", description: "file mode of unix socket listeners",
    parse: (t) => {
      if (!/^0?[0-7]{3}$/.test(t)) throw new Error(`invalid file mode ${JSON.stringify(t)}; expected octal like 0660`);
      return parseInt(t, 8);
    },
  },
  "reuse-port": { type: "boolean", reload: "restart", default: false, description: "let another gateway started with this flag listen on the same address (SO_REUSEPORT), for blue/green restarts (SIGUSR2 upgrades in place without it); without it a taken address is an error" },
  "max-connections": {
    type: "string", reload: "live", default: "0", valueHint: "N", description: "client connections at most; at the limit the gateway stops accepting (new connects wait in the kernel's backlog) until one closes (0 = as many as the open-files limit allows)",
    parse: (t) => {
      if (!/^\d+$/.test(t)) throw new Error(`invalid count ${JSON.stringify(t)}`);
      return Number(t);
    },
  },
  "idle-timeout": { type: "string", reload: "live", default: "0", valueHint: "duration", parse: duration(), description: "close a proxied connection with no bytes either way for this long (0 = off: etcd watches are idle for long periods)" },
  "discovery-refresh-min": { type: "string", reload: "restart", default: "5s", valueHint: "duration", parse: duration(1), description: "shortest time between SRV refreshes (the records' TTL is clamped to this range)" },
  "discovery-refresh-max": { type: "string", reload: "restart", default: "5m", valueHint: "duration", parse: duration(1), description: "longest time between SRV refreshes" },
  "dns-server": { type: "string", reload: "restart", valueHint: "host:port", parse: dnsServer, description: "DNS server for SRV records and their targets' addresses (default: the first nameserver of /etc/resolv.conf); targets are then dialled by IP" },
  "endpoints-auto-sync-interval": { type: "string", reload: "restart", default: "0", valueHint: "duration", parse: duration(), description: "ask a member for the member list this often and use the voting members' client URLs as endpoints (0 = off)" },
  "endpoints-file": { type: "string", reload: "live", valueHint: "path", parse: readEndpointsFile, description: "read the endpoints from this file (commas, spaces or lines; # comments) instead of --endpoints; re-read on SIGHUP" },
  "connect-timeout": { type: "string", reload: "live", default: "1s", valueHint: "duration", parse: duration(1, 300_000, " (the kernel gives up on a connect after about 2 minutes)"), description: "how long one dial to an endpoint may take before the next endpoint is tried" },
  "rebalance-interval": { type: "string", reload: "live", default: "0", valueHint: "duration", parse: duration(), description: "move open connections to where new ones go, one at a time, about this often (±50 %), each closed cleanly at a quiet moment for its client to reconnect (0 = off: open connections stay where they are)" },
  "drain-timeout": { type: "string", reload: "live", default: "10s", valueHint: "duration", parse: duration(), description: "on SIGTERM/SIGINT, how long open connections may finish before they are closed" },
  policy: { type: "string", reload: "live", default: "sticky", valueHint: POLICY_NAMES.join("|"), parse: oneOf(POLICY_NAMES), description: "endpoint selection: sticky (one random endpoint until it fails; back to it when it returns) or round-robin (per connection, like etcd's gateway)" },
  "health-check": { type: "string", reload: "live", default: "etcd", valueHint: CHECK_KINDS.join("|"), parse: oneOf(CHECK_KINDS), description: "active health check: etcd (maintenance status: leader, not a learner, no alarm; /version between), health (/health?serializable=true), tcp (connect), none" },
  "health-interval": { type: "string", reload: "live", default: "2s", valueHint: "duration", parse: duration(1), description: "time between checks of the member in use (a cheap liveness check); a down member is checked this often, doubling after each failure" },
  "health-status-interval": { type: "string", reload: "live", default: "10s", valueHint: "duration", parse: duration(1), description: "time between full checks (leader, learner, alarm) of the member in use" },
  "health-spare-interval": { type: "string", reload: "live", default: "60s", valueHint: "duration", parse: duration(1), description: "time between checks of a member that carries no clients; also the longest wait between checks of a down member" },
  "health-timeout": { type: "string", reload: "live", default: "1s", valueHint: "duration", parse: duration(1, 300_000), description: "bound on one health check" },
  "health-rise": { type: "string", reload: "live", default: "2", valueHint: "N", parse: count, description: "passing checks in a row that bring a down member up" },
  "health-suspect-after": { type: "string", reload: "live", default: "1s", valueHint: "duration", parse: duration(0, 60_000), description: "a member that stays silent this long after a client's second unanswered request is checked at once, --health-fall times 150 ms apart, and taken out if none answers (0 = off)" },
  "health-fall": { type: "string", reload: "live", default: "3", valueHint: "N", parse: count, description: "failing checks, or failed dials, in a row that take a member down (eject it)" },
  "health-cacert": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "CA bundle to verify members' TLS certificates in health checks (checks then use https)" },
  "health-cert": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "client certificate for health checks of members with client-cert auth" },
  "health-key": { type: "string", reload: "live", valueHint: "path", parse: privateKey, description: "key of --health-cert" },
  "cluster-id": { type: "string", reload: "live", valueHint: "hex", parse: clusterId, description: "the ID of the etcd cluster (hex, as etcd logs it) whose members get clients; a member reporting another is refused (default: the ID most members report)" },
  "upstream-tls": { type: "boolean", reload: "live", default: false, description: "speak TLS to the members with the gateway's own identity (clients speak plaintext to the gateway)" },
  "upstream-cacert": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "CA bundle to verify members' certificates with --upstream-tls (default: the system CAs)" },
  "upstream-cert": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "client certificate the gateway presents to members with --upstream-tls" },
  "upstream-key": { type: "string", reload: "live", valueHint: "path", parse: privateKey, description: "key of --upstream-cert" },
  "upstream-alpn": { type: "string", reload: "live", default: "h2", valueHint: "h2|http/1.1|h2,http/1.1", parse: alpn, description: "ALPN protocols offered to members with --upstream-tls: etcd's gRPC needs h2; HTTP/1.1 clients (the JSON gateway, /metrics) need http/1.1" },
  "upstream-server-name": { type: "string", reload: "live", valueHint: "name", parse: text, description: "name to verify members' certificates against (default: each endpoint's host)" },
  "listen-cert": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "serve TLS to clients with this certificate (TLS termination)" },
  "listen-key": { type: "string", reload: "live", valueHint: "path", parse: privateKey, description: "key of --listen-cert" },
  "listen-handshake-timeout": { type: "string", reload: "live", default: "10s", valueHint: "duration", parse: duration(1, 300_000), description: "with --listen-cert: how long a client may take to finish its TLS handshake; no member is dialled before it does" },
  "listen-client-ca": { type: "string", reload: "live", valueHint: "path", parse: certificate, description: "require client certificates signed by this CA on TLS listeners" },
  "close-on-member-down": { type: "boolean", reload: "live", default: true, description: "when a member is marked down, reset the connections to it (if a healthy member exists) so clients reconnect to a healthy one" },
  "keepalive-time": { type: "string", reload: "live", default: "5s", valueHint: "duration", parse: duration(1000, 32_767_000, " (the kernel's TCP_KEEPIDLE limit)"), description: "TCP keepalive idle time on the member leg (and the client leg of listeners reachable from other hosts); Bun then probes every 1s, 10 times, so a silent peer is dropped within this + 10s" },
  "access-log": {
    type: "string", reload: "restart", default: "off", valueHint: "off|stdout|-|stderr|path", description: "one JSON line per closed connection (client, member, times, bytes, termination code) to stdout (also -), stderr (among the log lines) or a file, which is reopened on SIGUSR1",
    parse: (t) => {
      if (t === "") throw new Error("empty value; expected off, stdout, -, stderr or a file path");
      return t === "off" ? null : t;
    },
  },
  "admin-addr": { type: "string", reload: "restart", valueHint: "host:port|unix:///path", repeatable: true, parse: (t) => t.split(",").map((v) => parseListenAddress(v.trim())), description: "serve /metrics, /healthz, /readyz and /status here (off by default; 127.0.0.1:23791 is the documented choice); on a unix:///path address also take member drains; repeatable" },
  "admin-socket-mode": {
    type: "string", reload: "restart", default: "0600", valueHint: "octal", description: "file mode of a unix socket --admin-addr: who may connect, and so drain members",
    parse: (t) => {
      if (!/^0?[0-7]{3}$/.test(t)) throw new Error(`invalid file mode ${JSON.stringify(t)}; expected octal like 0600`);
      return parseInt(t, 8);
    },
  },
  "admin-host-whitelist": {
    type: "string", reload: "restart", valueHint: "name,...", description: "host names a TCP --admin-addr answers to besides IP addresses, localhost and this host's name (others: 421, against DNS rebinding); * for any",
    parse: (t) =>
      t.split(",").map((v) => {
        const name = v.trim().toLowerCase().replace(/\.$/, "");
        if (name !== "*" && !/^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(name)) throw new Error(`invalid host name ${JSON.stringify(v.trim())}`);
        return name;
      }),
  },
  workers: { type: "string", reload: "restart", default: "1", valueHint: "N|auto", parse: workers, description: "processes accepting on the listen address (SO_REUSEPORT); auto = one per core; they share member state" },
  "log-format": { type: "string", reload: "restart", default: "json", valueHint: LOG_FORMATS.join("|"), parse: oneOf(LOG_FORMATS), description: "log format on stderr" },
  "log-level": { type: "string", reload: "live", default: "info", valueHint: LOG_LEVELS.join("|"), parse: oneOf(LOG_LEVELS), description: "lowest level logged" },
} as const satisfies Record<string, FlagSpec>;

export type StartFlag = keyof typeof START_FLAGS;

/** Each flag's validated value: a boolean, the parsed value, or null for an unset flag without a default. */
export type FlagValues = {
  readonly [K in StartFlag]: (typeof START_FLAGS)[K] extends BooleanFlag
    ? boolean
    : (typeof START_FLAGS)[K] extends { default: string; parse: (t: string) => infer T }
      ? T
      : (typeof START_FLAGS)[K] extends { parse: (t: string) => infer T }
        ? T | null
        : never;
};

/** Flags as given on the command line (or in the environment or file): text, a boolean, or every occurrence of a repeatable flag. */
export type RawFlags<K extends string = StartFlag> = Partial<Record<K, string | boolean | string[]>>;

/** The environment variable of a flag: `--retry-delay` is `ETCD_GATEWAY_RETRY_DELAY`. */
export const envName = (flag: string) => `ETCD_GATEWAY_${flag.toUpperCase().replace(/-/g, "_")}`;

/** Longest error line printed; a longer one (a binary file's content, say) is cut with "…". */
const MAX_ERROR_CHARS = 400;

/**
 * One printable line whatever the input held: control characters (C0, DEL, C1), bidirectional
 * overrides, line separators and the replacement character of invalid UTF-8 are shown as `\uXXXX`.
 */
export function printable(text: string): string {
  const safe = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffd]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return safe.length > MAX_ERROR_CHARS ? `${safe.slice(0, MAX_ERROR_CHARS)}…` : safe;
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
    const line = flag === null ? reason : `--${flag}${origin ? ` (from ${origin})` : ""}: ${reason}`;
    super(printable(line));
    this.name = "ConfigError";
  }
}

/** What the strict parser needs of a flag. */
export type ParserSpec = { readonly type: "string" | "boolean"; readonly repeatable?: boolean };

/**
 * Parses `argv` with pflag's rules. Accepted: `--name=value`, `--name value`, `--bool`,
 * `--bool=true|false`, `--no-bool`.
 *
 * @throws {ConfigError} on an unknown flag, a missing value, a bad boolean or a stray argument.
 * @example parseFlags(["--endpoints", "a:1", "--endpoints=b:2"], START_FLAGS) // { endpoints: ["a:1", "b:2"] }
 */
export function parseFlags<K extends string>(argv: readonly string[], specs: Readonly<Record<K, ParserSpec>>): RawFlags<K> {
  const out: RawFlags<K> = {};
  const known = (name: string): name is K => Object.hasOwn(specs, name);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      const rest = argv[i + 1];
      if (rest !== undefined) throw new ConfigError(null, rest, `unexpected argument ${JSON.stringify(rest)}`);
      break;
    }
    if (!arg.startsWith("--")) {
      if (arg.startsWith("-") && arg.length > 1) throw new ConfigError(null, arg, `unknown flag: ${arg}`);
      throw new ConfigError(null, arg, `unexpected argument ${JSON.stringify(arg)}`);
    }
    const eq = arg.indexOf("=");
    let name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    let value: string | undefined = eq < 0 ? undefined : arg.slice(eq + 1);
    if (!known(name) && name.startsWith("no-") && value === undefined) {
      const base = name.slice(3);
      if (known(base) && specs[base].type === "boolean") {
        name = base;
        value = "false";
      }
    }
    if (!known(name)) throw new ConfigError(null, arg, `unknown flag: --${name}`);
    const spec = specs[name];
    if (spec.type === "boolean") {
      out[name] = parseBoolean(name, value ?? "true");
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new ConfigError(name, null, "flag needs an argument");
    }
    const prev = out[name];
    out[name] = spec.repeatable ? (Array.isArray(prev) ? [...prev, value] : [value]) : value;
  }
  return out;
}

/** `true`/`1` or `false`/`0`, as pflag takes them. */
export function parseBoolean(flag: string, text: string, origin?: string): boolean {
  if (text === "true" || text === "1") return true;
  if (text === "false" || text === "0") return false;
  throw new ConfigError(flag, text, `invalid boolean ${JSON.stringify(text)}; expected true or false`, origin);
}
