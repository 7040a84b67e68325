"""Small file helpers for the models package: whole-or-nothing writes, quiet saves, and the
folders of packages that ship model files."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def package_folders(package: str) -> list[Path]:
    """The folders of an installed package, found without importing it (its ``__init__`` may pull
    in things modelmill does not need); empty when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []


def temp_sibling(dst: Path, tag: str = "tmp") -> Path:
    """A fresh hidden path next to ``dst`` (same filesystem, so a rename is atomic)."""
    return dst.parent / f".{dst.name}.{tag}-{uuid.uuid4().hex[:8]}"


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an old ``dst`` if any."""
    if dst.exists():
        old = temp_sibling(dst, "old")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except OSError:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def share_like_new_files(folder: Path) -> None:
    """Give the files in ``folder`` the mode a new file gets under the current umask.

    transformers writes weight shards through ``mkstemp`` (mode 0600), so without this a
    model converted by one user could not be read by a server running as another.
    """
    probe = folder / f".mode-probe-{uuid.uuid4().hex[:8]}"
    probe.touch()
    try:
        mode = probe.stat().st_mode & 0o777
    finally:
        probe.unlink()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)  # open(..., "x") rather than mkstemp: keeps the umask's mode
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """Hide transformers' tqdm bars for the duration when not ``enabled``; then restore.

    ``enabled=True`` leaves the user's own setting (HF_HUB_DISABLE_PROGRESS_BARS) alone.
    """
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()
