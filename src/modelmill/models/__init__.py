"""Base models as files: the built-in default, GGUF conversion, folder inspection, chat
templates, hashes for lineage, and tiny random models for tests. No database here; the
registry tables and the ``modelmill models`` commands sit on top of these functions.

    from modelmill.models import inspect_model, convert_gguf, make_tiny_model

Names are imported on first use, so ``import modelmill.models`` loads neither torch nor
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BUILTIN_MODELS": "builtin",
    "DEFAULT_BASE_MODEL": "builtin",
    "builtin_source": "builtin",
    "find_smollm2_gguf": "builtin",
    "is_builtin": "builtin",
    "convert_gguf": "convert",
    "ModelInfo": "inspect",
    "inspect_model": "inspect",
    "inspect_gguf": "inspect",
    "validate_hf_folder": "inspect",
    "read_chat_template": "inspect",
    "weight_files": "inspect",
    "resolve_chat_template": "chat_templates",
    "chat_template_names": "chat_templates",
    "file_sha256": "hashing",
    "make_tiny_model": "tiny",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from modelmill.models.builtin import (BUILTIN_MODELS, DEFAULT_BASE_MODEL, builtin_source,
                                          find_smollm2_gguf, is_builtin)
    from modelmill.models.chat_templates import chat_template_names, resolve_chat_template
    from modelmill.models.convert import convert_gguf
    from modelmill.models.hashing import file_sha256
    from modelmill.models.inspect import (ModelInfo, inspect_gguf, inspect_model, read_chat_template,
                                          validate_hf_folder, weight_files)
    from modelmill.models.tiny import make_tiny_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelmill.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"modelmill.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
