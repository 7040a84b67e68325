"""Reading files (JSONL, JSON, CSV, Parquet), loading them as canonical records, and the
errors a person gets for bad input; hashing and atomic writes."""

import json
import os
from pathlib import Path

import pytest

from modelmill.data import (content_hash, format_stats, load_file, read_jsonl, read_records, stats,
                            write_jsonl_atomic)
from modelmill.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def error_of(path, **kw) -> InputError:
    with pytest.raises(InputError) as e:
        load_file(path, **kw)
    return e.value


# ---- readers ----------------------------------------------------------------------------

def test_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n', encoding="utf-8")
    assert list(read_records(p)) == [(1, {"text": "a"}), (4, {"text": "b"})]


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n', encoding="utf-8")
    e = error_of(p)
    assert str(e).startswith(f"{p}:3: not valid JSON: Expecting property name")
    assert e.line == 3 and "Fix:" in str(e)


def test_jsonl_line_not_an_object(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n["text", "b"]\n', encoding="utf-8")
    assert f"{p}:2: expected a JSON object, got a list" in str(error_of(p))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n", encoding="utf-8")
    e = error_of(p)
    assert str(e).startswith(f"{p}: no records.")


def test_non_utf8_names_line_and_iconv(tmp_path):
    p = tmp_path / "gbk.jsonl"
    p.write_bytes('{"text": "ok"}\n'.encode() + '{"text": "中文"}\n'.encode("gbk"))
    e = error_of(p)
    assert e.line == 2 and str(e).startswith(f"{p}:2: not UTF-8 text")
    assert "iconv -f GBK -t UTF-8" in e.fix


def test_non_utf8_in_csv(tmp_path):
    p = tmp_path / "gbk.csv"
    p.write_bytes(b"text,label\nfine,1\n" + "差".encode("gbk") + b",0\n")
    assert error_of(p).line == 3


def test_file_not_found_and_unknown_extension(tmp_path):
    assert "file not found" in str(error_of(tmp_path / "nope.jsonl"))
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"x")
    e = error_of(p)
    assert "unsupported file type '.xlsx'" in str(e) and ".jsonl, .json, .csv" in e.fix


def test_json_array_and_data_object(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"text": "x"}, {"text": "y"}]), encoding="utf-8")
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"version": 1, "data": [{"text": "x"}, {"text": "y"}]}), encoding="utf-8")
    assert list(read_records(a)) == list(read_records(b)) == [(1, {"text": "x"}), (2, {"text": "y"})]


def test_json_errors_name_the_record(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"text": "x"}, {"text": "y"}, {"text": 3}]), encoding="utf-8")
    assert str(error_of(p)).startswith(f"{p}:3: field 'text': expected a string, got an integer (in record 3)")
    p.write_text(json.dumps([{"text": "x"}, "y"]), encoding="utf-8")
    assert str(error_of(p)).startswith(f"{p}:2: expected a JSON object, got a string (in record 2)")
    p.write_text('{"text": "x"}\n{"text": "y"}\n', encoding="utf-8")
    assert "rename it to .jsonl" in error_of(p).fix


def test_csv_empty_cells_absent_and_row_lines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('instruction,input,output\nSay hi,,hi\n"Two\nlines",x,ok\nThird,,\n', encoding="utf-8")
    rows = list(read_records(p))
    assert rows[0] == (2, {"instruction": "Say hi", "output": "hi"})
    assert rows[1] == (3, {"instruction": "Two\nlines", "input": "x", "output": "ok"})
    assert rows[2] == (5, {"instruction": "Third"})
    e = error_of(p)  # the third row has no output
    assert str(e).startswith(f"{p}:5: field 'output': missing")


def test_csv_too_many_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text, label\na,1\nb,2,extra\n", encoding="utf-8")
    assert next(read_records(p)) == (2, {"text": "a", "label": "1"})
    assert str(error_of(p)).startswith(f"{p}:3: 3 cells but the header has 2")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None], "label": [0, 1, 1]}), p)
    assert list(read_records(p))[0] == (1, {"text": "a", "label": 0})
    e = error_of(p)  # row 3 has a null text
    assert str(e).startswith(f"{p}:3: field 'text': missing (in record 3)")
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), p)
    assert load_file(p).labels == ["0", "1"]


def test_csv_stray_quote_is_an_error_where_its_row_starts(tmp_path):
    """A quote that never closes used to swallow the next lines into one cell (3 rows read as 1)."""
    p = tmp_path / "d.csv"
    p.write_text('text,label\nfine,pos\n"Hmm not sure,neg\nworks fine,pos\nok,pos\n', encoding="utf-8")
    e = error_of(p)
    assert e.line == 3 and str(e).startswith(f"{p}:3: not readable as CSV") and "quote" in e.fix
    p.write_text('text,label\n"quoted" and not,pos\n', encoding="utf-8")  # the leading quote was dropped
    assert error_of(p).line == 2


def test_tsv_quotes_are_text(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('text\tlabel\n"Hmm... not sure\tneg\nworks fine\tpos\n', encoding="utf-8")
    assert load_file(p).records == [{"text": '"Hmm... not sure', "label": "neg", "meta": {}},
                                    {"text": "works fine", "label": "pos", "meta": {}}]


def test_csv_spaces_after_the_delimiter_are_not_part_of_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text, label\nGreat, positive\n"Bad, really", "negative"\n', encoding="utf-8")
    assert load_file(p).labels == ["negative", "positive"]
    assert load_file(p).records[1]["text"] == "Bad, really"


def test_csv_repeated_column_is_an_error(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label,text\na,pos,b\n", encoding="utf-8")
    e = error_of(p)
    assert str(e).startswith(f"{p}:1: column 'text' appears more than once") and "rename one" in e.fix


def test_csv_lines_after_blank_lines_and_long_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n\n\na,pos\n\nb,pos,extra\n", encoding="utf-8")
    assert str(error_of(p)).startswith(f"{p}:6: 3 cells but the header has 2")
    p.write_text("text,label\n" + "x" * 200_000 + ",pos\n", encoding="utf-8")  # over csv's default 128 KiB
    assert len(load_file(p).records[0]["text"]) == 200_000


def test_jsonl_line_holding_a_json_array_says_rename_to_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('[{"text": "a"}, {"text": "b"}]\n', encoding="utf-8")
    assert "rename the file to .json" in error_of(p).fix


# ---- load_file --------------------------------------------------------------------------

def test_auto_requires_every_record_to_fit_the_first(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", {"instruction": "a", "output": "b"}, {"text": "c"})
    e = error_of(p)
    assert str(e).startswith(f"{p}:2: field 'instruction': missing")


def test_named_format_and_unknown_format(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", {"text": "a", "label": "x"})
    assert load_file(p, format="text").records == [{"text": "a", "meta": {"label": "x"}}]
    e = error_of(p, format="nope")
    assert e.field == "--format" and "classification" in e.fix


def test_field_map_imports_other_columns_as_classification(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text("review,rating,shop\nLoved it,5,A\nMeh,3,B\nBad,1,A\nOkay,10,B\n", encoding="utf-8")
    data = load_file(p, field_map={"review": "text", "rating": "label"})
    assert (data.format, data.kind, data.source) == ("classification", "classification", str(p))
    assert data.records[0] == {"text": "Loved it", "label": "5", "meta": {"shop": "A"}}
    assert data.labels == ["1", "3", "5", "10"]
    e = error_of(p, field_map={"reveiw": "text"})
    assert e.field == "--field" and "column 'reveiw' is not in the header" in str(e)


def test_skip_invalid_keeps_going_and_lists_what_it_left_out(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
              {"conversations": [{"from": "gpt", "value": "only"}]},
              {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]})
    data = load_file(p, skip_invalid=True)
    assert len(data.records) == 2 and [n for n, _ in data.skipped] == [2]
    assert "has no user turn" in data.skipped[0][1]


def test_tabular_format_comes_from_the_header_not_the_first_row(tmp_path):
    """An empty label in row 1 used to make the whole file plain text, its labels moved to meta."""
    p = tmp_path / "d.csv"
    p.write_text("text,label\nfine,\nbad,neg\n", encoding="utf-8")
    e = error_of(p)
    assert str(e).startswith(f"{p}:2: field 'label': missing or empty")
    import pyarrow as pa
    import pyarrow.parquet as pq

    q = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [None, "x"]}), q)
    assert str(error_of(q)).startswith(f"{q}:1: field 'label': missing or empty")


def test_field_map_checks_the_header_or_every_record(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("ticket,team,shop\nPrinter broken,it,\nRefund please,billing,A\n", encoding="utf-8")
    data = load_file(p, field_map={"ticket": "text", "team": "label", "shop": "store"})
    assert data.records[1]["meta"] == {"store": "A"}
    p.write_text("ticket,team\nPrinter broken,\nRefund please,billing\n", encoding="utf-8")
    e = error_of(p, field_map={"ticket": "text", "team": "label"})  # no longer "not in the first record"
    assert str(e).startswith(f"{p}:2: field 'label': missing or empty")
    j = jsonl(tmp_path / "t.jsonl", {"ticket": "a", "team": "it"}, {"ticket": "b", "team": "it", "shop": "A"})
    data = load_file(j, field_map={"ticket": "text", "team": "label", "shop": "store"})
    assert data.kind == "classification" and data.records[1]["meta"] == {"store": "A"}
    e = error_of(j, field_map={"ticket": "text", "tema": "label"})
    assert e.field == "--field" and "column 'tema' is in no record" in str(e)
    j = jsonl(tmp_path / "t.jsonl", {"ticket": "a"}, {"ticket": "b", "team": "it"})
    assert error_of(j, field_map={"ticket": "text", "team": "label"}).line == 1  # a label was asked for


def test_odd_numeric_looking_labels(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", *({"text": str(i), "label": lab} for i, lab in enumerate(["--1", "²", "2", "-3"])))
    assert load_file(p).labels == ["-3", "2", "--1", "²"]


def test_labels_are_trimmed_and_one_class_is_not_spelled_two_ways(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", {"text": "a", "label": "pos"}, {"text": "b", "label": " pos "},
              {"text": "c", "label": "neg"})
    assert load_file(p).labels == ["neg", "pos"]
    p = jsonl(tmp_path / "e.jsonl", {"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
              {"text": "c", "label": "Pos"})
    with pytest.raises(InputError) as e:
        load_file(p)
    assert (e.value.line, e.value.field) == (3, "label")
    assert "'Pos' differs from 'pos' (line 1) only in case" in str(e.value)
    with pytest.raises(InputError, match="missing or empty"):
        load_file(jsonl(tmp_path / "f.jsonl", {"text": "a", "label": "  "}))


# ---- hashing and writing ----------------------------------------------------------------

def test_content_hash_ignores_key_order_not_content():
    a = [{"text": "é", "label": "1", "meta": {"x": 1, "y": 2}}]
    b = [{"meta": {"y": 2, "x": 1}, "label": "1", "text": "é"}]
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64
    assert content_hash(a) != content_hash([{**a[0], "label": "2"}])
    assert content_hash(a + a) != content_hash(a)


def test_write_read_roundtrip_and_no_temp_left(tmp_path):
    records = [{"text": "中文", "n": 1}, {"text": "b"}]
    path = write_jsonl_atomic(tmp_path / "sub" / "out.jsonl", records)
    assert read_jsonl(path) == records
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"n":1,"text":"中文"}'
    assert os.listdir(path.parent) == ["out.jsonl"]
    assert content_hash(read_jsonl(path)) == content_hash(records)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = write_jsonl_atomic(tmp_path / "out.jsonl", [{"text": "old"}])

    def broken():
        yield {"text": "new"}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, broken())
    assert read_jsonl(path) == [{"text": "old"}]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_read_jsonl_of_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("", encoding="utf-8")
    assert read_jsonl(p) == []


# ---- real data --------------------------------------------------------------------------

def test_real_drug_reviews():
    path = SHARED_DATA / "reviews-en-drugs" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    data = load_file(path)
    assert (data.format, data.kind, len(data.records)) == ("classification", "classification", 600)
    assert data.labels == ["negative", "neutral", "positive"]
    assert set(data.records[0]["meta"]) == {"drug", "condition"}
    s = stats(data.records, data.kind)
    assert sum(s["labels"]["counts"].values()) == 600 and len(s["labels"]["counts"]) == 3
    assert sum(s["length"]["histogram"]["counts"]) == 600
    assert "positive" in format_stats(s)


def test_real_sharegpt_sample():
    path = SHARED_DATA / "sharegpt-sample1000.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    e = error_of(path)  # record 141 holds only a system note
    assert str(e).startswith(f"{path}:141: field 'conversations': has no user turn (in record 141)")
    data = load_file(path, skip_invalid=True)
    assert (data.format, len(data.records), len(data.skipped)) == ("sharegpt", 988, 12)
    assert all(r["messages"][-1]["role"] == "assistant" for r in data.records)


def test_saving_the_content_of_an_older_version_makes_it_current_again(home):
    """What clean, split and mix save goes through this too: NAME must resolve to what was saved last."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.store import open_store

    cat = DatasetCatalog(open_store())
    old, _ = cat.save("d", [{"text": "a"}], "text", "text", None, {"op": "clean"})
    new, _ = cat.save("d", [{"text": "b"}], "text", "text", None, {"op": "clean"})
    assert cat.resolve("d").version == new.version
    again, created = cat.save("d", [{"text": "a"}], "text", "text", None, {"op": "clean"})
    assert not created and again.version == old.version
    assert cat.resolve("d").version == old.version and cat.list()[0].version == old.version
    assert len(cat.versions("d")) == 2
