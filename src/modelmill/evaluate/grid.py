"""A grid of fine-tunes: every base x dataset x method trained, scored on one task, and ranked.

    modelmill grid --bases smollm2-135m-instruct,qwen3-0.6b --data tickets-a,tickets-b \\
        --methods lora-r8,lora-r32,full --task tickets.yaml
    modelmill grid --bases smollm2-135m-instruct --data tickets --task tickets.yaml \\
        --methods lora,lora-then-dpo,cpt-then-lora --step-data cpt=support-docs

A method is one training method (``lora``/``sft``, ``lora-rN``, ``full``, ``dpo``, ``orpo``,
``kto``, ``cpt``) or a chain of them joined by ``-then-``, each step trained ``--from`` the one
before. A step trains on the cell's dataset, or on the dataset ``--step-data METHOD=DATASET``
names for its method (``cpt=docs``: raw text; ``dpo=votes``: preference pairs). A ``dpo`` or
``orpo`` step after another step without its own data learns from that step's **mistakes**: the
adapter is scored on the cell's training data with the grid's task, and each item it got wrong
becomes a pair (the gold answer chosen, its own rejected), so ``lora-then-dpo`` is the whole
evaluate -> correct -> retrain loop in one cell.

Each step trains an adapter named ``<data>-<base>-<method so far>`` (``--prefix`` puts a word in
front), so ``lora`` and ``lora-then-dpo`` share their first step. Running the same grid again
skips steps whose adapter exists with the same settings, continues a step whose run was
interrupted, and reuses stored scores, so only what is missing is done. Every base and dataset
is checked before the first cell trains. ``run`` is what the command and the ``grid`` job call:
it trains, scores and returns the board with ``summary`` naming the winner (the best cell, the
best per base beside that base's zero-shot score, and the best baseline).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.names import check_name
from modelmill.train.config import TrainConfig

_SFT = re.compile(r"^(lora|sft|full)(?:-r(\d+))?$")
THEN = "-then-"
_FIX = "use lora, lora-rN (e.g. lora-r8), full, dpo, orpo, kto or cpt, or steps joined by -then- (cpt-then-lora)"


@dataclass
class Step:
    """One training run of a cell: its method token, its config and where its data comes from
    (``cell``: the cell's dataset; ``step-data``: the dataset --step-data names; ``mistakes``:
    pairs made from the previous step's mistakes, named in ``config.data``)."""

    method: str
    config: TrainConfig
    source: str

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Cell:
    base: str
    data: str
    method: str
    config: TrainConfig  # the last step's
    steps: list[Step] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name


def parse_method(method: str) -> list[dict]:
    """A method token -> the settings of each of its steps: ``lora`` (rank 16), ``lora-rN`` (rank
    N, alpha 2N), ``full``, any other registered method by name, or steps joined by ``-then-``."""
    from modelmill.train.methods import REGISTRY

    steps = []
    for part in method.strip().split(THEN):
        m = _SFT.match(part)
        if m and not (m.group(1) == "full" and m.group(2)):
            if m.group(1) == "full":
                steps.append({"method": "full"})
            elif m.group(2):
                r = int(m.group(2))
                if not 1 <= r <= 1024:
                    raise InputError(f"rank {r} out of range", field="--methods", fix="use a rank from 1 to 1024")
                steps.append({"method": "lora", "lora_r": r, "lora_alpha": 2 * r})
            else:
                steps.append({"method": "lora"})
        elif part in REGISTRY and part not in ("lora", "full"):
            steps.append({"method": part})
        else:
            raise InputError(f"unknown method '{method}'" + (f" (step '{part}')" if THEN in method else ""),
                             field="--methods", fix=_FIX)
    return steps


def parse_step_data(text: str | dict | None) -> dict[str, str]:
    """``cpt=docs,dpo=votes`` (or a mapping) -> {method: dataset}: the data of the steps of that method."""
    from modelmill.train.methods import REGISTRY

    if not text:
        return {}
    pairs = text.items() if isinstance(text, dict) else (
        (p.partition("=")[0], p.partition("=")[2]) for p in str(text).split(",") if p.strip())
    out = {}
    for method, ds in pairs:
        method, ds = str(method).strip(), str(ds).strip()
        if method not in REGISTRY or not ds:
            raise InputError(f"'{method}={ds}' is not METHOD=DATASET", field="--step-data",
                             fix="e.g. --step-data cpt=support-docs,dpo=votes (methods: " + ", ".join(REGISTRY) + ")")
        out[method] = ds
    return out


def _step_config(template: TrainConfig, settings: dict, **values) -> TrainConfig:
    """The config of a step's method, with every setting of ``template`` that method also has."""
    from modelmill.train.methods import config_class

    cls = config_class(settings["method"], field="--methods")
    own = {f.name for f in dataclasses.fields(cls)}
    shared = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
              if f.name in own and f.name not in ("method", "base", "data", "name", "from_adapter")}
    return cls(**{**shared, **settings, **values})


def plan(bases: list[str], datasets: list[str], methods: list[str], template: TrainConfig, prefix: str = "",
         step_data: dict[str, str] | None = None) -> list[Cell]:
    for flag, xs in (("--bases", bases), ("--data", datasets), ("--methods", methods)):
        if not xs:
            raise InputError("nothing given", field=flag, fix=f"e.g. {flag} a,b")
    step_data = step_data or {}
    cells = []
    for d in datasets:
        for b in bases:
            for m in methods:
                parts = m.strip().split(THEN)
                steps: list[Step] = []
                for i, settings in enumerate(parse_method(m)):
                    token = THEN.join(parts[:i + 1])
                    name = check_name(f"{prefix + '-' if prefix else ''}{d.split('@')[0]}-{b}-{token}"[:128], "--prefix")
                    method = settings["method"]
                    if method in step_data:
                        source, data = "step-data", step_data[method]
                    elif method in ("dpo", "orpo") and steps:
                        source, data = "mistakes", f"{steps[-1].name}-mistakes"
                    else:
                        source, data = "cell", d
                    extra = {"from_adapter": steps[-1].name} if steps else {}
                    cfg = _step_config(template, settings, base=b, data=data, name=name, **extra)
                    steps.append(Step(method=token, config=cfg, source=source))
                cells.append(Cell(base=b, data=d, method=m, config=steps[-1].config, steps=steps))
    return cells


def _same(existing, cfg: TrainConfig, data_hash: str, data_kind: str) -> bool:
    """Whether a registered adapter was trained with these settings on this data."""
    keep = ("base", "method", "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "lora_r",
            "lora_alpha", "target_modules", "seed", "max_length", "from_adapter", "beta", "loss_type",
            "block_size", "general_data", "general_ratio", "desirable_weight", "undesirable_weight")
    old = existing.config or {}
    want = {**cfg.__dict__, "learning_rate": cfg.lr_for(data_kind), "epochs": cfg.epochs_for(data_kind)}
    # trained --from an adapter: the LoRA shape is that adapter's (train records it), not the template's
    shape = ("lora_r", "lora_alpha", "target_modules") if cfg.from_adapter else ()
    return existing.dataset_hash == data_hash and all(
        k not in old or k not in want or old[k] == want[k] or (k == "max_length" and cfg.max_length == 0)
        for k in keep if k not in shape)


def check(store, cells: list[Cell], spec=None) -> None:
    """Every base and dataset the cells name exists and can be trained by the step that uses it:
    InputError/NotFoundError naming the flag (``--bases``, ``--data``, ``--step-data``, ``--methods``)
    before anything is trained. A step that learns from mistakes needs the task (``spec``) to
    score the previous step on the cell's data."""
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
    seen = set()
    for c in cells:
        for st in c.steps:
            method = st.config.method
            if st.source == "mistakes":
                if spec is not None and spec.kind not in MISTAKE_KINDS:
                    raise InputError(f"step '{st.method}' of '{c.method}' learns from the mistakes of the step "
                                     f"before, which a {spec.kind} task cannot tell", field="--step-data",
                                     fix=f"give its pairs: --step-data {method}=DATASET (or score with a "
                                         + "/".join(MISTAKE_KINDS) + " task)")
                if c.steps[0].config.method == "full":
                    raise InputError(f"'{c.method}' trains {method} from a full fine-tune", field="--methods",
                                     fix="chain from a LoRA step (lora-then-" + method + ")")
                continue
            key = (st.config.data, method, st.source)
            if key in seen:
                continue
            seen.add(key)
            try:
                trainable_dataset(store, st.config.data, field="--data" if st.source == "cell" else "--step-data",
                                  method=method)
            except InputError as e:
                if st.source == "cell" and method in ("cpt", "dpo", "orpo", "kto"):
                    e.fix = f"give the {method} step its data: --step-data {method}=DATASET ({e.fix})"
                    e.args = (str(e),)
                raise


MISTAKE_KINDS = ("classification", "extraction", "multiple_choice")


def _mistake_pairs(store, spec, cell: Cell, step: Step, prev: Step, log, where: str) -> bool:
    """Score ``prev`` on the cell's training data with the grid's task and save what it got wrong
    as the preference pairs ``step`` trains on; False when it made no mistake to learn from."""
    from modelmill.evaluate.candidates import parse_candidates
    from modelmill.evaluate.mistakes import mistakes
    from modelmill.evaluate.runner import evaluate

    on_train = replace(spec, name=f"{prev.name}-train"[:128], data=cell.data, limit=None, train=None, source=None)
    model = f"{cell.base}:{prev.name}"
    evaluate(store, on_train, parse_candidates(store, [model]), progress=False)
    try:
        report = mistakes(store, task=on_train.name, model=model, name=step.config.data)
    except InputError as e:
        if "made no mistake" not in str(e):
            raise
        log(f"{where}: {prev.name} made no mistake on {cell.data} to learn from; the cell is left out")
        return False
    log(f"{where}: {report.pairs} pairs from {report.wrong} mistakes of {prev.name} on "
        f"{report.items} training items ({report.dataset.ref})")
    return True


def run_grid(store, cells: list[Cell], *, train_fn=None, log=print, spec=None) -> list[str]:
    """Train what is missing, step by step; returns the names of the cells' adapters, in cell order
    (a cell whose mistakes step found nothing to learn from is left out)."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.train.runs import train

    check(store, cells, spec)
    train_fn = train_fn or (lambda cfg, resume: train(store, cfg, resume=resume))
    adapters = AdapterRegistry(store)
    catalog = DatasetCatalog(store)
    names = []
    done: set[str] = set()  # steps trained or checked in this run (cells share their first steps)
    for k, cell in enumerate(cells, 1):
        ok = True
        for i, step in enumerate(cell.steps):
            cfg = step.config
            where = f"[{k}/{len(cells)}] {step.name}"
            if step.name in done:
                continue
            existing = adapters.find(step.name)
            if step.source == "mistakes" and existing is None:
                if spec is None:
                    raise InputError(f"step '{step.method}' learns from mistakes, which needs the grid's task",
                                     field="--task")
                if not _mistake_pairs(store, spec, cell, step, cell.steps[i - 1], log, where):
                    ok = False
                    break
            if existing is not None:
                ds = catalog.resolve(cfg.data)
                if not _same(existing, cfg, ds.content_hash, ds.kind):
                    raise ConflictError(f"adapter '{step.name}' exists but was trained with other settings or data",
                                        field="--prefix", fix=f"remove it (`modelmill adapters remove {step.name}`) "
                                        "or give the grid another --prefix")
                log(f"{where}: trained already, skipped")
            else:
                run_dir = store.runs_dir / step.name / "checkpoints"
                resume = run_dir.is_dir() and any(run_dir.iterdir())
                what = f"{cfg.method} on {cfg.data}" + (f" from {cfg.from_adapter}" if cfg.from_adapter else "")
                log(f"{where}: {'continuing' if resume else 'training'} ({what}, base {cell.base})")
                train_fn(cfg, resume)
            done.add(step.name)
        if ok:
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


def cell_groups(cells: list[Cell]) -> list[list[Cell]]:
    """The cells in groups that can train side by side: cells sharing a step (``lora`` and
    ``lora-then-dpo`` share their first) stay in one group, which trains it once."""
    groups: list[list[Cell]] = []
    steps: list[set[str]] = []
    for cell in cells:
        mine = {s.name for s in cell.steps}
        hit = [i for i, names in enumerate(steps) if names & mine]
        merged, names = [cell], set(mine)
        for i in reversed(hit):
            merged = groups.pop(i) + merged
            names |= steps.pop(i)
        groups.append(merged)
        steps.append(names)
    return groups


def run(store, spec, cells: list[Cell], *, baselines: list[str] = (), train_fn=None, log=print,
        progress: bool = True, fan_out=None) -> GridRun:
    """Train what is missing, score every cell (and the baselines) on ``spec``, and rank them.
    The task's data, the baselines and what each can do are checked before anything trains.

    ``fan_out(groups)``, when given, trains and scores the ``cell_groups`` side by side (the grid job
    runs each as a job of its own, on as many workers or Ray nodes as are free) and returns when
    they are all done; the board is then read from the stored scores."""
    from modelmill.evaluate.candidates import baselines as add_baselines, parse_candidates
    from modelmill.evaluate.runner import evaluate
    from modelmill.evaluate.tasks import load_items

    kw = {"few_shot": spec.few_shot, "few_shot_select": spec.few_shot_select}
    data = load_items(store, spec)
    for c in add_baselines(store, [], list(baselines), kind=spec.kind, **kw):  # the classical ones
        spec.task_kind.check_candidate(c, spec, data)
    groups = cell_groups(cells)
    if fan_out is not None and len(groups) > 1:
        from modelmill.adapters import AdapterRegistry

        check(store, cells, spec)
        fan_out(groups)
        reg = AdapterRegistry(store)
        names = [c.name for c in cells if reg.find(c.name) is not None]  # a mistakes cell may have had none
    else:
        names = run_grid(store, cells, train_fn=train_fn, log=log, spec=spec)
    cands = parse_candidates(store, names, **kw)
    if baselines:
        cands = add_baselines(store, cands, list(baselines), kind=spec.kind, **kw)
    rows = evaluate(store, spec, cands, progress=progress)
    return GridRun(adapters=names, rows=rows, summary=summarize(cells, rows))
