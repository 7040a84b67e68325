"""Classical extraction baselines, learned from the task's training set: what a fine-tune must beat,
as TF-IDF + LR is for classification.

    modelmill eval --task people.yaml --models people-lora --baselines zero-shot,classical

- ``gazetteer``: every value the training answers hold, found again in the text (longest first,
  whole words for Latin script), under the field it was most often given for. A value that the
  training texts hold far more often than their answers name it (a common word) is left out.
- ``crf``: a linear-chain conditional random field (CRFsuite, through python-crfsuite) that tags
  each token B-FIELD / I-FIELD / O. Tokens are single characters for Chinese, Japanese and Korean
  and words elsewhere, so it needs no word segmenter. Features: the token, its neighbours two
  either side, pairs of neighbours, its shape, prefix and suffix. The tags come from the training
  answers found in their texts.

Both return one JSON object per item in the shape the training answers have: a field given as a
list there is a list (possibly empty), a field given as one value is the first match (left out when
nothing matches).
"""

from __future__ import annotations

import re
from collections import Counter

from modelmill.errors import InputError
from modelmill.evaluate.candidates import Candidate, _version

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_LATIN_WORD = re.compile(r"[A-Za-z0-9_]")


def item_text(item: dict) -> str:
    """The text an item asks to extract from (a chat item: its last user turn)."""
    if item.get("text"):
        return item["text"]
    for m in reversed(item.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def _values(v) -> list[str]:
    out = []
    for x in (v if isinstance(v, list) else [v]):
        s = "" if x is None or isinstance(x, bool) else str(x).strip()
        if s:
            out.append(s)
    return out


def field_shapes(train: list[dict]) -> dict[str, bool]:
    """Each field of the training answers, in first-seen order: True where most answers give a list."""
    lists, seen = Counter(), Counter()
    for it in train:
        for k, v in it["expected"].items():
            seen[k] += 1
            lists[k] += isinstance(v, list)
    return {k: lists[k] * 2 >= seen[k] for k in seen}


def shape_answer(found: list[tuple[str, str]], shapes: dict[str, bool]) -> dict:
    """(field, value) matches in text order -> the answer object (see the module docstring)."""
    by_field: dict[str, list[str]] = {}
    for f, v in found:
        vals = by_field.setdefault(f, [])
        if v not in vals:
            vals.append(v)
    out = {}
    for f, is_list in shapes.items():
        vals = by_field.get(f, [])
        if is_list:
            out[f] = vals
        elif vals:
            out[f] = vals[0]
    return out


def _need_train(train, name):
    if not train:
        raise InputError(f"{name} learns from the task's training set, and there is none", field="train",
                         fix="add `train: DATASET` to the task (or --train)")


class Gazetteer(Candidate):
    """The dictionary baseline (see the module docstring)."""

    can_generate = False
    extracts = True
    MIN_PRECISION = 0.3  # an entry must be an answer at least this often where the training texts hold it

    def __init__(self):
        super().__init__(name="gazetteer", kind="classical", lineage={"method": "gazetteer-1"})
        self.pattern = None
        self.fields: dict[str, str] = {}
        self.shapes: dict[str, bool] = {}

    def fit_predict(self, train: list[dict], items: list[dict]) -> list[dict]:
        if self.pattern is None:
            self._fit(train)
        return [shape_answer(self._find(item_text(it)), self.shapes) for it in items]

    def _fit(self, train: list[dict]) -> None:
        _need_train(train, "the gazetteer")
        self.shapes = field_shapes(train)
        named: dict[str, Counter] = {}
        for it in train:
            for f, v in it["expected"].items():
                for s in _values(v):
                    if len(s) >= 2:
                        named.setdefault(s.casefold(), Counter())[f] += 1
        if not named:
            raise InputError("the training answers hold no values of two characters or more to look for",
                             field="train", fix="give a training set whose answers name the entities")
        self.fields = {k: c.most_common(1)[0][0] for k, c in named.items()}
        self.pattern = _alternation(self.fields)
        # drop entries that the training texts hold much more often than their answers name them
        occurs = Counter(m.group(0).casefold() for it in train for m in self.pattern.finditer(item_text(it)))
        keep = {k: f for k, f in self.fields.items()
                if sum(named[k].values()) >= self.MIN_PRECISION * max(1, occurs[k])}
        if keep and len(keep) < len(self.fields):
            self.fields = keep
            self.pattern = _alternation(keep)

    def _find(self, text: str) -> list[tuple[str, str]]:
        return [(self.fields[m.group(0).casefold()], m.group(0)) for m in self.pattern.finditer(text)
                if m.group(0).casefold() in self.fields]


def _alternation(entries) -> re.Pattern:
    parts = []
    for e in sorted(entries, key=lambda s: (-len(s), s)):
        left = r"(?<![A-Za-z0-9_])" if _LATIN_WORD.match(e[0]) else ""
        right = r"(?![A-Za-z0-9_])" if _LATIN_WORD.match(e[-1]) else ""
        parts.append(left + re.escape(e) + right)
    return re.compile("|".join(parts), re.IGNORECASE)


# ---- the CRF -----------------------------------------------------------------------------------

def tokens(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _shape(w: str) -> str:
    if w[0] in "0123456789":
        return "digit"
    if re.match(rf"[{_CJK}]", w):
        return "cjk"
    if w.isupper():
        return "upper"
    if w[:1].isupper():
        return "title"
    if w.isalpha():
        return "lower"
    return "other"


def features(toks: list[tuple[str, int, int]]) -> list[dict]:
    words = [t[0].lower() for t in toks]
    n = len(words)

    def at(j):
        return words[j] if 0 <= j < n else ("<s>" if j < 0 else "</s>")

    out = []
    for i, w in enumerate(words):
        out.append({"bias": 1.0, "w": w, "shape": _shape(toks[i][0]), "p2": w[:2], "s2": w[-2:],
                    "w-2": at(i - 2), "w-1": at(i - 1), "w+1": at(i + 1), "w+2": at(i + 2),
                    "w-1|w": at(i - 1) + "|" + w, "w|w+1": w + "|" + at(i + 1),
                    "w-2|w-1": at(i - 2) + "|" + at(i - 1), "w+1|w+2": at(i + 1) + "|" + at(i + 2)})
    return out


def bio_tags(text: str, toks: list[tuple[str, int, int]], expected: dict) -> list[str]:
    """B-FIELD / I-FIELD / O per token, from the answer's values found in the text (longest first;
    a value whose ends fall inside a token, or over tokens already tagged, is skipped)."""
    tags = ["O"] * len(toks)
    starts = {t[1]: i for i, t in enumerate(toks)}
    ends = {t[2]: i for i, t in enumerate(toks)}
    folded = text.casefold() if len(text.casefold()) == len(text) else None
    pairs = sorted(((f, s) for f, v in expected.items() for s in _values(v)), key=lambda p: -len(p[1]))
    for f, s in pairs:
        hay, needle = (folded, s.casefold()) if folded is not None and len(s.casefold()) == len(s) else (text, s)
        at = hay.find(needle)
        while at != -1:
            a, b = starts.get(at), ends.get(at + len(s))
            if a is not None and b is not None and all(t == "O" for t in tags[a:b + 1]):
                tags[a] = f"B-{f}"
                for k in range(a + 1, b + 1):
                    tags[k] = f"I-{f}"
            at = hay.find(needle, at + 1)
    return tags


def spans_of(tags: list[str], toks: list[tuple[str, int, int]], text: str) -> list[tuple[str, str]]:
    """(field, text) of each run of B/I tags, in order; an I after another field starts a new run."""
    out, cur, a, b = [], None, 0, 0
    for tag, (_, s, e) in zip(tags + ["O"], toks + [("", len(text), len(text))]):
        kind, _, f = tag.partition("-")
        if cur is not None and (kind != "I" or f != cur):
            out.append((cur, text[a:b]))
            cur = None
        if kind in ("B", "I") and cur is None:
            cur, a = f, s
        if cur is not None:
            b = e
    return out


class CRFTagger(Candidate):
    """The sequence-labelling baseline (see the module docstring)."""

    can_generate = False
    extracts = True
    PARAMS = {"c1": 0.05, "c2": 0.01, "max_iterations": 200, "feature.possible_transitions": True}

    def __init__(self):
        super().__init__(name="crf", kind="classical",
                         lineage={"method": "crf-1", "python-crfsuite": _version("python-crfsuite")})
        self.tagger = None
        self.shapes: dict[str, bool] = {}

    def fit_predict(self, train: list[dict], items: list[dict]) -> list[dict]:
        if self.tagger is None:
            self._fit(train)
        out = []
        for it in items:
            text = item_text(it)
            toks = tokens(text)
            tags = self.tagger.tag(features(toks)) if toks else []
            out.append(shape_answer(spans_of(list(tags), toks, text), self.shapes))
        return out

    def _fit(self, train: list[dict]) -> None:
        import os
        import tempfile

        try:
            import pycrfsuite
        except ImportError:  # pragma: no cover - a dependency of the package
            raise InputError("the CRF baseline needs python-crfsuite", field="--baselines",
                             fix="pip install python-crfsuite") from None
        _need_train(train, "the CRF")
        self.shapes = field_shapes(train)
        trainer = pycrfsuite.Trainer(verbose=False)
        tagged = 0
        for it in train:
            text = item_text(it)
            toks = tokens(text)
            if not toks:
                continue
            tags = bio_tags(text, toks, it["expected"])
            tagged += any(t != "O" for t in tags)
            trainer.append(features(toks), tags)
        if not tagged:
            raise InputError("no training answer's values were found in their texts, so there is nothing to tag",
                             field="train", fix="the CRF learns values that appear word for word in the text")
        trainer.set_params(self.PARAMS)
        fd, path = tempfile.mkstemp(suffix=".crfsuite")
        os.close(fd)
        try:
            trainer.train(path)
            with open(path, "rb") as f:
                model = f.read()
        finally:
            os.unlink(path)
        self.tagger = pycrfsuite.Tagger()
        self.tagger.open_inmemory(model)
