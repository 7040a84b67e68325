"""Drop empty, duplicate, near-duplicate and over-long records, saying why for each.

    result = clean(records, "chat", tokenizer=tok, max_tokens=2048)
    result.kept, result.dropped  # dropped: [(record number, reason), ...]

Record numbers count from 1 (line numbers of the canonical JSONL file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modelmill.errors import InputError

NUM_PERM = 128
SHINGLE = 5  # characters: works for languages written without spaces, too


@dataclass
class CleanResult:
    kept: list[dict]
    dropped: list[tuple[int, str]] = field(default_factory=list)


def record_text(record: dict, kind: str) -> str:
    """All the text of a canonical record, one part a line (used for dedup and stats)."""
    if kind == "chat":
        return "\n".join(m["content"] for m in record["messages"])
    if kind == "preference":
        return "\n".join([m["content"] for m in record["prompt"]] + [record["chosen"], record["rejected"]])
    if kind == "feedback":
        return "\n".join([m["content"] for m in record["prompt"]] + [record["completion"]])
    return record["text"]


def _is_empty(record: dict, kind: str) -> bool:
    """Nothing to learn from: no input text or no target text."""
    if kind == "chat":
        msgs = record["messages"]
        return not msgs[-1]["content"].strip() or not any(
            m["content"].strip() for m in msgs if m["role"] == "user")
    if kind == "preference":
        return not (record["chosen"].strip() and record["rejected"].strip()
                    and any(m["content"].strip() for m in record["prompt"]))
    if kind == "feedback":
        return not (record["completion"].strip() and any(m["content"].strip() for m in record["prompt"]))
    return not record["text"].strip() or (kind == "classification" and not record["label"].strip())


def token_length(record: dict, kind: str, tokenizer) -> int:
    """Tokens the record takes: through the chat template for chat and preference data
    (the longer answer for preference), else the tokenized text."""
    if kind == "chat":
        return _chat_tokens(record["messages"], tokenizer)
    if kind == "preference":
        return max(_chat_tokens(record["prompt"] + [{"role": "assistant", "content": a}], tokenizer)
                   for a in (record["chosen"], record["rejected"]))
    if kind == "feedback":
        return _chat_tokens(record["prompt"] + [{"role": "assistant", "content": record["completion"]}], tokenizer)
    return len(tokenizer(record["text"])["input_ids"])


def _chat_tokens(messages: list[dict], tokenizer) -> int:
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(msgs, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 returns a BatchEncoding
        return len(ids)
    return len(tokenizer("\n".join(m["content"] for m in msgs))["input_ids"])


def _shingles(text: str) -> list[bytes]:
    text = re.sub(r"\s+", " ", text.lower()).strip()
    if len(text) <= SHINGLE:
        return [text.encode("utf-8")]
    return list({text[i:i + SHINGLE].encode("utf-8") for i in range(len(text) - SHINGLE + 1)})


def clean(records: list[dict], kind: str, *, tokenizer=None, max_tokens: int | None = None,
          near_dup_threshold: float | None = 0.9, seed: int = 0) -> CleanResult:
    """Keep records in order, dropping (first match wins): empty ones, exact duplicates of a
    kept record, those over ``max_tokens``, and near duplicates of a kept record (estimated
    Jaccard similarity of character 5-gram sets >= ``near_dup_threshold``; None turns it off).
    """
    if max_tokens is not None and tokenizer is None:
        raise InputError("needs a tokenizer to count tokens", field="--max-tokens",
                         fix="pass the base model's tokenizer, or leave out --max-tokens")
    if near_dup_threshold is not None and not 0 < near_dup_threshold <= 1:
        raise InputError(f"must be in (0, 1], got {near_dup_threshold}", field="--near-dup-threshold",
                         fix="use e.g. 0.9; lower drops more")
    lsh = None
    if near_dup_threshold is not None:
        from datasketch import LeanMinHash, MinHash, MinHashLSH

        # The LSH only proposes candidates; a lower threshold there misses fewer true pairs.
        lsh = MinHashLSH(threshold=min(0.9, max(0.1, near_dup_threshold - 0.1)), num_perm=NUM_PERM)
        hashes: dict[int, LeanMinHash] = {}
    seen: dict[str, int] = {}
    kept, dropped = [], []
    for n, record in enumerate(records, start=1):
        text = record_text(record, kind)
        if _is_empty(record, kind):
            dropped.append((n, "empty"))
            continue
        if text in seen:
            first = seen[text]
            note = _label_note(record, records[first - 1])
            dropped.append((n, f"exact duplicate of record {first}{note}"))
            continue
        if max_tokens is not None:
            length = token_length(record, kind, tokenizer)
            if length > max_tokens:
                dropped.append((n, f"over length: {length} tokens > {max_tokens}"))
                continue
        if lsh is not None:
            m = MinHash(num_perm=NUM_PERM, seed=seed)
            m.update_batch(_shingles(text))
            # The most similar kept record; the earliest one on a tie.
            best = max(((m.jaccard(hashes[c]), -c) for c in lsh.query(m)), default=None)
            if best is not None and best[0] >= near_dup_threshold:
                dropped.append((n, f"near duplicate of record {-best[1]} (jaccard {best[0]:.2f})"))
                continue
            hashes[n] = LeanMinHash(m)
            lsh.insert(n, hashes[n])
        seen[text] = n
        kept.append(record)
    if records and not kept:  # the first non-empty record is never a duplicate: length or emptiness
        over = sum(why.startswith("over length") for _, why in dropped)
        raise InputError(f"the cleaning filters dropped every record ({over} over length, "
                         f"{len(dropped) - over} empty)", field="--max-tokens" if over else None,
                         fix="raise --max-tokens or leave it out" if over else
                         "the records have no text to learn from; check the dataset you imported")
    return CleanResult(kept, dropped)


def _label_note(record: dict, first: dict) -> str:
    """For classification, say when the duplicate disagrees on the label."""
    if "label" in record and record["label"] != first["label"]:
        return f", labelled '{first['label']}' there and '{record['label']}' here"
    return ""
