"""What a task-oriented dialogue bot knows without a model: dialogue acts, the module prompts, state tracking,
matching a tracked constraint against a business table's cell, and the policy that picks what to say.

A dialogue act is ``[act, domain, slot, value]`` (CrossWOZ's shape): ``Inform 餐馆 人均消费 100-150元``,
``Request 餐馆 地址``, ``General thank``. Modules read and write acts as one line each, which is what the
training data the builder makes from a dataset's annotations teaches them, and what they are parsed back from.

    state = new_state()
    update_state(state, acts)                         # constraints, requested slots, active domain
    rows = [r for r in table_rows if matches(r, state["constraints"]["酒店"])]
    plan = policy(state, spec_domain, rows)           # the system acts (or the missing slot to ask for)

Everything here is plain Python (no engine, no store): the runtime (``bots.py``), the dataset builder
(``bot_data.py``) and the benchmark share it, so training data and serving prompts cannot drift apart.
"""

from __future__ import annotations

import re

MODULES = ("intent", "extract", "followup", "answer")
YES = ("是", "有", "yes", "true")
GENERAL = "General"
NONE = ("", "none", None)

# ----------------------------------------------------------------------------- acts as text


def act_line(act: list) -> str:
    """``["Inform", "餐馆", "人均消费", "100-150元"]`` -> ``Inform 餐馆 人均消费 100-150元``."""
    parts = [str(x) for x in act[:4] if x not in NONE]
    return " ".join(" ".join(p.split()) for p in parts)


def acts_text(acts: list) -> str:
    return "\n".join(dict.fromkeys(act_line(a) for a in acts if a)) or "none"


def parse_acts(text: str) -> list[list[str]]:
    """The acts in a module's answer, one a line; a line that is not an act is skipped."""
    out: list[list[str]] = []
    for line in (text or "").replace(";", "\n").splitlines():
        words = line.strip().strip("-*•").split(None, 3)
        if not words or words[0] not in ("Inform", "Request", "General", "Select", "Recommend", "NoOffer"):
            continue
        if words[0] == GENERAL:
            act = [GENERAL, words[1] if len(words) > 1 else "none", "none", "none"]
        elif len(words) < 3:
            act = [words[0], words[1] if len(words) > 1 else "", "none", "none"] if words[0] == "NoOffer" else None
            if act is None:
                continue
        else:
            value = words[3].strip() if len(words) > 3 else ""
            act = [words[0], words[1], words[2], value]
        if act not in out:
            out.append(act)
    return out


def act_key(act: list) -> tuple:
    """An act as compared for F1: act, domain, slot and value (spaces and case ignored)."""
    return tuple("".join(str(x).split()).casefold() if x not in NONE else "none" for x in (list(act) + [""] * 4)[:4])


# ----------------------------------------------------------------------------- module prompts

INSTRUCTIONS = {
    "intent": "Label the user's last turn: its domain and acts.",
    "extract": "List the user's dialogue acts in the last turn, one a line: act domain slot value.",
    "followup": "Ask the user for the missing information, in one short question in the user's language.",
    "answer": "Reply to the user, saying exactly what the acts say, in the user's language.",
}


def intent_label(acts: list) -> str:
    """The intent module's target: the turn's domains and act types (``餐馆 Inform Request``, ``General thank``)."""
    general = [a[1] for a in acts if a[0] == GENERAL]
    domains = list(dict.fromkeys(a[1] for a in acts if a[0] != GENERAL and a[1] not in NONE))
    kinds = list(dict.fromkeys(a[0] for a in acts if a[0] != GENERAL))
    parts = []
    if domains:
        parts.append(" ".join(domains) + " " + " ".join(kinds))
    if general:
        parts.append(GENERAL + " " + " ".join(dict.fromkeys(general)))
    return "\n".join(parts) or "none"


def parse_intent(text: str) -> dict:
    """``{"domains": [...], "acts": [...], "general": [...]}`` from the intent module's answer."""
    out: dict = {"domains": [], "acts": [], "general": []}
    for line in (text or "").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == GENERAL:
            out["general"] += [w for w in words[1:] if w not in out["general"]]
            continue
        for w in words:
            key = "acts" if w in ("Inform", "Request", "Select", "Recommend", "NoOffer") else "domains"
            if w not in out[key]:
                out[key].append(w)
    return out


def context_text(previous_system: str | None, user: str) -> str:
    prev = f"系统: {' '.join(previous_system.split())}\n" if previous_system else ""
    return f"{prev}用户: {' '.join(user.split())}"


def module_messages(module: str, *, user: str = "", previous: str | None = None, acts: list | None = None,
                    domain: str = "", missing: list | None = None, examples: list | None = None) -> list[dict]:
    """The chat messages a module is asked with, at training and at serving time alike. ``examples``
    (pairs of input, output) make a few-shot prompt for a module served from the base model."""
    if module in ("intent", "extract"):
        body = context_text(previous, user)
    elif module == "answer":
        body = f"用户: {' '.join(user.split())}\nacts:\n{acts_text(acts or [])}"
    elif module == "followup":
        body = f"用户: {' '.join(user.split())}\ndomain: {domain}\nmissing: {', '.join(missing or [])}"
    else:
        raise ValueError(f"unknown module {module}")
    messages: list[dict] = [{"role": "system", "content": INSTRUCTIONS[module]}]  # short: no default system prompt
    for given, wanted in examples or []:
        messages += [{"role": "user", "content": given}, {"role": "assistant", "content": wanted}]
    messages.append({"role": "user", "content": body})
    return messages


# ----------------------------------------------------------------------------- state


def new_state() -> dict:
    return {"constraints": {}, "requested": {}, "domain": None, "selected": {}, "offered": {}, "asked": None,
            "searched": [], "turns": 0}


def update_state(state: dict, acts: list, intent: dict | None = None, name_field: str = "名称") -> dict:
    """Fold a user turn's acts into the state: Inform adds or changes a constraint, Request adds a
    requested slot, the turn's domain (the most mentioned, the first on a tie) becomes the active one.
    Values given together for one slot are one constraint (``推荐菜: 烧饼 鲁菜``: both); a facility said
    as ``酒店设施-早餐服务: 是`` becomes ``酒店设施: 早餐服务``; a place the user names is looked up by that
    name until the user searches by constraints again. ``searched`` lists the domains whose
    constraints changed this turn."""
    state["turns"] = int(state.get("turns", 0)) + 1
    state["requested"] = {}
    state["searched"] = []
    domains = []
    heard: dict = {}  # (domain, slot) -> values given in this turn
    for act, domain, slot, value in ((list(a) + [""] * 4)[:4] for a in acts):
        if act == GENERAL or domain in NONE:
            continue
        domains.append(domain)
        if act == "Inform" and slot not in NONE and value not in NONE:
            if "-" in slot and str(value).strip() in YES:  # 酒店设施-早餐服务: 是 -> 酒店设施: 早餐服务
                slot, value = slot.split("-", 1)
            heard.setdefault((domain, slot), [])
            if str(value) not in heard[(domain, slot)]:
                heard[(domain, slot)].append(str(value))
        elif act == "Request" and slot not in NONE:
            state["requested"].setdefault(domain, [])
            if slot not in state["requested"][domain]:
                state["requested"][domain].append(slot)
        elif act == "Select" and value not in NONE:  # a place near one already chosen: Select 酒店 源领域 景点
            near = state["selected"].get(str(value))
            if near:
                heard.setdefault((domain, f"周边{value}"), [near])
    for domain in dict.fromkeys(d for d, _ in heard):
        cons = state["constraints"].setdefault(domain, {})
        slots = {s: " ".join(v) for (d, s), v in heard.items() if d == domain}
        name = slots.pop(name_field, None)
        if name is not None:
            if cons.get(name_field) != name:
                state["selected"].pop(domain, None)
            cons[name_field] = name
        elif slots:
            cons.pop(name_field, None)  # searching by constraints again, not for the place named before
        if any(_text(cons.get(k, "")) != _text(v) for k, v in slots.items()) or name is not None:
            state["searched"].append(domain)
        cons.update(slots)
    if not domains and intent:
        domains = [d for d in intent.get("domains", []) if d not in NONE]
    if domains:
        state["domain"] = max(dict.fromkeys(domains), key=domains.count)  # a tie: the first mentioned
    if state.get("asked") and state["domain"] and state["asked"] in state["constraints"].get(state["domain"], {}):
        state["asked"] = None
    return state


# ----------------------------------------------------------------------------- matching a constraint


_RANGE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:元|分|小时)?\s*[-~～到至]\s*(\d+(?:\.\d+)?)")
_AT_LEAST = re.compile(r"(?:>|大于|高于)\s*(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)\s*(?:元|分)?\s*(?:以上|及以上|起)")
_AT_MOST = re.compile(r"(?:<|小于|低于)\s*(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)\s*(?:元|分)?\s*(?:以下|以内)")


def _number(v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:元|分)?\s*", str(v))
    return float(m.group(1)) if m else None


def _text(v) -> str:
    return "".join(str(v).split()).casefold()


def cell_matches(cell, want) -> bool:
    """Does a table cell satisfy a tracked value? Numbers take ranges (``100-150元``), ``4.5分以上`` and
    ``<300``; ``免费`` is 0 and ``不免费`` more; a list cell needs every space-separated term to be one of
    its items; text is equal (spaces and case aside)."""
    if want in NONE:
        return True
    text = str(want).strip()
    num = _number(cell)
    if num is not None or cell is None:
        if text in ("免费", "免费的"):
            return num == 0
        if text in ("不免费", "收费"):
            return num is not None and num > 0
        m = _RANGE.search(text)
        if m:
            return num is not None and float(m.group(1)) <= num <= float(m.group(2))
        m = _AT_LEAST.search(text)
        if m:
            return num is not None and num >= float(m.group(1) or m.group(2))
        m = _AT_MOST.search(text)
        if m:
            return num is not None and num <= float(m.group(1) or m.group(2))
        w = _number(text)
        if w is not None:
            return num == w
        if cell is None:
            return False
    if isinstance(cell, list):
        items = {_text(c) for c in cell} - {""}
        terms = [t for t in (_text(x) for x in text.split()) if t]
        return bool(terms) and all(t in items for t in terms)
    return _text(cell) == _text(text)


def row_matches(row: dict, constraints: dict) -> bool:
    for slot, want in constraints.items():
        if want in NONE:
            continue
        if "-" in slot and slot.split("-", 1)[0] in row:  # 酒店设施-早餐服务: 是
            col, item = slot.split("-", 1)
            has = cell_matches(row.get(col), item)
            if has != (str(want).strip() not in ("否", "no", "false")):
                return False
            continue
        if slot not in row:
            continue  # a slot the table does not hold (出发地 on a station list) does not narrow it
        if not cell_matches(row.get(slot), want):
            return False
    return True


def query(state: dict, domain: str, name_field: str = "名称") -> dict:
    """The constraints to search ``domain``'s table with: a place the user named, by its name alone;
    else every tracked constraint."""
    cons = state["constraints"].get(domain, {})
    if cons.get(name_field):
        return {name_field: cons[name_field]}
    return {k: v for k, v in cons.items() if k != name_field}


def search(rows: list[dict], constraints: dict, name_field: str = "名称") -> tuple[list[dict], bool]:
    """(rows, exact): the rows meeting every constraint; when none does, the rows meeting the most of
    them (what a good clerk offers instead: "none at 100-150元, but this one at 138元"), exact False.
    A name is looked up as written, else as part of a name; never swapped for another place."""
    if constraints.get(name_field):
        want = _text(constraints[name_field])
        same = [r for r in rows if _text(r.get(name_field, "")) == want]
        return (same or [r for r in rows if want and want in _text(r.get(name_field, ""))]), True
    exact = [r for r in rows if row_matches(r, constraints)]
    if exact or not constraints:
        return exact, True
    scores = [sum(row_matches(r, {k: v}) for k, v in constraints.items()) for r in rows]
    best = max(scores, default=0)
    if best == 0:
        return [], False
    return [r for r, n in zip(rows, scores) if n == best], False


# ----------------------------------------------------------------------------- policy


def show(value, items: int = 5) -> str:
    if isinstance(value, list):
        return "，".join(str(v) for v in value[:items]) if value else "无"
    return "无" if value is None else str(value)


def policy(state: dict, domain: str | None, rows: list[dict], *, required: list | None = None,
           name_field: str = "名称", general: list | None = None, exact: bool = True,
           known: dict | None = None) -> dict:
    """What the system does next: ``{"kind": "followup", "missing": [...]}`` when a required slot has not
    been heard, else ``{"kind": "answer", "acts": [...], "record": row or None}``: every requested slot
    informed from the chosen row (the one chosen before while it still qualifies), greetings and
    thanks answered. With ``exact`` False the rows meet only some constraints: ``NoOffer`` (when the
    search is new), then the nearest row with its values of the unmet slots. ``known``: values of
    requested slots found elsewhere (a station near a named place), informed as they are."""
    general = general or []
    acts: list[list] = []
    if domain is None:
        reply = "bye" if "bye" in general else "welcome" if ("thank" in general or "greet" in general) else "reqmore"
        return {"kind": "answer", "acts": [[GENERAL, reply, "none", "none"]], "record": None}
    cons = state["constraints"].setdefault(domain, {})
    missing = [s for s in (required or []) if s not in cons]
    if missing:
        state["asked"] = missing[0]
        return {"kind": "followup", "missing": missing, "acts": [["Request", domain, m, ""] for m in missing]}
    requested = list(state["requested"].get(domain, []))
    known = known or {}
    if requested and all(s in known for s in requested):
        acts = [["Inform", domain, s, known[s]] for s in requested]
        if "bye" in general:
            acts.append([GENERAL, "bye", "none", "none"])
        return {"kind": "answer", "acts": acts, "record": None}
    chosen = None
    previous = state["selected"].get(domain)
    if previous:
        chosen = next((r for r in rows if str(r.get(name_field)) == previous), None)
    if chosen is None and rows:
        chosen = rows[0]
    if chosen is None or (not exact and (domain in state.get("searched", []) or previous is None)):
        acts.append(["NoOffer", domain, "none", "none"])
    if chosen is not None:
        name = str(chosen.get(name_field) or "")
        offered = state["offered"].setdefault(domain, [])
        if name:
            state["selected"][domain] = name
            if name not in offered:
                offered.append(name)
        if name and (not requested or name_field in requested or previous != name):
            acts.append(["Inform", domain, name_field, name])
        if not exact and acts and acts[0][0] == "NoOffer":
            for slot, want in cons.items():
                if slot != name_field and slot in chosen and not row_matches(chosen, {slot: want}):
                    acts.append(["Inform", domain, slot, show(chosen.get(slot))])
        for slot in requested:
            if slot == name_field:
                continue
            acts.append(["Inform", domain, slot, known[slot] if slot in known else show(chosen.get(slot))])
    acts = [a for n, a in enumerate(acts) if a not in acts[:n]]
    if "bye" in general:
        acts.append([GENERAL, "bye", "none", "none"])
    return {"kind": "answer", "acts": acts, "record": chosen}
