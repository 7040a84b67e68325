"""Classification evaluation on a tiny random model: label log-likelihood scores against a
plain one-sequence-per-label computation, batching, truncation, parsing and metrics."""

import os

import pytest

from modelmill.data import classification_prompt, to_messages
from modelmill.evaluate import (classification_metrics, format_metrics, generate_labels, parse_label,
                                score_labels)
from modelmill.evaluate.classification import _can_pack

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# "positive" is a prefix of "positive-ish": the end-of-turn token keeps them apart.
LABELS = ["negative", "neutral", "positive", "positive-ish"]
TEXTS = ["great product, works well", "terrible. broke after a day", "it is fine I guess",
         "The quick brown fox jumps over the lazy dog. " * 6, "ok", "你好，这个产品的质量非常好",
         "Please reset my password.", "Thank you for your patience, the box was damaged", "meh"]
RECORDS = [{"text": t, "label": LABELS[i % len(LABELS)], "meta": {}} for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmill.models.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("m") / "tiny", hidden_size=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    # Random init leaves the tiny model's outputs nearly uniform; sharper weights make the
    # comparisons below mean something.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model, AutoTokenizer.from_pretrained(folder)


def naive_scores(model, tokenizer, record, labels):
    """Unbatched reference: for each label, render [user, assistant=label], run the whole
    thing once and add the log-probs of the tokens after the generation prompt."""
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": classification_prompt(record["text"], labels)}],
                                           tokenize=False, add_generation_prompt=True)
    scores = {}
    for label in labels:
        full = tokenizer.apply_chat_template(to_messages({**record, "label": label}, "classification", labels=labels),
                                             tokenize=False)
        assert full.startswith(prompt)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert ids[:len(p_ids)] == p_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        scores[label] = sum(logp[k - 1, ids[k]].item() for k in range(len(p_ids), len(ids)))
    return scores


@pytest.mark.parametrize("method", ["packed", "pairs"])
def test_scores_equal_naive_computation(tiny, method):
    model, tok = tiny
    rows = score_labels(model, tok, RECORDS, LABELS, batch_size=4, progress=False, method=method)
    assert len(rows) == len(RECORDS)
    for rec, row in zip(RECORDS, rows):
        assert row["gold"] == rec["label"] and row["pred"] in LABELS
        want = naive_scores(model, tok, rec, LABELS)
        assert row["scores"] == pytest.approx(want, abs=1e-4)
        assert row["pred"] == max(want, key=want.get)
    # The answers are not all alike: the check above compared something.
    assert len({round(v, 3) for r in rows for v in r["scores"].values()}) > len(LABELS)


def test_batching_and_padding_change_nothing(tiny):
    model, tok = tiny
    one = score_labels(model, tok, RECORDS, LABELS, batch_size=1, progress=False)
    seven = score_labels(model, tok, RECORDS, LABELS, batch_size=7, progress=False)
    pairs = score_labels(model, tok, RECORDS, LABELS, batch_size=5, progress=False, method="pairs")
    for a, b, c in zip(one, seven, pairs):
        assert a["pred"] == b["pred"] == c["pred"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
        assert a["scores"] == pytest.approx(c["scores"], abs=1e-4)


def test_auto_packs_for_plain_attention_and_keeps_mode(tiny):
    model, tok = tiny
    assert _can_pack(model, 100)
    model.train()
    try:
        score_labels(model, tok, RECORDS[:2], LABELS, progress=False)
        assert model.training
    finally:
        model.eval()


def test_peft_model(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    # init_lora_weights=False: the adapter changes the outputs, as a trained one would.
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    try:
        rows = score_labels(peft_model, tok, RECORDS[:3], LABELS, progress=False)
        for rec, row in zip(RECORDS[:3], rows):
            assert row["scores"] == pytest.approx(naive_scores(peft_model, tok, rec, LABELS), abs=1e-4)
        with peft_model.disable_adapter():
            assert rows[0]["scores"] != pytest.approx(naive_scores(peft_model, tok, RECORDS[0], LABELS), abs=1e-3)
    finally:
        peft_model.unload()  # give the shared fixture its plain model back


def test_long_text_is_shortened_like_training(tiny):
    from modelmill.data.chat_tokens import tokenize_record

    model, tok = tiny
    rec = {"text": "The dog sleeps in the sun. " * 40, "label": "positive-ish", "meta": {}}
    max_length = 80
    ex = tokenize_record(rec, "classification", tok, max_length, labels=LABELS)
    assert len(ex["input_ids"]) <= max_length and len(_short_text(ex, tok)) < len(rec["text"]) / 2
    rows = score_labels(model, tok, [rec], LABELS, max_length=max_length, progress=False)
    # The longest label decides the cut, so its sequence is exactly what training saw.
    assert rows[0]["scores"] == pytest.approx(naive_scores(model, tok, {**rec, "text": _short_text(ex, tok)}, LABELS),
                                              abs=1e-4)


def _short_text(ex, tok):
    """The text inside the training example's prompt (between 'Text: ' and the end of the user turn)."""
    rendered = tok.decode(ex["input_ids"])
    return rendered.split("Text: ", 1)[1].split("<|im_end|>", 1)[0]


def test_generate_labels_parses_or_counts_wrong(tiny):
    model, tok = tiny
    rows = generate_labels(model, tok, RECORDS[:3], LABELS, max_new_tokens=4, progress=False)
    assert [r["gold"] for r in rows] == [r["label"] for r in RECORDS[:3]]
    for r in rows:
        assert isinstance(r["output"], str)
        assert r["pred"] == parse_label(r["output"], LABELS)
    # A random model writes gibberish: whatever it wrote, the metrics take a None as wrong.
    m = classification_metrics([r["gold"] for r in rows], [None] * 3, LABELS)
    assert m["accuracy"] == 0 and m["unparsed"] == 3


def test_parse_label():
    assert parse_label("Positive", LABELS) == "positive"
    assert parse_label("The answer: POSITIVE-ish.", LABELS) == "positive-ish"
    assert parse_label("neutral, maybe negative", LABELS) == "neutral"
    assert parse_label("not sure", LABELS) is None
    assert parse_label("Positively", LABELS) == "positive"  # no whole word: a substring will do
    assert parse_label("rating 10", ["1", "10"]) == "10"
    assert parse_label("答案：负面", ["正面", "负面"]) == "负面"


def test_metrics_known_values():
    labels = ["a", "b", "c"]
    golds = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", None, "a"]
    m = classification_metrics(golds, preds, labels)
    assert m["n"] == 6 and m["unparsed"] == 1
    assert m["accuracy"] == pytest.approx(3 / 6)
    # a: P 2/3 R 2/3 F 2/3; b: P 1/2 R 1/2 F 1/2; c: 0
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]  # the None is in no column
    text = format_metrics("demo", m)
    assert "accuracy 0.500" in text and "macro-F1 0.389" in text and "unparsed 1" in text


def test_macro_f1_leaves_out_a_label_no_item_has_and_no_answer_names():
    """Labels come from the task (the training set, the spec): one the scored items lack and no
    answer names has no F1 to average (it used to count as 0: 0.267 here instead of 0.4)."""
    m = classification_metrics(["a", "a", "b"], ["a", "a", "a"], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # missed: counts
    # a label only predicted (a false positive) is a class of the average, with F1 0
    m = classification_metrics(["a", "a"], ["a", "c"], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2) and m["per_class"]["b"]["f1"] is None
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    text = format_metrics("demo", m)
    assert "macro-F1 0.333" in text and any(line.split()[:4] == ["b", "n/a", "n/a", "n/a"]
                                            for line in text.splitlines())


def test_metrics_perfect_and_errors():
    m = classification_metrics(["x", "y"], ["x", "y"], ["x", "y"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["confusion"] == [[1, 0], [0, 1]]
    with pytest.raises(Exception, match="gold labels not among"):
        classification_metrics(["z"], ["x"], ["x", "y"])


@pytest.mark.parametrize("method", ["packed", "pairs"])
def test_few_shot_turns_are_prompt_not_scored(tiny, method):
    """With example turns before the item, only the last answer is scored: the examples' answers
    are part of the prompt every label shares (they used to be summed in, and made every
    few-shot prompt a per-label suffix: 16x slower on SmolLM2)."""
    import torch

    model, tok = tiny
    shots = [("works great", "positive"), ("awful", "negative")]

    def messages(record, labels, label):
        turns = []
        for t, lab in shots:
            turns += [{"role": "user", "content": classification_prompt(t, labels)}, {"role": "assistant", "content": lab}]
        turns.append({"role": "user", "content": classification_prompt(record["text"], labels)})
        return turns + ([{"role": "assistant", "content": label}] if label is not None else [])

    rows = score_labels(model, tok, RECORDS[:4], LABELS, batch_size=3, progress=False, method=method, messages=messages)
    for rec, row in zip(RECORDS[:4], rows):
        prompt = tok.apply_chat_template(messages(rec, LABELS, None), tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        want = {}
        for label in LABELS:
            ids = tok(tok.apply_chat_template(messages(rec, LABELS, label), tokenize=False), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            want[label] = sum(logp[k - 1, ids[k]].item() for k in range(len(p_ids), len(ids)))
        assert row["scores"] == pytest.approx(want, abs=1e-4)
