"""The web UI's dialogue bots in a real headless Chromium against `modelmill serve`, the way a
non-expert meets one: the bot in the apps list with its modules and domains, its page, a chat whose
turns show (on request) the acts understood and chosen, the lookup and each module, the tracked state
beside it, a second turn in the same conversation, a new conversation, an earlier one opened from the
list and continued, an unknown conversation named as such, and a bot file with mistakes shown line by
line, then published and replaced from the form.

The bot is built by `modelmill apps bot build --no-train` from the tiny CrossWOZ-shaped dataset of
test_apps_bots.py, on the random-weight tiny model: every module is a few-shot prompt and every reply
is noise, so this checks what the page shows, not what the bot says. One conversation is stored
through the library as a trained bot would have left it, so that the state panel has constraints and a
chosen hotel to show. Browser set-up as in test_web_ui.py (skipped without chromium or playwright).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from conftest import CLI, Server
from test_apps_bots import HOTELS, TAXI, _dialogue
from test_web_ui import page, sync_api  # noqa: F401  (the browser fixture; skips this module without chromium)

SEEDED = "conv-seeded0000000000"

BAD_BOT = ("base: tiny\nmodules:\n  intent: tiny\n  extract: {model: nope}\n  answer: tiny\n  chat: tiny\n"
           "domains:\n  酒店: {table: missing-table, required: 出发地}\ncolour: red\n")


def _get(url: str) -> dict:
    r = httpx.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


def _seed_conversation(home) -> None:
    """A finished first turn of a hotel search, stored with the library's own state rules and store."""
    from modelmill.apps import dialogue as dlg
    from modelmill.apps.bots import Conversations
    from modelmill.config import Settings
    from modelmill.store import open_store

    acts = [["Inform", "酒店", "价格", "800-1000元"], ["Request", "酒店", "名称", ""]]
    state = dlg.new_state()
    dlg.update_state(state, acts)
    rows = [row for _, row in HOTELS if dlg.row_matches(row, state["constraints"]["酒店"])]
    plan = dlg.policy(state, "酒店", rows)
    turn = {"user": "帮我找一家价格800-1000元的酒店。", "reply": "推荐您去北京饭店。", "user_acts": acts,
            "intent": dlg.parse_intent("酒店 Inform Request"), "system_acts": plan["acts"], "kind": plan["kind"],
            "domain": "酒店", "matches": len(rows), "record": plan["record"]["名称"], "ms": 9.5,
            "modules": [{"module": m, "model": "tiny", "ms": 3.0, "output": out, "prompt_tokens": 40,
                         "completion_tokens": 8} for m, out in (("intent", "酒店 Inform Request"),
                                                                ("extract", dlg.acts_text(acts)),
                                                                ("answer", "推荐您去北京饭店。"))]}
    Conversations(open_store(Settings(home=home))).save(SEEDED, "trip", state, turn)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """`modelmill serve` with bot:trip built from the CLI (no training: every module a few-shot prompt)."""
    home = tmp_path_factory.mktemp("web-bot-home")
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    data = tmp_path_factory.mktemp("web-bot-data")
    (data / "dialogues.jsonl").write_text("\n".join(json.dumps(_dialogue(i), ensure_ascii=False)
                                                    for i in range(12)) + "\n", encoding="utf-8")
    db = data / "database"
    db.mkdir()
    (db / "hotel_db.json").write_text(json.dumps(HOTELS, ensure_ascii=False), encoding="utf-8")
    (db / "taxi_db.json").write_text(json.dumps(TAXI, ensure_ascii=False), encoding="utf-8")
    cli("apps", "bot", "build", "trip", "--dialogues", data / "dialogues.jsonl", "--database", db, "--base", "tiny",
        "--no-train", "--test-fraction", "0.25")
    _seed_conversation(home)
    s = Server(home)
    try:
        yield s.url
    finally:
        s.stop()
        s.log.unlink(missing_ok=True)


def _send(pg, text: str, turns: int, *, enter: bool = False):
    by = pg.get_by_test_id
    by("chat-message").fill(text)
    if enter:
        by("chat-message").press("Enter")
    else:
        by("chat-send").click()
    sync_api.expect(by("chat-turn")).to_have_count(turns, timeout=120_000)  # the first turn loads the model
    return by("chat-turn").nth(turns - 1)


def test_web_bot_listed_chat_state_conversations(server, page):  # noqa: F811
    expect = sync_api.expect
    url = server
    by = page.get_by_test_id

    # ---- listed with its model id, base, modules (all few-shot prompts: nothing was trained) and domains
    page.goto(url + "/ui/#/apps")
    row = page.locator('[data-testid="app-row"][data-name="trip"]')
    expect(row).to_have_attribute("data-kind", "bot")
    expect(row.get_by_test_id("app-link")).to_have_text("bot:trip")
    expect(row.get_by_test_id("bot-base")).to_have_text("tiny")
    expect(row.get_by_test_id("bot-prompts")).to_have_text("intent, extract, followup, answer")
    expect(row.get_by_test_id("bot-adapters")).to_have_count(0)
    expect(row.get_by_test_id("bot-domains-about")).to_contain_text("酒店 → table trip-hotel")
    expect(row.get_by_test_id("bot-domains-about")).to_contain_text("出租 → table trip-taxi (needs 出发地, 目的地)")

    # ---- its page: modules and domains, a fresh conversation
    row.get_by_test_id("bot-chat-link").click()
    page.wait_for_url(re.compile(r".*#/apps/trip$"))
    expect(by("app-model-id")).to_have_text("bot:trip")
    expect(by("bot-module-row")).to_have_count(4)
    assert by("bot-module-row").evaluate_all("els => els.map(e => e.dataset.how)") == ["prompt"] * 4
    expect(page.locator('[data-testid="bot-domain-row"][data-domain="出租"]')).to_contain_text("出发地, 目的地")
    expect(by("chat-conversation-new")).to_be_visible()
    expect(by("bot-state-none")).to_be_visible()

    # ---- a first message: the reply, what it understood and did (collapsed), the state and an id
    turn = _send(page, "你好，帮我找一家价格800-1000元的酒店。", 1)
    expect(turn.get_by_test_id("chat-user")).to_have_text("你好，帮我找一家价格800-1000元的酒店。")
    expect(turn.get_by_test_id("chat-reply")).to_be_visible()
    kind = turn.get_attribute("data-kind")
    assert kind in ("answer", "followup")
    expect(turn.get_by_test_id("chat-kind")).to_have_text("answer" if kind == "answer" else "follow-up question")
    expect(turn.get_by_test_id("chat-understood")).to_be_hidden()
    turn.get_by_test_id("chat-details-open").click()
    for part in ("chat-understood", "chat-decided", "chat-lookup"):
        expect(turn.get_by_test_id(part)).to_be_visible()
    modules = turn.get_by_test_id("chat-module-row")
    expect(modules).to_have_count(3)  # intent and extract together, then answer or followup
    names = modules.evaluate_all("els => els.map(e => e.dataset.module)")
    assert sorted(names[:2]) == ["extract", "intent"] and names[2] == kind
    intent = turn.locator('[data-testid="chat-module-row"][data-module="intent"]')
    expect(intent).to_contain_text("tiny")
    expect(intent).to_contain_text("few-shot prompt")
    expect(intent.locator("td").nth(2)).to_have_text(re.compile(r"^\d[\d,]*$"))  # ms
    cid = by("chat-conversation-id").text_content()
    assert cid.startswith("conv-")
    assert page.url.endswith(f"#/apps/trip?conversation={cid}")  # a reload shows this conversation
    expect(by("bot-state-turns")).to_have_text("1")
    stored = _get(f"{url}/api/apps/conversations/{cid}")  # the page shows what the server stored
    assert stored["turns"][0]["kind"] == kind
    if stored["turns"][0]["domain"]:
        expect(turn.get_by_test_id("chat-matches")).to_have_attribute("data-matches", str(stored["turns"][0]["matches"]))
    else:
        expect(turn.get_by_test_id("chat-no-domain")).to_be_visible()

    # ---- a second message (Enter sends): the same conversation, two turns
    _send(page, "它的地址是哪里？", 2, enter=True)
    expect(by("chat-conversation-id")).to_have_text(cid)
    expect(by("chat-turn-count")).to_have_text("2 turns")
    expect(by("bot-state-turns")).to_have_text("2")
    expect(by("chat-message")).to_have_value("")
    listed = page.locator(f'[data-testid="conversation-row"][data-id="{cid}"]')
    expect(listed).to_have_attribute("data-turns", "2")
    expect(listed).to_have_class(re.compile(r"\bselected\b"))

    # ---- a new conversation: no turns, no state, then a new id
    by("chat-new").click()
    expect(by("chat-turn")).to_have_count(0)
    expect(by("chat-conversation-new")).to_be_visible()
    expect(by("bot-state-none")).to_be_visible()
    _send(page, "我要打车去故宫", 1)
    expect(by("chat-conversation-id")).not_to_have_text(cid)
    expect(by("bot-state-turns")).to_have_text("1")
    expect(by("conversation-row")).to_have_count(3)

    # ---- the earlier conversation from the list: its two turns and state, and it goes on
    listed.get_by_test_id("conversation-link").click()
    expect(by("chat-conversation-id")).to_have_text(cid)
    expect(by("chat-turn")).to_have_count(2)
    expect(by("chat-user").nth(0)).to_have_text("你好，帮我找一家价格800-1000元的酒店。")
    expect(by("chat-user").nth(1)).to_have_text("它的地址是哪里？")
    expect(by("bot-state-turns")).to_have_text("2")
    assert page.url.endswith(f"?conversation={cid}")
    _send(page, "谢谢，再见。", 3)
    expect(by("chat-conversation-id")).to_have_text(cid)
    expect(by("bot-state-turns")).to_have_text("3")

    # ---- a conversation with a hotel found: constraints per domain, the chosen one, the acts and lookup
    page.locator(f'[data-testid="conversation-row"][data-id="{SEEDED}"]').click()
    expect(by("chat-conversation-id")).to_have_text(SEEDED)
    expect(by("chat-turn")).to_have_count(1)
    hotel = page.locator('[data-testid="bot-state-domain"][data-domain="酒店"]')
    expect(hotel.locator('[data-testid="bot-state-slot"][data-slot="价格"]')).to_contain_text("800-1000元")
    expect(hotel.get_by_test_id("bot-state-selected")).to_have_text("北京饭店")
    expect(by("bot-state-active")).to_have_text("酒店")
    turn = by("chat-turn").first
    turn.get_by_test_id("chat-details-open").click()
    user_acts = turn.get_by_test_id("chat-user-acts")
    expect(user_acts.locator('[data-testid="act-row"][data-act="Inform"]')).to_contain_text("800-1000元")
    expect(user_acts.locator('[data-testid="act-row"][data-act="Request"]')).to_contain_text("名称")
    expect(turn.get_by_test_id("chat-system-acts")).to_contain_text("北京饭店")
    expect(turn.get_by_test_id("chat-matches")).to_have_attribute("data-matches", "1")
    expect(turn.get_by_test_id("chat-record")).to_have_text("北京饭店")
    _send(page, "谢谢", 2)  # the stored state carries into the next turn
    expect(by("chat-conversation-id")).to_have_text(SEEDED)
    expect(hotel.locator('[data-testid="bot-state-slot"][data-slot="价格"]')).to_contain_text("800-1000元")
    expect(by("bot-state-turns")).to_have_text("2")

    # ---- an unknown conversation id: said so, and a way out
    page.goto(url + "/ui/#/apps/trip?conversation=conv-nope")
    expect(by("chat-load-error")).to_contain_text("no conversation 'conv-nope'")
    by("chat-start-new").click()
    expect(by("chat-conversation-new")).to_be_visible()
    expect(by("chat-load-error")).to_have_count(0)

    assert page.crashes == [], page.crashes


def test_web_bot_file_problems_publish_and_replace(server, page):  # noqa: F811
    expect = sync_api.expect
    url = server
    by = page.get_by_test_id

    # ---- a bot file with mistakes: every problem with its line; nothing is published
    page.goto(url + "/ui/#/apps")
    by("bot-form-open").click()
    by("bot-yaml").fill(BAD_BOT)
    by("bot-check").click()
    def line(n: int):
        return page.locator(f'[data-testid="bot-problem-row"][data-line="{n}"]')

    expect(line(2)).to_contain_text("module 'followup' is missing")
    expect(line(4)).to_contain_text("'nope'")
    expect(line(6)).to_contain_text("unknown module 'chat'")
    expect(line(8)).to_have_count(2)  # the missing table and `required` not a list
    expect(line(9)).to_contain_text("unknown field 'colour'")
    line(4).get_by_test_id("bot-problem-line").click()
    assert page.evaluate("(() => { const t = document.querySelector('[data-testid=bot-yaml]');"
                         " return t.value.slice(t.selectionStart, t.selectionEnd); })()") == "  extract: {model: nope}"
    by("bot-name").fill("trip-copy")
    by("bot-publish").click()
    expect(line(9)).to_be_visible()
    assert [a["name"] for a in _get(url + "/api/apps")["data"]] == ["trip"]

    # ---- a good file: checked (its modules and domains), published, listed
    good = _get(url + "/api/apps/trip")["yaml"]
    by("bot-yaml").fill(good)
    by("bot-check").click()
    expect(by("bot-status")).to_contain_text("No problems")
    expect(by("bot-check-modules").get_by_test_id("bot-module-row")).to_have_count(4)
    expect(by("bot-check-domains").get_by_test_id("bot-domain-row")).to_have_count(2)
    by("bot-publish").click()
    expect(by("bot-status")).to_contain_text("bot:trip-copy")
    expect(page.locator('[data-testid="app-row"][data-name="trip-copy"]')).to_contain_text("bot:trip-copy")

    # ---- the same name again: a conflict that says how to replace; ticked, a new version
    by("bot-publish").click()
    expect(by("bot-replace-hint")).to_be_visible()
    by("bot-replace").check()
    v2 = good.replace(good.splitlines()[0], 'description: "<b>v2</b> from the form"')
    by("bot-yaml").fill(v2)
    by("bot-publish").click()
    expect(by("bot-status")).to_contain_text("bot:trip-copy")
    row = page.locator('[data-testid="app-row"][data-name="trip-copy"]')
    expect(row).to_contain_text("<b>v2</b> from the form")  # shown as text, not markup
    assert row.locator("b").count() == 0
    by("bot-open").click()
    page.wait_for_url(re.compile(r".*#/apps/trip-copy$"))
    expect(by("bot-version")).to_have_text("2")
    expect(by("app-description")).to_have_text("<b>v2</b> from the form")

    # ---- "Publish a new version" fills the form with the published file
    by("bot-edit").click()
    expect(by("bot-name")).to_have_value("trip-copy")
    expect(by("bot-replace")).to_be_checked()
    expect(by("bot-yaml")).to_have_value(v2)

    assert page.crashes == [], page.crashes
