"""The adapter registry: every fine-tune with its lineage (base + hash, dataset version, config,
library versions, metrics, time, and the adapters it was made from).

    reg = AdapterRegistry(open_store())
    base, adapter = reg.resolve_ref("smollm2-135m-instruct:reviews-lora")
    reg.history("both")       # the adapter and, nested, every parent it was merged from

``merge.py`` merges adapters into a new one (peft's add_weighted_adapter); ``export.py`` writes
the base with an adapter merged in as a whole Hugging Face model folder.
"""

from __future__ import annotations

from sqlalchemy import select

from modelmill.errors import ConflictError, NotFoundError
from modelmill.store import Store
from modelmill.store.tables import Adapter, BaseModel


class AdapterRegistry:
    def __init__(self, store: Store):
        self.store = store

    def list(self, base: str | None = None) -> list[Adapter]:
        with self.store.session() as s:
            q = select(Adapter).order_by(Adapter.created_at.desc(), Adapter.id.desc())
            if base:
                q = q.where(Adapter.base_model == base)
            return list(s.scalars(q))

    def find(self, name: str) -> Adapter | None:
        with self.store.session() as s:
            return s.scalar(select(Adapter).where(Adapter.name == name))

    def get(self, name: str) -> Adapter:
        row = self.find(name)
        if row is None:
            names = ", ".join(a.name for a in self.list()) or "none yet"
            raise NotFoundError(f"unknown adapter '{name}' (adapters: {names})",
                                fix="see `modelmill adapters list`, or train one with `modelmill train`")
        return row

    def add(self, row: Adapter) -> Adapter:
        if self.find(row.name) is not None:
            raise ConflictError(f"an adapter named '{row.name}' already exists", field="--name",
                                fix="choose another --name, or `modelmill adapters remove` the old one")
        with self.store.session() as s:
            s.add(row)
        return row

    def remove(self, name: str) -> Adapter:
        from pathlib import Path

        row = self.get(name)
        with self.store.session() as s:
            s.delete(s.get(Adapter, row.id))
        self.store.remove_tree(Path(row.path))
        return row

    def history(self, name: str) -> dict:
        """The adapter's lineage with its parents' nested in it, all the way up: a merge lists its
        sources and weights; a parent removed since (or whose name another adapter has taken
        since) is kept by name with ``removed: true``."""
        row = self.get(name)
        parents = []
        for p in row.parents or []:
            now = self.find(p["name"])
            if now is None or now.id != p.get("id"):
                parents.append({"name": p["name"], "weight": p.get("weight"), "removed": True})
            else:
                parents.append({"weight": p.get("weight"), **self.history(p["name"])})
        return {"name": row.name, "method": row.method, "base_model": row.base_model,
                "base_model_sha256": row.base_model_hash, "dataset": f"{row.dataset}@{row.dataset_version}",
                "dataset_sha256": row.dataset_hash, "created_at": row.created_at.isoformat(),
                "merge": (row.config or {}).get("merge"), "parents": parents}

    def resolve_ref(self, ref: str) -> tuple[BaseModel, Adapter | None]:
        """``BASE``, ``ADAPTER`` or ``BASE:ADAPTER`` -> (base model row, adapter row or None)."""
        from modelmill.models.registry import ModelRegistry

        models = ModelRegistry(self.store)
        base_name, sep, adapter_name = ref.partition(":")
        if sep:
            adapter = self.get(adapter_name)
            if adapter.base_model != base_name:
                raise ConflictError(
                    f"adapter '{adapter_name}' was trained on '{adapter.base_model}', not on '{base_name}'",
                    field="MODEL", fix=f"use {adapter.base_model}:{adapter_name}, or just {adapter_name}")
            return models.get(base_name), adapter
        adapter = self.find(ref)
        if adapter is not None:
            return models.get(adapter.base_model), adapter
        return models.get(ref), None
