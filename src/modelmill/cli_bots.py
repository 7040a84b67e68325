"""The dialogue bot commands (``modelmill apps bot``).

    modelmill apps bot build travel --dialogues crosswoz/dialogues.jsonl --database crosswoz/database
    modelmill apps bot create travel travel.yaml [--replace]     # a bot file, checked with its lines
    modelmill apps bot chat travel "我想找一家评分4.5分以上的酒店"   # prints the reply and the conversation id
    modelmill apps bot chat travel "地址是哪里？" --conversation conv-...
    modelmill apps bot chat travel                                # talk in the terminal
    modelmill apps bot conversation conv-...                      # state and turns
    modelmill apps bot eval travel                                # act F1, database-query match, inform, success
"""

from __future__ import annotations

import json

import click

from modelmill.apps.bot_data import BotBuildConfig
from modelmill.cli import Group, _store, build_config, dataclass_options
from modelmill.cli_apps import _problems, _read_flow_file, apps


@apps.group(cls=Group)
def bot():
    """Task-oriented dialogue bots: four modules (intent, extract, followup, answer) on one base model."""


@bot.command("build")
@click.argument("name")
@dataclass_options(BotBuildConfig, exclude=("name",))
def bot_build(name, **flags):
    """Build a bot from a dialogue dataset in one go: split by dialogue, each module's training data from the
    annotations, the tables registered, the adapters trained, the bot published as bot:NAME."""
    from modelmill.apps.bot_data import build_bot
    from modelmill.train.runs import train_lora

    out = build_bot(_store(), build_config(BotBuildConfig, {"name": name, **flags}, None), log=click.echo,
                    trainer=train_lora)
    click.echo(f"held-out dialogues: {out['test_dialogues']} (score with `modelmill apps bot eval {name}`)")


@bot.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def bot_check(file):
    """Check a bot file: fields, the four modules, one base, the tables; every problem with its line."""
    from modelmill.apps.bots import load_bot
    from modelmill.apps.flow_spec import FlowError

    try:
        b = load_bot(_read_flow_file(file), file, _store())
    except FlowError as e:
        _problems(e)
        raise
    click.echo(f"{file}: modules on {b.base}, domains {', '.join(b.domains)}: ok")


@bot.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Publish FILE as the new version of an existing bot NAME.")
def bot_create(name, file, replace):
    """Check FILE and publish it as model id bot:NAME."""
    from modelmill.apps.bots import create_bot
    from modelmill.apps.flow_spec import FlowError

    try:
        row = create_bot(_store(), name, _read_flow_file(file), file, replace=replace)
    except FlowError as e:
        _problems(e)
        raise
    click.echo(f"bot:{row.name} on {row.base_model}: domains {', '.join(row.spec['domains'])}")


def _say(r: dict, verbose: bool) -> None:
    click.echo(r["reply"])
    if verbose:
        from modelmill.apps.dialogue import acts_text

        click.echo(f"  [{r['conversation_id']}] {r['kind']}, domain {r['domain'] or '-'}, {r['matches']} rows"
                   f"{', chose ' + r['record'] if r['record'] else ''}, {r['ms']:.0f} ms", err=True)
        click.echo("  user acts: " + acts_text(r["user_acts"]).replace("\n", "; "), err=True)
        click.echo("  system acts: " + acts_text(r["system_acts"]).replace("\n", "; "), err=True)


@bot.command("chat")
@click.argument("name")
@click.argument("message", required=False)
@click.option("--conversation", default=None, help="Go on with this conversation id (from an earlier reply).")
@click.option("--json", "as_json", is_flag=True, help="The whole turn (acts, state, modules) as JSON.")
@click.option("--verbose/--quiet", default=True, show_default=True, help="Acts and lookup on stderr.")
def bot_chat(name, message, conversation, as_json, verbose):
    """Send MESSAGE to bot NAME (models load in this process); without MESSAGE, talk in the terminal."""
    import asyncio

    from modelmill.apps.bots import bot_turn, get_bot
    from modelmill.apps.flows import FlowServices

    store = _store()
    b = get_bot(store, name)

    async def go():
        services = FlowServices.local(store)
        cid = conversation
        try:
            if message is not None:
                return await bot_turn(services, b, message, cid)
            while True:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    return None
                if not text.strip():
                    continue
                r = await bot_turn(services, b, text, cid)
                cid = r["conversation_id"]
                _say(r, verbose)
        finally:
            await services.close()

    r = asyncio.run(go())
    if r is None:
        return
    if as_json:
        click.echo(json.dumps(r, indent=2, ensure_ascii=False))
        return
    _say(r, verbose)
    if not verbose:
        click.echo(f"conversation: {r['conversation_id']}", err=True)


@bot.command("conversation")
@click.argument("conversation_id")
@click.option("--json", "as_json", is_flag=True)
def bot_conversation(conversation_id, as_json):
    """A conversation's tracked state and its turns."""
    from modelmill.apps.bots import Conversations, conversation_json

    c = conversation_json(Conversations(_store()).get(conversation_id))
    if as_json:
        click.echo(json.dumps(c, indent=2, ensure_ascii=False))
        return
    click.echo(f"{c['id']} with bot:{c['bot']}, {len(c['turns'])} turns, domain {c['state'].get('domain') or '-'}")
    for d, cons in c["state"].get("constraints", {}).items():
        click.echo(f"  {d}: " + ", ".join(f"{k}={v}" for k, v in cons.items())
                   + (f"  (chose {c['state']['selected'][d]})" if d in c["state"].get("selected", {}) else ""))
    for t in c["turns"]:
        click.echo(f"  user: {t['user']}\n  bot:  {t['reply']}")


@bot.command("eval")
@click.argument("name")
@click.option("--dialogues", default=None, type=click.Path(dir_okay=False),
              help="Held-out dialogues (default: the ones `apps bot build` held out).")
@click.option("--limit", type=int, default=0, show_default=True, help="Score the first N dialogues (0: all).")
@click.option("--json", "as_json", is_flag=True)
def bot_eval(name, dialogues, limit, as_json):
    """Score bot NAME on held-out dialogues: user dialogue-act F1, database-query match, inform and success."""
    import asyncio
    from pathlib import Path

    from modelmill.apps.bot_data import read_dialogues
    from modelmill.apps.bot_eval import evaluate_dialogues, evaluate_nlu
    from modelmill.apps.bots import get_bot
    from modelmill.apps.flows import FlowServices
    from modelmill.errors import InputError

    store = _store()
    b = get_bot(store, name)
    path = Path(dialogues) if dialogues else Path(store.home) / "files" / "bots" / name / "test.jsonl"
    if not path.is_file():
        raise InputError(f"no held-out dialogues at {path}", field="--dialogues",
                         fix="give --dialogues FILE (a bot built with `apps bot build` keeps its own)")
    test = read_dialogues(path)[: limit or None]

    async def go():
        services = FlowServices.local(store)
        try:
            return await evaluate_nlu(services, b, test), await evaluate_dialogues(services, b, test)
        finally:
            await services.close()

    nlu, run = asyncio.run(go())
    if as_json:
        click.echo(json.dumps({"nlu": nlu, "dialogues": run}, indent=2, ensure_ascii=False))
        return
    click.echo(f"bot:{name} on {len(test)} held-out dialogues ({path})")
    click.echo(f"  user dialogue acts: F1 {nlu['f1']:.3f} (precision {nlu['precision']:.3f}, recall "
               f"{nlu['recall']:.3f}) over {nlu['turns']} turns")
    click.echo(f"  database-query match {run['db_query_match']} over {run['db_query_turns']} turns "
               f"(slots right {run['db_slot_accuracy']})")
    click.echo(f"  inform {run['inform']}, success {run['success_acts']} (acts) / {run['success_words']} (words) "
               f"over {run['scored_dialogues']} dialogues; turn p50 {run['turn_ms_p50']} ms")
