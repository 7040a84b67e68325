"""A grid of fine-tunes: every base x dataset x method trained, scored on one task, and ranked.

    modelmill grid --bases smollm2-135m-instruct,qwen3-0.6b --data tickets-a,tickets-b \\
        --methods lora-r8,lora-r32,full --task tickets.yaml

Each cell trains an adapter named ``<data>-<base>-<method>`` (``--prefix`` puts a word in front).
Running the same grid again skips cells whose adapter exists with the same settings, continues
a cell whose run was interrupted, and reuses stored scores, so only what is missing is done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from modelmill.errors import ConflictError, InputError
from modelmill.names import check_name
from modelmill.train.sft import SFTConfig

_METHOD = re.compile(r"^(lora|full)(?:-r(\d+))?$")


@dataclass
class Cell:
    base: str
    data: str
    method: str
    config: SFTConfig

    @property
    def name(self) -> str:
        return self.config.name


def parse_method(method: str) -> dict:
    """``lora`` (rank 16), ``lora-rN`` (rank N, alpha 2N) or ``full`` -> SFTConfig settings."""
    m = _METHOD.match(method.strip())
    if not m or (m.group(1) == "full" and m.group(2)):
        raise InputError(f"unknown method '{method}'", field="--methods", fix="use lora, lora-rN (e.g. lora-r8) or full")
    if m.group(1) == "full":
        return {"method": "full"}
    if m.group(2):
        r = int(m.group(2))
        if not 1 <= r <= 1024:
            raise InputError(f"rank {r} out of range", field="--methods", fix="use a rank from 1 to 1024")
        return {"method": "lora", "lora_r": r, "lora_alpha": 2 * r}
    return {"method": "lora"}


def plan(bases: list[str], datasets: list[str], methods: list[str], template: SFTConfig, prefix: str = "") -> list[Cell]:
    for flag, xs in (("--bases", bases), ("--data", datasets), ("--methods", methods)):
        if not xs:
            raise InputError("nothing given", field=flag, fix=f"e.g. {flag} a,b")
    cells = []
    for d in datasets:
        for b in bases:
            for m in methods:
                settings = parse_method(m)
                name = check_name(f"{prefix + '-' if prefix else ''}{d.split('@')[0]}-{b}-{m}"[:128], "--prefix")
                cells.append(Cell(base=b, data=d, method=m,
                                  config=replace(template, base=b, data=d, name=name, **settings)))
    return cells


def _same(existing, cfg: SFTConfig, data_hash: str, data_kind: str) -> bool:
    """Whether a registered adapter was trained with these settings on this data."""
    keep = ("base", "method", "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "lora_r",
            "lora_alpha", "target_modules", "seed", "max_length")
    old = existing.config or {}
    want = {**cfg.__dict__, "learning_rate": cfg.lr_for(data_kind), "epochs": cfg.epochs_for(data_kind)}
    return existing.dataset_hash == data_hash and all(
        k not in old or old[k] == want[k] or (k == "max_length" and cfg.max_length == 0) for k in keep)


def run_grid(store, cells: list[Cell], *, train_fn=None, log=print) -> list[str]:
    """Train what is missing; returns the adapter names, in cell order."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.train.runs import train

    train_fn = train_fn or (lambda cfg, resume: train(store, cfg, resume=resume))
    adapters = AdapterRegistry(store)
    catalog = DatasetCatalog(store)
    names = []
    for k, cell in enumerate(cells, 1):
        cfg = cell.config
        existing = adapters.find(cell.name)
        where = f"[{k}/{len(cells)}] {cell.name}"
        if existing is not None:
            ds = catalog.resolve(cfg.data)
            if not _same(existing, cfg, ds.content_hash, ds.kind):
                raise ConflictError(f"adapter '{cell.name}' exists but was trained with other settings or data",
                                    field="--prefix", fix=f"remove it (`modelmill adapters remove {cell.name}`) "
                                    "or give the grid another --prefix")
            log(f"{where}: trained already, skipped")
        else:
            resume = (store.runs_dir / cell.name / "checkpoints").is_dir() and any(
                (store.runs_dir / cell.name / "checkpoints").iterdir())
            log(f"{where}: {'continuing' if resume else 'training'} ({cell.method} on {cell.data}, base {cell.base})")
            train_fn(cfg, resume)
        names.append(cell.name)
    return names
