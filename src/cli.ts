#!/usr/bin/env bun
/**
 * The command line: citty commands only. Flags become options, errors become one line and exit 1.
 *
 * @module
 */
import { defineCommand, runMain, type ArgsDef } from "citty";
import pkg from "../package.json" with { type: "json" };
import { parseFlags } from "./_argv.ts";
import { buildOptions, gatherFlags, START_FLAGS, type FlagValues, type GatewayOptions } from "./config.ts";
import { formatDuration } from "./duration.ts";
import { startAdmin, type Status } from "./admin.ts";
import { notify } from "./sdnotify.ts";
import { processStats } from "./metrics.ts";
import { startGateway, type Gateway } from "./gateway.ts";
import { parseHostPort } from "./endpoints.ts";
import { colours, renderStatus } from "./status.ts";
import { adopt, joinPrimary, reportingHealth, sendToPrimary, snapshot, startWorkers, workerNumber, type WorkerPool } from "./workers.ts";
import { createLogger, errorText, type Logger } from "./log.ts";

/** Exit codes; documented in the README. */
export const EXIT_OK = 0;
export const EXIT_USAGE = 1;

function parseHostPortFlag(flag: string, text: string): string {
  try {
    return parseHostPort(text).address;
  } catch (e) {
    throw new Error(`--${flag}: ${errorText(e)}`);
  }
}

function fail(message: string): never {
  process.stderr.write(`etcd-gateway: ${message}\n`);
  process.exit(EXIT_USAGE);
}

// citty renders help from this; parsing is ours (src/_argv.ts), since citty ignores unknown flags and
// keeps only the last of repeated ones.
const startArgs: ArgsDef = Object.fromEntries(
  Object.entries(START_FLAGS).map(([name, spec]) => [
    name,
    { type: spec.type, description: spec.description, valueHint: "valueHint" in spec ? spec.valueHint : undefined, default: "default" in spec ? spec.default : undefined },
  ]),
) as ArgsDef;

const start = defineCommand({
  meta: { name: "start", description: "Start the gateway: proxy TCP connections from --listen-addr to the etcd endpoints" },
  args: startArgs,
  async run({ rawArgs }) {
    let opts: GatewayOptions;
    let flags: FlagValues;
    try {
      flags = parseFlags(rawArgs, START_FLAGS);
      const gathered = gatherFlags(flags, process.env);
      opts = buildOptions(gathered.values, gathered.origins);
    } catch (e) {
      fail(errorText(e));
    }
    const worker = workerNumber();
    const log = createLogger({ level: opts.logLevel, format: opts.logFormat, base: worker === null ? undefined : { worker } });
    await serve(opts, log, () => {
      const gathered = gatherFlags(flags, process.env);
      return { file: gathered.configFile, options: buildOptions(gathered.values, gathered.origins) };
    });
  },
});

/**
 * @param reread builds the options again from the same flags, environment and (re-read) config file.
 */
async function serve(opts: GatewayOptions, log: Logger, reread: () => { file: string | null; options: GatewayOptions }): Promise<void> {
  // At run time nothing a client or member does may end the process: log and carry on.
  process.on("uncaughtException", (e) => log.error("unexpected error", { error: errorText(e), stack: e.stack }));
  process.on("unhandledRejection", (e) => log.error("unexpected rejection", { error: errorText(e) }));
  const worker = workerNumber();
  // Signal handlers go in before the listener exists: a SIGTERM right after `ready to proxy client
  // requests` must drain, not kill.
  let gateway: Gateway | undefined;
  let pool: WorkerPool | undefined;
  let draining = false;
  const startedAt = Date.now();
  const drain = async (signal: string) => {
    if (gateway === undefined) process.exit(EXIT_OK);
    if (draining) {
      log.warn("second signal: closing open connections now", { signal });
      gateway.proxy.closeAll("shut-down");
      // Give the resets a turn of the event loop to be recorded, then flush the access log.
      await Bun.sleep(10);
      await gateway.accessLog?.close();
      process.exit(EXIT_OK);
    }
    draining = true;
    if (worker === null) notify("STOPPING=1");
    log.info("draining: stopped accepting, waiting for open connections", {
      signal,
      connections: gateway.proxy.active,
      "drain-timeout": formatDuration(gateway.options.drainTimeoutMs),
    });
    const drainMs = gateway.options.drainTimeoutMs;
    const workersDone = pool?.stop("SIGTERM", drainMs + 2000);
    const closed = await gateway.drain(drainMs);
    if (closed > 0) log.warn("drain timeout reached: closed open connections", { connections: closed });
    await workersDone;
    await gateway.accessLog?.close();
    log.info("stopped");
    process.exit(EXIT_OK);
  };
  process.on("SIGTERM", () => void drain("SIGTERM"));
  process.on("SIGINT", () => void drain("SIGINT"));
  // SIGHUP: re-read the config file and apply what can change live; re-read --endpoints-file and
  // re-run discovery (in the primary; workers reload their settings when the primary tells them).
  const reload = async () => {
    if (gateway === undefined) return;
    let next: { file: string | null; options: GatewayOptions };
    try {
      next = reread();
    } catch (e) {
      log.error("config reload rejected; keeping the running configuration", { error: errorText(e) });
      return;
    }
    // Without --config this still re-reads the certificate and key files the flags name.
    const { applied, restart } = await gateway.reconfigure(next.options);
    log.info("config reloaded", { file: next.file, applied });
    if (restart.length > 0) log.warn("config changes need a restart to take effect", { keys: restart });
    if (worker === null) {
      pool?.reload();
      await gateway.refresh();
    }
  };
  process.on("SIGHUP", () => void reload());
  // SIGUSR1: reopen the access log file after logrotate moved it (workers are told too).
  process.on("SIGUSR1", () => {
    gateway?.accessLog?.reopen();
    pool?.signal("SIGUSR1");
  });

  if (worker !== null) {
    // A worker: its primary checked the configuration, decides member state, and logs readiness.
    const state = await joinPrimary(
      (s) => gateway && adopt(s, gateway.members, gateway.policy, gateway.memberDown),
      () => void drain("primary gone"),
      () => void reload(),
      () => (gateway === undefined ? { members: [], listener: { accepted: 0, limitReached: 0, tlsFailures: [] }, active: 0 } : processStats(gateway.members.list, gateway.proxy.stats, gateway.proxy.active)),
    );
    try {
      gateway = await startGateway(opts, log, { reusePort: true, health: (members) => reportingHealth(members, sendToPrimary) });
    } catch (e) {
      fail(errorText(e));
    }
    adopt(state, gateway.members, gateway.policy);
    sendToPrimary({ t: "ready" });
    return;
  }

  const multi = opts.workers > 1;
  try {
    gateway = await startGateway(opts, log, multi ? { reusePort: true, onChange: () => share() } : undefined);
  } catch (e) {
    fail(errorText(e));
  }
  const gw = gateway;
  const share = () => pool?.broadcast(snapshot(gw.members, gw.policy));
  if (multi) {
    pool = startWorkers({
      count: opts.workers,
      log,
      state: () => snapshot(gw.members, gw.policy),
      onReport: (msg) => {
        const m = gw.members.list[msg.i];
        if (m === undefined) return;
        if (msg.t === "failed") gw.health.dialFailed(m, msg.reason);
        else gw.health.dialSucceeded(m);
        share(); // also when nothing changed here: the reporting worker already moved on its own
      },
    });
    await pool.ready;
  }
  if (opts.adminAddr !== null) {
    try {
      startAdmin(opts.adminAddr, gw, opts, pkg.version, startedAt, () => pool?.stats(500) ?? Promise.resolve([]));
    } catch (e) {
      fail(`--admin-addr: cannot listen on ${opts.adminAddr.address}: ${errorText(e)}`);
    }
  }
  log.info("ready to proxy client requests", {
    "listen-addr": opts.listenAddrs.map((a) => a.address).join(","),
    endpoints: gw.members.list.map((m) => m.address),
    policy: opts.policy,
    workers: opts.workers,
    ...(opts.adminAddr === null ? {} : { "admin-addr": opts.adminAddr.address }),
  });
  if (opts.upstreamTls !== null && opts.listenTls === null) {
    const exposed = opts.listenAddrs.filter((a) => a.kind === "tcp" && !/^(127\.|::1$|localhost$)/.test(a.tcp.host)).map((a) => a.address);
    if (exposed.length > 0) {
      log.warn("listener reachable beyond loopback without TLS while the gateway speaks TLS to members with its own identity", { "listen-addr": exposed });
    }
  }
  // Like etcd: tell systemd (Type=notify) that the gateway is listening.
  const notified = notify(`READY=1\nMAINPID=${process.pid}`);
  if (notified === "sent") log.info("notified init daemon", { state: "READY=1" });
  else if (notified !== "unset") log.error("failed to notify systemd for readiness", { error: notified });
}

const statusCommand = defineCommand({
  meta: { name: "status", description: "Show the members of a running gateway and their state (asks its --admin-addr)" },
  args: {
    "admin-addr": { type: "string", default: "127.0.0.1:23791", valueHint: "host:port", description: "the gateway's --admin-addr" },
    json: { type: "boolean", default: false, description: "print the raw JSON of /status" },
  },
  async run({ rawArgs }) {
    let addr: string;
    let json: boolean;
    try {
      const v = parseFlags(rawArgs, {
        "admin-addr": { type: "string", description: "" },
        json: { type: "boolean", description: "" },
      });
      addr = parseHostPortFlag("admin-addr", typeof v["admin-addr"] === "string" ? v["admin-addr"] : "127.0.0.1:23791");
      json = v.json === true;
    } catch (e) {
      fail(errorText(e));
    }
    let body: Status;
    try {
      const r = await fetch(`http://${addr}/status`, { signal: AbortSignal.timeout(3000) });
      body = (await r.json()) as Status;
    } catch (e) {
      fail(`cannot reach the admin endpoint at ${addr}: ${errorText(e)} (is the gateway running with --admin-addr=${addr}?)`);
    }
    process.stdout.write(json ? JSON.stringify(body, null, 2) + "\n" : renderStatus(body, colours()));
  },
});

const version = defineCommand({
  meta: { name: "version", description: "Print the version" },
  run() {
    process.stdout.write(`etcd-gateway ${pkg.version}\nBun ${Bun.version}\nPlatform ${process.platform}/${process.arch}\n`);
  },
});

export const main = defineCommand({
  meta: { name: "etcd-gateway", version: pkg.version, description: pkg.description },
  subCommands: { start, status: statusCommand, version },
});

if (import.meta.main) void runMain(main);
