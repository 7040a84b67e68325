"""Deployments: a stable name clients call, pointing at a model or adapter, its knowledge and system prompt.

    Deployments(store).put("support-bot", "smollm2-135m-instruct:support-lora", ["policies"])
    # then: POST /v1/chat/completions {"model": "support-bot", ...}

Moving a deployment to a newer adapter is one ``put``: clients keep calling the same name.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from modelmill.errors import InputError, NotFoundError
from modelmill.names import check_name
from modelmill.store.tables import Deployment


class Deployments:
    def __init__(self, store):
        self.store = store

    def list(self) -> list[Deployment]:
        with self.store.session() as s:
            return list(s.scalars(select(Deployment).order_by(Deployment.name)))

    def find(self, name: str) -> Deployment | None:
        with self.store.session() as s:
            return s.scalar(select(Deployment).where(Deployment.name == name))

    def put(self, name: str, model: str, knowledge_bases: list[str] | None = None,
            system_prompt: str | None = None) -> Deployment:
        """Create or update ``name``; the model and knowledge bases must exist now."""
        from modelmill.adapters import AdapterRegistry
        from modelmill.apps import check_app_name_free

        check_name(name, "name")
        reg = AdapterRegistry(self.store)
        if self.find(name) is None:  # a new one: its name is a model id of its own
            check_app_name_free(self.store, name, "name")
        if self.find(model) is not None:
            raise InputError("a deployment cannot point at another deployment", field="model",
                             fix="name the model or adapter itself")
        reg.resolve_ref(model)  # NotFoundError names what is missing
        kbs = list(dict.fromkeys(knowledge_bases or []))
        if kbs:
            from modelmill.kb.base import KnowledgeBases

            for kb in kbs:
                KnowledgeBases(self.store).get(kb)
        now = datetime.now(timezone.utc)
        with self.store.lock(f"deployment-{name}"), self.store.session() as s:  # create-or-update, one at a time
            row = s.scalar(select(Deployment).where(Deployment.name == name))
            if row is None:
                row = Deployment(name=name, created_at=now)
                s.add(row)
            row.model, row.knowledge_bases, row.system_prompt, row.updated_at = model, kbs, system_prompt, now
        return self.find(name)

    def remove(self, name: str) -> None:
        with self.store.session() as s:
            row = s.scalar(select(Deployment).where(Deployment.name == name))
            if row is None:
                raise NotFoundError(f"no deployment '{name}'", field="name", fix="list them with GET /api/deployments")
            s.delete(row)

