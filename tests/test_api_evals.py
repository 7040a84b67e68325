"""The evaluation routes over HTTP: leaderboard, compare, reports, results, and playground
preferences exported as a preference dataset. Real results: the tiny model and the TF-IDF
baseline scored on a small classification task, and the tiny model on a generation task."""

from __future__ import annotations

import json

import pytest
from conftest import REVIEWS, write_jsonl

from modelmill.config import Settings
from modelmill.store import Store


def _client(store):
    """The platform app (`modelmill up` serves it) over ``store``; no API key exists, so no auth."""
    from fastapi.testclient import TestClient

    from modelmill.api.app import create_app

    # a server without keys answers only requests addressed to localhost
    return TestClient(create_app(store), base_url="http://localhost")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A store holding finished results: tasks 'cls' (tiny, tfidf-lr) and 'gen' (tiny)."""
    from modelmill.evaluate.candidates import LocalModel, TfidfLR
    from modelmill.evaluate.runner import evaluate
    from modelmill.evaluate.tasks import task_from_dict
    from modelmill.models.registry import ModelRegistry
    from modelmill.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("api-evals")
    store = Store(Settings(home=root / "home"))
    ModelRegistry(store).add("tiny", make_tiny_model(root / "tiny"), progress=False)
    train = write_jsonl(root / "train.jsonl", [{"text": f"{t} (train {i})", "label": lab}
                                               for i, (t, lab) in enumerate(REVIEWS * 3)])
    test = write_jsonl(root / "test.jsonl", [{"text": f"{t} [test {i}]", "label": lab}
                                             for i, (t, lab) in enumerate(REVIEWS)])
    gen = write_jsonl(root / "gen.jsonl", [{"prompt": f"Greet customer {i}", "reference": "Hello, how can I help?"}
                                           for i in range(3)])
    quiet = {"progress": False, "log": lambda msg: None}
    cls = task_from_dict({"kind": "classification", "name": "cls", "data": str(test), "train": str(train)})
    evaluate(store, cls, [LocalModel(store, "tiny"), TfidfLR()], **quiet)
    evaluate(store, task_from_dict({"kind": "generation", "name": "gen", "data": str(gen), "max_new_tokens": 3}),
             [LocalModel(store, "tiny")], **quiet)
    return store


@pytest.fixture(scope="module")
def client(scored):
    return _client(scored)


@pytest.fixture()
def fresh(tmp_path):
    """A client over an empty store (preferences start from none)."""
    store = Store(Settings(home=tmp_path / "home"))
    return store, _client(store)


def _error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["code"]
    if param is not None:
        assert err["param"] == param, err
    return err


# ---- results and the leaderboard ----------------------------------------------------------------

def test_leaderboard_ranks_like_the_library(client, scored):
    from modelmill.evaluate.results import latest

    board = client.get("/api/leaderboard").json()
    assert [t["task"] for t in board["tasks"]] == ["cls", "gen"]
    cls = board["tasks"][0]
    assert cls["kind"] == "classification" and cls["primary"] == "accuracy"
    assert cls["metric_names"][0] == "accuracy"
    rows = cls["rows"]
    assert sorted(r["candidate"] for r in rows) == ["tfidf-lr", "tiny"]
    assert [r["candidate"] for r in rows] == [r.candidate for r in latest(scored, "cls")]
    assert rows[0]["score"] >= rows[1]["score"] and [r["rank"] for r in rows] == [1, 2]
    by = {r["candidate"]: r for r in rows}
    assert by["tfidf-lr"]["kind"] == "classical" and by["tiny"]["kind"] == "model"
    assert by["tiny"]["n"] == len(REVIEWS) and by["tiny"]["metrics"]["accuracy"] == by["tiny"]["score"]
    assert set(by["tiny"]["metrics"]["per_class"]) == {"negative", "neutral", "positive"}
    # one task's board; an unknown task is a 404 naming the parameter
    only = client.get("/api/leaderboard", params={"task": "gen"}).json()
    assert [t["task"] for t in only["tasks"]] == ["gen"] and only["tasks"][0]["primary"] == "rouge_l"
    assert "nope" in _error(client.get("/api/leaderboard", params={"task": "nope"}), 404, "task")["message"]


def _stored(store, tmp, key, candidate, dataset, n, score, minute, preds=None, task="drugs"):
    """A finished classification result written straight to the store (no scoring), its items
    (gold 'pos' every time; ``preds`` the answers) in a folder of its own."""
    from datetime import datetime, timedelta, timezone

    from modelmill.store.tables import EvalResult

    folder = tmp / key
    folder.mkdir(parents=True)
    write_jsonl(folder / "items.jsonl", [{"i": i, "input": f"item {i}", "gold": "pos", "pred": p, "correct": p == "pos"}
                                         for i, p in enumerate(preds or [])])
    with store.session() as s:
        s.add(EvalResult(key=key, task=task, kind="classification", dataset=dataset, dataset_hash=dataset,
                         candidate=candidate, candidate_kind="model", status="done", n=n, n_done=n, primary="accuracy",
                         metrics={"accuracy": score, "macro_f1": score}, lineage={}, seconds=1.0, path=str(folder),
                         score=score, finished_at=datetime(2026, 12, 1, tzinfo=timezone.utc) + timedelta(minutes=minute)))


@pytest.fixture()
def versions(tmp_path):
    """Task 'drugs' scored on two dataset versions and with --limit 2: three boards. 'lora' is
    best on the newest data (2 items), and its older full run on v2 outscores nothing there."""
    store = Store(Settings(home=tmp_path / "home"))
    _stored(store, tmp_path, "k1", "old-lora", "drugs-test@1", 4, 0.95, 1, ["pos"] * 4)
    _stored(store, tmp_path, "k2", "base", "drugs-test@2", 4, 0.50, 2, ["pos", "neg", "pos", "neg"])
    _stored(store, tmp_path, "k3", "lora", "drugs-test@2", 4, 0.75, 3, ["pos", "pos", "pos", "neg"])
    _stored(store, tmp_path, "k4", "lora", "drugs-test@2", 2, 1.00, 4, ["pos", "pos"])  # --limit 2: newest
    _stored(store, tmp_path, "k5", "base", "drugs-test@2", 2, 0.50, 5, ["pos", "neg"])
    return store


def test_leaderboard_has_a_board_per_data_newest_first(versions):
    """Results on another dataset version or with --limit are not ranked together: one entry per
    board, each naming its dataset and item count, the task's newest data first (as the library)."""
    from modelmill.evaluate.results import leaderboard

    c = _client(versions)
    boards = c.get("/api/leaderboard").json()["tasks"]
    assert [(b["task"], b["dataset"], b["n"], [r["candidate"] for r in b["rows"]]) for b in boards] == [
        ("drugs", "drugs-test@2", 2, ["lora", "base"]),
        ("drugs", "drugs-test@2", 4, ["lora", "base"]),
        ("drugs", "drugs-test@1", 4, ["old-lora"])]
    assert [(b["dataset"], b["n"]) for b in boards] == [(b.dataset, b.n) for b in leaderboard(versions, "drugs")]
    assert [r["score"] for r in boards[1]["rows"]] == [0.75, 0.50] and [r["rank"] for r in boards[1]["rows"]] == [1, 2]
    assert all(r["n"] == b["n"] for b in boards for r in b["rows"])
    assert {b["boards_of_task"] for b in boards} == {3} and boards[0]["data_hash"] == "drugs-test@2"
    assert c.get("/api/leaderboard", params={"task": "drugs"}).json()["tasks"] == boards
    assert "nope" in _error(c.get("/api/leaderboard", params={"task": "nope"}), 404, "task")["message"]


def test_compare_takes_both_results_from_one_board(versions):
    c = _client(versions)
    out = c.get("/api/compare", params={"task": "drugs"}).json()  # the newest board, its top two
    assert (out["dataset"], out["n"], out["a"]["candidate"], out["b"]["candidate"]) == ("drugs-test@2", 2, "lora", "base")
    assert out["a"]["n"] == out["b"]["n"] == 2 and out["compared"] == 2 and out["total_disagreements"] == 1
    full = c.get("/api/compare", params={"task": "drugs", "a": "base", "b": "lora", "n": 4}).json()
    assert (full["n"], full["a"]["score"], full["b"]["score"], full["compared"]) == (4, 0.50, 0.75, 4)
    assert [d["i"] for d in full["disagreements"]] == [1]
    # never scored on the same data: refused; a board that does not exist: 404 naming the parameter
    assert "same data" in _error(c.get("/api/compare", params={"task": "drugs", "a": "old-lora", "b": "lora"}),
                                 400, "b")["message"]
    _error(c.get("/api/compare", params={"task": "drugs", "dataset": "drugs-test@9"}), 404, "dataset")
    _error(c.get("/api/compare", params={"task": "drugs", "n": 3}), 404, "n")
    _error(c.get("/api/compare", params={"task": "drugs", "dataset": "drugs-test@1"}), 400, "task")  # one candidate


def test_scorecard_ranks_each_task_on_its_newest_board(versions, tmp_path):
    """A candidate's score on other data (old-lora's 0.95 on version 1) does not enter the ranking."""
    from modelmill.evaluate.results import scorecard

    _stored(versions, tmp_path, "k6", "lora", "mmlu@1", 10, 0.40, 6, task="mmlu")
    _stored(versions, tmp_path, "k7", "old-lora", "mmlu@1", 10, 0.30, 7, task="mmlu")
    card = {"dimensions": {"business": {"drugs": 1.0}, "knowledge": {"mmlu": 1.0}},
            "weights": {"business": 1.0, "knowledge": 1.0}}
    rows = {r["candidate"]: r for r in scorecard(versions, card)}
    assert rows["lora"]["dimensions"] == {"business": 1.00, "knowledge": 0.40} and rows["lora"]["complete"]
    assert rows["base"]["dimensions"] == {"business": 0.50, "knowledge": None} and not rows["base"]["complete"]
    assert rows["old-lora"]["dimensions"] == {"business": None, "knowledge": 0.30}  # was 0.95: another version
    assert [r["candidate"] for r in scorecard(versions, card)] == ["lora", "base", "old-lora"]


def test_evaluations_list_and_filter(client):
    data = client.get("/api/evaluations").json()["data"]
    assert sorted((r["task"], r["candidate"]) for r in data) == [("cls", "tfidf-lr"), ("cls", "tiny"), ("gen", "tiny")]
    r = next(x for x in data if x["candidate"] == "tiny" and x["task"] == "cls")
    assert {"id", "task", "kind", "dataset", "candidate", "candidate_kind", "base_model", "adapter", "status", "n",
            "n_done", "primary", "score", "metrics", "seconds", "created_at", "finished_at"} <= set(r)
    assert r["status"] == "done" and r["n"] == r["n_done"] == len(REVIEWS) and r["base_model"] == "tiny"
    assert r["finished_at"].endswith("Z") and r["dataset"].endswith("test.jsonl")
    gen = client.get("/api/evaluations", params={"task": "gen"}).json()["data"]
    assert [(x["task"], x["kind"]) for x in gen] == [("gen", "generation")]
    assert client.get("/api/evaluations", params={"task": "cls", "status": "failed"}).json() == {"data": []}
    _error(client.get("/api/evaluations", params={"task": "nope"}), 404, "task")
    _error(client.get("/api/evaluations", params={"status": "exploded"}), 400, "status")


# ---- compare -------------------------------------------------------------------------------------

def test_compare_per_class_and_disagreements(client, scored):
    from modelmill.evaluate.results import latest
    from modelmill.evaluate.runner import read_items

    rows = {r.candidate: r for r in latest(scored, "cls")}
    out = client.get("/api/compare", params={"task": "cls", "a": "tiny", "b": "tfidf-lr"}).json()
    assert out["a"]["candidate"] == "tiny" and out["b"]["candidate"] == "tfidf-lr" and out["kind"] == "classification"
    assert set(out["labels"]) == {"negative", "neutral", "positive"}
    for name in ("tiny", "tfidf-lr"):
        assert out["per_class"][name] == rows[name].metrics["per_class"]
        assert set(out["per_class"][name]["positive"]) == {"precision", "recall", "f1", "support"}
    # the disagreements are exactly the items whose stored answers differ
    a = {it["i"]: it for it in read_items(rows["tiny"].path)}
    b = {it["i"]: it for it in read_items(rows["tfidf-lr"].path)}
    differ = sorted(i for i in a if a[i]["pred"] != b[i]["pred"])
    assert differ, "the random tiny model and TF-IDF should disagree somewhere"
    assert out["compared"] == len(REVIEWS) and out["total_disagreements"] == len(differ)
    assert [d["i"] for d in out["disagreements"]] == differ and out["has_more"] is False
    d = out["disagreements"][0]
    assert d["input"] == a[d["i"]]["input"] and "[test " in d["input"]
    assert d["reference"] == a[d["i"]]["gold"] and d["a"] == a[d["i"]]["pred"] and d["b"] == b[d["i"]]["pred"]
    assert d["a"] != d["b"] and d["b_correct"] == (d["b"] == d["reference"])
    # bounded; without a and b, the leaderboard's top two
    short = client.get("/api/compare", params={"task": "cls", "limit": 1}).json()
    assert len(short["disagreements"]) == 1 and short["has_more"] == (len(differ) > 1)
    top = [r.candidate for r in latest(scored, "cls")]
    assert [short["a"]["candidate"], short["b"]["candidate"]] == top
    only_b = client.get("/api/compare", params={"task": "cls", "b": top[0]}).json()
    assert only_b["a"]["candidate"] == top[1]


def test_compare_errors(client):
    _error(client.get("/api/compare", params={"task": "nope"}), 404, "task")
    _error(client.get("/api/compare"), 400, "task")
    assert "tfidf-lr" in _error(client.get("/api/compare", params={"task": "cls", "a": "ghost"}), 404, "a")["message"]
    _error(client.get("/api/compare", params={"task": "cls", "a": "tiny", "b": "tiny"}), 400, "b")
    _error(client.get("/api/compare", params={"task": "cls", "limit": -1}), 400, "limit")
    _error(client.get("/api/compare", params={"task": "cls", "limit": "many"}), 400, "limit")
    _error(client.get("/api/compare", params={"task": "gen"}), 400, "task")  # one candidate only


# ---- reports ------------------------------------------------------------------------------------

def test_report_is_the_cli_report(client, scored):
    from modelmill.evaluate.report import build_report
    from modelmill.evaluate.results import report_data

    r = client.get("/api/reports")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == build_report(report_data(scored))  # deterministic: the same bytes as `modelmill report`
    assert "<svg" in r.text and "tfidf-lr" in r.text and "Where candidates disagree" in r.text
    one = client.get("/api/reports", params={"task": "cls"}).text
    assert ">cls<" in one and ">gen<" not in one
    _error(client.get("/api/reports", params={"task": "nope"}), 404, "task")


def test_report_with_nothing_scored_is_an_empty_page(fresh):
    _, c = fresh
    r = c.get("/api/reports")
    assert r.status_code == 200 and "No benchmark results yet" in r.text
    assert c.get("/api/leaderboard").json() == {"tasks": []}
    assert c.get("/api/evaluations").json() == {"data": []}


# ---- preferences --------------------------------------------------------------------------------

PREF = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it safe?"}],
        "chosen": "Yes, at the usual dose.", "rejected": "I cannot say.", "chosen_model": "tiny:drugs-lora",
        "rejected_model": "tiny"}


def test_preferences_create_list_export(fresh, tmp_path):
    from modelmill.data.catalog import DatasetCatalog

    store, c = fresh
    _error(c.post("/api/preferences/export", json={"name": "prefs"}), 409)  # nothing to export yet
    r = c.post("/api/preferences", json=PREF)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["id"] and first["created_at"].endswith("Z")
    assert {k: first[k] for k in PREF} == PREF
    second = c.post("/api/preferences", json={**PREF, "messages": [{"role": "user", "content": "Dose?"}],
                                              "chosen": "Two a day.", "rejected": "Lots."}).json()
    listed = c.get("/api/preferences").json()
    assert [p["id"] for p in listed["data"]] == [second["id"], first["id"]] and listed["has_more"] is False
    assert [p["id"] for p in c.get("/api/preferences", params={"limit": 1}).json()["data"]] == [second["id"]]

    r = c.post("/api/preferences/export", json={"name": "prefs"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "preference" and ds["format"] == "preference" and ds["num_records"] == 2
    assert ds["ref"] == f"prefs@{ds['version']}" and ds["created"] is True and ds["size_bytes"] > 0
    assert ds["origin"]["op"] == "preferences" and ds["labels"] is None
    assert {"name", "version", "ref", "kind", "format", "num_records", "size_bytes", "labels", "origin",
            "created_at"} <= set(ds)
    cat = DatasetCatalog(store)
    row = cat.resolve("prefs")
    assert row.ref == ds["ref"] and row.kind == "preference"
    records = cat.records(row)
    assert records[0]["prompt"] == PREF["messages"] and records[0]["chosen"] == PREF["chosen"]
    assert records[0]["rejected"] == PREF["rejected"] and records[0]["meta"]["chosen_model"] == "tiny:drugs-lora"
    # the exported file reads back as preference data, like an imported preference file
    again, _, _ = cat.import_file(write_jsonl(tmp_path / "exported.jsonl", records), "reimported")
    assert again.kind == "preference" and again.format == "preference" and again.num_records == 2
    strip = lambda rs: [{k: v for k, v in x.items() if k != "meta"} for x in rs]  # noqa: E731
    assert strip(cat.records(again)) == strip(records)
    # the same preferences again: the same version, not a new one
    assert c.post("/api/preferences/export", json={"name": "prefs"}).json()["created"] is False


@pytest.mark.parametrize("change,param", [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),  # no user turn
    ({"messages": [{"role": "user", "content": "a \x00"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),  # a lone surrogate
    ({"chosen": ""}, "chosen"),
    ({"rejected": "   "}, "rejected"),
    ({"chosen": 3}, "chosen"),
    ({"chosen_model": ""}, "chosen_model"),
    ({"rejected_model": "x" * 301}, "rejected_model"),
    ({"rejected": "bad \x00 byte"}, "rejected"),
    ({"chosen_model": None}, "chosen_model"),
])
def test_bad_preferences_name_the_field(fresh, change, param):
    store, c = fresh
    # sent as ASCII JSON, so that "\ud800" travels as the escape a client may send
    body = json.dumps({**PREF, **change})
    _error(c.post("/api/preferences", content=body, headers={"content-type": "application/json"}), 400, param)
    body = {k: v for k, v in PREF.items() if k != "rejected"}
    _error(c.post("/api/preferences", json=body), 400, "rejected")
    assert c.get("/api/preferences").json()["data"] == []


# ---- feedback: thumbs up/down, KTO data ---------------------------------------------------------

THUMB = {"messages": [{"role": "user", "content": "Is it safe?"}], "completion": "Yes, at the usual dose.",
         "label": True, "model": "tiny:drugs-lora"}


def test_feedback_create_list_export_reads_back_as_feedback_data(fresh, tmp_path):
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.train.runs import trainable_dataset

    store, c = fresh
    err = _error(c.post("/api/feedback/export", json={"name": "thumbs"}), 409, "name")
    assert "thumb" in err["message"]
    up = c.post("/api/feedback", json=THUMB)
    assert up.status_code == 201, up.text
    assert {k: up.json()[k] for k in THUMB} == THUMB and up.json()["created_at"].endswith("Z")
    down = c.post("/api/feedback", json={**THUMB, "completion": "I cannot say.", "label": False, "model": "tiny"}).json()
    listed = c.get("/api/feedback").json()
    assert [f["id"] for f in listed["data"]] == [down["id"], up.json()["id"]]
    assert listed["total"] == 2 and listed["up"] == 1 and listed["has_more"] is False

    r = c.post("/api/feedback/export", json={"name": "thumbs"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "feedback" and ds["format"] == "feedback" and ds["num_records"] == 2
    assert ds["origin"]["op"] == "feedback" and ds["origin"]["feedback"] == 2
    cat = DatasetCatalog(store)
    records = cat.records(cat.resolve("thumbs"))
    assert [(x["completion"], x["label"], x["meta"]["model"]) for x in records] == [
        ("Yes, at the usual dose.", True, "tiny:drugs-lora"), ("I cannot say.", False, "tiny")]
    assert records[0]["prompt"] == THUMB["messages"]
    # what KTO trains on, and the same records as a feedback file imported by hand
    assert trainable_dataset(store, "thumbs", method="kto").kind == "feedback"
    again, _, _ = cat.import_file(write_jsonl(tmp_path / "thumbs.jsonl", records), "reimported")
    assert again.kind == "feedback" and again.num_records == 2
    assert c.post("/api/feedback/export", json={"name": "thumbs"}).json()["created"] is False
    # preferences and thumbs are kept apart
    assert c.get("/api/preferences").json()["total"] == 0


@pytest.mark.parametrize("change,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),  # no user turn
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ({"completion": "  "}, "completion"),
    ({"completion": "a \x00"}, "completion"),
    ({"label": "maybe"}, "label"),
    ({"label": None}, "label"),
    ({"model": ""}, "model"),
])
def test_bad_feedback_names_the_field(fresh, change, param):
    _, c = fresh
    body = json.dumps({**THUMB, **change})
    _error(c.post("/api/feedback", content=body, headers={"content-type": "application/json"}), 400, param)
    _error(c.post("/api/feedback", json={k: v for k, v in THUMB.items() if k != "label"}), 400, "label")
    assert c.get("/api/feedback").json()["data"] == []


def test_bad_bodies_and_names(fresh):
    _, c = fresh
    err = _error(c.post("/api/preferences", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]
    _error(c.post("/api/preferences", json=[1, 2]), 400)
    assert c.post("/api/preferences", json=PREF).status_code == 201
    _error(c.post("/api/preferences/export", json={"name": "../up"}), 400, "name")
    _error(c.post("/api/preferences/export", json={}), 400, "name")
    _error(c.get("/api/preferences", params={"limit": 0}), 400, "limit")


def test_openapi_documents_the_bodies(fresh):
    _, c = fresh
    spec = c.get("/openapi.json").json()
    assert {"PreferenceIn", "ExportIn", "Message"} <= set(spec["components"]["schemas"])
    assert "text/html" in spec["paths"]["/api/reports"]["get"]["responses"]["200"]["content"]
    assert json.dumps(spec)  # serialisable as is


def test_mistakes_of_a_generation_task_need_a_score_threshold(client, scored):
    """Generation items have no right or wrong: POST /api/datasets/mistakes asks for `below`, then takes
    the items whose ROUGE-L is under it as pairs (reference chosen, the model's output rejected)."""
    import json as _json

    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.load import read_jsonl
    from modelmill.evaluate.results import latest

    body = {"task": "gen", "model": "tiny", "name": "gen-fixes"}
    err = _error(client.post("/api/datasets/mistakes", json=body), 400, "below")
    assert "without a right or wrong" in err["message"] and "--below 0.5" in err["message"]
    _error(client.post("/api/datasets/mistakes", json={**body, "below": 0}), 400, "below")
    _error(client.post("/api/datasets/mistakes", json={**body, "below": 1.5}), 400, "below")
    err = _error(client.post("/api/datasets/mistakes", json={**body, "below": 0.5, "right": 1}), 400, "right")
    assert "classification scored by likelihood" in err["message"]
    assert DatasetCatalog(scored).versions("gen-fixes") == []  # nothing stored by the refusals
    row = next(r for r in latest(scored, "gen"))
    items = [_json.loads(line) for line in open(f"{row.path}/items.jsonl")]
    under = [r for r in items if r["rouge_l"] < 1.0]
    usable = [r for r in under if r["pred"].strip() and r["pred"].strip() != r["gold"]]
    r = client.post("/api/datasets/mistakes", json={**body, "below": 1.0})
    if not usable:  # the tiny model answers nothing: every item is a mistake, none has an answer to reject
        assert f"({len(under)} wrong of {len(items)})" in _error(r, 400, "model")["message"]
        return
    assert r.status_code == 201, r.text
    assert r.json()["pairs"] == len(usable) and r.json()["wrong"] == len(under)
    recs = list(read_jsonl(DatasetCatalog(scored).resolve("gen-fixes").path))
    assert [(x["chosen"], x["rejected"]) for x in recs] == [(u["gold"], u["pred"]) for u in usable]
