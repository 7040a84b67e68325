"""The grid with training methods as an axis: chains of methods (cpt-then-lora, lora-then-dpo),
each step trained --from the one before, a dpo step learning from the mistakes of the step before
on the cell's training data; shared first steps trained once; bad methods and step data refused
by flag before anything trains. Real training of the tiny model through the CLI."""

from __future__ import annotations

import json
import re

from conftest import CLI, write_jsonl

TEXT = [{"text": f"Dosage note {i}: take the tablet with water, twice a day, and report side effects."}
        for i in range(12)]
FAST = ["--max-steps", "2", "--batch-size", "4"]


def _show(cli: CLI, name: str) -> dict:
    return json.loads(cli("adapters", "show", name, "--json").stdout)


def test_grid_chains_methods_and_learns_from_mistakes(cli_tiny: CLI, reviews_file, tmp_path, home):
    cli = cli_tiny
    cli("data", "import", reviews_file, "--name", "rev")
    cli("data", "import", write_jsonl(tmp_path / "docs.jsonl", TEXT), "--name", "docs")
    task = tmp_path / "rev.yaml"
    task.write_text("name: rev-board\nkind: classification\ndata: rev\nlimit: 6\n")
    args = ["grid", "--bases", "tiny", "--data", "rev", "--methods", "lora,lora-then-dpo,cpt-then-lora",
            "--step-data", "cpt=docs", "--task", task, *FAST, "--baselines", "zero-shot"]
    out = cli(*args).stdout
    assert "[1/3] rev-tiny-lora: training (lora on rev, base tiny)" in out
    # the second cell's first step is the first cell: trained once
    assert out.count("rev-tiny-lora: training") == 1
    assert re.search(r"^\[2/3\] rev-tiny-lora-then-dpo: (\d+) pairs from \1 mistakes of rev-tiny-lora on 24 "
                     r"training items \(rev-tiny-lora-mistakes@\w+\)$", out, re.M), out
    assert "[2/3] rev-tiny-lora-then-dpo: training (dpo on rev-tiny-lora-mistakes from rev-tiny-lora, base tiny)" in out
    assert "[3/3] rev-tiny-cpt: training (cpt on docs, base tiny)" in out
    assert "[3/3] rev-tiny-cpt-then-lora: training (lora on rev from rev-tiny-cpt, base tiny)" in out
    board = out.split("grid on task")[1]
    for name in ("tiny:rev-tiny-lora", "tiny:rev-tiny-lora-then-dpo", "tiny:rev-tiny-cpt-then-lora"):
        assert name in board
    assert "tiny:rev-tiny-cpt " not in board  # a step on the way is not a cell of the board

    dpo = _show(cli, "rev-tiny-lora-then-dpo")
    assert dpo["config"]["method"] == "dpo" and dpo["config"]["from_adapter"] == "rev-tiny-lora"
    pairs = _show(cli, "rev-tiny-cpt-then-lora")
    assert pairs["config"]["from_adapter"] == "rev-tiny-cpt" and pairs["config"]["method"] == "lora"
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.store import open_store

    made = DatasetCatalog(open_store()).resolve("rev-tiny-lora-mistakes")
    assert made.kind == "preference" and made.origin["op"] == "mistakes"
    assert made.origin["model"] == "tiny:rev-tiny-lora" and made.origin["items"] == 24

    # again: every step is there with the same settings and data, nothing trains
    again = cli(*args).stdout
    assert again.count("trained already, skipped") == 4 and "training (" not in again


def test_grid_method_and_step_data_errors_name_the_flag(cli_tiny: CLI, reviews_file, tmp_path, home):
    cli = cli_tiny
    cli("data", "import", reviews_file, "--name", "rev")
    task = tmp_path / "rev.yaml"
    task.write_text("name: rev-board\nkind: classification\ndata: rev\nlimit: 6\n")
    base = ["grid", "--bases", "tiny", "--data", "rev", "--task", task, *FAST]
    p = cli(*base, "--methods", "cpt-then-lora", ok=False)  # cpt on classification data
    assert "--data:" in p.stderr and "--step-data cpt=DATASET" in p.stderr and "training" not in p.stdout
    p = cli(*base, "--methods", "lora-then-sing", ok=False)
    assert "--methods: unknown method 'lora-then-sing' (step 'sing')" in p.stderr
    p = cli(*base, "--methods", "lora", "--step-data", "cpt", ok=False)
    assert "--step-data: 'cpt=' is not METHOD=DATASET" in p.stderr
    p = cli(*base, "--methods", "dpo", "--step-data", "dpo=nothing", ok=False)
    assert "--step-data: unknown dataset 'nothing'" in p.stderr and "training" not in p.stdout
    p = cli(*base, "--methods", "full-then-dpo", ok=False)
    assert "--methods: 'full-then-dpo' trains dpo from a full fine-tune" in p.stderr
    gen = tmp_path / "gen.yaml"
    gen.write_text("name: gen-board\nkind: generation\ndata: " + str(write_jsonl(tmp_path / "gen.jsonl", [
        {"prompt": "Greet the customer", "reference": "Hello!"}])) + "\n")
    p = cli("grid", "--bases", "tiny", "--data", "rev", "--task", gen, *FAST, "--methods", "lora-then-dpo", ok=False)
    assert "a generation task cannot tell" in p.stderr and "training" not in p.stdout
    assert "rev-tiny" not in cli("adapters", "list").stdout


def test_a_chained_step_trained_from_an_adapter_is_reused_whatever_shape_the_template_has():
    """Trained --from an adapter, a step records that adapter's LoRA shape, not the grid template's:
    the grid still finds it as done (and a step without --from still compares its shape)."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from modelmill.evaluate.grid import _same
    from modelmill.train.sft import SFTConfig

    template = SFTConfig(base="tiny", data="chat", name="step2", from_adapter="step1")
    recorded = {**asdict(template), "lora_r": 4, "lora_alpha": 8, "target_modules": "q_proj,v_proj",
                "learning_rate": template.lr_for("chat"), "epochs": template.epochs_for("chat")}
    assert _same(SimpleNamespace(config=recorded, dataset_hash="h"), template, "h", "chat")
    plain = SFTConfig(base="tiny", data="chat", name="step1")
    assert not _same(SimpleNamespace(config={**recorded, "from_adapter": None}, dataset_hash="h"), plain, "h", "chat")
