"""Knowledge bases: add documents, remove them, and query them with BM25, vectors or both.

    kbs = KnowledgeBases(open_store())
    kb = kbs.create("policies")                       # MiniLM embeddings, LanceDB, 200-token chunks
    report = kb.add(["refunds.md", "prices.xlsx"])    # parsed, chunked, embedded, indexed
    hits = kb.query("how long do refunds take?", k=5) # hybrid: BM25 + vectors, fused by RRF
    hits[0].doc, hits[0].section, hits[0].text, hits[0].ranks   # {"bm25": 1, "vector": 3}

A document is named by its file name: adding a file of the same name again replaces it
(nothing happens when its content is unchanged). Every change bumps the knowledge base's
revision; the next query, in this process or another, sees it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelmill.errors import ConflictError, NotFoundError
from modelmill.kb.types import Chunk, Document, KBError
from modelmill.names import check_name

MODES = ("hybrid", "bm25", "vector")
TITLE_ROOM = 32  # tokens kept free in each embedded chunk for its "title > section" line
# Weighted reciprocal-rank fusion. On FiQA (bench/retrieval.py) MiniLM alone beats BM25 by 15
# points of hit@5, and plain RRF (k=60, equal weights) lands below MiniLM (0.764 vs 0.782).
# Halving BM25's vote and a small k (a sharper head) put hybrid above it on a broad plateau:
# k 5-10 with BM25 weights 0.2-0.5 all gave 0.789-0.796, pools of 20 to 100. Both are
# per-query options, because on keyword-heavy data (product codes, Chinese terms) BM25
# deserves more.
RRF_K = 10
WEIGHTS = {"bm25": 0.5, "vector": 1.0}


@dataclass
class Hit:
    id: str
    doc: str
    title: str
    section: str
    page: int | None
    start: int
    end: int
    text: str
    score: float                      # the fused RRF score (or the one retriever's score)
    ranks: dict = field(default_factory=dict)   # retriever -> 1-based rank
    scores: dict = field(default_factory=dict)  # retriever -> its own score (BM25, cosine similarity)

    @classmethod
    def from_row(cls, r: dict, score: float = 0.0) -> Hit:
        """A chunk as the vector store returns it (``vectors.FIELDS``) as a hit."""
        return cls(id=r["id"], doc=r["doc"], title=r["title"], section=r["section"], page=r["page"],
                   start=int(r["start"]), end=int(r["end"]), text=r["text"], score=score)

    def citation(self, kb: str) -> dict:
        return {"knowledge_base": kb, "document": self.doc, "title": self.title, "section": self.section,
                "page": self.page, "chunk_id": self.id, "start": self.start, "end": self.end, "text": self.text}


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error message)
    chunks: int = 0
    seconds: float = 0.0


class KnowledgeBases:
    """The registry of knowledge bases in one store."""

    def __init__(self, store):
        self.store = store

    def create(self, name: str, *, embedder: str | None = None, vector_store: str = "lancedb",
               chunk_tokens: int = 200, chunk_overlap: int = 40, reranker: str | None = None) -> KnowledgeBase:
        from modelmill.kb.chunk import check_chunking
        from modelmill.kb.embed import DEFAULT_EMBEDDER, open_embedder
        from modelmill.store.tables import KnowledgeBase as Row

        check_name(name, "NAME")
        check_chunking(chunk_tokens, chunk_overlap)
        with self.store.session() as s:
            if s.query(Row).filter_by(name=name).first() is not None:
                raise ConflictError(f"knowledge base '{name}' already exists",
                                    fix=f"add documents with `modelmill kb add {name} FILES`, or pick another name")
        if reranker and reranker != "none":
            from modelmill.kb.rerank import open_reranker

            reranker = str(open_reranker(reranker).path)
        emb = open_embedder(embedder or DEFAULT_EMBEDDER, self.store)
        dims = emb.dimensions  # fails now, not at the first add, when the embedder is not there
        limit = getattr(emb, "max_tokens", None)  # local models say; remote endpoints do not
        if limit and chunk_tokens > limit - TITLE_ROOM:
            raise KBError(f"{chunk_tokens} tokens do not fit {emb.name}, which reads {limit} tokens and drops the "
                          f"rest", field="--chunk-tokens",
                          fix=f"use at most {limit - TITLE_ROOM} (room is kept for the title and section line)")
        folder = self.store.kb_dir / name
        if folder.exists():  # left by a create that failed half-way: nothing registered points at it
            self.store.remove_tree(folder)
        row = Row(name=name, embedder=emb.name, dimensions=dims, vector_store=vector_store or "lancedb",
                  chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, reranker=reranker or None, revision=0,
                  path=str(folder))
        from modelmill.kb.vectors import open_vectors

        open_vectors(row.vector_store, folder, dims).check_new()  # a bad URL fails before anything is stored
        folder.mkdir(parents=True, exist_ok=True)
        with self.store.session() as s:
            s.add(row)
        return KnowledgeBase(self.store, row, embedder=emb)

    def get(self, name: str) -> KnowledgeBase:
        from modelmill.store.tables import KnowledgeBase as Row

        with self.store.session() as s:
            row = s.query(Row).filter_by(name=name).first()
        if row is None:
            names = [r.name for r in self.list()]
            raise NotFoundError(f"no knowledge base named '{name}'" + (f" (there are: {', '.join(names)})" if names else ""),
                                fix=f"create it with `modelmill kb create {name}`; `modelmill kb list` shows them")
        return KnowledgeBase(self.store, row)

    def list(self) -> list:
        from modelmill.store.tables import KnowledgeBase as Row

        with self.store.session() as s:
            return s.query(Row).order_by(Row.name).all()

    def delete(self, name: str) -> None:
        from modelmill.store.tables import KBDocument
        from modelmill.store.tables import KnowledgeBase as Row

        kb = self.get(name)
        with self.store.lock(f"kb-{name}"):
            kb.vectors.drop_all()
            with self.store.session() as s:
                s.query(KBDocument).filter_by(kb=name).delete()
                s.query(Row).filter_by(name=name).delete()
            self.store.remove_tree(Path(kb.row.path))


class KnowledgeBase:
    def __init__(self, store, row, *, embedder=None):
        self.store = store
        self.row = row
        self.name = row.name
        self._embedder = embedder
        self._vectors = None
        self._bm25 = None  # (revision, BM25Index)

    @property
    def embedder(self):
        if self._embedder is None:
            from modelmill.kb.embed import open_embedder

            self._embedder = open_embedder(self.row.embedder, self.store)
        return self._embedder

    @property
    def vectors(self):
        if self._vectors is None:
            from modelmill.kb.vectors import open_vectors

            self._vectors = open_vectors(self.row.vector_store, Path(self.row.path), self.row.dimensions)
        return self._vectors

    def revision(self) -> int:
        from modelmill.store.tables import KnowledgeBase as Row

        with self.store.session() as s:
            found = s.query(Row.id, Row.revision).filter_by(name=self.name).first()
        if found is None or found[0] != self.row.id:  # deleted (and perhaps created anew: revisions restart)
            raise NotFoundError(f"knowledge base '{self.name}' was deleted" + (" and created again" if found else ""),
                                fix="open it again" if found else f"create it again with `modelmill kb create {self.name}`")
        return int(found[1])

    def documents(self) -> list:
        from modelmill.store.tables import KBDocument

        with self.store.session() as s:
            return s.query(KBDocument).filter_by(kb=self.name).order_by(KBDocument.name).all()

    # -- writing

    def add(self, paths: list[str | Path], *, encoding: str | None = None, max_bytes: int | None = None) -> AddReport:
        """Parse, chunk, embed and index each file (a folder: every supported file in it, at any
        depth). A file that fails is reported in ``failed`` and leaves nothing behind; the
        others are added."""
        from modelmill.kb.parse import MAX_BYTES, SUPPORTED, parse
        from modelmill.plugins import load_plugins

        load_plugins("modelmill.kb_parsers")  # a plugin's suffixes count when scanning folders
        report = AddReport()
        started = time.monotonic()
        docs: list[tuple[str, Document, str, int, str]] = []
        seen: dict[str, str] = {}
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED
                               and not any(part.startswith(".") for part in f.relative_to(p).parts))
                if not found:
                    report.failed.append((str(p), f"{p}: folder has no {', '.join(SUPPORTED)} files (hidden files and "
                                                  "folders are skipped). Fix: put documents in it, name the files "
                                                  "themselves, or add a parser plugin for their type"))
                files.extend(found)
            else:
                files.append(p)
        for path in files:
            try:
                if path.name in seen:
                    raise KBError(f"has the same file name as {seen[path.name]}; documents are named by file name",
                                  file=str(path), fix="rename one of them, or add them to different knowledge bases")
                seen[path.name] = str(path)
                doc = parse(path, encoding=encoding, max_bytes=max_bytes or MAX_BYTES)
                data = path.read_bytes()
                # the encoding is part of what was indexed: the same bytes read another way are new text
                digest = hashlib.sha256(data + f"\0{encoding or ''}".encode()).hexdigest()
                docs.append((path.name, doc, digest, len(data), str(path)))
            except KBError as e:
                report.failed.append((str(path), str(e)))
        self.add_documents(docs, report)
        report.seconds = time.monotonic() - started
        return report

    def add_documents(self, docs: list[tuple[str, Document, str, int, str]], report: AddReport | None = None) -> AddReport:
        """Add parsed documents, each ``(name, document, content_hash, size_bytes, source)``, in one write."""
        from modelmill.kb.chunk import chunk
        from modelmill.kb.tokens import bm25_tokens, count_tokens
        from modelmill.store.tables import KBDocument

        report = report or AddReport()
        with self.store.lock(f"kb-{self.name}"):
            existing = {d.name: d for d in self.documents()}
            rows, texts, new_docs, replaced_ids = [], [], [], []
            for name, doc, content_hash, size, source in docs:
                old = existing.get(name)
                if old is not None and old.content_hash == content_hash:
                    report.unchanged.append(name)
                    continue
                doc_id = hashlib.sha256(f"{self.name}\0{name}\0{content_hash}\0{self.row.chunk_tokens}\0"
                                        f"{self.row.chunk_overlap}".encode()).hexdigest()[:32]
                chunks: list[Chunk] = chunk(doc, max_tokens=self.row.chunk_tokens, overlap=self.row.chunk_overlap)
                if not chunks:
                    report.failed.append((source, f"{source}: has no text to index"))
                    continue
                for c in chunks:
                    indexed = c.indexed_text
                    texts.append(indexed)
                    rows.append({"id": f"{doc_id}-{c.ordinal}", "doc_id": doc_id, "doc": name, "title": c.title,
                                 "section": c.section, "page": c.page, "start": c.start, "end": c.end,
                                 "ordinal": c.ordinal, "text": c.text, "tokens": " ".join(bm25_tokens(indexed))})
                new_docs.append(KBDocument(kb=self.name, name=name, doc_id=doc_id, source=source, title=doc.title,
                                           format=doc.format, content_hash=content_hash, size_bytes=size,
                                           n_chunks=len(chunks), n_tokens=sum(count_tokens(c.text) for c in chunks)))
                if old is not None:
                    replaced_ids.append(old.doc_id)
                    report.replaced.append(name)
                else:
                    report.added.append(name)
            if not new_docs:
                return report
            vectors = self.embedder.encode(texts)
            try:
                self.vectors.write(rows, vectors, replace_doc_ids=replaced_ids)
                with self.store.session() as s:
                    for d in new_docs:
                        s.query(KBDocument).filter_by(kb=self.name, name=d.name).delete()
                        s.add(d)
                    revision = self._bump_revision(s)
            except BaseException:
                # the metadata did not change: take the new chunks back out, so that no chunk is in the
                # store without its document (a replaced document's old chunks may be gone already;
                # adding that file again restores it)
                self.vectors.delete([d.doc_id for d in new_docs])
                raise
            report.chunks += len(rows)
            self._rebuild_bm25(revision)
        return report

    def remove(self, names: list[str]) -> list[str]:
        """Remove documents by name; every name must be in the knowledge base."""
        from modelmill.store.tables import KBDocument

        with self.store.lock(f"kb-{self.name}"):
            existing = {d.name: d for d in self.documents()}
            missing = [n for n in names if n not in existing]
            if missing:
                raise NotFoundError(f"knowledge base '{self.name}' has no document named {', '.join(map(repr, missing))}",
                                    fix=f"`modelmill kb list {self.name}` shows its documents")
            self.vectors.delete([existing[n].doc_id for n in names])
            with self.store.session() as s:
                s.query(KBDocument).filter(KBDocument.kb == self.name, KBDocument.name.in_(names)).delete()
                revision = self._bump_revision(s)
            self._rebuild_bm25(revision)
        return names

    def _bump_revision(self, session) -> int:
        """One more change to the documents, in the caller's transaction; the new revision."""
        from modelmill.store.tables import KnowledgeBase as Row
        from modelmill.store.tables import utcnow

        row = session.query(Row).filter_by(name=self.name).one()
        row.revision += 1
        row.updated_at = utcnow()
        return row.revision

    def _rebuild_bm25(self, revision: int):
        from modelmill.kb.bm25 import BM25Index, index_folder, prune

        rows = self.vectors.rows(("id", "tokens"))
        index = BM25Index.build([r["id"] for r in rows], [r["tokens"] for r in rows])
        folder = index_folder(Path(self.row.path), revision)
        if not folder.is_dir():
            index.save(folder)
        prune(Path(self.row.path), revision)
        self._bm25 = (revision, index)
        return index

    def bm25(self):
        """The BM25 index of the current revision: cached, loaded from disk, or rebuilt."""
        from modelmill.kb.bm25 import BM25Index, index_folder

        revision = self.revision()
        if self._bm25 is not None and self._bm25[0] == revision:
            return self._bm25[1]
        folder = index_folder(Path(self.row.path), revision)
        try:
            index = BM25Index.load(folder)
            self._bm25 = (revision, index)
            return index
        except FileNotFoundError:  # not written (a writer died before indexing) or pruned meanwhile
            pass
        with self.store.lock(f"kb-{self.name}"):
            revision = self.revision()
            folder = index_folder(Path(self.row.path), revision)
            if (folder / "ids.json").is_file():  # the writer we waited for has just saved it
                self._bm25 = (revision, BM25Index.load(folder))
                return self._bm25[1]
            return self._rebuild_bm25(revision)

    # -- reading

    def query(self, question: str, *, k: int = 5, mode: str = "hybrid", pool: int | None = None,
              vector=None, weights: dict[str, float] | None = None, rerank: str | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``question``. ``pool`` is how deep each retriever looks before
        fusion (default max(4k, 20)); ``vector`` is the question's embedding when the caller has it;
        ``weights`` ({"bm25": 0.5, "vector": 1.0} by default) weigh each retriever's vote in hybrid;
        ``rerank`` is a cross-encoder folder that reorders the fused pool (default: the knowledge
        base's own ``reranker``; ``"none"`` turns it off)."""
        if mode not in MODES:
            raise KBError(f"unknown retrieval mode {mode!r}", field="--mode", fix=f"use one of {', '.join(MODES)}")
        if not isinstance(k, int) or k < 1:
            raise KBError(f"must be an integer >= 1, got {k!r}", field="-k", fix="e.g. -k 5")
        pool = pool or max(4 * k, 20)
        rankings, rows = self.rankings(question, pool,
                                       retrievers=("bm25", "vector") if mode == "hybrid" else (mode,), vector=vector)
        rerank = self.row.reranker if rerank is None else rerank
        if not rerank or rerank == "none":
            return fuse(rankings, rows, k, weights=weights)
        from modelmill.kb.rerank import open_reranker

        hits = fuse(rankings, rows, pool, weights=weights)
        scores = open_reranker(rerank).score(question, [f"{h.title} > {h.section}\n{h.text}" for h in hits])
        for h, s in zip(hits, scores):
            h.scores["rerank"], h.score = s, s
        hits.sort(key=lambda h: -h.score)
        for rank, h in enumerate(hits, 1):
            h.ranks["rerank"] = rank
        return hits[:k]

    def rankings(self, question: str, pool: int, *, retrievers=("bm25", "vector"), vector=None):
        """Each retriever's ranking, ``{name: [(chunk id, score), ...]}``, and the chunks' rows."""
        from modelmill.kb.tokens import bm25_tokens

        if not isinstance(question, str) or not question.strip():
            raise KBError("the question is empty", field="question", fix="ask something")
        rankings: dict[str, list[tuple[str, float]]] = {}
        rows: dict[str, dict] = {}
        if "bm25" in retrievers:
            found = self.bm25().search(bm25_tokens(question), pool)
            rankings["bm25"] = found
            rows.update(self.vectors.get([i for i, _ in found]))
        if "vector" in retrievers:
            if vector is None:
                vector = self.embedder.encode([question])[0]
            found = self.vectors.search(vector, pool)
            rankings["vector"] = [(r["id"], r["similarity"]) for r in found]
            rows.update({r["id"]: r for r in found})
        return rankings, rows


def fuse(rankings: dict[str, list[tuple[str, float]]], rows: dict[str, dict], k: int, *,
         weights: dict[str, float] | None = None, rrf_k: int = RRF_K) -> list[Hit]:
    """Weighted reciprocal-rank fusion: each chunk scores sum(weight / (rrf_k + rank)) over the
    retrievers that found it. With one retriever its own score is kept instead."""
    if weights is not None and (any(w not in WEIGHTS for w in weights) or not all(
            isinstance(v, (int, float)) and v >= 0 for v in weights.values())):
        raise KBError(f"bad retriever weights {weights!r}", field="--weights",
                      fix="e.g. bm25=0.5,vector=1 (retrievers bm25 and vector, weights >= 0)")
    weights = {**WEIGHTS, **(weights or {})}
    hits: dict[str, Hit] = {}
    for name, ranking in rankings.items():
        for rank, (cid, score) in enumerate(ranking, 1):
            r = rows.get(cid)
            if r is None:  # removed between the two look-ups
                continue
            h = hits.get(cid)
            if h is None:
                h = hits[cid] = Hit.from_row(r)
            h.ranks[name] = rank
            h.scores[name] = score
            h.score += weights.get(name, 1.0) / (rrf_k + rank) if len(rankings) > 1 else score
    return sorted(hits.values(), key=lambda h: (-h.score, min(h.ranks.values()), h.id))[:k]
