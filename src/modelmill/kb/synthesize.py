"""QA synthesis, the knowledge factory: documents -> question/answer pairs for training and testing.

    modelmill data synthesize --kb policies --model my-llm --name policy-qa [--per-chunk 3]

For each chunk of the knowledge base, a served model (any OpenAI-compatible endpoint registered
with `modelmill models add NAME --endpoint URL`, such as a local `modelmill serve`) is asked
for question/answer pairs the chunk answers. Then:

1. pairs that do not parse, or have an empty side, are dropped (counted as ``unparsed``);
2. duplicates are dropped: the same question after normalising case and punctuation, or a
   question whose MiniLM embedding is within ``dup_similarity`` of one already kept;
3. pairs whose answer is not supported by the source chunk are dropped, by the same
   sentence-support rule as the served answers' groundedness (``kb.rag.groundedness``).

The kept pairs are split by chunk (a chunk's questions all land on one side, so a test question
never has a sibling in training) into ``NAME`` (chat records) and ``NAME-test``. Every record
carries ``source``: the knowledge base, document, section and chunk id it came from; the test
set works with `modelmill kb eval --questions` once exported, and as a generation task.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass, field

from modelmill.errors import InputError
from modelmill.kb.types import KBError

PAIRS_SCHEMA = {
    "type": "object",
    "properties": {"pairs": {"type": "array", "items": {
        "type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"]}}},
    "required": ["pairs"],
}

SYSTEM = ("You write question-answer pairs to train and test a support assistant. Every answer must be "
          "stated in the passage you are given; never add facts that are not in it.")
USER = ("Passage from \"{title}\"{section}:\n\n{text}\n\n"
        "Write up to {n} different questions a customer could ask that this passage answers, each with a short "
        "answer taken from the passage. Reply with JSON only, in this shape: "
        "{{\"pairs\": [{{\"question\": \"...\", \"answer\": \"...\"}}]}}")


@dataclass
class SynthesisReport:
    chunks: int = 0
    asked: int = 0
    failed_requests: int = 0
    generated: int = 0
    unparsed: int = 0
    truncated: int = 0  # of the unparsed: cut at max_tokens (a small model repeating itself, mostly)
    duplicates: int = 0
    unsupported: int = 0
    train: int = 0
    test: int = 0
    errors: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def parse_pairs(text: str) -> list[dict] | None:
    """The ``pairs`` of a model's reply, or None when it is not the JSON asked for. Code fences
    and text around the object are tolerated; a bare list of pairs is accepted too."""
    text = text.strip()
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if m:
        text = m.group(1).strip()
    data = None
    for candidate in (text, text[text.find("{"):text.rfind("}") + 1], text[text.find("["):text.rfind("]") + 1]):
        try:
            data = json.loads(candidate)
            break
        except ValueError:
            continue
    if isinstance(data, dict):
        data = data.get("pairs")
    if not isinstance(data, list):
        return None
    out = []
    for p in data:
        if isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str):
            q, a = p["question"].strip(), p["answer"].strip()
            if q and a:
                out.append({"question": q, "answer": a})
    return out


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "Z", "S")))


def synthesize(kb, remote, *, name: str, per_chunk: int = 3, test_size: float = 0.1, max_chunks: int | None = None,
               concurrency: int = 4, seed: int = 0, dup_similarity: float = 0.95, response_format: str = "json_schema",
               catalog=None, progress=None) -> SynthesisReport:
    """Ask ``remote`` (a RemoteModel) for pairs per chunk of ``kb``, filter, split and save."""
    import numpy as np

    from modelmill.data.catalog import DatasetCatalog
    from modelmill.kb.base import Hit
    from modelmill.kb.rag import groundedness
    from modelmill.names import check_name

    check_name(name, "--name")
    if not (0 < test_size < 1):
        raise InputError(f"must be a fraction between 0 and 1, got {test_size}", field="--test-size", fix="e.g. 0.1")
    if per_chunk < 1:
        raise InputError(f"must be >= 1, got {per_chunk}", field="--per-chunk", fix="e.g. 3")
    if response_format not in ("json_schema", "json_object", "none"):
        raise InputError(f"unknown response format {response_format!r}", field="--response-format",
                         fix="use json_schema (best), json_object, or none for servers that support neither")
    rows = kb.vectors.rows()
    if not rows:
        raise KBError(f"knowledge base '{kb.name}' has no documents", fix=f"add some with `modelmill kb add {kb.name} FILES`")
    rows.sort(key=lambda r: (r["doc"], r["ordinal"]))
    if max_chunks:
        rows = random.Random(seed).sample(rows, min(max_chunks, len(rows)))
        rows.sort(key=lambda r: (r["doc"], r["ordinal"]))
    report = SynthesisReport(chunks=len(rows))
    extra = {}
    if response_format == "json_schema":
        extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "qa_pairs", "schema": PAIRS_SCHEMA}}
    elif response_format == "json_object":
        extra["response_format"] = {"type": "json_object"}
    conversations = []
    for r in rows:
        section = f", section \"{r['section']}\"" if r["section"] and r["section"] != r["title"] else ""
        conversations.append([{"role": "system", "content": SYSTEM},
                              {"role": "user", "content": USER.format(title=r["title"] or r["doc"], section=section,
                                                                      text=r["text"], n=per_chunk)}])
    report.asked = len(conversations)
    answers = remote.chat_many(conversations, concurrency=concurrency, max_tokens=160 * per_chunk + 64,
                               temperature=0.0, **extra)

    candidates: list[tuple[dict, dict]] = []  # (pair, chunk row)
    for r, ans in zip(rows, answers):
        if isinstance(ans, Exception):
            report.failed_requests += 1
            if len(report.errors) < 5:
                report.errors.append(str(ans))
            continue
        pairs = parse_pairs(ans["text"])
        if pairs is None:
            report.unparsed += 1
            report.truncated += ans.get("finish_reason") == "length"
            continue
        report.generated += len(pairs)
        candidates.extend((p, r) for p in pairs[:per_chunk])
    if report.failed_requests == len(rows):
        raise KBError(f"every request to the model failed; the first: {report.errors[0]}",
                      fix="check the endpoint with `modelmill models add NAME --endpoint URL --check`")

    # duplicates: exact after normalising, then near by embedding
    embedder = kb.embedder
    seen: set[str] = set()
    unique = []
    for p, r in candidates:
        key = _norm(p["question"])
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        unique.append((p, r))
    kept: list[tuple[dict, dict]] = []
    if unique:
        vecs = embedder.encode([p["question"] for p, _ in unique])
        chosen: list[int] = []
        for i in range(len(unique)):
            if chosen and float(np.max(vecs[chosen] @ vecs[i])) >= dup_similarity:
                report.duplicates += 1
                continue
            chosen.append(i)
        kept = [unique[i] for i in chosen]

    supported = []
    for p, r in kept:
        g = groundedness(p["answer"], [(kb.name, Hit.from_row(r, 1.0))], embedder)
        if g["score"] is None or g["unsupported"]:
            report.unsupported += 1
            continue
        supported.append((p, r))
    if not supported:
        raise KBError(f"no pair survived the filters ({report.generated} generated, {report.unparsed} replies "
                      f"unparsed, {report.duplicates} duplicates, {report.unsupported} not supported by their chunk)",
                      fix="use a stronger model, or check its replies with `modelmill chat`")

    # split by chunk
    chunk_ids = sorted({r["id"] for _, r in supported})
    rng = random.Random(seed)
    n_test = max(1, round(test_size * len(chunk_ids))) if len(chunk_ids) > 1 else 0
    test_chunks = set(rng.sample(chunk_ids, n_test))
    train, test = [], []
    for p, r in supported:
        rec = {"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}],
               "source": {"kb": kb.name, "document": r["doc"], "section": r["section"], "page": r["page"],
                          "chunk_id": r["id"], "start": int(r["start"]), "end": int(r["end"])}}
        (test if r["id"] in test_chunks else train).append(rec)
    catalog = catalog or DatasetCatalog(kb.store)
    origin = {"op": "synthesize", "kb": kb.name, "kb_revision": kb.revision(), "model": getattr(remote, "model", None),
              "endpoint": getattr(remote, "endpoint", None), "per_chunk": per_chunk, "seed": seed,
              "filters": {"generated": report.generated, "unparsed": report.unparsed,
                          "duplicates": report.duplicates, "unsupported": report.unsupported}}
    if train:
        row, _ = catalog.save(name, train, "chat", "messages", None, {**origin, "split": "train"})
        report.datasets.append(row.ref)
    if test:
        row, _ = catalog.save(f"{name}-test", test, "chat", "messages", None, {**origin, "split": "test"})
        report.datasets.append(row.ref)
    report.train, report.test = len(train), len(test)
    return report
