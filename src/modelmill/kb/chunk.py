"""Chunking: cut a parsed Document into overlapping, embedding-sized spans of its text.

    from modelmill.kb.parse import parse
    from modelmill.kb.chunk import chunk
    for c in chunk(parse("handbook.pdf"), max_tokens=200, overlap=40):
        print(c.ordinal, c.page, c.section, c.text[:60])

How:
- A chunk never crosses a section change. Within a section, consecutive units are packed
  greedily up to ``max_tokens`` (``count_tokens``); a chunk may run across PDF pages and
  keeps the page where it starts.
- A table row or FAQ pair (kind ``row``/``qa``) is a chunk of its own, so one answer is
  never mixed with the next.
- A unit over the budget is cut at sentence ends (``. ! ?`` before a space, ``。！？；…``),
  then at line breaks, then between words or CJK characters; those last runs take at most
  ``max_tokens - overlap`` tokens, so the overlap below fits beside them.
- When a section needs several chunks, each next one repeats up to ``overlap`` tokens of
  the previous one's end, starting at a sentence where one fits, else at a word.

Every chunk's text is ``doc.text[chunk.start:chunk.end]``, with no whitespace at either end.
"""

from __future__ import annotations

import re

from modelmill.text import is_cjk_char
from modelmill.kb.tokens import count_tokens
from modelmill.kb.types import Chunk, Document, KBError, Unit

MIN_TOKENS = 16
STANDALONE = ("row", "qa")  # unit kinds that are always a chunk of their own

# Where a sentence ends: Latin enders before whitespace (so 3.5 and e.g.x stay whole),
# CJK enders anywhere; closing quotes and brackets stay with their sentence.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)|[。！？；…．｡]+[”’」』）》\"')\]]*")
_LINE_END = re.compile(r"\n")
_BOUNDARY = re.compile(_SENTENCE_END.pattern + r"|\n")

Piece = tuple[int, int, int]  # (start, end, tokens): a stripped span of Document.text


def chunk(doc: Document, *, max_tokens: int = 200, overlap: int = 40) -> list[Chunk]:
    """Split ``doc`` into chunks of at most ``max_tokens`` counted tokens, in document order."""
    check_chunking(max_tokens, overlap)
    chunks: list[Chunk] = []
    for units in _sections(doc.units):
        pieces = [p for u in units for p in _split(doc.text, u.start, u.end, max_tokens, overlap=overlap)]
        for start, end in _pack(doc.text, pieces, max_tokens, overlap):
            chunks.append(Chunk(text=doc.text[start:end], title=doc.title, section=units[0].section,
                                page=_page_at(units, start), start=start, end=end, ordinal=len(chunks)))
    return chunks


def check_chunking(max_tokens: int, overlap: int) -> None:
    if max_tokens < MIN_TOKENS:
        raise KBError(f"must be at least {MIN_TOKENS}, got {max_tokens}", field="--chunk-tokens",
                      fix="use 200 for the default embedding model (it reads at most 256 tokens)")
    if not 0 <= overlap < max_tokens / 2:
        raise KBError(f"must be at least 0 and under half of --chunk-tokens ({max_tokens}), got {overlap}",
                      field="--chunk-overlap", fix=f"use about a fifth of it, e.g. {max_tokens // 5}")


def _sections(units: list[Unit]):
    """Runs of consecutive units that may share a chunk: same section, and not a row or FAQ pair."""
    run: list[Unit] = []
    for u in units:
        if run and (u.section != run[-1].section or u.kind in STANDALONE or run[-1].kind in STANDALONE):
            yield run
            run = []
        run.append(u)
    if run:
        yield run


def _page_at(units: list[Unit], pos: int) -> int | None:
    """The page of the unit that holds offset ``pos``."""
    page = units[0].page
    for u in units:
        if u.start > pos:
            break
        page = u.page
    return page


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split(text: str, start: int, end: int, budget: int, level: int = 0, *, overlap: int = 0) -> list[Piece]:
    """Spans of ``text[start:end]`` that each fit the budget: the whole span if it fits, else
    its sentences, else its lines, else cuts between words of ``budget - overlap`` tokens (a run
    of the full budget would leave no room for the next chunk to repeat the end of this one)."""
    start, end = _strip(text, start, end)
    if start >= end:
        return []
    n = count_tokens(text[start:end])
    if n <= budget:
        return [(start, end, n)]
    splitters = (_SENTENCE_END, _LINE_END)
    if level == len(splitters):
        return _hard_split(text, start, end, budget - overlap)
    cuts = [start] + [m.end() for m in splitters[level].finditer(text, start, end)] + [end]
    return [p for a, b in zip(cuts, cuts[1:]) for p in _split(text, a, b, budget, level + 1, overlap=overlap)]


def _is_word_start(text: str, p: int) -> bool:
    """A place to cut without breaking a word: after a space, or next to a CJK character
    (CJK is written without spaces, so every character boundary will do)."""
    return not text[p].isspace() and (text[p - 1].isspace() or is_cjk_char(text[p]) or is_cjk_char(text[p - 1]))


def _hard_split(text: str, start: int, end: int, budget: int) -> list[Piece]:
    """Cut a span with no usable sentence or line break into the longest fitting runs of words."""
    out: list[Piece] = []
    while start < end:
        lo, hi = start + 1, end  # binary search: counts never shrink as a span grows
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if count_tokens(text[start:mid]) <= budget else (lo, mid - 1)
        cut = lo
        if cut < end:  # back up to a word boundary, unless the one word is longer than the budget
            cut = next((p for p in range(cut, start, -1)
                        if text[p].isspace() or _is_word_start(text, p)), cut)
        s, e = _strip(text, start, cut)
        out.append((s, e, count_tokens(text[s:e])))
        start, _ = _strip(text, cut, end)
    return out


def _pack(text: str, pieces: list[Piece], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy (start, end) spans over the pieces of one section, overlapping by up to
    ``overlap`` tokens."""
    spans: list[tuple[int, int]] = []
    i, start, n = 0, pieces[0][0] if pieces else 0, 0
    while i < len(pieces):
        j = i
        while j < len(pieces) and (j == i or n + pieces[j][2] <= budget):
            n += pieces[j][2]
            j += 1
        # Summed counts can come out a token low where a word was cut; the real count decides.
        while j > i + 1 and count_tokens(text[start:pieces[j - 1][1]]) > budget:
            j -= 1
        end = pieces[j - 1][1]
        spans.append((start, end))
        i = j
        if i < len(pieces):
            start = _overlap_start(text, start, end, min(overlap, budget - pieces[i][2]))
            if start is None or count_tokens(text[start:pieces[i][1]]) > budget:
                start = pieces[i][0]
            n = count_tokens(text[start:end]) if start < end else 0
    return spans


def _overlap_start(text: str, lo: int, end: int, budget: int) -> int | None:
    """Where the next chunk should start so that it repeats at most ``budget`` tokens of
    ``text[lo:end]``: the earliest sentence start that fits, else the earliest word start."""
    if budget <= 0:
        return None
    first = None
    for p in range(end - 1, lo, -1):
        if _is_word_start(text, p):
            if count_tokens(text[p:end]) > budget:
                break
            first = p
    if first is None:
        return None
    for m in _BOUNDARY.finditer(text, lo, end):
        s, _ = _strip(text, m.end(), end)
        if first <= s < end:
            return s
    return first
