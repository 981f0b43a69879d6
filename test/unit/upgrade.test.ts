/**
 * The old gateway's side of an upgrade in place (src/upgrade.ts), with stand-in new gateways: one
 * that says it is ready, one that exits first, one that never gets ready (stopped after the
 * bound), and a second upgrade while one waits. test/e2e/upgrade.test.ts runs the real binary.
 */
import { afterEach, expect, test } from "bun:test";
import { Upgrader } from "../../src/upgrade.ts";
import { alive } from "../support/process.ts";

const bun = process.execPath;
const started: number[] = [];
afterEach(() => {
  for (const pid of started.splice(0)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
});

test("a new gateway that says it is ready: ok with its pid, which keeps running", async () => {
  const u = new Upgrader(10_000, () => [bun, "-e", "process.send({ t: 'upgraded' }); setTimeout(() => {}, 30_000)"]);
  const r = await u.start([]);
  expect(r.ok).toBe(true);
  if (!r.ok) return;
  started.push(r.pid);
  expect(alive(r.pid)).toBe(true);
  expect(u.pending).toBeNull();
});

test("one that exits before it is ready: not ok, with its exit code", async () => {
  const r = await new Upgrader(10_000, () => ["sh", "-c", "exit 7"]).start([]);
  expect(r).toEqual({ ok: false, reason: expect.stringMatching(/^the new gateway \(pid \d+\) exited before it was ready \(exit code 7\)/) });
});

test("one that is not ready within the bound is stopped, and the upgrade is not ok", async () => {
  const u = new Upgrader(300, () => ["sh", "-c", "echo $$; exec sleep 30"]);
  const r = await u.start([]);
  expect(r).toEqual({ ok: false, reason: expect.stringMatching(/was not ready within 0.3s; stopped it$/) });
  const pid = Number(/pid (\d+)/.exec(r.ok ? "" : r.reason)![1]);
  started.push(pid);
  for (let i = 0; i < 50 && alive(pid); i++) await Bun.sleep(20);
  expect(alive(pid)).toBe(false);
});

test("a second upgrade while one waits is refused, naming the one that waits; never two new gateways", async () => {
  const u = new Upgrader(10_000, () => [bun, "-e", "setTimeout(() => process.send({ t: 'upgraded' }), 300); setTimeout(() => {}, 30_000)"]);
  const first = u.start([]);
  const pending = u.pending;
  expect(pending).not.toBeNull();
  expect(await u.start([])).toEqual({ ok: false, reason: `an upgrade is already in progress (new process ${pending})` });
  const r = await first;
  expect(r).toEqual({ ok: true, pid: pending! });
  started.push(pending!);
});
