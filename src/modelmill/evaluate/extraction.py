"""Extraction: text in, a JSON object of fields out; scored entity by entity and field by field.

    # people.yaml
    name: people
    kind: extraction
    data: people-test.jsonl     # {"text": "...", "output": {"person": ["Ada", "Alan"], "city": "London"}}
                                # or a chat dataset whose answers are JSON objects
    train: people-train.jsonl   # the classical baselines (gazetteer, crf) learn from it

A field's value is a string (or number) or a list of them. The headline metric, ``entity_f1``,
counts the elements of every field: a list field with three gold entities of which the answer
names two, plus one wrong, scores 2 right of 3 predicted and 3 expected (precision, recall and F1
micro over fields; per field in ``per_class``). Values match after trimming, case-folding and
number normalisation; the order of a list does not count. ``field_f1`` (a field right only when
its whole value is) and ``exact_match`` (every field right, no extra ones) are kept beside it, and
``valid_json`` (share of answers that held a JSON object). An answer with no JSON object scores
zero and is kept for the report.

Items may carry ``spans`` (``[{"field": "person", "start": 0, "end": 3}, ...]``, character offsets
into ``text``): then ``span_f1`` also scores where the entities are, each predicted value standing
for every place it occurs in the text.
"""

from __future__ import annotations

import json
from collections import Counter

from modelmill.evaluate.tasks import TaskKind, register_task_kind

EXAMPLE = '"output": {"person": ["Ada Lovelace"], "city": "London"}'


def parse_json_object(text: str) -> dict | None:
    """The first JSON object in ``text`` (code fences and prose around it are ignored)."""
    dec = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = dec.raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def normalize_value(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(float(v))
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, ensure_ascii=False).lower()
    s = " ".join(str(v).split()).lower()
    try:
        return repr(float(s.replace(",", "")))
    except ValueError:
        return s


def elements(v) -> Counter:
    """A field's value as a multiset of normalised elements: a list gives its items, a scalar one
    element, ``None`` or an empty string none."""
    items = v if isinstance(v, list) else [v]
    return Counter(normalize_value(x) for x in items if x is not None and x != "")


def field_right(pred_value, gold_value) -> bool:
    """The whole field right: the same elements for a list (in any order), the same value otherwise."""
    if isinstance(gold_value, list) or isinstance(pred_value, list):
        return elements(pred_value) == elements(gold_value)
    return normalize_value(pred_value) == normalize_value(gold_value)


def field_counts(pred: dict | None, gold: dict) -> tuple[int, int, int]:
    """(fields right, fields predicted, fields expected): whole fields. A field with no value
    (None, "", []) is the same as one left out, on either side."""
    pred = {k: v for k, v in (pred or {}).items() if elements(v)}
    gold = {k: v for k, v in gold.items() if elements(v)}
    right = sum(1 for k, v in pred.items() if k in gold and field_right(v, gold[k]))
    return right, len(pred), len(gold)


def element_counts(pred: dict | None, gold: dict) -> dict[str, list[int]]:
    """Per field: [elements right, predicted, expected]. Fields only the answer has count as predicted."""
    pred = pred or {}
    out = {}
    for k in list(gold) + [k for k in pred if k not in gold]:
        p, g = elements(pred.get(k)), elements(gold.get(k))
        out[k] = [sum((p & g).values()), sum(p.values()), sum(g.values())]
    return out


def prf(right: int, npred: int, ngold: int) -> tuple[float, float, float]:
    p = right / npred if npred else 0.0
    r = right / ngold if ngold else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def predicted_spans(pred: dict | None, text: str) -> set[tuple[str, int, int]]:
    """Every place in ``text`` where a predicted value occurs, as (field, start, end)."""
    out = set()
    for k, v in (pred or {}).items():
        for x in (v if isinstance(v, list) else [v]):
            s = str(x).strip() if x is not None else ""
            if not s:
                continue
            at = text.find(s)
            while at != -1:
                out.add((k, at, at + len(s)))
                at = text.find(s, at + 1)
    return out


def _check_output(out: dict, where) -> None:
    for k, v in out.items():
        items = v if isinstance(v, list) else [v]
        for x in items:
            if isinstance(x, (dict, list)):
                raise where.error(f"output.{k}", "a field's value must be a string or number, or a list of them, "
                                  f"not {type(x).__name__ if not isinstance(v, list) else 'a list holding a ' + type(x).__name__}",
                                  fix=f"flatten it, e.g. {EXAMPLE}")


def _read_spans(record: dict, text: str, out: dict, where) -> list[list] | None:
    spans = record.get("spans")
    if spans is None:
        return None
    if not isinstance(spans, list):
        raise where.error("spans", "must be a list of {field, start, end}", fix='e.g. "spans": [{"field": "person", "start": 0, "end": 3}]')
    got = []
    for i, s in enumerate(spans):
        if isinstance(s, (list, tuple)) and len(s) == 3:
            s = {"start": s[0], "end": s[1], "field": s[2]}
        if not isinstance(s, dict):
            raise where.error(f"spans[{i}]", "must be {field, start, end} or [start, end, field]",
                              fix='e.g. {"field": "person", "start": 0, "end": 3}')
        f = s.get("field", s.get("label"))
        a, b = s.get("start"), s.get("end")
        if not isinstance(f, str) or not isinstance(a, int) or not isinstance(b, int) or isinstance(a, bool):
            raise where.error(f"spans[{i}]", "needs a field name and integer start and end",
                              fix='e.g. {"field": "person", "start": 0, "end": 3}')
        if not 0 <= a < b <= len(text):
            raise where.error(f"spans[{i}]", f"[{a}, {b}) lies outside the text, which has {len(text)} characters",
                              fix="give character offsets into `text`, start < end <= its length")
        got.append([f, a, b])
    return got


class ExtractionTask(TaskKind):
    name = "extraction"
    metric_names = ("entity_f1", "entity_precision", "entity_recall", "field_f1", "exact_match", "valid_json",
                    "span_f1")
    max_new_tokens = 256
    version = 3  # 2: entity-level scores of list fields (1 compared a list as one value); 3: empty fields = absent

    def from_raw(self, record, where, spec):
        text = record.get("text", record.get("input"))
        if not isinstance(text, str) or not text.strip():
            raise where.error("text", "missing or not a text", fix="give every item the 'text' to extract from")
        out = record.get("output", record.get("expected"))
        if isinstance(out, str):
            try:
                out = json.loads(out)
            except json.JSONDecodeError as e:
                raise where.error("output", f"is not JSON ({e.msg})", fix=f"write the expected fields as an object, e.g. {EXAMPLE}")
        if not isinstance(out, dict) or not out:
            raise where.error("output", "expected a non-empty JSON object of the fields to extract",
                              fix=f"e.g. {EXAMPLE}")
        _check_output(out, where)
        item = {"text": text, "expected": out}
        spans = _read_spans(record, text, out, where)
        if spans is not None:
            item["spans"] = spans
        if isinstance(record.get("instruction"), str):
            item["instruction"] = record["instruction"]
        return item

    def from_record(self, record, data_kind, ref, n, spec):
        from modelmill.data.formats.base import Where
        from modelmill.errors import InputError

        if data_kind != "chat":
            return super().from_record(record, data_kind, ref, n, spec)
        msgs = record["messages"]
        obj = parse_json_object(msgs[-1]["content"])
        if obj is None:
            raise InputError("the last answer is not a JSON object", file=ref, line=n, field="messages",
                             fix="extraction data answers with the fields as one JSON object")
        _check_output(obj, Where(file=ref, n=n))
        return {"messages": msgs[:-1], "expected": obj}

    def check_candidate(self, candidate, spec, data):
        from modelmill.errors import InputError

        if candidate.kind == "classical":
            if not getattr(candidate, "extracts", False):
                raise InputError(f"{candidate.name} is a classification baseline", field="--baselines",
                                 fix="for extraction tasks use gazetteer or crf (or `classical` for both)")
            if not data.train:
                raise InputError(f"{candidate.name} learns from the task's training set, and there is none",
                                 field="train", fix="add `train: DATASET` to the task (or --train)")
            return
        super().check_candidate(candidate, spec, data)

    def prompt(self, item, spec, data):
        if item.get("messages"):
            return [dict(m) for m in item["messages"]]
        keys = ", ".join(item["expected"])
        instruction = item.get("instruction") or f"Extract these fields as one JSON object: {keys}."
        return [{"role": "user", "content": f"{instruction}\n\nText: {item['text']}"}]

    def answer(self, item, spec, data):
        return json.dumps(item["expected"], ensure_ascii=False)

    def score(self, candidate, items, spec, data, progress=True):
        if getattr(candidate, "extracts", False):
            preds = candidate.fit_predict(data.train, items)
            outs = [json.dumps(p, ensure_ascii=False) for p in preds]
        else:
            outs = self.generate(candidate, items, spec, data, progress)
        res = []
        for it, out in zip(items, outs):
            if isinstance(out, Exception):
                res.append({"error": str(out)})
                continue
            pred = parse_json_object(out)
            right, npred, ngold = field_counts(pred, it["expected"])
            counts = element_counts(pred, it["expected"])
            tp, np_, ng = (sum(c[i] for c in counts.values()) for i in range(3))
            r = {"gold": it["expected"], "pred": pred, "output": out, "fields": [right, npred, ngold],
                 "elements": counts, "f1": prf(tp, np_, ng)[2] if np_ or ng else 1.0,
                 "correct": pred is not None and right == npred == ngold}
            if "spans" in it:
                text = it.get("text") or self.show(it)
                gold = {tuple(s) for s in it["spans"]}
                got = predicted_spans(pred, text)
                r["spans"] = [len(gold & got), len(got), len(gold)]
            res.append(r)
        return res

    def metrics(self, results, spec, data):
        n = len(results)
        right = sum(r["fields"][0] for r in results)
        npred = sum(r["fields"][1] for r in results)
        ngold = sum(r["fields"][2] for r in results)
        fp, fr, ff = prf(right, npred, ngold)
        per: dict[str, list[int]] = {}
        gold_fields: Counter = Counter()
        for r in results:
            for k, c in (r.get("elements") or {}).items():
                acc = per.setdefault(k, [0, 0, 0])
                for i in range(3):
                    acc[i] += c[i]
            gold_fields.update(r["gold"].keys())
        tp, np_, ng = (sum(c[i] for c in per.values()) for i in range(3))
        ep, er, ef = prf(tp, np_, ng)
        # per field: the fields the gold data has, most entities first (fields only answers invent
        # count in the micro scores above, not here)
        fields = sorted(gold_fields, key=lambda k: (-per.get(k, [0, 0, 0])[2], k))
        per_class = {}
        for k in fields:
            p, rec, f = prf(*per.get(k, [0, 0, 0]))
            per_class[k] = {"precision": p, "recall": rec, "f1": f, "support": per.get(k, [0, 0, 0])[2]}
        m = {"n": n, "entity_f1": ef, "entity_precision": ep, "entity_recall": er,
             "field_f1": ff, "field_precision": fp, "field_recall": fr,
             "exact_match": sum(bool(r["correct"]) for r in results) / n if n else 0.0,
             "valid_json": sum(r["pred"] is not None for r in results) / n if n else 0.0,
             "unparsed": sum(r["pred"] is None for r in results),
             "labels": fields, "per_class": per_class}
        with_spans = [r["spans"] for r in results if "spans" in r]
        if with_spans:
            m["span_f1"] = prf(*(sum(s[i] for s in with_spans) for i in range(3)))[2]
        return m


def format_metrics(name: str, metrics: dict, results: list[dict] | None = None, worst: int = 5) -> str:
    """A short block for ``eval --details``: the headline numbers, a per-field table, the worst items."""
    lines = [f"{name}: entity F1 {metrics['entity_f1']:.3f} (precision {metrics['entity_precision']:.3f}, "
             f"recall {metrics['entity_recall']:.3f})  field F1 {metrics['field_f1']:.3f}  "
             f"exact {metrics['exact_match']:.3f}  valid JSON {metrics['valid_json']:.3f}  n={metrics['n']}"
             + (f"  span F1 {metrics['span_f1']:.3f}" if "span_f1" in metrics else "")]
    per = metrics.get("per_class") or {}
    if per:
        w = max([len(k) for k in per] + [5])
        lines.append(f"  {'field':<{w}}  precision  recall     f1  entities")
        for k, c in per.items():
            lines.append(f"  {k:<{w}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:8d}")
    scored = [(r.get("i", i), r) for i, r in enumerate(results or []) if "f1" in r]
    bad = sorted((x for x in scored if x[1]["f1"] < 1.0), key=lambda x: (x[1]["f1"], x[0]))[:worst]
    if bad:
        lines.append("  worst items (F1, expected -> answered):")
        for i, r in bad:
            got = json.dumps(r["pred"], ensure_ascii=False) if r["pred"] is not None else f"(no JSON) {r['output'][:80]!r}"
            lines.append(f"  #{i + 1} {r['f1']:.2f}  {json.dumps(r['gold'], ensure_ascii=False)[:120]}"
                         f" -> {got[:120]}")
    return "\n".join(lines)


register_task_kind(ExtractionTask())
