"""Evaluation as one library call: what `modelmill eval`, the eval job and the API all run.

    from modelmill.evaluate.run import EvalConfig, run
    out = run(store, EvalConfig(data="drugs-test", train="drugs-train", models="drugs-lora",
                                baselines="zero-shot,tfidf"))
    out.spec.name, [(r.candidate, r.score) for r in out.rows]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from modelmill.errors import InputError


@dataclass
class EvalConfig:
    """One evaluation: a task (a task file, or a test set and its kind) and the candidates to score."""

    models: str = ""  # comma-separated: BASE, ADAPTER, BASE:ADAPTER, few-shot:REF, tfidf, remote models ...
    data: str = ""  # without task_file: the test set (dataset NAME[@VERSION] or a file)
    task_file: str = ""  # a task YAML file
    kind: str = ""  # without task_file: the task kind (default: from the dataset)
    train: str = ""  # training set for few-shot and classical baselines
    name: str = ""  # without task_file: the task's name (default: the dataset's)
    baselines: str = ""  # zero-shot, few-shot, classical (tfidf, gazetteer, crf), comma-separated
    limit: int = 0  # score only the first N items (0: all)
    scoring: str = ""  # auto, loglik or generate ("": the task's own)
    few_shot: int = 0  # examples a few-shot candidate sees (0: the task's)
    nearest: bool = False  # few-shot: the nearest examples by embedding
    batch_size: int = 0  # sequences per forward pass (0: the task's)
    max_new_tokens: int = 0  # generation length (0: the kind's default)
    device: str = "auto"
    dtype: str = "auto"
    rerun: bool = False  # score again even where a stored result exists


@dataclass
class EvalRun:
    spec: object  # the TaskSpec scored
    rows: list  # EvalResult per candidate


def names(text: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def task_spec(store, cfg: EvalConfig):
    """The task ``cfg`` describes, with its overrides applied. Paths are the caller's, relative to the
    working folder (a task file's own paths are relative to the file)."""
    from modelmill.evaluate.tasks import load_task, task_from_dict

    if cfg.task_file and (cfg.kind or cfg.data):
        raise InputError("give a task file or --kind/--data, not both", field="--task",
                         fix="put kind and data in the task file")
    abspath = lambda ref: str(Path(ref).resolve()) if ref and Path(ref).is_file() else ref  # noqa: E731
    data_ref, train_ref = abspath(cfg.data), abspath(cfg.train)
    if cfg.task_file:
        spec = load_task(cfg.task_file)
    else:
        if not data_ref:
            raise InputError("no task given", field="--task", fix="pass --task FILE.yaml, or --data DATASET [--kind KIND]")
        kind = cfg.kind
        if not kind and Path(data_ref).is_file():
            raise InputError("a file's task kind cannot be guessed", field="--kind",
                             fix="add --kind classification (or extraction, generation, multiple_choice, judge, dialogue)")
        if not kind:  # the dataset's kind decides: classification data -> classification, chat -> generation
            from modelmill.data.catalog import DatasetCatalog

            ds = DatasetCatalog(store).resolve(data_ref)
            kind = "classification" if ds.kind == "classification" else "generation"
        spec = task_from_dict({"kind": kind, "data": data_ref, **({"train": train_ref} if train_ref else {}),
                               "name": cfg.name or Path(data_ref.split("@")[0]).stem})
    overrides = {"limit": cfg.limit or None, "scoring": cfg.scoring or None, "few_shot": cfg.few_shot or None,
                 "batch_size": cfg.batch_size or None, "max_new_tokens": cfg.max_new_tokens or None,
                 "train": train_ref if cfg.task_file and train_ref else None,
                 "few_shot_select": "nearest" if cfg.nearest else None}
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def run(store, cfg: EvalConfig, *, progress: bool = True) -> EvalRun:
    """Score every candidate (and the baselines asked for) on the task; results are stored."""
    from modelmill.evaluate.candidates import baselines as add_baselines, parse_candidates
    from modelmill.evaluate.runner import evaluate

    if not cfg.models:
        raise InputError("no models to score", field="--models", fix="e.g. --models smollm2-135m-instruct,my-adapter")
    spec = task_spec(store, cfg)
    kw = {"few_shot": spec.few_shot, "few_shot_select": spec.few_shot_select, "device": cfg.device, "dtype": cfg.dtype}
    cands = parse_candidates(store, cfg.models, **kw)
    if names(cfg.baselines):
        cands = add_baselines(store, cands, names(cfg.baselines), kind=spec.kind, **kw)
    return EvalRun(spec, evaluate(store, spec, cands, rerun=cfg.rerun, progress=progress))
