"""Turn a GGUF file into a Hugging Face safetensors folder, once, so later loads are fast.

    from modelmill.models.convert import convert_gguf
    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", home / "models" / "smollm2-135m-instruct")

The weights are dequantized to float32 (transformers trains and serves those; a GGUF's
4-bit blocks cannot take gradients). SmolLM2 135M takes about 18 s on a laptop CPU and
becomes a ~540 MB folder that loads in ~2 s.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from modelmill.errors import InputError
from modelmill.models._files import progress_bars, replace_dir, share_like_new_files, temp_sibling

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Keys transformers writes into tokenizer_config.json that describe how it was loaded
# this time, not the tokenizer; left in, they would follow the model around.
_LOAD_TIME_KEYS = ("is_local", "local_files_only", "gguf_file", "_commit_hash")


def _reporter(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    if progress:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return log.info


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, progress: bool | Progress = True,
                 overwrite: bool = False, chat_template: str | None = None) -> Path:
    """Dequantize ``gguf_path`` into a safetensors model folder at ``out_dir``; return it.

    ``chat_template`` (a built-in name, a .jinja path or template text) replaces the
    GGUF's own template, or supplies one where the GGUF has none.

    ``progress``: True prints a line to stderr and shows transformers' progress bars;
    False logs the line and hides the bars; a callable receives the lines instead of
    stderr (bars stay on). The folder appears whole or not at all.
    """
    from modelmill.models.inspect import inspect_gguf

    info = inspect_gguf(gguf_path)  # InputError naming the file when it is not a readable GGUF
    template = None
    if chat_template is not None:
        from modelmill.models.chat_templates import resolve_chat_template

        template = resolve_chat_template(chat_template)
    path = Path(info.path)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise InputError("the target folder already exists and is not empty", file=str(out_dir),
                         fix="remove it, or pass overwrite=True")
    say = _reporter(progress)
    size = f", {info.num_parameters / 1e6:.1f}M parameters" if info.num_parameters else ""
    say(f"Converting {path.name} ({info.architecture}{size}, {info.dtype}) to safetensors (once) ...")
    started = time.perf_counter()

    if not info.num_parameters:
        raise InputError("the GGUF file holds no model weights (a vocabulary-only file?)", file=str(path),
                         fix="use a GGUF export of the whole model (e.g. its F16 or Q8_0 file)")

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        with progress_bars(progress is not False):
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, local_files_only=True,
                quantization_config=GgufConfig(dequantize=True))
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError, TypeError) as e:
        if _gguf_type(path) == "adapter":
            raise InputError("the GGUF file is a LoRA adapter, not a model", file=str(path),
                             fix="add the base model it was made for; a llama.cpp adapter GGUF is no base") from None
        fix = "use a GGUF of an architecture transformers can load (llama, mistral, qwen2, qwen3, gemma, phi3, ...)"
        try:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
            archs = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # mapping sections
            fix = "use a GGUF of one of these architectures: " + ", ".join(archs)
        except ImportError:
            pass
        raise InputError(f"transformers cannot load this GGUF ({type(e).__name__}: {e})", file=str(path),
                         fix=fix) from None

    if template is not None:
        tokenizer.chat_template = template
    _finish_config(model, tokenizer)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        with progress_bars(progress is not False):
            model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        _clean_tokenizer_config(tmp / "tokenizer_config.json")
        share_like_new_files(tmp)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"Converted {path.name} in {time.perf_counter() - started:.1f} s: {out_dir}")
    return out_dir


END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


def _finish_config(model, tokenizer) -> None:
    """Fill what GGUF metadata leaves out: architectures, end-of-turn ids, max length."""
    config = model.config
    if not config.architectures:
        config.architectures = [type(model).__name__]  # GGUF loads come back with None
    gen = model.generation_config
    if tokenizer.eos_token_id is not None:
        # Chat models end a turn with the tokenizer's eos (<|im_end|> for SmolLM2), which
        # GGUF files carry as tokenizer.ggml.eos_token_id; generate() must stop on it.
        eos = gen.eos_token_id
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if tokenizer.eos_token_id not in eos_ids:
            eos_ids = [tokenizer.eos_token_id, *eos_ids]
        # A template that ends each turn with its own token (Gemma's <end_of_turn>, Llama 3's <|eot_id|>)
        # ends generation there too, or a fine-tune never stops.
        template = tokenizer.chat_template or ""
        vocab = tokenizer.get_vocab()
        for marker in END_OF_TURN:
            if marker in template and marker in vocab and vocab[marker] not in eos_ids:
                eos_ids.append(vocab[marker])
        gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    context = getattr(config, "max_position_embeddings", None)
    if context and (tokenizer.model_max_length is None or tokenizer.model_max_length > 10 * context):
        tokenizer.model_max_length = context  # GGUF loads leave the 1e30 "no limit" sentinel


def _clean_tokenizer_config(path: Path) -> None:
    if not path.is_file():
        return
    data = json.loads(path.read_text("utf-8"))
    if any(k in data for k in _LOAD_TIME_KEYS):
        for k in _LOAD_TIME_KEYS:
            data.pop(k, None)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")  # inside the temp folder


def _gguf_type(path: Path) -> str | None:
    """The file's general.type ("model", "adapter"), when it says."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields.get("general.type")
        return field.contents() if field is not None else None
    except Exception:  # unreadable: the caller's own message stands
        return None
