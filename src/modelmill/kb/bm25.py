"""The BM25 side of retrieval: bm25s over the chunks' stored tokens (jieba for CJK text).

The index is rebuilt from the vector store after each change and saved under
``kb/<name>/bm25/rev-<revision>/``; a query loads the folder of the knowledge base's current
revision (memory-mapped, so a CLI query starts fast) and rebuilds it if it is missing.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path


class BM25Index:
    def __init__(self, retriever, ids: list[str]):
        self._retriever = retriever
        self.ids = ids

    @classmethod
    def build(cls, ids: list[str], tokens: list[str]) -> BM25Index:
        import bm25s

        retriever = bm25s.BM25()
        if ids:
            retriever.index([t.split() for t in tokens], show_progress=False)
        return cls(retriever, ids)

    def save(self, folder: Path) -> None:
        """Written to a temporary folder, then renamed: a reader never sees half an index."""
        folder = Path(folder)
        tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            if self.ids:
                self._retriever.save(str(tmp))
            (tmp / "ids.json").write_text(json.dumps(self.ids))
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not folder.is_dir():  # another process saved the same revision first: fine
                raise

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import bm25s

        ids = json.loads((Path(folder) / "ids.json").read_text())
        retriever = bm25s.BM25.load(str(folder), mmap=True) if ids else bm25s.BM25()
        return cls(retriever, ids)

    def search(self, query_tokens: list[str], k: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) of the best ``k`` chunks with a score above zero."""
        vocab = getattr(self._retriever, "vocab_dict", None) or {}
        terms = [t for t in query_tokens if t in vocab]
        k = min(k, len(self.ids))
        if not terms or k <= 0:
            return []
        docs, scores = self._retriever.retrieve([terms], k=k, show_progress=False, n_threads=1)
        return [(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


def index_folder(kb_folder: Path, revision: int) -> Path:
    return Path(kb_folder) / "bm25" / f"rev-{revision}"


def prune(kb_folder: Path, keep: int) -> None:
    """Drop the indexes of revisions before ``keep - 1``. The one before stays for a reader that
    read the old revision number a moment ago; one that has an index open keeps its mmap."""
    root = Path(kb_folder) / "bm25"
    for d in root.glob("rev-*") if root.is_dir() else ():
        name = d.name.split(".", 1)[0]
        if name[4:].isdigit() and int(name[4:]) < keep - 1:
            shutil.rmtree(d, ignore_errors=True)
