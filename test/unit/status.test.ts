/**
 * `etcd-gateway status` output: whatever a member said (its error text ends up in `reason`) is
 * printed with control characters escaped, in the table and in `--json` (issue 12, item 6).
 */
import { describe, expect, test } from "bun:test";
import type { Status } from "../../src/admin.ts";
import { anyUsable, memberRowProblem, printable, renderStatus, statusJson, statusProblem, type Colours } from "../../src/status.ts";

const plain: Colours = { green: (s) => s, red: (s) => s, yellow: (s) => s, dim: (s) => s };
const HOSTILE = "member said: \x1b]0;pwned\x07\x1b[2J";

function status(reason: string, endpoint = "10.0.0.1:2379"): Status {
  return {
    version: "0.1.0",
    pid: 42,
    startedAt: "2026-12-02T00:00:00.000Z",
    uptimeSeconds: 12.3,
    listener: { address: "127.0.0.1:23790", accepted: 5, active: 1 },
    policy: "sticky",
    workers: 1,
    ready: false,
    members: [{ endpoint, state: "down", drained: false, closeIdle: false, reason, priority: 0, weight: 1, connections: 0, connectionsTotal: 3, failedDials: 2, lastSuccessAgoSeconds: null, alive: false, clusterId: null }],
    config: {},
  };
}

/** Any byte a terminal acts on: C0 (ESC, BEL, CR, ...), DEL, C1, and the Unicode bidi and line controls. */
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

describe("printable", () => {
  const cases: [string, string, string][] = [
    ["plain text is unchanged", "connect ECONNREFUSED 10.0.0.1:2379", "connect ECONNREFUSED 10.0.0.1:2379"],
    ["OSC title and clear screen", "\x1b]0;pwned\x07\x1b[2J", "\\x1b]0;pwned\\x07\\x1b[2J"],
    ["newline, carriage return, tab, NUL", "a\nb\rc\td\0", "a\\x0ab\\x0dc\\x09d\\x00"],
    ["DEL and C1 (CSI U+009B, NEL U+0085)", "\x7f\u009b2J\u0085", "\\x7f\\x9b2J\\x85"],
    ["bidi override and line separator", "a\u202eb\u2028c\u2066", "a\\u202eb\\u2028c\\u2066"],
    ["a backslash is doubled, so text cannot fake an escape", "C:\\x1b", "C:\\\\x1b"],
    ["other Unicode is kept", "naïve café ✓", "naïve café ✓"],
  ];
  for (const [name, input, out] of cases) test(name, () => expect(printable(input)).toBe(out));
});

describe("renderStatus", () => {
  test("a member's reason with a title sequence and a screen clear is printed escaped", () => {
    const out = renderStatus(status(HOSTILE), plain);
    expect(out).not.toMatch(CONTROL);
    expect(out).toContain("member said: \\x1b]0;pwned\\x07\\x1b[2J");
    expect(out.split("\n")).toHaveLength(4); // header, column titles, one member, and the final newline
  });

  test("every field from the endpoint is escaped, numbers and the header's too", () => {
    const s = status("r", "evil\x1b[1A:2379");
    s.version = "1\x1b]2;x\x07";
    s.listener.address = "\u009b2J";
    s.policy = "a\rb";
    (s.members[0] as unknown as Record<string, unknown>).connections = "\x1b[H";
    const out = renderStatus(s, plain);
    expect(out).not.toMatch(CONTROL);
    for (const shown of ["evil\\x1b[1A:2379", "1\\x1b]2;x\\x07", "\\x9b2J", "a\\x0db", "\\x1b[H"]) expect(out).toContain(shown);
  });

  test("columns line up on the escaped text; colours are still applied", () => {
    const colour: Colours = { green: (s) => `<g>${s}</g>`, red: (s) => `<r>${s}</r>`, yellow: (s) => `<y>${s}</y>`, dim: (s) => s };
    const lines = renderStatus(status("x", "\x1b[2J:1"), colour).split("\n");
    expect(lines[2]).toStartWith("\\x1b[2J:1  <r>down </r>");
    expect(lines[1]!.indexOf("STATE")).toBe(lines[2]!.indexOf("<r>"));
  });
});

describe("statusJson (--json)", () => {
  test("is the same JSON, with no raw control character left (JSON.stringify leaves DEL, C1 and bidi controls raw)", () => {
    const s = status(`${HOSTILE}\x7f\u009b2J\u202e`);
    const text = statusJson(s);
    expect(text).not.toMatch(CONTROL);
    expect(JSON.parse(text)).toEqual(s);
    expect(text).toContain('"reason": "member said: \\u001b]0;pwned\\u0007\\u001b[2J\\u007f\\u009b2J\\u202e"');
  });
});

describe("anyUsable (the exit code: 2 when false)", () => {
  test("the gateway's own word, `ready`, decides", () => {
    expect(anyUsable({ ...status("r"), ready: true })).toBe(true);
    expect(anyUsable({ ...status("r"), ready: false })).toBe(false);
  });
  test("an older gateway without `ready`: any member up", () => {
    const { ready: _, ...older } = status("r");
    const s = older as Status;
    expect(anyUsable(s)).toBe(false);
    s.members[0]!.state = "up";
    expect(anyUsable(s)).toBe(true);
  });
});

describe("statusProblem (issue 20: JSON of another shape printed a stack trace)", () => {
  const cases: [string, unknown, string | null][] = [
    ["a list", [], "a list, not an object"],
    ["null", null, "null, not an object"],
    ["a number", 3, "number, not an object"],
    ["members not a list", { members: "notalist", listener: {} }, "members is not a list"],
    ["no members", { listener: {} }, "members is not a list"],
    ["a member that is not an object", { members: [1], listener: {} }, "a member is not an object"],
    ["no listener", { members: [] }, "listener is not an object"],
    ["cluster not an object", { members: [], listener: {}, cluster: 1 }, "cluster is not an object"],
    ["cluster alarms not a list of objects", { members: [], listener: {}, cluster: { alarms: [null] } }, "cluster.alarms is not a list of objects"],
    ["the smallest that prints", { members: [], listener: {} }, null],
    ["a gateway's own", status("r"), null],
  ];
  for (const [name, body, want] of cases) test(name, () => expect(statusProblem(body)).toBe(want));

  test("whatever it lets through prints without throwing (random JSON of every shape)", () => {
    let seed = 7;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
    const value = (depth: number): unknown => {
      switch (rnd(depth > 2 ? 5 : 8)) {
        case 0: return null;
        case 1: return rnd(100) - 50;
        case 2: return "s\x1b";
        case 3: return rnd(2) === 0;
        case 4: return undefined;
        case 5: return Array.from({ length: rnd(3) }, () => value(depth + 1));
        default: return shape(depth + 1);
      }
    };
    const KEYS = ["members", "listener", "cluster", "alarms", "address", "state", "endpoint", "ready", "version", "id", "alarm", "member", "drained"];
    const shape = (depth: number): Record<string, unknown> => Object.fromEntries(KEYS.filter(() => rnd(2) === 0).map((k) => [k, value(depth)]));
    let printed = 0;
    for (let i = 0; i < 5000; i++) {
      const body = JSON.parse(JSON.stringify(rnd(4) === 0 ? value(0) : { ...shape(0), members: rnd(3) === 0 ? value(1) : Array.from({ length: rnd(3) }, () => shape(1)), listener: rnd(4) === 0 ? value(1) : shape(1) }) ?? null);
      if (statusProblem(body) !== null) continue;
      printed++;
      expect(() => [renderStatus(body as Status, plain), statusJson(body as Status), anyUsable(body as Status)]).not.toThrow();
    }
    expect(printed).toBeGreaterThan(500);
  });

  test("a member row must be an object", () => {
    expect([memberRowProblem([]), memberRowProblem(null), memberRowProblem("x"), memberRowProblem({})]).toEqual(["a list, not an object", "null, not an object", "string, not an object", null]);
  });
});
