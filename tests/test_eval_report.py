"""The HTML benchmark report: built from real-shaped results, parsed back and checked.

    .venv/bin/python -m pytest tests/test_eval_report.py -q
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from modelmill.evaluate.report import build_report, write_report

LABELS = ["negative", "neutral", "positive"]
GOLD = ["positive", "negative", "neutral", "positive", "negative", "positive"]
INPUTS = ["Great drug, no side effects.", "<script>alert(1)</script> made me dizzy", "It was fine I guess.",
          "Worked after two weeks. " * 30, "Terrible headaches.", "Helped a lot."]


def _classification(candidate, kind, preds, params, latency):
    items = [{"i": i, "input": INPUTS[i], "gold": g, "pred": p, "correct": None if p is None else p == g}
             for i, (g, p) in enumerate(zip(GOLD, preds))]
    acc = sum(it["correct"] is True for it in items) / len(items)
    cm = [[sum(1 for g, p in zip(GOLD, preds) if g == a and p == b) for b in LABELS] for a in LABELS]
    per_class = {}
    for j, lab in enumerate(LABELS):
        tp, pred_n, sup = cm[j][j], sum(row[j] for row in cm), sum(cm[j])
        p, r = tp / pred_n if pred_n else 0.0, tp / sup if sup else 0.0
        per_class[lab] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": sup}
    return {"task": "drugs", "kind": "classification", "candidate": candidate, "candidate_kind": kind,
            "primary": "accuracy",
            "metrics": {"accuracy": acc, "macro_f1": sum(c["f1"] for c in per_class.values()) / 3,
                        "unparsed": preds.count(None), "n": len(items), "labels": LABELS,
                        "per_class": per_class, "confusion": cm},
            "n": len(items), "parameters": params, "latency_ms": latency, "seconds": 1.5,
            "dataset": "drugs-test@1c598f426b32", "created_at": "2026-11-21T10:00:00+00:00", "items": items}


def _results():
    base = _classification("smollm2-135m-instruct", "zero-shot",
                           ["positive", "positive", "positive", "positive", "positive", "positive"], 134515008, 91.3)
    lora = _classification("smollm2-135m-instruct:drugs-lora", "adapter", list(GOLD), 134515008, 95.0)
    tfidf = _classification("tfidf-logreg", "classical",
                            ["positive", "negative", None, "positive", "negative", "negative"], None, 0.2)
    # A hostile name ("$" would be mathtext to matplotlib) must come out as plain escaped text.
    gen = {"task": "summaries", "kind": "generation", "candidate": 'q3:sum <img src=x id="y"> $1$',
           "candidate_kind": "adapter",
           "primary": "rouge_l", "metrics": {"rouge_l": 0.41, "bleu": float("nan"), "n": 2}, "n": 2,
           "parameters": 596049920, "latency_ms": None, "seconds": 12.0, "dataset": "sum-test@aa11",
           "created_at": "2026-11-22T09:30:00+00:00",
           "items": [{"i": 0, "input": "Summarise: a text", "gold": "short", "pred": "short text", "correct": None}]}
    # Input order is deliberately not the ranking: base (0.5) < tfidf (0.67) < lora (1.0).
    return [base, gen, tfidf, lora]


class _Tables(HTMLParser):
    """Collects each <table> as rows of cell texts, and each <section>'s id."""

    def __init__(self):
        super().__init__()
        self.tables, self.sections, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "section":
            self.sections.append(dict(attrs).get("id"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text):
    p = _Tables()
    p.feed(text)
    return p


def test_report_ranks_charts_and_disagreements():
    text = build_report(_results(), max_disagreements=50)
    page = _parse(text)
    assert page.sections == ["task-0", "task-1"]
    assert text.count("<svg") >= 1 + 1 + 3 + 1 + 1  # primary bars, per-class F1, 3 matrices, 2 scatters (drugs)

    # Self-contained: the only URLs are the XML namespaces of the inline SVGs.
    urls = re.findall(r"https?://[^\s\"'<>)]+", text)
    namespaces = re.findall(r'xmlns(?::\w+)?="(https?://[^"]+)"', text)
    assert urls and sorted(urls) == sorted(namespaces)
    assert set(namespaces) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert not re.search(r"<(script|link|img|iframe)\b", text)

    # Ranked table of "drugs": by accuracy, descending, the best row marked.
    ranking = page.tables[0]
    assert ranking[0][:4] == ["#", "candidate", "kind", "accuracy"]
    assert [row[1] for row in ranking[1:]] == ["smollm2-135m-instruct:drugs-lora", "tfidf-logreg",
                                               "smollm2-135m-instruct"]
    assert [row[3] for row in ranking[1:]] == ["1.000", "0.667", "0.500"]
    assert "macro_f1" in ranking[0] and "n" in ranking[0]
    assert ranking[0].count("n") == 1  # metrics["n"] is not repeated as a metric column
    assert re.search(r'<tr class="best"><td class="num">1</td><td><span class="dot"[^>]*></span>'
                     r"smollm2-135m-instruct:drugs-lora", text)
    assert ranking[2][ranking[0].index("parameters")] == "-"  # the classical model has no size

    # Disagreements: items 0 and 3 get "positive" from everyone; 1, 2, 4, 5 differ.
    dis = page.tables[1]
    assert dis[0][:3] == ["i", "input", "gold"]
    assert [row[0] for row in dis[1:]] == ["1", "2", "4", "5"]
    item2 = dis[2]
    assert item2[dis[0].index("tfidf-logreg")] == "unparsed"
    assert item2[-1] == "1/2"  # right/judged: the unparsed answer is not judged
    assert "4 of 6 items" in text

    # User text is escaped everywhere, never run.
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text

    # The single-candidate generation task still renders: its table, no disagreement table,
    # and the non-finite bleu shown as "-".
    gen = page.tables[2]
    assert gen[0][3] == "rouge_l" and gen[1][1] == 'q3:sum <img src=x id="y"> $1$'
    assert "q3:sum &lt;img src=x id=&quot;y&quot;&gt; $1$" in text  # in the table
    assert 'q3:sum &lt;img src=x id="y"&gt; $1$' in text  # in the bar chart's SVG text
    assert gen[1][gen[0].index("bleu")] == "-" and gen[1][gen[0].index("latency")] == "-"
    assert len(page.tables) == 3


def test_disagreements_are_capped_and_long_inputs_fold():
    text = build_report(_results(), max_disagreements=2)
    dis = _parse(text).tables[1]
    assert [row[0] for row in dis[1:]] == ["1", "2"]
    assert "2 more disagreeing item(s) not shown" in text
    # Item 3's 720-character input is not a disagreement; make item 0 one, with a long input.
    results = _results()
    for r in results:
        r["items"][0]["input"] = "x" * 1000 if r["task"] == "drugs" else r["items"][0]["input"]
        if r["candidate"] == "tfidf-logreg":
            r["items"][0]["pred"], r["items"][0]["correct"] = "neutral", False
    text = build_report(results)
    assert re.search(r'<details><summary><span class="t">x{300}…</span></summary>x{1000}</details>', text)


def test_write_report_matches_build_and_is_deterministic(tmp_path):
    results = _results()
    path = write_report(results, tmp_path / "out" / "report.html", title="Round <3>")
    assert path == tmp_path / "out" / "report.html" and path.exists()
    assert not (tmp_path / "out" / "report.html.tmp").exists()
    text = path.read_text(encoding="utf-8")
    assert text == build_report(results, title="Round <3>")
    assert "<title>Round &lt;3&gt;</title>" in text
    # Ids in the inline SVGs are unique across the page, so no chart borrows another's clip path.
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_empty_results_render_a_page():
    text = build_report([])
    assert text.startswith("<!DOCTYPE html>") and "No benchmark results yet" in text
    assert "<svg" not in text
    page = _parse(text)
    assert page.tables == [] and page.sections == [None]


def test_results_on_other_data_are_ranked_in_a_section_of_their_own():
    """A candidate scored on fewer items (--limit) or another dataset is not ranked with the rest:
    its own section, named with the dataset and the item count. Absent classes (F1 None) draw."""
    base, _, tfidf, lora = _results()
    lora["n"], lora["dataset"] = 2, "drugs-test@2"  # the best score, on other data
    tfidf["metrics"]["per_class"]["neutral"] = {"precision": None, "recall": None, "f1": None, "support": 0}
    text = build_report([base, tfidf, lora])
    page = _parse(text)
    assert page.sections == ["task-0", "task-1"]
    assert "drugs · drugs-test@1c598f426b32 · 6 items" in text and "drugs · drugs-test@2 · 2 items" in text
    first, second = page.tables[0], page.tables[2]
    assert [row[1] for row in first[1:]] == ["tfidf-logreg", "smollm2-135m-instruct"]
    assert [row[1] for row in second[1:]] == ["smollm2-135m-instruct:drugs-lora"]
