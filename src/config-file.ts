/**
 * The YAML of the `--config` file, parsed with the `yaml` package rather than Bun.YAML: a key given
 * twice is an error (Bun.YAML lets the last one win silently, so a member listed under a first
 * `endpoints:` key vanished), and every error says the line and column (Bun.YAML says only
 * "Unexpected token"). What the keys and values mean is src/settings.ts's business, so every
 * plain number reaches it as a `YamlNumber`, with the text it was written as: `0o660` is the
 * number 432, and a file mode must not be read back from "432" (issue 20), nor `1e400` be named
 * by JSON's `null`.
 *
 * @module
 */
import { isNode, isScalar, LineCounter, parseDocument, visit, type Document } from "yaml";

/** A number from the file, with its text as written (`0o660`, `1e400`, `.inf`) and the `yaml` package's format (`OCT`, `HEX`, `EXP`). */
export class YamlNumber {
  constructor(
    readonly value: number,
    readonly source: string,
    readonly format: string | undefined,
  ) {}
}

/** Aliases expanded at most this often (the `yaml` package's own guard against a billion laughs). */
const MAX_ALIASES = 100;

/**
 * Parses `text`, the contents of `file`, into plain values.
 *
 * @throws {Error} `"<file>": line L, column C: <what is wrong>` for a syntax error, a duplicated
 * key (named, with the line of its first occurrence) or a list or mapping used as a key.
 * @example parseConfigYaml("/etc/gw.yaml", "policy: a\npolicy: b\n") // throws: "/etc/gw.yaml": line 2, column 1: duplicate key "policy" (first on line 1)
 */
export function parseConfigYaml(file: string, text: string): unknown {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number, what: string) => {
    const { line, col } = lines.linePos(offset);
    return new Error(`${JSON.stringify(file)}: line ${line}, column ${col}: ${what}`);
  };
  const error = doc.errors[0];
  if (error !== undefined) {
    const offset = error.pos[0];
    throw at(offset, error.code === "DUPLICATE_KEY" ? duplicateKey(doc, offset, lines) : lowerFirst(error.message));
  }
  // Checked before conversion, which would turn such a key into a string (with a runtime warning).
  visit(doc, {
    Pair(_, pair) {
      if (pair.key === null || isScalar(pair.key)) return undefined;
      throw at(isNode(pair.key) ? (pair.key.range?.[0] ?? 0) : 0, "a key must be a flag name, not a list or mapping");
    },
    // A value's number (not a key's, not a document that is one number) keeps its text.
    Scalar(key, node, path) {
      if (key === "key" || path.length < 2 || typeof node.value !== "number") return undefined;
      node.value = new YamlNumber(node.value, node.source ?? String(node.value), node.format);
      return undefined;
    },
  });
  try {
    return doc.toJS({ maxAliasCount: MAX_ALIASES });
  } catch (e) {
    throw new Error(`${JSON.stringify(file)}: ${lowerFirst(e instanceof Error ? e.message : String(e))}`);
  }
}

/** What to say of the duplicated key at `offset`: its name and where it was first given. */
function duplicateKey(doc: Document, offset: number, lines: LineCounter): string {
  let what = "duplicate key";
  visit(doc, {
    Map(_, map) {
      const keys = map.items.map((p) => (isScalar(p.key) ? p.key : null));
      const dup = keys.find((k) => k?.range?.[0] === offset);
      if (dup === undefined || dup === null) return undefined;
      const first = keys.find((k) => k !== null && k.value === dup.value) ?? dup;
      what = `duplicate key ${JSON.stringify(String(dup.value))} (first on line ${lines.linePos(first.range?.[0] ?? offset).line})`;
      return visit.BREAK;
    },
  });
  return what;
}

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);
