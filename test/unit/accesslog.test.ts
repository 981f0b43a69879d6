/** The access log on a stream (--access-log=stdout, -, stderr): a reader that goes away costs lines, counted, never the process. */
import { describe, expect, test } from "bun:test";
import { streamAccessLog, type AccessRecord, type LineStream } from "../../src/accesslog.ts";
import { createLogger } from "../../src/log.ts";

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
    expect(JSON.parse(logged[0]!)).toMatchObject({ level: "error", msg: "access log write failed; dropping lines", file: "stdout", error: "EPIPE: broken pipe, write" });
  });
});
