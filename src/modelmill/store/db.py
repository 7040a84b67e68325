"""The Store: one database plus the artifact folders under MODELMILL_HOME.

Artifact layout (all under ``$MODELMILL_HOME``, default ``~/.modelmill``)::

    modelmill.db                  SQLite metadata (unless MODELMILL_DATABASE_URL points elsewhere)
    models/<name>/                converted or copied Hugging Face folders of base models
    datasets/<name>/<version>/    data.jsonl (canonical records) + meta.json
    runs/<adapter>/               a training run: config.json, checkpoints/, metrics.jsonl, tb/, train.log
    adapters/<adapter>/           the published adapter (or full weights) + lineage.json
    evals/<result-key>/           one candidate scored on one task: items.jsonl, appended as it goes
    kb/<name>/                    a knowledge base: lance/ (embedded vector store), bm25/rev-<n>/ (BM25 index)
    jobs/<job-id>/                a queued job's log (job.log), written by its runner
    files/<file-id>               uploads through /v1/files
    tmp/                          staging: everything is written here first, then renamed into place
    cache/                        file hashes and other derived data
    locks/                        lock files: one conversion or run of a name at a time
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelmill.config import Settings, get_settings

MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = Path(settings.home).expanduser().resolve()
        for sub in ("models", "datasets", "runs", "adapters", "evals", "kb", "jobs", "files", "tmp", "cache", "locks"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.engine = _engine(settings.db_url, settings.db_timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        from sqlalchemy.exc import DatabaseError

        from modelmill.store.backup import damaged, is_damage

        try:
            migrate(self.engine)
        except DatabaseError as e:  # a damaged file: one line naming it and what to do, not a traceback
            if not is_damage(e):
                raise
            self.engine.dispose()
            raise damaged(settings.db_url.removeprefix("sqlite:///"), e) from None

    # folders
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def evals_dir(self) -> Path:
        return self.home / "evals"

    @property
    def kb_dir(self) -> Path:
        return self.home / "kb"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def staging(self, final: Path) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it is renamed to ``final``, on error removed.

        ``final`` must not exist yet. The rename is atomic on one file system, so readers see
        either nothing or the whole folder.
        """
        final = Path(final)
        if final.exists() or final.is_symlink():  # not ours to replace: it may be someone's files
            from modelmill.errors import ConflictError

            raise ConflictError(f"the store already holds a folder {final}",
                                fix="choose another name, or move that folder out of the store")
        tmp = self.home / "tmp" / f"{final.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextmanager
    def lock(self, name: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the file lock ``locks/<name>.lock`` across processes. With ``wait=False``, yields
        False at once when another process holds it (and holds nothing then)."""
        import fcntl

        with open(self.home / "locks" / f"{name}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def remove_tree(self, path: Path) -> None:
        """Remove an artifact folder: first renamed into tmp/ (atomic), then deleted."""
        path = Path(path)
        if not path.exists():
            return
        trash = self.home / "tmp" / f"trash.{path.name}.{uuid.uuid4().hex[:8]}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def _engine(url: str, timeout: float = 30.0) -> Engine:
    kwargs: dict = {}
    if url.startswith("sqlite"):
        # Several processes (CLI, workers, server) share the file: wait for locks rather than fail.
        kwargs["connect_args"] = {"timeout": timeout}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragma(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@lru_cache(maxsize=8)
def _store_for(home: str, url: str) -> Store:
    s = get_settings()
    return Store(s)


def open_store(settings: Settings | None = None) -> Store:
    """The Store for the given settings (default: the environment's), opened once per process."""
    if settings is not None:
        return Store(settings)
    s = get_settings()
    return _store_for(str(s.home), s.db_url)
