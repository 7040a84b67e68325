"""How well a dialogue bot does on held-out dialogues (CrossWOZ's shape), and the classical baseline to beat.

    nlu = await evaluate_nlu(services, bot, test)       # user dialogue-act F1 (act, domain, slot, value)
    run = await evaluate_dialogues(services, bot, test)  # database-query match, inform and success rates
    base = TfidfActs.fit(train, lexicon=table_values)    # TF-IDF + one-vs-rest logistic regression

Understanding is scored turn by turn with the dataset's own previous system turn as context. Whole
dialogues are replayed with the dataset's user turns through ``bot_turn`` (state, lookup, policy, reply):
 - database-query match: at each system turn, the constraints the bot tracked for every domain the
   dataset's wizard searched are the wizard's search (``db_query``), slot by slot both ways, names aside;
 - inform: every sub-goal over a table (hotel, restaurant, attraction) got an entity that meets the
   goal's constraints (where no row does, as CrossWOZ's goals sometimes ask, any entity offered
   instead); success: inform, and every slot the goal asks about was said with the table's
   value of that entity (acts: the policy chose it; words: the answer module's reply contains it).
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import Counter

from modelmill.apps import dialogue as dlg
from modelmill.apps.bot_data import user_turns

ENTITY_DOMAINS = ("景点", "餐馆", "酒店")


def prf(pred: list[list], gold: list[list]) -> dict:
    """Micro precision, recall and F1 of predicted against gold acts, over all turns."""
    tp = fp = fn = 0
    for p, g in zip(pred, gold):
        pc, gc = Counter(dlg.act_key(a) for a in p), Counter(dlg.act_key(a) for a in g)
        both = sum((pc & gc).values())
        tp += both
        fp += sum(pc.values()) - both
        fn += sum(gc.values()) - both
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
            "turns": len(gold)}


def prf_by_act(pred: list[list], gold: list[list]) -> dict:
    """``prf`` for each act type (Inform, Request, General, ...) on its own."""
    kinds = sorted({a[0] for acts in [*gold, *pred] for a in acts})
    return {k: prf([[a for a in p if a[0] == k] for p in pred], [[a for a in g if a[0] == k] for g in gold])
            for k in kinds}


def turns_of(dialogues: list[dict]) -> list[tuple[str | None, str, list]]:
    return [(prev, m["content"], m["dialog_act"]) for d in dialogues for prev, m in user_turns(d)]


# ----------------------------------------------------------------------------- the classical baseline


class TfidfActs:
    """TF-IDF over character n-grams with one-vs-rest logistic regression for each (act, domain, slot);
    an Inform's value is the longest lexicon value of that slot found in the utterance (the lexicon: every
    value seen in training, and the table's own values of the slot's column)."""

    def __init__(self, vectorizer, classifier, labels, lexicon):
        self.vectorizer, self.classifier, self.labels, self.lexicon = vectorizer, classifier, labels, lexicon

    @classmethod
    def fit(cls, dialogues: list[dict], lexicon: dict | None = None, threshold: float = 0.5) -> TfidfActs:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.preprocessing import MultiLabelBinarizer

        texts, ys = [], []
        lex: dict = {k: set(v) for k, v in (lexicon or {}).items()}
        for prev, text, acts in turns_of(dialogues):
            texts.append(_features(prev, text))
            ys.append({"|".join(str(x) for x in a[:3]) for a in acts})
            for a in acts:
                if a[0] in ("Inform", "Select") and a[3] not in dlg.NONE:
                    lex.setdefault((a[1], a[2]), set()).add(str(a[3]))
        binarizer = MultiLabelBinarizer()
        y = binarizer.fit_transform(ys)
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
        x = vec.fit_transform(texts)
        clf = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000), n_jobs=1).fit(x, y)
        longest_first = {k: sorted(v, key=lambda s: (-len(s), s)) for k, v in lex.items()}  # ties: the same every run
        out = cls(vec, clf, list(binarizer.classes_), longest_first)
        out.threshold = threshold
        return out

    def predict(self, prev: str | None, text: str) -> list[list]:
        probs = self.classifier.predict_proba(self.vectorizer.transform([_features(prev, text)]))[0]
        acts = []
        for label, p in zip(self.labels, probs):
            if p < self.threshold:
                continue
            act, domain, slot = label.split("|")
            if act == "Inform" and "-" in slot:  # 酒店设施-早餐服务: the label carries the item; the value is 是
                acts.append([act, domain, slot, "是"])
                continue
            if act in ("Inform", "Select"):
                value = next((v for v in self.lexicon.get((domain, slot), []) if v and v in text), None)
                if value is None:
                    continue
                acts.append([act, domain, slot, value])
            elif act == "Request":
                acts.append([act, domain, slot, ""])
            else:
                acts.append([act, domain, slot, "none"])
        return acts


def _features(prev: str | None, text: str) -> str:
    return text  # the user's words only (the acts are the user's)


def table_lexicon(store, tables: dict[str, str]) -> dict:
    """(domain, slot) -> the text values of the table column of that name (list cells item by item)."""
    from modelmill.apps.tables import LookupTables

    out: dict = {}
    lt = LookupTables(store)
    for domain, table in tables.items():
        rows, _ = lt.lookup(table, {}, limit=100_000)
        for r in rows:
            for col, cell in r.items():
                for v in cell if isinstance(cell, list) else [cell]:
                    if isinstance(v, str) and 1 < len(v) <= 40:
                        out.setdefault((domain, col), set()).add(v)
    return out


# ----------------------------------------------------------------------------- the bot's modules, turn by turn


async def evaluate_nlu(services, bot, dialogues: list[dict], concurrency: int = 16, examples: int = 5) -> dict:
    """Dialogue-act F1 of the bot's intent and extract modules on every user turn, overall and by act
    type (``by_act``), with the first ``examples`` turns' gold and predicted acts."""
    from modelmill.apps.bots import understand

    turns = turns_of(dialogues)
    sem = asyncio.Semaphore(concurrency)

    async def one(prev, text):
        async with sem:
            acts, _ = await understand(services, bot, text, prev, [])
            return acts

    pred = await asyncio.gather(*(one(prev, text) for prev, text, _ in turns))
    gold = [g for _, _, g in turns]
    return {**prf(pred, gold), "by_act": prf_by_act(pred, gold), "examples": [
        {"user": t, "gold": dlg.acts_text(g), "predicted": dlg.acts_text(p)} for (_, t, g), p in
        list(zip(turns, pred))[:examples]]}


def _norm(v) -> str:
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return "".join(str(v).split()).casefold()


async def evaluate_dialogues(services, bot, dialogues: list[dict], concurrency: int = 8) -> dict:
    """Replay each dialogue's user turns through the bot (state held here: nothing is stored); database-query
    match, inform and success."""
    from modelmill.apps.bots import run_turn

    sem = asyncio.Semaphore(concurrency)

    async def replay(d):
        async with sem:
            state, previous, results = dlg.new_state(), None, []
            msgs = d["messages"]
            for i, m in enumerate(msgs):
                if m["role"] != "user":
                    continue
                r = await run_turn(services, bot, m["content"], state, previous)
                previous = r["reply"]
                r["state"] = copy.deepcopy(state)
                gold = msgs[i + 1] if i + 1 < len(msgs) and msgs[i + 1]["role"] == "system" else None
                results.append((r, gold))
            return d, results

    replays = await asyncio.gather(*(replay(d) for d in dialogues))
    out = await asyncio.to_thread(score_replays, services.store, bot, replays)
    ms = sorted(r["ms"] for _, results in replays for r, _ in results)
    out["turn_ms_p50"] = round(ms[len(ms) // 2], 1) if ms else None
    return out


def replay_oracle(store, bot, dialogues: list[dict]) -> dict:
    """The same replay with the dataset's own user acts instead of the modules' (an upper bound for the
    tracking, lookup and policy): no model is called, and there are no words to score."""
    from modelmill.apps.bots import next_step, turn_domain

    replays = []
    for d in dialogues:
        state, results = dlg.new_state(), []
        msgs = d["messages"]
        for i, m in enumerate(msgs):
            if m["role"] != "user":
                continue
            acts = [list(a) for a in m["dialog_act"]]
            dlg.update_state(state, acts)
            domain, general = turn_domain(bot, state, acts, {})
            plan, _ = next_step(store, bot, state, domain, general)
            gold = msgs[i + 1] if i + 1 < len(msgs) and msgs[i + 1]["role"] == "system" else None
            results.append(({"state": copy.deepcopy(state), "system_acts": plan["acts"], "reply": ""}, gold))
        replays.append((d, results))
    return score_replays(store, bot, replays)


def _terms(v) -> tuple:
    """A value as a set of terms (``烧饼 鲁菜`` and ``鲁菜 烧饼`` are one constraint)."""
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return tuple(sorted(_norm(t) for t in str(v).split() if _norm(t)))


_NEAR = re.compile(r"id=(\d+)的周边(\S+?)里")


def score_replays(store, bot, replays: list) -> dict:
    """The scores of replayed dialogues. Database-query match: at each system turn, for every domain the
    wizard searched, the bot's tracked constraints and the wizard's are the same set (names aside).
    Inform: each sub-goal over a table is met by its own entity among those the bot offered (taken in
    sub-goal order, one entity per sub-goal, the one its asked slots were answered about; "near sub-goal N" checked against N's entity's 周边 list;
    where no row can meet a sub-goal, the nearest entity offered counts). Success: inform, and every slot
    a sub-goal asks about was informed with its entity's value (acts), and said in the reply (words)."""
    from modelmill.apps.bots import table_rows

    q_turns = q_match = 0
    slot_total = slot_right = 0
    n = informed = succeeded_acts = succeeded_words = 0
    tables = {dom: {str(x.get(spec.name_field)): x for x in table_rows(store, spec, bot.max_rows)}
              for dom, spec in bot.domains.items() if dom in ENTITY_DOMAINS}
    for d, results in replays:
        for r, gold in results:
            query = (gold or {}).get("db_query") or {}
            wanted = {dom: {s: v for s, v in c.items() if s not in ("selectedResults", "名称") and v not in dlg.NONE}
                      for dom, c in query.items() if isinstance(c, dict)}
            wanted = {dom: c for dom, c in wanted.items() if c and dom in bot.domains}
            if not wanted:
                continue
            q_turns += 1
            ok = True
            for dom, c in wanted.items():
                have = {s: v for s, v in r["state"]["constraints"].get(dom, {}).items() if s != "名称" and v}
                for s in set(c) | set(have):
                    slot_total += 1
                    same = s in c and s in have and _terms(have[s]) == _terms(c[s])
                    slot_right += same
                    ok = ok and same
            q_match += ok
        final = results[-1][0]["state"] if results else dlg.new_state()
        said = [(a, r["reply"]) for r, _ in results for a in r["system_acts"] if a[0] == "Inform"]
        subgoals: dict = {}
        for sid, dom, slot, value, *_ in d.get("goal") or []:
            if dom in tables:
                subgoals.setdefault((sid, dom), []).append((slot, value))
        if not subgoals:
            continue
        n += 1
        all_in, all_acts, all_words = True, True, True
        assigned: dict = {}  # sub-goal id -> (domain, row)
        used: set = set()
        for (sid, dom), items in sorted(subgoals.items()):
            by_name = tables[dom]
            cons = {s: (" ".join(v) if isinstance(v, list) else v) for s, v in items
                    if v not in ("", []) and not (isinstance(v, str) and "出现在" in v)}
            near = [_NEAR.search(v) for s, v in items if isinstance(v, str) and "出现在" in v]

            def meets(row, cons=cons, near=near):
                if not dlg.row_matches(row, cons):
                    return False
                for m in (x for x in near if x):
                    other = assigned.get(int(m.group(1)))
                    if other is None or str(row.get("名称")) not in [str(x) for x in other[1].get(m.group(2)) or []]:
                        return False
                return True

            offered = [by_name[o] for o in final["offered"].get(dom, []) if o in by_name and (dom, o) not in used]
            good = [x for x in offered if meets(x)]
            if not good and offered and not any(meets(x) for x in by_name.values()):
                good = offered  # no row can meet this sub-goal: the nearest one offered instead is right
            if not good:
                all_in = all_acts = all_words = False
                continue
            asks = [s for s, v in items if v in ("", [])]

            def answered(row, asks=asks, dom=dom):  # how many asked slots were said with this row's values
                return sum(any(a[1] == dom and a[2] == s and str(a[3]) == dlg.show(row.get(s)) for a, _ in said)
                           for s in asks)

            # the entity the dialogue went on about (the user may take another than the first offered)
            row = max(reversed(good), key=answered)
            used.add((dom, str(row.get("名称"))))
            assigned[sid] = (dom, row)
            for slot in asks:
                want = dlg.show(row.get(slot))
                hits = [(a, reply) for a, reply in said if a[1] == dom and a[2] == slot and str(a[3]) == want]
                all_acts = all_acts and bool(hits)
                all_words = all_words and any(_first(a[3]) in _norm(reply) for a, reply in hits)
        informed += all_in
        succeeded_acts += all_in and all_acts
        succeeded_words += all_in and all_acts and all_words
    return {"dialogues": len(replays), "scored_dialogues": n,
            "db_query_match": round(q_match / q_turns, 4) if q_turns else None, "db_query_turns": q_turns,
            "db_slot_accuracy": round(slot_right / slot_total, 4) if slot_total else None,
            "inform": round(informed / n, 4) if n else None,
            "success_acts": round(succeeded_acts / n, 4) if n else None,
            "success_words": round(succeeded_words / n, 4) if n else None}


def _first(value) -> str:
    """The first item of a listed value (``A，B，C``), normalised, as the reply must contain it."""
    return _norm(re.split(r"[，,]", str(value))[0])
