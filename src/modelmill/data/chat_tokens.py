"""Turn chat messages into input ids and labels, with the loss only on the assistant's answers.

Works with any chat template: the conversation is rendered once, each assistant turn is
located by rendering the conversation up to it (with and without that turn), and the
tokens whose characters fall inside an assistant turn keep their label; every other token
gets -100. The end-of-turn token is inside the turn, so the model learns to stop.
"""

from __future__ import annotations

IGNORE = -100


def assistant_spans(messages: list[dict], tokenizer, chat_template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns that carry loss."""
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                             chat_template=chat_template)

    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = render(plain, False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        prefix = render(plain[:i], True)
        upto = render(plain[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(prefix)) or len(upto) <= len(prefix):
            # The template rewrites earlier turns (some drop old reasoning): keep the last turn only.
            last = render(plain[:-1], True)
            return full, ([(len(last), len(full))] if full.startswith(last) else [])
        start, end = len(prefix), len(upto)
        spans.append((start, end))
    return full, spans


def tokenize_chat(messages: list[dict], tokenizer, max_length: int | None = None,
                  chat_template: str | None = None) -> dict | None:
    """``{"input_ids": [...], "labels": [...]}``; None when truncation left no answer token."""
    text, spans = assistant_spans(messages, tokenizer, chat_template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    j = 0
    for k, (a, _b) in enumerate(offsets):
        while j < len(spans) and a >= spans[j][1]:
            j += 1
        if j < len(spans) and spans[j][0] <= a < spans[j][1]:
            labels[k] = ids[k]
    return _cut({"input_ids": ids, "labels": labels}, max_length)


def _cut(ex: dict, max_length: int | None) -> dict | None:
    """``ex`` cut to ``max_length`` tokens at the end; None when no answer token is left."""
    ids, labels = ex["input_ids"], ex["labels"]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": ids, "labels": labels}


SHORTEN_SLACK = 4  # tokens: the pieces around a cut can merge differently when re-tokenized


def shorten_text(text: str, tokenizer, excess: int) -> str | None:
    """``text`` with its end cut by ``excess`` tokens (plus a little slack); None if nothing is left.
    Training and evaluation both shorten over-long classification texts this way."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(ids) - excess - SHORTEN_SLACK
    return tokenizer.decode(ids[:keep]) if keep > 0 else None


def tokenize_record(record: dict, kind: str, tokenizer, max_length: int, *, labels: list[str] | None = None,
                    chat_template: str | None = None) -> dict | None:
    """Tokenize one canonical record. A classification text too long for ``max_length`` is
    shortened (its end is cut) so that the instruction and the label still fit."""
    from modelmill.data.formats import to_messages

    ex = tokenize_chat(to_messages(record, kind, labels=labels), tokenizer, None, chat_template)
    if ex is None or len(ex["input_ids"]) <= max_length:
        return ex
    if kind == "classification":
        short = shorten_text(record["text"], tokenizer, len(ex["input_ids"]) - max_length)
        if short is not None:
            fit = tokenize_chat(to_messages({**record, "text": short}, kind, labels=labels), tokenizer, None,
                                chat_template)
            if fit is not None and len(fit["input_ids"]) <= max_length:
                return fit
    return _cut(ex, max_length)
