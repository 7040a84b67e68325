"""What a model is, read from its files without loading its weights (milliseconds, no torch).

    from modelmill.models.inspect import inspect_model, inspect_gguf, validate_hf_folder
    info = inspect_model("~/.modelmill/models/smollm2-135m-instruct")
    info.architecture, info.num_parameters, info.context_length, info.has_chat_template

``inspect_model`` reads config.json, the tokenizer files and the safetensors headers;
``inspect_gguf`` reads a GGUF's metadata; ``validate_hf_folder`` checks that a folder
can become a base model and says what to fix when it cannot.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from modelmill.errors import InputError

# Any one of these makes a tokenizer that AutoTokenizer can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
                   "tiktoken.model", "tokenizer.tiktoken")
# Architectures whose head predicts the next token, i.e. that generate text.
_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass
class ModelInfo:
    """Facts about a model's files. ``None`` where the files do not say."""

    architecture: str | None
    model_type: str | None
    num_parameters: int | None
    context_length: int | None
    vocab_size: int | None
    dtype: str | None
    chat_template: str | None
    eos_token: str | None
    hidden_size: int | None
    num_layers: int | None
    format: str = "hf"  # "hf" (a Hugging Face folder) or "gguf"
    path: str | None = None
    has_chat_template: bool = field(init=False)

    def __post_init__(self) -> None:
        self.has_chat_template = bool(self.chat_template and self.chat_template.strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- folders


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", file=str(path), line=e.lineno,
                         fix="repair the file or save the model again with save_pretrained") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the file: {e}", file=str(path), fix="check its permissions") from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=str(path), fix="save the model again with save_pretrained")
    return data


def _first(d: dict, *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):  # {"content": "<|im_end|>", "lstrip": false, ...}
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def read_chat_template(folder: str | Path) -> str | None:
    """The chat template saved in a model folder, or None.

    transformers 5 writes ``chat_template.jinja``; older saves put it in
    ``tokenizer_config.json`` (a string, or a list of named templates) or
    ``chat_template.json``.
    """
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text("utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        p = folder / name
        if not p.is_file():
            continue
        tmpl = _read_json(p).get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
            tmpl = named.get("default") or next(iter(named.values()), None)
        if isinstance(tmpl, str) and tmpl.strip():
            return tmpl
    return None


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file: name -> {"dtype", "shape", "data_offsets"}.

    The format starts with an 8-byte little-endian length and that many bytes of JSON,
    so reading it costs one small read, however large the file.
    """
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise InputError(f"not a readable safetensors file ({e})", file=str(path),
                         fix="save the model again with save_pretrained") from None
    header.pop("__metadata__", None)
    return header


def weight_files(folder: str | Path) -> list[Path]:
    """The model's weight files: sharded or single safetensors first, .bin only without them."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map") or {}
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise InputError(f"{len(missing)} weight file(s) listed in {index_name} are missing, "
                                 f"e.g. {missing[0]}", file=str(folder), fix="copy or download the missing shards")
            return [folder / n for n in names]
        if (folder / single).is_file():
            return [folder / single]
    found = sorted(folder.glob("*.safetensors"))
    return found or sorted(folder.glob("*.bin"))


def _count_safetensors(files: list[Path], tied: bool) -> tuple[int, str | None]:
    total, dtypes, seen = 0, Counter(), set()
    for f in files:
        for name, meta in read_safetensors_header(f).items():
            if name in seen:
                continue
            seen.add(name)
            n = 1
            for d in meta["shape"]:
                n *= d
            dtypes[meta["dtype"]] += n
            total += n
    # A tied head is one parameter; most saves drop the copy, some keep it.
    if tied and "lm_head.weight" in seen and any(k.endswith("embed_tokens.weight") for k in seen):
        total -= _numel_of(files, "lm_head.weight")
    dtype = _SAFETENSORS_DTYPES.get(dtypes.most_common(1)[0][0]) if dtypes else None
    return total, dtype


def _numel_of(files: list[Path], key: str) -> int:
    for f in files:
        meta = read_safetensors_header(f).get(key)
        if meta:
            n = 1
            for d in meta["shape"]:
                n *= d
            return n
    return 0


def _count_bin(files: list[Path]) -> tuple[int, str | None]:
    import torch  # only for old pickled checkpoints, which have no readable header

    total, dtypes, seen = 0, Counter(), set()
    for f in files:
        try:
            sd = torch.load(f, map_location="meta", weights_only=True, mmap=True)
        except Exception as e:
            raise InputError(f"cannot read the PyTorch checkpoint ({type(e).__name__}: {e})", file=str(f),
                             fix="convert the model to safetensors with save_pretrained") from None
        for name, t in sd.items():
            if name not in seen and hasattr(t, "numel"):
                seen.add(name)
                total += t.numel()
                dtypes[str(t.dtype).removeprefix("torch.")] += t.numel()
    return total, (dtypes.most_common(1)[0][0] if dtypes else None)


def _eos_token(folder: Path, config: dict) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = folder / name
        if p.is_file():
            eos = _token_text(_read_json(p).get("eos_token"))
            if eos:
                return eos
    # Fall back to the id in config.json, looked up in tokenizer.json's added tokens.
    eos_id = config.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    tj = folder / "tokenizer.json"
    if isinstance(eos_id, int) and tj.is_file():
        for t in _read_json(tj).get("added_tokens") or []:
            if t.get("id") == eos_id:
                return t.get("content")
    return None


def inspect_model(folder: str | Path) -> ModelInfo:
    """Read a Hugging Face model folder's facts without loading its weights."""
    folder = Path(folder).expanduser()
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError("no config.json: this is not a Hugging Face model folder", file=str(folder),
                         fix="point at the folder that holds config.json and the weights (save_pretrained output)")
    config = _read_json(cfg_path)
    # Multimodal configs keep the language model's sizes under text_config.
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    merged = {**text, **{k: v for k, v in config.items() if v is not None}}

    architectures = config.get("architectures") or []
    files = weight_files(folder)
    tied = bool(_first(merged, "tie_word_embeddings"))
    if files and files[0].suffix == ".safetensors":
        num_parameters, file_dtype = _count_safetensors(files, tied)
    elif files:
        num_parameters, file_dtype = _count_bin(files)
    else:
        num_parameters, file_dtype = None, None

    return ModelInfo(
        architecture=architectures[0] if architectures else None,
        model_type=config.get("model_type"),
        num_parameters=num_parameters,
        context_length=_first(merged, "max_position_embeddings", "n_positions", "max_sequence_length",
                              "seq_length", "n_ctx"),
        vocab_size=_first(merged, "vocab_size", "padded_vocab_size"),
        dtype=file_dtype or _first(merged, "dtype", "torch_dtype"),
        chat_template=read_chat_template(folder),
        eos_token=_eos_token(folder, merged),
        hidden_size=_first(merged, "hidden_size", "n_embd", "d_model"),
        num_layers=_first(merged, "num_hidden_layers", "n_layer", "num_layers"),
        format="hf",
        path=str(folder),
    )


def validate_hf_folder(folder: str | Path, chat_template: str | None = None) -> ModelInfo:
    """Check that ``folder`` can be a base model; return its info, with ``chat_template``
    (a built-in name, a .jinja path or template text) resolved and filled in when given.

    Raises InputError when config.json, the weights or the tokenizer are missing, when
    the model does not generate text, or when it has no chat template and none is named.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError("folder not found", file=str(folder), fix="check the path")
    if not folder.is_dir():
        raise InputError("not a folder", file=str(folder),
                         fix="pass a Hugging Face model folder, or use a .gguf file as the source")
    info = inspect_model(folder)
    if info.num_parameters is None:
        raise InputError("no weights (*.safetensors or *.bin) in the model folder", file=str(folder),
                         fix="copy the model's weight files into the folder")
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise InputError("no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)", file=str(folder),
                         fix="save the tokenizer into the same folder: tokenizer.save_pretrained(folder)")
    if info.architecture and not info.architecture.endswith(_GENERATIVE_SUFFIXES):
        raise InputError(f"architecture {info.architecture} does not generate text", file=str(folder / "config.json"),
                         field="architectures", fix="use a causal language model (an architecture named ...ForCausalLM)")
    check_loadable(folder)
    if chat_template is not None:
        from modelmill.models.chat_templates import resolve_chat_template

        info.chat_template = resolve_chat_template(chat_template)
        info.has_chat_template = True
    elif not info.has_chat_template:
        raise InputError("the model has no chat template", file=str(folder),
                         fix="pass --chat-template chatml|llama3|gemma|alpaca|<file.jinja>")
    return info


def check_loadable(folder: Path) -> None:
    """Load the folder's config and tokenizer as training, chat and ``data stats`` will (cheap: no
    weights); InputError naming the file transformers cannot read."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    def reason(e: Exception) -> str:
        text = " ".join(str(e).split()) or type(e).__name__
        return text[:300] + ("..." if len(text) > 300 else "")

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its own warnings would come before our one line
    try:
        try:
            AutoConfig.from_pretrained(folder)
        except Exception as e:  # an unknown model_type, damaged JSON: many kinds inside transformers
            raise InputError(f"transformers cannot load the model's config ({reason(e)})",
                             file=str(folder / "config.json"),
                             fix="fix config.json (model_type must be one this transformers knows), or upgrade "
                                 "transformers") from None
        try:
            AutoTokenizer.from_pretrained(folder)
        except Exception as e:
            name = next((n for n in TOKENIZER_FILES if (folder / n).is_file()), "tokenizer_config.json")
            raise InputError(f"the tokenizer does not load ({reason(e)})", file=str(folder / name),
                             fix="save the tokenizer again: AutoTokenizer.from_pretrained(ORIGINAL)"
                                 ".save_pretrained(folder)") from None
    finally:
        hf_logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------- GGUF files


def _open_gguf(path: Path):
    """A parsed ``gguf.GGUFReader``; InputError naming the file when it is missing or damaged."""
    if not path.is_file():
        raise InputError("GGUF file not found", file=str(path), fix="check the path")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError("not a GGUF file (it does not start with the bytes 'GGUF')", file=str(path),
                         fix="pass a .gguf model file, or a Hugging Face model folder")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # truncated or corrupt files fail in many ways inside gguf/numpy
        raise InputError(f"the GGUF file is damaged or unreadable ({type(e).__name__}: {e})", file=str(path),
                         fix="download or export the file again") from None
    if "general.architecture" not in reader.fields:
        raise InputError("the GGUF file names no general.architecture", file=str(path),
                         fix="re-export the model with llama.cpp's convert_hf_to_gguf.py")
    return reader


def inspect_gguf(path: str | Path) -> ModelInfo:
    """Read a GGUF file's metadata (architecture, sizes, chat template) without dequantizing.

    Parsing takes ~1.5 s for a 50k-token vocabulary, so results are remembered per
    (path, size, mtime): ``models add`` inspects, then ``convert_gguf`` inspects again.
    """
    path = Path(path).expanduser()
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key in _GGUF_INFO:
        return replace(_GGUF_INFO[key])
    info = _read_gguf_info(path)
    if key is not None:
        if len(_GGUF_INFO) >= 16:
            _GGUF_INFO.pop(next(iter(_GGUF_INFO)))
        _GGUF_INFO[key] = info
    return replace(info)


_GGUF_INFO: dict[tuple, ModelInfo] = {}


def _read_gguf_info(path: Path) -> ModelInfo:
    reader = _open_gguf(path)
    fields = reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # a malformed value reads as missing, not as a crash
            return None

    arch = get("general.architecture")
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)
    eos_id = get("tokenizer.ggml.eos_token_id")
    eos_token = None
    if isinstance(eos_id, int) and tokens is not None and 0 <= eos_id < len(tokens.data):
        # One token, not all 50k+: field.data indexes the parts holding each string.
        eos_token = bytes(tokens.parts[tokens.data[eos_id]]).decode("utf-8", errors="replace")
    num_parameters = sum(int(t.n_elements) for t in reader.tensors)
    # The file's own quantization type (general.file_type, e.g. Q4_K_M), else the most common
    # weight encoding: a small model's embedding is often kept at Q8_0 and outweighs the rest.
    by_type = Counter()
    for t in reader.tensors:
        by_type[t.tensor_type.name] += int(t.n_elements)
    dtype = by_type.most_common(1)[0][0] if by_type else None
    ftype = get("general.file_type")
    if isinstance(ftype, int):
        from gguf import LlamaFileType

        try:
            dtype = LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return ModelInfo(
        architecture=arch,
        model_type=arch,
        num_parameters=num_parameters,
        context_length=get(f"{arch}.context_length"),
        vocab_size=vocab,
        dtype=dtype,
        chat_template=get("tokenizer.chat_template"),
        eos_token=eos_token,
        hidden_size=get(f"{arch}.embedding_length"),
        num_layers=get(f"{arch}.block_count"),
        format="gguf",
        path=str(path),
    )
