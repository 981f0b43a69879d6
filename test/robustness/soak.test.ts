/**
 * Reliability under member chaos, in CI's default run: a 60 s soak (soak.ts) and a short
 * linearizability run (linearizability.ts), each against its own real 3-member etcd cluster
 * behind the compiled gateway, must exit 0. Longer runs are in docs/reliability.md. The history
 * checker they rely on is tested first on hand-made histories, so a pass means something.
 *
 * The two runs take about 70 s and 22 s; they run one after the other so each has the machine.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { checkRegisterHistory, type Operation, type Rule } from "./register-history.ts";

const ROOT = join(import.meta.dir, "..", "..");

/** Runs `bun <script> <args>` from the repository root; resolves with its exit code and output. */
async function runScript(script: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  const proc = Bun.spawn([process.execPath, script, ...args], { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  // SIGTERM first, so the script's teardown stops its cluster and gateway.
  const timer = setTimeout(() => proc.kill("SIGTERM"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, output: `${stdout}${stderr}` };
}

const put = (client: string, key: string, value: string, invoke: number, response: number | null, revision: number | null): Operation => ({
  kind: "put",
  client,
  key,
  value,
  invoke,
  response,
  revision,
});
const read = (client: string, key: string, invoke: number, response: number, value: string | null, modRevision: number, revision: number): Operation => ({
  kind: "read",
  client,
  key,
  invoke,
  response,
  value,
  modRevision,
  revision,
});

describe("checkRegisterHistory", () => {
  const cases: { name: string; history: Operation[]; rules: Rule[] }[] = [
    {
      name: "accepts a read of the last acknowledged put",
      history: [put("a", "k", "1", 0, 1, 5), read("b", "k", 2, 3, "1", 5, 5)],
      rules: [],
    },
    {
      name: "accepts a read of a concurrent put, old or new value",
      history: [put("a", "k", "1", 0, 1, 5), put("a", "k", "2", 2, 6, 7), read("b", "k", 3, 4, "1", 5, 6), read("c", "k", 3, 5, "2", 7, 7)],
      rules: [],
    },
    {
      name: "accepts the value of a put that was never acknowledged",
      history: [put("a", "k", "1", 0, 1, 5), put("a", "k", "2", 2, null, null), read("b", "k", 3, 4, "2", 6, 6), read("b", "k", 5, 6, "2", 6, 8)],
      rules: [],
    },
    {
      name: "flags a read older than an acknowledged put (a lost write)",
      history: [put("a", "k", "1", 0, 1, 5), put("a", "k", "2", 2, 3, 6), read("b", "k", 4, 5, "1", 5, 6)],
      rules: ["stale-read", "missed-write"],
    },
    {
      name: "flags a read served at a revision older than an earlier acknowledged put elsewhere",
      history: [put("a", "k", "1", 0, 1, 5), put("a", "j", "x", 2, 3, 6), read("b", "k", 4, 5, "1", 5, 5)],
      rules: ["real-time-order"],
    },
    {
      name: "flags a value nobody wrote",
      history: [put("a", "k", "1", 0, 1, 5), read("b", "k", 2, 3, "9", 5, 5)],
      rules: ["unknown-value"],
    },
    {
      name: "flags a value read before its put was invoked",
      history: [read("b", "k", 0, 1, "1", 5, 5), put("a", "k", "1", 2, 3, 5)],
      rules: ["value-from-future", "real-time-order"],
    },
    {
      name: "flags a put applied twice (a replayed request)",
      history: [put("a", "k", "1", 0, 3, 6), read("b", "k", 1, 2, "1", 5, 5)],
      rules: ["revision-mismatch"],
    },
    {
      name: "flags one client's reads going back in time",
      history: [put("a", "k", "1", 0, 1, 5), put("a", "k", "2", 2, null, null), read("b", "k", 3, 4, "2", 6, 6), read("b", "k", 5, 6, "1", 5, 6)],
      rules: ["missed-write", "client-went-back"],
    },
    {
      name: "flags two acknowledged puts at one revision",
      history: [put("a", "k", "1", 0, 1, 5), put("b", "k", "2", 0, 1, 5)],
      rules: ["duplicate-revision"],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      expect([...new Set(checkRegisterHistory(c.history).map((v) => v.rule))].sort()).toEqual([...c.rules].sort());
    });
  }
});

describe("under member chaos through the gateway", () => {
  test("a 60 s soak with etcd3 and etcdctl clients holds every invariant", async () => {
    const { code, output } = await runScript("test/robustness/soak.ts", ["--duration", "60s"], 95_000);
    expect(code, output).toBe(0);
    expect(output).toContain("soak: PASS");
  }, 100_000);

  test("a short run of concurrent puts and reads is linearizable", async () => {
    const { code, output } = await runScript("test/robustness/linearizability.ts", ["--duration", "15s"], 45_000);
    expect(code, output).toBe(0);
    expect(output).toContain("linearizability: PASS");
  }, 50_000);
});
