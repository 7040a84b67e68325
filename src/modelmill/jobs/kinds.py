"""What a job can be: train, eval, grid, merge, promote, bot-build (and any kind a plugin adds under
``modelmill.job_kinds``).

A kind is its config dataclass (the same one the CLI's flags come from) plus three calls:
``validate`` (at submit time, in the API process: names resolve, files are imported),
``resources`` (CPU slots and GPUs it needs) and ``run`` (in the worker's subprocess).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from modelmill.errors import ConflictError, InputError
from modelmill.evaluate.run import names as _names  # light
from modelmill.schema import from_mapping
from modelmill.adapters.merge import MergeConfig  # light: no torch at import
from modelmill.apps.bot_data import BotBuildConfig  # light: no torch at import
from modelmill.train.sft import SFTConfig  # light: no torch at import
from modelmill.train import methods as train_methods  # light: no torch at import

KINDS: dict[str, "JobKind"] = {}

METADATA = "metadata"   # a stored spec's key for the submitter's own labels (JobQueue.submit), not config


def without_metadata(spec: dict | None) -> dict:
    """A stored spec as its kind's config reads it: without the submitter's labels."""
    return {k: v for k, v in (spec or {}).items() if k != METADATA}


@dataclass
class JobKind:
    name: str
    config_cls: type
    validate: Callable  # (store, cfg, job) -> (cfg, {job column: value})
    run: Callable  # (ctx: runner.JobContext) -> result dict
    needs: Callable = lambda cfg: {"cpu": 1, "gpu": 0}

    def config(self, spec: dict):
        return from_mapping(self.config_cls, without_metadata(spec))

    def to_spec(self, cfg) -> dict:
        return asdict(cfg)

    def resources(self, cfg) -> dict:
        return self.needs(cfg)


@dataclass
class TrainKind(JobKind):
    """Training: the config class is the one its ``method`` names (train.methods)."""

    def config(self, spec: dict):
        return train_methods.from_mapping(without_metadata(spec))


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    from modelmill.plugins import load_plugins

    load_plugins("modelmill.job_kinds")
    if name not in KINDS:
        raise InputError(f"unknown job kind '{name}'", field="kind", fix="use one of " + ", ".join(sorted(KINDS)))
    return KINDS[name]


@functools.lru_cache(maxsize=1)
def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no driver: no GPU
        return 0


# ----------------------------------------------------------------------------- train

def _train_needs(cfg) -> dict:
    if cfg.ray_workers:  # Ray Train workers: one CPU each, or one GPU (and a CPU) each
        return {"cpu": cfg.ray_workers, "gpu": cfg.ray_workers if cfg.gpus_per_node else 0}
    gpu = cfg.device == "cuda" or (cfg.device == "auto" and _gpu_count() > 0)
    return {"cpu": 1, "gpu": cfg.num_processes if gpu else 0}


def _import_upload(store, file_id: str, name: str, field_name: str):
    """A fine-tune file uploaded through /v1/files, imported as a dataset (validated line by line)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.store.tables import UploadedFile

    with store.session() as s:
        f = s.get(UploadedFile, file_id)
    if f is None:
        raise InputError(f"no file '{file_id}'", field=field_name, fix="upload it with POST /v1/files first")
    if f.purpose != "fine-tune":
        raise InputError(f"file '{file_id}' was uploaded with purpose '{f.purpose}'", field=field_name,
                         fix="upload training data with purpose 'fine-tune'")
    row, _, _ = DatasetCatalog(store).import_file(f.path, name, source_name=f"{file_id}:{f.filename}")
    return row


def _validate_train(store, cfg, job):
    from modelmill.jobs.queue import JobQueue
    from modelmill.models.registry import ModelRegistry
    from modelmill.train.runs import (check_name_free, check_target_modules, general_dataset, held_out_dataset,
                                      run_name, starting_adapter, trainable_dataset)

    q = JobQueue(store)
    base = ModelRegistry(store).get(cfg.base)  # NotFoundError names the model
    if job.training_file:  # an OpenAI fine-tuning job: the uploaded file becomes a dataset
        q.event(job.id, f"Validating training file: {job.training_file}")
        ds = _import_upload(store, job.training_file, f"ft-{job.training_file.removeprefix('file-')[:12]}",
                            "training_file")
        cfg = dataclasses.replace(cfg, data=ds.ref)
        q.event(job.id, f"Training file imported as dataset {ds.ref} ({ds.num_records} records)")
        if job.validation_file:
            vds = _import_upload(store, job.validation_file,
                                 f"ft-{job.validation_file.removeprefix('file-')[:12]}", "validation_file")
            cfg = dataclasses.replace(cfg, eval_data=vds.ref)
            q.event(job.id, f"Validation file imported as dataset {vds.ref} ({vds.num_records} records); "
                            "its loss is reported as valid_loss")
    if not cfg.data:
        raise InputError("no training data named", field="data", fix="name a dataset from GET /api/datasets")
    if cfg.data.startswith("kb:"):
        from modelmill.train.runs import knowledge_dataset

        cfg = dataclasses.replace(cfg, data=knowledge_dataset(store, cfg))
    ds = trainable_dataset(store, cfg.data, field="training_file" if job.training_file else "data",
                           method=cfg.method)
    if cfg.eval_data:
        field = "validation_file" if job.validation_file else "eval_data"
        cfg = dataclasses.replace(cfg, eval_data=held_out_dataset(store, cfg.eval_data, ds, field=field,
                                                                  method=cfg.method).ref)
    _field_named(starting_adapter, store, cfg, base, field="from_adapter")
    if not cfg.from_adapter and not cfg.full_weights and base.path and (Path(base.path) / "config.json").is_file():
        _field_named(check_target_modules, cfg, base, field="target_modules")  # peft would fail in the trainer
    _field_named(general_dataset, store, cfg, field="general_data")
    if not cfg.name and job.suffix:
        cfg = dataclasses.replace(cfg, name=f"{job.suffix}-{job.id.removeprefix('ftjob-')[:8]}")
    cfg = dataclasses.replace(cfg, data=ds.ref, name=run_name(cfg))
    check_name_free(store, cfg.name, field="name")
    if any(j.id != job.id and (j.spec or {}).get("name") == cfg.name for j in q.find_active(kind="train")):
        raise ConflictError(f"another job is already training '{cfg.name}'", field="name",
                            fix="choose another name, or cancel that job")
    return cfg, {"model": cfg.base}


def _field_named(check, *args, field: str):
    """``check(*args)`` with its error naming the REST field instead of the CLI flag."""
    from modelmill.errors import ModelmillError

    try:
        return check(*args)
    except ModelmillError as e:
        if getattr(e, "field", None) and e.field.startswith("--"):
            # a flag that is a config field keeps its name (--lora-r: lora_r); others are the check's field
            own = e.field[2:].replace("-", "_")
            names = {f.name for a in args if dataclasses.is_dataclass(a) for f in dataclasses.fields(a)}
            e.field = own if own in names else field
            e.args = (str(e),)
        raise


def _run_train(ctx) -> dict:
    from modelmill.train.runs import published_by, run_lock, train
    from modelmill.train.common import drop_partial_checkpoints

    cfg = ctx.config
    # an earlier copy of this job that is being stopped may still hold the run: wait until it has
    # let go (its worker SIGKILLs it 60 s after asking) before looking at what it left
    with run_lock(ctx.store, cfg.name, wait=90.0):
        pass
    done = published_by(ctx.store, cfg.name, ctx.job.id)
    if done is not None:  # an earlier attempt published it just before the job was re-queued
        ctx.event(f"Attempt {ctx.job.attempts - 1} already published {done.name}; nothing to train again")
        return _train_result(ctx, done)
    run_dir = ctx.store.runs_dir / cfg.name
    # whole checkpoints only: one whose trainer was killed while writing it goes (no trainer_state.json yet)
    drop_partial_checkpoints(run_dir / "checkpoints")
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if (run_dir / "checkpoints").is_dir() else []
    # only this job's own earlier attempt (validation refused a name with another run's checkpoints)
    resume = bool(ckpts) and (run_dir / "job.json").is_file() and ctx.job.attempts > 1
    if resume:
        ctx.event(f"Resuming from {ckpts[-1].name} (attempt {ctx.job.attempts})", data={"checkpoint": ckpts[-1].name})
    elif run_dir.exists() and ctx.job.attempts > 1:
        ctx.event("No checkpoint was saved before the worker stopped; starting again from step 0", level="warn")
    ctx.watch_training(run_dir)
    # publish only while this attempt still holds the job
    def before_publish():
        ctx.settle_training()  # every step's metrics are events before the run folder moves
        ctx.still_ours()

    adapter = train(ctx.store, cfg, resume=resume, log_file=ctx.log_file, lock_wait=90.0,
                    before_publish=before_publish, job_id=ctx.job.id)
    return _train_result(ctx, adapter)


def _train_result(ctx, adapter) -> dict:
    model_id = f"{adapter.base_model}:{adapter.name}"
    ctx.event(f"New fine-tuned model: {model_id}", data={"fine_tuned_model": model_id})
    return {"adapter": adapter.name, "fine_tuned_model": model_id, "metrics": adapter.metrics,
            "columns": {"fine_tuned_model": model_id, "trained_tokens": (adapter.metrics or {}).get("train_tokens")}}


# ----------------------------------------------------------------------------- eval


@dataclass
class EvalJobConfig:
    """Score models on a task, as `modelmill eval` does."""

    models: str = field(default="", metadata={"help": "Comma-separated: BASE, ADAPTER, BASE:ADAPTER, tfidf ...",
                                                 "basic": True})
    data: str = field(default="", metadata={"help": "The test set (dataset NAME[@VERSION]).", "basic": True})
    kind: str = field(default="", metadata={"help": "Task kind (default: from the dataset)."})
    train: str = field(default="", metadata={"help": "Training set for few-shot and classical baselines."})
    name: str = field(default="", metadata={"help": "The task's name (default: the dataset's)."})
    baselines: str = field(default="", metadata={"help": "zero-shot, few-shot, classical (tfidf, gazetteer, crf), comma-separated.",
                                                 "basic": True})
    limit: int = field(default=0, metadata={"help": "Score only the first N items (0: all)."})
    scoring: str = field(default="auto", metadata={"help": "auto, loglik or generate.",
                                                   "choices": ["auto", "loglik", "generate"]})
    max_new_tokens: int = field(default=0, metadata={"help": "Generation length (0: default per kind)."})

    def __post_init__(self):
        if self.limit < 0 or self.max_new_tokens < 0:
            raise InputError("must be >= 0", field="limit" if self.limit < 0 else "max_new_tokens")


def _validate_eval(store, cfg, job):
    from modelmill.data.catalog import DatasetCatalog

    if not cfg.models:
        raise InputError("no models to score", field="models", fix="e.g. smollm2-135m-instruct,my-adapter")
    if not cfg.data:
        raise InputError("no test set named", field="data", fix="name a dataset from GET /api/datasets")
    DatasetCatalog(store).resolve(cfg.data, flag="data")
    if cfg.train:
        DatasetCatalog(store).resolve(cfg.train, flag="train")
    return cfg, {"model": cfg.models.split(",")[0].split(":")[0].strip()[:200] or None}


def _run_eval(ctx) -> dict:
    from modelmill.evaluate.run import EvalConfig, run

    cfg = ctx.config
    ctx.event(f"Scoring {cfg.models}" + (f" and the baselines {cfg.baselines}" if cfg.baselines else "")
              + f" on {cfg.data}")
    out = run(ctx.store, EvalConfig(models=cfg.models, data=cfg.data, kind=cfg.kind, train=cfg.train, name=cfg.name,
                                    baselines=cfg.baselines, limit=cfg.limit, scoring=cfg.scoring,
                                    max_new_tokens=cfg.max_new_tokens), progress=False)
    rows = [{"candidate": r.candidate, "score": r.score, "primary": r.primary} for r in out.rows]
    return {"task": out.spec.name, "results": rows}


# ----------------------------------------------------------------------------- grid


@dataclass
class GridJobConfig:
    """Train every base x dataset x method and score each on one task, as `modelmill grid` does."""

    bases: str = field(default="", metadata={"help": "Comma-separated base models.", "basic": True})
    data: str = field(default="", metadata={"help": "Comma-separated training datasets.", "basic": True})
    methods: str = field(default="lora", metadata={
        "help": "Comma-separated: lora, lora-rN, full, dpo, orpo, kto, cpt, or steps joined by -then- "
                "(cpt-then-lora, lora-then-dpo).", "basic": True})
    step_data: str = field(default="", metadata={
        "help": "METHOD=DATASET,...: the data of the steps of that method (cpt=docs); a dpo/orpo step after "
                "another without it learns from that step's mistakes."})
    task: str = field(default="", metadata={"help": "Task YAML file every cell is scored on (a path on the server).",
                                            "basic": True})
    prefix: str = field(default="", metadata={"help": "A word in front of every cell's adapter name."})
    baselines: str = field(default="zero-shot", metadata={"help": "Also rank: zero-shot, few-shot, classical."})
    max_steps: int = field(default=-1, metadata={"help": "Training steps per cell (-1: by epochs)."})
    epochs: float = field(default=0.0, metadata={
        "help": "Passes over the training data per cell (0: 1, or 2 for LoRA on classification data)."})
    fan_out: bool = field(default=True, metadata={
        "help": "Run the cells as jobs of their own (cells sharing a step together), side by side on as many "
                "workers or Ray nodes as are free, each on the leaderboard as it finishes; false: one after "
                "another inside this job."})

    def __post_init__(self):
        if not (self.max_steps == -1 or self.max_steps > 0):
            raise InputError(f"must be -1 or > 0, got {self.max_steps}", field="max_steps")
        if self.epochs < 0:
            raise InputError(f"must be >= 0 (0: auto), got {self.epochs}", field="epochs")


def _validate_grid(store, cfg, job):
    if not (cfg.bases and cfg.data and cfg.task):
        missing = next(f for f in ("bases", "data", "task") if not getattr(cfg, f))
        raise InputError("missing", field=missing)
    from modelmill.evaluate.grid import check

    if Path(cfg.task).suffix.lower() not in (".yaml", ".yml") or not Path(cfg.task).is_file():
        raise InputError(f"no task file (.yaml) at {cfg.task}", field="task",
                         fix="give the path of a task YAML file on the server")
    from modelmill.evaluate.tasks import load_task

    check(store, _grid_cells(cfg), load_task(cfg.task))
    return cfg, {"model": _names(cfg.bases)[0][:200]}


def _grid_cells(cfg):
    from modelmill.evaluate.grid import parse_step_data, plan

    return plan(_names(cfg.bases), _names(cfg.data), _names(cfg.methods),
                SFTConfig(max_steps=cfg.max_steps, epochs=cfg.epochs), cfg.prefix,
                _field_named(parse_step_data, cfg.step_data, field="step_data"))


def _run_grid(ctx) -> dict:
    """The same library call as `modelmill grid`; the result carries the board and the winner."""
    from modelmill.evaluate.grid import run, summary_lines
    from modelmill.evaluate.tasks import load_task

    cfg = ctx.config
    spec = load_task(cfg.task)
    out = run(ctx.store, spec, _grid_cells(cfg), baselines=_names(cfg.baselines), log=ctx.event,
              fan_out=functools.partial(_fan_out, ctx) if cfg.fan_out else None)
    lines = summary_lines(out.summary)
    ctx.event("\n".join(lines), data=out.summary)
    return {"task": spec.name, "adapters": out.adapters, "summary": out.summary,
            "results": [{"candidate": r.candidate, "score": r.score, "primary": r.primary} for r in out.rows]}


def _grid_needs(cfg) -> dict:
    return {"cpu": 0 if cfg.fan_out else 1, "gpu": 0}  # fanned out, the cells' own jobs hold the slots


def _fan_out(ctx, groups) -> None:
    """Each group of cells becomes a grid job of its own (trained and scored on the task: its cells
    land on the leaderboard as it finishes); wait for all. One that fails fails the grid, and a
    grid stopped or cancelled cancels those still running (their checkpoints are kept: the grid's
    next attempt continues them)."""
    import time

    from modelmill.errors import ModelmillError
    from modelmill.jobs.queue import FINISHED

    cfg, q = ctx.config, ctx.queue
    pending: dict[str, list[str]] = {}
    try:
        for group in groups:
            child = dataclasses.replace(cfg, bases=group[0].base, data=group[0].data, baselines="", fan_out=False,
                                        methods=",".join(c.method for c in group))
            job = q.submit("grid", asdict(child), created_by=ctx.job.created_by)
            pending[job.id] = [c.name for c in group]
            ctx.event(f"Cells {', '.join(pending[job.id])} run as job {job.id}", data={"child_job": job.id})
        while pending:
            for jid in list(pending):
                job = q.get(jid)
                if job.status not in FINISHED:
                    continue
                cells = pending.pop(jid)
                if job.status != "succeeded":
                    why = (job.error or {}).get("message") or job.status
                    raise ModelmillError(f"the job of cells {', '.join(cells)} ({jid}) {job.status}: {why}")
                scores = ", ".join(f"{r['candidate'].split(':', 1)[-1]} {r['score']:.3f}"
                                   for r in (job.result or {}).get("results", []) if r.get("score") is not None)
                ctx.event(f"Cells {', '.join(cells)} done ({jid}): {scores or 'no score'}; "
                          f"{len(pending)} job(s) still running", data={"child_job": jid})
            time.sleep(1.0)
    except BaseException:
        for jid in pending:
            try:
                q.cancel(jid)
            except Exception:  # noqa: BLE001 - finished meanwhile
                pass
        raise


# ----------------------------------------------------------------------------- merge


def _validate_merge(store, cfg, job):
    from modelmill.adapters.merge import check

    rows = check(store, cfg)
    return cfg, {"model": rows[0][0].base_model}


def _run_merge(ctx) -> dict:
    """The same library call as `modelmill adapters merge`."""
    from modelmill.adapters.merge import merge

    row = merge(ctx.store, ctx.config, log=ctx.event)
    model_id = f"{row.base_model}:{row.name}"
    # the job's model column too: the job page and the job list show it as the model the job made
    return {"adapter": row.name, "base_model": row.base_model, "model_id": model_id,
            "parents": row.parents, "rank": (row.config or {}).get("lora_r"),
            "columns": {"fine_tuned_model": model_id}}


# ----------------------------------------------------------------------------- promotion


@dataclass
class PromoteJobConfig:
    """Move a deployment to a new model if it wins on the deployment's gate task, as `modelmill deploy
    promote` does (scoring both can take minutes: a job)."""

    deployment: str = field(default="", metadata={"help": "The deployment to move.", "basic": True})
    model: str = field(default="", metadata={"help": "The model, adapter or router it should point at.",
                                             "basic": True})
    force: bool = field(default=False, metadata={"help": "Move even without a gate, or when the model loses."})


def _validate_promote(store, cfg, job):
    from modelmill.apps.deployments import Deployments, check_target

    if not cfg.deployment:
        raise InputError("no deployment named", field="deployment", fix="name one from GET /api/deployments")
    dep = Deployments(store).get(cfg.deployment)
    if not cfg.model:
        raise InputError("no model named", field="model", fix="the model, adapter or router to promote")
    check_target(store, cfg.model)
    if not dep.gate and not cfg.force:
        raise InputError(f"deployment '{dep.name}' has no gate to promote through", field="force",
                         fix="give it a gate, or set force")
    return cfg, {"model": cfg.model.split(":")[0][:200]}


def _run_promote(ctx) -> dict:
    """The same library call as `modelmill deploy promote`; a refusal fails the job with both scores."""
    from modelmill.apps.promotion import promote

    cfg = ctx.config
    ctx.event(f"Scoring {cfg.model} against what {cfg.deployment} serves now, on its gate task")
    event = promote(ctx.store, cfg.deployment, cfg.model, force=cfg.force)
    return {"deployment": cfg.deployment, **event}


# ----------------------------------------------------------------------------- bot build


def _validate_bot_build(store, cfg, job):
    from modelmill.apps.bot_data import check_build

    check_build(store, cfg)
    return cfg, {"model": cfg.base}


def _bot_build_needs(cfg) -> dict:
    return {"cpu": 1, "gpu": 1 if cfg.train and _gpu_count() > 0 else 0}


def _run_bot_build(ctx) -> dict:
    """The same library call as `modelmill apps bot build`, each module trained as `modelmill train` trains."""
    from modelmill.apps.bot_data import build_bot
    from modelmill.train.runs import train_lora

    out = build_bot(ctx.store, ctx.config, log=ctx.event, trainer=train_lora)
    return {**out, "model_id": f"bot:{out['bot']}", "columns": {"fine_tuned_model": f"bot:{out['bot']}"}}


register(TrainKind("train", SFTConfig, _validate_train, _run_train, _train_needs))
register(JobKind("eval", EvalJobConfig, _validate_eval, _run_eval))
register(JobKind("grid", GridJobConfig, _validate_grid, _run_grid, _grid_needs))
register(JobKind("merge", MergeConfig, _validate_merge, _run_merge))
register(JobKind("promote", PromoteJobConfig, _validate_promote, _run_promote))
register(JobKind("bot-build", BotBuildConfig, _validate_bot_build, _run_bot_build, _bot_build_needs))
