"""`modelmill train`, `adapters` and `chat` end to end on the tiny model: lineage, resume after
Ctrl-C, two-process data parallel training, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MODELMILL, CLI, write_jsonl


@pytest.fixture()
def trained(cli_tiny: CLI, reviews_file):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    out = cli_tiny("train", "--base", "tiny", "--data", "reviews", "--name", "rev-lora", "--max-steps", "4",
                   "--batch-size", "4", "--save-steps", "2", "--logging-steps", "1")
    return cli_tiny, out


def test_train_registers_adapter_with_lineage(trained, home):
    cli, out = trained
    assert "adapter rev-lora (base tiny, data reviews@" in out.stdout
    assert "4 steps" in out.stdout
    assert "training" in out.stderr and "loss=" in out.stderr  # the progress bar with loss
    listed = cli("adapters", "list").stdout
    assert "rev-lora" in listed and "lora" in listed
    lineage = json.loads(cli("adapters", "show", "rev-lora", "--json").stdout)
    assert lineage["base_model"] == "tiny" and len(lineage["base_model_sha256"]) == 64
    assert lineage["dataset"].startswith("reviews@") and len(lineage["dataset_sha256"]) == 64
    assert lineage["config"]["lora_r"] == 16 and lineage["config"]["learning_rate"] == 5e-4  # LoRA on classification data
    assert lineage["config"]["epochs"] == 2.0  # the auto default on classification data (--max-steps caps it here)
    assert lineage["config"]["max_length"] == 512  # the tiny model's context
    for lib in ("torch", "transformers", "trl", "peft", "accelerate", "modelmill"):
        assert lib in lineage["versions"]
    assert lineage["metrics"]["global_step"] == 4 and lineage["metrics"]["examples"] == 24
    adapter_dir = home / "adapters" / "rev-lora"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "lineage.json").is_file()
    rows = [json.loads(l) for l in (adapter_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert list((adapter_dir / "tb").rglob("events.out.tfevents.*")), "TensorBoard event files"
    assert not (home / "runs" / "rev-lora").exists(), "the run folder is gone once published"
    assert not list((home / "tmp").iterdir()), "no staging left behind"


def test_chat_one_shot_and_interactive(trained):
    cli, _ = trained
    p = cli("chat", "tiny:rev-lora", "--prompt", "Hello there", "--temperature", "0", "--max-tokens", "5")
    assert p.stdout.strip() != "" or p.returncode == 0
    p = cli("chat", "rev-lora", "--temperature", "0.8", "--top-p", "0.9", "--top-k", "5",
            "--repetition-penalty", "1.2", "--max-tokens", "4", "--seed", "1", input="hi\n/reset\nagain\n/exit\n")
    assert "chatting with tiny:rev-lora" in p.stderr
    p = cli("chat", "tiny", "--prompt", "x", "--temperature", "9", ok=False)
    assert "--temperature" in p.stderr and "Fix:" in p.stderr


def test_adapter_on_another_base_is_refused(trained, tiny_model):
    cli, _ = trained
    cli("models", "add", "tiny2", tiny_model)
    p = cli("chat", "tiny2:rev-lora", "--prompt", "hi", ok=False)
    assert p.returncode == 4
    assert "trained on 'tiny', not on 'tiny2'" in p.stderr and "tiny:rev-lora" in p.stderr
    p = cli("models", "remove", "tiny", ok=False)
    assert "rev-lora" in p.stderr
    cli("adapters", "remove", "rev-lora")
    assert "rev-lora" not in cli("adapters", "list").stdout
    cli("models", "remove", "tiny")


def test_same_adapter_name_twice(trained):
    cli, _ = trained
    p = cli("train", "--base", "tiny", "--data", "reviews", "--name", "rev-lora", "--max-steps", "1", ok=False)
    assert p.returncode == 4 and "already exists" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["--base", "nope", "--data", "reviews"], "unknown model 'nope'"),
    (["--base", "tiny", "--data", "nope"], "unknown dataset 'nope'"),
    (["--base", "tiny", "--data", "reviews", "--lora-r", "0"], "--lora-r: must be in [1, 1024]"),
    (["--base", "tiny", "--data", "reviews", "--max-length", "4096"], "--max-length"),
    (["--base", "tiny", "--data", "reviews", "--epochs", "-1"], "--epochs"),
    (["--base", "tiny", "--data", "reviews", "--epochs", "inf"], "--epochs: must be a number of passes"),
    (["--base", "tiny"], "--data"),
    (["--base", "tiny", "--data", "reviews", "--num-workers", "2"], "--num-workers: training on several nodes needs a Ray cluster"),
    (["--base", "tiny", "--data", "reviews", "--num-nodes", "2"], "--num-nodes and --gpus-per-node go together"),
])
def test_bad_train_input(cli_tiny: CLI, reviews_file, home, args, needle, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MODELMILL_RAY_ADDRESS", raising=False)
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    p = cli_tiny("train", *args, ok=False)
    assert needle in p.stderr and "Fix:" in p.stderr, p.stderr
    assert not list((home / "runs").iterdir()) and not list((home / "adapters").iterdir())


def test_held_out_loss_during_training_and_its_bad_input(cli_tiny: CLI, reviews_file, home, tmp_path):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    cli_tiny("data", "split", "reviews", "--test-size", "0.25", "--seed", "7")
    out = cli_tiny("train", "--base", "tiny", "--data", "reviews-train", "--eval-data", "reviews-test",
                   "--name", "held", "--max-steps", "4", "--eval-steps", "2", "--batch-size", "4")
    lineage = json.loads(cli_tiny("adapters", "show", "held", "--json").stdout)
    rows = [json.loads(x) for x in (home / "adapters" / "held" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4], out.stdout  # every --eval-steps; the last one is the final loss
    assert lineage["metrics"]["eval_loss"] == evals[-1]["eval_loss"] > 0
    assert lineage["config"]["eval_data"].startswith("reviews-test@")
    # held-out data must be of the training data's kind, with labels the training data has
    write_jsonl(tmp_path / "chat.jsonl", [{"instruction": "hi", "output": "hello"}])
    cli_tiny("data", "import", tmp_path / "chat.jsonl", "--name", "chat")
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "meh", "label": "mixed"}, {"text": "ok", "label": "positive"}])
    cli_tiny("data", "import", tmp_path / "odd.jsonl", "--name", "odd")
    for ref, needle in (("chat", "holds chat records"), ("odd", "absent from the training data"),
                        ("nope", "unknown dataset 'nope'")):
        p = cli_tiny("train", "--base", "tiny", "--data", "reviews-train", "--eval-data", ref, "--name", "x",
                     ok=False)
        assert needle in p.stderr and "--eval-data" in p.stderr and "Fix:" in p.stderr, p.stderr
    assert not (home / "runs" / "x").exists()


@pytest.mark.parametrize("setting, flag", [
    ({"epochs": float("inf")}, "--epochs"), ({"epochs": float("nan")}, "--epochs"),
    ({"warmup": float("inf")}, "--warmup"), ({"weight_decay": float("inf")}, "--weight-decay"),
    ({"weight_decay": -5.0}, "--weight-decay"),
])
def test_settings_must_be_finite(setting, flag):
    from modelmill.errors import InputError
    from modelmill.train.sft import SFTConfig

    with pytest.raises(InputError, match=f"^{flag}: must be"):
        SFTConfig(data="x", **setting)


def test_a_yaml_value_its_config_refuses_names_the_file():
    from modelmill.errors import InputError
    from modelmill.train.methods import from_mapping

    for spec, says in (({"lora_r": 0}, "c1.yaml: field 'lora_r': must be in [1, 1024]"),
                       ({"method": "bogus"}, "c1.yaml: field 'method': unknown training method 'bogus'")):
        with pytest.raises(InputError) as err:
            from_mapping(spec, file="c1.yaml")
        assert str(err.value).startswith(says), err.value


def test_epochs_default_follows_the_data():
    from modelmill.train.sft import SFTConfig

    assert SFTConfig().epochs_for("classification") == 2.0  # a few label tokens per example: two passes
    assert SFTConfig().epochs_for("chat") == SFTConfig().epochs_for("text") == 1.0
    assert SFTConfig(method="full").epochs_for("classification") == 1.0
    assert SFTConfig(epochs=3).epochs_for("classification") == SFTConfig(epochs=3).epochs_for("chat") == 3.0


def test_yaml_config_and_its_errors(cli_tiny: CLI, reviews_file, tmp_path):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: 8\nlearning_rat: 0.001\n")
    p = cli_tiny("train", "--base", "tiny", "--data", "reviews", "--config", bad, ok=False)
    assert "bad.yaml" in p.stderr and "learning_rat" in p.stderr and "learning_rate" in p.stderr
    bad.write_text("lora_r: eight\n")
    p = cli_tiny("train", "--base", "tiny", "--data", "reviews", "--config", bad, ok=False)
    assert "field 'lora_r'" in p.stderr and "expected int" in p.stderr
    good = tmp_path / "good.yaml"
    good.write_text("lora_r: 4\nlora_alpha: 8\nmax_steps: 2\nbatch_size: 4\n")
    cli_tiny("train", "--base", "tiny", "--data", "reviews", "--config", good, "--name", "y", "--lora-r", "2")
    cfg = json.loads(cli_tiny("adapters", "show", "y", "--json").stdout)["config"]
    assert cfg["lora_r"] == 2 and cfg["lora_alpha"] == 8 and cfg["max_steps"] == 2  # flags beat the file


def test_preference_data_is_not_for_sft(cli_tiny: CLI, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "no"}] * 3)
    cli_tiny("data", "import", f, "--name", "prefs")
    p = cli_tiny("train", "--base", "tiny", "--data", "prefs", ok=False)
    assert "preference records" in p.stderr


def test_two_cpu_processes_gloo(cli_tiny: CLI, reviews_file):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    cli_tiny("train", "--base", "tiny", "--data", "reviews", "--name", "ddp", "--max-steps", "3",
             "--batch-size", "2", "--num-processes", "2")
    m = json.loads(cli_tiny("adapters", "show", "ddp", "--json").stdout)["metrics"]
    assert m["num_processes"] == 2 and m["global_step"] == 3


def test_ctrl_c_leaves_a_resumable_checkpoint(cli_tiny: CLI, reviews_file, home):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    args = ["train", "--base", "tiny", "--data", "reviews", "--name", "long", "--max-steps", "200",
            "--batch-size", "2", "--save-steps", "2", "--logging-steps", "1"]
    proc = subprocess.Popen([*MODELMILL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = home / "runs" / "long" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and list(ckpts.glob("checkpoint-*"))):
        time.sleep(0.2)
    assert list(ckpts.glob("checkpoint-*")), "no checkpoint appeared"
    p = cli_tiny(*args, ok=False)  # the same run started twice
    assert p.returncode == 4 and "is being trained or merged right now" in p.stderr
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground command
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # one clear line, no library's traceback
    steps = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    assert 0 < steps[-1] < 200
    assert "long" not in cli_tiny("adapters", "list").stdout
    # a new run with the same name is refused while the checkpoint exists
    p = cli_tiny(*args, ok=False)
    assert "--resume" in p.stderr
    # resume: finish the remaining steps only (fewer, to keep the test short)
    cli_tiny("train", "--name", "long", "--resume")
    m = json.loads(cli_tiny("adapters", "show", "long", "--json").stdout)["metrics"]
    assert m["global_step"] == 200
    assert (home / "adapters" / "long" / "adapter_model.safetensors").is_file()


def _trainers(run_dir) -> list[int]:
    """Live processes whose command line names this run's job file (the launcher and the trainer)."""
    job = str(run_dir / "job.json")
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if job in cmdline.read_bytes().decode(errors="replace").split("\0") and \
                    (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the trainer's processes in /proc (Linux)")
def test_sigterm_and_a_killed_command_stop_the_trainer(cli_tiny: CLI, reviews_file, home):
    """`kill` (SIGTERM) stops training as Ctrl-C does; a command killed outright (SIGKILL) leaves no
    orphaned trainer behind: its trainer saves a checkpoint and exits."""
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    args = ["train", "--base", "tiny", "--data", "reviews", "--name", "term", "--max-steps", "400",
            "--batch-size", "2", "--save-steps", "2", "--logging-steps", "1"]
    run_dir = home / "runs" / "term"
    ckpts = run_dir / "checkpoints"

    def steps():
        return sorted(int(c.name.split("-")[1]) for c in ckpts.glob("checkpoint-*")) if ckpts.is_dir() else []

    proc = subprocess.Popen([*MODELMILL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: steps(), 120, "a first checkpoint")
    assert _trainers(run_dir), "the trainer is not found by its job file"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "--resume" in err, err
    assert "Traceback" not in err, err
    assert not _trainers(run_dir)
    first = steps()[-1]

    proc = subprocess.Popen([*MODELMILL, "train", "--name", "term", "--resume"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: steps() and steps()[-1] > first, 120, "a checkpoint after the resume")
    proc.kill()  # SIGKILL: the command says nothing, its trainer is told by the kernel
    proc.wait(timeout=30)
    _wait_for(lambda: not _trainers(run_dir), 60, "the orphaned trainer to stop")
    # it stopped with a checkpoint, long before its 400 steps were done (an orphan would train on)
    assert first < steps()[-1] < 400 and not (run_dir / "final").exists()
    assert "term" not in cli_tiny("adapters", "list").stdout


def test_resume_from_the_last_steps_checkpoint_trains_no_extra_step(tiny_model, tmp_path):
    """Killed after saving its last step's checkpoint, before publishing: the resume publishes
    that checkpoint's weights as they are (Trainer alone would train step max_steps + 1)."""
    import shutil

    from safetensors.torch import load_file

    from modelmill.train.sft import SFTConfig, SFTJob, run

    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                            {"role": "assistant", "content": str(2 * i)}]}
                                              for i in range(40)])
    cfg = SFTConfig(base="tiny", data="d", name="x", max_steps=4, save_steps=2, batch_size=4, max_length=256)
    job = SFTJob(config=cfg, base_path=str(tiny_model), data_path=str(data), kind="chat", run_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    assert run(job)["global_step"] == 4
    shutil.rmtree(tmp_path / "run" / "final")  # as if killed before publishing
    job.resume = True
    m = run(job)
    assert m["global_step"] == 4 and m["resumed_at_last_step"]
    final = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    saved = load_file(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert final.keys() == saved.keys() and all((final[k] == saved[k]).all() for k in final)


def test_eval_base_beside_adapter(trained, tmp_path):
    cli, _ = trained
    out = cli("eval", "--data", "reviews", "--models", "tiny,rev-lora", "--limit", "10", "--details").stdout
    assert "task reviews (classification), reviews@" in out and "10 items" in out
    rows = [line.split() for line in out.split("CANDIDATE", 1)[1].splitlines()[1:] if line.strip()]
    assert sorted(r[1] for r in rows) == ["tiny", "tiny:rev-lora"], out
    for r in rows:
        assert 0.0 <= float(r[3]) <= 1.0
    assert "confusion" in out.lower()
    # chat data is scored as generation against its answers
    chat = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "hi", "output": "hello"}])
    cli("data", "import", chat, "--name", "chatty")
    out = cli("eval", "--data", "chatty", "--models", "tiny", "--max-new-tokens", "4").stdout
    assert "task chatty (generation)" in out and "ROUGE-L" in out
    p = cli("eval", "--data", "reviews", "--models", "tiny,nope", ok=False)
    assert "unknown model 'nope'" in p.stderr


def test_full_fine_tune_chats_and_evaluates(cli_tiny: CLI, reviews_file, home):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    cli_tiny("train", "--base", "tiny", "--data", "reviews", "--name", "full-ft", "--method", "full",
             "--max-steps", "2", "--batch-size", "4")
    lineage = json.loads(cli_tiny("adapters", "show", "full-ft", "--json").stdout)
    assert lineage["method"] == "full" and lineage["config"]["learning_rate"] == 2e-5
    assert (home / "adapters" / "full-ft" / "config.json").is_file()
    cli_tiny("chat", "tiny:full-ft", "--prompt", "hi", "--temperature", "0", "--max-tokens", "3")
    out = cli_tiny("eval", "--data", "reviews", "--models", "full-ft", "--limit", "4").stdout
    assert "tiny:full-ft" in out
