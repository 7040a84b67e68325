"""Merging LoRA adapters (peft's add_weighted_adapter) into an ordinary adapter with its parents in
its lineage, and exporting an adapter merged into its base as a Hugging Face model folder."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from conftest import CLI, Server, register_random_adapter, wait_for_job
from safetensors.torch import load_file

TARGETS = ["q_proj", "v_proj"]
KEY = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture()
def cli3(cli_tiny: CLI, home, tiny_model) -> CLI:
    """Three random (non-zero) LoRA adapters of the tiny base: a and b of rank 4, c8 of rank 8."""
    register_random_adapter(home, tiny_model, "a", 1, TARGETS, rank=4)
    register_random_adapter(home, tiny_model, "b", 2, TARGETS, rank=4)
    register_random_adapter(home, tiny_model, "c8", 3, TARGETS, rank=8)
    return cli_tiny


def _delta(folder) -> torch.Tensor:
    """The weight update of layer 0's q_proj: scaling * B @ A."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    w = load_file(folder / "adapter_model.safetensors")
    return cfg["lora_alpha"] / cfg["r"] * (w[f"{KEY}.lora_B.weight"] @ w[f"{KEY}.lora_A.weight"])


def _q_weight(folder) -> torch.Tensor:
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update(load_file(f))
    return weights["model.layers.0.self_attn.q_proj.weight"].float()


def test_cat_merge_is_the_weighted_sum_and_export_writes_it_into_the_base(cli3: CLI, home, tiny_model, tmp_path):
    out = cli3("adapters", "merge", "ab", "--from", "a:1,b:0.5", "--how", "cat").stdout
    assert "merged ab (cat, rank 8) on tiny" in out and "tiny:ab" in out
    merged = _delta(home / "adapters" / "ab")
    want = _delta(home / "adapters" / "a") + 0.5 * _delta(home / "adapters" / "b")
    assert torch.allclose(merged, want, atol=1e-6), (merged - want).abs().max()

    cli3("adapters", "export", "ab", tmp_path / "ab-model", "--dtype", "float32")
    exported = _q_weight(tmp_path / "ab-model")
    assert torch.allclose(exported - _q_weight(tiny_model), want, atol=1e-5)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ab-model")  # what vLLM and transformers load
    tok = AutoTokenizer.from_pretrained(tmp_path / "ab-model")
    assert tok.chat_template and model.config.architectures
    lineage = json.loads((tmp_path / "ab-model" / "modelmill_lineage.json").read_text())
    assert lineage["exported_from"] == "tiny:ab" and [p["name"] for p in lineage["parents"]] == ["a", "b"]

    p = cli3("adapters", "export", "ab", tmp_path / "ab-model", ok=False)  # not over a folder with files
    assert p.returncode == 2 and "not empty" in p.stderr
    p = cli3("adapters", "export", "ghost", tmp_path / "ghost-model", ok=False)
    assert p.returncode == 3 and not (tmp_path / "ghost-model").exists()


def test_lineage_lists_parents_all_the_way_up(cli3: CLI):
    cli3("adapters", "merge", "ab", "--from", "a:0.6,b:0.4", "--how", "ties", "--density", "0.5")
    shown = cli3("adapters", "show", "ab").stdout
    assert "merged from:        a x0.6, b x0.4 (ties)" in shown
    cli3("adapters", "merge", "abc", "--from", "ab,c8:0.5", "--how", "svd")
    d = json.loads(cli3("adapters", "show", "abc", "--json").stdout)
    assert d["config"]["lora_r"] == 8 and d["config"]["merge"]["how"] == "svd"
    h = d["history"]
    assert [(p["name"], p["weight"]) for p in h["parents"]] == [("ab", 1.0), ("c8", 0.5)]
    assert [(p["name"], p["weight"], p["dataset"]) for p in h["parents"][0]["parents"]] == \
        [("a", 0.6, "random@1"), ("b", 0.4, "random@1")]
    cli3("adapters", "remove", "a")
    h = json.loads(cli3("adapters", "show", "abc", "--json").stdout)["history"]
    assert h["parents"][0]["parents"][0] == {"name": "a", "weight": 0.6, "relation": "merge", "removed": True}
    assert cli3("chat", "tiny:abc", "--prompt", "hi", "--max-tokens", "2").returncode == 0  # a merge of a merge


@pytest.mark.parametrize("args, code, says", [
    (["--from", "a,c8", "--how", "linear"], 2, "--how: 'linear' needs adapters of one rank, these differ (a r4, c8 r8)"),
    (["--from", "a,ghost"], 3, "unknown adapter 'ghost'"),
    (["--from", "a:x,b"], 2, "--from: weight 'x' of 'a' is not a number"),
    (["--from", "a:0,b"], 2, "other than 0"),
    (["--from", "a"], 2, "a merge needs two adapters or more"),
    (["--from", "a,a"], 2, "'a' is named twice"),
    (["--from", "a:0.6,tiny:a:0.4"], 2, "--from: 'tiny:a' names the adapter 'a' again"),
    (["--from", "a,b", "--density", "0"], 2, "--density: must be in (0, 1]"),
    (["--from", "a,b", "--how", "mean"], 2, "Invalid value for '--how'"),
])
def test_bad_merges_name_the_flag_and_leave_nothing(cli3: CLI, home, args, code, says):
    before = sorted(p.name for p in (home / "adapters").iterdir())
    p = cli3("adapters", "merge", "new", *args, ok=False)
    assert p.returncode == code and says in p.stderr, p.stderr
    assert sorted(p.name for p in (home / "adapters").iterdir()) == before
    assert "new" not in cli3("adapters", "list").stdout


def test_merging_adapters_of_two_bases_or_onto_a_taken_name_is_refused(cli3: CLI, home, tiny_model):
    cli3("models", "add", "tiny2", tiny_model)
    register_random_adapter(home, tiny_model, "other", 4, TARGETS, rank=4, base_name="tiny2")
    p = cli3("adapters", "merge", "new", "--from", "a,other", ok=False)
    assert p.returncode == 4 and "different bases (a on tiny, other on tiny2)" in p.stderr
    p = cli3("adapters", "merge", "b", "--from", "a,c8", "--how", "cat", ok=False)
    assert p.returncode == 4 and "an adapter named 'b' already exists" in p.stderr
    p = cli3("adapters", "merge", "tiny-ab", "--from", "tiny:a:0.5,tiny:b", "--how", "linear")  # BASE:ADAPTER refs
    assert [(x["name"], x["weight"]) for x in json.loads(cli3("adapters", "show", "tiny-ab", "--json").stdout)
            ["parents"]] == [("a", 0.5), ("b", 1.0)]
    p = cli3("adapters", "merge", "x", "--from", "a,b", "--how", "ties", "--svd-rank", "4", ok=False)
    assert "--svd-rank: only svd and the *_svd methods take a rank, not ties" in p.stderr
    p = cli3("adapters", "merge", "x", "--from", "a,c8", "--how", "svd", "--svd-rank", "100000", ok=False)
    assert "--svd-rank: 100000 is more than the smallest merged matrix allows" in p.stderr


def test_a_merge_job_over_rest_and_the_merged_adapter_served_beside_its_parents(cli3: CLI, home):
    server = Server(home, "--workers", "1", "--poll", "0.3", command="up")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            fields = {f["name"] for f in h.get("/api/schema/merge").json()["fields"]}
            assert {"name", "sources", "how", "density"} <= fields
            bad = h.post("/api/jobs", json={"kind": "merge", "config": {"name": "x", "sources": "a,c8"}})
            assert bad.status_code == 400 and "one rank" in bad.json()["error"]["message"]
            r = h.post("/api/jobs", json={"kind": "merge", "config": {"name": "ab-rest", "sources": "a:0.5,b:0.5",
                                                                      "how": "dare_ties", "density": 0.7}})
            assert r.status_code == 201, r.text
            job = wait_for_job(h, r.json()["id"], timeout=180)
            assert job["status"] == "succeeded", job
            assert job["result"]["model_id"] == "tiny:ab-rest" and job["result"]["rank"] == 4
            assert [p["name"] for p in job["result"]["parents"]] == ["a", "b"]
            assert h.get("/api/adapters/ab-rest").json()["lineage"]["merge"]["how"] == "dare_ties"
            for model in ("tiny:ab-rest", "tiny:a"):  # the merged adapter is an ordinary one to the server
                r = h.post("/v1/chat/completions", json={"model": model, "max_tokens": 3, "temperature": 0,
                                                         "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200 and r.json()["model"] == model, r.text
    finally:
        server.stop()


def test_adapters_and_models_share_one_namespace(cli3: CLI, home, tiny_model):
    p = cli3("adapters", "merge", "tiny", "--from", "a,b", ok=False)  # it would hide the base 'tiny'
    assert p.returncode == 4 and "NAME" in p.stderr and "'tiny' is the name of a base model" in p.stderr, p.stderr
    assert not (home / "adapters" / "tiny").exists() and "Traceback" not in p.stderr
    p = cli3("models", "add", "a", tiny_model, ok=False)  # it would be unreachable behind the adapter 'a'
    assert p.returncode == 4 and "'a' is the name of an adapter" in p.stderr and "Traceback" not in p.stderr
    p = cli3("models", "add", "b", "--endpoint", "http://127.0.0.1:9/v1", ok=False)
    assert p.returncode == 4 and "'b' is the name of an adapter" in p.stderr
    from modelmill.adapters import check_name_free
    from modelmill.errors import ConflictError
    from modelmill.models.registry import ModelRegistry
    from modelmill.store import open_store

    assert {"a", "b"}.isdisjoint(r.name for r in ModelRegistry(open_store()).list(include_remote=True))

    with pytest.raises(ConflictError, match="--name: 'smollm2-135m-instruct' is the name of a base model"):
        check_name_free(open_store(), "smollm2-135m-instruct")  # a built-in, converted or not


def test_no_export_into_the_store_and_no_merge_over_a_folder_nobody_owns(cli3: CLI, home, tmp_path):
    for inside in (home / "adapters" / "newdir", home / "models", home / "runs" / "x"):
        p = cli3("adapters", "export", "a", inside, ok=False)
        assert p.returncode == 2 and "inside the modelmill store" in p.stderr and "Traceback" not in p.stderr
    assert not (home / "adapters" / "newdir").exists() and not (home / "runs" / "x").exists()
    mine = home / "adapters" / "newdir"  # a folder someone put there by hand: kept, and the name refused
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    p = cli3("adapters", "merge", "newdir", "--from", "a,b", ok=False)
    assert p.returncode == 4 and "field 'NAME': the store already holds a folder" in p.stderr, p.stderr
    assert (mine / "notes.txt").read_text() == "mine" and "newdir" not in cli3("adapters", "list").stdout
    from modelmill.errors import ConflictError
    from modelmill.store import open_store

    with pytest.raises(ConflictError, match="the store already holds a folder"):  # the last guard, for every writer
        with open_store().staging(mine):
            pass
    assert (mine / "notes.txt").read_text() == "mine" and not list((home / "tmp").glob("newdir.*"))


def test_export_and_merge_refuse_an_adapter_of_replaced_base_weights(cli3: CLI, home, tmp_path):
    from modelmill.adapters import AdapterRegistry
    from modelmill.adapters.export import export
    from modelmill.adapters.merge import MergeConfig, merge
    from modelmill.errors import InputError
    from modelmill.store import open_store
    from modelmill.store.tables import Adapter

    store = open_store()
    with store.session() as s:  # trained on weights of 'tiny' that are not the ones registered now
        for name in ("a", "b"):
            s.get(Adapter, AdapterRegistry(store).get(name).id).base_model_hash = "f" * 64
    with pytest.raises(InputError, match="adapter 'a' was trained on other weights of 'tiny'"):
        export(store, "a", tmp_path / "out")
    with pytest.raises(InputError, match="--from: adapter 'a' was trained on other weights of 'tiny'"):
        merge(store, MergeConfig(name="ab", sources="a,b"))
    assert not (tmp_path / "out").exists() and AdapterRegistry(store).find("ab") is None
    # training from it is refused by the same check, with its own fix
    from modelmill.models.registry import ModelRegistry
    from modelmill.train.runs import starting_adapter
    from modelmill.train.sft import SFTConfig

    with pytest.raises(InputError, match="--from: adapter 'a' was trained on other weights of 'tiny'.*start without"):
        starting_adapter(store, SFTConfig(base="tiny", data="x", from_adapter="a"), ModelRegistry(store).get("tiny"))
