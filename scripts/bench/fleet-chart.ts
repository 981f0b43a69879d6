/**
 * Charts of the fleet balance benchmark, rendered to SVG with Vega-Lite (compiled to a Vega spec,
 * rendered headless by a Vega View with no renderer and `toSVG`, no browser or canvas needed): per
 * scenario, one small panel per contender of the connections open on each member over time, with
 * the time each member was down (from its stop until it answered healthy again) shaded and labelled.
 *
 * @module
 */
import * as vega from "vega";
import * as vl from "vega-lite";
import type { TopLevelSpec } from "vega-lite";

/** One contender's panel. */
export interface ChartPanel {
  title: string;
  /** One point per member per second: seconds since the first fault, member name, connections open. */
  series: { t: number; member: string; open: number }[];
  /** Intervals a member was down or not yet healthy, seconds since the first fault (shaded grey, labelled with the member). */
  downs: { from: number; to: number; member: string }[];
}

const MEMBERS = ["m0", "m1", "m2"];
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c"];

/** One label per moment members went down: "m0, m1, m2" for an outage, not three on top of each other. */
function labels(downs: ChartPanel["downs"]): { from: number; member: string }[] {
  const at = new Map<number, string[]>();
  for (const d of downs) {
    const key = Math.round(d.from * 2) / 2;
    at.set(key, [...(at.get(key) ?? []), d.member]);
  }
  return [...at].map(([from, ms]) => ({ from, member: ms.join(", ") }));
}

/** The Vega-Lite spec of one scenario's chart: panels stacked, one x scale for all. */
export function chartSpec(title: string, subtitle: string, panels: readonly ChartPanel[]): TopLevelSpec {
  const ts = panels.flatMap((p) => p.series.map((s) => s.t));
  const domain = ts.length === 0 ? [0, 1] : [Math.floor(Math.min(...ts)), Math.ceil(Math.max(...ts))];
  const colour = { field: "member", type: "nominal" as const, title: "member", scale: { domain: MEMBERS, range: COLOURS } };
  const x = { type: "quantitative" as const, scale: { domain, nice: false } };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title, subtitle, anchor: "start", fontSize: 13, subtitleFontSize: 10 },
    background: "white",
    config: { font: "Helvetica, Arial, sans-serif", axis: { labelFontSize: 10, titleFontSize: 10, grid: true, gridColor: "#eee" }, legend: { orient: "top" } },
    vconcat: panels.map((p) => ({
      title: { text: p.title, fontSize: 11, anchor: "start" as const },
      width: 560,
      height: 100,
      layer: [
        {
          data: { values: p.downs },
          mark: { type: "rect" as const, color: "#888", opacity: 0.15 },
          encoding: { x: { ...x, field: "from" }, x2: { field: "to" } },
        },
        {
          data: { values: labels(p.downs) },
          mark: { type: "text" as const, align: "left" as const, baseline: "top" as const, dx: 2, fontSize: 9, color: "#555" },
          encoding: { x: { ...x, field: "from" }, y: { value: 2 }, text: { field: "member" } },
        },
        {
          data: { values: p.series },
          mark: { type: "line" as const, strokeWidth: 1.4, interpolate: "step-after" as const },
          encoding: {
            x: { ...x, field: "t", title: "seconds since the first fault" },
            y: { field: "open", type: "quantitative" as const, title: "open connections" },
            color: colour,
          },
        },
      ],
    })),
    resolve: { scale: { color: "shared" } },
  };
}

/** Renders a Vega-Lite spec to SVG text. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
