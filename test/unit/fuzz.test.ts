/**
 * Bad input: thousands of random command lines, config values and addresses (seeded, so every run
 * is the same) must each give a value or a clean ConfigError/Error, never a crash or another
 * exception type.
 */
import { describe, expect, test } from "bun:test";
import { seededRandom } from "../support/random.ts";
import { parseEndpoint, parseHostPort, parseListenAddress } from "../../src/addresses.ts";
import { parseDuration } from "../../src/duration.ts";
import { ConfigError, parseFlags, START_FLAGS } from "../../src/flags.ts";
import { buildSettings, gatherFlags } from "../../src/settings.ts";

const random = seededRandom(20261127).next;
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
const ALPHABET = "abc019:[]./-_,= \t\n\"'\\@#%µ\u0000\uffff[::1]httpsunix";
const junk = (max = 24) => Array.from({ length: Math.floor(random() * max) }, () => pick([...ALPHABET])).join("");
const flagNames = Object.keys(START_FLAGS);
const plausible = [
  "127.0.0.1:2379", "[::1]:2379", "localhost:1", "http://a:1", "0", "1s", "1m0s", "-1s", "99999", "65536", "auto",
  "sticky", "true", "false", "", ":", "[", "unix:///tmp/x.sock", "unix://x", "a,b", "1e9", "0x10", "0660", "abc",
];
const value = () => (random() < 0.6 ? pick(plausible) : junk());

/** Runs `fn` and classifies: a value, or an error of an expected class with a one-line message. */
function clean(fn: () => unknown, allowed: (e: unknown) => boolean): "value" | "error" {
  try {
    fn();
    return "value";
  } catch (e) {
    if (!allowed(e)) throw new Error(`unexpected ${e instanceof Error ? e.constructor.name : typeof e}: ${String(e)}`);
    expect(String((e as Error).message)).not.toContain("\n");
    return "error";
  }
}

describe("fuzz (seeded)", () => {
  test("5,000 random command lines give options or a one-line ConfigError", () => {
    const seen = { value: 0, error: 0 };
    for (let i = 0; i < 5000; i++) {
      const argv: string[] = [];
      for (let k = Math.floor(random() * 6); k > 0; k--) {
        const r = random();
        if (r < 0.55) argv.push(`--${pick(flagNames)}=${value()}`);
        else if (r < 0.75) argv.push(`--${pick(flagNames)}`, value());
        else if (r < 0.85) argv.push(`--${junk(10)}`);
        else argv.push(junk(8));
      }
      seen[clean(() => buildSettings(gatherFlags(parseFlags(argv, START_FLAGS), {})), (e) => e instanceof ConfigError)]++;
    }
    // Both outcomes happen: the generator reaches valid and invalid input alike.
    expect(seen.value).toBeGreaterThan(100);
    expect(seen.error).toBeGreaterThan(100);
  });

  test("2,000 random config files and environments give options or a one-line ConfigError", () => {
    for (let i = 0; i < 2000; i++) {
      const lines = Array.from({ length: Math.floor(random() * 5) }, () => (random() < 0.8 ? `${pick(flagNames)}: ${value()}` : junk(30)));
      const env: Record<string, string> = {};
      if (random() < 0.5) env[`ETCD_GATEWAY_${pick(flagNames).toUpperCase().replace(/-/g, "_")}`] = value();
      clean(() => {
        buildSettings(gatherFlags({ config: "/fuzz.yaml" }, env, () => lines.join("\n")));
      }, (e) => e instanceof ConfigError);
    }
  });

  test("5,000 random addresses and durations give a value or an Error, never a crash", () => {
    for (let i = 0; i < 5000; i++) {
      const text = random() < 0.5 ? value() : junk();
      for (const parse of [parseEndpoint, parseHostPort, parseListenAddress, parseDuration] as ((t: string) => unknown)[]) {
        clean(() => parse(text), (e) => e instanceof Error && !(e instanceof TypeError) && !(e instanceof RangeError));
      }
    }
  });
});
