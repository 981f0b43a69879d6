/**
 * The life of an `etcd-gateway start` process: load the settings, start the gateway (and its
 * workers, or join a primary as a worker), serve the admin endpoint, say it is ready, then handle
 * signals: SIGHUP reloads (one at a time), SIGUSR1 reopens the access log, SIGUSR2 upgrades in
 * place (src/upgrade.ts), SIGTERM/SIGINT drain and exit. Exit codes: 0 after a drain, 1 for bad
 * settings (one line on stderr).
 *
 * @module
 */
import pkg from "../package.json" with { type: "json" };
import { ETCD_CLIENT_PORT } from "./addresses.ts";
import { startAdmin } from "./admin.ts";
import type { HttpListener } from "./admin-http.ts";
import { formatDuration } from "./duration.ts";
import { parseFlags, START_FLAGS, type RawFlags } from "./flags.ts";
import { startGateway, type Gateway } from "./gateway.ts";
import { createLogger, errorText, type Logger } from "./log.ts";
import { emptyStats, processStats } from "./metrics.ts";
import { matchInherited, nameText, takeInherited, type Inherited, type Matched } from "./inherit.ts";
import { libc } from "./libc.ts";
import { notify } from "./sdnotify.ts";
import { filesToReread, loadSettings, RefusedReload, serialize, type Settings } from "./settings.ts";
import { takePredecessor, tellPredecessor, Upgrader } from "./upgrade.ts";
import { adopt, joinPrimary, reportToPrimary, selfCommand, sendToPrimary, snapshot, workerNumber, WorkerPool } from "./workers.ts";

const EXIT_OK = 0;
const EXIT_USAGE = 1;

/** Prints `etcd-gateway: <message>` on one line and exits 1. */
export function fail(message: string): never {
  process.stderr.write(`etcd-gateway: ${message}\n`);
  process.exit(EXIT_USAGE);
}

/**
 * Builds a snapshot from the flags, the environment and the files (read now, off the event loop);
 * `running`: for a reload, which refuses what would empty the configuration.
 */
function load(flags: RawFlags, running?: Settings): Promise<Settings> {
  return loadSettings(flags, process.env, running);
}

/** Runs `etcd-gateway start` with `argv` until a signal ends it. */
export async function serve(argv: readonly string[]): Promise<void> {
  let flags: RawFlags;
  let settings: Settings;
  let handed: Inherited[];
  const predecessor = takePredecessor();
  try {
    // Sockets from systemd or a predecessor first: nothing else may take their descriptor numbers.
    handed = takeInherited();
    flags = parseFlags(argv, START_FLAGS);
    settings = await load(flags);
  } catch (e) {
    fail(errorText(e));
  }
  const worker = workerNumber();
  const log = createLogger({ level: settings.flags["log-level"], format: settings.flags["log-format"], base: worker === null ? undefined : { worker } });
  await new GatewayProcess(settings, log, (running) => load(flags, running), worker, { handed, predecessor }).run();
}

/** What a process was handed at start: listening sockets (src/inherit.ts), and the pid of the gateway it replaces (src/upgrade.ts). */
interface Start {
  readonly handed: readonly Inherited[];
  readonly predecessor: number | null;
}

class GatewayProcess {
  #gateway: Gateway | undefined;
  #pool: WorkerPool | undefined;
  #admin: HttpListener[] = [];
  readonly #upgrader = new Upgrader();
  #draining = false;
  readonly #startedAt = Date.now();
  /** SIGHUP: one reload at a time; one that arrives meanwhile runs after it, reading the newest files. */
  readonly reload = serialize(() => this.reloadOnce());

  constructor(
    private readonly settings: Settings,
    private readonly log: Logger,
    private readonly load: (running: Settings) => Promise<Settings>,
    private readonly worker: number | null,
    private readonly start: Start,
  ) {}

  async run(): Promise<void> {
    this.installHandlers();
    if (this.worker !== null) await this.runWorker();
    else await this.runPrimary();
  }

  /** Signal handlers go in before the listener exists: a SIGTERM right after `ready` must drain, not kill. */
  private installHandlers(): void {
    const log = this.log;
    // At run time nothing a client or member does may end the process: log and carry on.
    process.on("uncaughtException", (e) => log.error("unexpected error", { error: errorText(e), stack: e.stack }));
    process.on("unhandledRejection", (e) => log.error("unexpected rejection", { error: errorText(e) }));
    // Runtime warnings go to the log, one JSON line each, not as plain text on stderr.
    process.removeAllListeners("warning");
    process.on("warning", (w) => log.warn("runtime warning", { name: w.name, error: w.message }));
    process.on("SIGTERM", () => void this.drain("SIGTERM"));
    process.on("SIGINT", () => void this.drain("SIGINT"));
    process.on("SIGHUP", () => void this.reload());
    process.on("SIGUSR2", () => void this.upgrade());
    // SIGUSR1: reopen the access log file after logrotate moved it (workers are told too).
    process.on("SIGUSR1", () => {
      this.#gateway?.accessLog?.reopen();
      this.#pool?.signal("SIGUSR1");
    });
  }

  /**
   * SIGTERM/SIGINT: stop accepting, let connections finish for --drain-timeout, exit 0; a second
   * signal resets at once. `handedOver`: after an upgrade, the new gateway holds the sockets and is
   * systemd's main process, so neither the unix socket files nor STOPPING=1 are ours any more.
   */
  private async drain(signal: string, handedOver = false): Promise<void> {
    const gw = this.#gateway;
    this.#upgrader.cancel();
    if (gw === undefined) process.exit(EXIT_OK);
    if (this.#draining) {
      this.log.warn("second signal: closing open connections now", { signal });
      gw.proxy.closeAll("shut-down");
      // Give the resets a turn of the event loop to be recorded, then flush the access log.
      await Bun.sleep(10);
      await gw.accessLog?.close();
      process.exit(EXIT_OK);
    }
    this.#draining = true;
    if (this.worker === null && !handedOver) notify("STOPPING=1");
    if (handedOver) for (const l of this.#admin) l.stop(true);
    const drainMs = gw.settings.flags["drain-timeout"];
    this.log.info("draining: stopped accepting, waiting for open connections", { signal, connections: gw.proxy.active, "drain-timeout": formatDuration(drainMs) });
    const workersDone = this.#pool?.stop("SIGTERM", drainMs + 2000);
    const closed = await gw.drain(drainMs, handedOver);
    if (closed > 0) this.log.warn("drain timeout reached: closed open connections", { connections: closed });
    await workersDone;
    await gw.accessLog?.close();
    this.log.info("stopped");
    process.exit(EXIT_OK);
  }

  /**
   * One reload: a new snapshot from the files as they are now (`--config`, `--endpoints-file`,
   * certificates), applied where it can be live; then discovery runs again. Logged as what it did:
   * `config reloaded` with the files read again (`reread`) and the flags whose new value is in force
   * (`applied`), `reloading endpoints (SIGHUP)` with the discovery that runs again, or
   * `nothing to reload` when there is neither (flags and environment are read only at start).
   */
  private async reloadOnce(): Promise<void> {
    const gw = this.#gateway;
    if (gw === undefined) return;
    const f = gw.settings.flags;
    const discovery = this.worker !== null ? [] : [...(f["discovery-srv"] !== null ? ["dns srv"] : []), ...(f["endpoints-auto-sync-interval"] > 0 ? ["member list"] : [])];
    const files = filesToReread(gw.settings).length > 0;
    if (!files && discovery.length === 0) {
      this.log.info("nothing to reload", { reason: "no --config, --endpoints-file or certificate file to read again; flags and environment are read only at start" });
      return;
    }
    if (files && !(await this.reloadFiles(gw))) return;
    if (this.worker !== null) return;
    if (files) this.#pool?.reload();
    if (discovery.length === 0) return;
    this.log.info("reloading endpoints (SIGHUP)", { discovery });
    await gw.refresh();
  }

  /**
   * Reads the files again and swaps the new snapshot in; false when they were rejected: at error
   * level for a bad file, at warn level for one that would empty the configuration (RefusedReload).
   */
  private async reloadFiles(gw: Gateway): Promise<boolean> {
    let loaded: Settings;
    try {
      loaded = await this.load(gw.settings);
    } catch (e) {
      const level = e instanceof RefusedReload ? "warn" : "error";
      this.log[level]("config reload rejected; keeping the running configuration", { error: errorText(e) });
      return false;
    }
    const { applied, restart } = await gw.reload(loaded);
    this.log.info("config reloaded", { reread: filesToReread(loaded), applied });
    if (restart.length > 0) this.log.warn("config changes need a restart to take effect", { keys: restart });
    return true;
  }

  /** A worker: its primary checked the configuration, decides member state, and logs readiness. */
  private async runWorker(): Promise<void> {
    const state = await joinPrimary(
      (s) => this.#gateway && adopt(s, this.#gateway.members, this.#gateway.policy),
      () => void this.drain("primary gone"),
      () => void this.reload(),
      () => {
        const gw = this.#gateway;
        if (gw === undefined) return emptyStats(this.worker!);
        return processStats([...gw.members.list, ...gw.members.retired], gw.proxy.stats, { active: gw.proxy.active, max: gw.proxy.maxConnections }, gw.accessLog?.stats, this.worker);
      },
    );
    try {
      const handed = matchInherited(this.start.handed, this.settings.listenAddrs, []);
      this.#gateway = await startGateway(this.settings, this.log, { handed, reports: (members) => reportToPrimary(members) });
    } catch (e) {
      fail(errorText(e));
    }
    adopt(state, this.#gateway.members, this.#gateway.policy);
    sendToPrimary({ t: "ready" });
  }

  /** The sockets handed at start, sorted to the addresses; a predecessor's that no address wants any more are closed. */
  private matchHanded(): Matched {
    const s = this.settings;
    const m = matchInherited(this.start.handed, s.listenAddrs, s.flags["admin-addr"] ?? []);
    for (const u of m.unused) {
      this.log.info("closing a handed-over socket no address wants any more", { fd: u.fd, address: nameText(u.at) });
      libc().close(u.fd);
    }
    return m;
  }

  private async runPrimary(): Promise<void> {
    const s = this.settings;
    const count = s.flags.workers;
    const share = () => this.#pool?.broadcast(snapshot(gw.members, gw.policy));
    let gw: Gateway;
    let handed: Matched;
    try {
      handed = this.matchHanded();
      gw = await startGateway(s, this.log, { processes: count, handed, changed: count > 1 ? share : undefined });
    } catch (e) {
      fail(errorText(e));
    }
    this.#gateway = gw;
    if (count > 1) await this.startWorkers(gw, count, share);
    const admin = s.flags["admin-addr"];
    if (admin !== null) {
      try {
        this.#admin = await startAdmin(admin, gw, { version: pkg.version, startedAt: this.#startedAt, workerStats: () => this.#pool?.stats(500) ?? Promise.resolve([]), log: this.log }, handed.admin);
      } catch (e) {
        fail(`--admin-addr: ${errorText(e)}`);
      }
    }
    this.announceReady(gw);
  }

  private async startWorkers(gw: Gateway, count: number, share: () => void): Promise<void> {
    this.#pool = new WorkerPool({
      count,
      log: this.log,
      state: () => snapshot(gw.members, gw.policy),
      sockets: (k) => gw.proxy.sockets.forProcess(k, count),
      onReport: (msg) => {
        const m = gw.members.list[msg.i];
        if (m === undefined) return;
        if (msg.t === "failed") gw.health!.dialFailed(m, msg.reason);
        else if (msg.t === "stall") gw.health!.stallSuspected(m, msg.ms);
        else gw.health!.dialSucceeded(m);
        share(); // also when nothing changed here: the reporting worker waits for the primary's word
      },
    });
    await this.#pool.ready;
  }

  /**
   * SIGUSR2: upgrade in place (src/upgrade.ts). The new gateway gets every listening socket; once it
   * is ready it becomes systemd's main process and this one drains. Refused while draining or while
   * another upgrade waits; a new gateway that fails leaves this one serving.
   */
  private async upgrade(): Promise<void> {
    const gw = this.#gateway;
    if (this.worker !== null || gw === undefined) return;
    if (this.#draining) return this.log.warn("upgrade refused: this gateway is draining; send SIGUSR2 to the one serving", {});
    const pending = this.#upgrader.pending;
    if (pending !== null) return this.log.warn("upgrade refused: another upgrade is in progress", { pid: pending });
    const sockets = [...gw.proxy.sockets.all, ...this.#admin.map((l) => ({ fd: l.fd, owner: l.owner }))];
    this.log.info("upgrading in place: starting the new gateway with the listening sockets", { binary: selfCommand()[0], sockets: sockets.length });
    const r = await this.#upgrader.start(sockets);
    if (this.#draining) {
      // Told to stop meanwhile: the new gateway stops along with this one.
      if (r.ok) process.kill(r.pid, "SIGTERM");
      return this.log.info("upgrade abandoned: this gateway is stopping", r.ok ? { pid: r.pid } : { reason: r.reason });
    }
    if (!r.ok) return this.log.error("upgrade failed; still serving", { reason: r.reason });
    const notified = notify(`MAINPID=${r.pid}`);
    if (notified !== "sent" && notified !== "unset") this.log.error("failed to tell systemd the new main process", { pid: r.pid, error: notified });
    this.log.info("upgraded in place: the new gateway serves; draining", { pid: r.pid });
    await this.drain("upgrade", true);
  }

  /** `ready to proxy client requests`, as etcd logs it, then READY=1 to systemd (Type=notify). */
  private announceReady(gw: Gateway): void {
    const s = gw.settings;
    const admin = s.flags["admin-addr"];
    const defaulted = s.endpoints.filter((e) => e.defaultPort === true && gw.members.list.some((m) => m.address === e.address));
    if (defaulted.length > 0) this.log.info(`no port given; using etcd's client port ${ETCD_CLIENT_PORT}`, { endpoints: defaulted.map((e) => e.address) });
    this.log.info("ready to proxy client requests", {
      "listen-addr": s.listenAddrs.map((a) => a.address).join(","),
      endpoints: gw.members.list.map((m) => m.address),
      policy: s.flags.policy,
      workers: s.flags.workers,
      ...(admin === null ? {} : { "admin-addr": admin.map((a) => a.address).join(",") }),
      ...(this.start.predecessor === null ? {} : { "upgraded-from": this.start.predecessor }),
      ...(this.start.handed.length === 0 ? {} : { "handed-sockets": this.start.handed.length, "from-systemd": this.start.handed.filter((h) => h.owner === "systemd").length }),
    });
    if (s.upstreamTls !== null && s.listenTls === null) {
      const exposed = s.listenAddrs.filter((a) => a.kind === "tcp" && !/^(127\.|::1$|localhost$)/.test(a.tcp.host)).map((a) => a.address);
      if (exposed.length > 0) this.log.warn("listener reachable beyond loopback without TLS while the gateway speaks TLS to members with its own identity", { "listen-addr": exposed });
    }
    // After an upgrade the old gateway makes this one systemd's main process once it hears from it.
    if (this.start.predecessor !== null) return tellPredecessor();
    const notified = notify(`READY=1\nMAINPID=${process.pid}`);
    if (notified === "sent") this.log.info("notified init daemon", { state: "READY=1" });
    else if (notified !== "unset") this.log.error("failed to notify systemd for readiness", { error: notified });
  }
}
