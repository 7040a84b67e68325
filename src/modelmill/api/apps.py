"""REST for apps: routers over adapters (``modelmill apps ...`` calls the same library functions).

    GET    /api/apps                 every app
    POST   /api/apps/routers         learn a router from its routes' data and publish it (201)
    GET    /api/apps/{name}          one app: settings and held-out routing accuracy
    POST   /api/apps/{name}/route    which model the router sends a text to
    DELETE /api/apps/{name}

An app is then a model id in /v1/chat/completions, /v1/models and evaluations.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
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


def app_json(a) -> dict:
    return {"name": a.name, "kind": a.kind, "base_model": a.base_model, **a.spec, "metrics": a.metrics,
            "created_at": _iso(a.created_at), "updated_at": _iso(a.updated_at)}


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
    return {"model": c.model, "route": c.route, "confidence": c.confidence}


@router.delete("/apps/{name}", tags=["apps"])
def delete_app(request: Request, name: str):
    from modelmill.api.auth import require_model
    from modelmill.apps import Apps

    apps = Apps(_store(request))
    row = apps.get(name)
    for m in [*row.spec.get("routes", []), row.spec.get("fallback")]:
        require_model(request, m)
    apps.remove(name)
    return {"deleted": name}
