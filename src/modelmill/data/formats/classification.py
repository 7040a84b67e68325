"""Text classification: ``{"text", "label", ...}``; other fields are kept under ``meta``.

As chat, a record becomes the prompt of ``classification_prompt`` and the label as the
answer; evaluation scores each label's likelihood after the same prompt.
"""

from __future__ import annotations

import re

from .base import Format, Where, extras, get_str, register_format, type_name


def classification_prompt(text: str, labels: list[str]) -> str:
    """The user message asking for one of ``labels``: the one template train and eval share."""
    return f"Classify the text into one of: {', '.join(labels)}.\n\nText: {text}"


def labels_of(records: list[dict]) -> list[str]:
    """The distinct labels in the one order prompts list them: numbers numerically, then names."""
    def order(label: str):
        return (0, int(label), "") if re.fullmatch(r"-?[0-9]+", label) else (1, 0, label)
    return sorted({r["label"] for r in records}, key=order)


class Classification(Format):
    name = "classification"
    kind = "classification"
    fields = "text, label"

    def detect(self, record: dict) -> bool:
        return "text" in record and "label" in record

    def normalize(self, record: dict, where: Where) -> dict:
        text = get_str(record, "text", where)
        label = record.get("label")
        if isinstance(label, str):  # "pos " and "pos" are one class; an all-space label is none
            label = label.strip() or None
        if label is None:
            raise where.error("label", "missing or empty", fix="give every record a 'label'")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise where.error("label", f"expected a string or an integer, got {type_name(label)}",
                              fix="write labels as names like \"positive\" or whole numbers like 1")
        return {"text": text, "label": str(label), "meta": extras(record, {"text", "label"})}

    def to_messages(self, record: dict, *, labels: list[str] | None = None) -> list[dict]:
        if not labels:
            raise ValueError("classification to_messages needs the dataset's labels")
        return [{"role": "user", "content": classification_prompt(record["text"], labels)},
                {"role": "assistant", "content": record["label"]}]


register_format(Classification())
