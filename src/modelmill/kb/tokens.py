"""Token helpers for the knowledge base: a budget count for chunking and the words BM25 indexes.

    from modelmill.kb.tokens import count_tokens, bm25_tokens
    count_tokens("退货政策：30天内可退。")   # 11: one per CJK character and punctuation mark
    bm25_tokens("The refunds policy 退货政策")  # ['refund', 'polici', '退货', '政策']

``count_tokens`` counts with the default embedder's own WordPiece tokenizer (loaded from the
bundled MiniLM's tokenizer.json, not the model): MiniLM silently cuts its input at 256 tokens,
so a chunk must fit, and ids, SKUs and non-Latin scripts cost far more tokens than their words
suggest. Without that package it falls back to ``estimate_tokens``, which errs high for English
and Chinese (a long word counts 2, digit runs one per two characters, other scripts one per
character). The knowledge base refuses a chunk budget that leaves no room for the title line.
"""

from __future__ import annotations

import functools
import re
from itertools import groupby

from modelmill.text import is_cjk_char

_RUN = re.compile(r"\w+|[^\w\s]")  # a run of word characters, or one punctuation mark
_WORD = re.compile(r"\w+")

# Words too common to tell documents apart; BM25 would otherwise reward chunks full of them.
STOPWORDS = frozenset("""
a an the of to in on at by for from with as and or but not no is are was were be been being
it its this that these those do does did doing can could will would shall should may might must
if then so than into about there here what which who whom whose when where why how
i me my we our us you your he him his she her they them their am have has had having
""".split())

# Single-character Chinese function words; a query's 的 should not pull in every chunk.
CJK_STOP_CHARS = frozenset("的了是在和与及或也都就而着吗呢吧啊之个这那把被")


def _word_cost(run: str) -> int:
    """Tokens for a run of non-CJK word characters (see the module docstring for why high)."""
    if run.isascii():
        # mixed letters and digits (ids, SKUs) split into pieces of about two characters
        return 1 + (len(run) - 1) // (7 if run.isalpha() else 2)
    return len(run)  # other scripts: WordPiece often falls back to single characters


@functools.cache
def _wordpiece():
    """The bundled MiniLM's own tokenizer (Rust, ~70 us a chunk), or None when it is not there."""
    try:
        from tokenizers import Tokenizer

        from modelmill.models.embedder import bundled_model_path

        folder = bundled_model_path()
        if folder is None or not (folder / "tokenizer.json").is_file():
            return None
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return tok
    except Exception:  # noqa: BLE001 - a broken install falls back to the estimate
        return None


def count_tokens(text: str) -> int:
    """Tokens as the default embedder (all-MiniLM-L6-v2) counts them, special tokens aside;
    the estimate below when its tokenizer is not installed. The exact count matters: MiniLM
    reads 256 tokens and drops the rest, and IDs, SKUs and non-Latin scripts cost far more
    WordPiece tokens than their words suggest (a 32-digit hex id: about 24)."""
    tok = _wordpiece()
    if tok is not None:
        return len(tok.encode(text, add_special_tokens=False).ids)
    return estimate_tokens(text)


def estimate_tokens(text: str) -> int:
    """Approximate WordPiece tokens: 1 per CJK character, 1 per punctuation mark, and 1 or
    more per other word (more for long words, digits and non-ASCII letters). Whitespace is
    free."""
    n = 0
    for m in _RUN.finditer(text):
        tok = m.group()
        if tok.isascii() or not any(map(is_cjk_char, tok)):
            n += _word_cost(tok) if tok[0].isalnum() or tok[0] == "_" else 1
            continue
        for cjk, part in groupby(tok, is_cjk_char):
            n += len(list(part)) if cjk else _word_cost("".join(part))
    return n


@functools.cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@functools.cache
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


@functools.cache
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary load otherwise prints to stderr
    return jieba


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased terms for BM25: English words stemmed (Snowball, so "refunds" matches
    "refund"), numbers as they are, CJK runs cut into words by jieba's search mode (which also
    yields the shorter words inside long ones, so a question about "共和国" finds
    "中华人民共和国"), minus stopwords and punctuation."""
    out: list[str] = []
    for run in _WORD.findall(text.lower()):
        for cjk, part in groupby(run, is_cjk_char):
            part = "".join(part)
            if cjk:
                out += [w for w in _jieba().lcut_for_search(part) if w not in CJK_STOP_CHARS]
            elif part.strip("_") and part not in STOPWORDS:
                out.append(_stem(part) if part.isascii() and part.isalpha() else part)
    return out
