"""Describe a dataset: size, turns, labels and lengths, as a dict and as text.

    print(format_stats(stats(records, "classification", tokenizer=tok)))
"""

from __future__ import annotations

import math
from collections import Counter

from modelmill.data.clean import record_text, token_length

BAR = 30
EIGHTHS = " ▏▎▍▌▋▊▉█"


def stats(records: list[dict], kind: str, tokenizer=None, bins: int = 10) -> dict:
    """``count`` and ``kind``; ``turns`` (user and assistant messages per record) for chat;
    ``labels`` (``counts``, ``shares``) for classification; ``length`` in tokens with a
    tokenizer, else characters: min, mean, p50, p95, max and a ``histogram`` (edges, counts)."""
    out: dict = {"count": len(records), "kind": kind}
    if not records:
        return out
    if kind == "chat":
        turns = [sum(m["role"] != "system" for m in r["messages"]) for r in records]
        out["turns"] = {"min": min(turns), "mean": sum(turns) / len(turns), "max": max(turns)}
    if kind == "classification":
        counts = Counter(r["label"] for r in records).most_common()
        out["labels"] = {"counts": dict(counts), "shares": {k: c / len(records) for k, c in counts}}
    if tokenizer is not None:
        lengths, unit = [token_length(r, kind, tokenizer) for r in records], "tokens"
    else:
        lengths, unit = [len(record_text(r, kind)) for r in records], "chars"
    lengths.sort()
    out["length"] = {"unit": unit, "min": lengths[0], "mean": sum(lengths) / len(lengths),
                     "p50": _percentile(lengths, 50), "p95": _percentile(lengths, 95), "max": lengths[-1],
                     "histogram": _histogram(lengths, bins)}
    return out


def tokens_per_char(records: list[dict], kind: str, tokenizers: dict, limit: int = 500) -> dict[str, float]:
    """Per tokenizer: tokens per character over the first ``limit`` records' text (fewer: more of the
    language fits a context window, and training and serving it costs less)."""
    texts = [record_text(r, kind) for r in records[:limit]]
    chars = sum(len(t) for t in texts)
    if not chars:
        return {}
    return {name: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / chars
            for name, tok in tokenizers.items()}


def _percentile(sorted_values: list[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _histogram(values: list[int], bins: int) -> dict:
    """Equal-width bins from min to max; the last bin includes max."""
    lo, hi = values[0], values[-1]
    if lo == hi:
        return {"edges": [lo, hi], "counts": [len(values)]}
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins)] + [hi]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return {"edges": edges, "counts": counts}


def _bar(fraction: float) -> str:
    eighths = max(round(fraction * BAR * 8), 1 if fraction > 0 else 0)  # a sliver for any count
    return "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")


def format_stats(d: dict) -> str:
    """A readable text block for ``stats()`` output, with bar histograms."""
    lines = [f"records: {d['count']} ({d['kind']})"]
    if "turns" in d:
        t = d["turns"]
        lines.append(f"turns per record: min {t['min']}  mean {t['mean']:.1f}  max {t['max']}")
    if "labels" in d:
        lines.append("labels:")
        counts, shares = d["labels"]["counts"], d["labels"]["shares"]
        width = max(len(k) for k in counts)
        for k, c in counts.items():
            lines.append(f"  {k:<{width}}  {c:>7}  {shares[k]:6.1%}  {_bar(shares[k])}")
    if "length" in d:
        s = d["length"]
        lines.append(f"length ({s['unit']}): min {s['min']}  mean {s['mean']:.1f}  p50 {s['p50']:.0f}  "
                     f"p95 {s['p95']:.0f}  max {s['max']}")
        edges, counts = s["histogram"]["edges"], s["histogram"]["counts"]
        top = max(counts)
        ranges = [f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in range(len(counts))]
        width = max(len(r) for r in ranges)
        for r, c in zip(ranges, counts):
            lines.append(f"  {r:>{width}}  {c:>7}  {_bar(c / top)}")
    if d.get("tokens_per_char"):
        lines.append("tokens per character, by base model (fewer is better for this data):")
        width = max(len(k) for k in d["tokens_per_char"])
        for k, v in sorted(d["tokens_per_char"].items(), key=lambda x: x[1]):
            lines.append(f"  {k:<{width}}  {v:5.2f}")
    return "\n".join(lines)
