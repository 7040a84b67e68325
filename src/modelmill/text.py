"""Text helpers every layer uses (data, kb, evaluate, serve): which script a text is written in.

CJK scripts are written without spaces between words, so tokenising for BM25 and ROUGE,
chunking and sentence splitting treat them apart (jieba for Chinese).
"""

from __future__ import annotations


def is_cjk_char(ch: str) -> bool:
    """Kana, CJK ideographs or Hangul: scripts written without spaces between words."""
    return "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af"


def has_cjk(text: str) -> bool:
    """Any CJK character in ``text``."""
    return any(is_cjk_char(ch) for ch in text)


def cjk_share(text: str, letters_only: bool = False) -> float:
    """The share of ``text``'s characters (or of its letters and digits) that are CJK."""
    chars = [c for c in text if c.isalnum()] if letters_only else text
    return sum(map(is_cjk_char, chars)) / len(chars) if chars else 0.0
