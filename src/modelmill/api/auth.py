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

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

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
        if models is not None and not models:
            raise InputError("an empty list of models would allow none", field="models",
                             fix="leave models out for every model, or name at least one")
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
            try:  # at most one write a minute per key, and never a reason to refuse a request
                with self.store.session() as s:
                    s.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=datetime.now(timezone.utc)))
            except OperationalError:
                pass
        return row


def _age(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - t).total_seconds()


def local_only(store, config) -> bool:
    """True when the server must not listen beyond localhost: no key would protect it."""
    import os

    return not (getattr(config, "api_key", "") or os.environ.get("MODELMILL_API_KEY") or Keys(store).any_active())


def scope_for(path: str) -> str | None:
    """The scope a request needs (None: public)."""
    if path == "/" or any(path == p or path.startswith(p + "/") for p in PUBLIC):
        return None
    if path.startswith(("/v1/files", "/v1/fine_tuning")):
        return "train"
    if path.startswith("/v1/"):
        return "infer"
    if path.startswith(("/api/keys", "/api/tables/sql")):  # an SQL URL reaches any database the server can
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
    # Fail closed: a server that listens beyond localhost, or has once seen a key, keeps asking for
    # one even after the last key is revoked (it then answers 401 until a key exists again).
    public = getattr(config, "host", "127.0.0.1") not in LOCAL_HOSTS
    cache = {"at": 0.0, "any": False, "latched": bool(admin_key) or public}

    def required() -> bool:
        if cache["latched"]:
            return True
        if time.monotonic() - cache["at"] > 2.0:  # a key created by the CLI is enforced within 2 s
            cache["any"], cache["at"] = keys.any_active(), time.monotonic()
            cache["latched"] = cache["any"]
        return cache["any"]

    def deny(status: int, message: str, code: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": TYPES[status], "param": None, "code": code}},
                            status_code=status)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        import asyncio

        from sqlalchemy.exc import OperationalError

        need = scope_for(request.url.path)
        request.state.api_key = None
        if need is None:
            return await call_next(request)
        try:
            needed = await asyncio.to_thread(required)
        except OperationalError:
            return deny(503, "the database is locked by another process; retry in a few seconds", "database_locked")
        if not needed:
            # No keys: only this machine may call, so a web page must not reach us by a rebound DNS name.
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in LOCAL_HOSTS:
                return deny(403, f"this server has no API keys, so it answers only requests addressed to "
                                 f"localhost, not '{host}' (create a key with `modelmill keys create`)", "no_keys")
            return await call_next(request)
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            return deny(401, "missing API key: send 'Authorization: Bearer KEY' (create one with "
                             "`modelmill keys create`)", "invalid_api_key")
        if admin_key and secrets.compare_digest(token, admin_key):
            return await call_next(request)
        try:
            row = await asyncio.to_thread(keys.check, token)
        except OperationalError:
            return deny(503, "the database is locked by another process; retry in a few seconds", "database_locked")
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
    if model is not None and not isinstance(model, str):
        raise InputError(f"must be a model name, got {type(model).__name__}", field="model")
    if not allowed_model(key, model):
        raise ApiError(403, f"key '{key.name}' may not use model '{model}'", field="model", code="model_not_allowed")


def require_job(request, job) -> None:
    """A key limited to models may act (cancel) on a job of one of its models, or one it submitted;
    an unlimited key on any. A job that names no model is its submitter's."""
    from modelmill.api.errors import ApiError

    key = getattr(request.state, "api_key", None)
    if key is None or not key.models or (job.created_by is not None and job.created_by == key.id):
        return
    if not job.model:
        raise ApiError(403, f"key '{key.name}' may not act on job {job.id}: the key is limited to models "
                            f"({', '.join(key.models)}) and the job names none and was submitted by another key",
                       field="job_id", code="model_not_allowed")
    if not allowed_model(key, job.model):
        raise ApiError(403, f"key '{key.name}' may not act on job {job.id}, which trains model '{job.model}' (it "
                            f"may use: {', '.join(key.models)})", field="job_id", code="model_not_allowed")


def require_uploader(request, f) -> None:
    """A key limited to models may read or delete only the files it uploaded; an unlimited key any."""
    from modelmill.api.errors import ApiError

    key = getattr(request.state, "api_key", None)
    if key is None or not key.models or (f.info or {}).get("uploaded_by") == key.id:
        return
    raise ApiError(403, f"key '{key.name}' may not touch file {f.id}: a key limited to models may use only "
                        "the files it uploaded", field="file_id", code="file_not_allowed")
