/**
 * Builds the single-file executable dist/etcd-gateway (docs/bun.md, "Building the binary"):
 * minified, with bytecode and an embedded sourcemap; no .env/bunfig.toml autoloading from the cwd
 * (trap 10), so a binary copied onto a host behaves the same in every directory.
 *
 * Usage: bun scripts/build.ts [--target bun-linux-x64|bun-linux-arm64|bun-linux-x64-musl] [--outfile path]
 */
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { target: { type: "string" }, outfile: { type: "string", default: "dist/etcd-gateway" } },
});

const cmd = [
  process.execPath, "build", "src/cli.ts", "--compile", "--minify", "--bytecode", "--sourcemap",
  "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig",
  "--outfile", values.outfile!,
  ...(values.target ? [`--target=${values.target}`] : []),
];
const proc = Bun.spawnSync(cmd, { cwd: `${import.meta.dir}/..`, stdout: "inherit", stderr: "inherit" });
if (proc.exitCode !== 0) process.exit(proc.exitCode ?? 1);
