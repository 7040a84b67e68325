"""Tasks: what a benchmark scores, declared in a small YAML file (or with flags), and the task kinds.

    modelmill eval --task tasks/drugs.yaml --models smollm2-135m-instruct,drugs-lora --baselines few-shot,tfidf

A task file::

    name: drugs                 # results and the leaderboard are kept per task name
    kind: classification        # classification | extraction | generation | multiple_choice | judge | dialogue
    data: drugs-test            # a dataset (NAME or NAME@VERSION) or a file (JSONL, JSON, CSV, Parquet),
                                # a relative path is read from the task file's folder
    train: drugs-train          # optional: few-shot examples and the classical baseline learn from it
    limit: 200                  # optional: score the first N items only
    fields: {review: text}      # optional: rename a file's fields to the ones the kind reads

Each kind lives in its own module and registers a ``TaskKind`` with ``register_task_kind``; a
plugin adds one from a module named by a ``modelmill.tasks`` entry point, the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmill.errors import InputError

SCORING = ("auto", "loglik", "generate")


@dataclass
class TaskSpec:
    """One task. Every field can come from the YAML file; unknown keys are errors."""

    name: str
    kind: str
    data: str
    train: str | None = None
    labels: list[str] | None = None  # classification: default, the test set's labels
    limit: int | None = None
    fields: dict[str, str] = field(default_factory=dict)
    metrics: list[str] | None = None  # the metrics to show; default: every metric of the kind
    scoring: str = "auto"  # classification, multiple_choice: loglik where the model allows it, else generate
    max_new_tokens: int = 0  # 0: the kind's default
    system: str | None = None  # a system prompt for every candidate
    few_shot: int = 5  # examples a few-shot candidate sees
    few_shot_select: str = "fixed"  # fixed (the same k for every item) or nearest (by embedding)
    judge: dict = field(default_factory=dict)  # judge: model, rubric, scale [lo, hi]
    match: str = "contains"  # dialogue: how a turn is checked (exact, contains, regex)
    batch_size: int = 16
    source: str | None = None  # the YAML file it came from, for errors and relative paths

    def __post_init__(self):
        kind = get_kind(self.kind)
        where = {"file": self.source} if self.source else {}
        if not self.name:
            raise InputError("a task needs a name", field="name", fix="add `name: my-task`", **where)
        if self.limit is not None and self.limit < 1:
            raise InputError(f"must be >= 1, got {self.limit}", field="limit", fix="e.g. limit: 200", **where)
        if self.scoring not in SCORING:
            raise InputError(f"unknown scoring '{self.scoring}'", field="scoring",
                             fix="use " + ", ".join(SCORING), **where)
        if self.few_shot < 1 or self.few_shot > 64:
            raise InputError(f"must be in [1, 64], got {self.few_shot}", field="few_shot", fix="e.g. few_shot: 5", **where)
        if self.few_shot_select not in ("fixed", "nearest"):
            raise InputError(f"unknown selection '{self.few_shot_select}'", field="few_shot_select",
                             fix="use fixed or nearest", **where)
        if self.batch_size < 1:
            raise InputError(f"must be >= 1, got {self.batch_size}", field="batch_size", fix="e.g. batch_size: 16", **where)
        if self.metrics is not None:
            unknown = [m for m in self.metrics if m not in kind.metric_names]
            if unknown:
                raise InputError(f"unknown metric(s) for {self.kind} tasks: {', '.join(unknown)}", field="metrics",
                                 fix="use some of: " + ", ".join(kind.metric_names), **where)
        kind.check_spec(self)

    @property
    def task_kind(self) -> TaskKind:
        return get_kind(self.kind)

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or self.task_kind.max_new_tokens

    def scoring_key(self, uses_train: bool = True) -> dict:
        """What changes the scores: everything but the limit, where the file was and how it is
        shown. ``uses_train`` False leaves out what only few-shot and classical candidates read."""
        d = dataclasses.asdict(self)
        for k in ("source", "limit", "metrics", "batch_size"):
            d.pop(k)
        if not uses_train:
            for k in ("train", "few_shot", "few_shot_select"):
                d.pop(k)
        return d


# ---- loading -----------------------------------------------------------------------------------

def load_task(path: str | Path) -> TaskSpec:
    """A TaskSpec from a YAML file; every problem names the file, the key and the fix."""
    from modelmill.config import read_yaml_mapping

    path = Path(path)
    loaded = read_yaml_mapping(path, "--task", "task settings (name:, kind:, data: ...)")
    return task_from_dict(loaded, source=str(path.resolve()))


def task_from_dict(d: dict, source: str | None = None) -> TaskSpec:
    known = {f.name: f for f in dataclasses.fields(TaskSpec)}
    where = {"file": source} if source else {}
    values: dict[str, Any] = {}
    for key, val in d.items():
        k = str(key).replace("-", "_")
        if k not in known or k == "source":
            raise InputError(f"unknown key '{key}'", field=str(key),
                             fix="known keys: " + ", ".join(n for n in known if n != "source"), **where)
        values[k] = val
    for req in ("kind", "data"):
        if not values.get(req):
            raise InputError("missing", field=req, fix=f"add `{req}: ...`", **where)
    if values["kind"] not in kinds():
        raise InputError(f"unknown task kind '{values['kind']}'", field="kind",
                         fix="use one of: " + ", ".join(kinds()), **where)
    values.setdefault("name", Path(str(values["data"])).stem.split("@")[0] if source is None else Path(source).stem)
    _check_types(values, known, where)
    return TaskSpec(**values, source=source)


def _check_types(values: dict, known: dict, where: dict) -> None:
    expect = {"name": str, "kind": str, "data": str, "train": str, "labels": list, "limit": int, "fields": dict,
              "metrics": list, "scoring": str, "max_new_tokens": int, "system": str, "few_shot": int,
              "few_shot_select": str, "judge": dict, "match": str, "batch_size": int}
    for k, v in values.items():
        want = expect.get(k)
        if v is None or want is None:
            continue
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise InputError(f"expected {want.__name__}, got {type(v).__name__} ({v!r})", field=k,
                             fix=f"e.g. {k}: {known[k].default if known[k].default is not dataclasses.MISSING else '...'}",
                             **where)
    if isinstance(values.get("labels"), list):
        values["labels"] = [str(x) for x in values["labels"]]
    if isinstance(values.get("fields"), dict):
        values["fields"] = {str(a): str(b) for a, b in values["fields"].items()}


# ---- items ---------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """A task's test items (and training items, for few-shot and classical baselines), validated."""

    items: list[dict]
    train: list[dict] | None
    dataset: str  # NAME@VERSION, or the file path
    dataset_hash: str  # the test set's content hash, combined with the training set's when there is one
    labels: list[str] | None = None
    test_hash: str = ""  # the test set's alone
    store: Any = None  # the Store it came from (a judge model is looked up there)


def load_items(store, spec: TaskSpec) -> TaskData:
    """Read and validate the task's data; ``spec.limit`` keeps the first N test items."""
    items, ref, digest, labels = _read(store, spec, spec.data, "data")
    test_hash = digest
    if not items:
        raise InputError("the test set has no items", field="data", fix="give a dataset with records",
                         **({"file": spec.source} if spec.source else {}))
    train = None
    if spec.train:
        train, tref, tdigest, tlabels = _read(store, spec, spec.train, "train")
        if not train:
            raise InputError(f"the training set {tref} has no items", field="train",
                             fix="give a training set with records, or leave `train:` out")
        if tdigest == digest:
            import warnings

            warnings.warn(f"the training set {tref} is the test set: few-shot examples and TF-IDF see the answers")
        digest = hashlib.sha256((digest + tdigest).encode()).hexdigest()
        labels = labels or tlabels
    # Labels come from the whole test set (and the training set), not from the first `limit`
    # items: a file sorted by label would otherwise offer the models one label.
    labels = spec.task_kind.labels_for(spec, items + (train or []), labels)
    if spec.limit:
        items = items[:spec.limit]
    return TaskData(items=items, train=train, dataset=ref, dataset_hash=digest, labels=labels, test_hash=test_hash,
                    store=store)


def _read(store, spec: TaskSpec, ref: str, key: str) -> tuple[list[dict], str, str, list[str] | None]:
    """(items, display ref, content hash, the dataset's labels) of a dataset name or a file."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.formats.base import Where
    from modelmill.data.readers import read_records, record_unit

    kind = spec.task_kind
    path = Path(ref)
    if spec.source and not path.is_absolute():
        path = Path(spec.source).parent / path
    looks_like_file = path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".parquet") or "/" in ref
    if looks_like_file:
        unit = record_unit(path)
        items = []
        for n, raw in read_records(path):
            where = Where(file=str(path), n=n, unit=unit)
            rec = {spec.fields.get(k, k): v for k, v in raw.items()}
            items.append(kind.from_raw(rec, where, spec))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return items, str(path), digest, None
    cat = DatasetCatalog(store)
    ds = cat.resolve(ref, flag=key)
    items = [kind.from_record(r, ds.kind, ds.ref, i + 1, spec) for i, r in enumerate(cat.records(ds))]
    return items, ds.ref, ds.content_hash, list(ds.labels) if ds.labels else None


# ---- the kinds -----------------------------------------------------------------------------------

class TaskKind:
    """One kind of task. A subclass sets ``name``, ``metric_names`` (the first is the headline,
    higher is better, between 0 and 1) and ``max_new_tokens``, and implements:

    - ``from_raw(record, where, spec)``: a file's record -> an item (raise ``where.error`` on bad input)
    - ``from_record(record, data_kind, ref, n, spec)``: a catalog dataset's canonical record -> an item
    - ``check_candidate(candidate, spec, data)``: refuse, before anything is scored, a candidate
      that cannot do this task
    - ``score(candidate, items, spec, data, progress)``: one result per item: {"gold", "pred", "correct", ...},
      or {"error": text} for an item the candidate failed on (scoring stops there; the rest is kept)
    - ``metrics(results, spec, data)``: the numbers
    - ``show(item)``: the item's input as text (reports, disagreement tables)
    """

    name = ""
    metric_names: tuple[str, ...] = ()
    max_new_tokens = 64
    version = 1  # raised when the kind's scoring changes, so that stored results are scored again
    needs_labels = False

    @property
    def primary(self) -> str:
        return self.metric_names[0]

    def check_spec(self, spec: TaskSpec) -> None:
        pass

    def check_candidate(self, candidate, spec: TaskSpec, data: TaskData) -> None:
        from modelmill.evaluate.candidates import FewShot

        if not candidate.can_generate:
            raise InputError(f"{candidate.name} does not generate text, which {self.name} tasks need",
                             field="--models", fix="use tfidf on classification tasks, gazetteer and crf on extraction tasks")
        if isinstance(candidate, FewShot) and not data.train:
            raise InputError(f"{candidate.name} needs training examples to show", field="train",
                             fix="add `train: DATASET` to the task (or --train)")

    def labels_for(self, spec: TaskSpec, items: list[dict], dataset_labels: list[str] | None) -> list[str] | None:
        return None

    def from_raw(self, record: dict, where, spec: TaskSpec) -> dict:
        raise NotImplementedError

    def from_record(self, record: dict, data_kind: str, ref: str, n: int, spec: TaskSpec) -> dict:
        raise InputError(f"dataset '{ref}' holds {data_kind} records, which {self.name} tasks cannot read",
                         field="data", fix=f"give a file with the fields a {self.name} task reads")

    def score(self, candidate, items: list[dict], spec: TaskSpec, data: TaskData) -> list[dict]:
        raise NotImplementedError

    def metrics(self, results: list[dict], spec: TaskSpec, data: TaskData) -> dict:
        raise NotImplementedError

    def show(self, item: dict) -> str:
        """The item's input as one text (reports, nearest-example search)."""
        if item.get("messages"):
            return "\n".join(f"{m['role']}: {m['content']}" for m in item["messages"])
        return str(item.get("text") or item.get("prompt") or "")

    # The conversation a candidate sees: ``prompt`` (the item's turns, no answer) and ``answer``
    # (the gold answer as text: shown after each few-shot example, scored by likelihood).
    def prompt(self, item: dict, spec: TaskSpec, data: TaskData) -> list[dict]:
        raise NotImplementedError

    def answer(self, item: dict, spec: TaskSpec, data: TaskData) -> str:
        raise NotImplementedError

    def generate(self, candidate, items: list[dict], spec: TaskSpec, data: TaskData, progress: bool = True) -> list:
        """The candidate's answer to each item (text, or the exception that item failed with)."""
        shots = candidate.shots(items, spec, data) or [None] * len(items)
        convs = [self.conversation(it, spec, data, sh) for it, sh in zip(items, shots)]
        return candidate.generate(convs, max_new_tokens=spec.new_tokens, batch_size=spec.batch_size, progress=progress)

    def conversation(self, item: dict, spec: TaskSpec, data: TaskData, shots: list[dict] | None = None,
                     answer: str | None = None) -> list[dict]:
        """System prompt, then each shot as a user turn answered correctly, then the item."""
        msgs = [{"role": "system", "content": spec.system}] if spec.system else []
        for s in shots or []:
            turns = [m for m in self.prompt(s, spec, data) if m["role"] != "system"]
            msgs += turns + [{"role": "assistant", "content": self.answer(s, spec, data)}]
        msgs += self.prompt(item, spec, data)
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs


KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Add ``kind`` (a later registration under the same name replaces it)."""
    if not kind.name or not kind.metric_names:
        raise ValueError("a task kind needs a name and at least one metric")
    KINDS[kind.name] = kind
    return kind


def _load_builtin() -> None:
    from modelmill.evaluate import kinds  # noqa: F401  (the built-ins register themselves on import)
    from modelmill.plugins import load_plugins

    load_plugins("modelmill.tasks")


def kinds() -> list[str]:
    _load_builtin()
    return list(KINDS)


def get_kind(name: str) -> TaskKind:
    _load_builtin()
    if name not in KINDS:
        raise InputError(f"unknown task kind '{name}'", field="kind", fix="use one of: " + ", ".join(KINDS))
    return KINDS[name]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
