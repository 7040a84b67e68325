"""A registered model, with or without its adapter, loaded for inference.

    model, tokenizer, label = load_for_inference(store, "smollm2-135m-instruct:reviews-lora")
"""

from __future__ import annotations

from pathlib import Path

from modelmill.models.loading import contiguous_head, pick_device
from modelmill.store import Store


def load_for_inference(store: Store, ref: str, device: str = "auto"):
    """(model in eval mode, tokenizer with the right chat template, resolved 'base:adapter' label).
    A remote model (no local weights) is refused with an InputError by ``ModelRegistry.ready``."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.models.registry import ModelRegistry

    # resolved before torch is imported, so that a wrong or remote name fails in a moment
    base, adapter = AdapterRegistry(store).resolve_ref(ref)
    base = ModelRegistry(store).ready(base.name)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 'Loading weights' bar per load says nothing to a user
    device = pick_device(device)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if adapter is not None and adapter.method == "full":
        model = AutoModelForCausalLM.from_pretrained(adapter.path, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter.path)
    tok_dir = adapter.path if adapter is not None and (Path(adapter.path) / "tokenizer_config.json").exists() else base.path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if base.chat_template:
        tokenizer.chat_template = base.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    contiguous_head(model)
    label = f"{base.name}:{adapter.name}" if adapter is not None else base.name
    return model, tokenizer, label
