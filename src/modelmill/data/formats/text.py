"""Plain text for continued pre-training: ``{"text": ...}``."""

from __future__ import annotations

from .base import Format, Where, extras, get_str, register_format, with_meta


class Text(Format):
    name = "text"
    kind = "text"
    fields = "text"

    def detect(self, record: dict) -> bool:
        return "text" in record and "label" not in record

    def normalize(self, record: dict, where: Where) -> dict:
        return with_meta({"text": get_str(record, "text", where)}, extras(record, {"text"}))


register_format(Text())
