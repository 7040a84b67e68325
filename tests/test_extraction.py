"""Extraction scored the way people judge it (entity by entity, per field, spans), bad extraction
data refused with its line, and the classical baselines (gazetteer, CRF) beside every model."""

from __future__ import annotations

import random

import pytest
from conftest import CLI, write_jsonl

from modelmill.data.formats.base import Where
from modelmill.errors import InputError
from modelmill.evaluate.extraction import ExtractionTask, element_counts, field_counts, predicted_spans
from modelmill.evaluate.extractors import CRFTagger, Gazetteer, bio_tags, spans_of, tokens

TASK = ExtractionTask()


def test_list_fields_are_scored_per_entity_and_whole_fields_beside_them():
    gold = {"person": ["Ada", "Alan", "Grace"], "city": "London"}
    pred = {"person": ["alan", " Ada ", "Bob"], "city": "london", "mood": "happy"}
    assert element_counts(pred, gold) == {"person": [2, 3, 3], "city": [1, 1, 1], "mood": [0, 1, 0]}
    assert field_counts(pred, gold) == (1, 3, 2)          # person as a whole is wrong, city right
    assert field_counts({"person": ["Grace", "Alan", "Ada"]}, gold)[0] == 1  # the order of a list does not count
    # an empty field is a field left out: a baseline answering every known field, most of them [], is not
    # charged for them, and an item whose gold fields are all empty is right when nothing is found
    assert field_counts({"person": ["Ada", "Alan", "Grace"], "city": "London", "pet": [], "x": None}, gold) == (2, 2, 2)
    assert field_counts({}, {"person": []}) == (0, 0, 0)

    items = [{"text": "t", "expected": gold}, {"text": "u", "expected": {"person": [], "city": "Paris"}}]
    res = TASK.score(_Fixed([pred, {"person": [], "city": "Rome"}]), items, None, _Data([]))
    m = TASK.metrics(res, None, None)
    # elements: 3 right of 6 predicted (2+1+1 +0+1+... ) and 5 expected
    assert (m["entity_precision"], m["entity_recall"]) == pytest.approx((3 / 6, 3 / 5))
    assert m["entity_f1"] == pytest.approx(2 * 0.5 * 0.6 / 1.1)
    assert m["per_class"]["person"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["city"]["support"] == 2 and "mood" not in m["per_class"]
    assert m["labels"] == ["person", "city"]              # most entities first
    assert m["exact_match"] == 0.0 and "span_f1" not in m
    assert [r["f1"] for r in res] == pytest.approx([2 * 0.6 * 0.75 / 1.35, 0.0])
    # fields counted by name, whatever their values' types (a scalar here, a list there, or absent)
    items = [{"text": "a", "expected": {"city": "Oslo"}}, {"text": "b", "expected": {"city": ["Rome", "Oslo"], "n": 3}},
             {"text": "c", "expected": {"n": 4}}]
    m = TASK.metrics(TASK.score(_Fixed([{"city": "Oslo"}, {"city": ["Oslo"]}, {}]), items, None, _Data([])), None, None)
    assert m["labels"] == ["city", "n"] and m["per_class"]["city"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["n"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_spans_score_where_the_entities_are():
    text = "Ada met Ada in Paris"
    item = TASK.from_raw({"text": text, "output": {"person": ["Ada"], "city": "Paris"},
                          "spans": [{"field": "person", "start": 0, "end": 3}, [8, 11, "person"],
                                    {"label": "city", "start": 15, "end": 20}]}, Where("t.jsonl", 1), None)
    assert predicted_spans({"person": ["Ada"], "city": "Paris"}, text) == {("person", 0, 3), ("person", 8, 11),
                                                                            ("city", 15, 20)}
    res = TASK.score(_Fixed([{"person": ["Ada"], "city": "Rome"}]), [item], None, _Data([]))
    m = TASK.metrics(res, None, None)
    assert res[0]["spans"] == [2, 2, 3] and m["span_f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("record,field,needle", [
    ({"text": "x", "output": {"person": {"first": "Ada"}}}, "output.person", "must be a string or number"),
    ({"text": "x", "output": {"person": [["Ada"]]}}, "output.person", "a list holding a list"),
    ({"text": "x", "output": "{not json"}, "output", "is not JSON"),
    ({"text": "abc", "output": {"p": "a"}, "spans": [{"field": "p", "start": 1, "end": 9}]}, "spans[0]",
     "[1, 9) lies outside the text, which has 3 characters"),
    ({"text": "abc", "output": {"p": "a"}, "spans": [{"field": "p", "start": "0", "end": 1}]}, "spans[0]",
     "integer start and end"),
])
def test_bad_extraction_data_names_the_line_and_field(record, field, needle):
    with pytest.raises(InputError) as info:
        TASK.from_raw(record, Where("data.jsonl", 7), None)
    e = info.value
    assert e.file == "data.jsonl" and e.line == 7 and e.field == field and needle in e.message and e.fix


class _Fixed:
    """A candidate whose answers are given (to test the scoring alone)."""

    extracts = True
    kind = "classical"

    def __init__(self, answers):
        self.answers = answers

    def fit_predict(self, train, items):
        return self.answers[:len(items)]


# ---- the classical baselines ------------------------------------------------------------------------

FIRST = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Edsger", "Donald", "Frances", "Ken", "Margaret", "Tim",
         "Radia", "Niklaus", "Sophie", "John", "Hedy", "Dennis", "Karen", "Guido", "Anita"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Lisbon", "Dublin"]
ZH_NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周杰", "吴昊", "徐丽", "孙强"]
ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆"]


def people(n: int, names: list[str], cities: list[str], seed: int, zh: bool = False) -> list[dict]:
    rng = random.Random(seed)
    en = ["{a} met {b} in {c} last week.", "Yesterday {a} flew to {c} with {b}.", "In {c}, {a} and {b} opened a shop.",
          "{a} called {b} from {c}."]
    cn = ["{a}和{b}上周在{c}见面了。", "昨天{a}带着{b}去了{c}。", "{a}在{c}给{b}打了电话。", "在{c}，{a}和{b}开了一家店。"]
    out = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        c = rng.choice(cities)
        text = rng.choice(cn if zh else en).format(a=a, b=b, c=c)
        out.append({"text": text, "expected": {"person": [a, b], "city": c}})
    return out


def _f1(cand, train, test):
    res = TASK.score(cand, test, None, _Data(train))
    return TASK.metrics(res, None, None)


class _Data:
    def __init__(self, train):
        self.train = train


@pytest.mark.parametrize("zh", [False, True], ids=["english-words", "chinese-characters"])
def test_gazetteer_finds_what_it_saw_and_the_crf_learns_the_context(zh):
    names, cities = (ZH_NAMES, ZH_CITIES) if zh else (FIRST, CITIES)
    seen, unseen = names[: len(names) // 2], names[len(names) // 2:]
    train = people(60, seen, cities, seed=1, zh=zh)
    test_seen = people(15, seen, cities, seed=2, zh=zh)
    test_unseen = people(15, unseen, cities, seed=3, zh=zh)

    gaz = Gazetteer()
    m = _f1(gaz, train, test_seen)
    assert m["entity_f1"] == 1.0 and m["exact_match"] == 1.0
    m = _f1(gaz, train, test_unseen)
    assert m["per_class"]["person"]["recall"] == 0.0 and m["per_class"]["city"]["f1"] == 1.0

    crf = CRFTagger()
    m = _f1(crf, train, test_unseen)   # names it never saw, in sentences shaped like the training ones
    assert m["per_class"]["person"]["recall"] >= 0.6, m
    assert m["entity_f1"] > 0.7, m
    # answers keep the training answers' shapes: a list for person, one value for city
    out = crf.fit_predict(train, test_seen[:1])[0]
    assert isinstance(out["person"], list) and isinstance(out["city"], str)


def test_bio_tags_round_trip_through_spans():
    text = "Ada Lovelace met Alan in London."
    toks = tokens(text)
    tags = bio_tags(text, toks, {"person": ["Ada Lovelace", "Alan"], "city": "london"})
    assert tags[:4] == ["B-person", "I-person", "O", "B-person"] and tags[5] == "B-city"
    assert spans_of(tags, toks, text) == [("person", "Ada Lovelace"), ("person", "Alan"), ("city", "London")]
    zh = "张伟在北京。"
    assert [t[0] for t in tokens(zh)] == list(zh)
    assert spans_of(bio_tags(zh, tokens(zh), {"person": ["张伟"], "city": "北京"}), tokens(zh), zh) == \
        [("person", "张伟"), ("city", "北京")]


def test_the_gazetteer_drops_common_words_and_matches_whole_words():
    train = [{"text": "Art is on the table in the art room", "expected": {"topic": "art"}},
             {"text": "the table the table the table", "expected": {"topic": "the"}}]
    gaz = Gazetteer()
    out = gaz.fit_predict(train, [{"text": "Start the art class", "expected": {"topic": "art"}}])
    assert out == [{"topic": "art"}]   # not the "art" inside "Start"; "the" (named 1 time in 8) is no entity


# ---- as a user runs it ------------------------------------------------------------------------------

def test_eval_puts_the_classical_baselines_beside_the_model(cli_tiny: CLI, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": r["text"], "output": r["expected"]}
                                           for r in people(40, FIRST[:10], CITIES, seed=1)])
    write_jsonl(tmp_path / "test.jsonl", [{"text": r["text"], "output": r["expected"]}
                                          for r in people(8, FIRST[5:15], CITIES, seed=2)])
    out = cli_tiny("eval", "--kind", "extraction", "--data", tmp_path / "test.jsonl", "--train",
                   tmp_path / "train.jsonl", "--models", "tiny", "--baselines", "classical", "--max-new-tokens", "8",
                   "--details", "--report", tmp_path / "r.html").stdout
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split()[3:6] == ["ENTITY-F1", "ENTITY-PRECISION", "ENTITY-RECALL"], out
    assert "SPAN-F1" not in header
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line[:1].isdigit()}
    assert set(rows) == {"tiny", "gazetteer", "crf"} and rows["crf"][2] == "classical"
    assert float(rows["gazetteer"][3]) > float(rows["tiny"][3])
    assert "person" in out and "entities" in out and "worst items" in out
    html = (tmp_path / "r.html").read_text()
    assert "F1 per field (entities)" in html and "gazetteer" in html
    # a classical baseline of the wrong kind is refused before anything is scored
    bad = cli_tiny("eval", "--kind", "extraction", "--data", tmp_path / "test.jsonl", "--train",
                   tmp_path / "train.jsonl", "--models", "tfidf", ok=False)
    assert "tfidf-lr is a classification baseline" in bad.stderr and "gazetteer or crf" in bad.stderr
    nodata = cli_tiny("eval", "--kind", "extraction", "--data", tmp_path / "test.jsonl", "--models", "crf", ok=False)
    assert "crf learns from the task's training set" in nodata.stderr
