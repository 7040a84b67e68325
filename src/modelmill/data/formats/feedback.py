"""Unpaired feedback (KTO): ``{"prompt", "completion", "label"}``, one answer judged good or bad.

``prompt`` is a text or a list of messages; ``completion`` a text, or messages whose last
assistant content is the answer; ``label`` true/false (also "good"/"bad", "up"/"down", 1/0).
This is trl's unpaired preference shape, and what thumbs up/down in a playground give.
"""

from __future__ import annotations

from .base import Format, Where, extras, register_format, type_name, with_meta
from .preference import _answer, _messages

KNOWN = {"prompt", "completion", "label"}
TRUE, FALSE = {"good", "up", "true", "yes", "1", "desirable"}, {"bad", "down", "false", "no", "0", "undesirable"}


class Feedback(Format):
    name = "feedback"
    kind = "feedback"
    fields = "prompt, completion, label"

    def detect(self, record: dict) -> bool:
        return "completion" in record and "label" in record and "prompt" in record

    def normalize(self, record: dict, where: Where) -> dict:
        prompt = _messages(record["prompt"], "prompt", where)
        if not any(m["role"] == "user" for m in prompt):
            raise where.error("prompt", "has no user turn",
                              fix="give each record a 'prompt': a text, or messages with the user's turn")
        completion, _ = _answer(record, "completion", where)
        if not completion.strip():
            raise where.error("completion", "is empty", fix="give the answer that was judged, or drop this record")
        return with_meta({"prompt": prompt, "completion": completion, "label": _label(record.get("label"), where)},
                         extras(record, KNOWN))


def _label(value, where: Where) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    got = "missing" if value is None else f"expected true or false, got {type_name(value)} ({str(value)[:40]!r})"
    raise where.error("label", got, fix='mark each answer "label": true (good) or false (bad)')


register_format(Feedback())
