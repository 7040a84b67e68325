"""Task-oriented dialogue bots: four modules on one base model, dialogue state by conversation id.

A bot file (YAML) names the four modules, each an adapter of the bot's base (or the base model itself
with a few-shot prompt, to compare), and the business tables its domains are looked up in:

    base: smollm2-135m-instruct
    modules:
      intent:   {model: travel-intent}        # the turn's domain and act types
      extract:  {model: travel-extract}       # the user's acts: Inform 酒店 价格 400-500元, Request 酒店 地址
      followup: {model: smollm2-135m-instruct, examples: [["用户: 我要打车\\ndomain: 出租\\nmissing: 出发地", "请问您从哪里出发？"]]}
      answer:   {model: travel-answer}        # the system's acts, said in words
    domains:
      酒店: {table: travel-hotel}
      出租: {table: travel-taxi, required: [出发地, 目的地]}

A turn: intent and extract run together (one batch on the engine: they are adapters of one base), the
acts update the conversation's state, the active domain's table is filtered by every tracked
constraint, and either the follow-up module asks for a required slot not yet heard, or the answer
module says the acts the policy chose (every requested slot informed from the chosen row). The
conversation (state and turns) is stored, so the next turn with its id goes on from there.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from modelmill.apps import dialogue as dlg
from modelmill.apps.flow_spec import FlowError, model_problem, parse_yaml
from modelmill.errors import InputError, ModelmillError, NotFoundError

BOT_PREFIX = "bot:"
TOP = {"name", "description", "base", "modules", "domains", "max_rows"}
MODULE_FIELDS = {"model", "examples", "max_tokens"}
DOMAIN_FIELDS = {"table", "required", "name_field", "derived"}
MAX_TOKENS = {"intent": 24, "extract": 96, "followup": 48, "answer": 96}
MAX_TURNS = 200          # turns kept per conversation (older ones drop; the state carries on)


@dataclass
class Module:
    name: str
    model: str
    examples: list = field(default_factory=list)
    max_tokens: int = 64


@dataclass
class Domain:
    name: str
    table: str
    required: list = field(default_factory=list)
    name_field: str = "名称"
    derived: dict = field(default_factory=dict)  # slot -> {"by": slot naming a row, "field": its column}


@dataclass
class Bot:
    name: str
    base: str
    modules: dict
    domains: dict
    description: str = ""
    max_rows: int = 5000

    def outline(self) -> dict:
        return {"base": self.base,
                "modules": {m.name: {"model": m.model, "prompted": bool(m.examples)} for m in self.modules.values()},
                "domains": {d.name: {"table": d.table, "required": d.required, **(
                    {"derived": d.derived} if d.derived else {})} for d in self.domains.values()}}


def _bad(problems: list, message: str, line, field=None, fix=None):
    problems.append({"message": message, "line": line, "field": field, "fix": fix})


def load_bot(text: str, source: str | None = None, store=None, name: str | None = None) -> Bot:
    """A bot file checked: every problem with its line (FlowError: the first, the rest in ``details``).
    With ``store``: every module's model exists and is the bot's base or an adapter of it, every
    domain's table exists."""
    data = parse_yaml(text, source)
    problems: list[dict] = []
    lines = getattr(data, "lines", {})
    for k in data:
        if k not in TOP:
            _bad(problems, f"unknown field '{k}'", lines.get(k), str(k), f"a bot file has {', '.join(sorted(TOP))}")
    base = data.get("base")
    if not isinstance(base, str) or not base:
        _bad(problems, "'base' (the base model every module runs on) is missing", 1, "base",
             "add base: smollm2-135m-instruct")
        base = ""
    modules: dict = {}
    mods = data.get("modules")
    if not isinstance(mods, dict):
        _bad(problems, "'modules' must map intent, extract, followup and answer to a model", lines.get("modules", 1),
             "modules")
        mods = {}
    for m in dlg.MODULES:
        if m not in mods:
            _bad(problems, f"module '{m}' is missing", lines.get("modules", 1), f"modules.{m}",
                 f"add {m}: {{model: NAME}} (an adapter of the base, or the base with examples)")
    for m, spec in mods.items():
        line = getattr(mods, "lines", {}).get(m)
        if m not in dlg.MODULES:
            _bad(problems, f"unknown module '{m}'", line, f"modules.{m}", f"modules are {', '.join(dlg.MODULES)}")
            continue
        if isinstance(spec, str):
            spec = {"model": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
            _bad(problems, f"module '{m}' needs 'model'", line, f"modules.{m}.model")
            continue
        for k in spec:
            if k not in MODULE_FIELDS:
                _bad(problems, f"module '{m}' has unknown field '{k}'", getattr(spec, "lines", {}).get(k, line),
                     f"modules.{m}.{k}", f"a module has {', '.join(sorted(MODULE_FIELDS))}")
        ex = spec.get("examples") or []
        if not isinstance(ex, list) or any(not isinstance(e, list) or len(e) != 2 or not all(isinstance(x, str)
                                                                                              for x in e) for e in ex):
            _bad(problems, f"module '{m}': examples must be a list of [input, output] text pairs", line,
                 f"modules.{m}.examples")
            ex = []
        mt = spec.get("max_tokens", MAX_TOKENS[m])
        if not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 1024:
            _bad(problems, f"module '{m}': max_tokens must be a whole number from 1 to 1024", line,
                 f"modules.{m}.max_tokens")
            mt = MAX_TOKENS[m]
        modules[m] = Module(m, spec["model"], ex, mt)
        if store is not None:
            problem = model_problem(store, spec["model"])
            if problem:
                _bad(problems, f"module '{m}': {problem}", line, f"modules.{m}.model",
                     "train it (`modelmill apps bot build`) or name a model from `modelmill models list`")
            elif base:
                other = _base_of(store, spec["model"])
                if other and other != base:
                    _bad(problems, f"module '{m}' runs on base '{other}', the bot's base is '{base}': the four "
                                   "modules must share one base to be served in one batch", line,
                         f"modules.{m}.model", f"use an adapter trained on {base}")
    domains: dict = {}
    doms = data.get("domains")
    if not isinstance(doms, dict) or not doms:
        _bad(problems, "'domains' must map each domain to its table", lines.get("domains", 1), "domains",
             "add domains: {酒店: {table: hotels}}")
        doms = {}
    for d, spec in doms.items():
        line = getattr(doms, "lines", {}).get(d)
        if isinstance(spec, str):
            spec = {"table": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("table"), str):
            _bad(problems, f"domain '{d}' needs 'table'", line, f"domains.{d}.table")
            continue
        for k in spec:
            if k not in DOMAIN_FIELDS:
                _bad(problems, f"domain '{d}' has unknown field '{k}'", getattr(spec, "lines", {}).get(k, line),
                     f"domains.{d}.{k}", f"a domain has {', '.join(sorted(DOMAIN_FIELDS))}")
        req = spec.get("required") or []
        if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
            _bad(problems, f"domain '{d}': required must be a list of slot names", line, f"domains.{d}.required")
            req = []
        nf = spec.get("name_field", "名称")
        if not isinstance(nf, str) or not nf:
            _bad(problems, f"domain '{d}': name_field must be a column name", line, f"domains.{d}.name_field")
            nf = "名称"
        if not spec["table"].strip():
            _bad(problems, f"domain '{d}': table is empty", line, f"domains.{d}.table")
        derived = spec.get("derived") or {}
        if not isinstance(derived, dict) or any(
                not isinstance(v, dict) or set(v) != {"by", "field"} or not all(isinstance(x, str) for x in v.values())
                for v in derived.values()):
            _bad(problems, f"domain '{d}': derived maps a slot to {{by: SLOT, field: COLUMN}}", line,
                 f"domains.{d}.derived", "e.g. derived: {出发地附近地铁站: {by: 出发地, field: 地铁}}")
            derived = {}
        domains[str(d)] = Domain(str(d), spec["table"], req, nf, {str(k): dict(v) for k, v in derived.items()})
        if store is not None:
            from modelmill.apps.tables import LookupTables

            if LookupTables(store).find(spec["table"]) is None:
                _bad(problems, f"domain '{d}': no lookup table named '{spec['table']}'", line, f"domains.{d}.table",
                     "add it with `modelmill apps table add NAME FILE`")
    max_rows = data.get("max_rows", 5000)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or not 1 <= max_rows <= 100_000:
        _bad(problems, "max_rows must be a whole number from 1 to 100000", lines.get("max_rows"), "max_rows")
        max_rows = 5000
    if problems:
        problems.sort(key=lambda p: (p["line"] is None, p["line"] or 0))
        raise FlowError(problems, source)
    return Bot(name or str(data.get("name") or ""), base, modules, domains, str(data.get("description") or ""),
               max_rows)


def _base_of(store, model: str) -> str | None:
    from modelmill.adapters import AdapterRegistry

    try:
        return AdapterRegistry(store).resolve_ref(model)[0].name
    except ModelmillError:
        return None


def bot_name(model_id: str) -> str | None:
    return model_id[len(BOT_PREFIX):] if isinstance(model_id, str) and model_id.startswith(BOT_PREFIX) else None


def create_bot(store, name: str, text: str, source: str | None = None, *, replace: bool = False):
    """Check a bot file and publish it as ``bot:NAME``. Nothing is stored when the file has a problem;
    ``replace`` publishes a new version of an existing bot (its conversations go on)."""
    from modelmill.apps import publish_app
    from modelmill.names import check_name

    check_name(name, "NAME")
    bot = load_bot(text, source, store, name)
    spec = {"yaml": text, "source": source, "description": bot.description, **bot.outline()}
    return publish_app(store, name, "bot", spec, bot.base, replace=replace)


def get_bot(store, name: str) -> Bot:
    from modelmill.apps import Apps

    row = Apps(store).find(name)
    if row is None or row.kind != "bot":
        bots = ", ".join(a.name for a in Apps(store).list() if a.kind == "bot") or "none yet"
        raise NotFoundError(f"no bot named '{name}' (bots: {bots})", field="NAME",
                            fix="create one with `modelmill apps bot build` or `modelmill apps bot create`")
    return load_bot(row.spec["yaml"], row.spec.get("source"), store, row.name)


# ----------------------------------------------------------------------------- conversations


class Conversations:
    """Stored conversations (``bot_conversations``): state and turns by conversation id."""

    def __init__(self, store):
        self.store = store

    def find(self, conversation_id: str):
        from modelmill.store.tables import BotConversation

        with self.store.session() as s:
            return s.get(BotConversation, str(conversation_id))

    def get(self, conversation_id: str, bot: str | None = None):
        row = self.find(conversation_id)
        if row is None or (bot is not None and row.bot != bot):
            raise NotFoundError(f"no conversation '{conversation_id}'" + (f" with bot '{bot}'" if bot else ""),
                                field="conversation_id",
                                fix="leave conversation_id out to start a new conversation; its id comes back "
                                    "with the first reply")
        return row

    def list(self, bot: str, limit: int = 50) -> list:
        from sqlalchemy import select

        from modelmill.store.tables import BotConversation

        with self.store.session() as s:
            return list(s.scalars(select(BotConversation).where(BotConversation.bot == bot)
                                  .order_by(BotConversation.updated_at.desc()).limit(limit)))

    def save(self, conversation_id: str, bot: str, state: dict, turn: dict) -> None:
        from modelmill.store.tables import BotConversation, utcnow

        with self.store.session() as s:
            row = s.get(BotConversation, conversation_id)
            if row is None:
                row = BotConversation(id=conversation_id, bot=bot, state=state, turns=[turn])
                s.add(row)
            else:
                row.state, row.turns, row.updated_at = state, (list(row.turns) + [turn])[-MAX_TURNS:], utcnow()

    def remove_bot(self, bot: str) -> None:
        from sqlalchemy import delete

        from modelmill.store.tables import BotConversation

        with self.store.session() as s:
            s.execute(delete(BotConversation).where(BotConversation.bot == bot))


def conversation_json(row) -> dict:
    return {"id": row.id, "bot": row.bot, "state": row.state, "turns": row.turns,
            "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}


# ----------------------------------------------------------------------------- a turn


def table_rows(store, domain: Domain, max_rows: int) -> list[dict]:
    """The rows of the domain's table (up to ``max_rows``; a file table is held in memory once)."""
    from modelmill.apps.tables import LookupTables

    rows, _ = LookupTables(store).lookup(domain.table, {}, limit=max_rows)
    return rows


def next_step(store, bot: Bot, state: dict, domain: str | None, general: list) -> tuple[dict, int]:
    """The policy's plan for the active domain, after looking its table up; (plan, rows matched)."""
    if domain is None:
        return dlg.policy(state, None, [], general=general), 0
    spec = bot.domains[domain]
    table = table_rows(store, spec, bot.max_rows)
    known = {}
    cons = state["constraints"].get(domain, {})
    for slot in state["requested"].get(domain, []):
        how = spec.derived.get(slot)
        if how and cons.get(how["by"]):  # the row named by another slot: the station of the place left from
            row, _ = dlg.search(table, {spec.name_field: cons[how["by"]]}, spec.name_field)
            known[slot] = dlg.show(row[0].get(how["field"])) if row else "无"
    rows, exact = dlg.search(table, dlg.query(state, domain, spec.name_field), spec.name_field)
    plan = dlg.policy(state, domain, rows, required=spec.required, name_field=spec.name_field, general=general,
                      exact=exact, known=known)
    return plan, len(rows) if exact else 0


def turn_domain(bot: Bot, state: dict, acts: list, intent: dict) -> tuple[str | None, list]:
    """(the domain this turn is about, its General acts): none for a turn of only thanks or greetings."""
    turn_domains = [a[1] for a in acts if a[0] != dlg.GENERAL and a[1] in bot.domains] or [
        d for d in intent.get("domains", []) if d in bot.domains]
    general = [a[1] for a in acts if a[0] == dlg.GENERAL]
    domain = state.get("domain") if (turn_domains or not general) else None
    return (domain if domain in bot.domains else None), general


async def _module(services, bot: Bot, module: str, trace: list, **kw) -> str:
    m = bot.modules[module]
    t = time.perf_counter()
    examples = list(m.examples)
    while True:  # a few-shot prompt sheds examples until it fits the model's context
        messages = dlg.module_messages(module, examples=examples, **kw)
        try:
            r = await services.complete(m.model, messages, max_tokens=m.max_tokens, temperature=0.0)
            break
        except InputError as e:
            if not examples or e.field != "prompt":
                raise
            examples = examples[:-1]
    trace.append({"module": module, "model": m.model, "ms": round((time.perf_counter() - t) * 1000, 2),
                  "output": r["text"].strip(), "prompt_tokens": r.get("prompt_tokens", 0),
                  "completion_tokens": r.get("completion_tokens", 0)})
    return r["text"].strip()


async def understand(services, bot: Bot, text: str, previous: str | None, trace: list) -> tuple[list, dict]:
    """The user turn's acts (extract's; the intent's General acts when extract found none) and the
    intent (its domains steer the state when no act names one): both asked together, one engine batch."""
    intent_text, extract_text = await asyncio.gather(
        _module(services, bot, "intent", trace, user=text, previous=previous),
        _module(services, bot, "extract", trace, user=text, previous=previous))
    intent = dlg.parse_intent(intent_text)
    acts = dlg.parse_acts(extract_text)
    if not acts:  # extract found nothing: the intent's greetings and thanks stand for the turn
        acts = [[dlg.GENERAL, g, "none", "none"] for g in intent["general"]]
    return acts, intent


_LOCKS: dict = {}  # conversation id -> [asyncio.Lock, users]: one turn of a conversation at a time here


async def run_turn(services, bot: Bot, text: str, state: dict, previous: str | None) -> dict:
    """One user turn on ``state`` (changed in place), stored nowhere: understood, tracked, looked up, answered."""
    t0 = time.perf_counter()
    trace: list = []
    acts, intent = await understand(services, bot, text, previous, trace)
    intent["domains"] = [d for d in intent["domains"] if d in bot.domains]  # a stray word is no domain
    acts = [a for a in acts if a[0] == dlg.GENERAL or a[1] in bot.domains]
    dlg.update_state(state, acts, intent)
    domain, general = turn_domain(bot, state, acts, intent)
    plan, matches = await asyncio.to_thread(next_step, services.store, bot, state, domain, general)
    if plan["kind"] == "followup":
        reply = await _module(services, bot, "followup", trace, user=text, domain=domain, missing=plan["missing"])
    else:
        reply = await _module(services, bot, "answer", trace, user=text, acts=plan["acts"])
    record = plan.get("record")
    return {"user": text, "reply": reply, "user_acts": acts, "intent": intent, "system_acts": plan["acts"],
            "kind": plan["kind"], "domain": domain, "matches": matches,
            "record": record.get(bot.domains[domain].name_field) if record and domain else None,
            "modules": trace, "ms": round((time.perf_counter() - t0) * 1000, 2)}


async def bot_turn(services, bot: Bot, text: str, conversation_id: str | None = None) -> dict:
    """One user turn of a stored conversation (a new one without ``conversation_id``); the state and
    the turn are saved under its id. Turns of one conversation run one at a time."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the user's message is empty", field="message", fix="send the user's words")
    convs = Conversations(services.store)
    given = bool(conversation_id)
    conversation_id = conversation_id or "conv-" + uuid.uuid4().hex[:24]
    entry = _LOCKS.setdefault(conversation_id, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            # 404 for an unknown conversation, or another bot's
            row = await asyncio.to_thread(convs.get, conversation_id, bot.name) if given else None
            state = dict(row.state) if row is not None else dlg.new_state()
            previous = row.turns[-1]["reply"] if row is not None and row.turns else None
            turn = await run_turn(services, bot, text, state, previous)
            await asyncio.to_thread(convs.save, conversation_id, bot.name, state, turn)
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            _LOCKS.pop(conversation_id, None)
    return {"conversation_id": conversation_id, "bot": bot.name, "reply": turn["reply"],
            **{k: turn[k] for k in ("user_acts", "intent", "system_acts", "kind", "domain", "matches", "record",
                                    "modules", "ms")}, "state": state}


def usage_of(result: dict) -> dict:
    p = sum(m.get("prompt_tokens", 0) for m in result["modules"])
    c = sum(m.get("completion_tokens", 0) for m in result["modules"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
