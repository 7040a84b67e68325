"""One step from a request's ``model`` id to what serves it.

    resolver = Resolver(store, router, bindings={"tiny": ["policies"]})
    target, spec = resolver.resolve("support-bot")   # a deployment -> its model, knowledge, prompt

Apps are looked up first (a router, which chooses a model per request from its last user
message; a deployment's published name), then the id goes to the serving router (``BASE``,
``ADAPTER``, ``BASE:ADAPTER``). Knowledge bases reach a model one way: as
the target's ``knowledge``. A deployment carries its own; ``modelmill serve --knowledge
MODEL=KB`` binds a model id for the life of the server, as a deployment of that id to itself
would. Everything is looked up per request, so what is registered after start-up serves at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from modelmill.errors import EngineError, InputError, NotFoundError
from modelmill.serve.router import Router, Target

log = logging.getLogger("modelmill.serve")


def model_key(target: Target) -> str:
    """The id a binding is matched on: BASE or BASE:ADAPTER, however the request named it."""
    return f"{target.base_name}:{target.adapter_name}" if target.adapter_name else target.base_name


class Resolver:
    def __init__(self, store, router: Router, bindings: dict[str, list[str]] | None = None):
        """``bindings``: {model id: [knowledge base, ...]} (``--knowledge``); each knowledge base
        must exist now (InputError naming the flag); a model not registered yet binds once it is."""
        from modelmill.kb.base import KnowledgeBases

        self.store = store
        self.router = router
        self.bound: dict[str, list[str]] = {}       # BASE or BASE:ADAPTER -> knowledge bases
        self.unresolved: dict[str, list[str]] = {}  # model ids not (yet) registered
        self._routers: dict[str, tuple] = {}  # app name -> (updated_at, Routes)
        kbs = KnowledgeBases(store)
        for model, names in (bindings or {}).items():
            for name in names:
                try:
                    kbs.get(name)
                except NotFoundError as e:
                    raise InputError(f"model '{model}' is bound to {e.message}", field="--knowledge",
                                     fix=e.fix) from None
            try:
                target, _ = router.resolve(model)
            except EngineError:
                log.warning("--knowledge: model '%s' is not registered (yet); its binding applies once it is", model)
                self.unresolved[model] = names
                continue
            self.bound[model_key(target)] = names

    def router_app(self, model_id: str):
        """The router app named ``model_id``, ready to choose (None: not a router)."""
        from modelmill.apps import Apps
        from modelmill.apps.router import Routes

        if not isinstance(model_id, str) or not model_id or ":" in model_id:
            return None
        row = Apps(self.store).find(model_id)
        if row is not None and row.kind in ("workflow", "bot"):
            prefix = "flow" if row.kind == "workflow" else "bot"
            raise EngineError(f"'{model_id}' is a {row.kind}: call it as model '{prefix}:{model_id}' in chat "
                              "completions", status=404, code="model_not_found", param="model")
        if row is None or row.kind != "router":
            return None
        cached = self._routers.get(row.name)
        if cached is None or cached[0] != row.updated_at:
            cached = (row.updated_at, Routes(row))
            self._routers[row.name] = cached
        return cached[1]

    async def resolve_request(self, model_id: str, messages: list[dict] | None) -> tuple[Target, dict]:
        """As :meth:`resolve`, for one request: a router chooses its route from the last user message
        of ``messages`` (embedded on the one embedding thread), and the target says so in ``route``."""
        from modelmill.kb.rag import question_of
        from modelmill.models.embedder import embedding_executor

        routes = await asyncio.to_thread(self.router_app, model_id)
        dep = None
        if routes is None:  # a deployment of a router routes too, then answers as the deployment
            dep = await asyncio.to_thread(self._deployment, model_id)
            routes = await asyncio.to_thread(self.router_app, dep.model) if dep is not None else None
        if routes is None:
            return await asyncio.to_thread(self.resolve, model_id)
        t0 = time.perf_counter()
        text = question_of(messages or []) or " "
        choice = routes.sure([text])[0]  # the n-gram classifier: well under a millisecond, here
        if choice is None:  # not sure: MiniLM, on the one embedding thread
            choice = (await asyncio.get_running_loop().run_in_executor(embedding_executor(), routes.choose,
                                                                       [text]))[0]
        ms = (time.perf_counter() - t0) * 1000
        target, spec = await asyncio.to_thread(self.resolve, choice.model)
        target.model_id = model_id
        target.route = {"app": dep.model if dep is not None else model_id, "model": choice.model,
                        "route": choice.route, "confidence": round(choice.confidence, 4), "ms": round(ms, 2),
                        "by": choice.by}
        if dep is not None:
            target.knowledge, target.system_prompt = dep.knowledge_bases or None, dep.system_prompt
        return target, spec

    def _deployment(self, model_id: str):
        from modelmill.apps.deployments import Deployments

        if not isinstance(model_id, str) or not model_id or ":" in model_id:
            return None
        return Deployments(self.store).find(model_id)

    def resolve(self, model_id: str) -> tuple[Target, dict]:
        """The target and engine spec of ``model_id``; a 404 EngineError when nothing serves it. A
        router without a request to choose by resolves to its fallback (``--preload``)."""
        from modelmill.apps.deployments import Deployments

        if not isinstance(model_id, str) or not model_id:
            raise EngineError("'model' is required", status=400, param="model")
        routes = self.router_app(model_id)
        if routes is not None:
            target, spec = self.resolve(routes.fallback)
            target.model_id = model_id
            return target, spec
        dep = Deployments(self.store).find(model_id) if ":" not in model_id else None
        if dep is not None:  # a published name: the model it points at, with its knowledge and prompt
            routes = self.router_app(dep.model)  # a router without a request to choose by: its fallback
            target, spec = self.router.resolve(routes.fallback if routes is not None else dep.model)
            target.model_id, target.knowledge, target.system_prompt = (model_id, dep.knowledge_bases or None,
                                                                       dep.system_prompt)
            return target, spec
        target, spec = self.router.resolve(model_id)
        target.knowledge = self._bound(target) or None
        return target, spec

    def _bound(self, target: Target) -> list[str]:
        key = model_key(target)
        if key not in self.bound and self.unresolved:
            for model in list(self.unresolved):
                try:
                    t, _ = self.router.resolve(model)
                except EngineError:
                    continue
                names = self.unresolved.pop(model, None)  # another request may have bound it meanwhile
                if names is not None:
                    self.bound[model_key(t)] = names
        return list(self.bound.get(key, []))
