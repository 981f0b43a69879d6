/**
 * The access log on a stream (--access-log=stderr, or stdout where it cannot have a descriptor of
 * its own) and on a FIFO: a reader that is slow or goes away costs lines, counted, never the
 * process, and never more than about 1 MiB held.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openAccessLog, streamAccessLog, type AccessRecord, type LineStream } from "../../src/accesslog.ts";
import { createLogger } from "../../src/log.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-accesslog-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const record: AccessRecord = { ts: "2026-12-02T00:00:00.000Z", start: "2026-12-02T00:00:00.000Z", client: "127.0.0.1:1", member: "127.0.0.1:2379", attempts: 1, tried: ["127.0.0.1:2379"], connect_ms: 0.1, duration_ms: 1, bytes_from_client: 1, bytes_from_member: 1, termination: "client-close" };

/** A stream that takes `ok` writes, then fails every one as a pipe whose reader has gone. */
function pipe(ok: number): LineStream & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    write(text, done) {
      if (text !== "" && lines.length >= ok) {
        queueMicrotask(() => done(Object.assign(new Error("EPIPE: broken pipe, write"), { code: "EPIPE" })));
        return false;
      }
      if (text !== "") lines.push(text);
      queueMicrotask(() => done(null));
      return true;
    },
    on: () => undefined,
  };
}

describe("streamAccessLog", () => {
  test("one JSON line per record", async () => {
    const out = pipe(10);
    const log = streamAccessLog("stdout", out, createLogger({ write: () => {} }));
    log.write(record);
    log.write(record);
    await log.close();
    expect(out.lines.map((l) => JSON.parse(l))).toEqual([record, record]);
    expect(out.lines.every((l) => l.endsWith("}\n"))).toBe(true);
  });

  test("a reader that went away (EPIPE): lines dropped and counted, logged once, close still resolves", async () => {
    const out = pipe(2);
    const logged: string[] = [];
    const log = streamAccessLog("stdout", out, createLogger({ write: (l) => logged.push(l) }));
    for (let i = 0; i < 5; i++) log.write(record);
    await Bun.sleep(1);
    for (let i = 0; i < 5; i++) log.write(record);
    await log.close();
    expect(out.lines).toHaveLength(2);
    expect(log.stats.dropped).toBe(8);
    expect(log.stats.writeErrors).toBe(3);
    expect(logged).toHaveLength(1);
    expect(JSON.parse(logged[0]!)).toMatchObject({ level: "error", msg: "access log write failed; dropping lines", file: "stdout", error: "write /dev/stdout: broken pipe" });
  });

  test("a reader that stops reading: about 1 MiB pending, the rest dropped and counted, logged once, and the recovery logged once it reads", async () => {
    const done: (() => void)[] = [];
    const stalled: LineStream = { write: (_text, cb) => (done.push(() => cb(null)), false), on: () => undefined };
    const logged: string[] = [];
    const log = streamAccessLog("stderr", stalled, createLogger({ write: (l) => logged.push(l) }));
    const size = JSON.stringify(record).length + 1;
    const fits = Math.floor((1 << 20) / size);
    for (let i = 0; i < fits + 100; i++) log.write(record);
    expect(done).toHaveLength(fits);
    expect(log.stats.dropped).toBe(100);
    expect(logged.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ level: "error", msg: "access log reader is not keeping up; dropping lines", file: "stderr" })]);
    for (const cb of done.splice(0)) cb(); // the reader reads
    log.write(record);
    expect(done).toHaveLength(1);
    expect(logged.map((l) => JSON.parse(l)).slice(1)).toEqual([expect.objectContaining({ level: "info", msg: "access log writing again", file: "stderr", dropped: 100 })]);
    expect(log.stats.writeErrors).toBe(0);
  });

  test("close() gives a reader that does not read a second, then counts what is pending as dropped", async () => {
    const stalled: LineStream = { write: () => false, on: () => undefined };
    const logged: string[] = [];
    const log = streamAccessLog("stderr", stalled, createLogger({ write: (l) => logged.push(l) }));
    for (let i = 0; i < 3; i++) log.write(record);
    await log.close();
    expect(log.stats.dropped).toBe(3);
    expect(JSON.parse(logged.at(-1)!)).toMatchObject({ level: "warn", msg: "access log closed with lines it could not write", file: "stderr", dropped: 3 });
  });
});

describe("openAccessLog on a FIFO", () => {
  function fifo(name: string): string {
    const path = join(dir, name);
    expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
    return path;
  }
  const readAll = (fd: number) => {
    const buf = Buffer.alloc(1 << 21);
    let text = "";
    for (;;) {
      try {
        const n = readSync(fd, buf);
        if (n === 0) return text;
        text += buf.toString("utf8", 0, n);
      } catch {
        return text; // EAGAIN: nothing more now
      }
    }
  };

  test("no reader: opening does not wait; lines are held and written once a reader opens it (retried every second)", async () => {
    const path = fifo("later.fifo");
    const logged: string[] = [];
    const log = openAccessLog(path, createLogger({ write: (l) => logged.push(l) }));
    log.write(record);
    expect(JSON.parse(logged[0]!)).toMatchObject({ level: "error", msg: "access log open failed; holding lines (about 1 MiB, then dropping) and retrying every second", file: path });
    const r = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      let text = "";
      for (let i = 0; i < 40 && text === ""; i++) {
        await Bun.sleep(50);
        text += readAll(r);
      }
      expect(text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))).toEqual([record]);
      expect(JSON.parse(logged.at(-1)!)).toMatchObject({ level: "info", msg: "access log writing again", dropped: 0 });
      expect(log.stats.reopenFailures).toBeGreaterThanOrEqual(1);
    } finally {
      await log.close();
      closeSync(r);
    }
  });

  test("a reader that reads nothing: the turn's lines never wait; close() counts what the FIFO did not take as dropped", async () => {
    const path = fifo("stalled.fifo");
    const r = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const logged: string[] = [];
      const log = openAccessLog(path, createLogger({ write: (l) => logged.push(l) }));
      const n = 1000; // about 280 KiB: more than the FIFO's 64 KiB
      for (let i = 0; i < n; i++) log.write(record);
      await Bun.sleep(20);
      await log.close();
      const read = readAll(r).split("\n");
      expect(read.pop()).toBe(""); // whole lines only
      for (const l of read) expect(JSON.parse(l)).toEqual(record);
      expect(read.length + log.stats.dropped).toBe(n);
      expect(log.stats.dropped).toBeGreaterThan(0);
      expect(log.stats.writeErrors).toBe(0);
      expect(JSON.parse(logged.at(-1)!)).toMatchObject({ level: "warn", msg: "access log closed with lines it could not write", dropped: log.stats.dropped });
    } finally {
      closeSync(r);
    }
  });
});
