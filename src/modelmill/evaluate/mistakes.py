"""A model's mistakes as preference pairs: evaluate -> correct -> retrain is one loop.

    modelmill eval --task reviews-train.yaml --models tiny:reviews-lora     # score it (on its training set)
    modelmill data mistakes --task reviews-train --model tiny:reviews-lora --name reviews-fixes
    modelmill train --method dpo --data reviews-fixes --from reviews-lora

Each item the model got wrong in its stored evaluation becomes ``{"prompt", "chosen", "rejected"}``:
the conversation it was scored on, the gold answer chosen and its own answer rejected. The pairs
are saved as a preference dataset whose origin names the evaluation.

Generation and judged tasks have no right or wrong per item, only a score (ROUGE-L; the judge's
grade scaled to 0-1): there ``below`` (``--below 0.5``) says which items count as mistakes.

Pairs from mistakes alone push the model only away from what it got wrong (on a skewed set: away
from the majority class), and nothing holds its right answers in place. ``right`` (``--right 1``)
adds that many pairs per mistake pair from items it got right, the gold answer chosen and the
label it ranked next rejected, taking the right answers it was least sure of first (the smallest
margin between the two; classification scored by likelihood, whose per-label scores are stored).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InputError, NotFoundError


@dataclass
class MistakesReport:
    dataset: object  # the DatasetVersion saved
    created: bool
    items: int  # items in the evaluation
    wrong: int  # items it got wrong
    pairs: int  # pairs saved (a wrong item without an answer of its own to reject is left out)
    anchors: int = 0  # of them, pairs from right answers (``right``)


def find_result(store, task: str, model: str):
    """The newest finished evaluation of ``model`` (a candidate name, e.g. tiny:reviews-lora) on ``task``."""
    from modelmill.evaluate.results import latest

    rows = [r for r in latest(store, task) if model in (r.candidate, r.adapter, f"{r.base_model}:{r.adapter}")]
    if not rows:
        names = ", ".join(sorted(r.candidate for r in latest(store, task)))
        raise NotFoundError(f"no finished evaluation of '{model}' on task '{task}'", field="--model",
                            fix=f"scored on it: {names}; or score it first with `modelmill eval`")
    return rows[0]


def mistakes(store, *, task: str, model: str, name: str, below: float | None = None,
             right: float = 0.0) -> MistakesReport:
    """Save the items ``model`` got wrong in its evaluation on ``task`` as preference pairs named ``name``.
    ``below``: an item whose per-item score (0-1) is under it counts as wrong; needed where the
    task scores items without a right or wrong (generation, judge), optional elsewhere.
    ``right``: also this many pairs per mistake pair from items it got right (see the module doc)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.formats import Where, get_format
    from modelmill.evaluate.tasks import TaskSpec, load_items
    from modelmill.names import check_name

    check_name(name, "--name")
    if below is not None and not 0.0 < below <= 1.0:
        raise InputError(f"--below {below} is outside (0, 1]", field="--below",
                         fix="a per-item score threshold, e.g. --below 0.5")
    if not 0.0 <= right <= 10.0:
        raise InputError(f"--right {right} is outside 0-10", field="--right",
                         fix="pairs from right answers per mistake pair, e.g. --right 1")
    if right and below is not None:
        raise InputError("--right pairs right answers with the label ranked next, which a task scored with --below "
                         "(no right or wrong, no per-label scores) does not have", field="--right",
                         fix="leave --right out here; it works on classification scored by likelihood")
    row = find_result(store, task, model)
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    spec = TaskSpec(**{k: v for k, v in row.lineage["task"].items() if k in known})
    data = load_items(store, spec)
    if data.dataset_hash != row.dataset_hash:
        raise InputError(f"the data of task '{task}' changed since '{model}' was scored on it", field="--task",
                         fix="score the model again (`modelmill eval`), then make the pairs")
    kind = spec.task_kind
    results = [json.loads(line) for line in Path(row.path, "items.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    fmt = get_format("preference")
    lo, hi = spec.judge.get("scale", [1, 5]) if spec.judge else (0, 1)
    unscored = [r for r in results if "error" not in r and _item_score(r, lo, hi) is None and r.get("correct") is None]
    if unscored:
        raise InputError(f"task '{task}' ({spec.kind}) records no per-item score to tell a mistake by",
                         field="--task", fix="use a classification, extraction or generation task")
    if below is None and any(r.get("correct") is None and "error" not in r for r in results):
        raise InputError(f"task '{task}' ({spec.kind}) scores items without a right or wrong answer",
                         field="--below", fix="say which scores count as mistakes, e.g. --below 0.5 "
                         "(ROUGE-L, or the judge's grade scaled to 0-1)")
    records, wrong = [], 0
    for r in results:
        if "error" in r:
            continue
        if below is not None:
            score = _item_score(r, lo, hi)
            if score is not None and score >= below:
                continue
        elif r.get("correct", True):
            continue
        wrong += 1
        item = data.items[r["i"]]
        chosen = kind.answer(item, spec, data)
        rejected = _own_answer(r)
        if not rejected or rejected.strip() == str(chosen).strip():
            continue
        raw = {"prompt": kind.conversation(item, spec, data), "chosen": str(chosen), "rejected": rejected,
               "task": task, "model": row.candidate, "item": r["i"]}
        records.append(fmt.normalize(raw, Where(f"evaluation {row.id}", r["i"] + 1, "record")))
    if not records:
        raise InputError(f"'{model}' made no mistake on task '{task}' that can be turned into a pair "
                         f"({wrong} wrong of {len(results)})", field="--model",
                         fix="score it on harder or more data (its training set, say)")
    origin = {"op": "mistakes", "task": task, "model": row.candidate, "evaluation": row.id,
              "items": len(results), "wrong": wrong}
    kept = []
    if right:
        scored = [(r, ru) for r in results if "error" not in r and r.get("correct") is True
                  and (ru := _runner_up(r)) is not None]
        if not scored:
            raise InputError(f"task '{task}' keeps no per-label scores of '{model}''s right answers to pair them with",
                             field="--right", fix="--right works on classification scored by likelihood "
                             "(`scoring: loglik`); leave it out here")
        scored.sort(key=lambda x: (x[1][1], x[0]["i"]))  # the least sure first
        kept = scored[:round(right * len(records))]
        for r, (label, _) in kept:
            item = data.items[r["i"]]
            raw = {"prompt": kind.conversation(item, spec, data), "chosen": str(kind.answer(item, spec, data)),
                   "rejected": label, "task": task, "model": row.candidate, "item": r["i"], "right": True}
            records.append(fmt.normalize(raw, Where(f"evaluation {row.id}", r["i"] + 1, "record")))
        origin["right"] = len(kept)
    saved, created = DatasetCatalog(store).save(name, records, "preference", "preference", None, origin)
    return MistakesReport(saved, created, len(results), wrong, len(records), len(kept))


def _runner_up(result: dict) -> tuple[str, float] | None:
    """(the label scored next after the right one, the margin between them) from an item's per-label scores."""
    scores = result.get("scores")
    pred = result.get("pred")
    if not isinstance(scores, dict) or pred not in scores or len(scores) < 2:
        return None
    label = max((k for k in scores if k != pred), key=lambda k: scores[k])
    return label, scores[pred] - scores[label]


def _item_score(result: dict, lo: float, hi: float) -> float | None:
    """One item's score in 0-1: right/wrong as 1/0, else its ROUGE-L, else the judge's grade scaled."""
    if isinstance(result.get("correct"), bool):
        return float(result["correct"])
    if isinstance(result.get("rouge_l"), (int, float)):
        return float(result["rouge_l"])
    g = result.get("grade")
    if isinstance(g, (int, float)) and hi > lo:
        return (g - lo) / (hi - lo)
    return None


def _own_answer(result: dict) -> str | None:
    """What the model answered: its generated text, else (likelihood scoring) the label it chose."""
    out = result.get("output")
    if isinstance(out, str) and out.strip():
        return out
    pred = result.get("pred")
    if isinstance(pred, str):
        return pred
    if pred is not None:
        return json.dumps(pred, ensure_ascii=False)
    return None
