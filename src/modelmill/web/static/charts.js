// Charts as inline SVG: no chart library to download, and the drawing scales with the page
// (viewBox) while text stays readable. Colors come from CSS variables so dark mode follows.

import { s } from "./dom.js";

const W = 640;
const H = 260;
const PAD = { top: 16, right: 16, bottom: 40, left: 56 };

function niceTicks(lo, hi, count = 5) {
  if (lo === hi) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v) {
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Number.isInteger(v)) return String(v);
  return String(Number(Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3))); // 0.750 -> 0.75
}

/**
 * A line chart of points [{x, y}] (loss against step); `second` = {name, points} draws a second,
 * dashed line on the same axes (validation loss), with a legend naming both.
 */
export function lineChart(points, { xLabel = "step", yLabel = "loss", testid = "line-chart", second = null,
  name = "training" } = {}) {
  const other = second && second.points.length ? second.points : [];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", testid,
    "data-points": points.length, "aria-label": `${yLabel} by ${xLabel}, ${points.length} points` });
  const iw = W - PAD.left - PAD.right;
  const ih = H - PAD.top - PAD.bottom;
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" },
      `No ${yLabel} logged yet`));
    return svg;
  }
  const xs = points.concat(other).map((p) => p.x);
  const ys = points.concat(other).map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.05, y1 + Math.abs(y1 || 1) * 0.05];
  const margin = (y1 - y0) * 0.08; // breathing room so the line does not sit on the frame
  y0 -= margin;
  y1 += margin;
  const X = (v) => PAD.left + ((v - x0) / (x1 - x0)) * iw;
  const Y = (v) => PAD.top + ih - ((v - y0) / (y1 - y0)) * ih;

  const grid = s("g", { class: "chart-grid" });
  for (const t of niceTicks(y0, y1)) {
    grid.append(s("line", { x1: PAD.left, x2: PAD.left + iw, y1: Y(t), y2: Y(t) }),
      s("text", { x: PAD.left - 8, y: Y(t) + 4, "text-anchor": "end" }, label(t)));
  }
  for (const t of niceTicks(x0, x1, 6).filter((v) => Number.isInteger(v) || x1 - x0 < 6)) {
    grid.append(s("text", { x: X(t), y: PAD.top + ih + 18, "text-anchor": "middle" }, label(t)));
  }
  svg.append(grid,
    s("line", { class: "chart-axis", x1: PAD.left, x2: PAD.left + iw, y1: PAD.top + ih, y2: PAD.top + ih }),
    s("text", { class: "chart-title", x: PAD.left + iw / 2, y: H - 4, "text-anchor": "middle" }, xLabel),
    s("text", { class: "chart-title", x: 14, y: PAD.top + ih / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${PAD.top + ih / 2})` }, yLabel));
  // series 0: the solid line (points, testid chart-point); series 1: the dashed one (chart-point-2)
  const lineClass = ["chart-line", "chart-line chart-line-2"];
  const line = (pts, series, what) => {
    const sorted = [...pts].sort((a, b) => a.x - b.x);
    svg.append(s("path", { class: lineClass[series], d: sorted.map((p, i) => `${i ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join("") }));
    const dots = s("g", { class: series ? "chart-dots chart-dots-2" : "chart-dots" });
    for (const p of sorted) {
      dots.append(s("circle", { cx: X(p.x), cy: Y(p.y), r: sorted.length > 60 ? 1.5 : 3,
        testid: series ? "chart-point-2" : "chart-point" },
        s("title", {}, `${xLabel} ${p.x}: ${what} ${label(p.y)}`)));
    }
    svg.append(dots);
  };
  line(points, 0, other.length ? `${name} ${yLabel}` : yLabel);
  if (other.length) {
    line(other, 1, `${second.name} ${yLabel}`);
    const legend = s("g", { class: "chart-legend", testid: "chart-legend" });
    [name, second.name].forEach((text, i) => {
      const cls = lineClass[i];
      const x = PAD.left + 12 + i * 120;
      legend.append(s("line", { class: cls, x1: x, x2: x + 18, y1: PAD.top + 6, y2: PAD.top + 6 }),
        s("text", { x: x + 24, y: PAD.top + 10 }, text));
    });
    svg.append(legend);
  }
  return svg;
}

/**
 * Grouped bars: `groups` along x (class labels), one bar per series in each group.
 * series = [{name, values: [number|null per group]}]; values on 0..max (default 1).
 */
export function barChart(groups, series, { max = null, testid = "bar-chart", yLabel = "" } = {}) {
  const all = series.flatMap((se) => se.values).filter((v) => typeof v === "number");
  const top = max ?? Math.max(1e-9, ...all);
  const h = 240;
  const pad = { top: 16, right: 12, bottom: 56, left: 48 };
  const w = Math.max(W, pad.left + pad.right + groups.length * (series.length * 22 + 24));
  const iw = w - pad.left - pad.right;
  const ih = h - pad.top - pad.bottom;
  const Y = (v) => pad.top + ih - (v / top) * ih;
  const svg = s("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img", testid,
    "aria-label": `${yLabel} per group` });
  const grid = s("g", { class: "chart-grid" });
  for (const t of niceTicks(0, top, 4)) {
    grid.append(s("line", { x1: pad.left, x2: pad.left + iw, y1: Y(t), y2: Y(t) }),
      s("text", { x: pad.left - 8, y: Y(t) + 4, "text-anchor": "end" }, label(t)));
  }
  svg.append(grid);
  const gw = iw / Math.max(1, groups.length);
  const bw = Math.min(40, (gw - 16) / Math.max(1, series.length));
  groups.forEach((g, gi) => {
    const gx = pad.left + gi * gw + (gw - bw * series.length) / 2;
    series.forEach((se, si) => {
      const v = se.values[gi];
      if (typeof v !== "number") return;
      svg.append(s("rect", { x: gx + si * bw + 1, y: Y(v), width: Math.max(1, bw - 2), height: Math.max(0, pad.top + ih - Y(v)),
        class: `bar bar-${si % 6}`, testid: "bar" }, s("title", {}, `${se.name} · ${g}: ${label(v)}`)));
    });
    svg.append(s("text", { x: pad.left + gi * gw + gw / 2, y: pad.top + ih + 18, "text-anchor": "middle", class: "chart-label" },
      String(g).length > 14 ? `${String(g).slice(0, 13)}…` : String(g)));
  });
  svg.append(s("line", { class: "chart-axis", x1: pad.left, x2: pad.left + iw, y1: pad.top + ih, y2: pad.top + ih }));
  // the legend sits under the axis labels so it never covers a bar
  let lx = pad.left;
  for (const [si, se] of series.entries()) {
    svg.append(s("rect", { x: lx, y: h - 18, width: 12, height: 12, class: `bar bar-${si % 6}` }),
      s("text", { x: lx + 16, y: h - 8, class: "chart-label" }, se.name));
    lx += 28 + String(se.name).length * 7;
  }
  return svg;
}

/** A histogram from {edges, counts} as the stats endpoint returns it. */
export function histogram(hist, { unit = "", testid = "histogram" } = {}) {
  const groups = hist.counts.map((_, i) => `${Math.round(hist.edges[i])}–${Math.round(hist.edges[i + 1])}`);
  return barChart(groups, [{ name: unit ? `records by length (${unit})` : "records", values: hist.counts }], { testid });
}
