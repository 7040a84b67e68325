"""A grid of fine-tunes: every base x dataset x method trained, scored on one task, and ranked.

    modelmill grid --bases smollm2-135m-instruct,qwen3-0.6b --data tickets-a,tickets-b \\
        --methods lora-r8,lora-r32,full --task tickets.yaml

Each cell trains an adapter named ``<data>-<base>-<method>`` (``--prefix`` puts a word in front).
Running the same grid again skips cells whose adapter exists with the same settings, continues
a cell whose run was interrupted, and reuses stored scores, so only what is missing is done.
Every base and dataset is checked before the first cell trains. ``run`` is what the command and
the ``grid`` job call: it trains, scores and returns the board with ``summary`` naming the winner
(the best cell, the best per base beside that base's zero-shot score, and the best baseline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from modelmill.errors import ConflictError, InputError, NotFoundError
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


def check(store, cells: list[Cell]) -> None:
    """Every base and dataset the cells name exists and can be fine-tuned: InputError/NotFoundError
    naming the flag (``--bases``, ``--data``) before anything is trained."""
    from modelmill.models.registry import ModelRegistry, is_remote
    from modelmill.train.runs import trainable_dataset

    models = ModelRegistry(store)
    for b in dict.fromkeys(c.base for c in cells):
        try:
            row = models.get(b)
        except NotFoundError as e:
            raise NotFoundError(e.message, field="--bases", fix=e.fix) from None
        if is_remote(row):
            raise InputError(f"'{b}' is a remote endpoint ({row.source}): a grid fine-tunes local weights",
                             field="--bases", fix="give local or built-in bases (`modelmill models list`)")
    for d in dict.fromkeys(c.data for c in cells):
        trainable_dataset(store, d, field="--data")


def run_grid(store, cells: list[Cell], *, train_fn=None, log=print) -> list[str]:
    """Train what is missing; returns the adapter names, in cell order."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.train.runs import train

    check(store, cells)
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


def summarize(cells: list[Cell], rows) -> dict:
    """The board read out: the winning cell (the best headline score among the fine-tunes), the best
    cell of each base beside that base's zero-shot score, and the best baseline that is not a
    prompt of a model (TF-IDF, gazetteer, CRF, ...)."""
    by_name = {r.candidate: r for r in rows}
    bases = list(dict.fromkeys(c.base for c in cells))

    def score(r):
        return r.score if r is not None and r.score is not None else None

    cell_rows = []
    for c in cells:
        r = by_name.get(f"{c.base}:{c.name}")
        if score(r) is not None:
            cell_rows.append((c, r))
    per_base = {}
    for b in bases:
        mine = [(c, r) for c, r in cell_rows if c.base == b]
        best = max(mine, key=lambda cr: cr[1].score, default=None)
        zero = by_name.get(b)
        per_base[b] = {"best": best[0].name if best else None, "score": best[1].score if best else None,
                       "zero_shot": score(zero)}
    classical = [r for r in rows if r.candidate_kind == "classical" and score(r) is not None]
    baseline = max(classical, key=lambda r: r.score, default=None)
    win = max(cell_rows, key=lambda cr: cr[1].score, default=None)
    primary = rows[0].primary if rows else None
    return {"metric": primary, "winner": win[0].name if win else None, "winner_base": win[0].base if win else None,
            "score": win[1].score if win else None, "per_base": per_base,
            "baseline": baseline.candidate if baseline else None, "baseline_score": score(baseline)}


def summary_lines(summary: dict) -> list[str]:
    """The summary as lines for a terminal or a job's log."""
    m = summary["metric"]
    if not summary["winner"]:
        return [f"no cell has a {m} score yet"]
    lines = [f"winner: {summary['winner']} (base {summary['winner_base']}), {m} {summary['score']:.3f}"]
    for b, d in summary["per_base"].items():
        zs = "" if d["zero_shot"] is None else f", zero-shot {d['zero_shot']:.3f}"
        got = "not scored" if d["score"] is None else f"best {d['score']:.3f} ({d['best']})"
        lines.append(f"  base {b}: {got}{zs}")
    if summary["baseline"]:
        gap = 100 * (summary["score"] - summary["baseline_score"])
        lines.append(f"  best baseline {summary['baseline']} {summary['baseline_score']:.3f}: the winner is "
                     f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} it")
    return lines


@dataclass
class GridRun:
    """What ``run`` did: the adapters (in cell order), the scored board, and its summary."""

    adapters: list[str]
    rows: list
    summary: dict


def run(store, spec, cells: list[Cell], *, baselines: list[str] = (), train_fn=None, log=print,
        progress: bool = True) -> GridRun:
    """Train what is missing, score every cell (and the baselines) on ``spec``, and rank them.
    The task's data, the baselines and what each can do are checked before anything trains."""
    from modelmill.evaluate.candidates import baselines as add_baselines, parse_candidates
    from modelmill.evaluate.runner import evaluate
    from modelmill.evaluate.tasks import load_items

    kw = {"few_shot": spec.few_shot, "few_shot_select": spec.few_shot_select}
    data = load_items(store, spec)
    for c in add_baselines(store, [], list(baselines), kind=spec.kind, **kw):  # the classical ones
        spec.task_kind.check_candidate(c, spec, data)
    names = run_grid(store, cells, train_fn=train_fn, log=log)
    cands = parse_candidates(store, names, **kw)
    if baselines:
        cands = add_baselines(store, cands, list(baselines), kind=spec.kind, **kw)
    rows = evaluate(store, spec, cands, progress=progress)
    return GridRun(adapters=names, rows=rows, summary=summarize(cells, rows))
