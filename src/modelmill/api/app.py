"""The platform app: serving (``/v1`` chat, completions, embeddings), fine-tuning, native REST, web UI.

    modelmill up                # this app with its workers
    modelmill serve             # the same app (no workers): jobs queue up until a worker runs

Every router gets the store from ``request.app.state.store`` and calls the same library
functions the CLI calls.
"""

from __future__ import annotations

from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "web" / "static"


def create_app(store=None, config=None):
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from modelmill.api import errors
    from modelmill.api.auth import install as install_auth
    from modelmill.api.evals import router as evals_router
    from modelmill.api.fine_tuning import router as ft_router
    from modelmill.api.native import router as native_router
    from modelmill.serve.app import create_app as serving_app

    if store is None:
        from modelmill.store import open_store

        store = open_store()
    app = serving_app(store, config)
    app.state.store = store
    app.title = "modelmill"
    app.description = ("A self-hosted model factory: OpenAI-compatible serving and fine-tuning, datasets, jobs, "
                       "evaluations and deployments. See docs/platform.md.")
    errors.install(app)
    _limit_uploads(app, store)
    install_auth(app, store, config)
    for r in (ft_router, native_router, evals_router):
        app.include_router(r)
    if (WEB / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=WEB, html=True), name="ui")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def _root():
            return RedirectResponse("/ui/")
    return app


UPLOADS = ("/api/datasets", "/api/datasets/validate", "/v1/files")


def _limit_uploads(app, store) -> None:
    """Refuse an upload whose declared size is past the limit before its body is read (413)."""
    from fastapi.responses import JSONResponse

    limit = int(store.settings.max_upload_mb * 1024 * 1024) + (1 << 20)  # + room for the multipart framing

    @app.middleware("http")
    async def _upload_size(request, call_next):
        if request.method == "POST" and request.url.path in UPLOADS:
            try:
                size = int(request.headers.get("content-length") or 0)
            except ValueError:
                size = 0
            if size > limit:
                msg = (f"the upload is {size / 2**20:.1f} MiB, over the {store.settings.max_upload_mb:g} MiB limit; "
                       "split the file, or raise MODELMILL_MAX_UPLOAD_MB")
                return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": "file",
                                               "code": "file_too_large"}}, status_code=413)
        return await call_next(request)
