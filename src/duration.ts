/**
 * Go duration syntax (`time.ParseDuration` / `Duration.String`), because `--retry-delay 1m0s` is what
 * etcd's operators already type.
 *
 * @module
 */

const unitMs: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3, // U+00B5 micro sign, as Go accepts
  "μs": 1e-3, // U+03BC greek mu, as Go accepts
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Parses a Go duration string into milliseconds. Negative durations are rejected: no flag of the
 * gateway has a meaning for them.
 *
 * @throws {Error} with a message in Go's words (`missing unit in duration "123"`).
 * @example parseDuration("1m0s") // 60000
 * @example parseDuration("500ms") // 500
 * @example parseDuration("0") // 0
 */
export function parseDuration(text: string): number {
  const quoted = JSON.stringify(text);
  if (text === "0") return 0;
  if (text === "") throw new Error(`invalid duration ${quoted}`);
  if (text.startsWith("-")) throw new Error(`negative duration ${quoted}`);
  let rest = text.startsWith("+") ? text.slice(1) : text;
  if (rest === "") throw new Error(`invalid duration ${quoted}`);
  let total = 0;
  while (rest.length > 0) {
    const m = /^(\d*)(?:\.(\d*))?/.exec(rest);
    const whole = m?.[1] ?? "";
    const frac = m?.[2];
    if (whole === "" && (frac === undefined || frac === "")) throw new Error(`invalid duration ${quoted}`);
    rest = rest.slice(m![0].length);
    const u = /^[^\d.]+/.exec(rest)?.[0];
    if (u === undefined) throw new Error(`missing unit in duration ${quoted}`);
    const scale = unitMs[u];
    if (scale === undefined) throw new Error(`unknown unit ${JSON.stringify(u)} in duration ${quoted}`);
    rest = rest.slice(u.length);
    total += Number(`${whole || "0"}.${frac || "0"}`) * scale;
  }
  if (!Number.isFinite(total) || total > 9.2e12) throw new Error(`invalid duration ${quoted}`);
  return total;
}

/**
 * Formats milliseconds the way Go's `Duration.String` does, for log fields compatible with etcd's.
 *
 * @example formatDuration(60000) // "1m0s"
 * @example formatDuration(1500) // "1.5s"
 * @example formatDuration(250) // "250ms"
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms < 1) return ms * 1000 >= 1 ? `${trim(ms * 1000)}µs` : `${trim(ms * 1e6)}ns`;
  if (ms < 1000) return `${trim(ms)}ms`;
  let s = ms / 1000;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const sec = `${trim(s)}s`;
  if (h > 0) return `${h}h${m}m${sec}`;
  if (m > 0) return `${m}m${sec}`;
  return sec;
}

function trim(n: number): string {
  return String(Number(n.toFixed(9)));
}
