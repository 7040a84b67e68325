"""Names users give to models, datasets and adapters: one rule everywhere."""

from __future__ import annotations

import re

from modelmill.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, flag: str = "--name") -> str:
    """Return ``name`` if it is a valid registry name, else raise an InputError naming the flag."""
    if not name or not _NAME.match(name) or ".." in name:
        raise InputError(f"'{name}' is not a valid name", field=flag,
                         fix="use letters, digits, '.', '_' and '-' (up to 128), starting with a letter or digit")
    return name
