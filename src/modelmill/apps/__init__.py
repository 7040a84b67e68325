"""Apps: what serves a ``model`` id beyond a base model or adapter, and how requests reach it.

    resolve.py      one step from a model id to what serves it: a deployment (a published name
                    with its knowledge bases and system prompt), a base model, an adapter
    deployments.py  the stored deployments
    rag.py          retrieval-augmented answers: the knowledge bases a request is answered from,
                    the retrieved items, citations and groundedness
    router.py       a router: one model id over adapters of one base, learned from their data
    flow_spec.py    a workflow file (YAML nodes): parsed, checked with the line of each problem, sandboxed
                    templates
    flows.py        workflows stored, run node by node on the serving engines, runs kept with traces
    dialogue.py     dialogue acts, module prompts, state tracking, constraint matching and the policy of a bot
    bots.py         task-oriented dialogue bots: four modules on one base, conversations stored by id
    bot_data.py     a bot's module training data built from a dialogue dataset's annotations (CrossWOZ's shape)
    tables.py       business tables (JSON/JSONL/CSV rows, or an SQL table) that lookup nodes filter
    ssrf.py         outbound HTTP for http nodes behind a guard against server-side request forgery
    candidates.py   apps as evaluation candidates, scored and ranked like any model

The OpenAI-compatible routes (``api/openai.py``) and the playground reach a model id through
:class:`resolve.Resolver`, and evaluation through the candidates this package registers, so an
app is called exactly as a model is.
"""

from __future__ import annotations

from modelmill.errors import ConflictError, NotFoundError


class Apps:
    """The stored apps (``apps`` table): list, find, get, remove."""

    def __init__(self, store):
        self.store = store

    def list(self) -> list:
        from sqlalchemy import select

        from modelmill.store.tables import App

        with self.store.session() as s:
            return list(s.scalars(select(App).order_by(App.name)))

    def find(self, name: str):
        from sqlalchemy import select

        from modelmill.store.tables import App

        with self.store.session() as s:
            return s.scalar(select(App).where(App.name == name))

    def get(self, name: str):
        row = self.find(name)
        if row is None:
            names = ", ".join(a.name for a in self.list()) or "none yet"
            raise NotFoundError(f"no app named '{name}' (apps: {names})", field="NAME",
                                fix="list them with `modelmill apps list`")
        return row

    def remove(self, name: str) -> None:
        from sqlalchemy import delete

        from modelmill.store.tables import App

        from modelmill.store.tables import BotConversation, WorkflowRun

        self.get(name)
        with self.store.session() as s:
            s.execute(delete(App).where(App.name == name))
            s.execute(delete(WorkflowRun).where(WorkflowRun.app == name))  # a workflow's runs go with it
            s.execute(delete(BotConversation).where(BotConversation.bot == name))  # a bot's conversations too


RESERVED_NAMES = {"runs", "flows", "routers", "flow", "bots", "conversations"}


def check_app_name_free(store, name: str, field: str = "NAME") -> None:
    """An app's or deployment's name is a model id of its own: not a model, adapter, app or deployment."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.apps.deployments import Deployments
    from modelmill.models.registry import ModelRegistry

    if name in RESERVED_NAMES:
        raise ConflictError(f"'{name}' is reserved (it is a path of the apps API)", field=field,
                            fix="choose another name")
    taken = None
    if AdapterRegistry(store).find(name) is not None:
        taken = "an adapter"
    else:
        try:
            ModelRegistry(store).get(name)
            taken = "a model"
        except NotFoundError:
            if Apps(store).find(name) is not None:
                taken = "an app"
            elif Deployments(store).find(name) is not None:
                taken = "a deployment"
    if taken:
        raise ConflictError(f"'{name}' is already the name of {taken}", field=field,
                            fix="choose a name that `modelmill models list`, `adapters list`, `apps list` and "
                                "GET /api/deployments do not show")


def check_publish(store, name: str, kind: str, replace: bool):
    """Whether a file may be published as the app ``name`` of ``kind``: a new name must be free across
    models, adapters, apps and deployments; an app of that name and kind is replaced only with
    ``replace``. Returns that app, or None."""
    existing = Apps(store).find(name)
    if existing is not None and existing.kind == kind:
        if not replace:
            raise ConflictError(f"a {kind} named '{name}' exists", field="NAME",
                                fix="pass --replace (REST: \"replace\": true) to publish this file as its new version")
    else:
        check_app_name_free(store, name)
    return existing


def publish_app(store, name: str, kind: str, spec: dict, base: str, *, replace: bool = False):
    """Store ``spec`` as the app ``name`` of ``kind`` (a checked workflow or bot file): a new app, or
    with ``replace`` the next version of the app of that name and kind (its runs or conversations
    stay). Checked and written under the name's lock, so concurrent publishes of one name make one
    app and then its next version. Returns the stored row."""
    from sqlalchemy import select

    from modelmill.store.tables import App, utcnow

    with store.lock(f"app-{name}"):
        check_publish(store, name, kind, replace)
        with store.session() as s:
            row = s.scalar(select(App).where(App.name == name))
            if row is None:
                s.add(App(name=name, kind=kind, base_model=base, spec=spec, state={}, metrics={}))
            else:
                row.spec, row.base_model, row.updated_at = spec, base, utcnow()
                row.state = {**(row.state or {}), "version": int((row.state or {}).get("version", 1)) + 1}
    return Apps(store).get(name)
