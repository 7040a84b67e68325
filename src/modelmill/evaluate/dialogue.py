"""Dialogue: multi-turn conversations where every assistant turn is checked.

    # orders-dialogue.yaml
    name: orders-dialogue
    kind: dialogue
    data: dialogues.jsonl       # {"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}
    match: contains             # exact | contains (the expected text appears in the reply) | regex

Each assistant turn is generated from the real history before it (the expected earlier turns,
not the model's own), so one wrong turn does not spoil the next. Metrics: ``dialogue_success``
(the share of dialogues with every turn right: the "fluency" figure) and ``turn_accuracy``.
"""

from __future__ import annotations

import re

from modelmill.errors import InputError
from modelmill.evaluate.tasks import TaskKind, register_task_kind

MATCHES = ("exact", "contains", "regex")


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def turn_ok(reply: str, expected: str, match: str) -> bool:
    if match == "exact":
        return _norm(reply) == _norm(expected)
    if match == "contains":
        return _norm(expected) in _norm(reply)
    return re.search(expected, reply, re.I | re.S) is not None


class DialogueTask(TaskKind):
    name = "dialogue"
    metric_names = ("dialogue_success", "turn_accuracy")
    max_new_tokens = 128

    def check_spec(self, spec):
        if spec.match not in MATCHES:
            raise InputError(f"unknown match '{spec.match}'", field="match", fix="use exact, contains or regex",
                             **({"file": spec.source} if spec.source else {}))

    def check_candidate(self, candidate, spec, data):
        from modelmill.evaluate.candidates import FewShot

        super().check_candidate(candidate, spec, data)
        if isinstance(candidate, FewShot):
            raise InputError("few-shot prompting is not defined for dialogue tasks (the history is the context)",
                             field="--models", fix=f"score {candidate.inner.name} itself")

    def from_raw(self, record, where, spec):
        msgs = record.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise where.error("messages", "missing or not a list", fix="give each dialogue its 'messages'")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise where.error(f"messages[{i}]", "expected {role: system|user|assistant, content: text}",
                                  fix="fix this turn")
            if spec.match == "regex" and m["role"] == "assistant":
                try:
                    re.compile(m["content"])
                except re.error as e:
                    raise where.error(f"messages[{i}].content", f"not a valid regular expression ({e})",
                                      fix="escape special characters, or use match: contains")
        if not any(m["role"] == "assistant" for m in msgs):
            raise where.error("messages", "has no assistant turn to check", fix="add the expected assistant turns")
        return {"messages": msgs}

    def from_record(self, record, data_kind, ref, n, spec):
        if data_kind != "chat":
            return super().from_record(record, data_kind, ref, n, spec)
        return {"messages": record["messages"]}

    def show(self, item):
        return "\n".join(f"{m['role']}: {m['content']}" for m in item["messages"] if m["role"] == "user")

    def score(self, candidate, items, spec, data, progress=True):
        convs, where = [], []
        sys = [{"role": "system", "content": spec.system}] if spec.system else []
        for k, it in enumerate(items):
            msgs = it["messages"]
            for t, m in enumerate(msgs):
                if m["role"] == "assistant":
                    convs.append(sys + [dict(x) for x in msgs[:t]])
                    where.append((k, t))
        outs = candidate.generate(convs, max_new_tokens=spec.new_tokens, batch_size=spec.batch_size, progress=progress)
        res: list[dict] = [{"gold": [], "pred": [], "turns": []} for _ in items]
        for (k, t), out in zip(where, outs):
            if isinstance(out, Exception):
                res[k] = {"error": str(out)}
                continue
            if "error" in res[k]:
                continue
            expected = items[k]["messages"][t]["content"]
            res[k]["gold"].append(expected)
            res[k]["pred"].append(out)
            res[k]["turns"].append(turn_ok(out, expected, spec.match))
        for r in res:
            if "error" not in r:
                r["correct"] = all(r["turns"])
        return res

    def metrics(self, results, spec, data):
        turns = [ok for r in results for ok in r["turns"]]
        n = len(results)
        return {"n": n, "dialogue_success": sum(bool(r["correct"]) for r in results) / n if n else 0.0,
                "turn_accuracy": sum(turns) / len(turns) if turns else 0.0, "turns": len(turns)}


register_task_kind(DialogueTask())
