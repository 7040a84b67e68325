"""The benchmark system end to end on the tiny model: task files of every kind, baselines,
stored results, leaderboard, report, scorecard, resume after Ctrl-C, forgetting and grid."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import CLI, MODELMILL, SHARED_DATA, write_jsonl

from modelmill.evaluate.dialogue import turn_ok
from modelmill.evaluate.extraction import field_counts, parse_json_object
from modelmill.evaluate.generation import text_metrics
from modelmill.evaluate.judge import parse_grade
from modelmill.evaluate.multiple_choice import parse_letter


# ---- metric and parsing units (known values) -------------------------------------------------------

def test_extraction_fields():
    assert parse_json_object('Sure! ```json\n{"a": 1, "b": "X"}\n``` done') == {"a": 1, "b": "X"}
    assert parse_json_object("no json {here") is None
    assert field_counts({"vendor": " acme ", "total": "1,200.0", "extra": 1}, {"vendor": "ACME", "total": 1200}) == (2, 3, 2)
    assert field_counts(None, {"a": 1}) == (0, 0, 1)


def test_text_metrics_known_values():
    m = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert m["rouge_l"] == pytest.approx(1.0) and m["bleu"] == pytest.approx(1.0)
    assert text_metrics(["completely different words"], ["the cat sat"])["rouge_l"] == 0.0
    # Chinese is segmented, not dropped (rouge-score's own tokenizer keeps ASCII only)
    zh = text_metrics(["退货需要七天内申请"], ["退货需要在七天内申请"])
    assert 0.5 < zh["rouge_l"] < 1.0 and zh["bleu"] > 0


def test_text_metrics_of_other_scripts():
    """Identical answers score 1 in every script: rouge-score's tokenizer keeps ASCII only (ROUGE-L
    was 0 for Cyrillic and Arabic), and sacrebleu's zh tokenizer leaves kana whole (BLEU was 0 for
    Japanese without Han characters)."""
    for text in ["Привет мир как дела", "مرحبا بالعالم", "これはペンです", "Bonjour à tous, ça va"]:
        assert text_metrics([text], [text])["rouge_l"] == pytest.approx(1.0), text
    assert text_metrics(["Привет мир"], ["Пока друг"])["rouge_l"] == 0.0
    assert text_metrics(["ПРИВЕТ, мир!"], ["привет мир"])["rouge_l"] == pytest.approx(1.0)  # lowercased
    ja = "わたしはきのうとしょかんでほんをよみました"
    assert text_metrics([ja], [ja])["bleu"] == pytest.approx(1.0)
    assert 0.5 < text_metrics([ja.replace("よみ", "かい")], [ja])["bleu"] < 1.0
    # the script is judged over every reference, not the first 50
    from modelmill.evaluate.generation import bleu_tokenizer

    assert bleu_tokenizer(["plain English"] * 60 + ["これはペンです"]) == "char"
    assert bleu_tokenizer(["plain English"] * 60 + ["退货需要七天内申请"]) == "zh"
    assert bleu_tokenizer(["plain English", "Привет мир"]) == "13a"


def test_letter_answers_are_not_the_article_a():
    ch = ["Paris", "Rome", "Berlin", "Madrid"]
    assert parse_letter("The answer is a city in Italy: Rome", ch) == "B"  # was A
    assert parse_letter("Answer: c", ch) == "C" and parse_letter("the answer is (b).", ch) == "B"
    assert parse_letter("The answer is d.", ch) == "D" and parse_letter("ANSWER: B", ch) == "B"
    assert parse_letter("The answer is C", ch) == "C" and parse_letter("A. Paris", ch) == "A"


def test_grades_behind_markdown_and_beside_the_scale():
    assert parse_grade("**Score:** 4. Good", 1, 5) == 4  # was None: counted as the lowest grade
    assert parse_grade("I'd give it 3 out of 5", 1, 5) == 3  # was 5: the scale's top
    assert parse_grade("Score: 5 (out of 5)", 1, 5) == 5 and parse_grade("Score: 4/5", 1, 5) == 4
    assert parse_grade("I rate it 2/5.", 1, 5) == 2 and parse_grade("## Score\n\n3", 1, 5) == 3
    assert parse_grade("On a scale of 1 to 5 I give it a 4.", 1, 5) == 4
    assert parse_grade("Score (1-5): 4", 1, 5) == 4


def _result(store, key, candidate, dataset, n, score, minutes, status="done"):
    from datetime import datetime, timedelta, timezone

    from modelmill.store.tables import EvalResult

    with store.session() as s:
        s.add(EvalResult(key=key, task="drugs", kind="classification", dataset=dataset, dataset_hash=dataset,
                         candidate=candidate, candidate_kind="model", status=status, n=n, n_done=n, primary="accuracy",
                         metrics={"accuracy": score, "macro_f1": score, "unparsed": 0}, lineage={}, seconds=1.0,
                         path="/nonexistent", score=score,
                         finished_at=datetime(2026, 12, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)))


def test_the_leaderboard_ranks_only_results_on_the_same_data(home, cli):
    """A candidate scored on 20 items, or on an older dataset version, is not ranked above (or
    beside) the others' scores on 500 items of the new version: each data has its own board."""
    from modelmill.evaluate.results import latest, leaderboard
    from modelmill.store import open_store

    store = open_store()
    _result(store, "k1", "drugs-lora", "drugs-test@1", 500, 0.95, 1)
    _result(store, "k2", "smollm2", "drugs-test@2", 500, 0.70, 2)
    _result(store, "k3", "other-lora", "drugs-test@2", 500, 0.80, 3)
    _result(store, "k4", "other-lora", "drugs-test@2", 20, 0.99, 4)  # --limit 20: newest, yet not comparable
    _result(store, "k5", "smollm2", "drugs-test@2", 500, 0.10, 5, status="failed")
    boards = leaderboard(store, "drugs")
    assert [(b.dataset, b.n, [r.candidate for r in b.rows]) for b in boards] == [
        ("drugs-test@2", 20, ["other-lora"]),  # the newest data first
        ("drugs-test@2", 500, ["other-lora", "smollm2"]),  # other-lora's full run stays on its board
        ("drugs-test@1", 500, ["drugs-lora"])]
    assert [r.score for r in boards[1].rows] == [0.80, 0.70]
    assert len(latest(store, "drugs")) == 3  # still the newest per candidate

    out = cli("leaderboard", "--task", "drugs").stdout
    heads = [line for line in out.splitlines() if line.startswith("drugs (")]
    assert heads == ["drugs (classification, drugs-test@2, 20 items), ranked by accuracy (ranked apart from 2 board(s) "
                     "of this task on other data)",
                     "drugs (classification, drugs-test@2, 500 items), ranked by accuracy (ranked apart from 2 "
                     "board(s) of this task on other data)",
                     "drugs (classification, drugs-test@1, 500 items), ranked by accuracy (ranked apart from 2 "
                     "board(s) of this task on other data)"]
    assert [r[1] for r in _rows(out.split(heads[1])[1].split(heads[2])[0])] == ["other-lora", "smollm2"]


def test_answer_parsers():
    assert parse_letter("The answer is (C).", ["a", "b", "c", "d"]) == "C"
    assert parse_letter("I think Paris", ["Rome", "Paris"]) == "B"
    assert parse_letter("no idea", ["x", "y"]) is None
    assert parse_grade("Score: 4. Good answer.", 1, 5) == 4
    assert parse_grade("Score: 9", 1, 5) is None and parse_grade("meh", 1, 5) is None
    assert turn_ok("Your order has shipped!", "shipped", "contains")
    assert not turn_ok("It has not", "shipped", "contains")
    assert turn_ok("Hello, there", "hello there", "exact")
    assert turn_ok("order 123 shipped", r"order \d+", "regex")


# ---- files for the tasks ------------------------------------------------------------------------------

@pytest.fixture()
def task_files(tmp_path):
    rows = [("The medicine worked well and I feel much better.", "positive"), ("Terrible side effects.", "negative"),
            ("It did nothing, not good, not bad.", "neutral")]
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"{t} ({i})", "label": lab} for i, (t, lab) in enumerate(rows * 4)])
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"{t} [{i}]", "label": lab} for i, (t, lab) in enumerate(rows * 3)])
    write_jsonl(tmp_path / "mc.jsonl", [{"question": f"What is {i} + 1?", "choices": [str(i), str(i + 1), "7", "none"],
                                         "answer": ["B", 1, str(i + 1)][i % 3]} for i in range(6)])
    write_jsonl(tmp_path / "ex.jsonl", [{"text": f"Invoice from ACME, total {i}.50 EUR",
                                         "output": {"vendor": "ACME", "total": f"{i}.50"}} for i in range(4)])
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": f"Greet customer {i}", "reference": "Hello, how can I help?"}
                                         for i in range(4)])
    write_jsonl(tmp_path / "dlg.jsonl", [{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": f"where is order {i}?"}, {"role": "assistant", "content": "shipped"}]}
        for i in range(3)])
    specs = {
        "cls": "kind: classification\ndata: test.jsonl\ntrain: train.jsonl\n",
        "mc": "kind: multiple_choice\ndata: mc.jsonl\n",
        "ex": "kind: extraction\ndata: ex.jsonl\nmax_new_tokens: 6\n",
        "gen": "kind: generation\ndata: gen.jsonl\nmax_new_tokens: 6\n",
        "dlg": "kind: dialogue\ndata: dlg.jsonl\nmax_new_tokens: 4\n",
        "judge": "kind: judge\ndata: gen.jsonl\nmax_new_tokens: 4\njudge: {model: tiny, scale: [1, 5], rubric: polite}\n",
    }
    for name, text in specs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def _rows(out: str, header: str = "CANDIDATE") -> list[list[str]]:
    lines = out.split(header, 1)[1].splitlines()[1:]
    return [line.split() for line in lines if line.strip() and line.split()[0].isdigit()]


def test_every_kind_scores_stores_and_ranks(cli_tiny: CLI, task_files, home):
    expect = {"cls": "ACCURACY", "mc": "ACCURACY", "ex": "ENTITY-F1", "gen": "ROUGE-L", "dlg": "DIALOGUE-SUCCESS",
              "judge": "SCORE"}
    for name, metric in expect.items():
        out = cli_tiny("eval", "--task", task_files / f"{name}.yaml", "--models", "tiny").stdout
        assert f"task {name} " in out and metric in out, out
        rows = _rows(out)
        assert [r[1] for r in rows] == ["tiny"]
        assert 0.0 <= float(rows[0][3]) <= 1.0
        folder = next(p for p in (home / "evals").iterdir() if (p / "items.jsonl").is_file()
                      and json.loads((p / "items.jsonl").read_text().splitlines()[0]).get("i") == 0)
        assert folder.is_dir()
    board = cli_tiny("leaderboard").stdout
    for name in expect:
        assert f"\n{name} (" in board
    # the same command again reuses the stored result instead of scoring
    again = cli_tiny("eval", "--task", task_files / "mc.yaml", "--models", "tiny")
    assert "reusing the result" in again.stderr
    report = task_files / "r.html"
    cli_tiny("report", "--out", report)
    html = report.read_text()
    assert "<svg" in html and all(n in html for n in expect)


def test_baselines_and_lineage(cli_tiny: CLI, task_files, home):
    out = cli_tiny("eval", "--task", task_files / "cls.yaml", "--models", "tiny", "--baselines",
                   "few-shot,tfidf", "--few-shot", "3", "--details").stdout
    names = [r[1] for r in _rows(out)]
    assert sorted(names) == ["few-shot-3:tiny", "tfidf-lr", "tiny"], out
    assert "confusion" in out
    near = cli_tiny("eval", "--task", task_files / "cls.yaml", "--models", "few-shot:tiny", "--nearest").stdout
    assert "few-shot-5-nearest:tiny" in near
    from modelmill.evaluate.results import latest
    from modelmill.store import open_store

    rows = {r.candidate: r for r in latest(open_store(), "cls")}
    lin = rows["tiny"].lineage
    assert lin["dataset_hash"] and lin["candidate"]["base_hash"] and lin["task"]["kind"] == "classification"
    assert lin["versions"]["transformers"]
    assert rows["tfidf-lr"].candidate_kind == "classical" and rows["tfidf-lr"].parameters is None
    assert rows["tiny"].metrics["confusion"] and rows["tiny"].n_done == 9
    # a zero-shot base model and generation+parsing: unparsable answers are wrong, counted and kept
    gen = cli_tiny("eval", "--task", task_files / "cls.yaml", "--models", "tiny", "--scoring", "generate",
                   "--max-new-tokens", "3", "--rerun").stdout
    assert "UNPARSED" in gen


@pytest.mark.parametrize("text,needle", [
    ("kind: poetry\ndata: test.jsonl\n", "unknown task kind 'poetry'"),
    ("kind: classification\ndata: test.jsonl\nmetrics: [accuracy, bleu]\n", "unknown metric(s) for classification tasks: bleu"),
    ("kind: classification\ndata: test.jsonl\nwhatever: 1\n", "unknown key 'whatever'"),
    ("kind: classification\ndata: test.jsonl\nlimit: many\n", "field 'limit': expected int"),
    ("kind: classification\n", "field 'data': missing"),
    ("kind: classification\ndata: test.jsonl\nlabels: [positive, negative]\n", "labels in the test set that the task does not list: neutral"),
    ("kind: multiple_choice\ndata: bad-mc.jsonl\n", "bad-mc.jsonl:2: field 'answer': 'E' is not one of the choices"),
    ("kind: judge\ndata: gen.jsonl\n", "field 'judge.model'"),
    ("kind: dialogue\ndata: dlg.jsonl\nmatch: fuzzy\n", "unknown match 'fuzzy'"),
    ("kind: classification\ndata: nowhere.jsonl\n", "nowhere.jsonl: file not found"),
])
def test_bad_tasks_say_what_and_where(cli_tiny: CLI, task_files, text, needle):
    write_jsonl(task_files / "bad-mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "A"},
                                              {"question": "q", "choices": ["a", "b"], "answer": "E"}])
    (task_files / "bad.yaml").write_text(text)
    p = cli_tiny("eval", "--task", task_files / "bad.yaml", "--models", "tiny", ok=False)
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_bad_candidates(cli_tiny: CLI, task_files):
    p = cli_tiny("eval", "--task", task_files / "gen.yaml", "--models", "tfidf", ok=False)
    assert "does not generate text" in p.stderr
    p = cli_tiny("eval", "--task", task_files / "mc.yaml", "--models", "tiny", "--baselines", "magic", ok=False)
    assert "unknown baseline 'magic'" in p.stderr
    (task_files / "notrain.yaml").write_text("kind: classification\ndata: test.jsonl\n")
    p = cli_tiny("eval", "--task", task_files / "notrain.yaml", "--models", "tfidf", ok=False)
    assert "training set" in p.stderr and "train:" in p.stderr
    p = cli_tiny("eval", "--task", task_files / "mc.yaml", "--models", "nope", ok=False)
    assert "nope" in p.stderr


def test_interrupted_eval_keeps_items_and_continues(cli_tiny: CLI, tmp_path, home):
    write_jsonl(tmp_path / "long.jsonl", [{"prompt": f"Tell me about product {i}", "reference": "It is good."}
                                          for i in range(160)])
    (tmp_path / "long.yaml").write_text("kind: generation\ndata: long.jsonl\nmax_new_tokens: 24\nbatch_size: 2\n")
    env = {**os.environ, "MODELMILL_HOME": str(home)}
    proc = subprocess.Popen([*MODELMILL, "eval", "--task", tmp_path / "long.yaml", "--models", "tiny"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    items = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((home / "evals").glob("*/items.jsonl")) if (home / "evals").is_dir() else []
        if found and found[0].read_text().count("\n") >= 16:
            items = found[0]
            break
        time.sleep(0.05)
    assert items is not None, "no chunk was written in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    assert "interrupted after" in err and "run the same command again" in err
    kept = items.read_text().count("\n")
    assert 16 <= kept < 160
    with open(items, "a") as f:  # a line cut by a crash mid-write
        f.write('{"i": 159, "gold": "It is')
    out = cli_tiny("eval", "--task", tmp_path / "long.yaml", "--models", "tiny")
    assert f"continuing, {kept} of 160 items already scored" in out.stderr
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    assert sorted(r["i"] for r in lines) == list(range(160))  # each item once
    assert lines[0]["input"] == "user: Tell me about product 0"  # what the model was shown, for reports
    assert _rows(out.stdout)[0][-2] == "160"

    # --rerun interrupted: the finished result stays as it was
    before = items.read_text()
    proc = subprocess.Popen([*MODELMILL, "eval", "--task", tmp_path / "long.yaml", "--models", "tiny", "--rerun"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    side = items.parent.with_name(items.parent.name + ".rerun") / "items.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (side.is_file() and side.read_text().count("\n") >= 16):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5 and "the stored result is unchanged" in err, err
    assert items.read_text() == before
    assert " 160 " in cli_tiny("leaderboard", "--task", "long").stdout


def test_labels_come_from_the_whole_set_not_the_limit(home, task_files):
    from modelmill.evaluate.tasks import load_items, task_from_dict
    from modelmill.store import open_store

    rows = [json.loads(x) for x in (task_files / "test.jsonl").read_text().splitlines()]
    write_jsonl(task_files / "sorted.jsonl", sorted(rows, key=lambda r: r["label"]))
    spec = task_from_dict({"kind": "classification", "data": str(task_files / "sorted.jsonl"), "limit": 3})
    data = load_items(open_store(), spec)
    assert [it["label"] for it in data.items] == ["negative"] * 3
    assert data.labels == ["negative", "neutral", "positive"]


def test_scorecard(cli_tiny: CLI, task_files):
    cli_tiny("eval", "--task", task_files / "cls.yaml", "--models", "tiny,tfidf")
    cli_tiny("eval", "--task", task_files / "mc.yaml", "--models", "tiny")
    card = task_files / "card.yaml"
    card.write_text("dimensions:\n  knowledge: [mc]\n  business: {cls: 2}\nweights: {business: 3}\n")
    out = cli_tiny("scorecard", "--config", card).stdout
    assert "KNOWLEDGE" in out and "BUSINESS" in out and "OVERALL" in out
    tiny = next(line for line in out.splitlines() if line.startswith("tiny "))
    tfidf = next(line for line in out.splitlines() if line.startswith("tfidf-lr"))
    assert "(partial)" in tfidf and "(partial)" not in tiny
    card.write_text("dimensions:\n  knowledge: {mc: -1}\n")
    assert "dimensions.knowledge" in cli_tiny("scorecard", "--config", card, ok=False).stderr


def test_forgetting_after_training_and_grid(cli_tiny: CLI, task_files, home):
    cli_tiny("data", "import", task_files / "train.jsonl", "--name", "rev")
    out = cli_tiny("train", "--base", "tiny", "--data", "rev", "--name", "rev-lora", "--max-steps", "2",
                   "--batch-size", "4", "--forgetting-task", task_files / "mc.yaml").stdout
    assert "forgetting on mc (6 items, accuracy): base" in out and "delta" in out
    shown = json.loads(cli_tiny("adapters", "show", "rev-lora", "--json").stdout)
    assert "mc" in shown["metrics"]["forgetting"]

    args = ["grid", "--bases", "tiny", "--data", "rev", "--methods", "lora-r4,lora-r8", "--task",
            task_files / "cls.yaml", "--max-steps", "2", "--batch-size", "4", "--baselines", "zero-shot,tfidf"]
    out = cli_tiny(*args).stdout
    assert "[1/2] rev-tiny-lora-r4: training" in out and "[2/2] rev-tiny-lora-r8: training" in out
    names = [r[1] for r in _rows(out.split("grid on task")[1])]
    assert sorted(names) == ["tfidf-lr", "tiny", "tiny:rev-tiny-lora-r4", "tiny:rev-tiny-lora-r8"]
    summary = out.split("grid on task")[1]
    assert re.search(r"^winner: rev-tiny-lora-r[48] \(base tiny\), accuracy \d\.\d{3}$", summary, re.M), summary
    assert re.search(r"^  base tiny: best \d\.\d{3} \(rev-tiny-lora-r[48]\), zero-shot \d\.\d{3}$", summary, re.M)
    assert re.search(r"^  best baseline tfidf-lr \d\.\d{3}: the winner is \d+\.\d points (above|below) it$",
                     summary, re.M)
    assert json.loads(cli_tiny("adapters", "show", "rev-tiny-lora-r8", "--json").stdout)["config"]["lora_r"] == 8
    again = cli_tiny(*args)
    assert again.stdout.count("trained already, skipped") == 2 and "reusing the result" in again.stderr
    p = cli_tiny(*[a if a != "2" else "3" for a in args], ok=False)  # other settings, same names
    assert "exists but was trained with other settings" in p.stderr
    p = cli_tiny("grid", "--bases", "tiny", "--data", "rev", "--methods", "lora-rx", "--task", task_files / "cls.yaml",
                 ok=False)
    assert "unknown method 'lora-rx'" in p.stderr
    # an unknown base or dataset is named before any cell trains
    p = cli_tiny("grid", "--bases", "tiny,ghost", "--data", "rev", "--methods", "lora-r2", "--task",
                 task_files / "cls.yaml", "--max-steps", "1", ok=False)
    assert p.returncode == 3 and "--bases: unknown model 'ghost'" in p.stderr and "training" not in p.stdout
    p = cli_tiny("grid", "--bases", "tiny", "--data", "rev,nodata", "--methods", "lora-r2", "--task",
                 task_files / "cls.yaml", "--max-steps", "1", ok=False)
    assert "--data: unknown dataset 'nodata'" in p.stderr and "training" not in p.stdout
    p = cli_tiny("grid", "--bases", "tiny", "--data", "rev", "--methods", "lora-r2", "--task", task_files / "mc.yaml",
                 "--baselines", "classical", "--max-steps", "1", ok=False)
    assert "--baselines: there is no classical baseline for multiple_choice" in p.stderr and "training" not in p.stdout
    assert "rev-tiny-lora-r2" not in cli_tiny("adapters", "list").stdout


@pytest.mark.skipif(not (SHARED_DATA / "mmlu" / "test.jsonl").is_file(), reason="needs ../shared/data/mmlu")
def test_mmlu_file_reads_as_multiple_choice(cli_tiny: CLI, tmp_path):
    (tmp_path / "mmlu.yaml").write_text(f"kind: multiple_choice\ndata: {SHARED_DATA / 'mmlu' / 'test.jsonl'}\nlimit: 8\n")
    out = cli_tiny("eval", "--task", tmp_path / "mmlu.yaml", "--models", "tiny").stdout
    assert "8 items" in out


def test_remote_endpoint_as_candidate_and_judge_and_failing_mid_run(cli_tiny: CLI, task_files, tmp_path, home):
    """A real `modelmill serve` stands in for a commercial endpoint: labels are parsed from its text;
    when it dies part-way the scored items are kept and the same command continues at a new address."""
    from conftest import Server

    server = Server(home)
    try:
        cli_tiny("models", "add", "far", "--endpoint", server.url + "/v1", "--remote-model", "tiny")
        out = cli_tiny("eval", "--task", task_files / "cls.yaml", "--models", "far,tiny", "--max-new-tokens", "4").stdout
        rows = {r[1]: r for r in _rows(out)}
        assert rows["far"][2] == "remote" and rows["tiny"][2] == "model"
        (task_files / "rj.yaml").write_text("kind: judge\ndata: gen.jsonl\nmax_new_tokens: 4\njudge: {model: far}\n")
        assert "SCORE" in cli_tiny("eval", "--task", task_files / "rj.yaml", "--models", "tiny").stdout

        write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"Describe item {i}", "reference": "fine"} for i in range(80)])
        (tmp_path / "many.yaml").write_text("kind: generation\ndata: many.jsonl\nmax_new_tokens: 16\nbatch_size: 2\n")
        env = {**os.environ, "MODELMILL_HOME": str(home)}
        proc = subprocess.Popen([*MODELMILL, "eval", "--task", tmp_path / "many.yaml", "--models", "far"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = [p for p in (home / "evals").glob("*/items.jsonl") if "Describe item" in _first_gold_prompt(p)]
            if found and found[0].read_text().count("\n") >= 16:
                break
            time.sleep(0.05)
    finally:
        server.stop()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 5, err
    assert "stopped after" in err and "(kept)" in err and "far" in err
    kept = found[0].read_text().count("\n")
    assert 16 <= kept < 80
    server = Server(home)
    try:
        cli_tiny("models", "remove", "far")
        cli_tiny("models", "add", "far", "--endpoint", server.url + "/v1", "--remote-model", "tiny")
        out = cli_tiny("eval", "--task", tmp_path / "many.yaml", "--models", "far")
    finally:
        server.stop()
    assert f"continuing, {kept} of 80 items already scored" in out.stderr
    assert _rows(out.stdout)[0][-2] == "80"


def _first_gold_prompt(items_file) -> str:
    """Items don't store prompts; the result row names its data. Match the folder by that."""
    from modelmill.store import open_store
    from modelmill.store.tables import EvalResult
    from sqlalchemy import select

    with open_store().session() as s:
        row = s.scalars(select(EvalResult).where(EvalResult.path == str(items_file.parent))).one_or_none()
        return "Describe item" if row is not None and row.dataset.endswith("many.jsonl") else ""
