"""A Qdrant server as a knowledge base's vector store (``--vector-store http://host:6333``).

Each knowledge base is one collection, ``modelmill_<name>_<id>`` (the id from the knowledge
base's folder, so two modelmill homes can share one server), with cosine distance; a chunk is a
point whose payload holds the same fields as the LanceDB row. ``qdrant+local:/path`` runs
qdrant-client's embedded mode instead of a server, to try the backend on one machine.

Qdrant has no multi-point transactions: a replaced document's new chunks are written before
its old ones are deleted, so a query in between may see both, never neither.
"""

from __future__ import annotations

import os
import uuid

from modelmill.kb.types import KBError
from modelmill.kb.vectors import FIELDS

_NS = uuid.UUID("6f1c4a52-7d0e-4c3b-9a57-1b2f0c7e9d11")
BATCH = 256
_clients: dict = {}


def _point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(_NS, chunk_id))


class QdrantVectors:
    def __init__(self, url: str, *, collection: str, dimensions: int):
        from qdrant_client import QdrantClient

        self.url = url
        self.collection = f"modelmill_{collection}"
        self.dimensions = dimensions
        try:
            # one client per URL and process: the embedded mode locks its folder against a second one
            self._client = _clients.get(url)
            if self._client is None:
                if url.startswith("qdrant+local:"):
                    self._client = QdrantClient(path=url.split(":", 1)[1])
                else:  # QDRANT_API_KEY, as Qdrant's own tools read it, for a server that wants one
                    self._client = QdrantClient(url=url, timeout=30, api_key=os.environ.get("QDRANT_API_KEY"))
                _clients[url] = self._client
        except Exception as e:  # noqa: BLE001 - the client raises many kinds; all mean "cannot use this URL"
            raise KBError(f"cannot open the Qdrant store at {url}: {e}", field="--vector-store",
                          fix="check the URL and that the server is running") from None

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except KBError:
            raise
        except Exception as e:  # noqa: BLE001
            raise KBError(f"Qdrant at {self.url}: {what} failed: {type(e).__name__}: {e}", field="--vector-store",
                          fix="check that the Qdrant server is up and reachable") from None

    def check_new(self) -> None:
        """At create: the server answers, and the collection is not someone else's already."""
        if self._exists():
            raise KBError(f"Qdrant at {self.url} already has a collection '{self.collection}'", field="--vector-store",
                          fix="delete that collection, or create the knowledge base under another name")

    def _exists(self) -> bool:
        return bool(self._call("collection_exists", self._client.collection_exists, self.collection))

    def _ensure(self) -> None:
        from qdrant_client import models

        if self._exists():
            return
        self._call("create_collection", self._client.create_collection, self.collection,
                   vectors_config=models.VectorParams(size=self.dimensions, distance=models.Distance.COSINE))
        self._call("create_payload_index", self._client.create_payload_index, self.collection, "doc_id",
                   field_schema=models.PayloadSchemaType.KEYWORD)

    def write(self, rows: list[dict], vectors, *, replace_doc_ids: list[str] = ()) -> None:
        from qdrant_client import models

        self._ensure()
        for i in range(0, len(rows), BATCH):
            points = [models.PointStruct(id=_point_id(r["id"]), vector=[float(x) for x in v],
                                         payload={f: r[f] for f in FIELDS})
                      for r, v in zip(rows[i:i + BATCH], vectors[i:i + BATCH])]
            self._call("upsert", self._client.upsert, self.collection, points=points, wait=True)
        self.delete(list(replace_doc_ids))

    def delete(self, doc_ids: list[str]) -> None:
        from qdrant_client import models

        if not doc_ids or not self._exists():
            return
        flt = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))])
        self._call("delete", self._client.delete, self.collection, points_selector=models.FilterSelector(filter=flt),
                   wait=True)

    def search(self, vector, k: int) -> list[dict]:
        if k <= 0 or not self._exists():
            return []
        res = self._call("query_points", self._client.query_points, self.collection,
                         query=[float(x) for x in vector], limit=k, with_payload=True)
        return [{**p.payload, "similarity": float(p.score)} for p in res.points]

    def get(self, ids: list[str]) -> dict[str, dict]:
        if not ids or not self._exists():
            return {}
        pts = self._call("retrieve", self._client.retrieve, self.collection, ids=[_point_id(i) for i in ids],
                         with_payload=True)
        return {p.payload["id"]: dict(p.payload) for p in pts}

    def rows(self, fields=FIELDS) -> list[dict]:
        out: list[dict] = []
        offset = None
        while self._exists():
            pts, offset = self._call("scroll", self._client.scroll, self.collection, limit=1024, offset=offset,
                                     with_payload=list(fields), with_vectors=False)
            out.extend(dict(p.payload) for p in pts)
            if offset is None:
                break
        return out

    def count(self) -> int:
        if not self._exists():
            return 0
        return int(self._call("count", self._client.count, self.collection, exact=True).count)

    def drop_all(self) -> None:
        if self._exists():
            self._call("delete_collection", self._client.delete_collection, self.collection)
