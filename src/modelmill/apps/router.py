"""A router: one model id that sends each request to the adapter it belongs to, or to a fallback.

    modelmill apps router create support --route drugs-lora --route zh-lora \
        --fallback smollm2-135m-instruct --fallback-data chat-sample
    # then: POST /v1/chat/completions {"model": "support", ...}; the response's "route" says who answered

The router is learned, not written: each route's own training data (the dataset its adapter
was trained on, or ``--route ADAPTER=DATASET``) gives the texts of its class, the fallback's
general data (``--fallback-data``) a class of its own; each text is the last user message the
model would see, embedded with the bundled MiniLM, and a scikit-learn logistic regression
learns the classes. A request whose top probability (after the per-route ``--weight``) is
under ``--threshold``, or whose top class is the fallback's, goes to the fallback. 20% of each
class is held out to report the routing accuracy before anything is stored.

Every route and the fallback are models of one base, so one engine serves all of them in the
same batch. What was learned is stored as numbers (classes, coefficients), not as a pickle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

from modelmill.errors import ConflictError, InputError

FALLBACK = "(fallback)"  # the fallback's class among the routes


@dataclass
class RouterSpec:
    """What ``apps router create`` asks for; each field is a flag (REST: the same names)."""

    name: str
    routes: list[str] = field(default_factory=list)       # adapters (or BASE:ADAPTER)
    fallback: str = ""                                     # a model or adapter of the same base
    fallback_data: str = ""                                # general prompts: the fallback's own class
    route_data: dict[str, str] = field(default_factory=dict)  # route -> dataset, instead of its training data
    threshold: float = 0.5                                 # under this confidence: the fallback
    weights: dict[str, float] = field(default_factory=dict)   # route -> weight on its probability
    max_per_route: int = 2000                              # texts per class (sampled, seeded)
    seed: int = 0

    def __post_init__(self):
        from modelmill.names import check_name

        check_name(self.name, "NAME")
        if not self.routes:
            raise InputError("a router needs at least one route", field="--route", fix="e.g. --route drugs-lora")
        if len(set(self.routes)) != len(self.routes):
            raise InputError("a route is named twice", field="--route", fix="name each adapter once")
        if not self.fallback:
            raise InputError("a router needs a fallback model", field="--fallback",
                             fix="the base model, e.g. --fallback smollm2-135m-instruct")
        if self.fallback in self.routes:
            raise InputError(f"'{self.fallback}' is both a route and the fallback", field="--fallback",
                             fix="the fallback answers what no route takes: use the base model")
        if not 0.0 <= self.threshold < 1.0:
            raise InputError(f"{self.threshold} is outside [0, 1)", field="--threshold",
                             fix="a probability, e.g. --threshold 0.5")
        for k, w in self.weights.items():
            if k not in self.routes:
                raise InputError(f"'{k}' is not a route", field="--weight", fix="weigh one of: " + ", ".join(self.routes))
            if not 0.0 < w <= 100.0:
                raise InputError(f"weight {w} of '{k}' is outside (0, 100]", field="--weight", fix="e.g. 1.5")
        for k in self.route_data:
            if k not in self.routes:
                raise InputError(f"'{k}' is not a route", field="--route", fix="ROUTE=DATASET names a route's data")
        if self.max_per_route < 10:
            raise InputError("at least 10 texts per route are needed", field="--max-per-route")


@dataclass
class RouteChoice:
    model: str          # the route or the fallback, as the spec names it
    route: str          # the class chosen: a route, or FALLBACK
    confidence: float   # the (weighted) probability of the class chosen by the classifier


def user_text(record: dict, kind: str, labels: list[str] | None) -> str | None:
    """The last user message a model trained on ``record`` is sent (None: the record has none)."""
    from modelmill.data.formats import to_messages
    from modelmill.kb.rag import question_of

    if kind in ("text",):
        return record.get("text") or None
    if kind in ("preference", "feedback"):
        prompt = record.get("prompt")
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt or "")}]
    else:
        msgs = to_messages(record, kind, labels=labels)
    return question_of(msgs) or None


def _texts(store, ref: str, flag: str, limit: int, seed: int) -> tuple[list[str], str]:
    from modelmill.data.catalog import DatasetCatalog

    cat = DatasetCatalog(store)
    row = cat.resolve(ref, flag)
    texts = [t for t in (user_text(r, row.kind, row.labels) for r in cat.records(row)) if t and t.strip()]
    if len(texts) < 10:
        raise InputError(f"dataset '{row.ref}' gives {len(texts)} user messages; a route needs at least 10",
                         field=flag, fix="give the route more data (ROUTE=DATASET)")
    random.Random(seed).shuffle(texts)
    return texts[:limit], row.ref


def create_router(store, spec: RouterSpec, *, log=print):
    """Learn the router and store it as the app ``spec.name``. Returns the App row."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sqlalchemy import select

    from modelmill.adapters import AdapterRegistry
    from modelmill.apps import check_app_name_free
    from modelmill.models.embedder import Embedder
    from modelmill.store.tables import App

    check_app_name_free(store, spec.name)
    reg = AdapterRegistry(store)
    bases, data = {}, {}
    for ref in [*spec.routes, spec.fallback]:
        flag = "--fallback" if ref == spec.fallback else "--route"
        base, adapter = reg.resolve_ref(ref)  # NotFoundError names what is missing
        if base.source_type == "remote":
            raise InputError(f"'{ref}' is a remote endpoint; a router serves local models of one base", field=flag)
        bases[ref] = base.name
        if ref != spec.fallback:
            if ref in spec.route_data:
                data[ref] = spec.route_data[ref]
            elif adapter is not None:
                data[ref] = f"{adapter.dataset}@{adapter.dataset_version}"
            else:
                raise InputError(f"route '{ref}' is a base model, with no training data of its own", field="--route",
                                 fix=f"name its data: --route {ref}=DATASET")
    if len(set(bases.values())) > 1:
        listed = ", ".join(f"{k} ({v})" for k, v in bases.items())
        raise ConflictError(f"a router's routes and fallback must share one base model: {listed}", field="--route",
                            fix="route between adapters of the same base (one engine serves them in one batch)")
    base_name = next(iter(bases.values()))
    classes, texts = [], []
    sources = {}
    for ref in spec.routes:
        t, sources[ref] = _texts(store, data[ref], "--route", spec.max_per_route, spec.seed)
        classes.append(ref)
        texts.append(t)
    if spec.fallback_data:
        t, sources[FALLBACK] = _texts(store, spec.fallback_data, "--fallback-data", spec.max_per_route, spec.seed)
        classes.append(FALLBACK)
        texts.append(t)
    if len(classes) < 2:
        raise InputError("one route and no fallback data leave nothing to choose between", field="--fallback-data",
                         fix="add a second route, or general prompts as --fallback-data")
    log(f"embedding {sum(map(len, texts))} texts of {len(classes)} classes")
    emb = Embedder.default()
    xs = [emb.vectors(t) for t in texts]
    # 20% of each class held out: the routing accuracy reported before anything is stored
    rng = np.random.default_rng(spec.seed)
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for c, x in enumerate(xs):
        idx = rng.permutation(len(x))
        cut = max(1, len(x) // 5)
        te_x.append(x[idx[:cut]])
        te_y += [c] * cut
        tr_x.append(x[idx[cut:]])
        tr_y += [c] * (len(x) - cut)
    fit = lambda x, y: LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced").fit(x, y)  # noqa: E731
    held = fit(np.concatenate(tr_x), np.array(tr_y))
    pred = held.predict(np.concatenate(te_x))
    te_y = np.array(te_y)
    accuracy = float((pred == te_y).mean())
    per_class = {classes[c]: float((pred[te_y == c] == c).mean()) for c in range(len(classes))}
    clf = fit(np.concatenate(xs), np.array([c for c, x in enumerate(xs) for _ in range(len(x))]))
    coef, intercept = clf.coef_, clf.intercept_
    if len(classes) == 2:  # binary: sklearn keeps one row; the softmax of (-w, w) is the same sigmoid
        coef, intercept = np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    state = {"embedder": emb.name, "classes": classes, "coef": coef.astype(float).round(7).tolist(),
             "intercept": intercept.astype(float).round(7).tolist()}
    metrics = {"held_out_accuracy": accuracy, "held_out_per_class": per_class,
               "texts": {c: len(t) for c, t in zip(classes, texts)}, "data": sources}
    now = datetime.now(timezone.utc)
    with store.lock(f"app-{spec.name}"), store.session() as s:
        if s.scalar(select(App).where(App.name == spec.name)) is not None:
            raise ConflictError(f"an app named '{spec.name}' already exists", field="NAME",
                                fix=f"choose another name, or `modelmill apps remove {spec.name}`")
        s.add(App(name=spec.name, kind="router", base_model=base_name, spec=_spec_json(spec), state=state,
                  metrics=metrics, created_at=now, updated_at=now))
    log(f"router '{spec.name}': held-out routing accuracy {accuracy:.3f} "
        + "(" + ", ".join(f"{c}: {a:.3f}" for c, a in per_class.items()) + ")")
    from modelmill.apps import Apps

    return Apps(store).get(spec.name)


def _spec_json(spec: RouterSpec) -> dict:
    return {"routes": spec.routes, "fallback": spec.fallback, "fallback_data": spec.fallback_data,
            "route_data": spec.route_data, "threshold": spec.threshold, "weights": spec.weights,
            "max_per_route": spec.max_per_route, "seed": spec.seed}


class Routes:
    """A stored router, ready to choose: ``choose(["the question"]) -> [RouteChoice]``."""

    def __init__(self, row):
        import numpy as np

        self.name = row.name
        self.spec = row.spec
        self.classes = list(row.state["classes"])
        self.coef = np.asarray(row.state["coef"], dtype=np.float32)            # [classes, dims]
        self.intercept = np.asarray(row.state["intercept"], dtype=np.float32)  # [classes]
        w = row.spec.get("weights") or {}
        self.weights = np.asarray([float(w.get(c, 1.0)) for c in self.classes], dtype=np.float32)
        self.threshold = float(row.spec.get("threshold", 0.5))
        self.fallback = row.spec["fallback"]

    def probabilities(self, vectors):
        """[n, classes] probabilities, each route's weighted and renormalised."""
        import numpy as np

        z = vectors @ self.coef.T + self.intercept
        p = np.exp(z - z.max(axis=1, keepdims=True)) * self.weights
        return p / p.sum(axis=1, keepdims=True)

    def choose_vectors(self, vectors) -> list[RouteChoice]:
        out = []
        for row in self.probabilities(vectors):
            c = int(row.argmax())
            route, conf = self.classes[c], float(row[c])
            model = self.fallback if route == FALLBACK or conf < self.threshold else route
            out.append(RouteChoice(model, route, conf))
        return out

    def choose(self, texts: list[str]) -> list[RouteChoice]:
        from modelmill.models.embedder import Embedder

        return self.choose_vectors(Embedder.default().vectors([t or " " for t in texts]))
