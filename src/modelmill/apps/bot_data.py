"""Training data for a dialogue bot's four modules, built from a task-oriented dialogue dataset's annotations.

A dialogue file is JSONL, one dialogue a line, in CrossWOZ's shape (``../shared/data/crosswoz``):
``{"id", "messages": [{"role": "user"|"system", "content", "dialog_act": [[act, domain, slot, value], ...]}, ...],
"goal": [...]}``. Each user turn gives an ``intent`` example (its domains and act types) and an
``extract`` example (its acts, with the system turn before it as context); each system turn gives an
``answer`` example (the acts it carried, rendered as its words). The ``followup`` module learns from the
user turns that answered a question: the question is the system turn that came before an Inform of a
slot the system asked for; a dataset whose system never asks (CrossWOZ's does not) leaves it to a prompt.

The split is by dialogue, so no test dialogue's turns are trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from modelmill.apps import dialogue as dlg
from modelmill.errors import InputError, NotFoundError


def read_dialogues(path: str | Path) -> list[dict]:
    """The dialogues of a JSONL file; InputError naming the line and field of a malformed one."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no dialogue file {path}", field="--dialogues")
    out = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError as e:
                raise InputError(f"not JSON ({e.args[0] if e.args else e})", file=str(path), line=n) from None
            msgs = d.get("messages") if isinstance(d, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise InputError("a dialogue needs 'messages': a list of turns", file=str(path), line=n,
                                 field="messages", fix="one dialogue a line: {\"id\", \"messages\": [...]}")
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ("user", "system") or not isinstance(
                        m.get("content"), str):
                    raise InputError(f"turn {i} needs 'role' (user or system) and 'content' text", file=str(path),
                                     line=n, field=f"messages[{i}]")
                acts = m.get("dialog_act")
                if not isinstance(acts, list) or any(not isinstance(a, list) or len(a) != 4 for a in acts):
                    raise InputError(f"turn {i} needs 'dialog_act': a list of [act, domain, slot, value]",
                                     file=str(path), line=n, field=f"messages[{i}].dialog_act")
            d.setdefault("id", str(n))
            out.append(d)
    if not out:
        raise InputError("the dialogue file is empty", file=str(path))
    return out


def split(dialogues: list[dict], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) by dialogue, by a hash of each id: the same dialogue lands on the same side every time."""
    def side(d):
        h = hashlib.sha256(f"{seed}:{d['id']}".encode()).digest()
        return int.from_bytes(h[:4], "big") / 2**32 < test_fraction
    test = [d for d in dialogues if side(d)]
    train = [d for d in dialogues if not side(d)]
    return train, test


def user_turns(dialogue: dict):
    """(previous system utterance or None, user turn) for each user turn."""
    prev = None
    for m in dialogue["messages"]:
        if m["role"] == "user":
            yield prev, m
        else:
            prev = m["content"]


def examples(dialogues: list[dict]) -> dict[str, list[dict]]:
    """Per module, chat records ``{"messages": [...]}`` whose last turn is the module's wanted output."""
    out: dict[str, list[dict]] = {m: [] for m in dlg.MODULES}

    def rec(module, wanted, **kw):
        msgs = dlg.module_messages(module, **kw)
        out[module].append({"messages": msgs + [{"role": "assistant", "content": wanted}]})

    for d in dialogues:
        msgs = d["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "user":
                prev = msgs[i - 1]["content"] if i > 0 and msgs[i - 1]["role"] == "system" else None
                rec("intent", dlg.intent_label(m["dialog_act"]), user=m["content"], previous=prev)
                rec("extract", dlg.acts_text(m["dialog_act"]), user=m["content"], previous=prev)
            elif i > 0 and msgs[i - 1]["role"] == "user":
                user = msgs[i - 1]["content"]
                rec("answer", " ".join(m["content"].split()), user=user, acts=m["dialog_act"])
                asked = [a for a in m["dialog_act"] if a[0] == "Request"]
                if asked:
                    rec("followup", " ".join(m["content"].split()), user=user, domain=asked[0][1],
                        missing=[a[2] for a in asked])
    return out


def few_shot(records: list[dict], n: int = 3) -> list[list[str]]:
    """``n`` (input, output) pairs for a module served as a prompt (few-shot)."""
    pairs, seen = [], set()
    for r in records:  # one example per kind of answer (its first two words: act and domain), in data order
        wanted = r["messages"][-1]["content"]
        key = tuple(wanted.split()[:2])
        if key in seen or len(wanted) > 120:
            continue
        seen.add(key)
        pairs.append([r["messages"][-2]["content"], wanted])
        if len(pairs) == n:
            break
    return pairs


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------- one command: data, tables, modules, bot

TRAINED = ("intent", "extract", "answer", "followup")


def required_slots(dialogues: list[dict], share: float = 0.95, least: int = 5) -> dict[str, list[str]]:
    """Per domain, the slots users gave in at least ``share`` of the dialogues that used the domain (a
    taxi's 出发地 and 目的地): the bot asks for them when they are missing."""
    from collections import Counter

    used, given = Counter(), Counter()
    for d in dialogues:
        doms, slots = set(), set()
        for m in d["messages"]:
            if m["role"] != "user":
                continue
            for act, dom, slot, value in m["dialog_act"]:
                if act in ("Inform", "Request"):
                    doms.add(dom)
                if act == "Inform" and value not in dlg.NONE:
                    slots.add((dom, slot))
        used.update(doms)
        given.update(slots)
    out: dict[str, list[str]] = {}
    for (dom, slot), n in given.items():
        if used[dom] >= least and n / used[dom] >= share:
            out.setdefault(dom, []).append(slot)
    return {d: sorted(s) for d, s in out.items()}


def derived_slots(dialogues: list[dict], columns: dict[str, list[str]]) -> dict[str, dict]:
    """Per domain, the requested slots that are a column of the row another slot names: CrossWOZ's
    ``出发地附近地铁站`` is the ``地铁`` of the station named by ``出发地``. A slot counts when it starts with a
    slot users inform in that domain and the rest of it names a column of the domain's table."""
    informed: dict = {}
    asked: dict = {}
    for d in dialogues:
        for m in d["messages"]:
            if m["role"] != "user":
                continue
            for act, dom, slot, _ in m["dialog_act"]:
                if act == "Inform":
                    informed.setdefault(dom, set()).add(slot)
                elif act == "Request":
                    asked.setdefault(dom, set()).add(slot)
    out: dict = {}
    for dom, slots in asked.items():
        for slot in sorted(slots):
            if slot in columns.get(dom, []):
                continue
            by = next((p for p in sorted(informed.get(dom, ()), key=len, reverse=True) if slot.startswith(p)), None)
            field = next((c for c in columns.get(dom, []) if by and c != by and c in slot[len(by):]), None)
            if by and field:
                out.setdefault(dom, {})[slot] = {"by": by, "field": field}
    return out


def register_tables(store, name: str, database: str | Path) -> dict[str, str]:
    """Each ``*.json`` table in ``database`` registered as ``NAME-STEM`` (``hotel_db.json``: NAME-hotel);
    returns domain -> table name, the domain read from the rows' ``领域`` field (else the file's stem).
    A table of that name already registered is used as it is."""
    from modelmill.apps.tables import LookupTables, read_rows

    folder = Path(database)
    if not folder.is_dir():
        raise NotFoundError(f"no database folder {folder}", field="--database",
                            fix="give the folder of the dataset's table files (*.json, *.jsonl or *.csv)")
    tables = LookupTables(store)
    out: dict[str, str] = {}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".json", ".jsonl", ".csv"))
    if not files:
        raise InputError(f"{folder} holds no .json, .jsonl or .csv table", field="--database")
    for path in files:
        stem = path.stem.lower().removesuffix("_db").replace("_", "-")
        rows = read_rows(path)
        domain = str(rows[0].get("领域") or rows[0].get("domain") or stem)
        table = f"{name}-{stem}"
        if tables.find(table) is None:
            tables.add(table, path)
        out[domain] = table
    return out


def bot_yaml(base: str, modules: dict[str, dict], domains: dict[str, dict], description: str) -> str:
    import yaml

    doc = {"description": description, "base": base, "modules": modules, "domains": domains}
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=200)


@dataclass
class BotBuildConfig:
    """Build a dialogue bot from a task-oriented dialogue dataset, as `modelmill apps bot build` does."""

    name: str = field(default="", metadata={"help": "The bot's name (model id bot:NAME).", "basic": True})
    dialogues: str = field(default="", metadata={
        "help": "JSONL of annotated dialogues (CrossWOZ's shape: messages with dialog_act), a path where the build runs.",
        "basic": True})
    database: str = field(default="", metadata={
        "help": "Folder of the business tables (*.json, *.jsonl, *.csv), one per domain, a path where the build runs.",
        "basic": True})
    base: str = field(default="smollm2-135m-instruct", metadata={"help": "The base model of every module.",
                                                                 "basic": True})
    train: bool = field(default=True, metadata={
        "help": "Train the modules' adapters now (otherwise each runs on the base with a few-shot prompt)."})
    modules: str = field(default="intent,extract,answer", metadata={
        "help": "Which modules get an adapter, comma-separated (the rest: few-shot prompts on the base)."})
    time_budget: float = field(default=0.0, metadata={
        "help": "Minutes each module's training may take (0: the epochs, however long)."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over each module's examples."})
    limit: int = field(default=0, metadata={"help": "Examples per module (0: all)."})
    test_fraction: float = field(default=0.2, metadata={
        "help": "Share of dialogues held out for `apps bot eval` (split by dialogue)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split."})
    replace: bool = field(default=False, metadata={"help": "Rebuild an existing bot NAME."})

    def module_list(self) -> tuple:
        return tuple(m.strip() for m in self.modules.split(",") if m.strip())


def check_build(store, cfg: BotBuildConfig):
    """What can be checked before anything is read or written (a job's submission checks this):
    the name, the settings, the base model, that the files exist. The bot of that name, or None."""
    from modelmill.apps import check_publish
    from modelmill.names import check_name

    check_name(cfg.name, "NAME")
    if not 0 < cfg.test_fraction < 1:
        raise InputError("--test-fraction must be between 0 and 1", field="--test-fraction", fix="e.g. 0.2")
    if cfg.epochs <= 0 or cfg.time_budget < 0 or cfg.limit < 0:
        flag = "--epochs" if cfg.epochs <= 0 else "--time-budget" if cfg.time_budget < 0 else "--limit"
        raise InputError(f"{flag} must be {'> 0' if flag == '--epochs' else '>= 0'}", field=flag)
    unknown = [m for m in cfg.module_list() if m not in dlg.MODULES]
    if unknown:
        raise InputError(f"unknown module {unknown[0]}", field="--modules", fix=f"modules: {', '.join(dlg.MODULES)}")
    existing = check_publish(store, cfg.name, "bot", cfg.replace)
    model_problem_ = _model_problem(store, cfg.base)
    if model_problem_:
        raise NotFoundError(model_problem_, field="--base", fix="pick one from `modelmill models list`")
    if not cfg.dialogues or not cfg.database:
        flag = "--dialogues" if not cfg.dialogues else "--database"
        raise InputError(f"{flag} is required", field=flag,
                         fix="the dialogue file (JSONL) and the folder of the business tables")
    if not Path(cfg.dialogues).is_file():
        raise NotFoundError(f"no dialogue file {cfg.dialogues}", field="--dialogues",
                            fix="a JSONL file of dialogues, one a line")
    if not Path(cfg.database).is_dir():
        raise NotFoundError(f"no folder {cfg.database}", field="--database",
                            fix="a folder with one table file per domain (*.json, *.jsonl, *.csv)")
    return existing


def build_bot(store, cfg: BotBuildConfig, *, log=print, trainer=None) -> dict:
    """Everything a bot needs from a task-oriented dialogue dataset, in one call: the split by dialogue, each
    module's training data (datasets ``NAME-intent`` ...), the tables, the module adapters trained (``train``;
    a module not trained runs on the base with a few-shot prompt from its data), and the bot ``bot:NAME``.
    Returns what was made, with the test dialogues' file for ``modelmill apps bot eval``. ``trainer(store,
    base=, data=, name=, epochs=, time_budget=, max_length=)`` trains one module's LoRA adapter (apps sits
    below training: the caller hands it in, ``train.runs.train_lora`` for the command line and the job)."""
    from modelmill.data.catalog import DatasetCatalog

    existing = check_build(store, cfg)
    name, dialogues, database, base = cfg.name, cfg.dialogues, cfg.database, cfg.base
    train, modules, epochs, time_budget, limit = cfg.train, cfg.module_list(), cfg.epochs, cfg.time_budget, cfg.limit
    all_dialogues = read_dialogues(dialogues)
    train_d, test_d = split(all_dialogues, cfg.test_fraction, cfg.seed)
    if not train_d or not test_d:
        raise InputError(f"{len(all_dialogues)} dialogues split into {len(train_d)} for training and {len(test_d)} "
                         "for testing", field="--test-fraction", fix="give more dialogues or another --test-fraction")
    data = examples(train_d)
    home = Path(store.home) / "files" / "bots" / name
    test_file = write_jsonl(test_d, home / "test.jsonl")
    write_jsonl(train_d, home / "train.jsonl")
    log(f"{len(all_dialogues)} dialogues: {len(train_d)} to train on, {len(test_d)} held out ({test_file})")
    catalog = DatasetCatalog(store)
    refs = {}
    for m in dlg.MODULES:
        records = data[m][:limit] if limit else data[m]
        if not records:
            log(f"  {m}: no examples in the annotations (the system never does this); it runs as a prompt")
            continue
        path = write_jsonl(records, home / f"{m}.jsonl")
        row, _, _ = catalog.import_file(path, f"{name}-{m}", "messages")
        refs[m] = row.ref
        log(f"  {m}: {len(records)} examples -> dataset {row.ref}")
    tables = register_tables(store, name, database)
    log(f"  tables: {', '.join(f'{d} -> {t}' for d, t in tables.items())}")
    required = required_slots(train_d)
    spec_modules: dict[str, dict] = {}
    for m in dlg.MODULES:
        adapter = f"{name}-{m}"
        if train and m in modules and m in refs:
            if trainer is None:
                raise InputError("training the modules needs a trainer", field="--train",
                                 fix="build with --no-train, or call build_bot(..., trainer=...)")
            log(f"  training {adapter} on {refs[m]} ...")
            trainer(store, base=base, data=refs[m], name=adapter, epochs=epochs, time_budget=time_budget,
                    max_length=384)
            spec_modules[m] = {"model": adapter}
        elif _model_problem(store, adapter) is None and m in modules:
            spec_modules[m] = {"model": adapter}       # trained before (a rebuild without --train)
        else:
            spec_modules[m] = {"model": base, "examples": few_shot(data[m], 4) if data[m] else [
                ["用户: 我想打车\ndomain: 出租\nmissing: 出发地, 目的地", "请问您从哪里出发，要去哪里？"]]}
    from modelmill.apps.tables import LookupTables

    derived = derived_slots(train_d, {d: list(LookupTables(store).get(t).columns) for d, t in tables.items()})
    domains = {d: {"table": t, **({"required": required[d]} if required.get(d) else {}),
                   **({"derived": derived[d]} if derived.get(d) else {})} for d, t in tables.items()}
    text = bot_yaml(base, spec_modules, domains, f"built from {Path(dialogues).name} ({len(train_d)} dialogues)")
    (home / "bot.yaml").write_text(text, encoding="utf-8")
    from modelmill.apps.bots import create_bot

    create_bot(store, name, text, str(home / "bot.yaml"), replace=existing is not None)
    log(f"bot:{name} published ({home / 'bot.yaml'})")
    return {"bot": name, "yaml": str(home / "bot.yaml"), "test_dialogues": str(test_file), "datasets": refs,
            "tables": tables, "modules": spec_modules, "train": len(train_d), "test": len(test_d)}


def _model_problem(store, model: str) -> str | None:
    from modelmill.apps.flow_spec import model_problem

    return model_problem(store, model)
