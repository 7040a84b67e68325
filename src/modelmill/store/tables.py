"""The tables. A change here needs a new Alembic migration in store/migrations/versions/."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class BaseModel(Base):
    """A registered base model: where its Hugging Face folder is and what it is."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    source_type: Mapped[str] = mapped_column(String(20))  # builtin | hf | gguf | remote
    source: Mapped[str] = mapped_column(Text)  # the folder or .gguf file the user named
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # HF folder we load (None until converted)
    chat_template: Mapped[str | None] = mapped_column(Text, nullable=True)  # override, when the folder has none
    file_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    info: Mapped[dict] = mapped_column(JSON, default=dict)  # architecture, parameters, context length ...
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    """One version of a named dataset; the version is the start of its content hash."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_dataset_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)
    num_records: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[list | None] = mapped_column(JSON, nullable=True)
    origin: Mapped[dict] = mapped_column(JSON, default=dict)  # file imported, or op + parents (clean/split/mix)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Adapter(Base):
    """A fine-tune (LoRA adapter, or full weights) with its lineage."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    base_model: Mapped[str] = mapped_column(String(200), index=True)
    base_model_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(20))  # lora | full
    dataset: Mapped[str] = mapped_column(String(200))
    dataset_version: Mapped[str] = mapped_column(String(16))
    dataset_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    versions: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalResult(Base):
    """One candidate scored on one task: its metrics, lineage and where its scored items are.

    ``key`` identifies what was scored (task, data and prompt settings, candidate and its weights):
    a second run with the same key resumes or reuses this row instead of scoring again.
    """

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    task: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    dataset: Mapped[str] = mapped_column(Text)  # NAME@VERSION or a file path
    dataset_hash: Mapped[str] = mapped_column(String(64))
    candidate: Mapped[str] = mapped_column(String(300), index=True)  # display name, e.g. few-shot(5):base
    candidate_kind: Mapped[str] = mapped_column(String(20))  # model | adapter | few-shot | classical | remote
    base_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    adapter: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # running | done | failed
    n: Mapped[int] = mapped_column(Integer)  # items in the task
    n_done: Mapped[int] = mapped_column(Integer, default=0)  # items scored and kept so far
    primary: Mapped[str] = mapped_column(String(40))  # the headline metric (higher is better)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # metrics[primary], for ranking
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict] = mapped_column(JSON, default=dict)  # task spec, candidate spec, hashes, versions
    parameters: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # scoring time, summed over resumed runs
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    path: Mapped[str] = mapped_column(Text)  # folder holding items.jsonl
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KnowledgeBase(Base):
    """A knowledge base: how its documents are chunked and embedded, and where its vectors live.

    ``revision`` grows by one with every change to its documents; the BM25 index on disk and the
    server's caches are tagged with it, so the next query after a change sees the change.
    """

    __tablename__ = "knowledge_bases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    embedder: Mapped[str] = mapped_column(String(300))  # all-minilm-l6-v2 | remote:NAME | a local folder
    dimensions: Mapped[int] = mapped_column(Integer)
    vector_store: Mapped[str] = mapped_column(Text)  # lancedb (embedded, under the kb folder) or a server URL
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    reranker: Mapped[str | None] = mapped_column(Text, nullable=True)  # a cross-encoder folder, or None
    revision: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(Text)  # kb/<name>/: the embedded vector store and the BM25 index
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KBDocument(Base):
    """One document of a knowledge base; its chunks live in the vector store under ``doc_id``."""

    __tablename__ = "kb_documents"
    __table_args__ = (UniqueConstraint("kb", "name", name="uq_kb_document_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kb: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(500))  # the file name, unique in its knowledge base
    doc_id: Mapped[str] = mapped_column(String(64))  # changes when the content changes
    source: Mapped[str] = mapped_column(Text)  # the path as added
    title: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(20))
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    n_chunks: Mapped[int] = mapped_column(Integer)
    n_tokens: Mapped[int] = mapped_column(Integer, default=0)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
