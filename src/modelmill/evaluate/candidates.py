"""Candidates: what a task scores. A registered model or adapter, a few-shot prompt, a classical
baseline, or a remote OpenAI-compatible model, all behind one small interface.

    cands = parse_candidates(store, "smollm2-135m-instruct,drugs-lora,few-shot:smollm2-135m-instruct,tfidf")
    cands += baselines(store, cands, ["zero-shot", "few-shot", "tfidf"])

Names in ``--models``:

- ``BASE``: the base model with the task's instruction and nothing else (the zero-shot prompt baseline)
- ``ADAPTER`` or ``BASE:ADAPTER``: a fine-tune
- ``few-shot:REF``: REF prompted with ``few_shot`` training examples before each item
  (the task's ``train`` set; the same ones for every item, or the nearest by embedding)
- ``tfidf``: TF-IDF + logistic regression trained on the task's ``train`` set (classification)
- ``gazetteer``, ``crf``: a dictionary and a CRF tagger trained on the ``train`` set (extraction; see extractors.py)
- a remote model registered with ``modelmill models add NAME --endpoint URL``

A candidate answers in one or both of two ways: ``choice_scores`` (the log-likelihood of each
possible answer; local models only) and ``generate`` (text, for every model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelmill.errors import InputError

BASELINES = ("zero-shot", "few-shot", "tfidf", "gazetteer", "crf", "classical")
CLASSICAL = {"classification": ("tfidf",), "extraction": ("gazetteer", "crf")}  # what `classical` adds per task kind


@dataclass
class Candidate:
    name: str
    kind: str  # model | adapter | few-shot | classical | remote
    base: str | None = None
    adapter: str | None = None
    parameters: int | None = None
    lineage: dict = field(default_factory=dict)  # what identifies its weights (hashes, paths, times)
    info: dict = field(default_factory=dict)  # recorded with results but not part of the identity

    can_score = False  # choice_scores available
    can_generate = True

    def key(self) -> dict:
        return {"name": self.name, "kind": self.kind, **self.lineage}

    def shots(self, items: list[dict], spec, data) -> list[list[dict]] | None:
        """Per item, the training items shown before it (few-shot); None for none."""
        return None

    def open(self) -> None:
        """Load what scoring needs (called once, before the first item)."""

    def close(self) -> None:
        """Free memory (called when its items are done)."""

    def choice_scores(self, records: list[dict], labels: list[str], messages, *, batch_size: int,
                      progress: bool) -> list[dict]:
        raise InputError(f"{self.name} cannot score answers by likelihood", field="scoring",
                         fix="use `scoring: generate` for this candidate")

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int,
                 progress: bool) -> list[str | Exception]:
        raise InputError(f"{self.name} does not generate text", field="--models",
                         fix="use it on classification tasks only")


class LocalModel(Candidate):
    """A registered base model or adapter, loaded with transformers (+ peft) on this machine."""

    can_score = True

    def __init__(self, store, ref: str, *, device: str = "auto", dtype: str = "auto"):
        from modelmill.adapters import AdapterRegistry
        from modelmill.models.registry import ModelRegistry

        base, adapter = AdapterRegistry(store).resolve_ref(ref)
        models = ModelRegistry(store)
        name = f"{base.name}:{adapter.name}" if adapter else base.name
        # the weights' hash (of the GGUF for converted models): the same before and after conversion
        lineage = {"base_hash": models.base_hash(base), "dtype": dtype}
        if adapter is not None:
            lineage.update(adapter_path=adapter.path, adapter_created=str(adapter.created_at),
                           adapter_dataset_hash=adapter.dataset_hash, method=adapter.method)
        super().__init__(name=name, kind="adapter" if adapter else "model", base=base.name,
                         adapter=adapter.name if adapter else None,
                         parameters=(base.info or {}).get("num_parameters"), lineage=lineage)
        self.store, self.ref, self.device, self.dtype = store, name, device, dtype
        self.context = (base.info or {}).get("context_length") or 2048
        self.model = self.tokenizer = None

    def open(self) -> None:
        import torch

        from modelmill.adapters.loading import load_for_inference
        from modelmill.models.loading import native_dtype

        if self.model is not None:
            return
        model, tok, _ = load_for_inference(self.store, self.ref, self.device)
        if hasattr(model, "merge_and_unload"):
            # Scoring never switches adapters: fold the LoRA product into the weights (in float32,
            # before any cast) so each linear is one matmul again.
            model = model.merge_and_unload()
        # auto: bfloat16 where it is native (2.5x faster scoring on an AVX512-BF16 CPU), as serving does
        dtype = native_dtype(next(model.parameters()).device.type) if self.dtype == "auto" else getattr(torch, self.dtype)
        model.to(dtype)
        self.model, self.tokenizer = model, tok
        self.lineage["dtype_used"] = str(dtype).removeprefix("torch.")

    def close(self) -> None:
        self.model = self.tokenizer = None
        import gc

        gc.collect()

    def choice_scores(self, records, labels, messages, *, batch_size, progress):
        from modelmill.evaluate.classification import score_labels

        self.open()
        return score_labels(self.model, self.tokenizer, records, labels, batch_size=batch_size,
                            max_length=min(self.context, 2048), progress=progress, messages=messages)

    def generate(self, conversations, *, max_new_tokens, batch_size, progress):
        self.open()
        return generate_batch(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, max_length=min(self.context, 4096), progress=progress)


class RemoteCandidate(Candidate):
    """A model behind an OpenAI-compatible endpoint: text only, so labels are parsed from answers."""

    def __init__(self, row):
        info = row.info or {}
        # The endpoint is not part of the identity: the same model behind a new address resumes.
        super().__init__(name=row.name, kind="remote", base=row.name, parameters=info.get("num_parameters"),
                         lineage={"remote_model": info.get("remote_model")}, info={"endpoint": row.source})
        self.row = row

    def generate(self, conversations, *, max_new_tokens, batch_size, progress):
        from modelmill.models.remote import RemoteModel

        with RemoteModel.from_row(self.row) as client:
            out = client.chat_many(conversations, concurrency=min(8, batch_size), max_tokens=max_new_tokens,
                                   temperature=0.0)
        return [o if isinstance(o, Exception) else o["text"] for o in out]


class FewShot(Candidate):
    """Another candidate, shown k training items (with their answers) before each test item."""

    def __init__(self, inner: Candidate, k: int, select: str):
        super().__init__(name=f"few-shot-{k}{'-nearest' if select == 'nearest' else ''}:{inner.name}",
                         kind="few-shot", base=inner.base, adapter=inner.adapter, parameters=inner.parameters,
                         lineage={"inner": inner.key(), "k": k, "select": select})
        self.inner, self.k, self.select = inner, k, select
        self._pool = None
        self.can_score, self.can_generate = inner.can_score, inner.can_generate

    def open(self):
        self.inner.open()

    def close(self):
        self.inner.close()

    def shots(self, items, spec, data):
        if not data.train:
            raise InputError(f"{self.name} needs training examples to show", field="train",
                             fix="add `train: DATASET` to the task (or --train), for few-shot and tfidf")
        pool = data.train
        k = min(self.k, len(pool))
        if self.select == "fixed":
            picked = _spread(pool, k, spec)
            return [picked for _ in items]
        if self._pool is None:  # embedded once, not once per chunk
            self._pool = _embed(pool, spec)
        return _nearest(pool, self._pool, items, k, spec)

    def choice_scores(self, records, labels, messages, **kw):
        return self.inner.choice_scores(records, labels, messages, **kw)

    def generate(self, conversations, **kw):
        return self.inner.generate(conversations, **kw)


class TfidfLR(Candidate):
    """TF-IDF + logistic regression (scikit-learn), trained on the task's ``train`` set: the classical
    baseline a fine-tune must beat. Word 1-2-grams, or character 1-3-grams for Chinese/Japanese text."""

    can_generate = False

    def __init__(self):
        super().__init__(name="tfidf-lr", kind="classical", lineage={"sklearn": _version("scikit-learn")})
        self.pipe = None

    def fit_predict(self, train: list[dict], items: list[dict]) -> list[str]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        if self.pipe is None:
            texts = [r["text"] for r in train]
            min_df = 2 if len(texts) >= 100 else 1  # a handful of examples has few repeated n-grams
            if _is_cjk(texts):
                vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=min_df)
            else:
                vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df)
            self.pipe = make_pipeline(vec, LogisticRegression(max_iter=2000, C=10.0))
            try:
                self.pipe.fit(texts, [r["label"] for r in train])
            except ValueError as e:  # one class only, or no words at all
                self.pipe = None
                raise InputError(f"TF-IDF + LR cannot learn from the training set ({e})", field="train",
                                 fix="give a training set with at least two labels and some text")
        return [str(p) for p in self.pipe.predict([r["text"] for r in items])]


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _is_cjk(texts: list[str]) -> bool:
    from modelmill.text import cjk_share

    return cjk_share("".join(texts[:200])) > 0.2


def _spread(pool: list[dict], k: int, spec) -> list[dict]:
    """k fixed examples: for labelled items, round-robin over the labels so every class shows up;
    otherwise the first k."""
    if not pool or "label" not in pool[0]:
        return pool[:k]
    by_label: dict[str, list[dict]] = {}
    for r in pool:
        by_label.setdefault(str(r["label"]), []).append(r)
    out, i = [], 0
    while len(out) < k:
        for lab in sorted(by_label):
            if i < len(by_label[lab]) and len(out) < k:
                out.append(by_label[lab][i])
        i += 1
    return out


def _embed(rows: list[dict], spec):
    """Unit vectors of the rows' text by the bundled MiniLM (long texts: their start)."""
    from modelmill.models.embedder import Embedder

    model = Embedder.default()._load()  # encode() refuses long inputs; selection only needs their start
    return model.encode([spec.task_kind.show(x)[:2000] for x in rows], normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)


def _nearest(pool: list[dict], P, items: list[dict], k: int, spec) -> list[list[dict]]:
    """Per item, the k training items closest to it, never the item itself (when the training
    set holds a copy of a test item, its answer must not be shown)."""
    import numpy as np

    show = spec.task_kind.show
    sims = _embed(items, spec) @ P.T
    out = []
    for it, row in zip(items, np.argsort(-sims, axis=1)):
        text = show(it)
        picked = [pool[j] for j in row[:k + 8] if show(pool[j]) != text][:k]
        out.append(picked[::-1])  # nearest last: the example most like the item sits right before it
    return out


# ---- batched generation ---------------------------------------------------------------------------

def generate_batch(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                   batch_size: int = 16, max_length: int = 4096, progress: bool = True) -> list[str]:
    """Greedy answers to many conversations, batched by length with left padding."""
    import torch
    from tqdm.auto import tqdm

    from modelmill.evaluate.classification import _eval_mode, _pad_id

    device = next(model.parameters()).device
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    room = max(8, max_length - max_new_tokens)
    ids = [x[-room:] for x in ids]  # too long: keep the end, where the question is
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list[str] = [""] * len(ids)
    pad = _pad_id(tokenizer)
    eos = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int) and t >= 0]
    with _eval_mode(model):
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in tqdm(batches, desc="generating", unit="batch", disable=not progress):
            T = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), T), pad, dtype=torch.long)
            att = torch.zeros((len(idx), T), dtype=torch.long)
            for b, i in enumerate(idx):
                x[b, T - len(ids[i]):] = torch.tensor(ids[i])
                att[b, T - len(ids[i]):] = 1
            gen = model.generate(input_ids=x.to(device), attention_mask=att.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                 eos_token_id=eos or None)
            for b, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[b, T:], skip_special_tokens=True).strip()
    return out


# ---- from names to candidates ---------------------------------------------------------------------

def parse_candidates(store, models: str | list[str], *, few_shot: int = 5, few_shot_select: str = "fixed",
                     device: str = "auto", dtype: str = "auto") -> list[Candidate]:
    refs = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    out = [candidate(store, r, few_shot=few_shot, few_shot_select=few_shot_select, device=device, dtype=dtype)
           for r in refs]
    return _unique(out)


CANDIDATE_SOURCES: list = []


def register_candidate_source(source):
    """Add ``source(store, ref, *, device, dtype) -> Candidate | None``: a candidate for names it knows
    (an app, say), asked before registered models. Plugins (``modelmill.candidates`` entry points;
    the built-in apps are one) register theirs on import."""
    if source not in CANDIDATE_SOURCES:
        CANDIDATE_SOURCES.append(source)
    return source


def candidate_sources() -> list:
    from modelmill.plugins import load_plugins

    load_plugins("modelmill.candidates")
    return CANDIDATE_SOURCES


def candidate(store, ref: str, *, few_shot: int = 5, few_shot_select: str = "fixed", device: str = "auto",
              dtype: str = "auto") -> Candidate:
    from modelmill.models.registry import ModelRegistry

    if ref in ("tfidf", "tfidf-lr"):
        return TfidfLR()
    if ref in ("gazetteer", "crf"):
        from modelmill.evaluate.extractors import CRFTagger, Gazetteer

        return Gazetteer() if ref == "gazetteer" else CRFTagger()
    if ref.startswith("few-shot:"):
        inner = candidate(store, ref.split(":", 1)[1], device=device, dtype=dtype)
        return FewShot(inner, few_shot, few_shot_select)
    for source in candidate_sources():
        found = source(store, ref, device=device, dtype=dtype)
        if found is not None:
            return found
    if ":" not in ref:
        from modelmill.adapters import AdapterRegistry
        from modelmill.models.registry import is_remote

        if AdapterRegistry(store).find(ref) is None:
            row = ModelRegistry(store).get(ref)
            if is_remote(row):
                return RemoteCandidate(row)
    return LocalModel(store, ref, device=device, dtype=dtype)


def baselines(store, cands: list[Candidate], names: list[str], kind: str | None = None, **kw) -> list[Candidate]:
    """The baselines named, for every distinct base among ``cands``: the base itself (zero-shot),
    few-shot prompting of it, and the classical ones (TF-IDF + LR for classification, gazetteer and
    CRF for extraction; ``classical`` names those of the task ``kind``)."""
    for n in names:
        if n not in BASELINES:
            raise InputError(f"unknown baseline '{n}'", field="--baselines", fix="use some of: " + ", ".join(BASELINES))
    if "classical" in names:
        if kind not in CLASSICAL:
            raise InputError(f"there is no classical baseline for {kind or 'this'} tasks", field="--baselines",
                             fix="classical baselines exist for " + " and ".join(CLASSICAL) + " tasks; leave it out")
        i = names.index("classical")
        names = names[:i] + [n for n in CLASSICAL[kind] if n not in names] + names[i + 1:]
    bases = []
    for c in cands:
        if c.base and c.kind in ("model", "adapter") and c.base not in bases:
            bases.append(c.base)
    extra: list[Candidate] = []
    for n in names:
        if n in ("tfidf", "gazetteer", "crf"):
            extra.append(candidate(store, n))
            continue
        for b in bases:
            ref = b if n == "zero-shot" else f"few-shot:{b}"
            extra.append(candidate(store, ref, **kw))
    return _unique(cands + extra)


def _unique(cands: list[Candidate]) -> list[Candidate]:
    seen, out = set(), []
    for c in cands:
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out
