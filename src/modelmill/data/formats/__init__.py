"""Data formats: one file each, all registered in ``FORMATS`` through ``register_format``.

A plugin adds a format the same way, from a module it names under the
``modelmill.formats`` entry-point group.
"""

from .base import (FORMATS, KINDS, Format, Where, detect_format, get_format, kind_format,
                   load_plugins, register_format, to_messages)

# Built-ins, in detection order: each module registers itself on import.
from . import preference, feedback, messages, sharegpt, alpaca, classification, text  # noqa: E402,F401
from .classification import classification_prompt, labels_of  # noqa: E402

__all__ = ["FORMATS", "KINDS", "Format", "Where", "classification_prompt", "detect_format",
           "get_format", "kind_format", "labels_of", "load_plugins", "register_format", "to_messages"]
