/**
 * Files named by flags (issue 20): only a regular file is read, a read never holds the event loop
 * (a FIFO is refused without waiting for a writer; a read stuck in the kernel fails after a bound
 * and holds one file-system thread at most), and a reload refuses a file that would empty the
 * configuration.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../../src/flags.ts";
import { readFileBounded, readFileOffLoop } from "../../src/limits.ts";
import { loadSettings, RefusedReload } from "../../src/settings.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-config-files-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const fifo = (name: string) => {
  const p = join(dir, name);
  const r = Bun.spawnSync(["mkfifo", p]);
  expect(r.exitCode).toBe(0);
  return p;
};
const FIFO_TEXT = "is a pipe (FIFO), not a regular file (process substitution <(...) and a piped /dev/stdin are pipes too); give a regular file";

describe("only a regular file is read, and opening one never waits", () => {
  test("a FIFO without a writer is refused at once, not waited for in open(2)", () => {
    // Found: openSync of a FIFO blocked the process until a writer came.
    const p = fifo("sync.fifo");
    const t0 = performance.now();
    expect(() => readFileBounded(p)).toThrow(`${JSON.stringify(p)} ${FIFO_TEXT}`);
    expect(performance.now() - t0).toBeLessThan(1000);
  });
  test("a character device, a directory, a socket-less path", () => {
    expect(() => readFileBounded("/dev/zero")).toThrow('"/dev/zero" is a character device, not a regular file');
    expect(() => readFileBounded("/dev/null")).toThrow('"/dev/null" is a character device, not a regular file');
    expect(() => readFileBounded("/")).toThrow("read /: is a directory");
    expect(() => readFileBounded(join(dir, "missing"))).toThrow(`open ${join(dir, "missing")}: no such file or directory`);
  });
  test("a regular file larger than the bound is refused without being read whole (sparse, 2 MiB)", () => {
    const p = file("big.yaml", "");
    truncateSync(p, 2 << 20);
    expect(() => readFileBounded(p)).toThrow(`${JSON.stringify(p)}: larger than 1048576 bytes`);
  });
});

describe("readFileOffLoop: off the event loop, bounded in time", () => {
  test("reads a regular file; refuses a FIFO, a device and a directory as the sync read does", async () => {
    expect(await readFileOffLoop(file("ok.yaml", "policy: sticky\n"))).toBe("policy: sticky\n");
    const p = fifo("async.fifo");
    await expect(readFileOffLoop(p)).rejects.toThrow(`${JSON.stringify(p)} ${FIFO_TEXT}`);
    await expect(readFileOffLoop("/dev/zero")).rejects.toThrow('"/dev/zero" is a character device, not a regular file');
    await expect(readFileOffLoop("/")).rejects.toThrow("read /: is a directory");
    await expect(readFileOffLoop(join(dir, "missing"))).rejects.toThrow(`open ${join(dir, "missing")}: no such file or directory`);
  });

  test("a read stuck in the kernel fails after the bound, the loop keeps running, and no other read starts until it returns", async () => {
    // A blocking open of a FIFO with no writer stands for a hung NFS or FUSE mount: stuck in the kernel.
    const p = fifo("stuck.fifo");
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 10);
    try {
      const t0 = performance.now();
      await expect(readFileOffLoop(p, { timeoutMs: 300, openFlags: constants.O_RDONLY })).rejects.toThrow(`open ${p}: i/o timeout (the file system did not answer within 300ms)`);
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(290);
      expect(took).toBeLessThan(2000);
      expect(ticks).toBeGreaterThan(10); // the event loop ran meanwhile
      // While it is stuck, other reads fail at once, naming it: one thread held, never more.
      await expect(readFileOffLoop(file("other.yaml", "x: 1\n"))).rejects.toThrow(new RegExp(`^read ${p}: still blocked in the kernel after \\d+(\\.\\d+)?m?s \\(a hung file system\\?\\); no file is read until it returns$`));
      // A writer lets the stuck open return; then reads work again.
      const w = openSync(p, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        const back = file("back.yaml", "y: 2\n");
        const text = await (async () => {
          for (let i = 0; i < 200; i++) {
            try {
              return await readFileOffLoop(back);
            } catch {
              await Bun.sleep(10);
            }
          }
          return "still refused";
        })();
        expect(text).toBe("y: 2\n");
      } finally {
        closeSync(w);
      }
    } finally {
      clearInterval(ticker);
    }
  });
});

describe("loadSettings: a reload refuses what would empty the configuration (issue 20)", () => {
  const running = async (text: string) => {
    const p = file(`running-${Math.random().toString(36).slice(2)}.yaml`, text);
    return { path: p, settings: await loadSettings({ config: p }, {}) };
  };
  const refusal = async (f: () => Promise<unknown>) => {
    let err: unknown;
    try {
      await f();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RefusedReload);
    return (err as Error).message;
  };
  for (const text of ["", "# rewritten by the editor\n", "~\n", "---\n"]) {
    test(`an empty file (${JSON.stringify(text)}) is refused, as a file being rewritten reads`, async () => {
      const r = await running("endpoints: 10.0.0.1:2379\n");
      writeFileSync(r.path, text);
      expect(await refusal(() => loadSettings({ config: r.path }, {}, r.settings))).toBe(`--config: ${JSON.stringify(r.path)}: empty (no keys), as a file being rewritten reads; not applied`);
    });
  }
  for (const text of ["endpoints: ~\npolicy: sticky\n", "endpoints:\npolicy: sticky\n", "policy: sticky\n"]) {
    test(`endpoints that fall back to the default are refused: ${JSON.stringify(text)}`, async () => {
      const r = await running("endpoints: 10.0.0.1:2379\npolicy: sticky\n");
      writeFileSync(r.path, text);
      expect(await refusal(() => loadSettings({ config: r.path }, {}, r.settings))).toBe(
        `--endpoints (from config file ${r.path}): no endpoints given any more (the file's endpoints are null or gone): the default 127.0.0.1:2379 would replace every endpoint in use; write "endpoints: 127.0.0.1:2379" to mean it`,
      );
    });
  }
  test("an empty endpoint list is a bad value, as at startup (error, not a refusal)", async () => {
    const r = await running("endpoints: 10.0.0.1:2379\n");
    writeFileSync(r.path, "endpoints: []\n");
    let err: unknown;
    await loadSettings({ config: r.path }, {}, r.settings).catch((e: unknown) => (err = e));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err).not.toBeInstanceOf(RefusedReload);
    expect((err as Error).message).toContain("--endpoints (from config file");
  });
  test("what stays allowed: the default written out, endpoints from a flag, a file that never gave endpoints", async () => {
    const a = await running("endpoints: 10.0.0.1:2379\n");
    writeFileSync(a.path, "endpoints: 127.0.0.1:2379\n");
    expect((await loadSettings({ config: a.path }, {}, a.settings)).endpoints.map((e) => e.address)).toEqual(["127.0.0.1:2379"]);
    const b = await running("policy: sticky\n");
    writeFileSync(b.path, "policy: ordered\n");
    expect((await loadSettings({ config: b.path }, {}, b.settings)).flags.policy).toBe("ordered");
    const c = file("flag-endpoints.yaml", "endpoints: 10.0.0.1:2379\n");
    const cs = await loadSettings({ config: c, endpoints: ["10.0.0.9:2379"] }, {});
    writeFileSync(c, "policy: ordered\n");
    expect((await loadSettings({ config: c, endpoints: ["10.0.0.9:2379"] }, {}, cs)).endpoints.map((e) => e.address)).toEqual(["10.0.0.9:2379"]);
  });
  test("at startup an empty file is an error (exit 1), not a refused reload", async () => {
    const p = file("empty-at-start.yaml", "");
    let err: unknown;
    await loadSettings({ config: p }, {}).catch((e: unknown) => (err = e));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err).not.toBeInstanceOf(RefusedReload);
    expect((err as Error).message).toBe(`--config: ${JSON.stringify(p)}: empty (no keys); leave out --config to run on the defaults`);
  });
  test("every file a flag names is read off the loop: a FIFO as a certificate is refused, naming the flag", async () => {
    const p = fifo("ca.fifo");
    let err: unknown;
    await loadSettings({ "health-cacert": p }, {}).catch((e: unknown) => (err = e));
    expect((err as Error).message).toBe(`--health-cacert: ${JSON.stringify(p)} ${FIFO_TEXT}`);
  });
});
