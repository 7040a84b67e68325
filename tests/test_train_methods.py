"""Training methods beyond SFT on the tiny model: DPO from an SFT adapter, ORPO, KTO, continued
pre-training then SFT on top, through the CLI, the native REST API and the official openai client;
resume after Ctrl-C; and the bad inputs, each refused by name with nothing left in the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import MODELMILL, CLI, Server, register_random_adapter, write_jsonl

PREFS = [{"prompt": f"Is review {i} positive?", "chosen": f"Yes, review {i} is positive.",
          "rejected": f"No, review {i} is negative."} for i in range(12)]
FEEDBACK = [{"prompt": f"Rate review {i}.", "completion": "good" if i % 2 else "bad", "label": bool(i % 2)}
            for i in range(12)]
TEXT = [{"text": f"Bond yield note {i}: the central bank tightened policy and markets priced in further hikes."}
        for i in range(30)]
CHAT = [{"messages": [{"role": "user", "content": f"hi {i}"},
                      {"role": "assistant", "content": f"hello there, friend number {i}"}]} for i in range(16)]
FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1"]


def test_every_registered_method_is_a_choice_of_the_train_command():
    from modelmill.train.methods import REGISTRY, all_fields

    method = next(f for f in all_fields() if f.name == "method")
    assert list(method.metadata["choices"]) == list(REGISTRY)
    for m in REGISTRY.values():  # each method's config serves it, and its file has an entry point
        assert m.name in m.config.METHODS
        assert hasattr(__import__(m.module, fromlist=["main"]), "main")


def _weights(home, name):
    from safetensors.torch import load_file

    return load_file(str(home / "adapters" / name / "adapter_model.safetensors"))


@pytest.fixture()
def data(cli_tiny: CLI, tmp_path):
    for name, rows in (("prefs", PREFS), ("fb", FEEDBACK), ("text", TEXT), ("chat", CHAT)):
        cli_tiny("data", "import", write_jsonl(tmp_path / f"{name}.jsonl", rows), "--name", name)
    return cli_tiny


def test_dpo_from_an_sft_adapter_keeps_its_lineage_and_serves(data: CLI, home):
    cli = data
    cli("train", "--base", "tiny", "--data", "chat", "--name", "sft", *FAST)
    out = cli("train", "--base", "tiny", "--method", "dpo", "--data", "prefs", "--from", "sft", "--name", "dpo",
              "--beta", "0.2", *FAST)
    assert "adapter dpo (base tiny, data prefs@" in out.stdout and "2 steps" in out.stdout
    folder = home / "adapters" / "dpo"
    assert not (folder / "ref").exists(), "the frozen reference copy is not part of the adapter"
    assert sorted(_weights(home, "dpo")) == sorted(_weights(home, "sft"))
    shown = cli("adapters", "show", "dpo").stdout
    assert "trained from:       sft" in shown and "method:             dpo" in shown
    d = json.loads(cli("adapters", "show", "dpo", "--json").stdout)
    assert d["config"]["beta"] == 0.2 and d["config"]["from_adapter"] == "sft" and d["config"]["learning_rate"] == 5e-5
    assert d["history"]["parents"][0]["name"] == "sft" and d["history"]["parents"][0]["relation"] == "from"
    assert d["history"]["parents"][0]["dataset"].startswith("chat@")
    assert "rewards/accuracies" in (folder / "metrics.jsonl").read_text()  # trl's DPO figures are logged
    # served like any adapter
    assert cli("chat", "tiny:dpo", "--max-tokens", "4", input="hello\n").returncode == 0

    # --from really starts from the adapter's weights: a step that cannot move them leaves them equal
    cli("train", "--base", "tiny", "--method", "dpo", "--data", "prefs", "--from", "sft", "--name", "still",
        "--max-steps", "1", "--batch-size", "4", "--learning-rate", "1e-12")
    a, b = _weights(home, "sft"), _weights(home, "still")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert sum(a[k].abs().sum().item() for k in a if "lora_B" in k) > 0  # and they are not a fresh adapter's


def test_orpo_kto_and_cpt_then_sft(data: CLI, home):
    cli = data
    for method, ds in (("orpo", "prefs"), ("kto", "fb")):
        out = cli("train", "--base", "tiny", "--method", method, "--data", ds, "--name", method, *FAST)
        assert f"adapter {method} (base tiny" in out.stdout
        assert json.loads(cli("adapters", "show", method, "--json").stdout)["method"] == method
    cli("train", "--base", "tiny", "--method", "cpt", "--data", "text", "--general-data", "chat", "--general-ratio",
        "0.3", "--block-size", "32", "--name", "cpt", *FAST)
    m = json.loads(cli("adapters", "show", "cpt", "--json").stdout)["metrics"]
    share = m["general_tokens"] / (m["general_tokens"] + m["domain_tokens"])
    assert 0.3 <= share < 0.36 and m["block_size"] == 32  # general answers added until they are 30% of tokens
    cli("train", "--base", "tiny", "--data", "chat", "--from", "cpt", "--name", "sft-on-cpt", *FAST)
    h = json.loads(cli("adapters", "show", "sft-on-cpt", "--json").stdout)["history"]
    assert h["method"] == "lora" and h["parents"][0]["method"] == "cpt"


def test_cpt_straight_from_a_knowledge_base(cli_tiny: CLI, tmp_path, home):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.md").write_text("# Returns\n\n" + "Items may be returned within 30 days with a receipt. " * 20)
    cli_tiny("kb", "create", "policies")
    cli_tiny("kb", "add", "policies", docs)
    cli_tiny("train", "--base", "tiny", "--method", "cpt", "--data", "kb:policies", "--name", "kb-cpt",
             "--block-size", "32", *FAST)
    d = json.loads(cli_tiny("adapters", "show", "kb-cpt", "--json").stdout)
    assert d["dataset"].startswith("kb-policies@")  # the passages were saved as a dataset the lineage names
    assert "kb-policies" in cli_tiny("data", "list").stdout


@pytest.mark.parametrize("args,needle", [
    (["--method", "cpt", "--data", "chat"], "--method cpt trains on raw text"),
    (["--data", "text"], "use --method cpt for text data"),
    (["--method", "dpo", "--data", "fb"], "use --method kto for feedback data"),
    (["--method", "dpo", "--data", "prefs", "--beta", "0"], "--beta: must be in (0, 10]"),
    (["--data", "chat", "--beta", "0.1"], "--beta: a setting of dpo, orpo, kto, not of lora"),
    (["--method", "dpo", "--data", "prefs", "--from", "ghost"], "--from: no adapter named 'ghost'"),
    (["--method", "full", "--data", "chat", "--from", "ghost"], "a full fine-tune starts from the base's weights"),
    (["--data", "chat", "--quantize", "4bit", "--device", "cpu"], "--quantize: --quantize 4bit (QLoRA) needs"),
    (["--method", "cpt", "--data", "text", "--general-ratio", "0.2"], "--general-data"),
    (["--method", "cpt", "--data", "kb:nope"], "nope"),
    (["--method", "dpo", "--data", "kb:nope"], "--method cpt"),
])
def test_bad_method_input_is_refused_by_name(data: CLI, home, args, needle):
    p = data("train", "--base", "tiny", "--name", "bad", *args, ok=False)
    assert p.returncode != 0 and needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not (home / "runs" / "bad").exists() and "bad" not in data("adapters", "list").stdout


def test_from_an_adapter_of_another_base_is_refused(data: CLI, tiny_model, home):
    data("models", "add", "tiny2", tiny_model)
    data("train", "--base", "tiny", "--data", "chat", "--name", "sft", *FAST)
    p = data("train", "--base", "tiny2", "--method", "dpo", "--data", "prefs", "--from", "sft", ok=False)
    assert "--from: adapter 'sft' was trained on 'tiny', not on 'tiny2'" in p.stderr
    assert "use --base tiny" in p.stderr
    assert not list((home / "runs").iterdir())


@pytest.mark.parametrize("rows,needle", [
    ([PREFS[0], {**PREFS[1], "rejected": PREFS[1]["chosen"]}], "p.jsonl:2: field 'rejected': is the same answer"),
    ([PREFS[0], {"prompt": "x", "chosen": "a"}], "p.jsonl:2: field 'rejected': missing"),
    ([FEEDBACK[0], {"prompt": "x", "completion": "y", "label": "maybe"}], "p.jsonl:2: field 'label': expected true or false"),
    ([{"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "a"}],
       "non_preferred_output": [{"role": "assistant", "content": "a"}]}], "field 'non_preferred_output': is the same answer"),
])
def test_bad_preference_and_feedback_records_point_at_the_line(cli: CLI, tmp_path, rows, needle):
    p = cli("data", "import", write_jsonl(tmp_path / "p.jsonl", rows), "--name", "p", ok=False)
    assert needle in p.stderr, p.stderr
    assert "p" not in [line.split()[0] for line in cli("data", "list").stdout.splitlines()[1:] if line.strip()]


def test_openai_dpo_file_imports_as_preference_pairs(cli: CLI, tmp_path):
    rows = [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
             "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
             "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(3)]
    out = cli("data", "import", write_jsonl(tmp_path / "o.jsonl", rows), "--name", "o").stdout
    assert "3 preference records (openai-dpo)" in out


def test_ctrl_c_then_resume_for_dpo_and_cpt(data: CLI, home):
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for method, ds in (("dpo", "prefs"), ("cpt", "text")):
        name = f"long-{method}"
        args = ["train", "--base", "tiny", "--method", method, "--data", ds, "--name", name, "--max-steps", "24",
                "--batch-size", "2", "--save-steps", "2", "--logging-steps", "1"]
        proc = subprocess.Popen([*MODELMILL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ckpts = home / "runs" / name / "checkpoints"
        deadline = time.time() + 180
        while time.time() < deadline and not (ckpts.is_dir() and list(ckpts.glob("checkpoint-*"))):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished before the signal: nothing to resume, try no further
            pytest.skip("the run finished before Ctrl-C arrived")
        assert proc.returncode == 130 and "--resume" in err, err
        data("train", "--name", name, "--resume")
        d = json.loads(data("adapters", "show", name, "--json").stdout)
        assert d["metrics"]["global_step"] == 24 and d["method"] == method


def test_methods_over_rest_and_the_openai_client(data: CLI, home, tmp_path):
    import httpx

    data("train", "--base", "tiny", "--data", "chat", "--name", "sft", *FAST)
    server = Server(home, "--workers", "1", "--poll", "0.3", command="up")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            s = h.get("/api/schema/train", params={"method": "dpo"}).json()
            names = [f["name"] for f in s["fields"]]
            assert "beta" in names and "padding_free" not in names and "general_ratio" not in names
            assert {m["name"] for m in s["methods"]} == {"lora", "full", "dpo", "orpo", "kto", "cpt"}
            assert "general_ratio" in [f["name"] for f in h.get("/api/schema/train?method=cpt").json()["fields"]]
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "method": "dpo", "data": "prefs",
                                                                       "beta": 20}})
            assert r.status_code == 400 and r.json()["error"]["param"] == "beta"
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "chat", "beta": 0.1}})
            assert r.status_code == 400 and r.json()["error"]["param"] == "beta"
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "method": "kto", "data": "fb",
                                                                       "from_adapter": "ghost"}})
            assert r.status_code in (400, 404) and r.json()["error"]["param"] == "from_adapter"
            assert h.get("/api/jobs").json()["data"] == []  # none of these was queued
            job = h.post("/api/jobs", json={"kind": "train", "config": {
                "base": "tiny", "method": "kto", "data": "fb", "from_adapter": "sft", "name": "kto-rest",
                "max_steps": 2, "batch_size": 4}}).json()
            for _ in range(600):
                job = h.get(f"/api/jobs/{job['id']}").json()
                if job["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.3)
            assert job["status"] == "succeeded", job["error"]
            assert h.get("/api/adapters/kto-rest").json()["method"] == "kto"

        # OpenAI's DPO fine-tuning shape, on top of the SFT model, as OpenAI users do it
        client = server.client()
        rows = [{"input": {"messages": [{"role": "user", "content": p["prompt"]}]},
                 "preferred_output": [{"role": "assistant", "content": p["chosen"]}],
                 "non_preferred_output": [{"role": "assistant", "content": p["rejected"]}]} for p in PREFS]
        f = client.files.create(file=write_jsonl(tmp_path / "dpo.jsonl", rows).open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny:sft", training_file=f.id, suffix="dpo", method={
            "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4, "n_epochs": 1}}})
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
        for _ in range(600):
            job = client.fine_tuning.jobs.retrieve(job.id)
            if job.status in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        assert job.status == "succeeded", job.error
        name = job.fine_tuned_model.split(":", 1)[1]
        d = json.loads(data("adapters", "show", name, "--json").stdout)
        assert d["method"] == "dpo" and d["history"]["parents"][0]["name"] == "sft"
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message is not None
    finally:
        server.stop()


def test_mistakes_of_an_evaluation_become_pairs_for_dpo(cli_tiny: CLI, reviews_file, home):
    cli = cli_tiny
    cli("data", "import", reviews_file, "--name", "reviews")
    cli("train", "--base", "tiny", "--data", "reviews", "--name", "rev", *FAST)
    cli("eval", "--data", "reviews", "--models", "tiny:rev", "--limit", "12")
    from modelmill.evaluate.results import latest
    from modelmill.store import open_store

    row = [r for r in latest(open_store(), "reviews") if r.adapter == "rev"][0]
    items = [json.loads(line) for line in open(f"{row.path}/items.jsonl")]
    wrong = [r for r in items if not r["correct"]]
    assert wrong, "the tiny model gets some of them wrong"
    out = cli("data", "mistakes", "--task", "reviews", "--model", "tiny:rev", "--name", "fixes").stdout
    assert f"{len(wrong)} preference pairs from {len(wrong)} mistakes of 12 items" in out
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.load import read_jsonl

    ds = DatasetCatalog(open_store()).resolve("fixes")
    recs = list(read_jsonl(ds.path))
    assert [(r["chosen"], r["rejected"]) for r in recs] == [(w["gold"], w["pred"]) for w in wrong]
    assert recs[0]["prompt"][-1]["role"] == "user" and "(visit" in recs[0]["prompt"][-1]["content"]
    assert ds.origin["op"] == "mistakes" and ds.origin["model"] == "tiny:rev"
    # --right 1: as many pairs again from right answers, the least sure first, the next label rejected
    right = sorted((r for r in items if r["correct"]), key=lambda r: (
        r["scores"][r["pred"]] - max(v for k, v in r["scores"].items() if k != r["pred"]), r["i"]))
    assert right, "the tiny model gets some of them right"
    out = cli("data", "mistakes", "--task", "reviews", "--model", "tiny:rev", "--name", "fixes-kept",
              "--right", "1").stdout
    k = min(len(right), len(wrong))
    assert f"{len(wrong) + k} preference pairs from {len(wrong)} mistakes of 12 items ({k} of them from right" in out
    recs = list(read_jsonl(DatasetCatalog(open_store()).resolve("fixes-kept").path))
    assert [(r["chosen"], r["rejected"]) for r in recs[len(wrong):]] == [
        (r["gold"], max((x for x in r["scores"] if x != r["pred"]), key=r["scores"].get)) for r in right[:k]]
    assert all(r["chosen"] != r["rejected"] for r in recs)
    p = cli("data", "mistakes", "--task", "reviews", "--model", "tiny:rev", "--name", "x", "--right", "11", ok=False)
    assert "--right 11.0 is outside 0-10" in p.stderr
    cli("train", "--base", "tiny", "--method", "dpo", "--data", "fixes", "--from", "rev", "--name", "rev-dpo", *FAST)
    # bad input: a model never scored on the task, a task never run
    p = cli("data", "mistakes", "--task", "reviews", "--model", "tiny", "--name", "x", ok=False)
    assert "no finished evaluation of 'tiny' on task 'reviews'" in p.stderr and "tiny:rev" in p.stderr
    p = cli("data", "mistakes", "--task", "nope", "--model", "tiny:rev", "--name", "x", ok=False)
    assert "nope" in p.stderr


def test_jobs_run_library_calls_not_the_command_line():
    """The eval, grid, train and merge jobs call the library; nothing of the click CLI is loaded."""
    code = ("import sys, modelmill.jobs.kinds, modelmill.jobs.runner, modelmill.jobs.worker\n"
            "from modelmill.evaluate import run, grid, mistakes\n"
            "from modelmill.train import runs, methods\n"
            "bad = [m for m in sys.modules if m.startswith('modelmill.cli') or m == 'click']\n"
            "assert not bad, bad\n")
    subprocess.run([MODELMILL[0], "-c", code], check=True)


def test_training_from_an_adapter_keeps_and_records_its_lora_shape(cli_tiny: CLI, home, tiny_model, tmp_path):
    from modelmill.errors import InputError
    from modelmill.store import open_store
    from modelmill.train.runs import prepare
    from modelmill.train.sft import SFTConfig

    register_random_adapter(home, tiny_model, "start", 1, ["q_proj", "v_proj"], rank=4)  # r4, alpha 8, q,v
    cli_tiny("data", "import", write_jsonl(tmp_path / "chat.jsonl", CHAT), "--name", "chat")
    p = cli_tiny("train", "--base", "tiny", "--data", "chat", "--from", "start", "--name", "x", "--lora-r", "8",
                 ok=False)
    assert p.returncode == 2 and "--lora-r: 8 differs from the rank of the starting adapter 'start' (4)" in p.stderr
    assert "Fix: drop --lora-r" in p.stderr and "Traceback" not in p.stderr, p.stderr
    store = open_store()
    for setting, flag in (({"lora_alpha": 64}, "--lora-alpha"), ({"target_modules": "q_proj"}, "--target-modules"),
                          ({"lora_dropout": 0.2}, "--lora-dropout")):
        with pytest.raises(InputError, match=f"{flag}: .* differs from the .* of the starting adapter 'start'"):
            prepare(store, SFTConfig(base="tiny", data="chat", from_adapter="start", name="x", **setting))
    assert not (home / "runs" / "x").exists()
    # the adapter's own shape is what the run trains with and what its lineage records (asdict(config))
    job = prepare(store, SFTConfig(base="tiny", data="chat", from_adapter="start", name="y",
                                   target_modules="v_proj,q_proj"))
    assert (job.config.lora_r, job.config.lora_alpha, job.config.target_modules) == (4, 8, "q_proj,v_proj")
    # queued (REST, web): refused at submit, naming the config field the request sent
    from modelmill.jobs.queue import JobQueue

    with pytest.raises(InputError, match="field 'lora_r': 8 differs from the rank"):
        JobQueue(store).submit("train", {"base": "tiny", "data": "chat", "from_adapter": "start", "name": "q",
                                         "lora_r": 8})


def test_target_modules_are_checked_against_the_base_before_anything_is_made(cli_tiny: CLI, home, tmp_path):
    from modelmill.errors import InputError
    from modelmill.store import open_store
    from modelmill.train.runs import prepare
    from modelmill.train.sft import SFTConfig

    cli_tiny("data", "import", write_jsonl(tmp_path / "chat.jsonl", CHAT), "--name", "chat")
    p = cli_tiny("train", "--base", "tiny", "--data", "chat", "--name", "x", "--target-modules", "foo_proj", ok=False)
    assert p.returncode == 2 and "--target-modules: no layer of 'tiny' is named 'foo_proj'" in p.stderr, p.stderr
    assert "q_proj" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(InputError, match="--target-modules: ',' names no module"):
        prepare(open_store(), SFTConfig(base="tiny", data="chat", name="x", target_modules=","))
    assert not (home / "runs" / "x").exists()
    job = prepare(open_store(), SFTConfig(base="tiny", data="chat", name="ok", target_modules="self_attn.q_proj,v_proj"))
    assert job.config.target_modules == "self_attn.q_proj,v_proj"
    # a queued job is refused when it is submitted, naming the REST field, and nothing is queued
    from modelmill.jobs.queue import JobQueue

    with pytest.raises(InputError, match="field 'target_modules': no layer of 'tiny' is named 'foo_proj'"):
        JobQueue(open_store()).submit("train", {"base": "tiny", "data": "chat", "name": "q",
                                                "target_modules": "foo_proj"})
    assert JobQueue(open_store()).list() == []
