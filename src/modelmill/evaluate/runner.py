"""Score candidates on a task: batched, resumable, every result stored with its lineage.

    from modelmill.evaluate.runner import evaluate
    rows = evaluate(store, load_task("drugs.yaml"), parse_candidates(store, "smollm2-135m-instruct,drugs-lora"))

Each (task, data, candidate) gets one row in ``eval_results`` and a folder ``evals/<key>/`` whose
``items.jsonl`` grows a chunk at a time (written, flushed and synced before the row counts it).
An interrupted run -- Ctrl-C, a crash, a remote endpoint that stops answering -- keeps what it
scored; the same command continues from there. A finished result is reused, not scored again,
unless ``rerun``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from modelmill.errors import ConflictError, ModelmillError
from modelmill.evaluate.candidates import Candidate
from modelmill.evaluate.tasks import TaskData, TaskSpec, digest, load_items
from modelmill.store import Store
from modelmill.store.tables import EvalResult


class EvalInterrupted(ModelmillError):
    """Scoring stopped part-way; what was scored is kept and the same command continues it."""

    exit_code = 5


def result_key(spec: TaskSpec, data: TaskData, cand: Candidate) -> str:
    """Same task name, settings, data and candidate: the same key. The training set counts only
    for candidates that read it (few-shot, classical); for the others, the labels it adds do."""
    uses_train = cand.kind in ("few-shot", "classical")
    data_hash = data.dataset_hash if uses_train else data.test_hash
    key = {"task": spec.scoring_key(uses_train), "data": data_hash, "labels": data.labels,
           "n": len(data.items), "candidate": cand.key()}
    if spec.task_kind.version != 1:  # the kind scores differently now: results of its older scoring are not reused
        key["kind_version"] = spec.task_kind.version
    return digest(key)[:32]


def evaluate(store: Store, spec: TaskSpec, candidates: list[Candidate], *, rerun: bool = False,
             progress: bool = True, chunk: int = 0, log=None) -> list[EvalResult]:
    """One finished ``EvalResult`` per candidate, in order. Raises ``EvalInterrupted`` (after saving
    every scored item) when a candidate fails part-way; earlier candidates' results are stored."""
    data = load_items(store, spec)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for c in candidates:  # a candidate that cannot do the task is refused before anything runs
        spec.task_kind.check_candidate(c, spec, data)
    return [_one(store, spec, data, c, rerun=rerun, progress=progress, chunk=chunk, log=log) for c in candidates]


def _one(store: Store, spec: TaskSpec, data: TaskData, cand: Candidate, *, rerun: bool, progress: bool,
         chunk: int, log) -> EvalResult:
    key = result_key(spec, data, cand)
    with store.lock(f"eval-{key}", wait=False) as held:
        if not held:
            raise ConflictError(f"{cand.name} on task '{spec.name}' is being scored by another process",
                                field="--models", fix="wait for it to finish; its result is then reused")
        row = _row(store, key)
        if row is not None and row.status == "done" and not rerun:
            log(f"{cand.name}: reusing the result of {row.finished_at:%Y-%m-%d %H:%M} (--rerun to score again)")
            return row
        folder = store.evals_dir / key
        if row is not None and row.status == "done":
            # --rerun: score into a side folder; the stored result stays until the new one is whole.
            side = store.evals_dir / f"{key}.rerun"
            return _score(store, row, spec, data, cand, side, progress=progress, chunk=chunk, log=log,
                          replaces=folder)
        if row is None or rerun:
            row = _fresh_row(store, key, spec, data, cand, folder, replace=row)
        return _score(store, row, spec, data, cand, folder, progress=progress, chunk=chunk, log=log)


def _row(store: Store, key: str) -> EvalResult | None:
    from sqlalchemy import select

    with store.session() as s:
        return s.scalars(select(EvalResult).where(EvalResult.key == key)).one_or_none()


def _fresh_row(store, key, spec, data, cand, folder: Path, replace: EvalResult | None) -> EvalResult:
    from modelmill.versions import library_versions

    if folder.exists():
        store.remove_tree(folder)
    folder.mkdir(parents=True)
    kind = spec.task_kind
    lineage = {"task": {**spec.scoring_key(), "name": spec.name, "limit": spec.limit, "source": spec.source},
               "candidate": cand.key(), "candidate_info": cand.info, "dataset": data.dataset, "dataset_hash": data.dataset_hash,
               "test_hash": data.test_hash, "labels": data.labels, "versions": library_versions()}
    with store.session() as s:
        if replace is not None:
            s.delete(s.get(EvalResult, replace.id))
            s.flush()
        row = EvalResult(key=key, task=spec.name, kind=spec.kind, dataset=data.dataset, dataset_hash=data.dataset_hash,
                         candidate=cand.name, candidate_kind=cand.kind, base_model=cand.base, adapter=cand.adapter,
                         status="running", n=len(data.items), n_done=0, primary=kind.primary, metrics={},
                         lineage=lineage, parameters=cand.parameters, seconds=0.0, path=str(folder))
        s.add(row)
        s.flush()
        s.refresh(row)
        s.expunge(row)
    return row


def read_items(folder: str | Path) -> list[dict]:
    """The scored items kept so far (a line cut by a crash mid-write is ignored)."""
    path = Path(folder) / "items.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _cut_partial_line(path: Path) -> None:
    """Drop a last line that a crash cut mid-write, so that appending starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _score(store, row: EvalResult, spec: TaskSpec, data: TaskData, cand: Candidate, folder: Path, *,
           progress: bool, chunk: int, log, replaces: Path | None = None) -> EvalResult:
    """Score what ``folder`` lacks. With ``replaces`` (a rerun of a finished result), ``row`` and
    its folder are left as they are until every item is scored again, then swapped."""
    kind = spec.task_kind
    folder.mkdir(parents=True, exist_ok=True)
    _cut_partial_line(folder / "items.jsonl")
    done = {r["i"]: r for r in read_items(folder)}
    todo = [i for i in range(len(data.items)) if i not in done]
    if done and todo:
        log(f"{cand.name}: continuing, {len(done)} of {len(data.items)} items already scored")
    # Chunks big enough to batch well, small enough that an interruption loses little.
    size = chunk or max(spec.batch_size * 2, 16)
    seconds = row.seconds if replaces is None else 0.0
    update = (lambda **kw: None) if replaces is not None else (lambda **kw: _update(store, row.id, **kw))
    error = None
    try:
        if todo:
            cand.open()
        with open(folder / "items.jsonl", "a", encoding="utf-8") as f:
            for start in range(0, len(todo), size):
                idx = todo[start:start + size]
                t = time.perf_counter()
                results = kind.score(cand, [data.items[i] for i in idx], spec, data, progress=progress)
                seconds += time.perf_counter() - t
                failed = [r["error"] for r in results if "error" in r]
                for i, r in zip(idx, results):
                    if "error" not in r:
                        # the input as shown, so that reports never pair answers with other data
                        r = {"i": i, **r, "input": kind.show(data.items[i])[:4000]}
                        done[i] = r
                        f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
                update(n_done=len(done), seconds=seconds)
                if failed:
                    error = failed[0]
                    break
    except KeyboardInterrupt:
        update(status="failed", error="interrupted", n_done=len(done), seconds=seconds)
        kept = " (kept; the stored result is unchanged)" if replaces is not None else " (kept)"
        raise EvalInterrupted(f"scoring {cand.name} on '{spec.name}' was interrupted after {len(done)} of "
                              f"{len(data.items)} items{kept}", fix="run the same command again to continue")
    except ModelmillError as e:
        error = str(e)
    finally:
        cand.close()
    if error is not None:
        update(status="failed", error=error, n_done=len(done), seconds=seconds)
        raise EvalInterrupted(f"scoring {cand.name} on '{spec.name}' stopped after {len(done)} of {len(data.items)} "
                              f"items (kept): {error}", fix="fix the cause (e.g. the endpoint), then run the same "
                              "command again to continue")
    results = [done[i] for i in range(len(data.items))]
    metrics = kind.metrics(results, spec, data)
    score = metrics.get(kind.primary)
    lineage = {**row.lineage, "candidate": cand.key()}  # now with what loading learnt (e.g. the dtype used)
    if replaces is not None:
        if replaces.exists():
            store.remove_tree(replaces)
        folder.rename(replaces)
    return _update(store, row.id, status="done", metrics=_finite(metrics), n_done=len(done), seconds=seconds,
                   score=score if isinstance(score, (int, float)) and math.isfinite(score) else None, error=None,
                   lineage=lineage, finished_at=datetime.now(timezone.utc))


def _finite(m):
    if isinstance(m, dict):
        return {k: _finite(v) for k, v in m.items()}
    if isinstance(m, list):
        return [_finite(v) for v in m]
    if isinstance(m, float) and not math.isfinite(m):
        return None
    return m


def _update(store: Store, row_id: int, **values) -> EvalResult:
    with store.session() as s:
        row = s.get(EvalResult, row_id)
        for k, v in values.items():
            setattr(row, k, v)
        s.flush()
        s.refresh(row)
        s.expunge(row)
        return row
