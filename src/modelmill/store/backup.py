"""The metadata database's health: check it, back it up while everything runs, restore a backup.

    modelmill db check                 # PRAGMA integrity_check: "ok", or what is damaged
    modelmill db backup [FILE]         # a consistent copy, taken online (SQLite's backup API)
    modelmill db restore FILE          # the damaged file moves aside; the backup takes its place

These open the SQLite file directly, never through the Store (which would migrate it first), so
they work on a database too damaged to open. PostgreSQL has its own tools (``pg_dump``,
``pg_restore``, ``amcheck``); these commands say so.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

from modelmill.errors import InputError, ModelmillError

CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class DatabaseDamaged(ModelmillError):
    exit_code = 5


def sqlite_file(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise InputError("the metadata database is not SQLite", field="MODELMILL_DATABASE_URL",
                         fix="use PostgreSQL's own tools: pg_dump / pg_restore for backups, amcheck for checks")
    return Path(url.removeprefix("sqlite:///"))


def is_damage(e: BaseException) -> bool:
    """Whether a database error (sqlite3's, or SQLAlchemy's wrapping one) says the file is damaged,
    as opposed to busy or locked."""
    orig = getattr(e, "orig", e)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in CORRUPT_CODES
    text = str(orig).lower()
    return "malformed" in text or "not a database" in text


def damaged(path: Path | str, e: BaseException) -> DatabaseDamaged:
    """The one-line error for a damaged database file, with what to do."""
    orig = getattr(e, "orig", e)
    return DatabaseDamaged(f"the metadata database is damaged ({orig})", file=str(path),
                           fix="restore a backup with `modelmill db restore FILE` (make them with `modelmill db "
                               "backup`); `modelmill db check` lists what is damaged; or move the file away to "
                               "start with an empty registry (the artifacts under MODELMILL_HOME stay)")


def check(path: Path) -> list[str]:
    """Problems ``PRAGMA integrity_check`` finds (empty: the file is sound). A file SQLite cannot
    open at all is one problem."""
    if not path.is_file():
        raise InputError("no database file", file=str(path), fix="check MODELMILL_HOME")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = [r[0] for r in con.execute("PRAGMA integrity_check")]
            rows += [f"foreign key: {r}" for r in con.execute("PRAGMA foreign_key_check")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if not is_damage(e):
            raise
        return [str(e)]
    return [] if rows == ["ok"] else rows


def backup(path: Path, dest: Path | None = None) -> Path:
    """A consistent copy of the live database (SQLite's online backup: writers may go on), checked,
    written next to its final name and renamed into place."""
    if not path.is_file():
        raise InputError("no database file to back up", file=str(path), fix="check MODELMILL_HOME")
    problems = check(path)
    if problems:
        raise damaged(path, RuntimeError("; ".join(problems[:3])))
    if dest is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = path.parent / "backups" / f"{path.stem}-{stamp}.db"
    dest = Path(dest)
    if dest.exists():
        raise InputError("already exists", file=str(dest), fix="name a new file, or remove that one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        src = sqlite3.connect(str(path), timeout=30)
        out = sqlite3.connect(str(tmp))
        try:
            with out:
                src.backup(out, pages=1024)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            out.close()
            src.close()
        if check(tmp):
            raise DatabaseDamaged("the backup copy failed its integrity check", file=str(dest),
                                  fix="check the disk, then run `modelmill db backup` again")
        tmp.rename(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def restore(path: Path, source: Path) -> Path | None:
    """Put the backup ``source`` in place of ``path``. The file it replaces (with its -wal and -shm
    files) moves aside to ``<name>.replaced-<time>``, whose path is returned; nothing is deleted.
    Stop the server and workers first: they hold the old file open."""
    source = Path(source)
    problems = check(source)
    if problems:
        raise InputError(f"the backup is damaged too ({problems[0]})", file=str(source),
                         fix="restore an older backup")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copy2(source, tmp)
    aside = None
    try:
        if path.exists():
            aside = path.with_name(f"{path.name}.replaced-{stamp}")
            path.rename(aside)
            for extra in ("-wal", "-shm"):
                side = path.with_name(path.name + extra)
                if side.exists():
                    side.rename(aside.with_name(aside.name + extra))
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return aside
