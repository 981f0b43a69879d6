/**
 * The flags of `etcd-gateway start`, their defaults, and their validation into `GatewayOptions`.
 * One table (`START_FLAGS`) feeds the help text, the strict argument parser and the README.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parseDuration } from "./duration.ts";
import { parseEndpointList, parseHostPort, type HostPort } from "./endpoints.ts";
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
  "listen-addr": { type: "string", default: "127.0.0.1:23790", valueHint: "host:port", description: "address to accept client connections on (IPv4, [IPv6]:port or hostname:port)" },
  endpoints: { type: "string", default: "127.0.0.1:2379", valueHint: "host:port,...", repeatable: true, description: "comma-separated etcd cluster endpoints; repeatable; http:// and https:// are stripped" },
  "discovery-srv": { type: "string", valueHint: "domain", description: "DNS domain used to bootstrap cluster endpoints through SRV records (not yet supported)" },
  "discovery-srv-name": { type: "string", valueHint: "name", description: "service name to query when using DNS discovery" },
  "insecure-discovery": { type: "boolean", default: false, description: "accept SRV records that are insecure or susceptible to man-in-the-middle attacks" },
  "trusted-ca-file": { type: "string", valueHint: "path", description: "path to the client server TLS CA file for verifying the discovered endpoints when discovery-srv is provided" },
  "retry-delay": { type: "string", default: "1m0s", valueHint: "duration", description: "duration of delay before retrying failed endpoints (0 means 5m, as etcd)" },
  "connect-timeout": { type: "string", default: "1s", valueHint: "duration", description: "how long one dial to an endpoint may take before the next endpoint is tried" },
  "drain-timeout": { type: "string", default: "10s", valueHint: "duration", description: "on SIGTERM/SIGINT, how long open connections may finish before they are closed" },
  policy: { type: "string", default: "sticky", valueHint: POLICY_NAMES.join("|"), description: "endpoint selection: sticky (one random endpoint until it fails) or round-robin (per connection, like etcd's gateway)" },
  workers: { type: "string", default: "1", valueHint: "N|auto", description: "processes accepting on the listen address (SO_REUSEPORT); auto = one per core; they share member state" },
  "log-format": { type: "string", default: "json", valueHint: LOG_FORMATS.join("|"), description: "log format on stderr" },
  "log-level": { type: "string", default: "info", valueHint: LOG_LEVELS.join("|"), description: "lowest level logged" },
} as const satisfies Record<string, FlagSpec>;

export type StartFlag = keyof typeof START_FLAGS;
/** Parsed flag values: strings, booleans, or every occurrence of a repeatable flag. */
export type FlagValues = Partial<Record<StartFlag, string | boolean | string[]>>;

export interface GatewayOptions {
  listenAddr: HostPort;
  endpoints: HostPort[];
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
  logFormat: LogFormat;
  logLevel: LogLevel;
}

/** A bad flag or value: printed as one line, exit code 1. `flag` is null for stray arguments. */
export class ConfigError extends Error {
  constructor(
    readonly flag: string | null,
    readonly value: string | null,
    reason: string,
  ) {
    super(flag === null ? reason : `--${flag}: ${reason}`);
    this.name = "ConfigError";
  }
}

/**
 * Validates parsed flag values into options; defaults fill what is absent.
 *
 * @throws {ConfigError} naming the first bad flag and its value.
 * @example buildOptions({ endpoints: ["a:1,b:2"], "retry-delay": "5s" }).retryDelayMs // 5000
 */
export function buildOptions(values: FlagValues): GatewayOptions {
  const str = (flag: StartFlag): string => {
    const v = values[flag] ?? (START_FLAGS[flag] as FlagSpec).default ?? "";
    return Array.isArray(v) ? v.join(",") : String(v);
  };
  const check = <T>(flag: StartFlag, fn: (text: string) => T): T => {
    const text = str(flag);
    try {
      return fn(text);
    } catch (e) {
      throw new ConfigError(flag, text, e instanceof Error ? e.message : String(e));
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
      if (ms < min) throw new Error(`duration ${JSON.stringify(t)} must be greater than 0`);
      return ms;
    });
  const optional = (flag: StartFlag): string | null => (values[flag] === undefined ? null : str(flag));

  const rawEndpoints = values.endpoints;
  const endpointValues = Array.isArray(rawEndpoints) ? rawEndpoints : [str("endpoints")];
  const opts: GatewayOptions = {
    listenAddr: check("listen-addr", parseHostPort),
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

function validateCaFile(path: string): void {
  let pem: string;
  try {
    pem = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read ${JSON.stringify(path)}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) throw new Error(`${JSON.stringify(path)} holds no PEM certificate`);
}
