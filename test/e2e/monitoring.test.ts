/**
 * The alerting rules (contrib/prometheus/alerts.yaml) and the Grafana dashboard
 * (contrib/grafana/etcd-gateway.json), issue 24 item 5: the rules pass `promtool check rules` and
 * their unit tests (contrib/prometheus/alerts.test.yaml) pass `promtool test rules`, each alert
 * with a case that fires it and one that does not; the dashboard's queries parse as PromQL; and
 * every metric that a rule or a dashboard query names is one the real binary exports, read from
 * its live /metrics in front of a real etcd cluster.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useSharedCluster, viaGateway } from "../support/etcd.ts";
import { startGatewayProcess } from "../support/gateway.ts";
import { waitFor } from "../support/net.ts";
import { runToEnd, which } from "../support/process.ts";

const ROOT = join(import.meta.dir, "..", "..");
const RULES = join(ROOT, "contrib/prometheus/alerts.yaml");
const RULE_TESTS = join(ROOT, "contrib/prometheus/alerts.test.yaml");
const DASHBOARD = join(ROOT, "contrib/grafana/etcd-gateway.json");

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleTest {
  alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[];
}
interface Target {
  expr?: string;
}
interface Panel {
  title?: string;
  type: string;
  datasource?: { uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
}
interface Dashboard {
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
}

const rules = (): Rule[] => (Bun.YAML.parse(readFileSync(RULES, "utf8")) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const dashboard = (): Dashboard => JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;
/** Every panel, those inside collapsed rows included. */
const allPanels = (ps: readonly Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
/** Every query of the dashboard: each panel target's and each query variable's, by where it is. */
function dashboardQueries(d: Dashboard): [where: string, expr: string][] {
  const targets = allPanels(d.panels).flatMap((p) => (p.targets ?? []).map((t, i) => [`panel "${p.title}" target ${i}`, t.expr ?? ""] as [string, string]));
  const variables = d.templating.list
    .filter((v) => v.type === "query")
    .map((v) => [`variable ${v.name}`, typeof v.query === "string" ? v.query : (v.query?.query ?? "")] as [string, string]);
  return [...targets, ...variables];
}

/** PromQL words that are not metric names (keywords, and the modifiers whose label lists are removed first). */
const KEYWORDS = new Set(["and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"]);

/**
 * The metric names a PromQL expression (or a Grafana query: `label_values(metric, label)`, `$var`)
 * names. Conservative: whatever identifier is not a function, a keyword, a label in a matcher or a
 * grouping list counts as a metric name, so that an unknown word can never slip through.
 */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/\$\{\w+(?::\w+)?\}|\$\w+/g, " ") // Grafana variables ($job, ${datasource}, $__rate_interval)
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, " ") // strings
    .replace(/\{[^}]*\}/g, " ") // label matchers
    .replace(/\[[^\]]*\]/g, " ") // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names = new Set<string>();
  for (const m of bare.matchAll(/\d[\w.]*|[a-zA-Z_:][\w:]*/g)) {
    const word = m[0];
    if (/^\d/.test(word) || KEYWORDS.has(word.toLowerCase())) continue;
    if (/^\s*\(/.test(bare.slice(m.index + word.length))) continue; // a function or an aggregation
    // label_values(metric, label): the second argument is a label.
    if (/,\s*$/.test(bare.slice(0, m.index)) && /label_values\s*\([^()]*$/.test(bare.slice(0, m.index))) continue;
    names.add(word);
  }
  return [...names].sort();
}

/** The metric families of an exposition, from its `# TYPE` lines: name to type. */
function families(exposition: string): Map<string, string> {
  return new Map([...exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

/**
 * Of `names`, those the exposition does not export: a name is exported when it is a family, or
 * a histogram's (or summary's) `_bucket`, `_sum` or `_count` series; `up` is made by Prometheus
 * for every scraped target.
 */
function notExported(names: Iterable<string>, fams: Map<string, string>): string[] {
  const exported = (n: string) => {
    if (n === "up" || fams.has(n)) return true;
    const m = /^(.*)_(bucket|sum|count)$/.exec(n);
    if (m === null) return false;
    const type = fams.get(m[1]!);
    return type === "histogram" || (type === "summary" && m[2] !== "bucket");
  };
  return [...names].filter((n) => !exported(n));
}

const promtool = which("promtool");

describe("alerting rules and their unit tests", () => {
  test("`promtool check rules contrib/prometheus/alerts.yaml` passes", async () => {
    const r = await runToEnd([promtool, "check", "rules", RULES], { timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${rules().length} rules found`);
  });

  test("`promtool test rules contrib/prometheus/alerts.test.yaml` passes", async () => {
    const r = await runToEnd([promtool, "test", "rules", RULE_TESTS], { timeoutMs: 60_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("SUCCESS");
  });

  test("every alert has a for, a severity, a summary and a description, and unit tests that fire it and that do not", () => {
    const cases = (Bun.YAML.parse(readFileSync(RULE_TESTS, "utf8")) as { tests: RuleTest[] }).tests.flatMap((t) => t.alert_rule_test ?? []);
    const report = rules().map((r) => {
      const mine = cases.filter((c) => c.alertname === r.alert);
      return {
        alert: r.alert,
        for: typeof r.for === "string" && r.for !== "",
        severity: ["critical", "warning"].includes(r.labels?.severity ?? ""),
        summary: (r.annotations?.summary ?? "") !== "",
        description: (r.annotations?.description ?? "") !== "",
        fires: mine.some((c) => (c.exp_alerts ?? []).length > 0),
        staysQuiet: mine.some((c) => (c.exp_alerts ?? []).length === 0),
      };
    });
    const ok = (alert: string) => ({ alert, for: true, severity: true, summary: true, description: true, fires: true, staysQuiet: true });
    expect(report).toEqual(report.map((r) => ok(r.alert)));
    expect(report.length).toBeGreaterThanOrEqual(6);
  });
});

describe("the Grafana dashboard", () => {
  const scratch = mkdtempSync(join(tmpdir(), "eg-monitoring-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  test("has a recent schema, a data source and an instance variable, and every panel queries through the data source variable", () => {
    const d = dashboard();
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    const vars = new Map(d.templating.list.map((v) => [v.name, v.type]));
    expect(vars.get("datasource")).toBe("datasource");
    expect(vars.get("instance")).toBe("query");
    const queried = allPanels(d.panels).filter((p) => p.type !== "row");
    expect(queried.length).toBeGreaterThanOrEqual(7);
    expect(queried.filter((p) => p.datasource?.uid !== "${datasource}" || (p.targets ?? []).length === 0).map((p) => p.title)).toEqual([]);
  });

  test("every panel query parses as PromQL (`promtool check rules` on them as recording rules)", async () => {
    const exprs = dashboardQueries(dashboard()).filter(([where]) => where.startsWith("panel"));
    // Grafana's variables, as Grafana substitutes them, so that promtool sees plain PromQL.
    const plain = (e: string) => e.replaceAll("$__rate_interval", "1m").replace(/\$\w+/g, ".*");
    const file = join(scratch, "dashboard-queries.yaml");
    const group = { groups: [{ name: "dashboard", rules: exprs.map(([, e], i) => ({ record: `dashboard:query_${i}`, expr: plain(e) })) }] };
    writeFileSync(file, JSON.stringify(group)); // JSON is YAML
    const r = await runToEnd([promtool, "check", "rules", file], { timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${exprs.length} rules found`);
  });
});

describe("metric names against the binary's live /metrics", () => {
  test("metricNames finds the metrics of an expression and nothing else; notExported flags a name that is not exported", () => {
    expect(metricNames('sum by (job, endpoint) (rate(a_total{job=~"$job",le="0.5"}[$__rate_interval])) / on (job) group_left (x) b > 0.5 and c offset 5m unless count(d == 1) > bool 1e3')).toEqual(["a_total", "b", "c", "d"]);
    expect(metricNames('histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le)) or vector(0)')).toEqual(["h_bucket"]);
    expect(metricNames('label_values(etcd_gateway_build_info{job=~"$job"}, instance)')).toEqual(["etcd_gateway_build_info"]);
    const fams = new Map([["h", "histogram"], ["g", "gauge"]]);
    expect(notExported(["h_bucket", "h_count", "g", "up", "g_count", "etcd_gateway_no_such_metric"], fams)).toEqual(["g_count", "etcd_gateway_no_such_metric"]);
  });

  describe("in front of a real 3-member etcd cluster", () => {
    const cluster = useSharedCluster();

    test("every metric an alert expression or a dashboard query names is a family of the live /metrics (or `up`)", async () => {
      const gw = await startGatewayProcess([`--endpoints=${cluster().endpoints}`, "--health-interval=200ms"], { admin: true });
      // Traffic, so that the data-path counters have rows, and the first health checks.
      for (let i = 0; i < 3; i++) {
        const r = await viaGateway(gw, ["put", `monitoring/${i}`, "v"]);
        expect(r.code, r.stderr).toBe(0);
      }
      await waitFor("health checks counted", async () => ((await gw.metric("etcd_gateway_health_check_duration_seconds_count")) > 0 ? true : undefined));
      expect(await gw.metric("etcd_gateway_listener_accepted_total")).toBeGreaterThanOrEqual(3);
      const text = await (await fetch(`${gw.adminURL}/metrics`, { headers: { connection: "close" } })).text();
      const fams = families(text);
      expect(fams.get("etcd_gateway_member_up")).toBe("gauge");

      const used = [...rules().map((r) => [`alert ${r.alert}`, r.expr] as [string, string]), ...dashboardQueries(dashboard())];
      const missing = used.flatMap(([where, expr]) => notExported(metricNames(expr), fams).map((name) => `${where}: ${name}`));
      expect(missing).toEqual([]);
      // The extraction saw what the rules and the dashboard are about, not nothing.
      const named = new Set(used.flatMap(([, e]) => metricNames(e)));
      for (const name of ["etcd_gateway_member_state", "etcd_gateway_listener_limit_reached_total", "etcd_gateway_access_log_dropped_lines_total", "etcd_gateway_health_check_duration_seconds_bucket", "up", "process_resident_memory_bytes", "process_open_fds"]) {
        expect([name, named.has(name)]).toEqual([name, true]);
      }
    });
  });
});
