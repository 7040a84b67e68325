"""The adapter registry: every fine-tune with its lineage (base + hash, dataset version, config,
library versions, metrics, time, and the adapters it was made from).

    reg = AdapterRegistry(open_store())
    base, adapter = reg.resolve_ref("smollm2-135m-instruct:reviews-lora")
    reg.history("both")       # the adapter and, nested, every parent it was merged from

``merge.py`` merges adapters into a new one (peft's add_weighted_adapter); ``export.py`` writes
the base with an adapter merged in as a whole Hugging Face model folder.
"""

from __future__ import annotations

from contextlib import contextmanager

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
        check_not_a_model(self.store, row.name)
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
        sources and weights (relation "merge"), an adapter trained ``--from`` another lists that one
        (relation "from"); a parent removed since (or whose name another adapter has taken
        since) is kept by name with ``removed: true``."""
        row = self.get(name)
        parents = []
        for p in row.parents or []:
            now = self.find(p["name"])
            if now is None or now.id != p.get("id"):
                parents.append({"name": p["name"], "weight": p.get("weight"), "relation": p.get("relation", "merge"),
                                "removed": True})
            else:
                parents.append({"weight": p.get("weight"), "relation": p.get("relation", "merge"),
                                **self.history(p["name"])})
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


def check_name_free(store: Store, name: str, field: str = "--name", *, checkpoints: bool = True) -> None:
    """Refuse a new adapter's name already taken by an adapter or (``checkpoints``) by an
    interrupted training run."""
    if AdapterRegistry(store).find(name) is not None:
        raise ConflictError(f"an adapter named '{name}' already exists", field=field,
                            fix=f"choose another {field}, or `modelmill adapters remove {name}`")
    check_not_a_model(store, name, field)
    folder = store.adapters_dir / name
    if folder.exists() or folder.is_symlink():  # not registered: never ours to delete
        raise ConflictError(f"the store already holds a folder {folder} that no adapter owns", field=field,
                            fix=f"choose another {field}, or move that folder out of the store")
    ckpts = store.runs_dir / name / "checkpoints"
    if checkpoints and ckpts.is_dir() and any(ckpts.glob("checkpoint-*")):
        raise ConflictError(f"an interrupted run named '{name}' has checkpoints", field=field,
                            fix=f"continue it with `modelmill train --name {name} --resume`, or choose another "
                                f"{field}")


def check_not_a_model(store: Store, name: str, field: str = "--name") -> None:
    """Refuse an adapter name that a base model (registered, built-in or remote) has: a model id
    ``NAME`` would then mean either one."""
    from modelmill.models.builtin import BUILTIN_MODELS

    with store.session() as s:
        taken = name in BUILTIN_MODELS or s.scalar(select(BaseModel.id).where(BaseModel.name == name)) is not None
    if taken:
        raise ConflictError(f"'{name}' is the name of a base model; adapters and models share one namespace",
                            field=field, fix=f"choose another {field} (see `modelmill models list`)")


@contextmanager
def name_lock(store: Store, name: str, wait: float = 0.0, field: str = "--name"):
    """Held while the adapter ``name`` is made (a training run, a merge). A second one fails at
    once, or after ``wait`` seconds (a queued job's next attempt waits while an earlier copy winds
    down)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        with store.lock(f"run-{name}", wait=False) as held:
            if held:
                yield
                return
        if time.monotonic() >= deadline:
            raise ConflictError(f"'{name}' is being trained or merged right now", field=field,
                                fix=f"wait for it, or choose another {field}")
        time.sleep(0.5)
