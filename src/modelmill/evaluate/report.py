"""A self-contained HTML benchmark report: ranked tables, charts and disagreements per task.

    from modelmill.evaluate.report import build_report, write_report
    write_report(results, "report.html")            # results: one dict per (task, candidate)
    html_text = build_report(results, title="Support tickets, round 3", max_disagreements=20)

One file, nothing fetched: CSS is inline and charts are inline SVG drawn by matplotlib, so
the page opens offline and can be mailed or archived as is. Each ``results`` entry holds
"task", "kind", "candidate", "candidate_kind", "primary", "metrics", "n", "parameters",
"latency_ms", "seconds", "dataset", "created_at" and "items" (see ``tests/test_eval_report.py``),
and optionally "data_hash" (results on the same dataset name but other content rank apart).
The output depends only on the input (no clock, salted SVG ids), so the same results give
the same bytes and reports can be diffed or cached.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

# Structured entries of "metrics"; "n" is dropped because the table has its own n column.
_NOT_COLUMNS = {"labels", "per_class", "confusion", "n"}
_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d",
            "#ff9da6", "#bab0ac"]
# rcParams are process-global: the lock keeps two report builds (say, two server requests)
# from interleaving their rc_context enter/exit and leaving someone else's settings behind.
_LOCK = threading.Lock()
_RC = {
    "svg.fonttype": "none", "text.parse_math": False,  # names with "$" stay text, not mathtext
    "font.size": 9, "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#c3c8d0",
    "axes.labelcolor": "#434a54", "axes.grid": True, "axes.axisbelow": True,
    "grid.color": "#e8eaee", "grid.linewidth": 0.8, "xtick.color": "#5b6470", "ytick.color": "#5b6470",
    "legend.frameon": False, "savefig.transparent": True,
}
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2430;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main,header .in{max-width:1180px;margin:0 auto}main{padding:0 20px 48px}
header{background:linear-gradient(120deg,#1f2a44,#34507a);color:#fff;padding:28px 20px 22px;margin-bottom:22px}
h1{margin:0 0 6px;font-size:26px;font-weight:650}.sub{opacity:.85}
.chips{margin-top:12px;display:flex;flex-wrap:wrap;gap:8px}
.chip{background:rgba(255,255,255,.14);border-radius:999px;padding:3px 12px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px;margin-bottom:22px}
.card,section{background:#fff;box-shadow:0 1px 3px rgba(20,30,50,.08)}
.card{display:block;border-radius:10px;padding:14px 16px;color:inherit;text-decoration:none;border-top:3px solid #4c78a8}
.card:hover{box-shadow:0 3px 10px rgba(20,30,50,.14)}.card .t{font-weight:650}
.card .big{font-size:28px;font-weight:700;font-variant-numeric:tabular-nums}
.muted{color:#6b7380;font-size:12.5px}.warn{color:#a05a00}.scroll{overflow-x:auto}
section{border-radius:12px;padding:20px 22px;margin-bottom:24px}
h2{margin:0 0 4px;font-size:21px}h3{margin:22px 0 8px;font-size:15px;color:#34507a}
.badge{display:inline-block;font-size:11.5px;padding:1px 8px;border-radius:999px;background:#e9eef6;color:#34507a;
  vertical-align:middle;margin-left:6px;font-weight:500}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-weight:600;color:#4a5160;border-bottom:2px solid #dfe3e8;padding:7px 9px;white-space:nowrap}
td{border-bottom:1px solid #eef0f3;padding:6px 9px;vertical-align:top}tbody tr:hover{background:#f8f9fb}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best{background:#eef8f0}tr.best td:first-child{box-shadow:inset 3px 0 #2e9a4f}
.cell{display:flex;flex-direction:column;align-items:flex-end;gap:3px}
.bar{display:block;width:72px;height:5px;background:#eceef2;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:#6f93c4}.pri .bar i{background:#2e9a4f}.pri .v{font-weight:700}
.dot{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:7px;vertical-align:-1px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px;align-items:start}
.multi{display:grid;gap:12px}
figure{margin:0}figcaption{font-size:12.5px;color:#4a5160;text-align:center;margin-top:2px}
svg{max-width:100%;height:auto;display:block;margin:0 auto}
/* charts are laid out with DejaVu Sans (wide), so the page's narrower fonts never overflow */
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif!important}
td.text{white-space:pre-wrap;word-break:break-word;min-width:260px;max-width:520px}
td.ok{background:#e7f5ea;color:#156b2f}td.bad{background:#fdecea;color:#a3201b}td.unp{color:#8a919c;font-style:italic}
details>summary{cursor:pointer;list-style:none}details>summary::-webkit-details-marker{display:none}
details>summary::after{content:" more";color:#34507a;font-size:12px;font-style:normal}
details[open]>summary .t{display:none}details[open]>summary::after{content:"less"}
.empty{text-align:center;padding:60px 20px;color:#6b7380;font-size:16px}
footer{text-align:center;color:#8a919c;font-size:12px}
"""


def build_report(results: list[dict], *, title: str = "modelmill benchmark report",
                 max_disagreements: int = 50) -> str:
    """Return the HTML text: a header, one overview card per task, then one section per task.

    A task's results on other data (another dataset, or another number of items) are ranked in a
    section of their own, named with the dataset and item count: their scores do not compare."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (str(r["task"]), str(r.get("dataset")), str(r.get("data_hash") or ""), r.get("n"))
        groups.setdefault(key, []).append(r)
    per_task: dict[str, int] = {}
    for key in groups:
        per_task[key[0]] = per_task.get(key[0], 0) + 1
    ranked = {(k[0] if per_task[k[0]] == 1 else f"{k[0]} · {k[1]} · {_fmt(k[3])} items"): _ranked(rows)
              for k, rows in groups.items()}
    body = [_header(title, results)]
    if not results:
        body.append('<main><section class="empty">No benchmark results yet. Evaluate some candidates and '
                    "their scores, charts and disagreements will appear here.</section></main>")
    else:
        import matplotlib

        body.append("<main>" + _cards(ranked))
        with _LOCK, matplotlib.rc_context(_RC):
            for t, (name, rows) in enumerate(ranked.items()):
                body.append(_task_section(t, name, rows, max_disagreements))
        body.append("<footer>made by modelmill, drawn with matplotlib, one file, no network</footer></main>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: list[dict], path: str | Path, **kw) -> Path:
    """Write ``build_report(results, **kw)`` to ``path`` through ``path + '.tmp'`` and a rename,
    so a reader (or a crash) never sees half a report."""
    path = Path(path)
    text = build_report(results, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---- values and formatting ---------------------------------------------------------------

def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(v) -> float | None:
    """A finite number, or None (bools, strings, NaN and infinities are not scores)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _fmt(v) -> str:
    x = _num(v)
    if x is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def _human(v) -> str:
    x = _num(v)
    if x is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _ms(v) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.3g} ms" if x < 1000 else f"{x / 1000:.3g} s"


def _short(s, n: int) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def _text(v) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _clip(s: str, n: int = 300) -> str:
    """Escaped text; past n characters the rest folds into a <details>."""
    if len(s) <= n:
        return _e(s)
    return f'<details><summary><span class="t">{_e(s[:n])}…</span></summary>{_e(s)}</details>'


def _primary(r: dict) -> float | None:
    return _num((r.get("metrics") or {}).get(r.get("primary")))


def _ranked(rows: list[dict]) -> list[dict]:
    # Missing or non-finite headline scores sink to the bottom; ties keep the input order.
    return sorted(rows, key=lambda r: (_primary(r) is None, -(_primary(r) or 0.0)))


def _when(rows: list[dict]) -> str:
    stamps = []
    for r in rows:
        try:
            d = datetime.fromisoformat(str(r.get("created_at")))
        except ValueError:
            continue
        stamps.append(d.astimezone(timezone.utc) if d.tzinfo else d.replace(tzinfo=timezone.utc))
    if not stamps:
        return ""
    lo, hi = (f"{d:%Y-%m-%d %H:%M} UTC" for d in (min(stamps), max(stamps)))
    return lo if lo == hi else f"{lo} to {hi}"


# ---- page parts --------------------------------------------------------------------------

def _header(title: str, results: list[dict]) -> str:
    chips = []
    if results:
        datasets = {str(r.get("dataset")) for r in results}
        chips = [f"{len({str(r['task']) for r in results})} task(s)", f"{len(results)} scored candidate(s)",
                 f"{len(datasets)} dataset(s)"]
        when = _when(results)
        chips += [f"scored {when}"] if when else []
    chips_html = "".join(f'<span class="chip">{_e(c)}</span>' for c in chips)
    return (f'<header><div class="in"><h1>{_e(title)}</h1><div class="sub">Candidates ranked per task by '
            f'their headline metric (higher is better).</div><div class="chips">{chips_html}</div></div></header>')


def _cards(ranked: dict[str, list[dict]]) -> str:
    out = []
    for t, (name, rows) in enumerate(ranked.items()):
        best = rows[0]
        out.append(f'<a class="card" href="#task-{t}"><div class="t">{_e(name)}<span class="badge">'
                   f'{_e(best["kind"])}</span></div><div class="big">{_fmt(_primary(best))}</div><div class="muted">'
                   f'{_e(best["primary"])} of {_e(best["candidate"])}, best of {len(rows)}</div></a>')
    return f'<div class="cards">{"".join(out)}</div>'


def _task_section(t: int, name: str, rows: list[dict], max_dis: int) -> str:
    colors = {r["candidate"]: _PALETTE[i % len(_PALETTE)] for i, r in enumerate(rows)}
    datasets = sorted({str(r.get("dataset")) for r in rows})  # one: results on other data have their own section
    sub = " · ".join(x for x in (_e(", ".join(datasets)), _e(_when(rows))) if x)
    parts = [(f'<section id="task-{t}"><h2>{_e(name)}<span class="badge">{_e(rows[0]["kind"])}</span></h2>'
              f'<div class="muted">{sub}</div>'), "<h3>Ranking</h3>" + _rank_table(rows, colors),
             "<h3>Headline metric</h3>", _figure(_svg(_bar_primary(rows, colors), f"t{t}-bar"))]
    with_pc = [r for r in rows if isinstance(r["metrics"].get("per_class"), dict) and r["metrics"]["per_class"]]
    if with_pc:
        per = "field (entities)" if rows[0]["kind"] == "extraction" else "class"
        parts += [f"<h3>F1 per {per}</h3>", _figure(_svg(_bar_per_class(with_pc, colors), f"t{t}-pc"))]
    mats = [(r, fig) for r in rows if (fig := _confusion(r)) is not None]
    if mats:
        figs = "".join(_figure(_svg(fig, f"t{t}-cm{i}"), f"{r['candidate']} · {_fmt(_primary(r))}")
                       for i, (r, fig) in enumerate(mats))
        # Bigger matrices get wider tiles, so their counts stay readable when the page shrinks them.
        k = max(len(r["metrics"]["confusion"]) for r, _ in mats)
        parts.append('<h3>Confusion matrices</h3><div class="muted">rows gold, columns predicted; counts shown, '
                     'colour is the share of the gold row</div><div class="multi" style="grid-template-columns:'
                     f'repeat(auto-fill,minmax({min(560, 200 + 24 * k)}px,1fr))">{figs}</div>')
    scatters = [_scatter(rows, colors, "parameters", "parameters (log scale)", True),
                _scatter(rows, colors, "latency_ms", "latency, ms per item (lower is better)", None)]
    scatters = [_figure(_svg(fig, f"t{t}-sc{i}")) for i, fig in enumerate(scatters) if fig is not None]
    if scatters:
        parts.append(f'<h3>Quality against size and speed</h3><div class="grid">{"".join(scatters)}</div>')
    parts.append(_disagreements(rows, max_dis))
    return "\n".join(parts) + "</section>"


def _rank_table(rows: list[dict], colors: dict) -> str:
    metric_cols: list[str] = []
    for r in rows:
        for k, v in r["metrics"].items():
            # NaN and None still get a column (shown as "-"): "undefined" is a result too.
            is_number = v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
            if k not in _NOT_COLUMNS and k != r["primary"] and k not in metric_cols and is_number:
                metric_cols.append(k)
    names = {r["primary"] for r in rows}
    pname = rows[0]["primary"] if len(names) == 1 else "primary"
    cols = [pname] + metric_cols
    cells = {c: [_primary(r) if i == 0 else _num(r["metrics"].get(c)) for r in rows] for i, c in enumerate(cols)}
    best = _primary(rows[0])
    head = "".join(f'<th class="num">{_e(c)}</th>' for c in cols)
    tail = "".join(f'<th class="num">{c}</th>' for c in ("n", "latency", "parameters", "seconds"))
    out = [f'<div class="scroll"><table><thead><tr><th>#</th><th>candidate</th><th>kind</th>{head}{tail}']
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        tds = []
        for j, c in enumerate(cols):
            raw = r["metrics"].get(r["primary"] if j == 0 else c)
            vals = [v for v in cells[c] if v is not None]
            # Bars only where they read as "fuller is better": scores in [0, 1], not counts.
            bar = ""
            if cells[c][i] is not None and not isinstance(raw, int) and vals and 0 <= min(vals) and max(vals) <= 1:
                bar = f'<span class="bar"><i style="width:{100 * cells[c][i]:.1f}%"></i></span>'
            tds.append(f'<td class="num{" pri" if j == 0 else ""}"><div class="cell"><span class="v">'
                       f'{_fmt(raw)}</span>{bar}</div></td>')
        mark = ' class="best"' if best is not None and _primary(r) == best else ""
        label = f"{_e(r['primary'])}: " if pname == "primary" else ""
        tds[0] = tds[0].replace('<span class="v">', f'<span class="v">{label}', 1)
        out.append(f'<tr{mark}><td class="num">{i + 1}</td><td><span class="dot" style="background:'
                   f'{colors[r["candidate"]]}"></span>{_e(r["candidate"])}</td><td><span class="badge">'
                   f'{_e(r.get("candidate_kind"))}</span></td>{"".join(tds)}<td class="num">{_fmt(r.get("n"))}'
                   f'</td><td class="num">{_ms(r.get("latency_ms"))}</td><td class="num">'
                   f'{_human(r.get("parameters"))}</td><td class="num">{_fmt(r.get("seconds"))}</td></tr>')
    return "".join(out) + "</tbody></table></div>"


def _figure(svg: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _disagreements(rows: list[dict], max_dis: int) -> str:
    cands = [r for r in rows if r.get("items")]
    if len(cands) < 2:
        return ""
    by = [{it["i"]: it for it in r["items"]} for r in cands]
    order: dict = {}
    for m in by:
        order.update(dict.fromkeys(m))
    try:
        keys = sorted(order)
    except TypeError:  # mixed id types: keep first-seen order
        keys = list(order)
    shown = []
    for k in keys:
        have = [m[k] for m in by if k in m]
        # None (unparsed) is an answer of its own: unparsed vs "positive" is a disagreement.
        if len(have) >= 2 and len({json.dumps(it.get("pred"), sort_keys=True, default=str) for it in have}) > 1:
            shown.append(k)
    total = len(keys)
    head = (f"<h3>Where candidates disagree</h3><div class=\"muted\">{len(shown)} of {total} items get "
            "different answers from different candidates</div>")
    if not shown or max_dis <= 0:
        return head + (f'<div class="muted">{len(shown)} not shown (max_disagreements={max_dis}).</div>' if shown else "")
    ths = "".join(f"<th>{_e(r['candidate'])}</th>" for r in cands)
    out = [head, '<div class="scroll"><table class="dis"><thead><tr><th class="num">i</th><th>input</th>',
           f'<th>gold</th>{ths}<th class="num">right</th></tr></thead><tbody>']
    for k in shown[:max_dis]:
        first = next(m[k] for m in by if k in m)
        tds, right, judged = [], 0, 0
        for m in by:
            it = m.get(k)
            if it is None:
                tds.append('<td class="unp">not scored</td>')
                continue
            ok = it.get("correct")
            judged += ok is not None
            right += ok is True
            if it.get("pred") is None:
                tds.append('<td class="unp">unparsed</td>')
            else:
                cls = ' class="ok"' if ok is True else ' class="bad"' if ok is False else ""
                tds.append(f'<td{cls}>{_clip(_text(it["pred"]), 120)}</td>')
        out.append(f'<tr><td class="num">{_e(k)}</td><td class="text">{_clip(_text(first.get("input")))}</td>'
                   f'<td>{_clip(_text(first.get("gold")), 120)}</td>{"".join(tds)}'
                   f'<td class="num">{f"{right}/{judged}" if judged else "-"}</td></tr>')
    out.append("</tbody></table></div>")
    if len(shown) > max_dis:
        out.append(f'<div class="muted">… and {len(shown) - max_dis} more disagreeing item(s) not shown.</div>')
    return "".join(out)


# ---- charts (matplotlib Figure objects, never pyplot) ------------------------------------

def _new_figure(w: float, h: float):
    import sys

    import matplotlib

    # Pick a headless backend only if pyplot is not loaded: switching under a notebook or a
    # GUI would break the caller's own figures. Plain Figure objects keep no global state
    # (no figure manager to close, nothing shared between threads), unlike pyplot.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _svg(fig, salt: str) -> str:
    """The figure as an inline <svg> element: no XML prolog, no metadata, ids unique per page."""
    import matplotlib

    buf = io.StringIO()
    # A per-figure salt keeps the hash-based ids (clip paths, markers) from colliding between
    # the many SVGs of one page, while keeping them identical from run to run.
    with matplotlib.rc_context({"svg.hashsalt": f"modelmill-{salt}"}):
        fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    used = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', svg))
    # ids nobody refers to ("figure_1", "axes_1", ...) repeat in every SVG; drop them.
    # Only inside tags: matplotlib does not escape quotes in text, so a name may hold ' id="'.
    return re.sub(r'(<\w[^<>]*?) id="([^"]*)"', lambda m: m.group(0) if m.group(2) in used else m.group(1),
                  svg).strip()


def _bar_primary(rows: list[dict], colors: dict):
    vals = [_primary(r) for r in rows]
    fig = _new_figure(7.0, 0.9 + 0.34 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.barh(ys, [v or 0.0 for v in vals], height=0.62, color=[colors[r["candidate"]] for r in rows])
    ax.set_yticks(ys, [_short(r["candidate"], 38) for r in rows])
    ax.invert_yaxis()
    for y, v in zip(ys, vals):
        ax.text(max(v or 0.0, 0.0), y, f"  {_fmt(v)}", va="center", fontsize=8.5, color="#1f2430")
    finite = [v for v in vals if v is not None]
    if finite and 0 <= min(finite) and max(finite) <= 1:
        ax.set_xlim(0, 1.1)  # room for the value labels after a bar at 1.0
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(rows[0]["primary"] if len({r["primary"] for r in rows}) == 1 else "primary metric")
    return fig


def _bar_per_class(rows: list[dict], colors: dict):
    labels: list[str] = []
    for r in rows:
        for lab in list(r["metrics"].get("labels") or []) + list(r["metrics"]["per_class"]):
            if str(lab) not in labels:
                labels.append(str(lab))
    k = len(rows)
    width = 0.8 / k
    fig = _new_figure(min(13.0, max(7.0, 0.28 * len(labels) * k + 2.0)), 3.4)
    ax = fig.add_subplot()
    for j, r in enumerate(rows):
        pc = {str(a): b for a, b in r["metrics"]["per_class"].items()}
        f1 = [_num((pc.get(lab) or {}).get("f1")) for lab in labels]
        xs = [i + (j - (k - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [math.nan if v is None else v for v in f1], width * 0.92, color=colors[r["candidate"]],
               label=_short(r["candidate"], 32))
    support = {str(a): (b or {}).get("support") for a, b in rows[0]["metrics"]["per_class"].items()}
    # The support under each label shows at a glance which classes are rare (and noisy).
    ticks = [f"{_short(lab, 16)}\n(n={_fmt(support.get(lab))})" for lab in labels]
    ax.set_xticks(range(len(labels)), ticks, rotation=30 if len(labels) > 8 else 0,
                  ha="right" if len(labels) > 8 else "center")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("F1")
    ax.grid(axis="x", visible=False)
    # As many legend columns as the longest name lets fit under the plot (about 14 chars/inch).
    longest = max(len(_short(r["candidate"], 32)) for r in rows) + 5
    fig.legend(loc="outside lower center", ncols=max(1, min(k, int(fig.get_figwidth() * 14 / longest))), fontsize=8)
    return fig


def _confusion(r: dict):
    m = r["metrics"]
    cm, labels = m.get("confusion"), [str(x) for x in m.get("labels") or []]
    if (not isinstance(cm, list) or not cm or not all(isinstance(row, list) and len(row) == len(cm[0]) for row in cm)
            or not cm[0] or any(_num(c) is None for row in cm for c in row)):
        return None
    nr, nc = len(cm), len(cm[0])
    names = [labels[j] if j < len(labels) else "other" for j in range(max(nr, nc))]
    side = min(6.0, 1.6 + 0.45 * max(nr, nc))
    fig = _new_figure(side + 0.3, side)
    ax = fig.add_subplot()
    share = [[c / (sum(row) or 1) for c in row] for row in cm]
    ax.pcolormesh(share, cmap="Blues", vmin=0, vmax=1, edgecolors="white", linewidth=1.5)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    small = 8 if max(nr, nc) <= 6 else 6.5
    for i in range(nr):
        for j in range(nc):
            ax.text(j + 0.5, i + 0.5, _fmt(cm[i][j]), ha="center", va="center", fontsize=small,
                    color="white" if share[i][j] > 0.55 else "#1f2430")
    long = max(nc, 1) > 4 or max(len(s) for s in names) > 8
    ax.set_xticks([j + 0.5 for j in range(nc)], [_short(s, 14) for s in names[:nc]],
                  rotation=40 if long else 0, ha="right" if long else "center")
    ax.set_yticks([i + 0.5 for i in range(nr)], [_short(s, 14) for s in names[:nr]])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.grid(False)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return fig


def _scatter(rows: list[dict], colors: dict, key: str, xlabel: str, log: bool | None):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    pts = [(r, _num(r.get(key)), _primary(r)) for r in rows]
    pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None and (x > 0 or log is not True)]
    if len(pts) < 2:
        return None
    xs = [x for _, x, _ in pts]
    if log is None:  # latency: log only when it spans orders of magnitude (classical vs LLM)
        log = min(xs) > 0 and max(xs) / min(xs) > 50
    fig = _new_figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.scatter(xs, [y for *_, y in pts], s=52, c=[colors[r["candidate"]] for r, *_ in pts],
               edgecolors="white", linewidths=1.2, zorder=3)
    lo, hi = min(xs), max(xs)
    for r, x, y in pts:
        # Names of points in the right part go to their left, so they stay inside the plot.
        right = hi > lo and ((math.log(x / lo) / math.log(hi / lo)) if log else (x - lo) / (hi - lo)) > 0.6
        ax.annotate(_short(r["candidate"], 30), (x, y), xytext=(-6 if right else 6, 4), textcoords="offset points",
                    ha="right" if right else "left", fontsize=7.5, color="#434a54")
    if log:
        ax.set_xscale("log")
    if key == "parameters" and len(set(xs)) <= 6:
        # Ticks at the candidates' own sizes ("135M", "596M") read better than a log grid.
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.18, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(pts[0][0]["primary"])
    return fig
