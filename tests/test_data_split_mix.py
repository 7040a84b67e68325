"""split() into train/test (stratified, deterministic) and mix() of several sources."""

from collections import Counter

import pytest

from modelmill.data import classification_prompt, mix, split
from modelmill.errors import InputError


def labelled(counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} {i}", "label": label, "meta": {}} for label, n in counts.items() for i in range(n)]


def chats(n, tag="c"):
    return [{"messages": [{"role": "user", "content": f"{tag} q{i}"},
                          {"role": "assistant", "content": f"{tag} a{i}"}]} for i in range(n)]


# ---- split ------------------------------------------------------------------------------

def test_split_sizes_and_determinism():
    records = chats(100)
    train, test = split(records, test_size=0.2, seed=3)
    assert (len(train), len(test)) == (80, 20)
    assert sorted(map(str, train + test)) == sorted(map(str, records))
    assert split(records, test_size=0.2, seed=3) == (train, test)
    assert split(records, test_size=0.2, seed=4)[1] != test
    assert len(split(records, test_size=7)[1]) == 7
    assert len(split(records[:5], test_size=0.01)[1]) == 1  # never an empty test set


def test_split_keeps_input_order():
    records = chats(20)
    train, test = split(records, test_size=0.25)
    assert train == [r for r in records if r in train] and test == [r for r in records if r in test]


def test_split_stratifies_by_label():
    records = labelled({"pos": 90, "neg": 8, "rare": 2, "single": 1})
    train, test = split(records, test_size=0.1, kind="classification")
    assert len(test) == 10
    test_labels, train_labels = Counter(r["label"] for r in test), Counter(r["label"] for r in train)
    assert test_labels["rare"] == 1 and train_labels["rare"] == 1
    assert test_labels["neg"] >= 1 and train_labels["neg"] >= 1
    assert train_labels["single"] == 1
    assert test_labels["pos"] >= 8
    # inferred from the records when kind is not given
    assert split(records, test_size=0.1) == (train, test)
    assert len(split(records, test_size=0.1, stratify=False)[1]) == 10


def test_split_stratified_with_fewer_test_slots_than_labels():
    records = labelled({"a": 10, "b": 10, "c": 10, "d": 2})
    train, test = split(records, test_size=3, kind="classification")
    assert len(test) == 3 and len({r["label"] for r in test}) == 3


@pytest.mark.parametrize("size", [0, 1.0, 1.5, -1, 100, "0.1", True])
def test_split_bad_test_size(size):
    with pytest.raises(InputError) as e:
        split(chats(100), test_size=size)
    assert e.value.field == "--test-size" and str(e.value).startswith("--test-size:")


# ---- mix --------------------------------------------------------------------------------

def test_mix_without_size_uses_the_most_records_without_repeats():
    domain = labelled({"pos": 30, "neg": 10})
    general = chats(100, "g")
    mixed = mix([("domain", domain, "classification", 3), ("general", general, "chat", 1)], seed=1)
    sources = Counter(r["meta"]["source"] for r in mixed)
    assert sources == {"domain": 40, "general": 13}  # 40 / 0.75 = 53 in all; 53 - 40 = 13
    assert mixed.warnings == []
    assert len({str(r["messages"]) for r in mixed}) == len(mixed)
    first_domain = next(r for r in mixed if r["meta"]["source"] == "domain")
    assert first_domain["messages"][0]["content"].startswith(
        classification_prompt("", ["neg", "pos"]).split("Text:")[0])
    assert first_domain["messages"][1]["content"] in {"pos", "neg"}


def test_mix_with_size_repeats_a_small_source_and_warns(caplog):
    mixed = mix([("small", chats(5, "s"), "chat", 0.5), ("big", chats(200, "b"), "chat", 0.5)], size=40, seed=0)
    assert len(mixed) == 40
    assert Counter(r["meta"]["source"] for r in mixed) == {"small": 20, "big": 20}
    assert len(mixed.warnings) == 1 and "'small' has 5 records but its share is 20" in mixed.warnings[0]
    assert "records repeat" in caplog.text


def test_mix_is_deterministic_and_shuffled():
    sources = [("a", chats(50, "a"), "chat", 1), ("b", chats(50, "b"), "chat", 1)]
    one, two = mix(sources, seed=7), mix(sources, seed=7)
    assert one == two and len(one) == 100
    assert [r["meta"]["source"] for r in one] != ["a"] * 50 + ["b"] * 50
    assert mix(sources, seed=8) != one


def test_mix_keeps_meta_and_leaves_inputs_alone():
    rec = {"messages": chats(1)[0]["messages"], "meta": {"id": 9}}
    mixed = mix([("x", [rec], "chat", 1)])
    assert mixed[0]["meta"] == {"id": 9, "source": "x"} and rec["meta"] == {"id": 9}


@pytest.mark.parametrize("kind", ["text", "preference"])
def test_mix_refuses_kinds_that_are_not_chat(kind):
    with pytest.raises(InputError, match=f"source 'corpus' is {kind} data"):
        mix([("chat", chats(3), "chat", 1), ("corpus", [{"text": "x"}], kind, 1)])


def test_mix_bad_ratio_and_size():
    with pytest.raises(InputError, match="source 'a': ratio must be a finite number > 0"):
        mix([("a", chats(3), "chat", 0)])
    with pytest.raises(InputError, match="source 'b': ratio must be a finite number > 0"):
        mix([("a", chats(3), "chat", 1), ("b", chats(3), "chat", float("inf"))])


def test_mix_refuses_a_source_whose_share_rounds_to_nothing():
    with pytest.raises(InputError, match="source 'b': its share of 10 records rounds to 0") as e:
        mix([("a", chats(10), "chat", 1), ("b", chats(10), "chat", 0.01)], size=10)
    assert "--size" in e.value.fix
    with pytest.raises(InputError, match="--size"):
        mix([("a", chats(3), "chat", 1)], size=0)
