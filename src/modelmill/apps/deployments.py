"""Deployments: a stable name clients call, pointing at a model, adapter or router, with its knowledge
bases, system prompt and gate.

    deps = Deployments(store)
    deps.put("support-bot", "smollm2-135m-instruct:support-lora", ["policies"],
             gate={"data": "support-test", "margin": 0.02})
    # then: POST /v1/chat/completions {"model": "support-bot", ...}

A deployment with a gate moves to a new model only through :func:`modelmill.apps.promotion.promote`,
which scores both on the gate task; every change is kept in its history (``deployment_events``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from modelmill.errors import InputError, NotFoundError
from modelmill.names import check_name
from modelmill.store.tables import Deployment, DeploymentEvent

_KEEP = object()  # put(): leave the gate as it is


def check_target(store, model: str, field: str = "model") -> None:
    """A deployment points at a model, an adapter (BASE:ADAPTER too) or a router; NotFoundError or
    InputError saying why ``model`` is none of them."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.apps import Apps

    if Deployments(store).find(model) is not None:
        raise InputError("a deployment cannot point at another deployment", field=field,
                         fix="name the model or adapter itself")
    if model.startswith("flow:") or (":" not in model and (app := Apps(store).find(model)) is not None
                                     and app.kind == "workflow"):
        raise InputError(f"'{model}' is a workflow: it is served as flow:NAME itself, and a deployment's gate cannot "
                         "score it", field=field, fix="point the deployment at a model, an adapter or a router")
    if ":" not in model and (app := Apps(store).find(model)) is not None:
        return  # a router
    AdapterRegistry(store).resolve_ref(model)  # NotFoundError names what is missing


def check_gate(store, gate: dict | None) -> dict | None:
    """The gate as stored: {"data", "kind", "name", "metric", "margin", "limit"}; InputError naming a bad field."""
    from modelmill.data.catalog import DatasetCatalog

    if gate is None:
        return None
    known = {"data", "kind", "name", "metric", "margin", "limit"}
    extra = sorted(set(gate) - known)
    if extra:
        raise InputError(f"unknown gate field '{extra[0]}'", field="gate", fix=f"the fields are {', '.join(sorted(known))}")
    if not gate.get("data"):
        raise InputError("a gate needs the test set it scores on", field="gate.data",
                         fix="name a dataset: --gate-data support-test")
    DatasetCatalog(store).resolve(str(gate["data"]), flag="gate.data")
    margin = gate.get("margin", 0.0)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not -1 <= margin <= 1:
        raise InputError(f"margin must be a number from -1 to 1, got {margin!r}", field="gate.margin",
                         fix="e.g. 0.02: the new model must score 2 points (of 100) more")
    limit = gate.get("limit", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InputError(f"limit must be a whole number >= 0, got {limit!r}", field="gate.limit")
    return {"data": str(gate["data"]), "kind": str(gate.get("kind") or ""), "name": str(gate.get("name") or ""),
            "metric": str(gate.get("metric") or ""), "margin": float(margin), "limit": limit}


class Deployments:
    def __init__(self, store):
        self.store = store

    def list(self) -> list[Deployment]:
        with self.store.session() as s:
            return list(s.scalars(select(Deployment).order_by(Deployment.name)))

    def find(self, name: str) -> Deployment | None:
        with self.store.session() as s:
            return s.scalar(select(Deployment).where(Deployment.name == name))

    def get(self, name: str) -> Deployment:
        row = self.find(name)
        if row is None:
            names = ", ".join(d.name for d in self.list()) or "none yet"
            raise NotFoundError(f"no deployment '{name}' (deployments: {names})", field="name",
                                fix="`modelmill deploy list` (GET /api/deployments) shows them")
        return row

    def put(self, name: str, model: str, knowledge_bases: list[str] | None = None,
            system_prompt: str | None = None, gate=_KEEP) -> Deployment:
        """Create or update ``name``; the model and knowledge bases must exist now. A deployment with a
        gate is moved to another model only by promotion (InputError here)."""
        from modelmill.apps import check_app_name_free

        check_name(name, "name")
        check_target(self.store, model)
        kbs = list(dict.fromkeys(knowledge_bases or []))
        if kbs:
            from modelmill.kb.base import KnowledgeBases

            for kb in kbs:
                KnowledgeBases(self.store).get(kb)
        new_gate = check_gate(self.store, gate) if gate is not _KEEP else None
        # create-or-update, one at a time: whether the name is new is decided under the lock, so that
        # concurrent creates of one name make one deployment and update it (not 409 "already a deployment")
        with self.store.lock(f"deployment-{name}"):
            old = self.find(name)
            if old is None:  # a new one: its name is a model id of its own
                check_app_name_free(self.store, name, "name")
            if old is not None and old.gate and old.model != model:
                raise InputError(f"deployment '{name}' has a gate: it moves to '{model}' only if that wins on "
                                 f"{old.gate['data']}", field="model",
                                 fix=f"`modelmill deploy promote {name} {model}` (POST /api/deployments/{name}/promote)")
            self._write(name, model, kbs, system_prompt, gate, new_gate)
        return self.find(name)

    def _write(self, name, model, kbs, system_prompt, gate, new_gate) -> None:
        now = datetime.now(timezone.utc)
        with self.store.session() as s:
            row = s.scalar(select(Deployment).where(Deployment.name == name))
            previous = row.model if row is not None else None
            if row is None:
                row = Deployment(name=name, created_at=now)
                s.add(row)
            row.model, row.knowledge_bases, row.system_prompt, row.updated_at = model, kbs, system_prompt, now
            if gate is not _KEEP:
                row.gate = new_gate
            if previous != model:
                s.add(DeploymentEvent(deployment=name, action="created" if previous is None else "updated",
                                      model=model, previous=previous, created_at=now))

    def set_gate(self, name: str, gate: dict | None) -> Deployment:
        """Set or remove (None) the gate of ``name``; nothing else changes."""
        new_gate = check_gate(self.store, gate)
        with self.store.lock(f"deployment-{name}"), self.store.session() as s:
            row = s.scalar(select(Deployment).where(Deployment.name == name))
            if row is None:
                raise NotFoundError(f"no deployment '{name}'", field="name",
                                    fix="`modelmill deploy list` (GET /api/deployments) shows them")
            row.gate, row.updated_at = new_gate, datetime.now(timezone.utc)
        return self.get(name)

    def remove(self, name: str) -> None:
        from sqlalchemy import delete

        with self.store.session() as s:
            row = s.scalar(select(Deployment).where(Deployment.name == name))
            if row is None:
                raise NotFoundError(f"no deployment '{name}'", field="name", fix="list them with GET /api/deployments")
            s.delete(row)
            s.execute(delete(DeploymentEvent).where(DeploymentEvent.deployment == name))
