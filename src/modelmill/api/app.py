"""The platform app: serving (``/v1`` chat, completions, embeddings: ``openai.py``), fine-tuning, native
REST, web UI.

    modelmill up                # this app with its workers
    modelmill serve             # the same app (no workers): jobs queue up until a worker runs

Every router gets the store from ``request.app.state.store`` and calls the same library
functions the CLI calls.
"""

from __future__ import annotations

from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "web" / "static"


def create_app(store=None, config=None):
    """The platform app over ``store`` (default: the configured one) with the serve settings ``config``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from modelmill.api import errors, openai
    from modelmill.api.apps import router as apps_router
    from modelmill.api.auth import install as install_auth
    from modelmill.api.evals import router as evals_router
    from modelmill.api.fine_tuning import router as ft_router
    from modelmill.api.native import router as native_router
    from modelmill.serve.router import ServeConfig

    if store is None:
        from modelmill.store import open_store

        store = open_store()
    serving = openai.Serving.open(store, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app):
        await serving.start()
        yield
        await serving.stop()

    # FastAPI's OpenTelemetry hooks stay off: nothing is exported anywhere unless the user wires it
    no_telemetry = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                    "auto_configure": False}
    app = FastAPI(title="modelmill", version="0.1.0", lifespan=lifespan, telemetry=no_telemetry,
                  description="A self-hosted model factory: OpenAI-compatible serving and fine-tuning, datasets, "
                              "jobs, evaluations and deployments. See docs/platform.md.")
    app.state.store = store
    app.state.serving = serving
    openai.install_errors(app)
    errors.install(app)
    _limit_uploads(app, store)
    install_auth(app, store, config)
    for r in (openai.router, ft_router, native_router, evals_router, apps_router):
        app.include_router(r)
    if (WEB / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=WEB, html=True), name="ui")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def _root():
            return RedirectResponse("/ui/")
    return app


def serve(config, store=None) -> None:
    """Run the platform app in the foreground (``modelmill serve``, ``modelmill up``)."""
    import uvicorn

    app = create_app(store, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5,
                timeout_keep_alive=config.keep_alive)


UPLOADS = ("/api/datasets", "/api/datasets/validate", "/v1/files")


def _limit_uploads(app, store) -> None:
    """Every request body is capped before it is read: uploads at MODELMILL_MAX_UPLOAD_MB, any
    other body at MODELMILL_MAX_BODY_MB. A declared Content-Length over the cap gets 413 at once;
    a body sent without one (chunked) is counted as it arrives and cut off with 413 at the cap, so
    no request makes the server read, hold or parse more than that."""
    app.add_middleware(_BodyLimit, store=store)


class _BodyLimit:
    """Pure ASGI (no buffering of its own, streams pass through untouched)."""

    def __init__(self, app, store):
        self.app = app
        self.settings = store.settings

    def _limit(self, path: str) -> tuple[int, str]:
        if path in UPLOADS:
            mb, env = self.settings.max_upload_mb, "MODELMILL_MAX_UPLOAD_MB"
            return int(mb * 2**20) + (1 << 20), env  # + room for the multipart framing
        return int(self.settings.max_body_mb * 2**20), "MODELMILL_MAX_BODY_MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit, env = self._limit(scope["path"])
        upload = scope["path"] in UPLOADS
        what = "upload" if upload else "request body"

        def message(size: str) -> str:
            fix = "split the file, or raise " + env if upload else "send less in one request, or raise " + env
            return f"the {what} is {size}, over the {limit / 2**20:.0f} MiB limit; {fix}"

        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            return await _too_large(send, message(f"{declared / 2**20:.1f} MiB"), upload)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, detail=message(f"over {limit / 2**20:.0f} MiB"))
            return msg

        return await self.app(scope, counted, send)


async def _too_large(send, msg: str, upload: bool) -> None:
    import json

    body = json.dumps({"error": {"message": msg, "type": "invalid_request_error", "param": "file" if upload else None,
                                 "code": "file_too_large" if upload else "request_too_large"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
