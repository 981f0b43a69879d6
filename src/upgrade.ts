/**
 * Upgrade in place (SIGUSR2, as nginx upgrades its binary): the running gateway starts the binary
 * at its own path again, with its own command line, and hands it every listening socket it holds
 * (those of every worker, and the admin endpoint's) as descriptors from 3 on (src/inherit.ts). The
 * new gateway binds nothing it was handed, so the sockets never close and a connect made at any
 * moment waits in a backlog until one of the two accepts it. Once the new gateway says it is
 * ready, the old one makes it systemd's main process (`MAINPID=`), stops accepting and drains for
 * `--drain-timeout`. A new gateway that exits before it is ready, or is not ready in time, is
 * stopped, and the old one keeps serving and says so. One upgrade at a time (docs/restarts.md).
 *
 * @module
 */
import type { Subprocess } from "bun";
import type { Owner } from "./inherit.ts";
import { selfCommand, spawnWithSockets } from "./workers.ts";

/** Set in the new gateway's environment to the pid of the one it replaces. */
export const UPGRADE_ENV = "ETCD_GATEWAY_UPGRADE_FROM";
/** How long the new gateway has to be ready (discovery and member checks included) before it is stopped. */
export const UPGRADE_READY_MS = 60_000;

/** How long a new gateway that was not ready in time has to exit after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5000;

export type UpgradeResult = { ok: true; pid: number } | { ok: false; reason: string };

/** The new gateway's word to the one it replaces. */
type Upgraded = { t: "upgraded" };

/** The old gateway's side: starts the new one and waits for its word. */
export class Upgrader {
  #next: Subprocess | null = null;

  /** @param command the new gateway's command line (tests give their own). */
  constructor(
    private readonly readyMs: number = UPGRADE_READY_MS,
    private readonly command: () => string[] = selfCommand,
  ) {}

  /** The new gateway while an upgrade waits for it, else null. */
  get pending(): number | null {
    return this.#next?.pid ?? null;
  }

  /**
   * Starts the new gateway with `sockets` and resolves once it is ready, or with why not (it
   * exited, was not ready in time, or an upgrade is already waiting).
   */
  start(sockets: readonly { fd: number; owner: Owner }[]): Promise<UpgradeResult> {
    if (this.#next !== null) return Promise.resolve({ ok: false, reason: `an upgrade is already in progress (new process ${this.#next.pid})` });
    return new Promise<UpgradeResult>((resolve) => {
      let settled = false;
      const settle = (r: UpgradeResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#next = null;
        resolve(r);
      };
      let next: Subprocess;
      try {
        next = spawnWithSockets(this.command(), sockets, { [UPGRADE_ENV]: String(process.pid) }, (msg: Upgraded) => msg.t === "upgraded" && settle({ ok: true, pid: next.pid }));
      } catch (e) {
        resolve({ ok: false, reason: `cannot start ${this.command()[0]}: ${e instanceof Error ? e.message : String(e)}` });
        return;
      }
      this.#next = next;
      const timer = setTimeout(() => {
        next.kill("SIGTERM");
        // One that does not even drain (hung before its handlers are in) is killed: it holds our sockets.
        setTimeout(() => next.exitCode === null && next.signalCode === null && next.kill("SIGKILL"), STOP_GRACE_MS).unref();
        settle({ ok: false, reason: `the new gateway (pid ${next.pid}) was not ready within ${this.readyMs / 1000}s; stopped it` });
      }, this.readyMs);
      void next.exited.then((code) => settle({ ok: false, reason: `the new gateway (pid ${next.pid}) exited before it was ready (${next.signalCode ?? `exit code ${code}`}); its own error is logged above` }));
    });
  }

  /** Stops a new gateway that is not ready yet (the old one was told to stop meanwhile). */
  cancel(): void {
    this.#next?.kill("SIGTERM");
  }
}

/**
 * In a gateway started by an upgrade: the pid of the one it replaces, read once and removed from
 * the environment (so its own workers and successors do not see it), or null.
 */
export function takePredecessor(env: Record<string, string | undefined> = process.env): number | null {
  const v = env[UPGRADE_ENV];
  delete env[UPGRADE_ENV];
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : null;
}

/** Tells the gateway this one replaces that it is ready to take over. */
export function tellPredecessor(): void {
  process.send?.({ t: "upgraded" } satisfies Upgraded);
}
