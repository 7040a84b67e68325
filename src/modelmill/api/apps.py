"""REST for apps: routers, workflows and business tables (``modelmill apps ...`` calls the same
library functions).

    GET    /api/apps                 every app
    POST   /api/apps/routers         learn a router from its routes' data and publish it (201)
    POST   /api/apps/flows           check a workflow file and publish it as flow:NAME (201; "replace": true
                                     for a new version)
    POST   /api/apps/flows/check     check a workflow file: every problem with its line (400), or its outline
    GET    /api/apps/{name}          one app: settings (a router's held-out accuracy, a workflow's nodes)
    POST   /api/apps/{name}/route    which model the router sends a text to
    POST   /api/apps/{name}/run      run a workflow: its answer, status and trace (424 when a node fails)
    GET    /api/apps/{name}/runs     a workflow's newest runs
    GET    /api/apps/runs/{run_id}   one run with its trace
    POST   /api/apps/bots            check a bot file and publish it as bot:NAME (201)
    POST   /api/apps/bots/check      check a bot file: every problem with its line (400), or its outline
    POST   /api/apps/{name}/chat     one user turn to a bot: reply, acts, lookup, state and conversation id
    GET    /api/apps/{name}/conversations        a bot's newest conversations
    GET    /api/apps/conversations/{id}          one conversation: state and turns
    DELETE /api/apps/{name}

    GET    /api/tables               business tables for lookup nodes
    POST   /api/tables               upload one (multipart: name, file .json/.jsonl/.csv) (201)
    POST   /api/tables/sql           register an SQL database's table (admin scope) (201)
    GET    /api/tables/{name}        columns and the first rows
    POST   /api/tables/{name}/lookup the rows a filter matches
    DELETE /api/tables/{name}

A router is then a model id in /v1/chat/completions, /v1/models and evaluations; a workflow is
``flow:NAME`` and a bot ``bot:NAME`` in /v1/chat/completions and /v1/models.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, Field

from modelmill.api.native import _iso, _store

router = APIRouter(prefix="/api")


class RouterRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    routes: list[str] = Field(min_length=1, max_length=64, description="Adapters to route to.")
    fallback: str = Field(min_length=1, max_length=300, description="The model that answers what no route takes.")
    fallback_data: str = Field(default="", max_length=200, description="General prompts: the fallback's own class.")
    route_data: dict[str, str] = Field(default_factory=dict, description="Route -> dataset, instead of its own.")
    threshold: float = Field(default=0.5, ge=0, lt=1)
    weights: dict[str, float] = Field(default_factory=dict)
    max_per_route: int = Field(default=2000, ge=10, le=100_000)
    seed: int = 0


class RouteRequest(BaseModel):
    text: str = Field(min_length=1, max_length=100_000)


class FlowRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    yaml: str = Field(min_length=1, max_length=1_000_000, description="The workflow file's text.")
    source: str | None = Field(default=None, max_length=500, description="Its file name, shown in errors.")
    replace: bool = Field(default=False, description="Publish as the new version of an existing workflow.")


class FlowCheckRequest(BaseModel):
    yaml: str = Field(min_length=1, max_length=1_000_000)
    source: str | None = Field(default=None, max_length=500)


class RunRequest(BaseModel):
    inputs: dict = Field(default_factory=dict, description="The workflow's inputs by name.")


class BotRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    yaml: str = Field(min_length=1, max_length=1_000_000, description="The bot file's text.")
    source: str | None = Field(default=None, max_length=500, description="Its file name, shown in errors.")
    replace: bool = Field(default=False, description="Publish as the new version of an existing bot.")


class BotChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=20_000, description="The user's turn.")
    conversation_id: str | None = Field(default=None, max_length=200,
                                        description="Go on with this conversation (leave out to start one).")


class SqlTableRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000, description="SQLAlchemy database URL.")
    table: str = Field(min_length=1, max_length=200)


class LookupRequest(BaseModel):
    where: dict = Field(default_factory=dict)
    limit: int = Field(default=5, ge=1, le=1000)


def app_json(a) -> dict:
    out = {"name": a.name, "kind": a.kind, "base_model": a.base_model, **a.spec, "metrics": a.metrics,
           "created_at": _iso(a.created_at), "updated_at": _iso(a.updated_at)}
    if a.kind == "workflow":
        out["model_id"] = f"flow:{a.name}"
        out["version"] = int((a.state or {}).get("version", 1))
    elif a.kind == "bot":
        out["model_id"] = f"bot:{a.name}"
        out["version"] = int((a.state or {}).get("version", 1))
    return out


@router.get("/apps", tags=["apps"])
def list_apps(request: Request):
    from modelmill.apps import Apps

    return {"data": [app_json(a) for a in Apps(_store(request)).list()]}


@router.post("/apps/routers", status_code=201, tags=["apps"])
def create_router_app(request: Request, body: RouterRequest):
    """Learn a router (embeddings of each route's training texts, logistic regression) and publish it."""
    from modelmill.api.auth import require_model
    from modelmill.apps.router import RouterSpec, create_router

    for m in [*body.routes, body.fallback]:
        require_model(request, m)
    spec = RouterSpec(**body.model_dump())
    return app_json(create_router(_store(request), spec, log=lambda m: None))


@router.post("/apps/flows", status_code=201, tags=["apps"])
def create_flow_app(request: Request, body: FlowRequest):
    """Check a workflow file against what exists (models, knowledge bases, tables) and publish it."""
    from modelmill.api.auth import require_model
    from modelmill.apps.flow_spec import load_workflow
    from modelmill.apps.flows import create_flow

    from modelmill.apps import Apps

    for m in load_workflow(body.yaml, body.source, _store(request), body.name).models():
        require_model(request, m)
    old = Apps(_store(request)).find(body.name)
    if old is not None and old.kind == "workflow":  # replacing another's workflow needs its models too
        _require_flow(request, old)
    return app_json(create_flow(_store(request), body.name, body.yaml, body.source, replace=body.replace))


@router.post("/apps/flows/check", tags=["apps"])
def check_flow(request: Request, body: FlowCheckRequest):
    """Every problem of a workflow file with its line (400, in error.details), or its nodes and edges."""
    from modelmill.apps.flow_spec import load_workflow

    wf = load_workflow(body.yaml, body.source, _store(request))
    return {"ok": True, "inputs": wf.inputs, "answer": wf.answer, "nodes": wf.outline()}


@router.post("/apps/bots", status_code=201, tags=["apps"])
def create_bot_app(request: Request, body: BotRequest):
    from modelmill.api.auth import require_model
    from modelmill.apps.bots import create_bot, load_bot

    store = _store(request)
    require_model(request, f"bot:{body.name}")
    for m in load_bot(body.yaml, body.source, store, body.name).modules.values():
        require_model(request, m.model)  # a key limited to some models publishes bots of those only
    return app_json(create_bot(store, body.name, body.yaml, body.source, replace=body.replace))


@router.post("/apps/bots/check", tags=["apps"])
def check_bot(request: Request, body: FlowCheckRequest):
    from modelmill.apps.bots import load_bot

    return {"ok": True, **load_bot(body.yaml, body.source, _store(request)).outline()}


@router.get("/apps/conversations/{conversation_id}", tags=["apps"])
def get_conversation(request: Request, conversation_id: str):
    from modelmill.api.auth import require_model
    from modelmill.apps.bots import Conversations, conversation_json

    row = Conversations(_store(request)).get(conversation_id)
    require_model(request, f"bot:{row.bot}")
    out = conversation_json(row)
    out["created_at"], out["updated_at"] = _iso(row.created_at), _iso(row.updated_at)
    return out


@router.get("/apps/runs/{run_id}", tags=["apps"])
def get_run(request: Request, run_id: str):
    from modelmill.apps.flows import FlowRuns, run_json

    return run_json(FlowRuns(_store(request)).get(run_id))


@router.get("/apps/{name}", tags=["apps"])
def get_app(request: Request, name: str):
    from modelmill.apps import Apps

    return app_json(Apps(_store(request)).get(name))


@router.post("/apps/{name}/route", tags=["apps"])
def route_text(request: Request, name: str, body: RouteRequest):
    from modelmill.apps import Apps
    from modelmill.apps.router import Routes
    from modelmill.models.embedder import embedding_executor

    routes = Routes(Apps(_store(request)).get(name))
    c = embedding_executor().submit(routes.choose, [body.text]).result()[0]  # MiniLM's one thread
    return {"model": c.model, "route": c.route, "confidence": c.confidence, "by": c.by}


def _require_flow(request: Request, row) -> None:
    """A key limited to some models may use a workflow only when it may use it (flow:NAME) and every
    model its nodes call."""
    from modelmill.api.auth import require_model

    require_model(request, f"flow:{row.name}")
    for n in row.spec.get("nodes", []):
        if n.get("model"):
            require_model(request, n["model"])


@router.post("/apps/{name}/run", tags=["apps"])
async def run_flow_app(request: Request, name: str, body: RunRequest):
    """Run workflow ``name`` on the server's engines; the run is stored with its trace."""
    from modelmill.apps import Apps
    from modelmill.apps.flows import run_flow

    row = await asyncio.to_thread(Apps(_store(request)).get, name)
    _require_flow(request, row)
    services = request.app.state.serving.flows
    wf = await asyncio.to_thread(services.flow, name)
    return (await run_flow(services, wf, body.inputs)).as_json()


def _require_bot(request: Request, name: str, load: bool = True):
    """A key limited to some models may use a bot only when it may use bot:NAME and each module's model
    (checked before anything about the bot is said)."""
    from modelmill.api.auth import require_model
    from modelmill.apps import Apps
    from modelmill.apps.bots import get_bot
    from modelmill.errors import NotFoundError

    require_model(request, f"bot:{name}")
    row = Apps(_store(request)).find(name)
    if row is None or row.kind != "bot":
        raise NotFoundError(f"no bot named '{name}'", field="name", fix="list the apps with GET /api/apps")
    for m in row.spec.get("modules", {}).values():
        require_model(request, m["model"])
    return get_bot(_store(request), name) if load else row


@router.post("/apps/{name}/chat", tags=["apps"])
async def chat_bot(request: Request, name: str, body: BotChatRequest):
    """One user turn to bot ``name``: intent and extract together, state, lookup, follow-up or answer."""
    from modelmill.apps.bots import bot_turn

    bot = await asyncio.to_thread(_require_bot, request, name)
    return await bot_turn(request.app.state.serving.flows, bot, body.message, body.conversation_id)


@router.get("/apps/{name}/conversations", tags=["apps"])
def list_conversations(request: Request, name: str, limit: int = Query(50, ge=1, le=1000)):
    from modelmill.apps.bots import Conversations

    _require_bot(request, name, load=False)
    return {"data": [{"id": c.id, "turns": len(c.turns), "domain": (c.state or {}).get("domain"),
                      "last": c.turns[-1]["user"] if c.turns else None, "updated_at": _iso(c.updated_at)}
                     for c in Conversations(_store(request)).list(name, limit)]}


@router.get("/apps/{name}/runs", tags=["apps"])
def list_runs(request: Request, name: str, limit: int = Query(50, ge=1, le=1000)):
    from modelmill.apps import Apps
    from modelmill.apps.flows import FlowRuns, run_json

    Apps(_store(request)).get(name)
    return {"data": [{k: v for k, v in run_json(r).items() if k != "trace"}
                     for r in FlowRuns(_store(request)).list(name, limit)]}


@router.delete("/apps/{name}", tags=["apps"])
def delete_app(request: Request, name: str):
    from modelmill.api.auth import require_model
    from modelmill.apps import Apps

    apps = Apps(_store(request))
    row = apps.get(name)
    if row.kind == "workflow":
        _require_flow(request, row)
    if row.kind == "bot":
        _require_bot(request, name, load=False)
    for m in [*row.spec.get("routes", []), row.spec.get("fallback")]:
        require_model(request, m)
    apps.remove(name)
    return {"deleted": name}


# ----------------------------------------------------------------------------- business tables

def table_json(t, rows: list | None = None) -> dict:
    out = {"name": t.name, "kind": t.kind, "columns": t.columns, "rows": t.row_count,
           "source": t.source if t.kind == "file" else None, "sql_table": t.sql_table,
           "created_at": _iso(t.created_at)}
    if rows is not None:
        out["first_rows"] = rows
    return out


@router.get("/tables", tags=["apps"])
def list_tables(request: Request):
    from modelmill.apps.tables import LookupTables

    return {"data": [table_json(t) for t in LookupTables(_store(request)).list()]}


@router.post("/tables", status_code=201, tags=["apps"])
def upload_table(request: Request, file: UploadFile = File(...), name: str = Form(...)):
    """A table from an uploaded JSON, JSONL or CSV file; its rows are stored, the upload is not kept."""
    import shutil
    import uuid

    from modelmill.api.native import save_upload
    from modelmill.apps.tables import LookupTables

    store = _store(request)
    folder = store.home / "tmp" / f"table-{uuid.uuid4().hex[:8]}"
    try:
        path = save_upload(store, file, folder, (".json", ".jsonl", ".csv"))
        return table_json(LookupTables(store).add(name, path, source=f"upload:{path.name}"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@router.post("/tables/sql", status_code=201, tags=["apps"])
def add_sql_table(request: Request, body: SqlTableRequest):
    """An SQL database's table, read (never written) at each lookup. Needs the admin scope: the URL
    reaches whatever database this server can."""
    from modelmill.apps.tables import LookupTables

    return table_json(LookupTables(_store(request)).add(body.name, sql=body.url, sql_table=body.table))


@router.get("/tables/{name}", tags=["apps"])
def get_table(request: Request, name: str, rows: int = Query(5, ge=0, le=100)):
    from modelmill.apps.tables import LookupTables

    tables = LookupTables(_store(request))
    t = tables.get(name)
    return table_json(t, tables.lookup(name, {}, rows)[0] if rows else [])


@router.post("/tables/{name}/lookup", tags=["apps"])
def lookup_rows(request: Request, name: str, body: LookupRequest):
    from modelmill.apps.tables import LookupTables

    found, total = LookupTables(_store(request)).lookup(name, body.where, body.limit)
    return {"data": found, "total": total}


@router.delete("/tables/{name}", tags=["apps"])
def delete_table(request: Request, name: str):
    from modelmill.apps.tables import LookupTables

    LookupTables(_store(request)).remove(name)
    return {"deleted": name}
