"""Errors over HTTP: a ModelmillError becomes OpenAI's error JSON with the status its kind implies.

Routers raise the library's own errors (InputError, NotFoundError, ConflictError) or ApiError
for statuses only HTTP has (413 too large, 415 wrong type, 403 scope); nothing here catches
what it cannot explain, so a bug stays a 500 that the logs show.
"""

from __future__ import annotations

import logging

from modelmill.errors import ConflictError, ModelmillError, NotFoundError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_error"}


class ApiError(ModelmillError):
    """A problem with an HTTP-only status: too large, wrong media type, forbidden."""

    def __init__(self, status: int, message: str, *, code: str | None = None, **kw):
        self.status = status
        self.code = code
        super().__init__(message, **kw)


def status_of(e: ModelmillError) -> int:
    if isinstance(e, ApiError) or isinstance(getattr(e, "status", None), int):  # ApiError, FlowFailed (424)
        return e.status
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, ConflictError):
        return 409
    return 400


def error_json(e: ModelmillError, *, param: str | None = None, code: str | None = None,
               details: list[dict] | None = None) -> dict:
    status = status_of(e)
    field = e.field.lstrip("-").replace("-", "_") if e.field else None
    body = {"message": str(e), "type": TYPES.get(status, "invalid_request_error"),
            "param": param or field, "code": code or getattr(e, "code", None) or _code(status)}
    if details is None and (e.line is not None or e.field):
        details = [{"file": e.file, "line": e.line, "field": e.field, "message": e.message, "fix": e.fix}]
    if details:
        body["details"] = details
    return {"error": body}


def _code(status: int) -> str:
    return {400: "invalid_value", 403: "insufficient_scope", 404: "not_found", 409: "conflict",
            413: "file_too_large", 415: "unsupported_file_type"}.get(status, "invalid_value")


def install(app) -> None:
    """Answer every ModelmillError raised in a route with its JSON error and status."""
    from fastapi.responses import JSONResponse

    from sqlalchemy.exc import OperationalError

    @app.exception_handler(ModelmillError)
    async def _modelmill_error(request, e: ModelmillError):
        return JSONResponse(error_json(e, details=getattr(e, "details", None)), status_code=status_of(e))

    @app.exception_handler(OperationalError)
    async def _database_busy(request, e: OperationalError):
        # SQLite waited MODELMILL_DB_TIMEOUT seconds for another process's lock: say so, and when to retry
        if "locked" in str(e.orig).lower() or "busy" in str(e.orig).lower():
            return JSONResponse({"error": {"message": "the database is locked by another process (a long write "
                                                      "elsewhere); nothing was changed, retry in a few seconds",
                                           "type": "server_error", "param": None, "code": "database_locked"}},
                                status_code=503, headers={"Retry-After": "2"})
        return _damaged_or_raise(e)

    @app.exception_handler(OSError)
    async def _disk(request, e: OSError):
        from modelmill.errors import storage_error

        err = storage_error(e)
        if err is None:
            raise e
        logging.getLogger("modelmill.api").error("storage: %s", err)
        return JSONResponse({"error": {"message": f"the server cannot store this: {err.message}",
                                       "type": "server_error", "param": None, "code": "storage_unavailable"}},
                            status_code=507)

    from sqlalchemy.exc import DatabaseError

    @app.exception_handler(DatabaseError)
    async def _database_damaged(request, e: DatabaseError):
        return _damaged_or_raise(e)


def _damaged_or_raise(e):
    """A damaged database file: 503 that says so (the operator restores a backup), the path only in
    the server's log; any other database error is the server's bug and goes on up."""
    from fastapi.responses import JSONResponse

    from modelmill.store.backup import is_damage

    if not is_damage(e):
        raise e
    logging.getLogger("modelmill.api").error("the metadata database is damaged: %s; run `modelmill db check`", e.orig)
    return JSONResponse({"error": {"message": "the server's metadata database is damaged; its operator must restore "
                                              "a backup (`modelmill db check`, `modelmill db restore`)",
                                   "type": "server_error", "param": None, "code": "database_damaged"}},
                        status_code=503)
