"""Export a fine-tune as a whole model: the base with the adapter merged in, in the Hugging Face
format that transformers, vLLM and llama.cpp's converter load.

    modelmill adapters export drugs-lora ./drugs-model [--dtype bfloat16]

The folder holds the weights (safetensors), config, tokenizer with the chat template the base
uses here, and ``modelmill_lineage.json`` (the adapter's history, parents included). It appears
whole or not at all.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from modelmill.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def export(store, name: str, out: str | Path, *, dtype: str = "auto", log=None) -> Path:
    """Write ``name`` merged into its base to the folder ``out`` (which must not exist, or be empty)."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.models.registry import ModelRegistry

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'", field="--dtype", fix="use one of " + ", ".join(DTYPES))
    out = Path(out).expanduser().resolve()
    home = Path(store.home).expanduser().resolve()
    if out == home or home in out.parents:  # the store's folders are its own: a name there would be taken
        raise InputError(f"the folder is inside the modelmill store ({home})", file=str(out),
                         fix="export to a folder outside the store")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("the folder exists and is not empty", file=str(out),
                         fix="give a new folder, or empty this one")
    reg = AdapterRegistry(store)
    row = reg.get(name)
    models = ModelRegistry(store)
    base = models.ready(row.base_model, progress=False)
    if row.method != "full":
        check_base_weights(models, row, base)
    say = log or (lambda msg: None)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = row.path if row.method == "full" else base.path
    if dtype == "auto":  # the type the base's config.json names (loading below sets it to float32)
        from transformers import AutoConfig

        want = str(getattr(AutoConfig.from_pretrained(src), "dtype", None) or "float32").replace("torch.", "")
        dtype = want if want in DTYPES else "float32"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if row.method != "full":
        from peft import PeftModel

        say(f"merging {name} into {base.name}")
        model = PeftModel.from_pretrained(model, row.path).merge_and_unload()
    model = model.to(getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(row.path if (Path(row.path) / "tokenizer_config.json").is_file() else base.path)
    if base.chat_template:
        tok.chat_template = base.chat_template
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "modelmill_lineage.json").write_text(
            json.dumps({"exported_from": f"{base.name}:{name}", "dtype": dtype, **reg.history(name)},
                       indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"exported {name} ({dtype}) to {out}")
    return out


def check_base_weights(models, row, base, field: str | None = None, fix: str | None = None) -> None:
    """Refuse an adapter trained on other weights of its base (the base's files were replaced since):
    its update no longer fits them. What export, merge and training ``--from`` it check."""
    if row.base_model_hash and row.base_model_hash != models.base_hash(base):
        raise InputError(f"adapter '{row.name}' was trained on other weights of '{base.name}' (the base was "
                         "replaced since)", field=field, fix=fix or f"retrain '{row.name}' on this base")
