"""Dialogue bots the way a user meets them: `modelmill apps bot build` makes each module's training data
from a dialogue dataset's annotations, registers its tables, trains an adapter and publishes bot:NAME;
`apps bot chat` and `modelmill serve` (REST and the official OpenAI client) carry the state across turns
by conversation id. The tracking, matching and policy rules are checked on their own, and on CrossWOZ
where ../shared/data is present."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import CLI, SHARED_DATA, Server, wait_for_job

from modelmill.apps import dialogue as dlg

HOTELS = [["北京饭店", {"领域": "酒店", "名称": "北京饭店", "酒店类型": "豪华型", "地址": "东长安街33号", "价格": 900,
                        "评分": 4.7, "酒店设施": ["早餐服务", "无烟房"], "周边景点": ["故宫"]}],
          ["如家快捷", {"领域": "酒店", "名称": "如家快捷", "酒店类型": "经济型", "地址": "西直门外大街1号", "价格": 260,
                        "评分": 4.3, "酒店设施": ["无烟房"], "周边景点": []}],
          ["颐和安缦", {"领域": "酒店", "名称": "颐和安缦", "酒店类型": "豪华型", "地址": "宫门前街1号", "价格": 3200,
                        "评分": 4.9, "酒店设施": ["早餐服务"], "周边景点": ["颐和园"]}]]
TAXI = [["出租 ($出发地 - $目的地)", {"领域": "出租", "车型": "#CX", "车牌": "#CP"}]]


def _dialogue(i: int) -> dict:
    price = ["200-300元", "800-1000元", "3000-4000元"][i % 3]
    name = ["如家快捷", "北京饭店", "颐和安缦"][i % 3]
    return {"id": f"d{i}", "type": "单领域", "task": [],
            "goal": [[1, "酒店", "价格", price, False], [1, "酒店", "名称", "", False], [1, "酒店", "地址", "", False]],
            "messages": [
                {"role": "user", "content": f"你好，帮我找一家价格{price}的酒店。",
                 "dialog_act": [["General", "greet", "none", "none"], ["Inform", "酒店", "价格", price],
                                ["Request", "酒店", "名称", ""]]},
                {"role": "system", "content": f"推荐您去{name}。", "dialog_act": [["Inform", "酒店", "名称", name]],
                 "db_query": {"酒店": {"价格": price, "名称": "", "selectedResults": [name]}}},
                {"role": "user", "content": "它的地址是哪里？", "dialog_act": [["Request", "酒店", "地址", ""]]},
                {"role": "system", "content": "地址在城里。", "dialog_act": [["Inform", "酒店", "地址", "城里"]],
                 "db_query": {"酒店": {"价格": price, "名称": "", "selectedResults": [name]}}},
                {"role": "user", "content": "再帮我叫辆出租车，从酒店到故宫。",
                 "dialog_act": [["Inform", "出租", "出发地", name], ["Inform", "出租", "目的地", "故宫"]]},
                {"role": "system", "content": "已为您叫车。", "dialog_act": [["Inform", "出租", "车型", "#CX"]],
                 "db_query": {"出租": {"出发地": name, "目的地": "故宫", "selectedResults": []}}},
                {"role": "user", "content": "谢谢，再见。", "dialog_act": [["General", "bye", "none", "none"]]},
            ]}


@pytest.fixture(scope="module")
def bot_home(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("bot-home")
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    data = tmp_path_factory.mktemp("bot-data")
    (data / "dialogues.jsonl").write_text("\n".join(json.dumps(_dialogue(i), ensure_ascii=False)
                                                    for i in range(24)) + "\n", encoding="utf-8")
    db = data / "database"
    db.mkdir()
    (db / "hotel_db.json").write_text(json.dumps(HOTELS, ensure_ascii=False), encoding="utf-8")
    (db / "taxi_db.json").write_text(json.dumps(TAXI, ensure_ascii=False), encoding="utf-8")
    p = cli("apps", "bot", "build", "trip", "--dialogues", data / "dialogues.jsonl", "--database", db, "--base", "tiny",
            "--modules", "extract", "--epochs", "1", "--test-fraction", "0.25")
    return home, cli, data, p.stdout


def test_build_makes_data_tables_an_adapter_and_the_bot(bot_home):
    home, cli, data, out = bot_home
    assert "to train on" in out and "held out" in out
    assert "tables: 酒店 -> trip-hotel, 出租 -> trip-taxi" in out
    spec = json.loads(cli("apps", "show", "trip", "--json").stdout)
    assert spec["kind"] == "bot" and spec["base_model"] == "tiny"
    mods = spec["spec"]["modules"]
    assert mods["extract"] == {"model": "trip-extract", "prompted": False}  # trained
    assert mods["intent"]["prompted"] and mods["answer"]["prompted"]       # few-shot prompts on the base
    assert spec["spec"]["domains"]["出租"]["required"] == ["出发地", "目的地"]  # learned: always given
    names = [r.split()[0] for r in cli("data", "list").stdout.splitlines()[1:]]
    assert {"trip-intent", "trip-extract", "trip-answer"} <= set(names)
    rec = [json.loads(x) for x in (home / "files" / "bots" / "trip" / "extract.jsonl").read_text().splitlines()]
    assert rec[0]["messages"][-1]["content"] == "General greet\nInform 酒店 价格 200-300元\nRequest 酒店 名称"
    train = {json.loads(x)["id"] for x in (home / "files" / "bots" / "trip" / "train.jsonl").read_text().splitlines()}
    test = {json.loads(x)["id"] for x in (home / "files" / "bots" / "trip" / "test.jsonl").read_text().splitlines()}
    assert train and test and not train & test and len(train | test) == 24  # split by dialogue
    assert "trip-extract" in cli("adapters", "list").stdout


def test_bot_files_are_checked_with_their_lines(bot_home, tmp_path):
    home, cli, data, _ = bot_home
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\nmodules:\n  intent: tiny\n  extract: {model: nope}\n  answer: tiny\n  chat: tiny\n"
                   "domains:\n  酒店: {table: missing-table, required: 出发地}\ncolour: red\n", encoding="utf-8")
    p = cli("apps", "bot", "check", bad, ok=False)
    err = p.stderr
    assert "bad.yaml" in err
    assert "line 2" in err or ":2" in err  # followup missing, named at modules
    for text in ("module 'followup' is missing", "model 'nope' does not exist", "unknown module 'chat'",
                 "no lookup table named 'missing-table'", "required must be a list", "unknown field 'colour'"):
        assert text in err, text
    assert "bad.yaml:4" in err  # the extract line
    good = home / "files" / "bots" / "trip" / "bot.yaml"
    assert ": ok" in cli("apps", "bot", "check", good).stdout
    p = cli("apps", "bot", "create", "trip", good, ok=False)
    assert "exists" in p.stderr and "--replace" in p.stderr
    cli("apps", "bot", "create", "trip", good, "--replace")


def test_chat_carries_state_by_conversation_id(bot_home):
    home, cli, data, _ = bot_home
    first = json.loads(cli("apps", "bot", "chat", "trip", "你好，帮我找一家价格800-1000元的酒店。", "--json").stdout)
    cid = first["conversation_id"]
    assert cid.startswith("conv-") and first["reply"] is not None
    assert [m["module"] for m in first["modules"]][-1] in ("answer", "followup")
    assert {m["module"] for m in first["modules"]} >= {"intent", "extract"}
    second = json.loads(cli("apps", "bot", "chat", "trip", "地址是哪里？", "--conversation", cid, "--json").stdout)
    assert second["conversation_id"] == cid and second["state"]["turns"] == 2
    shown = cli("apps", "bot", "conversation", cid).stdout
    assert "2 turns" in shown and "地址是哪里？" in shown
    p = cli("apps", "bot", "chat", "trip", "hi", "--conversation", "conv-nope", ok=False)
    assert "no conversation 'conv-nope'" in p.stderr and "leave conversation_id out" in p.stderr


def test_a_bot_is_scored_and_ranked_like_any_model(bot_home, tmp_path):
    """`modelmill eval --models bot:NAME`: each item's user messages are one new conversation, and
    the reply to the last one is scored; the replies are the ones `apps bot chat` gives for the
    same turns (state carried from the first turn to the second)."""
    from conftest import write_jsonl

    home, cli, data, _ = bot_home
    items = [{"messages": [{"role": "user", "content": "你好，帮我找一家价格800-1000元的酒店。"}], "reference": "推荐您去北京饭店。"},
             {"messages": [{"role": "user", "content": "我要打车去故宫"}, {"role": "assistant", "content": "请问从哪里出发？"},
                           {"role": "user", "content": "从北京饭店出发"}], "reference": "已为您叫车。"}]
    test = write_jsonl(tmp_path / "replies.jsonl", items)
    cli("eval", "--data", test, "--kind", "generation", "--name", "trip-replies", "--models", "bot:trip")
    from modelmill.config import Settings
    from modelmill.evaluate.results import latest
    from modelmill.evaluate.runner import read_items
    from modelmill.store import Store

    row = next(r for r in latest(Store(Settings(home=home)), "trip-replies") if r.candidate == "bot:trip")
    assert row.candidate_kind == "bot" and row.n_done == 2 and "rouge_l" in row.metrics
    got = [it["pred"] for it in read_items(row.path)]
    one = json.loads(cli("apps", "bot", "chat", "trip", items[0]["messages"][0]["content"], "--json").stdout)
    first = json.loads(cli("apps", "bot", "chat", "trip", "我要打车去故宫", "--json").stdout)
    second = json.loads(cli("apps", "bot", "chat", "trip", "从北京饭店出发", "--conversation", first["conversation_id"],
                            "--json").stdout)
    assert got == [one["reply"], second["reply"]]
    assert "bot:trip" in cli("leaderboard", "--task", "trip-replies").stdout
    p = cli("eval", "--data", test, "--kind", "generation", "--name", "trip-replies", "--models", "bot:nope", ok=False)
    assert "no bot named 'nope'" in p.stderr


def test_served_over_rest_and_v1(bot_home):
    home, cli, data, _ = bot_home
    srv = Server(home)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            models = [m["id"] for m in c.get("/v1/models").json()["data"]]
            assert "bot:trip" in models
            r = c.post("/api/apps/trip/chat", json={"message": "我要打车去故宫"})
            assert r.status_code == 200, r.text
            turn = r.json()
            cid = turn["conversation_id"]
            r = c.post("/api/apps/trip/chat", json={"message": "从北京饭店出发", "conversation_id": cid})
            assert r.status_code == 200 and r.json()["state"]["turns"] == 2
            conv = c.get(f"/api/apps/conversations/{cid}").json()
            assert len(conv["turns"]) == 2 and conv["bot"] == "trip"
            assert [x["id"] for x in c.get("/api/apps/trip/conversations").json()["data"]][0] == cid
            r = c.post("/api/apps/trip/chat", json={"message": "hi", "conversation_id": "conv-missing"})
            assert r.status_code == 404 and r.json()["error"]["param"] == "conversation_id"
            r = c.post("/api/apps/bots/check", json={"yaml": "base: tiny\nmodules: {}\ndomains: {}\n"})
            assert r.status_code == 400 and "module 'intent' is missing" in r.text
            r = c.post("/api/apps/nosuchbot/chat", json={"message": "hi"})
            assert r.status_code == 404
            r = c.post("/v1/chat/completions", json={"model": "trip", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 404 and "bot:trip" in r.text  # the plain name says how to call it
        client = srv.client()
        out = client.chat.completions.create(model="bot:trip", messages=[{"role": "user", "content": "订酒店"}])
        cid = out.model_extra["conversation_id"]
        assert out.choices[0].message.content is not None and out.model_extra["bot"]["kind"] in ("answer", "followup")
        out2 = client.chat.completions.create(model="bot:trip", messages=[{"role": "user", "content": "再见"}],
                                              extra_body={"metadata": {"conversation_id": cid}})
        assert out2.model_extra["conversation_id"] == cid
        chunks = list(client.chat.completions.create(model="bot:trip", stream=True,
                                                     messages=[{"role": "user", "content": "谢谢"}],
                                                     extra_body={"conversation_id": cid}))
        assert chunks[-1].model_extra["conversation_id"] == cid
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) is not None
        import openai

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="bot:trip", messages=[{"role": "user", "content": "x"}],
                                           extra_body={"conversation_id": "conv-gone"})
    finally:
        srv.stop()
    rep = cli("apps", "bot", "eval", "trip", "--limit", "2")
    assert "user dialogue acts: F1" in rep.stdout and "inform" in rep.stdout
    cli("apps", "remove", "trip")
    p = cli("apps", "bot", "conversation", cid, ok=False)  # a bot's conversations go with it
    assert "no conversation" in p.stderr


# ----------------------------------------------------------------------------- rules, without a model


def test_a_bot_build_is_a_job_over_rest(bot_home):
    """POST /api/jobs {"kind": "bot-build"} runs the library call `apps bot build` makes, in a worker:
    the module adapter trained, the bot published and served; bad settings are refused at submit."""
    home, cli, data, _ = bot_home
    srv = Server(home, "--workers", "1", "--poll", "0.3", command="up")
    try:
        with httpx.Client(base_url=srv.url, timeout=180) as c:
            fields = {f["name"] for f in c.get("/api/schema/bot-build").json()["fields"]}
            assert {"name", "dialogues", "database", "base", "modules", "train"} <= fields
            config = {"name": "trip-job", "dialogues": str(data / "dialogues.jsonl"), "database": str(data / "database"),
                      "base": "tiny", "modules": "intent", "test_fraction": 0.25}
            for bad, needle in (({"dialogues": str(data / "nope.jsonl")}, "no dialogue file"),
                                ({"base": "ghost"}, "ghost"), ({"name": "tiny"}, "already the name of a model"),
                                ({"modules": "intent,dance"}, "unknown module dance")):
                r = c.post("/api/jobs", json={"kind": "bot-build", "config": {**config, **bad}})
                assert r.status_code in (400, 404, 409) and needle in r.json()["error"]["message"], r.text
            r = c.post("/api/jobs", json={"kind": "bot-build", "config": config})
            assert r.status_code == 201, r.text
            jid = r.json()["id"]
            job = wait_for_job(c, jid)
            assert job["status"] == "succeeded", job
            events = c.get(f"/api/jobs/{jid}/events").text
            assert job["result"]["model_id"] == "bot:trip-job" and job["fine_tuned_model"] == "bot:trip-job"
            assert "training trip-job-intent" in events and "held out" in events
            assert "bot:trip-job" in [m["id"] for m in c.get("/v1/models").json()["data"]]
            spec = json.loads(cli("apps", "show", "trip-job", "--json").stdout)["spec"]
            assert spec["modules"]["intent"] == {"model": "trip-job-intent", "prompted": False}
            r = c.post("/api/apps/trip-job/chat", json={"message": "我要打车去故宫"})
            assert r.status_code == 200, r.text
    finally:
        srv.stop()


def test_acts_round_trip_and_intent_labels():
    acts = [["General", "greet", "none", "none"], ["Inform", "酒店", "游玩时间", "3小时 - 4小时"],
            ["Request", "酒店", "名称", ""]]
    assert dlg.parse_acts(dlg.acts_text(acts)) == acts
    assert dlg.intent_label(acts) == "酒店 Inform Request\nGeneral greet"
    assert dlg.parse_intent("酒店 Inform Request\nGeneral greet") == {"domains": ["酒店"], "acts": ["Inform", "Request"],
                                                                        "general": ["greet"]}
    assert dlg.parse_acts("Sure! Here they are:\n- Inform 酒店 价格 300元\nnonsense") == [["Inform", "酒店", "价格", "300元"]]


def test_act_f1_counts_each_act_once_and_splits_by_act_type():
    from modelmill.apps.bot_eval import prf, prf_by_act

    gold = [[["Inform", "酒店", "价格", "300元"], ["Request", "酒店", "地址", ""]], [["General", "thank", "none", "none"]]]
    pred = [[["Inform", "酒店", "价格", "300 元"], ["Request", "酒店", "电话", ""]], [["General", "thank", "none", "none"]]]
    assert prf(pred, gold) == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "turns": 2}  # spaces ignored
    by = prf_by_act(pred, gold)
    assert sorted(by) == ["General", "Inform", "Request"]
    assert by["Inform"]["f1"] == by["General"]["f1"] == 1.0 and by["Request"]["f1"] == 0.0


def test_tfidf_baseline_reads_values_from_its_lexicon_the_same_way_every_time():
    from modelmill.apps.bot_eval import TfidfActs

    def dialogue(i, text, acts):
        return {"id": str(i), "messages": [{"role": "user", "content": text, "dialog_act": acts}]}

    train = [dialogue(i, t, a) for i, (t, a) in enumerate(2 * [
        ("我想找一家价格在300-400元的酒店", [["Inform", "酒店", "价格", "300-400元"]]),
        ("酒店的地址是哪里", [["Request", "酒店", "地址", ""]]),
        ("谢谢你", [["General", "thank", "none", "none"]])])]
    # two values as long as each other, both in the utterance: the first in sorted order, whatever the set's order
    model = TfidfActs.fit(train, lexicon={("酒店", "价格"): {"500-600元", "400-500元", "1000元以上"}})
    assert model.lexicon[("酒店", "价格")] == ["300-400元", "400-500元", "500-600元", "1000元以上"]
    assert model.predict(None, "价格在400-500元或者500-600元的酒店") == [["Inform", "酒店", "价格", "400-500元"]]
    assert model.predict(None, "谢谢你") == [["General", "thank", "none", "none"]]


def test_constraints_match_cells_as_crosswoz_writes_them():
    assert dlg.cell_matches(120, "100-150元") and not dlg.cell_matches(68, "100-150元")
    assert dlg.cell_matches(4.7, "4.5分以上") and not dlg.cell_matches(4.3, "4.5分以上")
    assert dlg.cell_matches(0, "免费") and not dlg.cell_matches(None, "免费")
    assert dlg.cell_matches(["驴杂汤", "锅包肉"], "驴杂汤") and not dlg.cell_matches(["锅包肉"], "驴杂汤 锅包肉")
    assert not dlg.cell_matches("故宫博物院", "故宫") and not dlg.cell_matches(["早餐服务免费"], "早餐服务")  # exact
    assert not dlg.cell_matches(["水煮鱼", " "], "水") and not dlg.cell_matches("11小时 - 3天", "1小时")
    rows = [dict(h[1]) for h in HOTELS]
    assert [r["名称"] for r in dlg.search(rows, {"名称": "北京"})[0]] == ["北京饭店"]  # a name: as written, else part
    assert dlg.search(rows, {"名称": "希尔顿", "价格": "200-300元"}) == ([], True)  # never swapped for another
    hotel = dict(HOTELS[0][1])
    assert dlg.row_matches(hotel, {"酒店设施-早餐服务": "是", "价格": "800-1000元"})
    assert not dlg.row_matches(hotel, {"酒店设施-健身房": "是"})
    assert dlg.row_matches(hotel, {"出发地": "故宫"})  # a slot the table has no column for does not narrow


def test_state_and_policy_ask_for_what_is_missing_then_answer_from_the_row():
    s = dlg.new_state()
    dlg.update_state(s, [["Inform", "出租", "目的地", "故宫"]])
    plan = dlg.policy(s, "出租", [], required=["出发地", "目的地"])
    assert plan["kind"] == "followup" and plan["missing"] == ["出发地"] and s["asked"] == "出发地"
    dlg.update_state(s, [["Inform", "出租", "出发地", "北京饭店"]])
    assert s["asked"] is None
    assert dlg.policy(s, "出租", [TAXI[0][1]], required=["出发地", "目的地"])["kind"] == "answer"
    s = dlg.new_state()
    dlg.update_state(s, [["Inform", "酒店", "价格", "800-1000元"], ["Request", "酒店", "名称", ""]])
    rows = [dict(h[1]) for h in HOTELS if dlg.row_matches(h[1], s["constraints"]["酒店"])]
    plan = dlg.policy(s, "酒店", rows)
    assert plan["acts"] == [["Inform", "酒店", "名称", "北京饭店"]] and s["selected"]["酒店"] == "北京饭店"
    dlg.update_state(s, [["Request", "酒店", "地址", ""]])
    plan = dlg.policy(s, "酒店", rows)
    assert plan["acts"] == [["Inform", "酒店", "地址", "东长安街33号"]]  # the chosen hotel, not a new one
    assert dlg.policy(s, "酒店", [])["acts"] == [["NoOffer", "酒店", "none", "none"]]
    assert dlg.policy(s, None, [], general=["bye"])["acts"] == [["General", "bye", "none", "none"]]


def test_tracking_folds_facilities_joins_values_and_relaxes_like_a_clerk():
    s = dlg.new_state()
    dlg.update_state(s, [["Inform", "酒店", "酒店设施-早餐服务", "是"], ["Inform", "酒店", "酒店设施-无烟房", "是"],
                         ["Inform", "酒店", "价格", "800-1000元"]])
    assert s["constraints"]["酒店"] == {"酒店设施": "早餐服务 无烟房", "价格": "800-1000元"}
    rows = [dict(h[1]) for h in HOTELS]
    found, exact = dlg.search(rows, dlg.query(s, "酒店"))
    assert exact and [r["名称"] for r in found] == ["北京饭店"]
    dlg.policy(s, "酒店", found)
    assert s["selected"]["酒店"] == "北京饭店" and "名称" not in s["constraints"]["酒店"]
    # a second constraint adds to the first (it does not start over)
    dlg.update_state(s, [["Inform", "酒店", "价格", "200-300元"], ["Inform", "酒店", "评分", "4.5分以上"]])
    assert s["constraints"]["酒店"] == {"酒店设施": "早餐服务 无烟房", "价格": "200-300元", "评分": "4.5分以上"}
    assert s["searched"] == ["酒店"]
    found, exact = dlg.search(rows, dlg.query(s, "酒店"))  # none meets all three: the one meeting two
    assert not exact and [r["名称"] for r in found] == ["北京饭店"]
    plan = dlg.policy(s, "酒店", found, exact=False)
    assert plan["acts"] == [["NoOffer", "酒店", "none", "none"], ["Inform", "酒店", "名称", "北京饭店"],
                            ["Inform", "酒店", "价格", "900"]]  # and what it costs instead
    dlg.update_state(s, [["Request", "酒店", "地址", ""]])  # the user takes it: no NoOffer again
    plan = dlg.policy(s, "酒店", dlg.search(rows, dlg.query(s, "酒店"))[0], exact=False)
    assert plan["acts"] == [["Inform", "酒店", "地址", "东长安街33号"]]
    dlg.update_state(s, [["Inform", "酒店", "名称", "颐和安缦"], ["Request", "酒店", "价格", ""]])  # a named place
    found, exact = dlg.search(rows, dlg.query(s, "酒店"))
    assert exact and dlg.policy(s, "酒店", found)["acts"] == [["Inform", "酒店", "名称", "颐和安缦"],
                                                              ["Inform", "酒店", "价格", "3200"]]
    s2 = dlg.new_state()  # a tie between domains: the first mentioned, on every run
    dlg.update_state(s2, [["Request", "景点", "地址", ""], ["Request", "餐馆", "地址", ""]])
    assert s2["domain"] == "景点"


def test_dialogue_files_name_the_bad_line(tmp_path):
    from modelmill.apps.bot_data import read_dialogues
    from modelmill.errors import InputError

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(_dialogue(0), ensure_ascii=False) + "\n" +
                 json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi", "dialog_act": [["Inform"]]}]})
                 + "\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_dialogues(f)
    assert e.value.line == 2 and "dialog_act" in str(e.value.field)


@pytest.mark.skipif(not (SHARED_DATA / "crosswoz" / "dialogues.jsonl").is_file(),
                    reason="../shared/data/crosswoz is not here (a fresh clone has no ../shared)")
def test_crosswoz_annotations_become_module_data():
    from modelmill.apps import bot_data

    ds = bot_data.read_dialogues(SHARED_DATA / "crosswoz" / "dialogues.jsonl")
    train, test = bot_data.split(ds)
    assert len(ds) == 500 and not {d["id"] for d in train} & {d["id"] for d in test} and 60 < len(test) < 140
    ex = bot_data.examples(train)
    assert len(ex["extract"]) == len(ex["intent"]) == sum(1 for d in train for m in d["messages"] if m["role"] == "user")
    for d in ds:  # every annotated user turn survives the trip through the module's text and back
        for m in d["messages"]:
            if m["role"] == "user":
                want = list(dict.fromkeys(dlg.act_key(a) for a in m["dialog_act"]))
                assert [dlg.act_key(a) for a in dlg.parse_acts(dlg.acts_text(m["dialog_act"]))] == want
    assert bot_data.required_slots(train) == {"出租": ["出发地", "目的地"], "地铁": ["出发地", "目的地"]}


@pytest.mark.skipif(not (SHARED_DATA / "crosswoz" / "database").is_dir(),
                    reason="../shared/data/crosswoz is not here (a fresh clone has no ../shared)")
def test_crosswoz_replayed_with_its_own_acts(home):
    """Tracking, lookup and policy on the held-out dialogues with the dataset's own user acts (no model):
    a regression guard for the rules the measured bot stands on (bench/bots.py prints these figures)."""
    from modelmill.apps import bot_data
    from modelmill.apps.bot_eval import replay_oracle
    from modelmill.apps.bots import Bot, Domain
    from modelmill.store import open_store

    store = open_store()
    tables = bot_data.register_tables(store, "cw", SHARED_DATA / "crosswoz" / "database")
    from modelmill.apps.tables import LookupTables

    req = {"出租": ["出发地", "目的地"], "地铁": ["出发地", "目的地"]}
    train, test = bot_data.split(bot_data.read_dialogues(SHARED_DATA / "crosswoz" / "dialogues.jsonl"))
    derived = bot_data.derived_slots(train, {d: list(LookupTables(store).get(t).columns) for d, t in tables.items()})
    assert derived == {"地铁": {"出发地附近地铁站": {"by": "出发地", "field": "地铁"},
                              "目的地附近地铁站": {"by": "目的地", "field": "地铁"}}}
    bot = Bot("cw", "none", {}, {d: Domain(d, t, req.get(d, []), "名称", derived.get(d, {})) for d, t in tables.items()})
    r = replay_oracle(store, bot, test)
    assert r["scored_dialogues"] == len(test)
    assert r["inform"] >= 0.85 and r["success_acts"] >= 0.7 and r["db_query_match"] >= 0.5, r
    s = dlg.new_state()  # a station near a named place: from the row that place names
    dlg.update_state(s, [["Inform", "地铁", "出发地", "故宫"], ["Inform", "地铁", "目的地", "天坛"],
                         ["Request", "地铁", "出发地附近地铁站", ""]])
    from modelmill.apps.bots import next_step

    plan, _ = next_step(store, bot, s, "地铁", [])
    assert plan["acts"] == [["Inform", "地铁", "出发地附近地铁站", "灯市口地铁站A口"]]
