/**
 * `etcd-gateway completion bash|zsh|fish`: the scripts the binary prints are loaded in the real
 * shells and asked to complete (bash through its completion function, as readline calls it; fish
 * through `complete -C`; zsh through a real line editor on a pseudo-terminal, zsh's own zpty), and
 * every flag of the flag tables is in each of them, so they cannot drift from the binary.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MEMBER_FLAGS } from "../../src/drain.ts";
import { START_FLAGS } from "../../src/flags.ts";
import { STATUS_FLAGS } from "../../src/status.ts";
import { runBinary } from "../support/gateway.ts";

const dir = mkdtempSync(join(tmpdir(), "eg-completion-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The script `etcd-gateway completion <shell>` prints, as a file. */
function script(shell: string): string {
  const r = runBinary(["completion", shell]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  const path = join(dir, `etcd-gateway.${shell}`);
  writeFileSync(path, r.stdout);
  return path;
}
const scripts = { bash: script("bash"), zsh: script("zsh"), fish: script("fish") };

/** Runs `cmd`, killed after 20 s; stdout, and stderr must be empty. */
async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const p = Bun.spawn(cmd, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe", timeout: 20_000, killSignal: "SIGKILL" });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  expect(err).toBe("");
  expect(p.exitCode).toBe(0);
  return out;
}

/**
 * bash, as readline calls a completion: bash-completion and the script sourced, the function the
 * script registered with `complete -F` called with COMP_LINE, COMP_POINT, COMP_WORDS (split on
 * spaces, `=` and `:`, as COMP_WORDBREAKS has them) and COMP_CWORD set; prints COMPREPLY.
 */
const BASH_DRIVER = `
source /usr/share/bash-completion/bash_completion
source "$1"
fn=$(complete -p etcd-gateway | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')
COMP_LINE=$2 COMP_POINT=\${#2} COMP_WORDS=() rest=$2
while [[ $rest =~ ^[[:space:]]*([^[:space:]=:]+|[=:]+)(.*)$ ]]; do COMP_WORDS+=("\${BASH_REMATCH[1]}"); rest=\${BASH_REMATCH[2]}; done
[[ $2 =~ [[:space:]]$ ]] && COMP_WORDS+=("")
COMP_CWORD=$((\${#COMP_WORDS[@]} - 1))
"$fn" etcd-gateway "\${COMP_WORDS[COMP_CWORD]}" "\${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "\${COMPREPLY[@]}"
`;
const driver = join(dir, "driver.bash");
writeFileSync(driver, BASH_DRIVER);

/** What bash puts in COMPREPLY for `line` (the cursor at its end), sorted. */
async function bash(line: string): Promise<string[]> {
  const out = await run(["bash", "--norc", "--noprofile", driver, scripts.bash, line]);
  return out.split("\n").filter((l) => l !== "").sort();
}

/** What fish offers for `line`: the candidates of `complete -C`, without their descriptions. */
async function fish(line: string): Promise<string[]> {
  const out = await run(["fish", "--no-config", "-c", `source ${scripts.fish}; complete -C ${JSON.stringify(line)}`]);
  return out.split("\n").filter((l) => l !== "").map((l) => l.split("\t")[0]!).sort();
}

const sorted = (list: readonly string[]) => [...list].sort();
const policies = START_FLAGS.policy.valueHint.split("|");

describe("bash completes", () => {
  test("a flag of start to --flag= (value flags wait for their value)", async () => {
    expect(await bash("etcd-gateway start --listen-a")).toEqual(["--listen-addr="]);
    expect(await bash("etcd-gateway start --reuse-p")).toEqual(["--reuse-port"]);
    // Flags without a command are start's.
    expect(await bash("etcd-gateway --log-l")).toEqual(["--log-level="]);
  });

  test("a command word, and a subcommand", async () => {
    expect(await bash("etcd-gateway mem")).toEqual(["member"]);
    expect(await bash("etcd-gateway member ")).toEqual(["drain", "ready"]);
    expect(await bash("etcd-gateway completion ")).toEqual(["bash", "fish", "zsh"]);
  });

  test("--policy= to the table's policies, after = or a space, as readline replaces them", async () => {
    expect(await bash("etcd-gateway start --policy=")).toEqual(sorted(policies));
    expect(await bash("etcd-gateway start --policy=ro")).toEqual(["round-robin"]);
    expect(await bash("etcd-gateway start --policy ")).toEqual(sorted(policies));
    expect(await bash("etcd-gateway --health-check=")).toEqual(["etcd", "health", "none", "tcp"]);
    expect(await bash("etcd-gateway start --log-format=")).toEqual(["json", "text"]);
  });

  test("file names for a file flag", async () => {
    expect(await bash(`etcd-gateway start --config=${dir}/etcd-gateway.b`)).toEqual([scripts.bash]);
    expect(await bash(`etcd-gateway start --access-log=${dir}/etcd-gateway.f`)).toEqual([scripts.fish]);
  });

  test("each command's own flags", async () => {
    expect(await bash("etcd-gateway member drain --c")).toEqual(["--close-idle", "--config="]);
    expect(await bash("etcd-gateway member ready --c")).toEqual(["--config="]);
    expect(await bash("etcd-gateway status --j")).toEqual(["--json"]);
  });
});

describe("fish completes", () => {
  test("flags, commands and values", async () => {
    expect(await fish("etcd-gateway start --listen-a")).toEqual(["--listen-addr"]);
    expect(await fish("etcd-gateway mem")).toEqual(["member"]);
    expect(await fish("etcd-gateway start --policy=")).toEqual(sorted(policies.map((p) => `--policy=${p}`)));
    expect(await fish("etcd-gateway member drain --cl")).toEqual(["--close-idle"]);
  });

  test("loads without a syntax error", async () => {
    expect(await run(["fish", "--no-config", "-n", scripts.fish])).toBe("");
  });
});

/**
 * What an interactive zsh shows after `line` and two TABs: a zsh without rc files, compinit run
 * and the script sourced, driven on a pseudo-terminal (zsh/zpty), its screen with escapes removed.
 */
const ZSH_DRIVER = `
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT='> '; autoload -U compinit; compinit -u -D; source \${(q)1}; print RE''ADY"
zpty -r z out '*READY*'
zpty -w -n z "$2"$'\\t\\t'
local all="" chunk
for i in {1..20}; do
  sleep 0.1
  while zpty -r -t z chunk; do all+=$chunk; done
done
zpty -d z
print -r -- "$all"
`;
const zshDriver = join(dir, "driver.zsh");
writeFileSync(zshDriver, ZSH_DRIVER);

async function zsh(line: string): Promise<string> {
  const out = await run(["zsh", "-f", zshDriver, scripts.zsh, line], { TERM: "xterm" });
  return out.replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, "").replace(/[\r\x07\b]/g, "");
}

describe("zsh", () => {
  test("loads without a syntax error", async () => {
    expect(await run(["zsh", "-n", scripts.zsh])).toBe("");
  });

  test("completes flags, commands and values in its line editor", async () => {
    const [flag, command, values] = await Promise.all([zsh("etcd-gateway start --listen-a"), zsh("etcd-gateway mem"), zsh("etcd-gateway start --policy=")]);
    expect(flag).toContain("etcd-gateway start --listen-addr=");
    expect(command).toContain("etcd-gateway member");
    for (const p of policies) expect(values).toContain(p);
  }, 30_000);
});

test("every flag of every table is in each script, as that shell spells it", () => {
  const [b, z, f] = [scripts.bash, scripts.zsh, scripts.fish].map((p) => readFileSync(p, "utf8"));
  for (const table of [START_FLAGS, STATUS_FLAGS, MEMBER_FLAGS] as const) {
    for (const [name, spec] of Object.entries(table)) {
      const typed = `--${name}${spec.type === "string" ? "=" : ""}`;
      expect(b).toMatch(new RegExp(`[" ]${typed}[" ]`));
      expect(z).toContain(`'${typed}[`);
      expect(f).toContain(` -l ${name} `);
    }
  }
});

test("every command of --help is in each script", () => {
  const help = runBinary(["--help"]).stdout;
  const commands = [...help.slice(help.indexOf("COMMANDS")).matchAll(/^ {2}(\S+)/gm)].map((m) => m[1]!);
  expect(commands).toContain("completion");
  for (const path of Object.values(scripts)) {
    const text = readFileSync(path, "utf8");
    for (const c of commands) expect(text).toMatch(new RegExp(`\\b${c}\\b`));
  }
});

describe("completion errors: one line, exit 1", () => {
  const cases: [string[], RegExp][] = [
    [["completion", "ksh"], /^etcd-gateway: completion: unknown shell "ksh"; expected bash, zsh, fish$/],
    [["completion"], /^etcd-gateway: completion: give a shell: bash, zsh, fish$/],
    [["completion", "bash", "zsh"], /^etcd-gateway: completion: one shell at a time, got 2$/],
  ];
  for (const [args, pattern] of cases) {
    test(args.join(" "), () => {
      const r = runBinary(args);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr.trimEnd()).toMatch(pattern);
      expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
    });
  }
});
