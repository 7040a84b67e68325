"""API keys: created by an admin, stored as SHA-256, sent as ``Authorization: Bearer KEY``.

    modelmill keys create ci-bot --scope train --scope infer --model smollm2-135m-instruct
    modelmill keys list
    modelmill keys revoke ci-bot

Scopes: ``infer`` (chat, completions, embeddings, the model list), ``train`` (files,
fine-tuning, jobs and every native /api route), ``admin`` (all of them, and keys). A key
limited to models may name only those (or their adapters, ``BASE:ADAPTER``) as ``model``.
With no key stored and no ``--api-key`` given, nothing is checked: the server then listens
on localhost only (see ``local_only``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.names import check_name
from modelmill.store.tables import ApiKey

SCOPES = ("admin", "train", "infer")
PUBLIC = ("/health", "/openapi.json", "/docs", "/redoc", "/metrics", "/ui", "/favicon.ico")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Keys:
    def __init__(self, store):
        self.store = store

    def create(self, name: str, scopes: list[str], models: list[str] | None = None) -> tuple[ApiKey, str]:
        """Store a new key; returns its row and the key itself, which is not stored anywhere."""
        check_name(name, "NAME")
        scopes = sorted(set(scopes or []))
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            raise InputError(f"unknown scope '{bad[0]}'" if bad else "no scope given", field="--scope",
                             fix="give one or more of: " + ", ".join(SCOPES))
        key = "mm-" + secrets.token_urlsafe(32)
        row = ApiKey(id="key_" + uuid.uuid4().hex[:16], name=name, prefix=key[:8], hash=digest(key), scopes=scopes,
                     models=sorted(set(models)) if models else None)
        taken = ConflictError(f"a key named '{name}' exists", field="NAME",
                              fix=f"choose another name, or `modelmill keys revoke {name}` first")
        try:
            with self.store.session() as s:
                if s.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
                    raise taken
                s.add(row)
        except IntegrityError:  # created at the same moment by another request: the unique index decided
            raise taken from None
        return row, key

    def list(self) -> list[ApiKey]:
        with self.store.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def revoke(self, name: str) -> ApiKey:
        with self.store.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise NotFoundError(f"no key named '{name}'", field="NAME", fix="see `modelmill keys list`")
            s.delete(row)
        return row

    def any_active(self) -> bool:
        with self.store.session() as s:
            return s.scalar(select(ApiKey.id).limit(1)) is not None

    def check(self, key: str) -> ApiKey | None:
        with self.store.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.hash == digest(key)))
            if row is not None and (row.last_used_at is None or _age(row.last_used_at) > 60):
                row.last_used_at = datetime.now(timezone.utc)  # at most one write a minute per key
        return row


def _age(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - t).total_seconds()


def local_only(store, config) -> bool:
    """True when the server must not listen beyond localhost: no key would protect it."""
    import os

    return not (getattr(config, "api_key", "") or os.environ.get("MODELMILL_API_KEY") or Keys(store).any_active())


def scope_for(method: str, path: str) -> str | None:
    """The scope a request needs (None: public)."""
    if path == "/" or any(path == p or path.startswith(p + "/") for p in PUBLIC):
        return None
    if path.startswith(("/v1/files", "/v1/fine_tuning")):
        return "train"
    if path.startswith("/v1/"):
        return "infer"
    if path.startswith("/api/keys"):
        return "admin"
    if path.startswith("/api/"):
        return "train"
    return None


_INFER_BODIES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def allowed_model(key: ApiKey | None, model: str | None) -> bool:
    """Whether ``key`` may use ``model`` (BASE, ADAPTER or BASE:ADAPTER); keys without a list may use any."""
    if key is None or not key.models or not model:
        return True
    parts = {model, *model.split(":")}
    return any(p in key.models for p in parts)


def install(app, store, config) -> None:
    import os

    from fastapi.responses import JSONResponse
    from starlette.requests import Request

    from modelmill.api.errors import TYPES

    admin_key = getattr(config, "api_key", "") or os.environ.get("MODELMILL_API_KEY", "")
    keys = Keys(store)
    cache = {"at": 0.0, "any": False}

    def required() -> bool:
        if admin_key:
            return True
        if time.monotonic() - cache["at"] > 2.0:  # a key created by the CLI is enforced within 2 s
            cache["any"], cache["at"] = keys.any_active(), time.monotonic()
        return cache["any"]

    def deny(status: int, message: str, code: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": TYPES[status], "param": None, "code": code}},
                            status_code=status)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        import asyncio

        need = scope_for(request.method, request.url.path)
        request.state.api_key = None
        if need is None or not await asyncio.to_thread(required):
            return await call_next(request)
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            return deny(401, "missing API key: send 'Authorization: Bearer KEY' (create one with "
                             "`modelmill keys create`)", "invalid_api_key")
        if admin_key and secrets.compare_digest(token, admin_key):
            return await call_next(request)
        row = await asyncio.to_thread(keys.check, token)
        if row is None:
            return deny(401, "wrong API key: it matches no key of this server (see `modelmill keys list`)",
                        "invalid_api_key")
        if need not in row.scopes and "admin" not in row.scopes:
            return deny(403, f"key '{row.name}' lacks the '{need}' scope this route needs (it has: "
                             f"{', '.join(row.scopes)})", "insufficient_scope")
        request.state.api_key = row
        if row.models and request.method == "POST" and request.url.path in _INFER_BODIES:
            try:
                model = json.loads(await request.body() or b"{}").get("model")
            except (ValueError, AttributeError):
                model = None  # the route itself answers 400 for a bad body
            if isinstance(model, str) and not allowed_model(row, model):
                return deny(403, f"key '{row.name}' may not use model '{model}' (it may use: "
                                 f"{', '.join(row.models)})", "model_not_allowed")
        return await call_next(request)


def require_model(request, model: str | None) -> None:
    """For routes that name a model outside the request body's ``model`` (fine-tuning's base)."""
    from modelmill.api.errors import ApiError

    key = getattr(request.state, "api_key", None)
    if not allowed_model(key, model):
        raise ApiError(403, f"key '{key.name}' may not use model '{model}'", field="model", code="model_not_allowed")
