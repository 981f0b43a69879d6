/**
 * A strict flag parser with pflag's rules, for what citty leaves out (bun-platform.md trap 12):
 * unknown flags and stray arguments are errors, and repeatable flags accumulate.
 *
 * Accepted: `--name=value`, `--name value`, `--bool`, `--bool=true|false`, `--no-bool`.
 *
 * @module
 */
import { ConfigError, type FlagSpec } from "./config.ts";

/**
 * @throws {ConfigError} on an unknown flag, a missing value, a bad boolean or a stray argument.
 * @example parseFlags(["--endpoints", "a:1", "--endpoints=b:2"], START_FLAGS) // { endpoints: ["a:1", "b:2"] }
 */
export function parseFlags<K extends string>(
  argv: readonly string[],
  specs: Readonly<Record<K, FlagSpec>>,
): Partial<Record<K, string | boolean | string[]>> {
  const out: Partial<Record<K, string | boolean | string[]>> = {};
  const known = (name: string): name is K => Object.hasOwn(specs, name);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      const rest = argv[i + 1];
      if (rest !== undefined) throw new ConfigError(null, rest, `unexpected argument ${JSON.stringify(rest)}`);
      break;
    }
    if (!arg.startsWith("--")) {
      if (arg.startsWith("-") && arg.length > 1) throw new ConfigError(null, arg, `unknown flag: ${arg}`);
      throw new ConfigError(null, arg, `unexpected argument ${JSON.stringify(arg)}`);
    }
    const eq = arg.indexOf("=");
    let name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    let value: string | undefined = eq < 0 ? undefined : arg.slice(eq + 1);
    if (!known(name) && name.startsWith("no-") && value === undefined) {
      const base = name.slice(3);
      if (known(base) && specs[base].type === "boolean") {
        name = base;
        value = "false";
      }
    }
    if (!known(name)) throw new ConfigError(null, arg, `unknown flag: --${name}`);
    const spec = specs[name];
    if (spec.type === "boolean") {
      if (value === undefined || value === "true" || value === "1") out[name] = true;
      else if (value === "false" || value === "0") out[name] = false;
      else throw new ConfigError(name, value, `invalid boolean ${JSON.stringify(value)}; expected true or false`);
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new ConfigError(name, null, "flag needs an argument");
    }
    if (spec.repeatable) {
      const prev = out[name];
      out[name] = Array.isArray(prev) ? [...prev, value] : [value];
    } else out[name] = value;
  }
  return out;
}
