"""From a config to a registered adapter: resolve names, launch the method, publish the result.

    from modelmill.train.runs import train
    adapter = train(open_store(), SFTConfig(data="reviews-train", name="reviews-lora"))
    adapter = train(open_store(), PreferenceConfig(data="prefs", from_adapter="reviews-lora"))

Generic over the methods in ``train.methods``: each names its config, the data kinds it takes and
the module the launcher runs.

A run lives in ``runs/<name>/`` while it trains (job.json, checkpoints/, metrics.jsonl, tb/).
When it finishes, the weights and logs move to ``adapters/<name>/`` in one rename and the
adapter is registered with its lineage; the run folder goes away. An interrupted or failed
run keeps its folder, so ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from modelmill.adapters import check_name_free, name_lock as run_lock  # noqa: F401  (jobs use both)
from modelmill.errors import InputError, ModelmillError, NotFoundError
from modelmill.names import check_name
from modelmill.store import Store
from modelmill.store.tables import Adapter
from modelmill.versions import library_versions
from modelmill.train.config import TrainConfig, TrainJob
from modelmill.train.methods import get_method


class TrainingInterrupted(ModelmillError):
    exit_code = 130


class TrainingFailed(ModelmillError):
    exit_code = 1


class TrainingKilled(TrainingFailed):
    """The trainer was killed by a signal it did not ask for (the out-of-memory killer, an operator's
    kill -9): its checkpoints stand, and a queued job tries again from them."""


def run_name(cfg: TrainConfig) -> str:
    if not cfg.data and not cfg.name:
        raise InputError("no training data named", field="--data", fix="pass --data NAME (see `modelmill data list`)")
    return check_name(cfg.name or (cfg.data.split("@")[0] + "-" + cfg.method), "--name")


def trainable_dataset(store: Store, ref: str, field: str = "--data", method: str = "lora"):
    """The dataset ``ref`` names, refused when ``method`` cannot train on its records."""
    from modelmill.data.catalog import DatasetCatalog

    m = get_method(method)
    ds = DatasetCatalog(store).resolve(ref, flag=field)
    if ds.kind not in m.kinds:
        users = [n for n, other in _registry().items() if ds.kind in other.kinds]
        raise InputError(f"dataset '{ds.ref}' holds {ds.kind} records; --method {method} trains on "
                         f"{m.config.DATA}", field=field,
                         fix=(f"use --method {users[0]} for {ds.kind} data, or " if users else "") +
                             f"give {m.config.DATA}")
    return ds


def _registry():
    from modelmill.train.methods import REGISTRY

    return REGISTRY


def held_out_dataset(store: Store, ref: str, train_ds, field: str = "--eval-data", method: str = "lora"):
    """The dataset ``ref`` names, checked as held-out data for training on ``train_ds``: the same
    kind of records, and for classification no label the training data lacks."""
    ds = trainable_dataset(store, ref, field=field, method=method)
    if ds.kind != train_ds.kind:
        raise InputError(f"dataset '{ds.ref}' holds {ds.kind} records but the training data '{train_ds.ref}' "
                         f"holds {train_ds.kind} records", field=field,
                         fix="give held-out data of the same kind as the training data")
    unknown = sorted(set(ds.labels or []) - set(train_ds.labels or []))
    if ds.kind == "classification" and unknown:
        raise InputError(f"labels of '{ds.ref}' absent from the training data '{train_ds.ref}': "
                         f"{', '.join(unknown[:10])}", field=field,
                         fix="hold out records whose labels the training data has (e.g. `modelmill data split`)")
    return ds


def prepare(store: Store, cfg: TrainConfig, resume: bool = False) -> TrainJob:
    """Check everything a run needs before any process starts; return the job to launch."""
    from modelmill.models.registry import ModelRegistry

    if not cfg.data and not resume:
        raise InputError("no training data named", field="--data", fix="pass --data NAME (see `modelmill data list`)")
    name = run_name(cfg)
    run_dir = store.runs_dir / name
    check_name_free(store, name, checkpoints=False)
    if resume:
        job_file = run_dir / "job.json"
        if not job_file.is_file():
            raise NotFoundError(f"no interrupted run named '{name}' to resume", field="--resume",
                                fix="start it without --resume, or name the run with --name")
        job = TrainJob.load(job_file)
        job.resume = True
        return job
    check_name_free(store, name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run that never saved a checkpoint

    base = ModelRegistry(store).ready(cfg.base)
    check_quantize(cfg)
    start = starting_adapter(store, cfg, base)
    if start is not None:
        cfg = keep_starting_shape(cfg, start)
    elif not cfg.full_weights:
        check_target_modules(cfg, base)
    general = general_dataset(store, cfg)
    ctx = (base.info or {}).get("context_length")
    if cfg.max_length == 0:
        cfg = replace(cfg, max_length=min(1024, ctx or 1024))
    elif ctx and cfg.max_length > ctx:
        raise InputError(f"{cfg.max_length} is longer than the context of '{base.name}' ({ctx} tokens)",
                         field="--max-length", fix=f"use --max-length {ctx} or less")
    block = getattr(cfg, "block_size", 0)
    if ctx and block > ctx:
        raise InputError(f"{block} is longer than the context of '{base.name}' ({ctx} tokens)",
                         field="--block-size", fix=f"use --block-size {ctx} or less")
    if cfg.data.startswith("kb:"):  # saved as a dataset once everything else has been checked
        cfg = replace(cfg, data=knowledge_dataset(store, cfg))
    ds = trainable_dataset(store, cfg.data, method=cfg.method)
    held_out = held_out_dataset(store, cfg.eval_data, ds, method=cfg.method) if cfg.eval_data else None
    run_dir.mkdir(parents=True)
    cfg = replace(cfg, name=name, data=ds.ref, learning_rate=cfg.lr_for(ds.kind), epochs=cfg.epochs_for(ds.kind),
                  eval_data=held_out.ref if held_out else "", **({"general_data": general.ref} if general else {}))
    return TrainJob(config=cfg, base_path=base.path, data_path=ds.path, kind=ds.kind, run_dir=str(run_dir),
                    labels=ds.labels, chat_template=base.chat_template, eval_path=held_out.path if held_out else None,
                    from_path=start.path if start else None, general_path=general.path if general else None)


def check_quantize(cfg: TrainConfig) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before anything starts."""
    if cfg.quantize == "none":
        return
    import importlib.util

    import torch

    missing = [what for what, ok in (("an NVIDIA GPU (CUDA)", cfg.device != "cpu" and torch.cuda.is_available()),
                                     ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes")))
               if not ok]
    if missing:
        raise InputError(f"--quantize {cfg.quantize} (QLoRA) needs {' and '.join(missing)}, which this machine lacks",
                         field="--quantize", fix="drop --quantize to train LoRA on the full-precision base"
                         + ("" if len(missing) == 2 or "bitsandbytes" not in missing[0] else
                            ", or `pip install bitsandbytes`"))


def starting_adapter(store: Store, cfg: TrainConfig, base):
    """The adapter ``--from`` names, checked: of the same base (and the same base weights), and an
    adapter rather than a full fine-tune."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.adapters.export import check_base_weights
    from modelmill.models.registry import ModelRegistry

    if not cfg.from_adapter:
        return None
    row = AdapterRegistry(store).find(cfg.from_adapter)
    if row is None:
        raise NotFoundError(f"no adapter named '{cfg.from_adapter}'", field="--from",
                            fix="see `modelmill adapters list`")
    if row.base_model != base.name:
        raise InputError(f"adapter '{row.name}' was trained on '{row.base_model}', not on '{base.name}'",
                         field="--from", fix=f"use --base {row.base_model}, or an adapter of {base.name}")
    check_base_weights(ModelRegistry(store), row, base, field="--from",
                       fix="retrain that adapter on this base, or start without --from")
    if row.method == "full" or not (Path(row.path) / "adapter_config.json").is_file():
        raise InputError(f"'{row.name}' holds full weights, not a LoRA adapter", field="--from",
                         fix="register it as a base model (`modelmill models add`) and train on that instead")
    keep_starting_shape(cfg, row)  # refuses a LoRA shape setting that training from it would ignore
    return row


# the LoRA settings a --from adapter already has: config field -> what it is called in messages
SHAPE = {"lora_r": "rank", "lora_alpha": "alpha", "target_modules": "target modules", "lora_dropout": "dropout"}


def keep_starting_shape(cfg: TrainConfig, start) -> TrainConfig:
    """``cfg`` with the LoRA shape of the ``--from`` adapter ``start`` (its rank, alpha, target modules
    and dropout are what training continues with, and what the lineage records). A shape setting
    changed from its default to another value than the adapter's is refused: it would be ignored."""
    from dataclasses import fields

    path = Path(start.path) / "adapter_config.json"
    try:
        own = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the starting adapter's config: {e}", file=str(path), field="--from",
                         fix="the adapter's folder is damaged: train or copy it again") from None
    targets = own.get("target_modules")
    have = {"lora_r": own.get("r"), "lora_alpha": own.get("lora_alpha"), "lora_dropout": own.get("lora_dropout"),
            "target_modules": ",".join(sorted(targets)) if isinstance(targets, (list, tuple, set)) else targets}
    defaults = {f.name: f.default for f in fields(cfg)}
    for name, what in SHAPE.items():
        asked, kept = getattr(cfg, name), have[name]
        if kept is None or asked == defaults[name]:
            continue
        same = (_module_set(asked) == _module_set(kept)) if name == "target_modules" else asked == kept
        if not same:
            from modelmill.train.methods import cli_flag

            flag = cli_flag(name)
            raise InputError(f"{asked} differs from the {what} of the starting adapter '{start.name}' ({kept}), "
                             "which training from it keeps", field=flag,
                             fix=f"drop {flag}: the starting adapter's shape is kept (or start without --from)")
    return replace(cfg, **{k: v for k, v in have.items() if v is not None})


def _module_set(text) -> set[str]:
    return {t.strip() for t in str(text).split(",") if t.strip()}


# the layer types peft puts LoRA on (by class name: no torch import needed to compare)
_LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D")


def check_target_modules(cfg: TrainConfig, base) -> None:
    """Refuse ``--target-modules`` names that match no layer of the base (peft would fail inside the
    trainer, after the run's folder is made). The names come from the base's architecture built on
    the meta device: no weights are read."""
    if cfg.target_modules == "all-linear":
        return
    wanted = [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    if not wanted:
        raise InputError(f"'{cfg.target_modules}' names no module", field="--target-modules",
                         fix="give comma-separated names such as q_proj,v_proj, or all-linear")
    names = base_layer_names(base.path)
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise InputError(f"no layer of '{base.name}' is named {', '.join(repr(m) for m in missing)}",
                         field="--target-modules", fix=f"use all-linear, or names of its layers: {', '.join(short)}")


def base_layer_names(path: str) -> list[str]:
    """The dotted names of the layers of the model in folder ``path`` that LoRA can adapt."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [n for n, m in model.named_modules() if n and type(m).__name__ in _LORA_LAYERS]


def general_dataset(store: Store, cfg: TrainConfig):
    """CPT's general text (``--general-data``): text records, or chat records whose answers are used."""
    from modelmill.data.catalog import DatasetCatalog

    ref = getattr(cfg, "general_data", "")
    if not ref:
        return None
    ds = DatasetCatalog(store).resolve(ref, flag="--general-data")
    if ds.kind not in ("text", "chat"):
        raise InputError(f"dataset '{ds.ref}' holds {ds.kind} records", field="--general-data",
                         fix="give general text: a text dataset, or a chat dataset (its answers are used)")
    return ds


def knowledge_dataset(store: Store, cfg: TrainConfig) -> str:
    """``--data kb:NAME``: the knowledge base's passages saved as a text dataset ``kb-NAME`` (a new
    version when its documents changed), so the adapter's lineage names what it read."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.kb.base import KnowledgeBases

    kb_name = cfg.data[3:]
    if cfg.method != "cpt":
        raise InputError(f"a knowledge base holds raw text; --method {cfg.method} cannot train on it", field="--data",
                         fix="use --method cpt, or make QA pairs first (`modelmill data synthesize --kb NAME`)")
    kb = KnowledgeBases(store).get(kb_name)
    rows = sorted(kb.vectors.rows(), key=lambda r: (r["doc"], r["ordinal"]))
    records = [{"text": r["text"]} for r in rows if r["text"].strip()]
    if not records:
        raise InputError(f"knowledge base '{kb_name}' has no documents", field="--data",
                         fix=f"add some with `modelmill kb add {kb_name} FILES`")
    row, _ = DatasetCatalog(store).save(f"kb-{kb_name}", records, "text", "text", None,
                                        {"op": "kb", "kb": kb_name, "kb_revision": kb.revision()})
    return row.ref


def train(store: Store, cfg: TrainConfig, *, resume: bool = False, log_file: Path | None = None,
          accelerate_config: str | None = None, lock_wait: float = 0.0, before_publish=None,
          job_id: str | None = None) -> Adapter:
    """Train and register an adapter; raise TrainingInterrupted (resumable) or TrainingFailed.

    ``before_publish()`` runs right before the adapter is published and may raise to stop it (a
    queued job checks it still holds its job); ``job_id`` is recorded in the lineage."""
    with run_lock(store, run_name(cfg), wait=lock_wait):
        return _train_locked(store, cfg, resume, log_file, accelerate_config, before_publish, job_id)


def train_lora(store: Store, *, base: str, data: str, name: str, epochs: float = 1.0, time_budget: float = 0.0,
               max_length: int = 0) -> Adapter:
    """A LoRA adapter with the default settings, as `modelmill train --base B --data D --name N` trains
    it: what a caller below training hands in to have a part trained (a bot's module)."""
    from modelmill.train.methods import config_class

    return train(store, config_class("lora")(base=base, data=data, name=name, method="lora", epochs=epochs,
                                             time_budget=time_budget, max_length=max_length))


def _train_locked(store: Store, cfg: TrainConfig, resume: bool, log_file: Path | None,
                  accelerate_config: str | None, before_publish=None, job_id: str | None = None) -> Adapter:
    import torch

    from modelmill.train.launcher import INTERRUPTED, launch

    if cfg.ray_workers:  # no cluster to train on: said before the run's folder is made
        from modelmill.train import ray_train

        ray_train.address()
    job = prepare(store, cfg, resume)
    cfg = job.config
    run_dir = Path(job.run_dir)
    job_path = run_dir / "job.json"
    job.save(job_path)
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cfg.ray_workers:  # across a Ray cluster's nodes: the same method code in each Ray Train worker
        from modelmill.train import ray_train

        rc = ray_train.launch(get_method(cfg.method).module, job_path, workers=cfg.ray_workers,
                              use_gpu=cfg.gpus_per_node > 0)
    else:
        rc = launch(get_method(cfg.method).module, job_path, num_processes=cfg.num_processes, use_cuda=use_cuda,
                    log_file=log_file, accelerate_config=accelerate_config)
    result_file = run_dir / "result.json"
    if rc == INTERRUPTED or (rc == 0 and not (run_dir / "final").is_dir()):
        raise TrainingInterrupted(f"training '{cfg.name}' was interrupted; checkpoints are in {run_dir / 'checkpoints'}",
                                  fix=f"continue with `modelmill train --name {cfg.name} --resume`")
    if cfg.ray_workers and rc < 0:
        raise TrainingKilled(f"a Ray Train worker of '{cfg.name}' was lost (its process or node died)",
                             fix=f"continue with `modelmill train --name {cfg.name} --resume` (a job resumes by itself)")
    if rc < 0:
        import signal

        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        raise TrainingKilled(f"the trainer of '{cfg.name}' was killed by {sig}"
                             + (" (the out-of-memory killer sends that)" if sig == "SIGKILL" else ""),
                             fix=f"continue with `modelmill train --name {cfg.name} --resume`; if memory ran out, "
                                 "lower --batch-size or --max-length")
    if rc != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise TrainingFailed(f"training '{cfg.name}' failed with exit code {rc}{where}",
                             fix="read the error above; fix it and run again (add --resume to keep checkpoints)")
    metrics = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if before_publish is not None:
        before_publish()
    return publish(store, job, metrics, job_id=job_id)


def published_by(store: Store, name: str, job_id: str) -> Adapter | None:
    """The adapter ``name`` if the queued job ``job_id`` published it (an earlier attempt of the
    job that finished training just as the job was re-queued), else None."""
    from modelmill.adapters import AdapterRegistry

    row = AdapterRegistry(store).find(name)
    if row is None:
        return None
    try:
        lineage = json.loads((Path(row.path) / "lineage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if lineage.get("job") == job_id else None


def publish(store: Store, job: TrainJob, metrics: dict, job_id: str | None = None) -> Adapter:
    """Move the finished run into adapters/<name>/ and register it with its lineage."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.models.registry import ModelRegistry

    cfg = job.config
    run_dir = Path(job.run_dir)
    base = ModelRegistry(store).get(cfg.base)
    ds = DatasetCatalog(store).resolve(cfg.data)
    final = store.adapters_dir / cfg.name
    lineage = {
        "name": cfg.name, "method": cfg.method,
        "base_model": base.name, "base_model_hash": ModelRegistry(store).base_hash(base),
        "dataset": ds.name, "dataset_version": ds.version, "dataset_hash": ds.content_hash,
        "config": asdict(cfg), "versions": library_versions(), "metrics": metrics,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    if job_id:
        lineage["job"] = job_id
    parents = []
    if cfg.from_adapter:
        start = AdapterRegistry(store).find(cfg.from_adapter)
        parents = [{"name": cfg.from_adapter, "weight": 1.0, "id": start.id if start else None, "relation": "from"}]
        lineage["parents"] = parents
    with store.staging(final) as tmp:
        # Copies, not moves: if anything below fails, the run folder is still whole.
        shutil.copytree(run_dir / "final", tmp, dirs_exist_ok=True)
        for extra in ("metrics.jsonl", "tb", "job.json"):
            src = run_dir / extra
            if src.is_dir():
                shutil.copytree(src, tmp / extra)
            elif src.is_file():
                shutil.copy2(src, tmp / extra)
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
    row = Adapter(name=cfg.name, base_model=base.name, base_model_hash=lineage["base_model_hash"],
                  method=cfg.method, dataset=ds.name, dataset_version=ds.version, dataset_hash=ds.content_hash,
                  path=str(final), config=lineage["config"], versions=lineage["versions"], metrics=metrics,
                  parents=parents)
    try:
        AdapterRegistry(store).add(row)
    except BaseException:
        store.remove_tree(final)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    return row
