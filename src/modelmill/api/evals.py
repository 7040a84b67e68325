"""Evaluations over HTTP: results, leaderboards, comparisons, reports; playground judgements.

    GET  /api/evaluations?task=drugs           the stored results (every status)
    GET  /api/leaderboard?task=drugs           what `modelmill leaderboard` prints, as JSON: a board per data
    GET  /api/compare?task=drugs&a=X&b=Y       per-class scores of two candidates on one board, where they disagree
    GET  /api/reports?task=drugs               the HTML of `modelmill report`
    POST /api/preferences                      one judgement from the playground: this answer beat that one
    GET  /api/preferences
    POST /api/preferences/export {"name"}      every judgement as a preference dataset (DPO data)
    POST /api/feedback                         a thumb up or down on one answer
    GET  /api/feedback
    POST /api/feedback/export {"name"}         every thumb as a feedback dataset (KTO data)

Scores, per-class metrics and reports come from the library (``evaluate.results``,
``evaluate.report``, ``evaluate.classification``) and judgements from ``data.judgements``,
exactly as the CLI gets them; nothing here
scores anything. Handlers are plain ``def``: the library calls block, so FastAPI runs them in
its thread pool.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from modelmill.api.native import _iso, dataset_json
from modelmill.errors import InputError, NotFoundError
from modelmill.names import _NAME as NAME


class _Route(APIRoute):
    """A body or query parameter of the wrong type answers 400 naming the field, like every other
    bad input (FastAPI's own answer would be a 422 in its own shape)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request):
            try:
                return await handler(request)
            except RequestValidationError as e:
                raise _validation_error(e) from None

        return route


def _validation_error(e: RequestValidationError) -> InputError:
    errors = e.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InputError(f"the request body is not valid JSON ({(first.get('ctx') or {}).get('error', 'decode error')})",
                          field="body", fix="send a JSON object")
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
    msg = str(first.get("msg", "invalid value"))
    pattern = (first.get("ctx") or {}).get("pattern")
    if first.get("type") == "string_pattern_mismatch" and pattern in _PATTERN_MESSAGES:
        msg = _PATTERN_MESSAGES[pattern]
    return InputError(msg, field=".".join(loc) or "body", fix="see the request schema in /openapi.json")


# Text a database of any kind can hold (PostgreSQL refuses NUL), said in the schema so clients
# and fuzzers know it; TEXT also needs something besides white space.
NO_NUL = r"^[^\x00]*$"
TEXT = r"^[^\x00]*[^\x00\s][^\x00]*$"
_PATTERN_MESSAGES = {NO_NUL: "must not contain a NUL character",
                     TEXT: "must have some text (not only spaces) and no NUL character",
                     NAME.pattern: "is not a valid name: use letters, digits, '.', '_' and '-' (up to 128), "
                                   "starting with a letter or digit"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: list[dict] | None = None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape (``modelmill.api.errors``)."""

    error: ErrorDetail


router = APIRouter(prefix="/api", tags=["evaluations"], route_class=_Route,
                   responses={400: {"model": ErrorBody, "description": "Bad input; `param` names the field."},
                              404: {"model": ErrorBody, "description": "Unknown task or candidate."}})


# ---- JSON shapes ------------------------------------------------------------------------------

def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _finite(m):
    """Metrics as JSON can carry them: NaN and infinities become null (the runner stores them so
    already; rows from elsewhere may not)."""
    if isinstance(m, dict):
        return {str(k): _finite(v) for k, v in m.items()}
    if isinstance(m, list):
        return [_finite(v) for v in m]
    return None if isinstance(m, float) and not math.isfinite(m) else m


def result_json(r) -> dict:
    return {"id": r.id, "task": r.task, "kind": r.kind, "dataset": r.dataset, "candidate": r.candidate,
            "candidate_kind": r.candidate_kind, "base_model": r.base_model, "adapter": r.adapter, "status": r.status,
            "n": r.n, "n_done": r.n_done, "primary": r.primary, "score": _num(r.score), "metrics": _finite(r.metrics or {}),
            "parameters": r.parameters, "seconds": _num(r.seconds), "error": r.error,
            "created_at": _iso(r.created_at), "finished_at": _iso(r.finished_at)}


def preference_json(p) -> dict:
    return {"id": p.id, "messages": p.messages, "chosen": p.chosen, "rejected": p.rejected,
            "chosen_model": p.chosen_model, "rejected_model": p.rejected_model, "created_at": _iso(p.created_at)}


def _storable(value: str) -> bool:
    """Text every database and driver takes: no NUL (PostgreSQL), no lone surrogate (no UTF-8 for it)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: str, field: str) -> str:
    if not _storable(value):
        raise InputError("has a NUL character or a lone surrogate", field=field, fix="send plain UTF-8 text")
    return value


# ---- results ------------------------------------------------------------------------------------

def _boards(store, task: str | None):
    """The task's leaderboards (``evaluate.results.leaderboard``): one per data scored on, by task,
    the newest data first. An unknown task is a 404 naming the parameter."""
    from modelmill.evaluate.results import leaderboard

    task = task or None
    try:
        if task is not None and not _storable(task):  # no such task, and not a question for the database
            raise NotFoundError("")
        return leaderboard(store, task)
    except NotFoundError:
        raise NotFoundError(f"no finished results for task '{task}'", field="task",
                            fix="see GET /api/leaderboard for the tasks scored, or score some with `modelmill eval`") from None


def _metric_names(kind: str, rows) -> list[str]:
    from modelmill.evaluate.tasks import get_kind

    try:
        names = list(get_kind(kind).metric_names)
        return [m for m in names if any(m in (r.metrics or {}) for r in rows)] or names
    except InputError:  # a kind from a plugin that is not installed here: the numbers stored
        names: list[str] = []
        for r in rows:
            names += [k for k, v in (r.metrics or {}).items() if _num(v) is not None and k not in names]
        return names


@router.get("/evaluations", summary="Stored evaluation results")
def list_evaluations(request: Request,
                     task: str | None = Query(None, description="Only this task's results."),
                     status: Literal["running", "done", "failed"] | None = Query(None, description="Only results in this state.")):
    """Every stored result (one per task, data and candidate), newest first. An unknown task is a 404."""
    from sqlalchemy import select

    from modelmill.store.tables import EvalResult

    store = request.app.state.store
    task = task or None
    q = select(EvalResult)
    if task is not None:
        q = q.where(EvalResult.task == task)
    with store.session() as s:
        rows = [] if task is not None and not _storable(task) else list(
            s.scalars(q.order_by(EvalResult.created_at.desc(), EvalResult.id.desc())))
    if task is not None and not rows:
        raise NotFoundError(f"no results for task '{task}'", field="task",
                            fix="see GET /api/evaluations for the tasks scored, or score some with `modelmill eval`")
    return {"data": [result_json(r) for r in rows if status is None or r.status == status]}


@router.get("/leaderboard", summary="Candidates ranked per task and data")
def leaderboard(request: Request, task: str | None = Query(None, description="One task's boards (default: every task).")):
    """One board per task and data (dataset version, content hash, item count): each candidate's
    newest finished result on that data, ranked by the task's headline metric (what `modelmill
    leaderboard` prints). Results on other data (an older version, a ``--limit``) get a board of
    their own and are never ranked together. By task, then the newest data first."""
    boards = _boards(request.app.state.store, task)
    out = []
    for b in boards:
        out.append({"task": b.task, "kind": b.kind, "primary": b.primary, "dataset": b.dataset,
                    "data_hash": b.data_hash, "n": b.n, "finished_at": _iso(b.finished_at),
                    "boards_of_task": sum(1 for x in boards if x.task == b.task),
                    "metric_names": _metric_names(b.kind, b.rows),
                    "rows": [{"rank": i + 1, "candidate": r.candidate, "kind": r.candidate_kind, "score": _num(r.score),
                              "metrics": _finite(r.metrics or {}), "n": r.n_done, "seconds": _num(r.seconds),
                              "ms_per_item": 1000 * r.seconds / r.n_done if r.n_done and _num(r.seconds) is not None else None,
                              "dataset": r.dataset, "result_id": r.id, "finished_at": _iso(r.finished_at)}
                             for i, r in enumerate(b.rows)]})
    return {"tasks": out}


# ---- comparing two candidates -------------------------------------------------------------------

def _per_class(r, items: list[dict]) -> dict | None:
    """Precision/recall/F1/support per label: as stored, or (for a result that kept only its
    items) computed from them with the library's ``classification_metrics``. None where the task
    has no labels (generation, extraction ...)."""
    from modelmill.evaluate.classification import classification_metrics

    pc = (r.metrics or {}).get("per_class")
    if isinstance(pc, dict):
        return pc
    labels = (r.metrics or {}).get("labels") or (r.lineage or {}).get("labels")
    if not isinstance(labels, list) or not labels or not items:
        return None
    golds, preds = [it.get("gold") for it in items], [it.get("pred") for it in items]
    if not all(isinstance(g, str) for g in golds) or not all(p is None or isinstance(p, str) for p in preds):
        return None
    try:
        return classification_metrics(golds, preds, [str(x) for x in labels])["per_class"]
    except (InputError, ValueError):
        return None


def _items(r) -> list[dict]:
    """The result's scored items (``evaluate.runner.read_items``), each with its index ``i``."""
    from modelmill.evaluate.runner import read_items

    return [it for it in read_items(r.path) if isinstance(it, dict) and isinstance(it.get("i"), int)]


def _same(x, y) -> bool:
    return json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)


def _side(r) -> dict:
    return {"candidate": r.candidate, "candidate_kind": r.candidate_kind, "score": _num(r.score), "n": r.n_done,
            "dataset": r.dataset, "result_id": r.id}


@router.get("/compare", summary="Two candidates side by side")
def compare(request: Request,
            task: str = Query(..., min_length=1, description="The task both candidates were scored on."),
            a: str | None = Query(None, description="A candidate (default: the leader)."),
            b: str | None = Query(None, description="Another candidate (default: the best other than a)."),
            dataset: str | None = Query(None, description="Only the board of this data (a board's `dataset` in "
                                                          "GET /api/leaderboard)."),
            data_hash: str | None = Query(None, description="Only the board of this data (a board's `data_hash`)."),
            n: int | None = Query(None, ge=0, description="Only the board of this many items (a board's `n`)."),
            limit: int = Query(50, ge=0, le=1000, description="At most this many disagreements.")):
    """Per-class metrics of each candidate and the items where their answers differ (input,
    reference, a's answer, b's answer), from the stored scored items. Both results come from one
    board (the same data): the newest board that holds the candidates named and another to compare
    with, among the boards that ``dataset``, ``data_hash`` and ``n`` pick (default: all)."""
    boards = [x for x in _boards(request.app.state.store, task)
              if (dataset is None or x.dataset == dataset) and (data_hash is None or x.data_hash == data_hash)
              and (n is None or x.n == n)]
    if not boards:
        field = "n" if n is not None else "data_hash" if data_hash is not None else "dataset"
        raise NotFoundError(f"task '{task}' has no results on that data", field=field,
                            fix="use a board's dataset, data_hash and n from GET /api/leaderboard")
    everyone = list(dict.fromkeys(r.candidate for x in boards for r in x.rows))
    for field, name in (("a", a), ("b", b)):
        if name is not None and name not in everyone:
            raise NotFoundError(f"no finished result of '{name}' on task '{task}' (candidates: {', '.join(everyone)})",
                                field=field, fix="use a candidate name from GET /api/leaderboard")
    if a is not None and a == b:
        raise InputError("a and b are the same candidate", field="b", fix="name two different candidates")
    named = {x for x in (a, b) if x is not None}
    holding = [x for x in boards if named <= {r.candidate for r in x.rows}]
    board = next((x for x in holding if len(x.rows) > 1), holding[0] if holding else None)  # one to compare with
    if board is None:
        raise InputError(f"'{a}' and '{b}' were never scored on the same data of task '{task}': their scores do not "
                         "compare", field="b", fix="score both on the same dataset version and --limit")
    by_name = {r.candidate: r for r in board.rows}  # best first
    a = a or next((x for x in by_name if x != b), None)
    b = b or next((x for x in by_name if x != a), None)
    if a is None or b is None:
        raise InputError(f"task '{task}' has one candidate scored on this data: nothing to compare", field="task",
                         fix="score another candidate on it with `modelmill eval`")
    ra, rb = by_name[a], by_name[b]
    items_a, items_b = _items(ra), _items(rb)
    by_i = {it["i"]: it for it in items_b}
    paired, shown, total = 0, [], 0
    for x in items_a:
        y = by_i.get(x["i"])
        # the same item: same index and the same input shown (results on other data do not pair)
        if y is None or not _same(x.get("input"), y.get("input")):
            continue
        paired += 1
        if _same(x.get("pred"), y.get("pred")):
            continue
        total += 1
        if len(shown) < limit:
            shown.append(_finite({"i": x["i"], "input": x.get("input"), "reference": x.get("gold"),
                                  "a": x.get("pred"), "b": y.get("pred"),
                                  "a_correct": x.get("correct"), "b_correct": y.get("correct")}))
    per_class = {a: _finite(_per_class(ra, items_a)), b: _finite(_per_class(rb, items_b))}
    labels: list[str] = []
    for pc in per_class.values():
        labels += [str(k) for k in (pc or {}) if str(k) not in labels]
    return {"task": task, "kind": ra.kind, "primary": ra.primary, "dataset": board.dataset,
            "data_hash": board.data_hash, "n": board.n, "a": _side(ra), "b": _side(rb),
            "labels": labels, "per_class": per_class, "compared": paired, "total_disagreements": total,
            "has_more": total > len(shown), "disagreements": shown}


# ---- reports ------------------------------------------------------------------------------------

@router.get("/reports", response_class=HTMLResponse, summary="The HTML benchmark report",
            responses={200: {"content": {"text/html": {}}, "description": "A self-contained HTML page."},
                       **{code: {"model": ErrorBody, "content": {"application/json": {}}, "description": what}
                          for code, what in ((400, "Bad input."), (404, "Unknown task."))}})
def report(request: Request,
           task: list[str] | None = Query(None, description="Tasks to include (repeatable; default: all)."),
           max_disagreements: int = Query(50, ge=0, le=1000, description="Disagreeing items shown per task.")):
    """The report `modelmill report` writes: ranked tables, charts, confusion matrices and
    disagreements, one self-contained page (an empty page while nothing is scored)."""
    from modelmill.evaluate.report import build_report
    from modelmill.evaluate.results import report_data

    store = request.app.state.store
    names = list(dict.fromkeys(t for t in task or [] if t))
    for t in names:
        _boards(store, t)  # an unknown task is a 404 naming it
    return HTMLResponse(build_report(report_data(store, names or None), max_disagreements=max_disagreements))


# ---- preferences --------------------------------------------------------------------------------

class Message(BaseModel):
    role: Literal["system", "user", "assistant"] = Field(description="Who said it.")
    content: str = Field(pattern=NO_NUL, description="What was said.")


def _conversation(before: str):
    """The ``messages`` of a judgement, by the rules of its data format (data/formats/preference.py):
    at least one message, a user turn somewhere."""
    return Field(min_length=1, description=f"The conversation before {before}, with at least one user turn.",
                 json_schema_extra={"contains": {"type": "object", "required": ["role"],
                                                 "properties": {"role": {"const": "user"}}}})


class PreferenceIn(BaseModel):
    """One judgement: for this conversation, ``chosen`` (by ``chosen_model``) beat ``rejected``."""

    messages: list[Message] = _conversation("the two answers")
    chosen: str = Field(pattern=TEXT, description="The better answer.")
    rejected: str = Field(pattern=TEXT, description="The worse answer.")
    chosen_model: str = Field(max_length=300, pattern=TEXT, description="The model that gave `chosen`.")
    rejected_model: str = Field(max_length=300, pattern=TEXT, description="The model that gave `rejected`.")


class ExportIn(BaseModel):
    name: str = Field(pattern=NAME.pattern, description="The dataset's name: letters, digits, '.', '_' and '-', "
                      "starting with a letter or digit; a new version of it when it exists.")


def _check_texts(body, fields) -> None:
    for i, m in enumerate(body.messages):
        _text(m.content, f"messages.{i}.content")
    for field in fields:
        _text(getattr(body, field), field)


@router.post("/preferences", status_code=201, summary="Store a preference from the playground")
def create_preference(request: Request, body: PreferenceIn):
    """Keep one judgement; 400 names the field that is wrong."""
    from modelmill.data.judgements import add_preference

    _check_texts(body, ("chosen", "rejected", "chosen_model", "rejected_model"))
    row = add_preference(request.app.state.store, messages=[m.model_dump() for m in body.messages],
                         chosen=body.chosen, rejected=body.rejected, chosen_model=body.chosen_model,
                         rejected_model=body.rejected_model)
    return preference_json(row)


@router.get("/preferences", summary="Stored preferences")
def list_preferences(request: Request, limit: int = Query(100, ge=1, le=10000, description="At most this many, newest first.")):
    from modelmill.data.judgements import listing

    rows, total = listing(request.app.state.store, "preference", limit)
    return {"data": [preference_json(p) for p in rows], "total": total, "has_more": total > len(rows)}


@router.post("/preferences/export", status_code=201, summary="Save every preference as a dataset")
def export_preferences(request: Request, body: ExportIn):
    """All stored preferences as a preference dataset (``{"prompt", "chosen", "rejected"}`` records,
    the models under ``meta``), ready for preference training; the same content twice is one version."""
    from modelmill.data.judgements import export

    row, created = export(request.app.state.store, "preference", _text(body.name, "name"))
    return {**dataset_json(row), "created": created}


# ---- feedback: thumbs up/down on one answer -----------------------------------------------------

class FeedbackIn(BaseModel):
    """One thumb: ``completion`` (by ``model``), the answer to ``messages``, was good or bad."""

    messages: list[Message] = _conversation("the answer")
    completion: str = Field(pattern=TEXT, description="The answer judged.")
    label: bool = Field(description="true: thumbs up (a good answer); false: thumbs down.")
    model: str = Field(max_length=300, pattern=TEXT, description="The model that gave the answer.")


def feedback_json(f) -> dict:
    return {"id": f.id, "messages": f.messages, "completion": f.completion, "label": f.label, "model": f.model,
            "created_at": _iso(f.created_at)}


@router.post("/feedback", status_code=201, summary="Store a thumb up or down from the playground")
def create_feedback(request: Request, body: FeedbackIn):
    """Keep one thumb; 400 names the field that is wrong."""
    from modelmill.data.judgements import add_feedback

    _check_texts(body, ("completion", "model"))
    row = add_feedback(request.app.state.store, messages=[m.model_dump() for m in body.messages],
                       completion=body.completion, label=body.label, model=body.model)
    return feedback_json(row)


@router.get("/feedback", summary="Stored thumbs")
def list_feedback(request: Request, limit: int = Query(100, ge=1, le=10000, description="At most this many, newest first.")):
    from modelmill.data.judgements import counts, listing

    store = request.app.state.store
    rows, total = listing(store, "feedback", limit)
    return {"data": [feedback_json(f) for f in rows], "total": total, "up": counts(store)["feedback_up"],
            "has_more": total > len(rows)}


@router.post("/feedback/export", status_code=201, summary="Save every thumb as a feedback dataset (KTO data)")
def export_feedback(request: Request, body: ExportIn):
    """All stored thumbs as a feedback dataset (``{"prompt", "completion", "label"}`` records, the
    model under ``meta``), ready for ``--method kto``; the same content twice is one version."""
    from modelmill.data.judgements import export

    row, created = export(request.app.state.store, "feedback", _text(body.name, "name"))
    return {**dataset_json(row), "created": created}
