"""The native REST API: datasets, models, adapters, config schemas, jobs, deployments, keys.

Each route calls the library function its CLI command calls (docs/platform.md lists them).
Handlers are plain ``def``: FastAPI runs them in its thread pool, since the library blocks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from modelmill.api.errors import ApiError
from modelmill.errors import InputError, NotFoundError

router = APIRouter(prefix="/api")

DATA_TYPES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def _store(request: Request):
    return request.app.state.store


def _iso(t: datetime | None) -> str | None:
    """UTC, as ``2026-11-21T10:00:00Z`` (SQLite hands back naive datetimes: they are UTC)."""
    if t is None:
        return None
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- uploads

def check_filename(name: str | None, allowed: tuple[str, ...], field: str = "file") -> str:
    """The upload's own name, refused when it is a path or of a type we cannot read."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        raise InputError(f"file name {name!r} is not a plain file name", field=field,
                         fix="upload a file named like data.jsonl (no folders, no leading dot)")
    if len(name) > 200:
        raise InputError("file name longer than 200 characters", field=field, fix="rename the file")
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise ApiError(415, f"unsupported file type '{suffix or name}'", field=field,
                       fix="upload one of: " + ", ".join(allowed))
    return name


def save_upload(store, upload: UploadFile, folder: Path, allowed: tuple[str, ...], field: str = "file") -> Path:
    """Stream an upload into ``folder`` under its own name; 413 past the size limit, nothing kept then."""
    name = check_filename(upload.filename, allowed, field)
    limit = store.settings.max_upload_mb * 1024 * 1024
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"'{name}' is larger than the {store.settings.max_upload_mb} MiB upload limit",
                                   field=field, fix="split the file, or raise MODELMILL_MAX_UPLOAD_MB")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise InputError(f"'{name}' is empty", field=field, fix="upload a file with records in it")
    return path


def _staging(store) -> Path:
    return store.home / "tmp" / f"upload-{uuid.uuid4().hex[:12]}"


def validate_file(path: Path, fmt: str, shown_as: str) -> dict:
    """Every bad record of a data file (not only the first), as the web UI lists them."""
    from modelmill.data.load import load_file

    def clean(msg: str) -> str:
        return msg.replace(str(path), shown_as)

    try:
        loaded = load_file(path, fmt, skip_invalid=True)
    except InputError as e:
        return {"valid": False, "format": fmt, "kind": None, "num_records": 0, "labels": None,
                "errors": [{"line": e.line, "field": e.field, "message": clean(str(e))}]}
    errors = []
    for n, msg in loaded.skipped[:1000]:
        field = None
        if "field '" in msg:
            field = msg.split("field '", 1)[1].split("'", 1)[0]
        errors.append({"line": n, "field": field, "message": clean(msg)})
    return {"valid": not errors, "format": loaded.format, "kind": loaded.kind, "num_records": len(loaded.records),
            "labels": loaded.labels, "errors": errors, "skipped": len(loaded.skipped)}


# ----------------------------------------------------------------------------- datasets

def dataset_json(row, **extra) -> dict:
    return {"name": row.name, "version": row.version, "ref": row.ref, "kind": row.kind, "format": row.format,
            "num_records": row.num_records, "size_bytes": row.size_bytes, "labels": row.labels,
            "origin": row.origin or {}, "created_at": _iso(row.created_at), **extra}


@router.get("/datasets", tags=["datasets"])
def list_datasets(request: Request, all: bool = False):
    from modelmill.data.catalog import DatasetCatalog

    return {"data": [dataset_json(r) for r in DatasetCatalog(_store(request)).list(all_versions=all)]}


@router.post("/datasets", status_code=201, tags=["datasets"])
def import_dataset(request: Request, file: UploadFile = File(...), name: str = Form(...),
                   format: str = Form("auto"), skip_invalid: bool = Form(False)):
    """Upload and import a data file as a new version of dataset ``name`` (same as `modelmill data import`)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.names import check_name

    store = _store(request)
    check_name(name, "name")
    folder = _staging(store)
    try:
        path = save_upload(store, file, folder, DATA_TYPES)
        try:
            row, created, skipped = DatasetCatalog(store).import_file(path, name, format, skip_invalid=skip_invalid,
                                                                      source_name=f"upload:{file.filename}")
        except InputError as e:
            report = validate_file(path, format, file.filename)
            e.file = file.filename if e.file == str(path) else e.file
            raise _with_details(e, report["errors"]) from None
        from modelmill.data.load import ignored_note

        note = ignored_note(row)
        return dataset_json(row, created=created, skipped=len(skipped), warnings=[note] if note else [])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _DetailedError(InputError):
    pass


def _with_details(e: InputError, details: list[dict]) -> InputError:
    out = _DetailedError(e.message, file=e.file, line=e.line, field=e.field, fix=e.fix)
    out.details = details
    return out


@router.post("/datasets/validate", tags=["datasets"])
def validate_dataset(request: Request, file: UploadFile = File(...), format: str = Form("auto")):
    """Check a data file without storing it: every bad line, with its field and the fix."""
    store = _store(request)
    folder = _staging(store)
    try:
        path = save_upload(store, file, folder, DATA_TYPES)
        return validate_file(path, format, file.filename)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@router.get("/datasets/{ref}", tags=["datasets"])
def get_dataset(request: Request, ref: str, n: int = Query(5, ge=0, le=100)):
    from modelmill.data.catalog import DatasetCatalog

    cat = DatasetCatalog(_store(request))
    row = cat.resolve(ref, flag="ref")
    return dataset_json(row, preview=cat.records(row)[:n])


@router.get("/datasets/{ref}/stats", tags=["datasets"])
def dataset_stats(request: Request, ref: str, bases: bool = False):
    """Counts and length distributions, as `modelmill data stats` (lengths in characters, no tokenizer);
    with ``bases=true`` also tokens per character for every registered base model that is ready."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.stats import stats, tokens_per_char
    from modelmill.models.registry import ModelRegistry

    store = _store(request)
    cat = DatasetCatalog(store)
    row = cat.resolve(ref, flag="ref")
    records = cat.records(row)
    out = {"ref": row.ref, **stats(records, row.kind)}
    if bases:
        out["tokens_per_char"] = tokens_per_char(records, row.kind, ModelRegistry(store).tokenizers())
    return out


class MixSource(BaseModel):
    dataset: str = Field(min_length=1, max_length=300)
    ratio: float = Field(gt=0, le=1000)


class MixRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    sources: list[MixSource] = Field(min_length=1, max_length=50)
    size: int | None = Field(default=None, ge=1, le=1_000_000)  # built in memory: bounded
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


@router.post("/datasets/mix", status_code=201, tags=["datasets"])
def mix_datasets(request: Request, body: MixRequest):
    """Mix datasets by ratio into a new one (same as `modelmill data mix`)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.mix import mix_datasets

    row, created, warnings, counts = mix_datasets(DatasetCatalog(_store(request)), body.name,
                                                  [(s.dataset, s.ratio) for s in body.sources], size=body.size,
                                                  seed=body.seed, flag="sources")
    return dataset_json(row, created=created, warnings=warnings, counts=counts)


class MistakesRequest(BaseModel):
    task: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=300)
    name: str = Field(min_length=1, max_length=200)
    below: float | None = Field(default=None, gt=0, le=1)
    right: float = Field(default=0.0, ge=0, le=10)


@router.post("/datasets/mistakes", status_code=201, tags=["datasets"])
def dataset_from_mistakes(request: Request, body: MistakesRequest):
    """A model's wrong answers in its stored evaluation on ``task`` as preference pairs (same as
    `modelmill data mistakes`): the gold answer chosen, its own rejected, ready for DPO."""
    from modelmill.api.auth import require_model
    from modelmill.evaluate.mistakes import mistakes

    require_model(request, body.model)
    r = mistakes(_store(request), task=body.task, model=body.model, name=body.name,
                 below=body.below, right=body.right)
    return dataset_json(r.dataset, created=r.created, items=r.items, wrong=r.wrong, pairs=r.pairs,
                        right_pairs=r.anchors)


@router.delete("/datasets/{ref}", tags=["datasets"])
def delete_dataset(request: Request, ref: str):
    from modelmill.data.catalog import DatasetCatalog

    return {"deleted": [r.ref for r in DatasetCatalog(_store(request)).remove(ref)]}


# ----------------------------------------------------------------------------- models, adapters, schemas

@router.get("/models", tags=["models"])
def list_models(request: Request):
    from modelmill.models.registry import ModelRegistry

    return {"data": [{"name": m.name, "source_type": m.source_type, "info": m.info, "created_at": _iso(m.created_at)}
                     for m in ModelRegistry(_store(request)).list()]}


def adapter_json(a, **extra) -> dict:
    return {"name": a.name, "base_model": a.base_model, "method": a.method, "dataset": a.dataset,
            "dataset_version": a.dataset_version, "metrics": a.metrics, "model_id": f"{a.base_model}:{a.name}",
            "created_at": _iso(a.created_at), **extra}


@router.get("/adapters", tags=["models"])
def list_adapters(request: Request, base: str | None = None):
    from modelmill.adapters import AdapterRegistry

    return {"data": [adapter_json(a) for a in AdapterRegistry(_store(request)).list(base)]}


@router.get("/adapters/{name}", tags=["models"])
def get_adapter(request: Request, name: str):
    """An adapter with its lineage: base model and hash, dataset version and hash, config, library
    versions, and ``history``: its parents (merge sources with weights, the adapter it was trained
    ``--from``) nested all the way up, as `modelmill adapters show --json` prints it."""
    from modelmill.adapters import AdapterRegistry

    reg = AdapterRegistry(_store(request))
    a = reg.get(name)
    lineage_file = Path(a.path) / "lineage.json"
    lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.is_file() else {}
    return adapter_json(a, config=a.config, versions=a.versions, lineage=lineage, history=reg.history(name))


def _schemas() -> dict:
    from modelmill.adapters.merge import MergeConfig
    from modelmill.apps.bot_data import BotBuildConfig
    from modelmill.jobs.kinds import EvalJobConfig, GridJobConfig
    from modelmill.train.sft import SFTConfig

    return {"train": SFTConfig, "eval": EvalJobConfig, "grid": GridJobConfig, "merge": MergeConfig,
            "bot-build": BotBuildConfig}


@router.get("/schema/{command}", tags=["jobs"])
def config_schema(command: str, method: str | None = Query(None, description="train only: the method whose "
                                                                           "settings to describe (default lora)")):
    """The fields of a job kind's config (train, eval, grid, merge, bot-build): what the web UI's forms are drawn
    from. For train, each method has its own fields (``?method=dpo``) and ``methods`` lists them all."""
    from modelmill.schema import describe
    from modelmill.train.methods import config_class, describe_methods

    schemas = _schemas()
    if command not in schemas:
        raise NotFoundError(f"no schema '{command}'", field="command", fix="use one of " + ", ".join(schemas))
    if command != "train":
        if method:
            raise InputError("only the train schema has methods", field="method", fix="drop ?method")
        return {"command": command, "fields": describe(schemas[command])}
    fields = describe(config_class(method or "lora", field="method"))
    for f in fields:  # any method may be chosen from any method's form
        if f["name"] == "method":
            f["choices"] = [m["name"] for m in describe_methods()]
    return {"command": command, "method": method or "lora", "methods": describe_methods(), "fields": fields}


# ----------------------------------------------------------------------------- jobs

def job_json(job) -> dict:
    return {"id": job.id, "object": "job", "kind": job.kind, "status": job.status, "spec": job.spec,
            "resources": job.resources, "model": job.model, "fine_tuned_model": job.fine_tuned_model,
            "attempts": job.attempts, "worker": job.worker, "progress": (job.result or {}).get("progress"),
            "result": {k: v for k, v in (job.result or {}).items() if k != "progress"}, "error": job.error,
            "cancel_requested": job.cancel_requested, "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at)}


def event_json(e) -> dict:
    return {"id": e.id, "job_id": e.job_id, "created_at": _iso(e.created_at), "level": e.level, "type": e.type,
            "message": e.message, "data": e.data}


class JobRequest(BaseModel):
    kind: Literal["train", "eval", "grid", "merge", "bot-build"] = "train"
    config: dict = Field(default_factory=dict)
    resources: dict | None = None


@router.post("/jobs", status_code=201, tags=["jobs"])
def create_job(request: Request, body: JobRequest):
    """Queue a training, evaluation, grid, merge or bot-build job; a worker runs it (`modelmill worker` or
    `modelmill up`). A bot build reads its dialogue file and table folder from this server's disk, so with
    API keys it needs the admin scope."""
    from modelmill.api.auth import require_model
    from modelmill.api.errors import ApiError
    from modelmill.jobs.queue import JobQueue

    key = getattr(request.state, "api_key", None)
    if body.kind == "bot-build" and key is not None and "admin" not in key.scopes:
        raise ApiError(403, f"key '{key.name}' may not start a bot build: it reads files on this server, which "
                            "needs the admin scope", field="kind", code="insufficient_scope")
    if body.kind in ("train", "bot-build"):
        require_model(request, body.config.get("base") or "smollm2-135m-instruct")
    if body.kind == "train" and isinstance(body.config.get("from_adapter"), str) and body.config["from_adapter"]:
        require_model(request, body.config["from_adapter"])
    for field in ("models", "bases"):  # eval and grid jobs name their models in a comma-separated list
        names = body.config.get(field)
        if isinstance(names, str):
            for name in (n.strip() for n in names.split(",") if n.strip()):
                require_model(request, name)
    if body.kind == "merge" and isinstance(body.config.get("sources"), str):  # "a:0.6,b:0.4": the adapters
        for part in (p.strip() for p in body.config["sources"].split(",") if p.strip()):
            require_model(request, part.rpartition(":")[0] or part if ":" in part else part)
    job = JobQueue(_store(request)).submit(body.kind, body.config, resources=body.resources,
                                           created_by=key.id if key else None)
    return job_json(job)


@router.get("/jobs", tags=["jobs"])
def list_jobs(request: Request, status: str | None = None, kind: str | None = None,
              limit: int = Query(100, ge=1, le=1000)):
    from modelmill.jobs.queue import JobQueue

    return {"data": [job_json(j) for j in JobQueue(_store(request)).list(status=status, kind=kind, limit=limit)]}


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(request: Request, job_id: str):
    from modelmill.jobs.queue import JobQueue

    return job_json(JobQueue(_store(request)).get(job_id))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(request: Request, job_id: str):
    from modelmill.api.auth import require_job
    from modelmill.jobs.queue import JobQueue

    q = JobQueue(_store(request))
    require_job(request, q.get(job_id))
    return job_json(q.cancel(job_id))


@router.get("/jobs/{job_id}/events", tags=["jobs"])
def job_events(request: Request, job_id: str, after: int | None = Query(None, ge=0, le=2**62),
               limit: int = Query(1000, ge=1, le=10000)):
    from modelmill.jobs.queue import JobQueue

    q = JobQueue(_store(request))
    q.get(job_id)
    rows = q.events(job_id, after=after, limit=limit + 1)
    return {"data": [event_json(e) for e in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/jobs/{job_id}/events/stream", tags=["jobs"])
async def job_event_stream(request: Request, job_id: str, after: int | None = Query(None, ge=0, le=2**62)):
    """Server-sent events: each new event as ``data: {...}``, then ``event: end`` when the job has finished."""
    from modelmill.jobs.queue import FINISHED, JobQueue

    q = JobQueue(_store(request))
    await asyncio.to_thread(q.get, job_id)

    async def stream():
        last = after
        while True:
            job = await asyncio.to_thread(q.get, job_id)
            rows = await asyncio.to_thread(q.events, job_id, after=last, limit=500)
            for e in rows:
                last = e.id
                yield f"id: {e.id}\ndata: {json.dumps(event_json(e))}\n\n"
            if job.status in FINISHED and not rows:
                yield f"event: end\ndata: {json.dumps(job_json(job))}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5 if not rows else 0.05)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/workers", tags=["jobs"])
def list_workers(request: Request):
    from modelmill.jobs.queue import JobQueue

    return {"data": [{"id": w.id, "host": w.host, "pid": w.pid, "resources": w.resources, "status": w.status,
                      "started_at": _iso(w.started_at), "heartbeat_at": _iso(w.heartbeat_at)}
                     for w in JobQueue(_store(request)).workers()]}


# ----------------------------------------------------------------------------- deployments

class GateSpec(BaseModel):
    data: str = Field(min_length=1, max_length=300, description="Test set (dataset) a new model must win on.")
    kind: str = Field(default="", max_length=40)
    name: str = Field(default="", max_length=200)
    metric: str = Field(default="", max_length=40, description="Default: the task's headline metric.")
    margin: float = Field(default=0.0, ge=-1, le=1)
    limit: int = Field(default=0, ge=0)


class DeploymentRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=300)
    knowledge_bases: list[str] = Field(default_factory=list, max_length=20)
    system_prompt: str | None = Field(default=None, max_length=20_000)
    gate: GateSpec | None = Field(default=None, description="Left out: the gate stays as it is.")
    no_gate: bool = Field(default=False, description="Remove the gate.")


class PromoteRequest(BaseModel):
    model: str = Field(min_length=1, max_length=300)
    force: bool = False


class RollbackRequest(BaseModel):
    to: str | None = Field(default=None, max_length=300)


def deployment_json(d) -> dict:
    return {"name": d.name, "model": d.model, "knowledge_bases": d.knowledge_bases, "system_prompt": d.system_prompt,
            "gate": d.gate, "created_at": _iso(d.created_at), "updated_at": _iso(d.updated_at)}


@router.get("/deployments", tags=["deployments"])
def list_deployments(request: Request):
    from modelmill.apps.deployments import Deployments

    return {"data": [deployment_json(d) for d in Deployments(_store(request)).list()]}


@router.post("/deployments", status_code=201, tags=["deployments"])
def create_deployment(request: Request, body: DeploymentRequest):
    """Publish a model or adapter under a stable name clients call in /v1/chat/completions (create or update)."""
    from modelmill.api.auth import require_model
    from modelmill.apps.deployments import Deployments

    from modelmill.apps.deployments import _KEEP

    deps = Deployments(_store(request))
    require_model(request, body.model)
    if (old := deps.find(body.name)) is not None:
        require_model(request, old.model)  # a limited key may not repoint another model's deployment
    gate = None if body.no_gate else body.gate.model_dump() if body.gate is not None else _KEEP
    return deployment_json(deps.put(body.name, body.model, body.knowledge_bases, body.system_prompt, gate))


@router.get("/deployments/{name}", tags=["deployments"])
def get_deployment(request: Request, name: str):
    """One deployment, with the models it can be rolled back to (what it pointed at before)."""
    from modelmill.apps.deployments import Deployments
    from modelmill.apps.promotion import rollback_targets

    store = _store(request)
    return {**deployment_json(Deployments(store).get(name)), "rollback_targets": rollback_targets(store, name)}


@router.put("/deployments/{name}/gate", tags=["deployments"])
def set_gate(request: Request, name: str, body: GateSpec | None = None):
    """Set the gate (the body) or remove it (no body, or null); the model, knowledge and prompt stay."""
    from modelmill.api.auth import require_model
    from modelmill.apps.deployments import Deployments

    deps = Deployments(_store(request))
    d = deps.get(name)
    require_model(request, d.model)
    return deployment_json(deps.set_gate(name, body.model_dump() if body is not None else None))


@router.post("/deployments/{name}/promote", tags=["deployments"])
def promote_deployment(request: Request, name: str, body: PromoteRequest):
    """Move ``name`` to ``model`` if it beats the current model on the gate task by the margin (both are
    scored, stored results reused): the history event; 409 with both scores when it does not win."""
    from modelmill.api.auth import require_model
    from modelmill.apps.deployments import Deployments
    from modelmill.apps.promotion import promote

    store = _store(request)
    require_model(request, body.model)
    require_model(request, Deployments(store).get(name).model)
    return promote(store, name, body.model, force=body.force)


@router.post("/deployments/{name}/rollback", tags=["deployments"])
def rollback_deployment(request: Request, name: str, body: RollbackRequest):
    from modelmill.api.auth import require_model
    from modelmill.apps.deployments import Deployments
    from modelmill.apps.promotion import rollback

    store = _store(request)
    require_model(request, Deployments(store).get(name).model)
    if body.to:
        require_model(request, body.to)
    return rollback(store, name, body.to)


@router.get("/deployments/{name}/history", tags=["deployments"])
def deployment_history(request: Request, name: str, limit: int = Query(100, ge=1, le=1000)):
    from modelmill.apps.deployments import Deployments
    from modelmill.apps.promotion import history

    store = _store(request)
    Deployments(store).get(name)
    return {"data": history(store, name, limit)}


@router.delete("/deployments/{name}", tags=["deployments"])
def delete_deployment(request: Request, name: str):
    from modelmill.api.auth import require_model
    from modelmill.apps.deployments import Deployments

    deps = Deployments(_store(request))
    if (old := deps.find(name)) is not None:
        require_model(request, old.model)
    deps.remove(name)
    return {"deleted": name}


# ----------------------------------------------------------------------------- keys (admin)

class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Literal["admin", "train", "infer"]] = Field(min_length=1)
    models: list[str] | None = None


def key_json(k, **extra) -> dict:
    return {"id": k.id, "name": k.name, "prefix": k.prefix, "scopes": k.scopes, "models": k.models,
            "created_at": _iso(k.created_at), "last_used_at": _iso(k.last_used_at), **extra}


@router.get("/keys", tags=["keys"])
def list_keys(request: Request):
    from modelmill.api.auth import Keys

    return {"data": [key_json(k) for k in Keys(_store(request)).list()]}


@router.post("/keys", status_code=201, tags=["keys"])
def create_key(request: Request, body: KeyRequest):
    """A new key; the answer is the only place the key itself is ever shown."""
    from modelmill.api.auth import Keys

    row, key = Keys(_store(request)).create(body.name, list(body.scopes), body.models)
    return key_json(row, key=key)


@router.delete("/keys/{name}", tags=["keys"])
def revoke_key(request: Request, name: str):
    from modelmill.api.auth import Keys

    Keys(_store(request)).revoke(name)
    return {"deleted": name}
