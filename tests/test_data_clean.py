"""clean(): empty records, exact and near duplicates (English and Chinese), and its checks."""

import pytest

from modelmill.data import clean, record_text
from modelmill.errors import InputError

BASE = ("The quick brown fox jumps over the lazy dog near the river bank while the farmer "
        "watches from the old wooden porch and drinks his morning coffee slowly.")


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_record_text_per_kind():
    assert record_text(chat("q", "a"), "chat") == "q\na"
    assert record_text({"prompt": [{"role": "user", "content": "p"}], "chosen": "c", "rejected": "r"},
                       "preference") == "p\nc\nr"
    assert record_text({"text": "t", "label": "x", "meta": {}}, "classification") == "t"


def test_empty_and_exact_duplicates():
    records = [chat("q1", "a1"), chat("q2", "  "), chat("  ", "a3"), chat("q1", "a1"), chat("q4", "a4")]
    result = clean(records, "chat", near_dup_threshold=None)
    assert result.kept == [records[0], records[4]]
    assert result.dropped == [(2, "empty"), (3, "empty"), (4, "exact duplicate of record 1")]


def test_exact_duplicate_with_another_label_says_so():
    records = [{"text": "same", "label": "pos", "meta": {}}, {"text": "same", "label": "neg", "meta": {}},
               {"text": "", "label": "pos", "meta": {}}]
    result = clean(records, "classification")
    assert result.dropped == [(2, "exact duplicate of record 1, labelled 'pos' there and 'neg' here"),
                              (3, "empty")]


def test_near_duplicates():
    near = BASE.replace("slowly", "slowly!")
    other = "A completely different sentence about databases, indexes and query planning in PostgreSQL."
    records = [{"text": BASE}, {"text": other}, {"text": near}]
    result = clean(records, "text")
    assert result.kept == records[:2]
    (n, reason), = result.dropped
    assert n == 3 and reason.startswith("near duplicate of record 1 (jaccard 0.9")
    # a stricter threshold keeps it
    assert clean(records, "text", near_dup_threshold=0.999).dropped == []


def test_chinese_near_duplicates():
    a = "这家酒店的服务非常好，房间干净整洁，早餐种类丰富，地理位置也很方便，下次出差还会选择这里入住。"
    b = a.replace("下次出差还会选择这里入住。", "下次出差还会选择这里入住！")
    c = "这本书的内容很一般，印刷质量也不太好，纸张很薄，快递送得倒是挺快的，总体来说不推荐购买。"
    result = clean([{"text": a, "label": "positive", "meta": {}}, {"text": c, "label": "negative", "meta": {}},
                    {"text": b, "label": "positive", "meta": {}}], "classification")
    assert len(result.kept) == 2
    assert result.dropped[0][0] == 3 and result.dropped[0][1].startswith("near duplicate of record 1")


def test_seed_makes_it_deterministic():
    records = [{"text": BASE}, {"text": BASE + " Yes."}, {"text": "Something else entirely, unrelated."}]
    assert clean(records, "text", seed=1).dropped == clean(records, "text", seed=1).dropped


def test_argument_checks():
    with pytest.raises(InputError, match="--max-tokens: needs a tokenizer"):
        clean([{"text": "a"}], "text", max_tokens=10)
    with pytest.raises(InputError, match="--near-dup-threshold"):
        clean([{"text": "a"}], "text", near_dup_threshold=1.5)
