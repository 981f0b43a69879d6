/**
 * The kernel's TCP behaviour that the silent-peer check (src/datapath/stall.ts) rests on, measured
 * on a sender whose receiver stopped reading (a paused Bun socket: its window closes and its kernel
 * answers every window probe). docs/bun.md, "TCP_USER_TIMEOUT cuts slow readers", has the numbers.
 *
 * In this process on 127.0.0.1 with kernel-chosen ports; each test takes a few seconds.
 */
import { afterEach, expect, test } from "bun:test";
import type { Socket } from "bun";
import { ptr } from "bun:ffi";
import { libc, sendQueue, unansweredFor } from "../../src/libc.ts";
import { waitFor } from "../support/net.ts";

const cleanups: (() => unknown)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A sender whose peer never reads: it writes until the kernel takes nothing more, and writes again on each drain. */
async function senderToStoppedReader() {
  let sender: Socket<undefined> | undefined;
  let closedWith: string | undefined;
  const chunk = new Uint8Array(1 << 20);
  const fill = (s: Socket<undefined>) => {
    for (let i = 0; i < 64 && s.write(chunk) === chunk.length; i++);
  };
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: { open: (s) => void (sender = s), data() {}, drain: fill, close: (_s, err) => void (closedWith = err === undefined ? "clean" : ((err as NodeJS.ErrnoException).code ?? String(err))) },
  });
  const reader = await Bun.connect({ hostname: "127.0.0.1", port: l.port, socket: { open: (s) => s.pause(), data() {} } });
  cleanups.push(() => (reader.terminate(), l.stop(true)));
  const s = await waitFor("the accepted socket", () => sender);
  const fd = (s as unknown as { fd: number }).fd;
  return { fd, fill: () => fill(s), closedWith: () => closedWith };
}

test("TCP_USER_TIMEOUT aborts a peer whose window stays closed though it answers every probe (Linux 5.5+); Bun reports ETIMEDOUT", async () => {
  const sender = await senderToStoppedReader();
  const value = new Int32Array([1000]);
  expect(libc().setsockopt(sender.fd, 6 /* IPPROTO_TCP */, 18 /* TCP_USER_TIMEOUT */, ptr(value), 4)).toBe(0);
  const t0 = performance.now();
  sender.fill();
  await waitFor("the sender's close", () => sender.closedWith(), 10_000);
  console.log(`TCP_USER_TIMEOUT=1000 ms: a live reader with its window closed cut after ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  expect(sender.closedWith()).toBe("ETIMEDOUT");
});

test("without it the connection stays, bytes wait in the send queue, and between probes TCP_INFO shows nothing unanswered for long", async () => {
  const sender = await senderToStoppedReader();
  sender.fill();
  const seen: number[] = [];
  // 5 s: window probes back off 0.2, 0.4, 0.8, 1.6, 3.2 s apart; each is answered.
  for (const end = performance.now() + 5000; performance.now() < end; await Bun.sleep(100)) seen.push(unansweredFor(sender.fd));
  console.log(`unansweredFor over 5 s, max ${Math.max(...seen)} ms, nonzero in ${seen.filter((v) => v > 0).length} of ${seen.length} samples`);
  expect(sender.closedWith()).toBeUndefined();
  expect(sendQueue(sender.fd)).toBeGreaterThan(0);
  // The gateway's limit is at least 11 s (src/libc.ts, silenceLimitMs): far above anything seen here.
  expect(Math.max(...seen)).toBeLessThan(3000);
}, 10_000);
