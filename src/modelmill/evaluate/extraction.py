"""Extraction: text in, a JSON object of fields out; scored field by field.

    # invoices.yaml
    name: invoices
    kind: extraction
    data: invoices-test.jsonl   # {"text": "...", "output": {"vendor": "ACME", "total": "12.50"}}
                                # or a chat dataset whose answers are JSON objects

Metrics: ``field_f1`` (micro over fields: a predicted field is right when the key is expected and
the value equal after trimming, case-folding and number normalisation), its precision and recall,
``exact_match`` (every field right, no extra ones) and ``valid_json`` (share of answers that held a
JSON object). An answer with no JSON object scores zero fields and is kept for the report.
"""

from __future__ import annotations

import json

from modelmill.evaluate.tasks import TaskKind, register_task_kind


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


def field_counts(pred: dict | None, gold: dict) -> tuple[int, int, int]:
    """(right fields, predicted fields, expected fields)."""
    pred = pred or {}
    right = sum(1 for k, v in pred.items() if k in gold and normalize_value(v) == normalize_value(gold[k]))
    return right, len(pred), len(gold)


class ExtractionTask(TaskKind):
    name = "extraction"
    metric_names = ("field_f1", "exact_match", "field_precision", "field_recall", "valid_json")
    max_new_tokens = 256

    def from_raw(self, record, where, spec):
        text = record.get("text", record.get("input"))
        if not isinstance(text, str) or not text.strip():
            raise where.error("text", "missing or not a text", fix="give every item the 'text' to extract from")
        out = record.get("output", record.get("expected"))
        if isinstance(out, str):
            try:
                out = json.loads(out)
            except json.JSONDecodeError as e:
                raise where.error("output", f"is not JSON ({e.msg})", fix='write the expected fields as an object, e.g. {"name": "..."}')
        if not isinstance(out, dict) or not out:
            raise where.error("output", "expected a non-empty JSON object of the fields to extract",
                              fix='e.g. "output": {"vendor": "ACME", "total": "12.50"}')
        item = {"text": text, "expected": out}
        if isinstance(record.get("instruction"), str):
            item["instruction"] = record["instruction"]
        return item

    def from_record(self, record, data_kind, ref, n, spec):
        from modelmill.errors import InputError

        if data_kind != "chat":
            return super().from_record(record, data_kind, ref, n, spec)
        msgs = record["messages"]
        obj = parse_json_object(msgs[-1]["content"])
        if obj is None:
            raise InputError("the last answer is not a JSON object", file=ref, line=n, field="messages",
                             fix="extraction data answers with the fields as one JSON object")
        return {"messages": msgs[:-1], "expected": obj}

    def prompt(self, item, spec, data):
        if item.get("messages"):
            return [dict(m) for m in item["messages"]]
        keys = ", ".join(item["expected"])
        instruction = item.get("instruction") or f"Extract these fields as one JSON object: {keys}."
        return [{"role": "user", "content": f"{instruction}\n\nText: {item['text']}"}]

    def answer(self, item, spec, data):
        return json.dumps(item["expected"], ensure_ascii=False)

    def score(self, candidate, items, spec, data, progress=True):
        outs = self.generate(candidate, items, spec, data, progress)
        res = []
        for it, out in zip(items, outs):
            if isinstance(out, Exception):
                res.append({"error": str(out)})
                continue
            pred = parse_json_object(out)
            right, npred, ngold = field_counts(pred, it["expected"])
            res.append({"gold": it["expected"], "pred": pred, "output": out, "fields": [right, npred, ngold],
                        "correct": pred is not None and right == npred == ngold})
        return res

    def metrics(self, results, spec, data):
        right = sum(r["fields"][0] for r in results)
        npred = sum(r["fields"][1] for r in results)
        ngold = sum(r["fields"][2] for r in results)
        p = right / npred if npred else 0.0
        rec = right / ngold if ngold else 0.0
        n = len(results)
        return {"n": n, "field_f1": 2 * p * rec / (p + rec) if p + rec else 0.0, "field_precision": p,
                "field_recall": rec, "exact_match": sum(bool(r["correct"]) for r in results) / n if n else 0.0,
                "valid_json": sum(r["pred"] is not None for r in results) / n if n else 0.0,
                "unparsed": sum(r["pred"] is None for r in results)}


register_task_kind(ExtractionTask())
