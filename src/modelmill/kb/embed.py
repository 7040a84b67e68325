"""Text embedders for the knowledge base, named by one string stored with the knowledge base.

    all-minilm-l6-v2         the bundled MiniLM (default; offline, 384 dimensions)
    remote:NAME              a model registered with `modelmill models add NAME --endpoint URL`;
                             its OpenAI-compatible /v1/embeddings is called
    /path/to/folder          any local sentence-transformers folder

    e = open_embedder("all-minilm-l6-v2")
    e.encode(["a text", "another"])   # (2, e.dimensions) float32, unit length
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelmill.kb.types import KBError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
BATCH = 64


class LocalEmbedder:
    """A sentence-transformers model. Texts longer than the model reads are cut at its limit: a
    chunk is made to fit, but its title/section prefix may push a few tokens over."""

    def __init__(self, embedder):
        self.name = embedder.name
        self._embedder = embedder  # a models.embedder.Embedder: loads the model, holds its lock

    @property
    def dimensions(self) -> int:
        return self._embedder.dimensions

    @property
    def max_tokens(self) -> int:
        return self._embedder.max_tokens

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._embedder.vectors(texts, batch_size=BATCH)


class RemoteEmbedder:
    """A registered remote model's /v1/embeddings, BATCH texts a request."""

    def __init__(self, name: str, remote):
        self.name = name
        self._remote = remote
        self._dimensions: int | None = None

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            self._dimensions = int(self.encode(["dimensions probe"]).shape[1])
        return self._dimensions

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        out = []
        for i in range(0, len(texts), BATCH):
            out.extend(self._remote.embed(texts[i:i + BATCH]))
        v = np.asarray(out, dtype=np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # cosine = dot, as for MiniLM
        return v


_local_embedders: dict[str, LocalEmbedder] = {}


def _local(name: str, path: Path) -> LocalEmbedder:
    """One instance (one loaded model) per local folder and process, however many knowledge
    bases use it."""
    from modelmill.models.embedder import Embedder

    if name not in _local_embedders:
        _local_embedders[name] = LocalEmbedder(Embedder(name, path))
    return _local_embedders[name]


def open_embedder(spec: str, store=None):
    """The embedder named by ``spec`` (see the module docstring)."""
    from modelmill.models.embedder import DEFAULT_NAME, Embedder

    spec = (spec or DEFAULT_EMBEDDER).strip()
    if spec == DEFAULT_NAME:  # the process's one MiniLM, which /v1/embeddings also uses
        return LocalEmbedder(Embedder.default())
    if spec.startswith("remote:"):
        from modelmill.models.registry import ModelRegistry, is_remote
        from modelmill.models.remote import RemoteModel
        from modelmill.store.db import open_store

        name = spec.split(":", 1)[1]
        row = ModelRegistry(store or open_store()).get(name)
        if not is_remote(row):
            raise KBError(f"model '{name}' is not a remote endpoint", field="--embedder",
                          fix=f"register one with `modelmill models add {name} --endpoint URL`, or use "
                              f"{DEFAULT_EMBEDDER}")
        return RemoteEmbedder(spec, RemoteModel.from_row(row))
    folder = Path(spec).expanduser()
    if (folder / "modules.json").is_file():
        return _local(str(folder.resolve()), folder.resolve())
    raise KBError(f"unknown embedder {spec!r}", field="--embedder",
                  fix=f"use {DEFAULT_EMBEDDER} (bundled), remote:NAME (a model registered with --endpoint), "
                      "or a sentence-transformers folder")
