"""Retrieval quality and speed on FiQA: BM25, vectors and hybrid (RRF) side by side, ingestion
speed, and query latency at 1k and 100k chunks.

    .venv/bin/python bench/retrieval.py --home /tmp/mm-retrieval            # about 15 min on 2 CPU cores
    .venv/bin/python bench/retrieval.py --home /tmp/mm-retrieval --quick    # 10k chunks, a few minutes

Needs ../shared/data/fiqa-finance-qa (648 question/answer pairs): every answer is a document
(a .txt file added with the same call as `modelmill kb add`), every question a query whose
relevant document is its own answer. The size test pads the knowledge base with synthetic
documents (random sentences over FiQA's vocabulary) through the same add call, with synthetic
vectors (real FiQA vectors plus noise: MiniLM embeds about 80 chunks/s on 2 CPU cores, so
embedding 100k padding chunks would take over 20 minutes; ingestion speed is measured on the
real FiQA documents instead).

Goals (from the issue): hybrid at least as good as the better single retriever on hit@5, and
query latency at 100k chunks within 3x of that at 1k.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def latency(kb, questions: list[str], mode: str, repeats: int = 1) -> dict:
    """Median and p95 wall time of one `kb.query` (question embedding included), warm."""
    kb.query(questions[0], k=5, mode=mode)  # warm caches (model, index, mmap)
    times = []
    for _ in range(repeats):
        for q in questions:
            t = time.perf_counter()
            kb.query(q, k=5, mode=mode)
            times.append(time.perf_counter() - t)
    times.sort()
    return {"median_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "n": len(times)}


def padding(vocab: list[str], n_chunks: int, seed: int, words: int = 40):
    """Synthetic documents of 100 one-sentence-per-paragraph units, each about one chunk."""
    from modelmill.kb.types import Document, Unit

    rng = random.Random(seed)
    per_doc = 100
    for d in range(0, n_chunks, per_doc):
        units = [Unit(" ".join(rng.choices(vocab, k=words)).capitalize() + ".", section=f"Part {i}")
                 for i in range(min(per_doc, n_chunks - d))]
        name = f"pad-{seed}-{d:07d}.txt"
        yield name, Document(title=f"Padding {seed}-{d}", units=units, source=name, format="txt")


class NoisyCopies:
    """Stands in for the embedder while padding: each padding chunk gets a real FiQA chunk's vector
    plus noise, renormalised. Embedding 100k chunks with MiniLM takes over 20 minutes on 2 CPU cores; the
    size test needs vectors shaped like real ones (clustered, unit length), not their meaning."""

    def __init__(self, real, seed: int, noise: float = 0.5):
        import numpy as np

        self.real, self.rng, self.noise = real, np.random.default_rng(seed), noise

    def encode(self, texts):
        import numpy as np

        v = self.real[self.rng.integers(0, len(self.real), len(texts))]
        v = v + self.noise * self.rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.shape[1])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def pad_to(kb, target: int, vocab: list[str], seed: int, batch_docs: int = 50) -> tuple[int, float]:
    """Add padding documents until the knowledge base has ``target`` chunks, through the same
    add call as real documents (chunking, BM25 tokens, vector store, BM25 rebuild, index upkeep)
    but with synthetic vectors; (chunks added, seconds)."""
    import numpy as np

    have = kb.vectors.count()
    need = target - have
    if need <= 0:
        return 0, 0.0
    real_embedder = kb.embedder
    real = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in kb.vectors.table().search()
                     .select(["vector"]).limit(2000).to_list()])
    kb._embedder = NoisyCopies(real, seed)
    t = time.perf_counter()
    batch, added = [], 0
    try:
        for name, doc in padding(vocab, need, seed):
            h = hashlib.sha256(doc.text.encode()).hexdigest()
            batch.append((name, doc, h, len(doc.text), name))
            if len(batch) == batch_docs:
                added += kb.add_documents(batch).chunks
                batch = []
        if batch:
            added += kb.add_documents(batch).chunks
    finally:
        kb._embedder = real_embedder
    return added, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="MODELMILL_HOME for the run (a fresh folder is best).")
    ap.add_argument("--quick", action="store_true", help="Pad to 10k chunks instead of 100k.")
    ap.add_argument("--large", type=int, default=None, help="Chunks for the size test [default: 100000].")
    ap.add_argument("--queries", type=int, default=100, help="Questions timed at each size.")
    args = ap.parse_args()
    data = SHARED / "fiqa-finance-qa" / "qa.jsonl"
    if not data.is_file():
        print(f"needs {data} (the shared data folder beside the repository)", file=sys.stderr)
        return 2
    os.environ["MODELMILL_HOME"] = str(Path(args.home).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    large = args.large or (10_000 if args.quick else 100_000)

    from modelmill.kb.base import KnowledgeBases
    from modelmill.kb.evaluate import Question, evaluate_retrieval
    from modelmill.store import open_store

    rows = [json.loads(line) for line in data.open(encoding="utf-8")]
    store = open_store()
    kbs = KnowledgeBases(store)
    for r in kbs.list():
        if r.name == "fiqa":
            kbs.delete("fiqa")
    kb = kbs.create("fiqa")
    folder = Path(args.home) / "fiqa-docs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(rows):
        p = folder / f"answer-{i:04d}.txt"
        p.write_text(r["answer"], encoding="utf-8")
        paths.append(p)
    t = time.perf_counter()
    report = kb.add(paths)
    ingest_s = time.perf_counter() - t
    assert not report.failed, report.failed[:3]
    n_fiqa = kb.vectors.count()
    print(f"ingested {len(paths)} FiQA answers: {n_fiqa} chunks in {ingest_s:.1f} s "
          f"({n_fiqa / ingest_s:.0f} chunks/s, parse + chunk + embed + index)")

    questions = [Question(r["question"], {f"answer-{i:04d}.txt"}, "document", i + 1) for i, r in enumerate(rows)]
    quality = evaluate_retrieval(kb, questions, k=10).metrics
    print("\nquality on 648 FiQA questions (relevant: the question's own answer)")
    print(f"{'retriever':10} {'hit@1':>7} {'hit@5':>7} {'hit@10':>7} {'MRR':>7} {'nDCG@10':>8}")
    for mode, m in quality.items():
        print(f"{mode:10} {m['hit@1']:7.3f} {m['hit@5']:7.3f} {m['hit@10']:7.3f} {m['mrr']:7.3f} {m['ndcg@10']:8.3f}")
    best_single = max(quality["bm25"]["hit@5"], quality["vector"]["hit@5"])
    hybrid_ok = quality["hybrid"]["hit@5"] >= best_single

    vocab = sorted({w.strip(".,;:!?()\"'").lower() for r in rows for w in r["answer"].split() if w.isascii()} - {""})
    timed = [r["question"] for r in random.Random(0).sample(rows, min(args.queries, len(rows)))]
    sizes = {}
    for target, seed in ((1000, 1), (large, 2)):
        added, secs = pad_to(kb, target, vocab, seed)
        n = kb.vectors.count()
        sizes[n] = {"padding_chunks": added, "padding_s": secs,
                    "padding_chunks_per_s": added / secs if secs else None,
                    **{mode: latency(kb, timed, mode) for mode in ("hybrid", "bm25", "vector")}}
        q5 = evaluate_retrieval(kb, questions, k=10, modes=("hybrid",)).metrics["hybrid"]["hit@5"]
        sizes[n]["hybrid_hit@5"] = q5
        rate = f", padding added at {added / secs:.0f} chunks/s (synthetic vectors)" if secs else ""
        print(f"\n{n} chunks{rate}: hybrid hit@5 {q5:.3f}")
        for mode in ("hybrid", "bm25", "vector"):
            m = sizes[n][mode]
            print(f"  {mode:7} query median {m['median_ms']:.1f} ms, p95 {m['p95_ms']:.1f} ms ({m['n']} queries)")
    small, big = sorted(sizes)
    ratio = sizes[big]["hybrid"]["median_ms"] / sizes[small]["hybrid"]["median_ms"]
    print(f"\nhybrid hit@5 {quality['hybrid']['hit@5']:.3f} vs best single {best_single:.3f}: "
          f"{'PASS' if hybrid_ok else 'MISS'}")
    print(f"hybrid query latency {big} / {small} chunks: {ratio:.2f}x (goal <= 3x): {'PASS' if ratio <= 3 else 'MISS'}")
    out = ROOT / "bench" / "results" / ("retrieval-quick.json" if args.quick else "retrieval.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"fiqa_chunks": n_fiqa, "ingest_s": ingest_s, "quality": quality, "sizes": sizes,
                               "latency_ratio": ratio, "hybrid_ok": hybrid_ok}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
