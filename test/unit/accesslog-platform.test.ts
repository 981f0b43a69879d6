/**
 * What the access log relies on in Bun and Linux to never wait for a reader (docs/bun.md, "process.stdout
 * and process.stderr on a pipe"). A failing test here names the behaviour that changed.
 */
import { describe, expect, test } from "bun:test";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sendNow } from "../../src/libc.ts";
import { channel } from "../support/accesslog-channels.ts";
import { track } from "../support/process.ts";

const O_NONBLOCK = constants.O_NONBLOCK;
const flags = (fd: number, pid: number | "self" = "self") => parseInt(/^flags:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8"))![1]!, 8);

/** Runs `script` in a Bun child with its `fd` (1 or 2) the write end of a pipe that nobody reads; resolves to what it printed on the other stream. */
async function childOnStalledPipe(fd: 1 | 2, script: string): Promise<string> {
  const [r, w] = channel("pipe");
  try {
    const proc = track(Bun.spawn([process.execPath, "-e", script], { stdin: "ignore", stdout: fd === 1 ? w : "pipe", stderr: fd === 2 ? w : "pipe" }));
    closeSync(w);
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    const out = await new Response((fd === 1 ? proc.stderr : proc.stdout) as ReadableStream).text();
    expect(await proc.exited).toBe(0);
    clearTimeout(timer);
    return out;
  } finally {
    closeSync(r);
  }
}

describe("process.stdout and process.stderr on a pipe", () => {
  for (const fd of [1, 2] as const) {
    const name = fd === 1 ? "stdout" : "stderr";
    test(`process.${name}: O_NONBLOCK set on the shared open file description at the first write, the rest buffered without bound, each callback once the kernel took the bytes, and process.exit() does not wait for the backlog`, async () => {
      const script = `
        const fl = () => parseInt(/^flags:\\s+(\\d+)$/m.exec(require("fs").readFileSync("/proc/self/fdinfo/${fd}", "utf8"))[1], 8);
        const before = fl(); let called = 0;
        for (let i = 0; i < 1000; i++) process.${name}.write("x".repeat(299) + "\\n", () => called++);
        setTimeout(() => { require("fs").writeSync(${3 - fd}, JSON.stringify({ before, after: fl(), called })); process.exit(0); }, 200);`;
      const got = JSON.parse(await childOnStalledPipe(fd, script)) as { before: number; after: number; called: number };
      expect(got.before & O_NONBLOCK).toBe(0);
      expect(got.after & O_NONBLOCK).toBe(O_NONBLOCK); // on the description the parent's pipe end shares
      expect(got.called).toBeGreaterThan(0);
      expect(got.called).toBeLessThan(1000); // 300,000 bytes, the pipe takes 65,536: the rest waited in Bun, and the exit did not
    });
  }

  test("Bun.spawn's stdout \"pipe\" is a unix socket that Bun reads even when nothing consumes it", async () => {
    const script = `const st = require("fs").fstatSync(1); process.stderr.write(String(st.isSocket())); const b = Buffer.alloc(1 << 20); for (let i = 0; i < 8; i++) require("fs").writeSync(1, b);`;
    const proc = track(Bun.spawn([process.execPath, "-e", script], { stdin: "ignore", stdout: "pipe", stderr: "pipe" }));
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    expect(await new Response(proc.stderr).text()).toBe("true");
    expect(await proc.exited).toBe(0); // 8 MiB written with blocking writes: something read them
    clearTimeout(timer);
  });
});

describe("Linux: descriptors that never wait", () => {
  test("/proc/self/fd/N of a pipe opens a description of its own: O_NONBLOCK there leaves the original blocking, and a full pipe throws EAGAIN", () => {
    const [r, w] = channel("pipe");
    const own = openSync(`/proc/self/fd/${w}`, constants.O_WRONLY | O_NONBLOCK | constants.O_NOCTTY);
    try {
      expect(flags(own) & O_NONBLOCK).toBe(O_NONBLOCK);
      expect(flags(w) & O_NONBLOCK).toBe(0);
      let taken = 0;
      let code: unknown;
      const piece = Buffer.alloc(4096, 0x78);
      for (let i = 0; i < 100 && code === undefined; i++) {
        try {
          taken += writeSync(own, piece);
        } catch (e) {
          code = (e as NodeJS.ErrnoException).code;
        }
      }
      expect(code).toBe("EAGAIN");
      expect(taken).toBe(65536); // 16 pieces of PIPE_BUF, each taken whole
    } finally {
      for (const fd of [own, r, w]) closeSync(fd);
    }
  });

  test("/proc/self/fd/N of a socket cannot be opened (ENXIO); send with MSG_DONTWAIT says EAGAIN on a full blocking socket, whose flags stay as they were", () => {
    const [a, b] = channel("socket");
    try {
      expect(() => openSync(`/proc/self/fd/${b}`, constants.O_WRONLY | O_NONBLOCK)).toThrow(expect.objectContaining({ code: "ENXIO" }));
      const piece = Buffer.alloc(4096, 0x78);
      let last: number | string = 0;
      for (let i = 0; i < 10_000 && typeof last === "number"; i++) last = sendNow(b, piece);
      expect(last).toBe("EAGAIN");
      expect(flags(b) & O_NONBLOCK).toBe(0);
      closeSync(a);
      expect(sendNow(b, piece)).toBe("EPIPE"); // and no SIGPIPE (MSG_NOSIGNAL)
    } finally {
      closeSync(b);
    }
  });

  test("a FIFO: opened for writing with O_NONBLOCK and no reader fails at once with ENXIO; with its reader gone a write throws EPIPE and the process lives (Bun ignores SIGPIPE)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-fifo-"));
    try {
      const path = join(dir, "f");
      expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
      expect(() => openSync(path, constants.O_WRONLY | O_NONBLOCK)).toThrow(expect.objectContaining({ code: "ENXIO" }));
      const script = `const fs = require("fs"); const r = fs.openSync(${JSON.stringify(path)}, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK); const w = fs.openSync(${JSON.stringify(path)}, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); fs.closeSync(r); try { fs.writeSync(w, "x\\n"); } catch (e) { process.stdout.write(e.code); }`;
      const proc = track(Bun.spawn([process.execPath, "-e", script], { stdin: "ignore", stdout: "pipe", stderr: "inherit" }));
      expect(await new Response(proc.stdout).text()).toBe("EPIPE");
      expect(await proc.exited).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
