"""Token counting in clean() and stats(), with a word-level tokenizer built here (no download).

Every whitespace-separated word is one token; the chatml template adds
``<|im_start|>``, the role and ``<|im_end|>``: 3 tokens a message.
"""

import os

import pytest

from modelmill.data import clean, format_stats, stats, token_length

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; make sure of it

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}")


def word_tokenizer(chat_template=CHATML):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_token_length_per_kind(tok):
    assert token_length(chat("one two three", "four"), "chat", tok) == 3 + 3 + 3 + 1
    assert token_length({"text": "a b c d e"}, "text", tok) == 5
    pref = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "a b c"}
    assert token_length(pref, "preference", tok) == (3 + 1) + (3 + 3)


def test_token_length_without_chat_template():
    plain = word_tokenizer(chat_template=None)
    assert token_length(chat("one two three", "four"), "chat", plain) == 4


def test_clean_drops_over_length(tok):
    records = [chat("short", "answer"), chat("long " * 30, "answer"), chat("fine here", "ok")]
    result = clean(records, "chat", tokenizer=tok, max_tokens=20)
    assert result.kept == [records[0], records[2]]
    assert result.dropped == [(2, "over length: 37 tokens > 20")]


def test_stats_in_tokens(tok):
    records = [{"text": " ".join(["w"] * n), "label": "x", "meta": {}} for n in (1, 2, 3, 10)]
    s = stats(records, "classification", tokenizer=tok, bins=3)
    assert s["length"]["unit"] == "tokens"
    assert (s["length"]["min"], s["length"]["max"], s["length"]["mean"]) == (1, 10, 4)
    assert s["length"]["histogram"]["counts"] == [3, 0, 1]
    assert "length (tokens)" in format_stats(s)
