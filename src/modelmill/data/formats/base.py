"""The format registry: what every data format provides, and the checks they share.

A format turns one raw record (a dict read from a file) into the canonical record of its
kind. Built-in formats register themselves with ``register_format``; a plugin does the
same from a module named by a ``modelmill.formats`` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelmill.errors import InputError

KINDS = ("chat", "preference", "feedback", "text", "classification")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Where:
    """Where a record came from, for error messages.

    ``unit`` is "line" for JSONL/CSV (``n`` is the 1-based line) and "record" for JSON
    arrays and Parquet (``n`` is the 1-based record index).
    """

    file: str | None = None
    n: int | None = None
    unit: str = "line"

    def error(self, field: str | None, message: str, fix: str | None = None) -> InputError:
        if self.unit == "record" and self.n is not None:
            message = f"{message.rstrip('.')} (in record {self.n})"
        return InputError(message, file=self.file, line=self.n, field=field, fix=fix)


class Format:
    """One input format. Subclasses set ``name``, ``kind`` and ``fields`` and implement
    ``detect`` and ``normalize``; chat and classification kinds also ``to_messages``."""

    name: str = ""
    kind: str = ""
    fields: str = ""  # the fields that identify it, shown in "unknown format" errors

    def detect(self, record: dict) -> bool:
        raise NotImplementedError

    def normalize(self, record: dict, where: Where) -> dict:
        raise NotImplementedError

    def to_messages(self, record: dict, *, labels: list[str] | None = None) -> list[dict]:
        raise InputError(f"{self.kind} records cannot be turned into chat messages",
                         fix="mix or train only chat and classification data as chat")


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add ``fmt`` to ``FORMATS`` (a later registration under the same name replaces it)."""
    if fmt.kind not in KINDS:
        raise ValueError(f"format {fmt.name!r}: kind must be one of {KINDS}, got {fmt.kind!r}")
    FORMATS[fmt.name] = fmt
    return fmt


def load_plugins() -> None:
    """Import the modules named by ``modelmill.formats`` entry points (once)."""
    from modelmill.plugins import load_plugins as load_group

    load_group("modelmill.formats")


def get_format(name: str) -> Format:
    load_plugins()
    if name not in FORMATS:
        raise InputError(f"unknown format '{name}'", field="--format",
                         fix="use one of: auto, " + ", ".join(FORMATS))
    return FORMATS[name]


def detect_format(record: dict, where: Where) -> Format:
    """The first registered format whose ``detect`` accepts ``record``: built-ins are tried
    first, so a plugin whose fields overlap theirs is chosen by name (``--format``)."""
    load_plugins()
    for fmt in FORMATS.values():
        if fmt.detect(record):
            return fmt
    known = "; ".join(f"{f.name} ({f.fields})" for f in FORMATS.values())
    raise where.error(None, f"cannot tell the format from fields {sorted(record)}",
                      fix=f"rename the fields to one of: {known}; or map them with "
                          "--field COLUMN=FIELD (REST: field_map), or name the format with --format")


def kind_format(kind: str) -> Format:
    """A format of ``kind``; canonical records of one kind share a shape, so any will do."""
    for fmt in FORMATS.values():
        if fmt.kind == kind:
            return fmt
    raise InputError(f"unknown data kind '{kind}'", field="kind", fix="use one of: " + ", ".join(KINDS))


def to_messages(record: dict, kind: str, *, labels: list[str] | None = None) -> list[dict]:
    """Chat messages for a canonical record of ``kind`` (chat or classification)."""
    return kind_format(kind).to_messages(record, labels=labels)


# ---- checks shared by the formats -------------------------------------------------------

def type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def get_str(record: dict, field: str, where: Where, *, required: bool = True,
            path: str | None = None) -> str | None:
    """``record[field]`` as a string; None when optional and absent (or null)."""
    name = path or field
    value = record.get(field)
    if value is None:
        if required:
            raise where.error(name, "missing" if field not in record else "is null",
                              fix=f"add a '{field}' text")
        return None
    if not isinstance(value, str):
        raise where.error(name, f"expected a string, got {type_name(value)}",
                          fix=f"make '{field}' a text value (quote it)")
    return value


def get_list(record: dict, field: str, where: Where, *, required: bool = True,
             path: str | None = None) -> list | None:
    name = path or field
    value = record.get(field)
    if value is None:
        if required:
            raise where.error(name, "missing" if field not in record else "is null",
                              fix=f"add a '{field}' list")
        return None
    if not isinstance(value, list):
        raise where.error(name, f"expected a list, got {type_name(value)}",
                          fix=f"make '{field}' a JSON list")
    return value


def check_chat(messages: list[dict], where: Where, field: str = "messages") -> list[dict]:
    """Canonical chat rules: known roles, string contents, a user turn, an assistant last."""
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise where.error(f"{field}[{i}].role", f"unknown role '{m['role']}'",
                              fix="use system, user or assistant")
    if not any(m["role"] == "user" for m in messages):
        raise where.error(field, "has no user turn", fix="add the user's message, or drop this record")
    if messages[-1]["role"] != "assistant":
        raise where.error(field, f"ends with a {messages[-1]['role']} turn, not assistant",
                          fix="end each conversation with the assistant's answer, or drop the last turn")
    return messages


def extras(record: dict, known: set[str]) -> dict:
    """Fields a format does not use, kept under ``meta``."""
    return {k: v for k, v in record.items() if k not in known}


def with_meta(out: dict, meta: dict) -> dict:
    if meta:
        out["meta"] = meta
    return out


class ChatFormat(Format):
    """Base for chat formats: canonical records already hold the messages."""

    kind = "chat"

    def to_messages(self, record: dict, *, labels: list[str] | None = None) -> list[dict]:
        return [dict(m) for m in record["messages"]]
