"""Config dataclasses as data: check a mapping against one (YAML file, REST body), describe one (web form).

The dataclass stays the one place where a setting's default, help and choices live; the CLI
builds its flags from it (cli.dataclass_options), the REST API and the YAML loader check
values with ``from_mapping``, and the web UI draws its form from ``describe``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from modelmill.errors import InputError


def field_type(fld) -> type:
    """int, float, bool or str, from the default (or, for an optional field, the annotation)."""
    if fld.default is not None and fld.default is not dataclasses.MISSING:
        return {int: int, float: float, bool: bool}.get(type(fld.default), str)
    ann = str(fld.type)
    return next((t for name, t in (("int", int), ("float", float), ("bool", bool)) if ann.startswith(name)), str)


def check_values(cls, mapping: dict, *, file: str | None = None) -> dict:
    """``mapping`` with its keys checked against ``cls``'s fields and its values against their types."""
    if not isinstance(mapping, dict):
        raise InputError(f"expected an object of settings, got {type(mapping).__name__}", file=file, field="config")
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, val in mapping.items():
        k = str(key).replace("-", "_")
        if k not in known:
            raise InputError(f"unknown setting '{key}'", file=file, field=str(key),
                             fix="known settings: " + ", ".join(sorted(known)))
        want = field_type(known[k])
        if want is float and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if not isinstance(val, want) or (want is int and isinstance(val, bool)) or (
                want is float and not math.isfinite(val)):
            raise InputError(f"expected {want.__name__}, got {type(val).__name__} ({val!r})"[:200], file=file,
                             field=str(key), fix=f"e.g. {key}: {known[k].default!r}")
        if want is str and len(val) > 10_000:
            raise InputError("longer than 10,000 characters", file=file, field=str(key))
        choices = known[k].metadata.get("choices")
        if choices and val not in choices:
            raise InputError(f"must be one of {', '.join(map(str, choices))}, got {val!r}"[:200], file=file,
                             field=str(key))
        out[k] = val
    return out


def from_mapping(cls, mapping: dict, *, file: str | None = None):
    """An instance of ``cls`` from a mapping; a bad key, type or value raises InputError naming it."""
    values = check_values(cls, mapping, file=file)
    try:
        return cls(**values)
    except InputError as e:
        if e.field and e.field.startswith("--"):  # the dataclass names its CLI flag; here the key is the field
            e.field = e.field[2:].replace("-", "_")
            e.args = (str(e),)
        raise


def describe(cls) -> list[dict]:
    """Each field: name, type, default, help, choices, and whether a form folds it under "advanced"."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        out.append({"name": f.name, "type": field_type(f).__name__, "default": f.default,
                    "help": meta.get("help", ""), "choices": list(meta["choices"]) if "choices" in meta else None,
                    "advanced": not meta.get("basic", False)})
    return out
