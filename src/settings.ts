/**
 * Settings snapshots. A snapshot is built from every source of flag values (command line,
 * `ETCD_GATEWAY_*` environment, `--config` file, defaults), fully validated (files read and
 * checked), and frozen. The gateway reads the current snapshot wherever it needs a setting; a
 * reload builds a new snapshot and swaps it in one place (`SettingsStore.swap`), keeping the
 * running value of every flag that needs a restart.
 *
 * @module
 */
import type { EndpointSpec, ListenAddress } from "./addresses.ts";
import { parseConfigYaml, YamlNumber } from "./config-file.ts";
import { ConfigError, envName, parseBoolean, START_FLAGS, type FlagSpec, type FlagValues, type RawFlags, type StartFlag, type StringFlag } from "./flags.ts";
import type { HealthSettings } from "./health/monitor.ts";
import { readFileBounded, readFileOffLoop, type ReadFile } from "./limits.ts";
import { checkKeyPair, type TlsFiles } from "./tls.ts";

/** TLS to members (`--upstream-tls`). */
export type UpstreamTls = TlsFiles & { readonly serverName?: string; readonly alpn: readonly string[] };

/** One validated, frozen set of settings. */
export interface Settings {
  /** Each flag's validated value, by flag name. */
  readonly flags: FlagValues;
  /** The `--config` file, or null. */
  readonly configFile: string | null;
  /** The endpoints given statically: `--endpoints-file`'s contents, else `--endpoints`. */
  readonly endpoints: readonly EndpointSpec[];
  readonly listenAddrs: readonly ListenAddress[];
  /** TLS to members, or null: bytes pass through untouched. */
  readonly upstreamTls: UpstreamTls | null;
  /** TLS to clients (termination), or null. */
  readonly listenTls: TlsFiles | null;
  readonly health: HealthSettings;
}

/** Where each flag's value came from, when not the command line (for error messages). */
export type FlagOrigins = Partial<Record<StartFlag, string>>;

/** Flag values from every source, before validation. */
export interface Gathered {
  raw: RawFlags;
  origins: FlagOrigins;
  configFile: string | null;
  /** The `--config` file held no document, or a null one (empty, only comments, `~`). */
  emptyConfig?: boolean;
}

const FLAG_NAMES = Object.keys(START_FLAGS) as StartFlag[];
const KEY_PAIRS: readonly [StartFlag, StartFlag][] = [
  ["health-cert", "health-key"],
  ["upstream-cert", "upstream-key"],
  ["listen-cert", "listen-key"],
];

/**
 * Merges the sources of flag values: defaults < `--config` file (YAML) < `ETCD_GATEWAY_*`
 * environment < command-line flags. `--config` may itself come from the environment.
 *
 * @throws {ConfigError} naming the file and key for an unreadable file, bad YAML, an unknown key or
 * a value of the wrong shape.
 */
export function gatherFlags(flags: RawFlags, env: Record<string, string | undefined>, readFile: ReadFile = readFileBounded): Gathered {
  checkEnvironment(env);
  const raw: RawFlags = {};
  const origins: FlagOrigins = {};
  const configFile = configPath(flags, env);
  const emptyConfig = configFile !== null && readConfigFile(configFile, readFile, raw, origins);
  for (const flag of FLAG_NAMES) {
    const v = env[envName(flag)];
    if (v === undefined || flag === "config") continue;
    const spec: FlagSpec = START_FLAGS[flag];
    const where = `environment ${envName(flag)}`;
    raw[flag] = spec.type === "boolean" ? parseBoolean(flag, v, where) : spec.repeatable ? [v] : v;
    origins[flag] = where;
  }
  for (const flag of FLAG_NAMES) {
    if (flags[flag] === undefined) continue;
    raw[flag] = flags[flag];
    delete origins[flag];
  }
  return { raw, origins, configFile, emptyConfig };
}

/** The `--config` file: the flag's, else the environment's, else none. */
const configPath = (flags: RawFlags, env: Record<string, string | undefined>) => (typeof flags.config === "string" ? flags.config : (env[envName("config")] ?? null));

/**
 * `ETCD_GATEWAY_*` names that are no flag's: the binary ignores them, and they are not errors. The
 * first is set by the gateway itself; the others belong to the project's scripts, tests and
 * benchmarks, and are in the environment when the binary runs under them.
 */
export const OTHER_ENV: Readonly<Record<string, string>> = {
  ETCD_GATEWAY_WORKER: "set by the gateway for its --workers processes (src/workers.ts)",
  ETCD_GATEWAY_BASE_URL: "where scripts/install.sh downloads releases from",
  ETCD_GATEWAY_BINARY: "the binary the tests and the demo run (test/support/gateway.ts, scripts/demo.ts)",
  ETCD_GATEWAY_SKIP_BUILD: "tests reuse dist/etcd-gateway (test/support/preload.ts)",
  ETCD_GATEWAY_BEFORE: "an earlier build the benchmarks compare with (scripts/bench/contenders.ts)",
};
const FLAG_ENV = FLAG_NAMES.map(envName);

/**
 * Refuses an `ETCD_GATEWAY_*` variable that is no flag's (a misspelt one would otherwise be ignored),
 * as etcd refuses an unknown `ETCD_*` one, suggesting the flag variable it is closest to.
 *
 * @throws {ConfigError} `unrecognized environment variable ETCD_GATEWAY_ENDPOINT=... (did you mean ETCD_GATEWAY_ENDPOINTS?)`
 */
function checkEnvironment(env: Record<string, string | undefined>): void {
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("ETCD_GATEWAY_") || FLAG_ENV.includes(name) || Object.hasOwn(OTHER_ENV, name)) continue;
    const near = FLAG_ENV.map((known) => ({ known, d: editDistance(name, known) })).sort((a, b) => a.d - b.d)[0];
    const hint = near !== undefined && near.d <= 3 ? ` (did you mean ${near.known}?)` : "";
    throw new ConfigError(null, name, `unrecognized environment variable ${name}=${value ?? ""}${hint}`);
  }
}

/** Levenshtein distance: insertions, deletions and substitutions that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}

/** Reads the `--config` file's keys into `raw`; true when it holds no document, or a null one. */
function readConfigFile(file: string, readFile: ReadFile, raw: RawFlags, origins: FlagOrigins): boolean {
  let doc: unknown;
  try {
    doc = parseConfigYaml(file, readFile(file));
  } catch (e) {
    throw new ConfigError("config", file, readError(file, e));
  }
  if (doc !== null && (typeof doc !== "object" || Array.isArray(doc))) throw new ConfigError("config", file, `${JSON.stringify(file)}: expected a mapping of flag names to values`);
  for (const [key, value] of Object.entries((doc ?? {}) as Record<string, unknown>)) {
    if (!FLAG_NAMES.includes(key as StartFlag) || key === "config") throw new ConfigError("config", file, `${JSON.stringify(file)}: unknown key "${key}"`);
    const flag = key as StartFlag;
    if (value === null || value === undefined) continue;
    const where = `config file ${file}, key "${key}"`;
    raw[flag] = fromFile(flag, value, where);
    origins[flag] = where;
  }
  return doc === null || doc === undefined;
}

/** A read or parse error of the config file, naming the file once (`open PATH: …` already does). */
function readError(file: string, e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.startsWith(JSON.stringify(file)) || text.startsWith(`open ${file}: `) || text.startsWith(`read ${file}: `) ? text : `${JSON.stringify(file)}: ${text}`;
}

function fromFile(flag: StartFlag, value: unknown, where: string): string | boolean | string[] {
  const spec: FlagSpec = START_FLAGS[flag];
  const bad = (what: string) => new ConfigError(flag, shown(value), `expected ${what}, got ${shown(value)}`, where);
  if (spec.type === "boolean") {
    if (typeof value !== "boolean") throw bad("true or false");
    return value;
  }
  const what = spec.valueHint === "N" ? "a whole number" : spec.valueHint === "duration" ? "a duration" : spec.repeatable ? "a string or a list of strings" : "a string";
  const scalar = (v: unknown) => {
    if (typeof v === "string") return v;
    if (!(v instanceof YamlNumber)) throw bad(what);
    if (spec.valueHint === "octal") return fileMode(flag, spec, v, where);
    if (Number.isFinite(v.value)) return String(v.value);
    // 1e400 is Infinity to YAML: say what was written, not JSON's "null".
    const range = /^[-+]?\.(inf|nan)$/i.test(v.source) ? "" : " (out of range)";
    throw new ConfigError(flag, v.source, `expected ${what}, got ${v.source}${range}`, where);
  };
  if (spec.repeatable) return Array.isArray(value) ? value.map(scalar) : [scalar(value)];
  return scalar(value);
}

/** A value from the file as JSON, its numbers as written. */
const shown = (value: unknown) => JSON.stringify(value, (_, v: unknown) => (v instanceof YamlNumber ? (Number.isFinite(v.value) ? v.value : v.source) : v));

/**
 * A file mode written as a YAML number, as the flag's octal text. `0o660` and `0x1b0` are the mode
 * itself (they were the numbers 432, read back as mode 0432: issue 20); digits (`0660`, `660`) are
 * octal, as the flag, chmod and YAML 1.1 read them. A number never gives others access: a mode with
 * bits for others must be written as the flag's text, a quoted string ("0666"), as systemd's
 * `UMask=`/`SocketMode=` take octal text only.
 */
function fileMode(flag: StartFlag, spec: StringFlag, n: YamlNumber, where: string): string {
  const radix = n.format === "OCT" || n.format === "HEX" || n.format === "BIN";
  const text = radix && Number.isInteger(n.value) && n.value >= 0 && n.value <= 0o777 ? `0${n.value.toString(8).padStart(3, "0")}` : n.source;
  let mode: number;
  try {
    mode = spec.parse(text) as number;
  } catch (e) {
    throw new ConfigError(flag, n.source, e instanceof Error ? e.message : String(e), where);
  }
  const octal = `0${mode.toString(8).padStart(3, "0")}`;
  if ((mode & 0o007) !== 0) {
    throw new ConfigError(flag, n.source, `the YAML number ${n.source} is mode ${octal}, which gives others access; write the mode as a quoted octal string, like "0666", to mean it`, where);
  }
  return octal;
}

/** The text of a flag's value as given (repeated occurrences joined by commas), or its default. */
function textOf(raw: RawFlags, flag: StartFlag): string | undefined {
  const spec: FlagSpec = START_FLAGS[flag];
  const v = raw[flag] ?? spec.default;
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(",") : String(v);
}

/**
 * Validates every flag and builds a frozen snapshot; `read` reads the files flags name.
 *
 * @throws {ConfigError} naming the first bad flag, its value and where it came from; also for an
 * empty `--config` file, refused as HAProxy and nginx refuse an empty configuration.
 * @example buildSettings(gatherFlags({ "retry-delay": "5s" }, {})).flags["retry-delay"] // 5000
 */
export function buildSettings({ raw, origins, configFile, emptyConfig }: Gathered, read: ReadFile = readFileBounded): Settings {
  if (emptyConfig === true) throw new ConfigError("config", configFile, `${JSON.stringify(configFile)}: empty (no keys); leave out --config to run on the defaults`);
  // A half-given pair is named before either file is read.
  for (const [cert, key] of KEY_PAIRS) {
    if ((raw[cert] === undefined) === (raw[key] === undefined)) continue;
    const missing = raw[cert] === undefined ? cert : key;
    throw new ConfigError(missing, null, `--${cert} and --${key} go together; --${missing} is missing`);
  }
  const values: Record<string, unknown> = {};
  for (const flag of FLAG_NAMES) {
    const spec: FlagSpec = START_FLAGS[flag];
    if (spec.type === "boolean") {
      values[flag] = raw[flag] ?? spec.default;
      continue;
    }
    const text = textOf(raw, flag);
    if (text === undefined) {
      values[flag] = null;
      continue;
    }
    try {
      values[flag] = spec.parse(text, read);
    } catch (e) {
      throw new ConfigError(flag, text, e instanceof Error ? e.message : String(e), origins[flag]);
    }
  }
  const f = values as FlagValues;
  if (f["discovery-refresh-min"] > f["discovery-refresh-max"]) {
    const max = textOf(raw, "discovery-refresh-max");
    throw new ConfigError("discovery-refresh-min", textOf(raw, "discovery-refresh-min") ?? null, `must not exceed --discovery-refresh-max (${max})`, origins["discovery-refresh-min"]);
  }
  return derive(f, configFile, (flag) => origins[flag]);
}

/** Checks what involves several flags and computes what the gateway reads as one piece. */
function derive(f: FlagValues, configFile: string | null, origin: (flag: StartFlag) => string | undefined): Settings {
  const healthFiles = tlsFiles(f, "health-cacert", "health-cert", "health-key", origin);
  const upstream = tlsFiles(f, "upstream-cacert", "upstream-cert", "upstream-key", origin);
  const serverName = f["upstream-server-name"];
  let upstreamTls: UpstreamTls | null = null;
  if (f["upstream-tls"]) upstreamTls = { ...upstream, serverName: serverName ?? undefined, alpn: f["upstream-alpn"] };
  else if (upstream !== null || serverName !== null) {
    throw new ConfigError("upstream-tls", null, "--upstream-cacert, --upstream-cert, --upstream-key and --upstream-server-name need --upstream-tls");
  }
  const listenTls = tlsFiles(f, "listen-client-ca", "listen-cert", "listen-key", origin);
  if (listenTls !== null && listenTls.cert === undefined) throw new ConfigError("listen-cert", null, "--listen-client-ca needs --listen-cert and --listen-key");
  const health: HealthSettings = {
    check: f["health-check"],
    intervalMs: f["health-interval"],
    statusIntervalMs: f["health-status-interval"],
    spareIntervalMs: f["health-spare-interval"],
    timeoutMs: f["health-timeout"],
    rise: f["health-rise"],
    fall: f["health-fall"],
    retryDelayMs: f["retry-delay"],
    connectTimeoutMs: f["connect-timeout"],
    // Health checks speak the same TLS as the data path when only --upstream-* is given.
    tls: healthFiles ?? (upstreamTls === null ? null : { ca: upstreamTls.ca, cert: upstreamTls.cert, key: upstreamTls.key }),
    clusterId: f["cluster-id"],
  };
  return deepFreeze({
    flags: f,
    configFile,
    endpoints: f["endpoints-file"]?.endpoints ?? f.endpoints,
    listenAddrs: f["listen-addr"],
    upstreamTls,
    listenTls,
    health,
  });
}

/** A CA / certificate / key triple of flags as PEM contents (a half-given pair was refused before); null when none is set. */
function tlsFiles(f: FlagValues, caFlag: StartFlag, certFlag: StartFlag, keyFlag: StartFlag, origin: (flag: StartFlag) => string | undefined): TlsFiles | null {
  const ca = f[caFlag] as { path: string; pem: string } | null;
  const cert = f[certFlag] as { path: string; pem: string } | null;
  const key = f[keyFlag] as { path: string; pem: string } | null;
  if (ca === null && cert === null && key === null) return null;
  const files: { ca?: string; cert?: string; key?: string } = {};
  if (ca !== null) files.ca = ca.pem;
  if (cert !== null && key !== null) {
    try {
      checkKeyPair(cert.pem, cert.path, key.pem, key.path);
    } catch (e) {
      throw new ConfigError(keyFlag, key.path, e instanceof Error ? e.message : String(e), origin(keyFlag));
    }
    files.cert = cert.pem;
    files.key = key.pem;
  }
  return files;
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === "object" && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/**
 * The files a reload reads again, as `flag path` (`config /etc/etcd-gateway/config.yaml`,
 * `endpoints-file /etc/etcd-gateway/endpoints`, `upstream-cacert /etc/etcd/ca.pem`): the `--config`
 * file and every flag that names a file it reads (not `--access-log`, which is written). Empty:
 * a reload could change nothing, since flags and environment are read only at start.
 */
export function filesToReread(s: Settings): string[] {
  const files = s.configFile === null ? [] : [`config ${s.configFile}`];
  for (const flag of FLAG_NAMES) {
    if (flag === "config" || (START_FLAGS[flag] as FlagSpec).valueHint !== "path") continue;
    const v = s.flags[flag] as unknown;
    const path = typeof v === "string" ? v : (v as { path?: unknown } | null)?.path;
    if (typeof path === "string") files.push(`${flag} ${path}`);
  }
  return files;
}

/** A reload refused for what the file would do, not for a bad value: logged as a warning. */
export class RefusedReload extends ConfigError {}

/**
 * Builds a snapshot from the flags, the environment and the files as they are now, the way the
 * running process does: every file is read off the event loop, one at a time, each within
 * FILE_READ_TIMEOUT_MS (src/limits.ts), before anything is validated. With `running` (a reload),
 * a file that reads empty, or that stops giving endpoints so that the default would replace them
 * all, is refused: a file being rewritten (truncated, then written) reads empty, and HAProxy and
 * nginx refuse an empty configuration on reload too.
 *
 * @throws {ConfigError} as buildSettings; {RefusedReload} for those two.
 */
export async function loadSettings(flags: RawFlags, env: Record<string, string | undefined>, running?: Settings): Promise<Settings> {
  const files = new Map<string, string | Error>();
  const take = async (path: string) => {
    if (!files.has(path)) files.set(path, await readFileOffLoop(path).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e)))));
  };
  const read = (path: string) => {
    const got = files.get(path) ?? readFileBounded(path);
    if (got instanceof Error) throw got;
    return got;
  };
  const configFile = configPath(flags, env);
  if (configFile !== null) await take(configFile);
  const gathered = gatherFlags(flags, env, read);
  if (running !== undefined && gathered.emptyConfig === true) {
    throw new RefusedReload("config", configFile, `${JSON.stringify(configFile)}: empty (no keys), as a file being rewritten reads; not applied`);
  }
  for (const flag of FLAG_NAMES) {
    const path = (START_FLAGS[flag] as FlagSpec).valueHint === "path" && flag !== "config" ? textOf(gathered.raw, flag) : undefined;
    if (path !== undefined && path !== "") await take(path);
  }
  const next = buildSettings(gathered, read);
  if (running !== undefined) refuseDefaultEndpoints(running, gathered, next);
  return next;
}

/** Refuses a reload whose endpoints fall back to the default while the running ones are others. */
function refuseDefaultEndpoints(running: Settings, g: Gathered, next: Settings): void {
  if (g.raw.endpoints !== undefined || g.raw["endpoints-file"] !== undefined) return;
  if (JSON.stringify(running.endpoints) === JSON.stringify(next.endpoints)) return;
  const fallback = START_FLAGS.endpoints.default;
  const reason = `no endpoints given any more (the file's endpoints are null or gone): the default ${fallback} would replace every endpoint in use; write "endpoints: ${fallback}" to mean it`;
  throw new RefusedReload("endpoints", null, reason, g.configFile === null ? undefined : `config file ${g.configFile}`);
}

/** What a reload did: the snapshot now in force, the flags it changed, and those kept until a restart. */
export interface Reloaded {
  settings: Settings;
  applied: StartFlag[];
  restart: StartFlag[];
}

/**
 * Combines the running snapshot with a freshly loaded one: every changed flag that applies live
 * takes its new value; every changed flag that needs a restart keeps its running value.
 */
export function reloadSettings(current: Settings, next: Settings): Reloaded {
  const changed = FLAG_NAMES.filter((f) => JSON.stringify(current.flags[f]) !== JSON.stringify(next.flags[f]));
  const restart = changed.filter((f) => START_FLAGS[f].reload === "restart");
  const applied = changed.filter((f) => START_FLAGS[f].reload === "live");
  if (restart.length === 0) return { settings: next, applied, restart };
  const merged: Record<string, unknown> = { ...next.flags };
  for (const f of restart) merged[f] = current.flags[f];
  return { settings: derive(merged as FlagValues, next.configFile, () => undefined), applied, restart };
}

/**
 * The snapshot in force. Everyone reads `current`; only the reload path calls `swap`, and reloads
 * run one at a time (see `serialize`).
 */
export class SettingsStore {
  #current: Settings;
  constructor(initial: Settings) {
    this.#current = initial;
  }
  get current(): Settings {
    return this.#current;
  }
  swap(next: Settings): Settings {
    const previous = this.#current;
    this.#current = next;
    return previous;
  }
}

/**
 * Runs `task` one at a time: a call that arrives while it runs makes it run once more afterwards
 * (however many calls arrived), so the last run always starts after the last call. A reload reads
 * its files when it starts, so the newest file is the one applied last.
 */
export function serialize(task: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  let again = false;
  const loop = async () => {
    try {
      do {
        again = false;
        await task();
      } while (again);
    } finally {
      running = null;
    }
  };
  return () => {
    if (running !== null) {
      again = true;
      return running;
    }
    running = loop();
    return running;
  };
}
