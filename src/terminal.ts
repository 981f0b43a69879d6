/**
 * What the terminal on stdout allows: colour only on a terminal, and not with `NO_COLOR` (any
 * non-empty value, no-color.org) or `TERM=dumb`; lines as wide as the terminal, 80 columns when
 * stdout is not a terminal (a pipe, a file). Used by the help and by `etcd-gateway status`.
 *
 * @module
 */

/** Width when stdout is no terminal, or a terminal that does not say. */
export const DEFAULT_COLUMNS = 80;

type Stream = { readonly isTTY?: boolean; readonly columns?: number };
type Env = Record<string, string | undefined>;

/** Whether ANSI colours may be written to `out`. */
export function colourAllowed(out: Stream = process.stdout, env: Env = process.env): boolean {
  return out.isTTY === true && !env.NO_COLOR && env.TERM !== "dumb";
}

/** Columns to wrap text written to `out` at. */
export function terminalWidth(out: Stream = process.stdout): number {
  const columns = out.isTTY === true ? out.columns : undefined;
  return columns !== undefined && columns > 0 ? columns : DEFAULT_COLUMNS;
}
