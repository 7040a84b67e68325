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

A second, cheap classifier is learned beside it from the same texts: character n-grams
(hashed) and a logistic regression, which costs well under a millisecond where MiniLM costs
20-40 ms on a CPU without AVX512. It answers alone when it is sure, above a probability picked on
the held-out 20% so that its sure answers there are at least :data:`FAST_PRECISION` right;
every other request goes to MiniLM. Each choice says which classifier made it (``by``).

Every route and the fallback are models of one base, so one engine serves all of them in the
same batch. What was learned is stored as numbers (classes, coefficients), not as a pickle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

from modelmill.errors import ConflictError, InputError

FALLBACK = "(fallback)"  # the fallback's class among the routes
FAST_FEATURES = 2**18    # hashed character n-grams (1 to 4 characters, within words)
FAST_PRECISION = 0.995   # held-out accuracy the n-gram classifier must reach on what it answers alone
# ... and never below this probability: the held-out texts come from the routes' own data, while
# requests also bring what no route learned from. Measured on bench/apps.py's mix (MMLU questions
# never seen): sure above 0.5, 0.997 routed right; above 0.95, 1.000 (as MiniLM alone) with 78%
# of requests answered by the n-gram classifier.
FAST_MIN_THRESHOLD = 0.95


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
    by: str = "minilm"  # which classifier chose: "ngram" (sure on its own) or "minilm"


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
    all_y = np.array([c for c, x in enumerate(xs) for _ in range(len(x))])
    clf = fit(np.concatenate(xs), all_y)
    coef, intercept = _softmax_form(clf.coef_, clf.intercept_, len(classes))
    state = {"embedder": emb.name, "classes": classes, "coef": coef.astype(float).round(7).tolist(),
             "intercept": intercept.astype(float).round(7).tolist()}
    # the cheap first look: n-gram LR on the same split; sure answers above a threshold the held-out part picks
    log("learning the n-gram classifier that answers alone when it is sure")
    vec = _ngrams()
    splits = _splits(texts, spec.seed)
    fast_tr = [t for (tr, _) in splits for t in tr]
    fast_tr_y = [c for c, (tr, _) in enumerate(splits) for _ in tr]
    fast_te = [t for (_, te) in splits for t in te]
    fast_te_y = np.array([c for c, (_, te) in enumerate(splits) for _ in te])
    fast = fit(vec.transform(fast_tr), np.array(fast_tr_y))
    probs = fast.predict_proba(vec.transform(fast_te))
    threshold, coverage, sure_acc = _sure_threshold(probs, fast_te_y)
    metrics_fast = {"threshold": threshold, "held_out_coverage": coverage, "held_out_accuracy_when_sure": sure_acc,
                    "held_out_accuracy": float((probs.argmax(axis=1) == fast_te_y).mean())}
    if threshold is not None:
        full = fit(vec.transform([t for tt in texts for t in tt]), all_y)
        fc, fi = _softmax_form(full.coef_, full.intercept_, len(classes))
        cols = np.flatnonzero(np.abs(fc).max(axis=0) > 0)  # hashed n-grams never seen stay zero: not stored
        state["fast"] = {"features": FAST_FEATURES, "threshold": threshold, "columns": cols.tolist(),
                         "coef": fc[:, cols].astype(float).round(6).tolist(),
                         "intercept": fi.astype(float).round(6).tolist()}
        log(f"n-gram classifier: sure above {threshold:.2f} on {coverage:.0%} of the held-out texts, "
            f"{sure_acc:.3f} of those right; MiniLM chooses for the rest")
    else:
        log("n-gram classifier: never sure enough on the held-out texts; MiniLM chooses every route")
    metrics = {"held_out_accuracy": accuracy, "held_out_per_class": per_class,
               "texts": {c: len(t) for c, t in zip(classes, texts)}, "data": sources, "ngram": metrics_fast}
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


def _softmax_form(coef, intercept, n_classes: int):
    """sklearn's coefficients as one row per class (binary: it keeps one row; the softmax of (-w, w)
    is the same sigmoid)."""
    import numpy as np

    if n_classes == 2:
        return np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return np.asarray(coef), np.asarray(intercept)


def _ngrams():
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), n_features=FAST_FEATURES, alternate_sign=False,
                             norm="l2", lowercase=True, dtype=np.float32)


def _splits(texts: list[list[str]], seed: int) -> list[tuple[list[str], list[str]]]:
    """Each class's texts as (80% to learn from, 20% held out)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    out = []
    for t in texts:
        idx = rng.permutation(len(t))
        cut = max(1, len(t) // 5)
        out.append(([t[i] for i in idx[cut:]], [t[i] for i in idx[:cut]]))
    return out


def _sure_threshold(probs, y) -> tuple[float | None, float, float]:
    """The lowest probability (from FAST_MIN_THRESHOLD) above which the held-out answers are at least
    FAST_PRECISION right (and at least 20 of them): (threshold or None, share above it, accuracy above it)."""
    import numpy as np

    top, pred = probs.max(axis=1), probs.argmax(axis=1)
    for t in np.arange(FAST_MIN_THRESHOLD, 0.995, 0.01):
        sure = top >= t
        if sure.sum() >= 20 and (pred[sure] == y[sure]).mean() >= FAST_PRECISION:
            return float(round(t, 2)), float(sure.mean()), float((pred[sure] == y[sure]).mean())
    return None, 0.0, 0.0


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
        self.fast = None
        if row.state.get("fast"):
            f = row.state["fast"]
            coef = np.zeros((len(self.classes), int(f["features"])), dtype=np.float32)
            coef[:, np.asarray(f["columns"], dtype=np.int64)] = np.asarray(f["coef"], dtype=np.float32)
            self.fast = (_ngrams(), coef.T.copy(), np.asarray(f["intercept"], dtype=np.float32),
                         float(f["threshold"]))

    def _weighted(self, z):
        import numpy as np

        p = np.exp(z - z.max(axis=1, keepdims=True)) * self.weights
        return p / p.sum(axis=1, keepdims=True)

    def probabilities(self, vectors):
        """[n, classes] probabilities from MiniLM vectors, each route's weighted and renormalised."""
        return self._weighted(vectors @ self.coef.T + self.intercept)

    def _choice(self, row, by: str) -> RouteChoice:
        c = int(row.argmax())
        route, conf = self.classes[c], float(row[c])
        model = self.fallback if route == FALLBACK or conf < self.threshold else route
        return RouteChoice(model, route, conf, by)

    def choose_vectors(self, vectors) -> list[RouteChoice]:
        return [self._choice(row, "minilm") for row in self.probabilities(vectors)]

    def sure(self, texts: list[str]) -> list[RouteChoice | None]:
        """The n-gram classifier's choice for each text it is sure of (None: MiniLM must choose)."""
        if self.fast is None:
            return [None] * len(texts)
        vec, coef_t, intercept, threshold = self.fast
        p = self._weighted(vec.transform(texts) @ coef_t + intercept)
        return [self._choice(row, "ngram") if row.max() >= threshold else None for row in p]

    def choose(self, texts: list[str]) -> list[RouteChoice]:
        """The route for each text: the n-gram classifier's when it is sure, else MiniLM's."""
        from modelmill.models.embedder import Embedder

        texts = [t or " " for t in texts]
        out = self.sure(texts)
        rest = [i for i, c in enumerate(out) if c is None]
        if rest:
            for i, c in zip(rest, self.choose_vectors(Embedder.default().vectors([texts[i] for i in rest]))):
                out[i] = c
        return out
