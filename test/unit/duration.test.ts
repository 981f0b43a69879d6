import { describe, expect, test } from "bun:test";
import { formatDuration, parseDuration } from "../../src/duration.ts";

describe("parseDuration accepts Go duration syntax", () => {
  const cases: [string, number][] = [
    ["1m0s", 60_000],
    ["500ms", 500],
    ["1h2m", 3_720_000],
    ["1.5s", 1500],
    ["0", 0],
    ["0s", 0],
    ["+2s", 2000],
    ["1h1m1s1ms", 3_661_001],
    ["10us", 0.01],
    ["10µs", 0.01],
    [".5s", 500],
    ["2.s", 2000],
    ["100ns", 0.0001],
  ];
  for (const [input, ms] of cases) test(`${input} is ${ms} ms`, () => expect(parseDuration(input)).toBeCloseTo(ms, 9));
});

describe("parseDuration rejects what Go rejects, and negative durations", () => {
  const cases: [string, RegExp][] = [
    ["123", /missing unit in duration "123"/],
    ["", /invalid duration ""/],
    ["1x", /unknown unit "x"/],
    ["s", /invalid duration "s"/],
    ["1m0", /missing unit/],
    ["-1s", /negative duration "-1s"/],
    [".s", /invalid duration/],
    ["1 s", /unknown unit " s"/],
    ["+", /invalid duration/],
  ];
  for (const [input, err] of cases) test(JSON.stringify(input), () => expect(() => parseDuration(input)).toThrow(err));
});

describe("formatDuration prints what Go's Duration.String prints", () => {
  const cases: [number, string][] = [
    [60_000, "1m0s"],
    [300_000, "5m0s"],
    [1000, "1s"],
    [1500, "1.5s"],
    [500, "500ms"],
    [3_720_000, "1h2m0s"],
    [0, "0s"],
    [0.5, "500µs"],
  ];
  for (const [ms, text] of cases) test(`${ms} ms is ${text}`, () => expect(formatDuration(ms)).toBe(text));
  test("round-trips through parseDuration", () => {
    for (const ms of [1, 999, 1000, 61_000, 3_599_999, 86_400_000]) expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});
