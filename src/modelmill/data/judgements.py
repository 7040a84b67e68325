"""What people judge in the playground, kept and turned into training data.

Two shapes, one per kind of training:

- a **preference**: for these messages, one model's answer beat another's (``preference``
  records, for DPO and ORPO);
- **feedback**: one answer was good or bad, thumbs up or down (``feedback`` records, for KTO,
  which learns from such unpaired judgements).

The REST API (``/api/preferences``, ``/api/feedback``) and the web playground store them with
``add_preference`` / ``add_feedback``; ``export`` saves every stored one as a dataset version
(the same judgements twice give the same version), ready for ``modelmill train --method``.
Each record goes through its data format's own checks when it is stored, so an export cannot
fail later on a record that was accepted.
"""

from __future__ import annotations

from modelmill.errors import ConflictError, InputError

KINDS = ("preference", "feedback")


def _table(kind: str):
    from modelmill.store.tables import Feedback, Preference

    if kind not in KINDS:
        raise InputError(f"unknown kind of judgement '{kind}'", field="kind", fix="use preference or feedback")
    return Preference if kind == "preference" else Feedback


def record(row) -> dict:
    """A stored judgement as the canonical record of its data format (what importing such a file gives)."""
    from modelmill.data.formats import Where, get_format
    from modelmill.store.tables import Preference

    if isinstance(row, Preference):
        raw = {"prompt": row.messages, "chosen": row.chosen, "rejected": row.rejected,
               "chosen_model": row.chosen_model, "rejected_model": row.rejected_model, "preference_id": row.id}
        return get_format("preference").normalize(raw, Where("preferences", row.id, "record"))
    raw = {"prompt": row.messages, "completion": row.completion, "label": row.label, "model": row.model,
           "feedback_id": row.id}
    return get_format("feedback").normalize(raw, Where("feedback", row.id, "record"))


def _check_messages(messages: list[dict]) -> None:
    if not any(m.get("role") == "user" for m in messages):
        raise InputError("has no user turn", field="messages",
                         fix='include the user\'s message, e.g. {"role": "user", "content": "..."}')


def _keep(store, row):
    record(row)  # what export will do with it must work now, not fail later
    with store.session() as s:
        s.add(row)
        s.flush()
        s.refresh(row)
        s.expunge(row)
    return row


def add_preference(store, *, messages: list[dict], chosen: str, rejected: str, chosen_model: str,
                   rejected_model: str):
    """Keep one judgement "``chosen`` beat ``rejected``"; InputError names the field that is wrong."""
    from modelmill.store.tables import Preference

    _check_messages(messages)
    return _keep(store, Preference(messages=messages, chosen=chosen, rejected=rejected,
                                   chosen_model=chosen_model.strip(), rejected_model=rejected_model.strip()))


def add_feedback(store, *, messages: list[dict], completion: str, label: bool, model: str):
    """Keep one thumb: ``completion`` (by ``model``) to ``messages`` was good (``label`` true) or bad."""
    from modelmill.store.tables import Feedback

    _check_messages(messages)
    if not completion.strip():
        raise InputError("is empty", field="completion", fix="judge an answer that has text")
    return _keep(store, Feedback(messages=messages, completion=completion, label=bool(label), model=model.strip()))


def listing(store, kind: str, limit: int = 100) -> tuple[list, int]:
    """The newest ``limit`` stored judgements of ``kind``, and how many there are."""
    from sqlalchemy import func, select

    table = _table(kind)
    with store.session() as s:
        rows = list(s.scalars(select(table).order_by(table.id.desc()).limit(limit)))
        total = s.scalar(select(func.count()).select_from(table))
    return rows, total


def counts(store) -> dict:
    """How many judgements of each kind are stored (and for feedback, how many thumbs up)."""
    from sqlalchemy import func, select

    from modelmill.store.tables import Feedback

    with store.session() as s:
        up = s.scalar(select(func.count()).select_from(Feedback).where(Feedback.label.is_(True)))
    return {"preference": listing(store, "preference", 0)[1], "feedback": listing(store, "feedback", 0)[1],
            "feedback_up": up}


def export(store, kind: str, name: str):
    """Every stored judgement of ``kind`` saved as the dataset ``name`` (a new version when they
    changed); returns ``(DatasetVersion, created)``. 409 when there is nothing to export."""
    from sqlalchemy import select

    from modelmill.data.catalog import DatasetCatalog
    from modelmill.names import check_name

    table = _table(kind)
    check_name(name, "name")
    with store.session() as s:
        rows = list(s.scalars(select(table).order_by(table.id)))
    if not rows:
        how = "pick the better answer" if kind == "preference" else "give answers a thumb up or down"
        raise ConflictError(f"there is no {kind} to export", field="name",
                            fix=f"{how} in the playground first (POST /api/{'preferences' if kind == 'preference' else 'feedback'})")
    records = [record(r) for r in rows]
    op = "preferences" if kind == "preference" else "feedback"
    origin = {"op": op, op: len(rows), "ids": [rows[0].id, rows[-1].id]}
    return DatasetCatalog(store).save(name, records, kind, kind, None, origin)
