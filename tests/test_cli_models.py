"""`modelmill models ...` end to end, as a user runs it."""

from __future__ import annotations

import json
import shutil

from conftest import CLI


def test_list_shows_builtin_before_conversion(cli: CLI):
    out = cli("models", "list").stdout
    assert "smollm2-135m-instruct" in out
    assert "on first use" in out
    assert "134.5M" in out and "8192" in out


def test_add_show_remove_folder(cli: CLI, tiny_model):
    out = cli("models", "add", "tiny", tiny_model).stdout
    assert "added tiny: LlamaForCausalLM" in out and "context 512" in out
    listed = cli("models", "list").stdout
    assert "tiny" in listed and "32.7K" in listed
    shown = cli("models", "show", "tiny").stdout
    for needle in ("architecture:   LlamaForCausalLM", "parameters:     32,672", "context length: 512",
                   "chat template:", "<|im_start|>"):
        assert needle in shown, needle
    cli("models", "remove", "tiny")
    assert "tiny " not in cli("models", "list").stdout
    assert tiny_model.is_dir(), "a user's own folder must never be deleted"


def test_add_twice_is_a_conflict(cli: CLI, tiny_model):
    cli("models", "add", "tiny", tiny_model)
    p = cli("models", "add", "tiny", tiny_model, ok=False)
    assert p.returncode == 4
    assert "already exists" in p.stderr and "Fix:" in p.stderr


def test_folder_without_chat_template_needs_one(cli: CLI, tiny_model, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    p = cli("models", "add", "bare", bare, ok=False)
    assert p.returncode == 2
    assert "chat template" in p.stderr and "--chat-template" in p.stderr
    assert "bare" not in cli("models", "list").stdout  # nothing half-registered
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    p = cli("models", "add", "bare", bare, "--chat-template", broken, ok=False)
    assert p.returncode == 2 and f"{broken}:2: the chat template does not parse" in p.stderr
    assert "bare" not in cli("models", "list").stdout
    cli("models", "add", "bare", bare, "--chat-template", "chatml")
    assert "(set at registration)" in cli("models", "show", "bare").stdout


def test_bad_paths_and_names(cli: CLI, tmp_path):
    p = cli("models", "add", "x", tmp_path / "nope", ok=False)
    assert "no such file or folder" in p.stderr and str(tmp_path / "nope") in p.stderr
    notmodel = tmp_path / "notes.txt"
    notmodel.write_text("hello")
    assert "not a model folder" in cli("models", "add", "x", notmodel, ok=False).stderr
    p = cli("models", "add", "bad/name", tmp_path, ok=False)
    assert "not a valid name" in p.stderr
    p = cli("models", "show", "nope", ok=False)
    assert p.returncode == 3 and "unknown model 'nope'" in p.stderr
    assert "unknown model" in cli("models", "remove", "nope", ok=False).stderr


def test_corrupt_gguf_is_refused_and_leaves_nothing(cli: CLI, home, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    p = cli("models", "add", "broken", bad, ok=False)
    assert str(bad) in p.stderr
    assert "broken" not in cli("models", "list").stdout
    assert not (home / "models" / "broken").exists()


def test_removing_a_builtin_not_converted_yet_says_there_is_nothing_to_remove(cli: CLI):
    p = cli("models", "remove", "gemma3-270m", ok=False)
    assert p.returncode == 2 and "built-in model not converted yet" in p.stderr and "removed" not in p.stdout
    assert "gemma3-270m" in cli("models", "list").stdout
