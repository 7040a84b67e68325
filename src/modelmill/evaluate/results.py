"""Stored results: the leaderboard, scorecards, report data and the forgetting check.

    modelmill leaderboard --task drugs
    modelmill scorecard --config scorecard.yaml
    modelmill report --out report.html
    modelmill forgetting drugs-lora --task mmlu.yaml

A scorecard groups tasks into named dimensions, each task's headline metric (0..1) weighted
within its dimension, and the dimensions weighted into an overall score::

    dimensions:
      knowledge: [mmlu]
      business: {drugs: 2, tickets: 1}      # task: weight
    weights: {knowledge: 1, business: 2}    # optional; default 1 each
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelmill.errors import InputError, NotFoundError
from modelmill.store import Store
from modelmill.store.tables import EvalResult


def latest(store: Store, task: str | None = None, *, status: str = "done") -> list[EvalResult]:
    """The newest result per (task, candidate), best first within each task.

    Not a ranking: a candidate's newest result may be on other data (another dataset version,
    a ``--limit``) than the others'. Rank with ``leaderboard``, which keeps such results apart."""
    out = list(_newest(_finished(store, task, status), lambda r: (r.task, r.candidate)).values())
    out.sort(key=lambda r: (r.task, -(r.score if r.score is not None else float("-inf")), r.candidate))
    if task and not out:
        raise _no_results(task)
    return out


@dataclass
class Board:
    """One leaderboard: a task's results on the same data (the same dataset version and the same
    number of items), each candidate's newest, best first. Only these scores compare."""

    task: str
    kind: str
    primary: str
    dataset: str  # NAME@VERSION or the file path
    data_hash: str  # the test set's content hash (for a file path, its version)
    n: int  # items scored
    rows: list[EvalResult] = field(default_factory=list)

    @property
    def finished_at(self):
        return max((r.finished_at for r in self.rows if r.finished_at is not None), default=None)


def leaderboard(store: Store, task: str | None = None) -> list[Board]:
    """The leaderboards: one per task and data (dataset version, item count), so that a candidate
    scored with ``--limit 20`` or on an older version is never ranked against results on other
    data. Ordered by task, then the most recently scored data first. What ``modelmill
    leaderboard``, ``GET /api/leaderboard`` and the web page show."""
    newest = _newest(_finished(store, task, "done"), lambda r: (*_data_key(r), r.candidate))
    boards: dict[tuple, Board] = {}
    for r in newest.values():
        k = _data_key(r)
        if k not in boards:
            boards[k] = Board(task=r.task, kind=r.kind, primary=r.primary, dataset=r.dataset, data_hash=k[2], n=r.n)
        boards[k].rows.append(r)
    for b in boards.values():
        b.rows.sort(key=lambda r: (-(r.score if r.score is not None else float("-inf")), r.candidate))
    out = sorted(boards.values(), key=lambda b: b.finished_at.timestamp() if b.finished_at else float("-inf"),
                 reverse=True)
    out.sort(key=lambda b: b.task)  # stable: newest data first within each task
    if task and not out:
        raise _no_results(task)
    return out


def _data_key(r: EvalResult) -> tuple:
    # the test set's own hash where stored (results since it was); else the hash of test + training set
    return (r.task, r.dataset, (r.lineage or {}).get("test_hash") or r.dataset_hash, r.n)


def _finished(store: Store, task: str | None, status: str) -> list[EvalResult]:
    from sqlalchemy import select

    with store.session() as s:
        q = select(EvalResult).where(EvalResult.status == status)
        if task:
            q = q.where(EvalResult.task == task)
        rows = list(s.scalars(q.order_by(EvalResult.finished_at, EvalResult.id)))
        for r in rows:
            s.expunge(r)
    return rows


def _newest(rows: list[EvalResult], key) -> dict:
    newest: dict = {}
    for r in rows:  # oldest first: the newest wins
        newest[key(r)] = r
    return newest


def _no_results(task: str) -> NotFoundError:
    return NotFoundError(f"no finished results for task '{task}'", field="--task",
                         fix="score some models first: modelmill eval --task ... --models ...")


def report_data(store: Store, task_names: list[str] | None = None) -> list[dict]:
    """What ``evaluate.report.build_report`` takes: one dict per result of ``leaderboard``."""
    from modelmill.evaluate.runner import read_items

    rows = []
    for name in task_names or [None]:  # per task and data: results on other data are not ranked together
        rows += [(b, r) for b in leaderboard(store, name) for r in b.rows]
    out = []
    for b, r in rows:
        items = [{"i": it["i"], "input": it.get("input", ""), "gold": _text(it.get("gold")),
                  "pred": None if it.get("pred") is None else _text(it["pred"]), "correct": it.get("correct")}
                 for it in read_items(r.path)]
        out.append({"task": r.task, "kind": r.kind, "candidate": r.candidate, "candidate_kind": r.candidate_kind,
                    "primary": r.primary, "metrics": r.metrics, "n": r.n_done, "parameters": r.parameters,
                    "latency_ms": 1000 * r.seconds / r.n_done if r.n_done else None, "seconds": r.seconds,
                    "dataset": r.dataset, "data_hash": b.data_hash,
                    "created_at": r.finished_at.isoformat() if r.finished_at else None,
                    "items": items})
    return out


def _text(v) -> str:
    import json

    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


# ---- scorecards -------------------------------------------------------------------------------

def load_scorecard(path: str | Path) -> dict:
    from modelmill.config import read_yaml_mapping

    path = Path(path)
    d = read_yaml_mapping(path, "--config", "dimensions and weights")
    if not isinstance(d, dict) or not isinstance(d.get("dimensions"), dict) or not d["dimensions"]:
        raise InputError("expected `dimensions:` mapping names to task lists", file=str(path), field="dimensions",
                         fix="e.g. dimensions: {knowledge: [mmlu], business: {drugs: 2}}")
    unknown = set(d) - {"dimensions", "weights"}
    if unknown:
        raise InputError(f"unknown key(s): {', '.join(sorted(unknown))}", file=str(path), fix="use dimensions and weights")
    dims = {}
    for name, tasks_ in d["dimensions"].items():
        if isinstance(tasks_, list):
            tasks_ = {str(t): 1.0 for t in tasks_}
        if not isinstance(tasks_, dict) or not tasks_ or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in tasks_.values()):
            raise InputError("expected a list of tasks or {task: positive weight}", file=str(path),
                             field=f"dimensions.{name}", fix="e.g. business: {drugs: 2, tickets: 1}")
        dims[str(name)] = {str(t): float(w) for t, w in tasks_.items()}
    weights = d.get("weights") or {}
    if not isinstance(weights, dict) or set(weights) - set(dims):
        raise InputError("weights must name dimensions", file=str(path), field="weights",
                         fix="one weight per dimension, e.g. weights: {business: 2}")
    return {"dimensions": dims, "weights": {k: float(weights.get(k, 1.0)) for k in dims}}


def scorecard(store: Store, card: dict) -> list[dict]:
    """Per candidate: each dimension's weighted score (None when it has no result for any of its
    tasks), the overall score over the dimensions it has, and how many dimensions that was.

    A task's scores come from its newest board (``leaderboard``: the data scored most recently),
    so the candidates ranked here were scored on the same data per task; a candidate scored only
    on other data (an older dataset version, a ``--limit``) has no score for that task."""
    tasks_ = {t for dim in card["dimensions"].values() for t in dim}
    best: dict[tuple[str, str], float] = {}
    newest_board: set[str] = set()
    for b in leaderboard(store):  # by task, the newest data first
        if b.task not in tasks_ or b.task in newest_board:
            continue
        newest_board.add(b.task)
        for r in b.rows:
            if r.score is not None:
                best[(r.task, r.candidate)] = float(r.score)
    candidates = sorted({c for _, c in best})
    rows = []
    for c in candidates:
        dims = {}
        for d, tasks_ in card["dimensions"].items():
            have = [(best[(t, c)], w) for t, w in tasks_.items() if (t, c) in best]
            dims[d] = sum(s * w for s, w in have) / sum(w for _, w in have) if have else None
        have = [(v, card["weights"][d]) for d, v in dims.items() if v is not None]
        if not have:
            continue
        overall = sum(v * w for v, w in have) / sum(w for _, w in have)
        rows.append({"candidate": c, "dimensions": dims, "overall": overall, "complete": len(have) == len(dims)})
    rows.sort(key=lambda r: (not r["complete"], -r["overall"]))
    return rows


# ---- forgetting ---------------------------------------------------------------------------------

def forgetting(store: Store, adapter: str, spec, *, progress: bool = True, log=None) -> dict:
    """Score an adapter and its base on a general task (e.g. MMLU); the delta is what fine-tuning
    cost (negative) or gained there. Stored in the adapter's metrics as ``forgetting``."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.evaluate.candidates import LocalModel
    from modelmill.evaluate.runner import evaluate
    from modelmill.store.tables import Adapter

    row = AdapterRegistry(store).get(adapter)
    base, tuned = evaluate(store, spec, [LocalModel(store, row.base_model), LocalModel(store, row.name)],
                           progress=progress, log=log)
    result = {"task": spec.name, "metric": base.primary, "base": base.score, "adapter": tuned.score,
              "delta": (tuned.score or 0.0) - (base.score or 0.0), "n": tuned.n_done}
    with store.session() as s:
        a = s.get(Adapter, row.id)
        a.metrics = {**(a.metrics or {}), "forgetting": {**(a.metrics or {}).get("forgetting", {}), spec.name: result}}
    return result
