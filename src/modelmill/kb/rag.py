"""Retrieval-augmented answers: retrieve from knowledge bases, build the prompt, cite, check grounding.

    from modelmill.kb.base import KnowledgeBases
    from modelmill.kb.embed import open_embedder
    from modelmill.kb import rag

    items = rag.retrieve(KnowledgeBases(store), ["policies"], "how long do refunds take?", k=4)
    messages = rag.build_messages([{"role": "user", "content": "how long do refunds take?"}], items)
    answer = ...                                   # generate from `messages` with any chat model
    rag.citations(answer, items)                   # every item, with "index" and "cited"
    rag.groundedness(answer, items, open_embedder("all-minilm-l6-v2"))
    # {"supported": 1, "unsupported": 0, "score": 1.0, "sentences": [{"text", "supported", "item", ...}]}

``modelmill serve`` calls these for ``/v1/chat/completions`` requests that name
``knowledge_bases`` (or whose model is bound to knowledge bases with ``--knowledge``).
An item is a ``(knowledge base name, Hit)`` pair; its number in the prompt is its 1-based
position in the list.
"""

from __future__ import annotations

import re

from modelmill.kb.base import Hit, KnowledgeBases

Item = tuple[str, Hit]

INSTRUCTION = (
    "Answer the user's question from the numbered items below, which were retrieved from a knowledge base. "
    "Find the item that answers the question and answer from that item only; cite it by its number, like [1]. "
    "If no item answers the question, say that you do not know."
)

# Groundedness thresholds, picked on about 60 hand-written paraphrases and invented claims
# about the same topics (English and Chinese) against all-MiniLM-L6-v2; tests/test_kb_rag.py
# keeps some of them. Claims the chunks do not make stayed under both thresholds, except
# near-contradictions ("also open on Saturdays" against "open Monday to Friday"), which
# embeddings cannot tell apart; about one paraphrase in five that shares few words with its
# chunk ("the store closes at 5 pm on weekdays") falls under both and is flagged.
SUPPORT_BLEND = 0.55       # (similarity + overlap) / 2 at or above this: supported
SUPPORT_SIMILARITY = 0.70  # or a cosine similarity this high on its own (a paraphrase in other words)
# MiniLM was trained on English: unrelated Chinese sentences often score 0.6-0.9, so for a
# sentence written mostly in CJK characters the words must match too.
CJK_MIN_OVERLAP = 0.5

_CITE = re.compile(r"[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")
# Sentence ends: Latin enders before whitespace or the end (3.5 and e.g.x stay whole), CJK enders
# anywhere, each line apart (answers are often lists); closing quotes and brackets stay with
# their sentence. The chunker's rule, plus the end of the text.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？；…．｡]+[”’」』）》\"')\]]*")
_LIST_MARK = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)、])\s+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORDLIKE = re.compile(r"\w")


# ----------------------------------------------------------------------------- retrieval

def retrieve(kbs: KnowledgeBases, names: list[str], question: str, k: int = 4, mode: str = "hybrid",
             *, open_kb=None) -> list[Item]:
    """The ``k`` best chunks for ``question`` over the named knowledge bases, best first.

    With one knowledge base its own fused (RRF) order is kept. With several, each is asked
    for ``k`` and the lists are interleaved by rank (every first hit, best score first, then
    every second hit, ...), so each knowledge base contributes. An unknown name raises
    :class:`~modelmill.errors.NotFoundError`. ``open_kb(name)``, if given, returns the
    KnowledgeBase to query (the server passes its cache); default ``kbs.get``.
    """
    open_kb = open_kb or kbs.get
    names = list(dict.fromkeys(names))  # a name given twice is asked once
    bases = [(name, open_kb(name)) for name in names]  # every name is checked before any query runs
    ranked: list[tuple[int, float, int, str, Hit]] = []
    for order, (name, kb) in enumerate(bases):
        for rank, hit in enumerate(kb.query(question, k=k, mode=mode), 1):
            ranked.append((rank, -hit.score, order, name, hit))
    ranked.sort(key=lambda r: r[:3])
    return [(name, hit) for *_, name, hit in ranked[:k]]


# ----------------------------------------------------------------------------- the prompt

def item_label(kb: str, hit: Hit) -> str:
    """Where an item comes from, as the prompt shows it: ``refunds.md › Refunds, page 3``."""
    where = hit.doc
    if hit.section and hit.section != hit.doc:
        where += f" › {hit.section}"
    if hit.page:
        where += f", page {hit.page}"
    return where


def context_block(items: list[Item]) -> str:
    """The instruction and the numbered items, one paragraph each."""
    if not items:
        return INSTRUCTION + "\n\nNo items were found."
    lines = [f"[{n}] ({item_label(kb, hit)}) {' '.join(hit.text.split())}" for n, (kb, hit) in enumerate(items, 1)]
    return INSTRUCTION + "\n\n" + "\n\n".join(lines)


def build_messages(messages: list[dict], items: list[Item]) -> list[dict]:
    """``messages`` with the retrieved items in the system message (added first, or appended to
    the conversation's own system message, so templates that allow one system message at the
    start still work). The user's messages, the question last, are left as they are."""
    block = context_block(items)
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("role") in ("system", "developer"):
            own = m.get("content") or ""
            m["content"] = f"{own}\n\n{block}" if own.strip() else block
            if out[0] is not m:  # move it to the front
                out.remove(m)
                out.insert(0, m)
            return out
    return [{"role": "system", "content": block}, *out]


def question_of(messages: list[dict]) -> str:
    """The last user message's text: what is retrieved for."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip():
            return m["content"]
    return ""


# ----------------------------------------------------------------------------- citations

def cited_numbers(answer: str) -> set[int]:
    """Item numbers the answer cites: ``[1]``, ``[1, 3]``, ``【2】``."""
    return {int(n) for m in _CITE.finditer(answer or "") for n in re.split(r"[,，、]", m.group(1))}


def citations(answer: str | list[str], items: list[Item], numbers: list[int] | None = None) -> list[dict]:
    """Every item as a citation: knowledge base, document, section, chunk id, text span, plus
    ``index`` (its number in the prompt: ``numbers``, default 1, 2, ...), ``score`` and ``cited``
    (whether the answer, or any of several answers, cites it)."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    cited = set().union(*(cited_numbers(a) for a in answers)) if answers else set()
    return [{"index": n, **hit.citation(kb), "score": hit.score, "cited": n in cited}
            for n, (kb, hit) in zip(numbers or range(1, len(items) + 1), items)]


# ----------------------------------------------------------------------------- groundedness

def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (English and CJK punctuation, line breaks), stripped, non-empty. A
    list bullet or number that opens a line stays with the sentence after it."""
    out = []
    for line in text.splitlines():
        mark = _LIST_MARK.match(line)
        head, pos = (line[:mark.end()], mark.end()) if mark else ("", 0)
        for m in _SENTENCE_END.finditer(line, pos):
            if line[pos:m.end()].strip():
                out.append((head + line[pos:m.end()]).strip())
                head = ""
            pos = m.end()
        if line[pos:].strip():
            out.append((head + line[pos:]).strip())
    return out


def _claim(sentence: str) -> str:
    """The sentence as it is matched: no citation markers, no list bullet."""
    return _LIST_MARK.sub("", _CITE.sub(" ", sentence)).strip()


_NEGATION = re.compile(r"\b(?:not|no|never|cannot|nor|neither|none|nothing|without|unable)\b|n't\b|"
                       r"[不没沒无無未非别勿莫]", re.I)


def _negated(text: str) -> bool:
    """Whether the sentence says no (English or Chinese negation words), counted by parity so
    that "not impossible" reads as not negated."""
    return len(_NEGATION.findall(text)) % 2 == 1


def _numbers(text: str) -> set[str]:
    """Numbers written in ``text``, thousands separators dropped (1,000 == 1000)."""
    out = set()
    for n in _NUMBER.findall(text):
        if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", n):
            n = n.replace(",", "")
        out.add(n.replace(",", "."))
    return out


def _mostly_cjk(text: str) -> bool:
    from modelmill.text import cjk_share

    return cjk_share(text, letters_only=True) >= 0.5


def groundedness(answer: str, items: list[Item], embedder) -> dict:
    """Which sentences of ``answer`` the retrieved items support.

    Each sentence (citation markers and list bullets removed; pieces with no letters or
    digits skipped) is compared with each item's chunk:

    - ``similarity``: the embedder's cosine similarity between the sentence and the closer of
      the whole chunk and the chunk's best sentence (a short claim matches its own sentence
      better than a long chunk);
    - ``overlap``: the share of the sentence's BM25 terms (``bm25_tokens``) found in the chunk.

    A chunk supports the sentence when every number in the sentence also appears in the chunk
    (a wrong price or date is never supported), when the sentence and the chunk's closest
    sentence agree on negation (an answer that flips "cannot be returned" into "can be
    returned" is not supported), and ``(similarity + overlap) / 2 >= 0.55`` or
    ``similarity >= 0.70``. A sentence written mostly in CJK characters also needs
    ``overlap >= 0.5`` and cannot pass on similarity alone (MiniLM reads English; its
    similarities between unrelated Chinese sentences run high). The sentence's
    ``item`` is the supporting item with the highest blend (None when no item supports it);
    ``similarity`` and ``overlap`` are that item's, or the closest item's when none supports it.
    With no items every sentence is unsupported and ``no_sources`` is true.
    """
    import numpy as np

    from modelmill.kb.tokens import bm25_tokens

    sentences = [(s, _claim(s)) for s in split_sentences(answer or "")]
    sentences = [(s, c) for s, c in sentences if _WORDLIKE.search(c)]
    result: dict = {"supported": 0, "unsupported": 0, "score": None, "sentences": []}
    if not items:
        result["no_sources"] = True
    if not sentences:
        return result
    if items:
        chunk_texts = [hit.text for _, hit in items]
        parts = [(j, p) for j, t in enumerate(chunk_texts) for p in split_sentences(t)]
        vectors = embedder.encode([c for _, c in sentences] + chunk_texts + [p for _, p in parts])
        n_s, n_c = len(sentences), len(chunk_texts)
        sv, cv, pv = vectors[:n_s], vectors[n_s:n_s + n_c], vectors[n_s + n_c:]
        sim = sv @ cv.T                                         # (sentences, items)
        if parts:
            part_sim = sv @ pv.T                                # (sentences, chunk sentences)
            owner = np.array([j for j, _ in parts])
            for j in range(n_c):
                sim[:, j] = np.maximum(sim[:, j], part_sim[:, owner == j].max(axis=1, initial=-1.0))
            # each item's closest sentence to each answer sentence, for the negation check
            closest = np.full((n_s, n_c), -1)
            for j in range(n_c):
                mine = np.flatnonzero(owner == j)
                if len(mine):
                    closest[:, j] = mine[part_sim[:, mine].argmax(axis=1)]
        chunk_terms = [set(bm25_tokens(t)) for t in chunk_texts]
        chunk_numbers = [_numbers(t) for t in chunk_texts]
    for i, (text, claim) in enumerate(sentences):
        best, best_any = None, None
        terms = set(bm25_tokens(claim))
        numbers = _numbers(claim)
        cjk = _mostly_cjk(claim)
        for j in range(len(items)):
            similarity = float(sim[i, j])
            overlap = len(terms & chunk_terms[j]) / len(terms) if terms else 0.0
            blend = (similarity + overlap) / 2
            cand = (blend, j, similarity, overlap)
            if best_any is None or blend > best_any[0]:
                best_any = cand
            if cjk:
                ok = overlap >= CJK_MIN_OVERLAP and blend >= SUPPORT_BLEND
            else:
                ok = blend >= SUPPORT_BLEND or similarity >= SUPPORT_SIMILARITY
            ok = ok and numbers <= chunk_numbers[j]
            if ok and parts and closest[i, j] >= 0:
                # "you can return it" is close in words and meaning to "it cannot be returned";
                # similarity cannot tell them apart, so one negated and one not is no support
                ok = _negated(claim) == _negated(parts[closest[i, j]][1])
            if ok and (best is None or blend > best[0]):
                best = cand
        shown = best or best_any
        result["supported" if best else "unsupported"] += 1
        result["sentences"].append({
            "text": text, "supported": best is not None,
            "item": best[1] + 1 if best else None,
            "chunk_id": items[best[1]][1].id if best else None,
            "similarity": round(shown[2], 4) if shown else None,
            "overlap": round(shown[3], 4) if shown else None,
        })
    result["score"] = result["supported"] / len(sentences)
    return result
