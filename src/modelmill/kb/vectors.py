"""Where a knowledge base's chunks and their vectors live.

``lancedb`` (the default) is embedded: a folder under the knowledge base, nothing to run. A
Qdrant server is used by URL (``--vector-store http://qdrant:6333``). Both keep the same row:

    id, doc_id, doc, title, section, page, start, end, ordinal, text, tokens, vector

``tokens`` are the BM25 tokens (space-joined), stored so the BM25 index can be rebuilt from the
store alone. Writes are per call: one call's documents appear together or not at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from modelmill.kb.types import KBError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("modelmill.kb")

FIELDS = ("id", "doc_id", "doc", "title", "section", "page", "start", "end", "ordinal", "text", "tokens")
# Below this many chunks a flat scan is exact and fast; above it an ANN index keeps latency flat.
INDEX_AT = 20_000


class LanceVectors:
    """LanceDB table ``chunks`` in ``folder``."""

    def __init__(self, folder: Path, dimensions: int):
        import lancedb

        self.folder = Path(folder)
        self.dimensions = dimensions
        self._db = lancedb.connect(str(self.folder))
        self._table = None

    def _schema(self):
        import pyarrow as pa

        return pa.schema([
            ("id", pa.string()), ("doc_id", pa.string()), ("doc", pa.string()), ("title", pa.string()),
            ("section", pa.string()), ("page", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
            ("ordinal", pa.int32()), ("text", pa.string()), ("tokens", pa.string()),
            ("vector", pa.list_(pa.float32(), self.dimensions)),
        ])

    def table(self, create: bool = False):
        if self._table is None:
            try:
                self._table = self._db.open_table("chunks")
            except (FileNotFoundError, ValueError):
                if not create:
                    return None
                self._table = self._db.create_table("chunks", schema=self._schema())
                self._table.create_scalar_index("id")
                self._table.create_scalar_index("doc_id")
        else:
            self._table.checkout_latest()  # another process (the CLI, a server) may have written
        return self._table

    def write(self, rows: list[dict], vectors: np.ndarray, *, replace_doc_ids: list[str] = ()) -> None:
        """Insert ``rows`` and drop the chunks of ``replace_doc_ids``, in one commit."""
        import pyarrow as pa

        table = self.table(create=True)
        data = {f: [r[f] for r in rows] for f in FIELDS}
        data["vector"] = list(vectors)
        batch = pa.Table.from_pydict(data, schema=self._schema())
        merge = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if replace_doc_ids:
            merge = merge.when_not_matched_by_source_delete(_in("doc_id", replace_doc_ids))
        merge.execute(batch)
        try:
            self._maintain(table)
        except Exception as e:  # noqa: BLE001 - upkeep only: the write is committed and queries stay right
            log.warning("LanceDB upkeep (index or compaction) failed, will retry on the next write: %s", e)

    def delete(self, doc_ids: list[str]) -> None:
        table = self.table()
        if table is not None and doc_ids:
            table.delete(_in("doc_id", doc_ids))

    def search(self, vector, k: int) -> list[dict]:
        """The ``k`` nearest chunks, each with ``similarity`` (cosine, higher is nearer)."""
        table = self.table()
        if table is None or k <= 0:
            return []
        q = table.search(vector).metric("cosine").select([*FIELDS, "_distance"]).limit(k)
        if self._indexed(table):
            q = q.nprobes(32).refine_factor(4)  # recall close to the exact scan at this size
        out = q.to_list()
        for r in out:
            r["similarity"] = 1.0 - float(r.pop("_distance"))
        return out

    def get(self, ids: list[str]) -> dict[str, dict]:
        table = self.table()
        if table is None or not ids:
            return {}
        rows = table.search().where(_in("id", ids)).select(list(FIELDS)).limit(len(ids)).to_list()
        return {r["id"]: r for r in rows}

    def rows(self, fields=FIELDS) -> list[dict]:
        """Every chunk's ``fields`` (no vectors): all of them to synthesize from, id and tokens to
        rebuild the BM25 index."""
        table = self.table()
        if table is None:
            return []
        return table.search().select(list(fields)).limit(table.count_rows() or 1).to_list()

    def count(self) -> int:
        table = self.table()
        return 0 if table is None else table.count_rows()

    def check_new(self) -> None:
        """At create: nothing to check for an embedded store."""

    def drop_all(self) -> None:
        """Delete every chunk (the folder itself goes with the knowledge base)."""
        self._table = None
        try:
            self._db.drop_table("chunks")
        except (FileNotFoundError, ValueError):
            pass

    def _vector_index(self, table):
        return next((i for i in table.list_indices() if list(getattr(i, "columns", [])) == ["vector"]), None)

    def _indexed(self, table) -> bool:
        return self._vector_index(table) is not None

    def _maintain(self, table) -> None:
        """Index the vectors once a flat scan would show in query latency, fold new rows into the
        index before they are a tenth of it, and compact the small fragments writes leave."""
        n = table.count_rows()
        index = self._vector_index(table)
        if index is None:
            if n >= INDEX_AT:
                table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                                   num_partitions=max(1, n // 8192))
            elif len(table.list_versions()) % 20 == 0:
                table.optimize()
            return
        # statistics without the centroids (lance's coming default; setting it also silences a warning)
        os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
        unindexed = table.index_stats(index.name).num_unindexed_rows
        if unindexed > max(2000, n // 10) or len(table.list_versions()) % 20 == 0:
            table.optimize()


def _in(column: str, values: list[str]) -> str:
    # only ids we made (hex) reach here, never user text; quotes are doubled all the same
    return f"{column} IN (" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


def open_vectors(url: str, folder: Path, dimensions: int):
    """The vector store a knowledge base names: ``lancedb`` or a Qdrant URL."""
    if url in ("", "lancedb"):
        return LanceVectors(Path(folder) / "lance", dimensions)
    if url.startswith(("http://", "https://", "qdrant+local:")):
        import hashlib

        from modelmill.kb.qdrant import QdrantVectors

        folder = Path(folder).resolve()
        suffix = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
        return QdrantVectors(url, collection=f"{folder.name}_{suffix}", dimensions=dimensions)
    raise KBError(f"unknown vector store {url!r}", field="--vector-store",
                  fix="use lancedb (embedded, the default) or a Qdrant server URL such as http://localhost:6333")
