"""Retrieval evaluation: hit@k, MRR and nDCG for BM25, vectors and hybrid, side by side.

    modelmill kb eval policies --questions questions.jsonl [-k 10]

The questions file is JSON Lines, one question a line, with what counts as relevant:

    {"question": "How long do refunds take?", "documents": ["refunds.md"]}
    {"question": "...", "document": "refunds.md"}
    {"question": "...", "chunk_ids": ["3f2a...-4"]}          # as `data synthesize` writes them

With documents, hits are counted per document (the first chunk of a document is its rank);
with chunk ids, per chunk.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from modelmill.kb.types import KBError

MODES = ("bm25", "vector", "hybrid")


@dataclass
class Question:
    text: str
    relevant: set[str]
    by: str  # "document" | "chunk"
    line: int


@dataclass
class RetrievalReport:
    k: int
    n: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> metric -> value

    def as_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "metrics": self.metrics}


def questions_from_dataset(records: list[dict], ref: str) -> list[Question]:
    """The test set `data synthesize` saved: each record's user turn, relevant = its source chunk."""
    out = []
    for n, r in enumerate(records, 1):
        src = r.get("source") or {}
        user = next((m["content"] for m in r.get("messages", []) if m.get("role") == "user"), None)
        if not src.get("chunk_id") or not user:
            raise KBError("is not a synthesized test set (records need a user turn and source.chunk_id)",
                          file=ref, line=n, fix="pass a JSON Lines file of questions, or a NAME-test dataset "
                                                "from `modelmill data synthesize`")
        out.append(Question(user, {src["chunk_id"]}, "chunk", n))
    return out


def load_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise KBError("no such file", file=str(path), fix="give a JSON Lines file of questions, or a dataset "
                                                          "from `modelmill data synthesize`")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise KBError(f"not JSON ({e.msg})", file=str(path), line=n, fix="one JSON object per line") from None
            if not isinstance(rec, dict):
                raise KBError("expected a JSON object", file=str(path), line=n,
                              fix='e.g. {"question": "...", "documents": ["refunds.md"]}')
            q = rec.get("question")
            if not isinstance(q, str) or not q.strip():
                raise KBError("missing or empty", file=str(path), line=n, field="question",
                              fix='e.g. {"question": "...", "documents": ["refunds.md"]}')
            if rec.get("chunk_ids"):
                rel, by = rec["chunk_ids"], "chunk"
            else:
                rel, by = rec.get("documents") or ([rec["document"]] if rec.get("document") else None), "document"
            if not isinstance(rel, list) or not rel or not all(isinstance(x, str) and x for x in rel):
                raise KBError("no relevant documents or chunks given", file=str(path), line=n, field="documents",
                              fix='add "documents": ["NAME", ...] (file names in the knowledge base) or "chunk_ids"')
            out.append(Question(q, set(rel), by, n))
    if not out:
        raise KBError("has no questions", file=str(path), fix="one JSON object per line")
    return out


def evaluate_retrieval(kb, questions: list[Question], *, k: int = 10, modes=MODES,
                       weights: dict[str, float] | None = None) -> RetrievalReport:
    """Score each retrieval mode on the questions; questions are embedded once, in batches."""
    from modelmill.kb.base import fuse

    if k < 1:
        raise KBError(f"must be >= 1, got {k}", field="-k", fix="e.g. -k 10")
    known = {d.name for d in kb.documents()}
    for q in questions:
        missing = [d for d in q.relevant if q.by == "document" and d not in known]
        if missing:
            raise KBError(f"names documents that are not in knowledge base '{kb.name}': {', '.join(sorted(missing))}",
                          line=q.line, field="documents", fix=f"`modelmill kb list {kb.name}` shows its documents")
    wanted = sorted({c for q in questions if q.by == "chunk" for c in q.relevant})
    if wanted:
        present = kb.vectors.get(wanted)
        gone = [c for c in wanted if c not in present]
        if gone:
            raise KBError(f"{len(gone)} of the {len(wanted)} chunks the questions point at are no longer in knowledge "
                          f"base '{kb.name}' (e.g. {gone[0]}): their documents were replaced or removed since",
                          field="chunk_ids", fix="synthesize the test set again, or name relevant documents instead")
    vectors = kb.embedder.encode([q.text for q in questions]) if any(m != "bm25" for m in modes) else None
    sums = {m: {"hit@1": 0.0, f"hit@{min(5, k)}": 0.0, f"hit@{k}": 0.0, "mrr": 0.0, f"ndcg@{k}": 0.0} for m in modes}
    pool = max(4 * k, 20)
    for i, q in enumerate(questions):
        rankings, rows = kb.rankings(q.text, pool, vector=None if vectors is None else vectors[i],
                                     retrievers=tuple({"bm25", "vector"} & {r for m in modes for r in _uses(m)}))
        for m in modes:
            hits = fuse({r: rankings[r] for r in _uses(m)}, rows, pool, weights=weights)
            keys = list(dict.fromkeys(h.doc if q.by == "document" else h.id for h in hits))[:k]  # first rank wins
            for name, value in _scores(keys, q.relevant, k).items():
                sums[m][name] += value
    n = len(questions)
    return RetrievalReport(k=k, n=n, metrics={m: {name: v / n for name, v in s.items()} for m, s in sums.items()})


def _uses(mode: str) -> tuple[str, ...]:
    return ("bm25", "vector") if mode == "hybrid" else (mode,)


def _scores(ranked: list[str], relevant: set[str], k: int) -> dict[str, float]:
    """Binary relevance. MRR counts the first relevant item within k; nDCG@k is DCG over the
    ideal DCG of min(k, |relevant|) relevant items."""
    first = next((i for i, x in enumerate(ranked) if x in relevant), None)
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(ranked[:k]) if x in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return {"hit@1": float(first == 0), f"hit@{min(5, k)}": float(first is not None and first < 5),
            f"hit@{k}": float(first is not None), "mrr": 1.0 / (first + 1) if first is not None else 0.0,
            f"ndcg@{k}": dcg / ideal if ideal else 0.0}
