"""The tables. A change here needs a new Alembic migration in store/migrations/versions/."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
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
    # what it was made from: [{"name": ..., "weight": ...}] for a merge; [] for a fine-tune of the base
    parents: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
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


class Job(Base):
    """A queued unit of work (train, eval, grid) and where it stands.

    ``status`` moves validating_files -> queued -> running -> succeeded | failed | cancelled; a
    job whose worker stops heartbeating goes back to queued and ``attempts`` grows by one.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftjob-<hex>
    kind: Mapped[str] = mapped_column(String(20), index=True)  # train | eval | grid | a plugin's kind
    status: Mapped[str] = mapped_column(String(20), index=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)  # the kind's config, as submitted
    resources: Mapped[dict] = mapped_column(JSON, default=dict)  # {"cpu": slots, "gpu": devices}
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the base model, when there is one
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    training_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the worker running it now
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its runner process on that worker's host
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict] = mapped_column(JSON, default=dict)  # what the kind returned (adapter, metrics ...)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {"code", "message", "param"}
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the API key's id
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobEvent(Base):
    """One line of a job's history: a message, or the metrics of one training step."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")  # info | warn | error
    type: Mapped[str] = mapped_column(String(10), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Worker(Base):
    """A running ``modelmill worker``: what it offers and when it last said it was alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # host:pid:<hex>
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    resources: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="alive")  # alive | stopped | lost
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UploadedFile(Base):
    """A file uploaded through ``/v1/files``; fine-tune files are validated on upload."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-<hex>
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="processed")
    info: Mapped[dict] = mapped_column(JSON, default=dict)  # format, kind, num_records
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # key_<hex>
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to recognise it in a list
    hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[list] = mapped_column(JSON, default=list)  # admin | train | infer
    models: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Preference(Base):
    """A judgement from the playground: for these messages, one model's answer beat another's."""

    __tablename__ = "preferences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[list] = mapped_column(JSON)  # the conversation up to the answers
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    chosen_model: Mapped[str] = mapped_column(String(300))
    rejected_model: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    """A thumb from the playground: this one answer, to these messages, was good or bad (KTO data)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[list] = mapped_column(JSON)  # the conversation up to the answer
    completion: Mapped[str] = mapped_column(Text)
    label: Mapped[bool] = mapped_column(Boolean)  # true: thumbs up
    model: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Deployment(Base):
    """A published model: a stable name clients call, pointing at a model or adapter (and knowledge)."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    model: Mapped[str] = mapped_column(String(300))  # BASE, ADAPTER or BASE:ADAPTER
    knowledge_bases: Mapped[list] = mapped_column(JSON, default=list)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    gate: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the task a new model must win on
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentEvent(Base):
    """What happened to a deployment: created, promoted, refused (with both scores), rolled back."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(20))  # created | updated | promoted | forced | refused | rolled back
    model: Mapped[str] = mapped_column(String(300))  # what it points at after (refused: what was proposed)
    previous: Mapped[str | None] = mapped_column(String(300), nullable=True)
    task: Mapped[str | None] = mapped_column(String(200), nullable=True)
    metric: Mapped[str | None] = mapped_column(String(40), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # the new model's
    previous_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    margin: Mapped[float | None] = mapped_column(Float, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class App(Base):
    """An app served under a model id (today: a router over adapters of one base). ``spec`` is what
    the user asked for, ``state`` what was learned (a router's classifier), ``metrics`` how well."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # router
    base_model: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LookupTable(Base):
    """A business table that workflows look rows up in: rows stored here (a JSON, JSONL or CSV file
    the user added), or a table of an SQL database read at query time (``source`` = its URL)."""

    __tablename__ = "lookup_tables"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(10))  # file | sql
    source: Mapped[str] = mapped_column(Text)  # the file the user named, or the database URL
    sql_table: Mapped[str | None] = mapped_column(String(200), nullable=True)
    columns: Mapped[list] = mapped_column(JSON, default=list)
    rows: Mapped[list] = mapped_column(JSON, default=list)  # file tables only
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkflowRun(Base):
    """One run of a workflow: its inputs, output and trace (each node's inputs, output, time, tokens)."""

    __tablename__ = "workflow_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20))  # ok | flagged | failed
    inputs: Mapped[dict] = mapped_column(JSON, default=dict)
    output: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    trace: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class BotConversation(Base):
    """A dialogue bot's conversation: its tracked state and its turns (each with acts, lookup, modules)."""

    __tablename__ = "bot_conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    bot: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[dict] = mapped_column(JSON, default=dict)
    turns: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
