"""Eval-gated promotion: a deployment moves to a new model only when it beats the current one on the
deployment's gate task by the gate's margin; every attempt is kept, and a move can be rolled back.

    promote(store, "support-bot", "support-lora-v2")     # both scored on the gate's test set
    # -> {"action": "promoted", "score": 0.91, "previous_score": 0.86, ...}
    # or PromotionRefused (409): "... scores accuracy 0.84, the current ... 0.86: it needs 0.88 ..."
    rollback(store, "support-bot")                      # back to what it pointed at before
    history(store, "support-bot")                        # newest first

Scores come from the evaluation library (``modelmill eval``), so they are stored, ranked on the
leaderboard, and not computed twice: the current model's score on the gate task is reused when
it was scored before. The gate's metric is the task's headline metric unless it names another
(higher is better). ``force`` moves without a gate, or against a lost one, and says so in the
history.
"""

from __future__ import annotations

from datetime import datetime, timezone

from modelmill.errors import ConflictError, InputError


class PromotionRefused(ConflictError):
    """The new model did not win on the gate task: both scores are in the message and in ``result``."""

    def __init__(self, message: str, result: dict):
        super().__init__(message, field="model", fix="improve the model, lower the gate's margin, or pass --force "
                                                     "(REST: \"force\": true) to move anyway")
        self.result = result
        self.details = [{"field": "model", "message": message, **result}]


def _event_json(e) -> dict:
    return {"id": e.id, "deployment": e.deployment, "action": e.action, "model": e.model, "previous": e.previous,
            "task": e.task, "metric": e.metric, "score": e.score, "previous_score": e.previous_score,
            "margin": e.margin, "note": e.note, "created_at": e.created_at.isoformat() if e.created_at else None}


def _record(store, **fields):
    from modelmill.store.tables import DeploymentEvent

    with store.session() as s:
        ev = DeploymentEvent(created_at=datetime.now(timezone.utc), **fields)
        s.add(ev)
        s.flush()
        return _event_json(ev)


def gate_scores(store, gate: dict, deployment: str, models: list[str], *, progress: bool = False) -> dict:
    """{model: (score, metric, task name)} of ``models`` on the gate's task (stored results reused)."""
    from modelmill.evaluate.run import EvalConfig, run

    out = run(store, EvalConfig(models=",".join(models), data=gate["data"], kind=gate.get("kind", ""),
                                name=gate.get("name") or f"gate-{deployment}", limit=gate.get("limit", 0)),
              progress=progress)
    if len(out.rows) != len(models):
        raise InputError(f"the gate task scored {len(out.rows)} candidates for {len(models)} models", field="gate")
    scores = {}
    for model, row in zip(models, out.rows):
        metric = gate.get("metric") or row.primary
        value = (row.metrics or {}).get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            numeric = sorted(k for k, v in (row.metrics or {}).items() if isinstance(v, (int, float)))
            raise InputError(f"the gate task has no metric '{metric}'", field="gate.metric",
                             fix=f"use one of {', '.join(numeric)}")
        scores[model] = (float(value), metric, out.spec.name)
    return scores


def promote(store, name: str, model: str, *, force: bool = False, progress: bool = False) -> dict:
    """Point deployment ``name`` at ``model`` if it wins on the gate (or ``force``); the history event."""
    from sqlalchemy import select

    from modelmill.apps.deployments import Deployments, check_target
    from modelmill.store.tables import Deployment

    deps = Deployments(store)
    dep = deps.get(name)
    check_target(store, model)
    if dep.model == model:
        raise InputError(f"deployment '{name}' already points at '{model}'", field="model")
    gate = dep.gate
    if not gate and not force:
        raise InputError(f"deployment '{name}' has no gate to promote through", field="gate",
                         fix=f"give it one (`modelmill deploy gate {name} --data TEST_SET [--margin 0.02]`), or pass "
                             "--force to move it without scores")
    current = dep.model
    result: dict = {"model": model, "previous": current}
    if gate:
        scores = gate_scores(store, gate, name, [current, model], progress=progress)
        (old, metric, task), (new, _, _) = scores[current], scores[model]
        need = old + gate["margin"]
        result.update(task=task, metric=metric, score=new, previous_score=old, margin=gate["margin"])
        if new < need and not force:
            msg = (f"'{model}' scores {metric} {new:.4f} on the gate task '{task}', the current '{current}' "
                   f"{old:.4f}: it needs {need:.4f} (margin {gate['margin']:+.4f}), so '{name}' stays on '{current}'")
            ev = _record(store, deployment=name, action="refused", note=msg, **result)
            raise PromotionRefused(msg, {**result, "event": ev["id"]})
    with store.lock(f"deployment-{name}"), store.session() as s:
        row = s.scalar(select(Deployment).where(Deployment.name == name))
        if row is None or row.model != current:  # moved (or removed) while the models were scored
            raise ConflictError(f"deployment '{name}' changed while the models were scored (it now points at "
                                f"'{row.model if row else 'nothing'}')", field="name", fix="promote again")
        row.model, row.updated_at = model, datetime.now(timezone.utc)
    won = gate and result["score"] >= result["previous_score"] + gate["margin"]
    action = "promoted" if won else "forced"
    note = None if won else ("moved without a gate" if not gate else "moved although it did not win on the gate")
    return _record(store, deployment=name, action=action, note=note, **result)


def rollback(store, name: str, to: str | None = None) -> dict:
    """Point ``name`` back at what it pointed at before its last move (or at ``to``, a model it pointed
    at once); no gate applies: this is the way back."""
    from sqlalchemy import select

    from modelmill.apps.deployments import Deployments, check_target
    from modelmill.store.tables import Deployment

    dep = Deployments(store).get(name)
    events = history(store, name)
    moves = [e for e in events if e["action"] in MOVES]
    if to is None:
        last = next((e for e in moves if e["model"] == dep.model and e["previous"]), None)
        if last is None:
            raise InputError(f"deployment '{name}' has no earlier model to go back to", field="name")
        to = last["previous"]
    elif to not in rollback_targets(store, name) and to != dep.model:
        raise InputError(f"deployment '{name}' never pointed at '{to}'", field="to",
                         fix=f"`modelmill deploy history {name}` shows what it pointed at")
    if to == dep.model:
        raise InputError(f"deployment '{name}' already points at '{to}'", field="to")
    check_target(store, to, "to")  # removed since? say so rather than serve a missing model
    with store.lock(f"deployment-{name}"), store.session() as s:
        row = s.scalar(select(Deployment).where(Deployment.name == name))
        previous = row.model
        row.model, row.updated_at = to, datetime.now(timezone.utc)
    return _record(store, deployment=name, action="rolled back", model=to, previous=previous)


MOVES = ("created", "updated", "promoted", "forced", "rolled back")


def rollback_targets(store, name: str) -> list[str]:
    """Every model ``name`` pointed at before or after a move, newest first, but the current one."""
    from modelmill.apps.deployments import Deployments

    current = Deployments(store).get(name).model
    out: list[str] = []
    for e in history(store, name, limit=1000):
        if e["action"] in MOVES:
            for m in (e["model"], e["previous"]):
                if m and m != current and m not in out:
                    out.append(m)
    return out


def history(store, name: str, limit: int = 100) -> list[dict]:
    """The deployment's events, newest first."""
    from sqlalchemy import select

    from modelmill.store.tables import DeploymentEvent

    with store.session() as s:
        rows = s.scalars(select(DeploymentEvent).where(DeploymentEvent.deployment == name)
                         .order_by(DeploymentEvent.created_at.desc(), DeploymentEvent.id.desc()).limit(limit))
        return [_event_json(e) for e in rows]
