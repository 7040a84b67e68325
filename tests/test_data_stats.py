"""stats() and format_stats() without a tokenizer (character lengths)."""

from modelmill.data import format_stats, stats


def test_chat_stats():
    records = [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"},
                      {"role": "assistant", "content": "cd"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "abcdefgh"}]},
    ]
    s = stats(records, "chat")
    assert s["count"] == 2 and s["turns"] == {"min": 2, "mean": 3.0, "max": 4}
    assert s["length"]["unit"] == "chars" and (s["length"]["min"], s["length"]["max"]) == (7, 14)
    assert "labels" not in s


def test_classification_stats_and_histogram():
    records = [{"text": "x" * n, "label": lab, "meta": {}}
               for n, lab in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (10, "b"), (100, "c")]]
    s = stats(records, "classification", bins=4)
    assert s["labels"]["counts"] == {"a": 3, "b": 2, "c": 1}
    assert s["labels"]["shares"]["a"] == 0.5
    length = s["length"]
    assert (length["min"], length["max"], length["p50"]) == (1, 100, 3.5)
    assert length["mean"] == 20
    assert length["histogram"]["edges"] == [1, 25.75, 50.5, 75.25, 100]
    assert length["histogram"]["counts"] == [5, 0, 0, 1]
    text = format_stats(s)
    assert "records: 6 (classification)" in text and "50.0%" in text and "█" in text
    assert "length (chars): min 1" in text


def test_stats_of_nothing_and_of_equal_lengths():
    assert stats([], "text") == {"count": 0, "kind": "text"}
    assert format_stats(stats([], "text")) == "records: 0 (text)"
    s = stats([{"text": "abc"}, {"text": "xyz"}], "text")
    assert s["length"]["histogram"] == {"edges": [3, 3], "counts": [2]}
    assert "3–3" in format_stats(s)
