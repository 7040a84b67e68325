"""OpenAI-compatible files and fine-tuning jobs, so the official ``openai`` client works unmodified.

    client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id, suffix="support")
    client.fine_tuning.jobs.list_events(job.id)
    client.chat.completions.create(model=job.fine_tuned_model, ...)   # once it has succeeded

A fine-tuning job is a ``train`` job in the platform's queue (modelmill.jobs); its uploaded
file is imported as a dataset while the job is ``validating_files``.
"""

from __future__ import annotations

import shutil
import uuid
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from modelmill.errors import InputError, NotFoundError

router = APIRouter(prefix="/v1", tags=["fine-tuning (OpenAI-compatible)"])

PURPOSES = ("fine-tune",)
FT_TYPES = (".jsonl",)


def _store(request: Request):
    return request.app.state.store


def _ts(t) -> int | None:
    from modelmill.jobs.queue import aware

    return int(aware(t).timestamp()) if t is not None else None


# ----------------------------------------------------------------------------- files

def file_json(f) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": _ts(f.created_at), "filename": f.filename,
            "purpose": f.purpose, "status": f.status, "status_details": None, "expires_at": None}


def _file(store, file_id: str, field: str = "file_id"):
    from modelmill.store.tables import UploadedFile

    with store.session() as s:
        f = s.get(UploadedFile, file_id)
    if f is None:
        raise NotFoundError(f"no file with id '{file_id}'", field=field, fix="list files with GET /v1/files")
    return f


@router.post("/files")
def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
    """Upload a JSONL file of training examples (chat ``messages``, Alpaca, or preference pairs for DPO in
    OpenAI's shape or ours); every line is checked now."""
    from modelmill.api.native import _staging, _with_details, save_upload, validate_file
    from modelmill.store.tables import UploadedFile

    store = _store(request)
    if purpose not in PURPOSES:
        raise InputError(f"purpose '{purpose}' is not supported", field="purpose",
                         fix="use purpose 'fine-tune' (the only one this server keeps files for)")
    staging = _staging(store)
    try:
        path = save_upload(store, file, staging, FT_TYPES)
        report = validate_file(path, "auto", file.filename)
        if not report["valid"]:
            first = report["errors"][0]
            err = InputError(f"{len(report['errors'])} invalid line(s) in {file.filename}; the first: "
                             f"{first['message']}", field="file",
                             fix="fix the lines listed in error.details and upload again")
            raise _with_details(err, report["errors"])
        from modelmill.train.methods import REGISTRY

        # the methods OpenAI's fine-tuning API names: supervised (lora) and dpo
        if not any(report["kind"] in REGISTRY[m].kinds for m in ("lora", "dpo")):
            raise InputError(f"the file holds {report['kind']} records, which fine-tuning cannot use", field="file",
                             fix="give chat examples (one {\"messages\": [...]} object per line) or, for DPO, "
                                 "preference pairs")
        fid = "file-" + uuid.uuid4().hex[:24]
        key = getattr(request.state, "api_key", None)
        final = store.home / "files" / fid
        size = path.stat().st_size
        with store.staging(final) as tmp:
            shutil.move(str(path), tmp / "data.jsonl")
        row = UploadedFile(id=fid, filename=file.filename, purpose=purpose, bytes=size,
                           path=str(final / "data.jsonl"), status="processed",
                           info={**{k: report[k] for k in ("format", "kind", "num_records")},
                                 **({"uploaded_by": key.id} if key is not None else {})})
        try:
            with store.session() as s:
                s.add(row)
        except BaseException:
            store.remove_tree(final)
            raise
        return file_json(row)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@router.get("/files")
def list_files(request: Request, purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
               order: Literal["asc", "desc"] = "desc", after: str | None = None):
    from modelmill.store.tables import UploadedFile

    q = select(UploadedFile)
    if purpose:
        q = q.where(UploadedFile.purpose == purpose)
    q = q.order_by(UploadedFile.created_at.desc() if order == "desc" else UploadedFile.created_at,
                   UploadedFile.id)
    with _store(request).session() as s:
        rows = list(s.scalars(q))
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": [file_json(r) for r in rows[:limit]], "has_more": len(rows) > limit,
            "first_id": rows[0].id if rows else None, "last_id": rows[:limit][-1].id if rows else None}


@router.get("/files/{file_id}")
def get_file(request: Request, file_id: str):
    return file_json(_file(_store(request), file_id))


@router.get("/files/{file_id}/content")
def file_content(request: Request, file_id: str):
    from modelmill.api.auth import require_uploader

    f = _file(_store(request), file_id)
    require_uploader(request, f)
    return FileResponse(f.path, media_type="application/jsonl", filename=f.filename)


@router.delete("/files/{file_id}")
def delete_file(request: Request, file_id: str):
    from pathlib import Path

    from modelmill.api.auth import require_uploader
    from modelmill.store.tables import UploadedFile

    store = _store(request)
    f = _file(store, file_id)
    require_uploader(request, f)
    with store.session() as s:
        row = s.get(UploadedFile, file_id)
        if row is not None:
            s.delete(row)
    store.remove_tree(Path(f.path).parent)
    return {"id": file_id, "object": "file", "deleted": True}


# ----------------------------------------------------------------------------- fine-tuning jobs

class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DPOHyperparameters(Hyperparameters):
    beta: float | Literal["auto"] = "auto"


class DPO(BaseModel):
    hyperparameters: DPOHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: DPO | None = None
    reinforcement: dict | None = None


class FineTuningJobRequest(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=60)
    validation_file: str | None = Field(default=None, max_length=60)
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    method: Method | None = None
    integrations: list[dict] | None = None
    metadata: dict[str, str] | None = None

    def check_metadata(self) -> None:
        """OpenAI's limits: up to 16 pairs, keys up to 64 characters, values up to 512."""
        md = self.metadata or {}
        if len(md) > 16:
            raise InputError(f"has {len(md)} keys; at most 16", field="metadata", fix="keep 16 key-value pairs or fewer")
        for k, v in md.items():
            if not k or len(k) > 64:
                raise InputError(f"key '{k[:80]}' has {len(k)} characters; keys take 1 to 64", field="metadata",
                                 fix="shorten the key")
            if len(v) > 512:
                raise InputError(f"the value of '{k}' has {len(v)} characters; at most 512", field=f"metadata.{k}",
                                 fix="shorten the value")


def _base_lr(method: str) -> float:
    """The learning rate a multiplier of 1 means: the method's default on chat data."""
    from modelmill.train.methods import config_class

    return config_class(method)(method=method).lr_for("chat")


def _hyper(job) -> dict:
    spec = job.spec or {}
    base_lr = _base_lr(spec.get("method", "lora"))
    lr = spec.get("learning_rate") or base_lr
    epochs = spec.get("epochs") or "auto"  # auto: 1, or 2 on classification data (SFTConfig.epochs_for)
    if epochs != "auto" and float(epochs).is_integer():
        epochs = int(epochs)
    return {"n_epochs": epochs, "batch_size": spec.get("batch_size", 8),
            "learning_rate_multiplier": round(lr / base_lr, 6)}


def ft_job_json(job) -> dict:
    error = job.error
    if error is not None:
        error = {"code": str(error.get("code") or "error"), "message": str(error.get("message", "")),
                 "param": error.get("param")}
    hyper = _hyper(job)
    spec = job.spec or {}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if spec.get("method") == "dpo":
        method = {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": spec.get("beta", "auto")}}}
    return {"object": "fine_tuning.job", "id": job.id, "model": job.model, "created_at": _ts(job.created_at),
            "finished_at": _ts(job.finished_at), "fine_tuned_model": job.fine_tuned_model,
            "organization_id": "modelmill", "result_files": [], "status": job.status,
            "validation_file": job.validation_file, "training_file": job.training_file or "",
            "hyperparameters": hyper, "trained_tokens": job.trained_tokens, "error": error,
            "user_provided_suffix": job.suffix, "seed": spec.get("seed", 42), "estimated_finish": None,
            "integrations": [], "metadata": spec.get("metadata") or None, "method": method}


def _train_job(store, job_id: str):
    from modelmill.jobs.queue import JobQueue

    job = JobQueue(store).get(job_id)
    if job.kind != "train":
        raise NotFoundError(f"no fine-tuning job '{job_id}' (it is a {job.kind} job)", field="fine_tuning_job_id",
                            fix="GET /api/jobs/" + job_id)
    return job


@router.post("/fine_tuning/jobs")
def create_fine_tuning_job(request: Request, body: FineTuningJobRequest):
    """Queue LoRA fine-tuning of ``model`` on an uploaded file, supervised or DPO (OpenAI's ``method``);
    ``model`` may be a fine-tuned model, which is then trained further from its adapter. A worker runs it."""
    from modelmill.api.auth import require_model
    from modelmill.jobs.queue import JobQueue
    from modelmill.names import check_name

    store = _store(request)
    require_model(request, body.model)
    body.check_metadata()
    method = body.method or Method()
    if method.type == "reinforcement":
        raise InputError("method 'reinforcement' is not supported by this server yet", field="method.type",
                         fix='use "supervised" or "dpo"')
    if method.type == "dpo":
        h = (method.dpo.hyperparameters if method.dpo else None) or body.hyperparameters or DPOHyperparameters()
    else:
        h = body.hyperparameters or (method.supervised.hyperparameters if method.supervised else None) or Hyperparameters()
    if body.suffix is not None:
        check_name(body.suffix, "suffix")
    _file(store, body.training_file, "training_file")  # 404 before anything is queued
    if body.validation_file:
        _file(store, body.validation_file, "validation_file")
    # A fine-tuned model (BASE:ADAPTER or ADAPTER) is trained further from its adapter: DPO after SFT
    from modelmill.adapters import AdapterRegistry
    from modelmill.errors import ConflictError

    try:
        base, adapter = AdapterRegistry(store).resolve_ref(body.model)
    except (NotFoundError, ConflictError) as e:  # the registry names no request field: this one is "model"
        raise type(e)(e.message, field="model", fix=e.fix) from None
    spec: dict = {"base": base.name, **({"from_adapter": adapter.name} if adapter else {})}
    if method.type == "dpo":
        spec["method"] = "dpo"
        beta = getattr(h, "beta", "auto")
        if beta != "auto":
            if not 0 < beta <= 10:
                raise InputError(f"must be in (0, 10], got {beta}", field="method.dpo.hyperparameters.beta",
                                 fix="e.g. 0.1")
            spec["beta"] = float(beta)
    if h.n_epochs != "auto":
        if not 1 <= h.n_epochs <= 50:
            raise InputError(f"must be from 1 to 50, got {h.n_epochs}", field="hyperparameters.n_epochs")
        spec["epochs"] = float(h.n_epochs)
    if h.batch_size != "auto":
        if not 1 <= h.batch_size <= 256:
            raise InputError(f"must be from 1 to 256, got {h.batch_size}", field="hyperparameters.batch_size")
        spec["batch_size"] = h.batch_size
    if h.learning_rate_multiplier != "auto":
        m = h.learning_rate_multiplier
        if not 0 < m <= 10:
            raise InputError(f"must be in (0, 10], got {m}", field="hyperparameters.learning_rate_multiplier")
        spec["learning_rate"] = _base_lr(spec.get("method", "lora")) * m
    if body.seed is not None:
        spec["seed"] = body.seed
    key = getattr(request.state, "api_key", None)
    job = JobQueue(store).submit("train", spec, training_file=body.training_file,
                                 validation_file=body.validation_file, suffix=body.suffix or "ft",
                                 created_by=key.id if key else None, metadata=body.metadata)
    return ft_job_json(job)


@router.get("/fine_tuning/jobs")
def list_fine_tuning_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)):
    from modelmill.jobs.queue import JobQueue

    rows = JobQueue(_store(request)).list(kind="train", limit=limit + 1, after=after)
    return {"object": "list", "data": [ft_job_json(j) for j in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}")
def get_fine_tuning_job(request: Request, fine_tuning_job_id: str):
    return ft_job_json(_train_job(_store(request), fine_tuning_job_id))


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
def cancel_fine_tuning_job(request: Request, fine_tuning_job_id: str):
    from modelmill.api.auth import require_job
    from modelmill.jobs.queue import JobQueue

    store = _store(request)
    require_job(request, _train_job(store, fine_tuning_job_id))
    return ft_job_json(JobQueue(store).cancel(fine_tuning_job_id))


def _event_id(after: str | None) -> int | None:
    if after is None:
        return None
    try:
        n = int(after.removeprefix("ftevent-"))
    except ValueError:
        n = -1
    if not 0 <= n < 2**62:
        raise InputError(f"'{after[:80]}' is not an event id", field="after", fix="pass the id of an event")
    return n


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events")
def list_fine_tuning_events(request: Request, fine_tuning_job_id: str, after: str | None = None,
                            limit: int = Query(20, ge=1, le=1000)):
    """Newest first, as OpenAI's API; ``after`` pages on to older events."""
    from modelmill.jobs.queue import JobQueue

    store = _store(request)
    _train_job(store, fine_tuning_job_id)
    rows = JobQueue(store).events(fine_tuning_job_id, after=_event_id(after), limit=limit + 1, newest_first=True)
    data = [{"object": "fine_tuning.job.event", "id": f"ftevent-{e.id}", "created_at": _ts(e.created_at),
             "level": e.level, "message": e.message, "data": e.data or {}, "type": e.type} for e in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit}


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
def list_fine_tuning_checkpoints(request: Request, fine_tuning_job_id: str, after: str | None = None,
                                 limit: int = Query(10, ge=1, le=100)):
    """The checkpoints training saved (newest first). Only the final model is served: intermediate
    checkpoints are resume points, deleted when the run finishes."""
    from modelmill.jobs.queue import JobQueue
    from modelmill.jobs.runner import saved_checkpoints

    store = _store(request)
    job = _train_job(store, fine_tuning_job_id)
    seen, data, found = set(), [], after is None
    name = job.fine_tuned_model or f"{job.model}:{(job.spec or {}).get('name', '')}"
    # every checkpoint event, newest first, read back page by page only as far as this page needs
    # (a long job has far more events than one read holds)
    for e in saved_checkpoints(JobQueue(store), job.id):
        step = e.data["step"]
        if step in seen:  # reported again by a later attempt: the newest report counts
            continue
        seen.add(step)
        cid = f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}"
        if not found:  # OpenAI's `after`: the last checkpoint id of the page before
            found = cid == after
            continue
        data.append({"object": "fine_tuning.job.checkpoint", "id": cid,
                     "created_at": _ts(e.created_at), "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}",
                     "step_number": step, "metrics": {k: v for k, v in (e.data.get("metrics") or {}).items()
                                                      if v is not None},
                     "fine_tuning_job_id": job.id})
        if len(data) > limit:
            break
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[:limit][-1]["id"] if data else None}
