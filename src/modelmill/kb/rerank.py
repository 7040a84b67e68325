"""Optional reranking: a cross-encoder reads the question and each fused candidate together and
scores their relevance, which single-vector retrieval cannot do.

    modelmill kb create policies --rerank /models/bge-reranker-base     # the default for its queries
    modelmill kb query policies "..." --rerank /models/ms-marco-MiniLM   # or per query; `none` turns it off

The model is any local sentence-transformers CrossEncoder folder (nothing is downloaded). The
fused pool (``pool`` chunks, default max(4k, 20)) is reranked and the best ``k`` kept; each hit
keeps its BM25 and vector ranks beside the reranker's.
"""

from __future__ import annotations

import threading
from pathlib import Path

from modelmill.kb.types import KBError

_models: dict[str, CrossEncoderReranker] = {}


class CrossEncoderReranker:
    def __init__(self, path: Path):
        self.path = path
        self._model = None
        self._lock = threading.Lock()

    def score(self, question: str, texts: list[str]) -> list[float]:
        with self._lock:
            if self._model is None:
                from sentence_transformers import CrossEncoder

                from modelmill.models._files import progress_bars

                with progress_bars(False):
                    self._model = CrossEncoder(str(self.path), local_files_only=True)
            scores = self._model.predict([(question, t) for t in texts], show_progress_bar=False)
        return [float(s) for s in scores]


def open_reranker(spec: str) -> CrossEncoderReranker:
    """The cross-encoder in folder ``spec``, loaded once per process."""
    folder = Path(spec).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise KBError(f"{spec!r} is not a model folder (no config.json)", field="--rerank",
                      fix="give a local sentence-transformers CrossEncoder folder, or `none`")
    key = str(folder)
    if key not in _models:
        _models[key] = CrossEncoderReranker(folder)
    return _models[key]
