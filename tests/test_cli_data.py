"""`modelmill data ...` end to end: import, versions, stats, split, clean, mix, and bad input."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, CLI, write_jsonl


def _versions(home, name):
    d = home / "datasets" / name
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_import_versions_by_content(cli: CLI, home, reviews_file):
    out = cli("data", "import", reviews_file, "--name", "reviews").stdout
    assert "imported reviews@" in out and "24 classification records" in out
    assert "labels: negative, neutral, positive" in out
    again = cli("data", "import", reviews_file, "--name", "reviews").stdout
    assert "unchanged" in again
    assert len(_versions(home, "reviews")) == 1
    rows = [json.loads(l) for l in reviews_file.read_text().splitlines()][:-1]
    write_jsonl(reviews_file, rows)
    cli("data", "import", reviews_file, "--name", "reviews")
    assert len(_versions(home, "reviews")) == 2
    listed = cli("data", "list", "--all").stdout
    assert listed.count("reviews ") == 2
    shown = cli("data", "show", "reviews").stdout
    assert "23 records" in shown and "versions:" in shown and '"label"' in shown


def test_reimporting_an_older_version_makes_it_current_again(cli: CLI, tmp_path, reviews_file):
    """A reverted file re-imported said "unchanged" while NAME still resolved to the newer version."""
    cli("data", "import", reviews_file, "--name", "reviews")
    original = reviews_file.read_text()
    reviews_file.write_text("".join(original.splitlines(keepends=True)[:-1]))
    cli("data", "import", reviews_file, "--name", "reviews")
    reviews_file.write_text(original)
    out = cli("data", "import", reviews_file, "--name", "reviews").stdout
    assert "unchanged, already stored as reviews@" in out and "now the current version" in out
    assert "24 records" in cli("data", "show", "reviews").stdout.splitlines()[0]


def test_reports_for_clean_that_drops_everything_and_import_help(cli: CLI, tmp_path):
    f = write_jsonl(tmp_path / "blank.jsonl", [{"text": " ", "label": "a"}, {"text": "", "label": "b"}])
    cli("data", "import", f, "--name", "blank")
    p = cli("data", "clean", "blank", ok=False)
    assert "the cleaning filters dropped every record (0 over length, 2 empty)" in p.stderr
    assert "--name" not in p.stderr
    help_ = cli("data", "import", "--help").stdout
    assert "openai-dpo" in help_ and "feedback" in help_


def test_import_warns_about_the_fields_it_does_not_train_on(cli: CLI, tmp_path):
    """A record with text and entities is read as plain text: the import says so, naming the field."""
    rows = [{"text": f"张伟在北京工作了{i}年。", "entities": {"person": ["张伟"], "city": ["北京"]}} for i in range(3)]
    rows.append({"text": "没有实体。"})
    p = cli("data", "import", write_jsonl(tmp_path / "ner.jsonl", rows), "--name", "ner")
    assert "4 text records" in p.stdout
    assert "warning: the text format reads 'text'" in p.stderr and "'entities' (3 of 4 records)" in p.stderr
    assert "alpaca" in p.stderr  # and how to import it so that it is trained on
    clean = cli("data", "import", write_jsonl(tmp_path / "plain.jsonl", [{"text": "just text"}]), "--name", "plain")
    assert "warning" not in clean.stderr


@pytest.mark.parametrize("fmt,row,kind", [
    ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, "chat"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "chat"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "chat"),
    ("preference", {"prompt": "hi", "chosen": "hello", "rejected": "go away"}, "preference"),
    ("text", {"text": "Plain domain text for continued pre-training."}, "text"),
])
def test_every_format_autodetected(cli: CLI, tmp_path, fmt, row, kind):
    f = write_jsonl(tmp_path / f"{fmt}.jsonl", [row, row])
    out = cli("data", "import", f, "--name", fmt).stdout
    assert f"{kind} records ({fmt})" in out


def test_csv_with_column_mapping(cli: CLI, tmp_path):
    f = tmp_path / "tickets.csv"
    f.write_text("ticket,team\nPrinter is broken,it\nRefund please,billing\nVPN down,it\n", encoding="utf-8")
    p = cli("data", "import", f, "--name", "tickets", "--format", "classification", ok=False)
    assert "tickets.csv:2" in p.stderr and "'text'" in p.stderr
    out = cli("data", "import", f, "--name", "tickets", "--field", "ticket=text", "--field", "team=label").stdout
    assert "3 classification records" in out and "labels: billing, it" in out


@pytest.mark.parametrize("content,needles", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": "e", "output": \n',
     ["bad.jsonl:3", "JSON"]),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', ["bad.jsonl:2", "'output'"]),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n', ["bad.jsonl:2", "'output'", "string"]),
    ("", ["bad.jsonl", "no records"]),
])
def test_bad_json_lines_name_file_line_field(cli: CLI, home, tmp_path, content, needles):
    f = tmp_path / "bad.jsonl"
    f.write_text(content, encoding="utf-8")
    p = cli("data", "import", f, "--name", "bad", ok=False)
    assert p.returncode == 2
    line = p.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, "one line"
    for n in needles:
        assert n in line, (n, line)
    assert "Fix:" in line
    assert not (home / "datasets" / "bad").exists()
    assert "bad" not in cli("data", "list").stdout


def test_non_utf8_and_unknown_format(cli: CLI, tmp_path):
    f = tmp_path / "gbk.jsonl"
    f.write_bytes('{"text": "ok", "label": "a"}\n'.encode() + '{"text": "好", "label": "b"}\n'.encode("gbk"))
    p = cli("data", "import", f, "--name", "gbk", ok=False)
    assert "gbk.jsonl:2" in p.stderr and "UTF-8" in p.stderr
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": "x", "label": "a"}])
    p = cli("data", "import", good, "--name", "g", "--format", "yaml", ok=False)
    assert "yaml" in p.stderr and "classification" in p.stderr
    p = cli("data", "show", "missing", ok=False)
    assert p.returncode == 3 and "unknown dataset 'missing'" in p.stderr


def test_split_stratified_and_seeded(cli: CLI, reviews_file):
    cli("data", "import", reviews_file, "--name", "reviews")
    out = cli("data", "split", "reviews", "--test-size", "0.25", "--seed", "7").stdout
    assert "reviews-train@" in out and "18 records" in out
    assert "reviews-test@" in out and "6 records" in out
    again = cli("data", "split", "reviews", "--test-size", "0.25", "--seed", "7").stdout
    assert again == out.replace(" records\n", " records (now the current version)\n")  # same seed, same versions
    shown = cli("data", "show", "reviews-test", "-n", "10").stdout
    labels = [json.loads(l)["label"] for l in shown.splitlines() if l.startswith("{")]
    assert sorted(set(labels)) == ["negative", "neutral", "positive"]
    p = cli("data", "split", "reviews", "--test-size", "0", ok=False)
    assert "--test-size" in p.stderr


def test_clean_reports_what_and_why(cli: CLI, tmp_path):
    rows = [{"text": "The pills helped with my back pain a lot, thank you doctor.", "label": "positive"},
            {"text": "The pills helped with my back pain a lot, thank you doctor.", "label": "positive"},
            {"text": "The pills helped with my back pain a lot, thank you doctor!", "label": "positive"},
            {"text": "   ", "label": "neutral"},
            {"text": "Dizzy and tired all the time.", "label": "negative"}]
    f = write_jsonl(tmp_path / "dirty.jsonl", rows)
    cli("data", "import", f, "--name", "dirty")
    out = cli("data", "clean", "dirty", "--name", "tidy").stdout
    assert "exact duplicate of record 1" in out
    assert "near duplicate of record 1" in out
    assert "empty" in out
    assert "kept 2 of 5 records -> tidy@" in out


def test_clean_over_length_uses_the_model_tokenizer(cli_tiny: CLI, tmp_path):
    rows = [{"text": "short one", "label": "a"}, {"text": "word " * 400, "label": "b"}]
    cli_tiny("data", "import", write_jsonl(tmp_path / "l.jsonl", rows), "--name", "long")
    out = cli_tiny("data", "clean", "long", "--max-tokens", "100", "--model", "tiny").stdout
    assert "over length" in out and "kept 1 of 2" in out


def test_stats_with_model_tokenizer(cli_tiny: CLI, reviews_file):
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    out = cli_tiny("data", "stats", "reviews", "--model", "tiny").stdout
    assert "records: 24 (classification)" in out
    assert "positive" in out and "37.5%" in out and "25.0%" in out
    assert "tokens" in out
    # every ready base: its tokens per character on this data (the tiny model's tokenizer is trained on English)
    assert "tokens per character, by base model" in out
    tpc = float(out.split("tokens per character, by base model")[1].split("tiny")[1].split()[0])
    assert 0.1 < tpc < 1.0


def test_mix_by_ratio(cli: CLI, tmp_path, reviews_file):
    general = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(30)]
    cli("data", "import", write_jsonl(tmp_path / "general.jsonl", general), "--name", "general")
    cli("data", "import", reviews_file, "--name", "domain")
    out = cli("data", "mix", "mixed", "--from", "general:0.3", "--from", "domain:0.7").stdout
    # the largest mix without repeats: 24 domain records are 70%, so 10 general ones
    assert "mixed@" in out and "34 records" in out
    assert "general@" in out and "domain@" in out
    p = cli("data", "mix", "m2", "--from", "general", ok=False)
    assert "--from" in p.stderr and "DATASET:RATIO" in p.stderr


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not there (a fresh clone)")
def test_import_real_reviews(cli: CLI):
    out = cli("data", "import", SHARED_DATA / "reviews-en-drugs" / "train.jsonl", "--name", "drugs").stdout
    assert "600 classification records" in out and "labels: negative, neutral, positive" in out
    out = cli("data", "import", SHARED_DATA / "sharegpt-sample1000.json", "--name", "chat", "--skip-invalid").stdout
    assert "988 chat records (sharegpt)" in out
