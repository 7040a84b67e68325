"""Content hashes of model files for lineage, cached so a 500 MB base is hashed once.

    from modelmill.models.hashing import file_sha256
    file_sha256(home / "models" / "smollm2-135m-instruct", cache_dir=home / "cache")

A file's hash is its SHA-256. A folder's hash is the SHA-256 of the lines
``<relative path>\\t<sha256>\\n`` of its weight files, sorted by path, so it changes when
the weights change and not when a README or a tokenizer comment does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from modelmill.errors import InputError
from modelmill.models._files import atomic_write_text

CACHE_FILE = "sha256-cache.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_CHUNK = 4 << 20  # 4 MiB reads


def _stream_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Cache:
    """(absolute path, size, mtime_ns) -> sha256, in one JSON file; damaged files are ignored."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text("utf-8"))
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def hash(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.entries.get(key)
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        digest = _stream_sha256(path)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path and self.dirty:
            # Re-read first so two processes hashing different files both keep their entries.
            merged = {}
            if self.path.is_file():
                try:
                    old = json.loads(self.path.read_text("utf-8"))
                    merged = old if isinstance(old, dict) else {}
                except (OSError, ValueError):
                    merged = {}
            merged.update(self.entries)
            merged = {k: v for k, v in merged.items() if os.path.exists(k)}  # forget deleted files
            atomic_write_text(self.path, json.dumps(merged, indent=1, sort_keys=True))


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files under ``folder`` (recursively), sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def file_sha256(path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file, or of a model folder's weight files (see the module doc).

    With ``cache_dir``, hashes are remembered in ``cache_dir/sha256-cache.json`` keyed by
    path, size and modification time, and reused while those stay the same.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("file not found", file=str(path), fix="check the path")
    cache = _Cache(Path(cache_dir).expanduser() if cache_dir is not None else None)
    try:
        if path.is_file():
            return cache.hash(path)
        files = folder_weight_files(path)
        if not files:
            raise InputError(f"no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) in the folder",
                             file=str(path), fix="point at a model folder that holds its weights")
        lines = "".join(f"{f.relative_to(path).as_posix()}\t{cache.hash(f)}\n" for f in files)
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()
    finally:
        cache.save()
