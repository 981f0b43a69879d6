/** The command line's shape: flags without a command are `start`'s; help and version stay the root's. */
import { describe, expect, test } from "bun:test";
import { withDefaultCommand } from "../../src/cli.ts";

describe("flags without a command mean start (the founding document's `etcd-gateway --discovery-srv=example.com`)", () => {
  const cases: [string[], string[]][] = [
    [["--discovery-srv=example.com"], ["start", "--discovery-srv=example.com"]],
    [["--endpoints", "infra0.example.com"], ["start", "--endpoints", "infra0.example.com"]],
    [["--endpoints=a:1", "--help"], ["start", "--endpoints=a:1", "--help"]],
    [["-x"], ["start", "-x"]],
    [[], []],
    [["--help"], ["--help"]],
    [["-h"], ["-h"]],
    [["--version"], ["--version"]],
    [["-v"], ["-v"]],
    [["start", "--endpoints=a:1"], ["start", "--endpoints=a:1"]],
    [["status", "--json"], ["status", "--json"]],
    [["bogus"], ["bogus"]],
  ];
  for (const [argv, want] of cases) test(JSON.stringify(argv), () => expect(withDefaultCommand(argv)).toEqual(want));
});
