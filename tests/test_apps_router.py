"""A router over adapters, the way a user meets it: learned by `modelmill apps router create` from
the adapters' own training data, tried with `apps route`, served as a model id by `modelmill serve`
(each response says which route answered), scored by `modelmill eval` like any model, and made
over REST; bad input refused with nothing stored."""

from __future__ import annotations

import httpx
import pytest

from conftest import CLI, REVIEWS, Server, write_jsonl

FAST = ["--max-steps", "1", "--batch-size", "4"]


def review(text: str) -> str:
    """What a client of the reviews adapter sends: the classification prompt it was trained on."""
    from modelmill.data.formats.classification import classification_prompt

    return classification_prompt(text, ["negative", "neutral", "positive"])
CHINESE = ["请问我的订单什么时候发货？", "这个产品的质量非常好，价格也很合理。", "如何重置我的密码？", "退款需要多长时间到账？",
           "你们的客服电话是多少？", "我想更换收货地址。", "这件衣服有没有大一号的？", "发票可以开公司抬头吗？",
           "快递一直没有更新物流信息。", "优惠券为什么不能使用？", "会员积分怎么兑换？", "商品收到时包装破损了。"]
GENERAL = ["What is the capital of France?", "Write a short poem about the sea.", "How many days are in a week?",
           "Translate 'good morning' into Spanish.", "Explain what a prime number is.", "Who wrote Hamlet?",
           "Give me a recipe for pancakes.", "What is the boiling point of water?", "Summarise the plot of Cinderella.",
           "How do I sort a list in Python?", "What is photosynthesis?", "Name three planets of the solar system."]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("router-home")
    data = tmp_path_factory.mktemp("router-data")
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    cli("data", "import", write_jsonl(data / "reviews.jsonl", [
        {"text": f"{t} (visit {i})", "label": lab} for i, (t, lab) in enumerate(REVIEWS * 3)]), "--name", "reviews")
    cli("data", "import", write_jsonl(data / "zh.jsonl", [
        {"messages": [{"role": "user", "content": f"{q}（第{i}次）"}, {"role": "assistant", "content": "好的。"}]}
        for i, q in enumerate(CHINESE * 2)]), "--name", "zh-chat")
    cli("data", "import", write_jsonl(data / "general.jsonl", [
        {"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": "Sure."}]}
        for i, q in enumerate(GENERAL * 2)]), "--name", "general")
    cli("train", "--base", "tiny", "--data", "reviews", "--name", "rev-lora", *FAST)
    cli("train", "--base", "tiny", "--data", "zh-chat", "--name", "zh-lora", *FAST)
    out = cli("apps", "router", "create", "support", "--route", "rev-lora", "--route", "zh-lora",
              "--fallback", "tiny", "--fallback-data", "general").stdout
    assert "router 'support' over rev-lora, zh-lora (fallback tiny)" in out
    return home


def test_the_router_is_learned_from_its_routes_data_and_chooses(home):
    cli = CLI(home)
    assert cli("apps", "route", "support", review("Terrible side effects, I had to stop the pills.")).stdout.startswith(
        "rev-lora")
    assert cli("apps", "route", "support", "请问这个商品什么时候能到？").stdout.startswith("zh-lora")
    assert cli("apps", "route", "support", "What is the tallest mountain on Earth?").stdout.startswith("tiny")
    shown = cli("apps", "show", "support").stdout
    assert "held-out routing accuracy" in shown and "reviews@" in shown and "zh-chat@" in shown
    assert "support" in cli("apps", "list").stdout


def test_the_router_is_served_as_a_model_and_says_which_route_answered(home):
    s = Server(home)
    try:
        client = s.client()
        assert {"id": "support", "type": "router"}.items() <= next(
            m for m in client.models.list().model_dump()["data"] if m["id"] == "support").items()
        r = client.chat.completions.create(model="support", max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": "退款什么时候到账？"}])
        route = r.model_extra["route"]
        assert route["app"] == "support" and route["model"] == "zh-lora" and 0 < route["confidence"] <= 1
        assert route["by"] in ("ngram", "minilm")
        assert r.model == "support"
        r = client.chat.completions.create(model="support", max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": "Who painted the Mona Lisa?"}])
        assert r.model_extra["route"]["model"] == "tiny" and r.model_extra["route"]["route"] == "(fallback)"
        # streaming: every chunk names the route
        chunks = list(client.chat.completions.create(model="support", max_tokens=3, stream=True, messages=[
            {"role": "user", "content": review("The pills gave me awful nausea every morning.")}]))
        assert {c.model_extra["route"]["model"] for c in chunks} == {"rev-lora"}
        # the same answer as calling the chosen adapter itself
        direct = client.chat.completions.create(model="zh-lora", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": "退款什么时候到账？"}])
        routed = client.chat.completions.create(model="support", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": "退款什么时候到账？"}])
        assert routed.choices[0].message.content == direct.choices[0].message.content
    finally:
        s.stop()


def test_a_router_is_scored_and_ranked_like_any_model(home, tmp_path):
    cli = CLI(home)
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": f"{t} [test {i}]", "label": lab}
                                                 for i, (t, lab) in enumerate(REVIEWS)])
    cli("eval", "--data", test, "--kind", "classification", "--name", "rev-test",
        "--models", "support,tiny:rev-lora")
    board = cli("leaderboard", "--task", "rev-test").stdout
    assert "support" in board and "rev-lora" in board
    from modelmill.config import Settings
    from modelmill.evaluate.results import latest
    from modelmill.store import Store

    rows = {r.candidate: r for r in latest(Store(Settings(home=home)), "rev-test")}
    # every review went to the reviews adapter, so the router scores exactly as that adapter does
    assert rows["support"].metrics["accuracy"] == rows["tiny:rev-lora"].metrics["accuracy"]


def test_bad_routers_are_refused_naming_the_flag_and_nothing_is_stored(home, tiny_model):
    cli = CLI(home)
    base = ["apps", "router", "create"]
    p = cli(*base, "r1", "--route", "ghost", "--fallback", "tiny", ok=False)
    assert "ghost" in p.stderr
    p = cli(*base, "r1", "--route", "rev-lora", "--fallback", "tiny", "--threshold", "1.5", ok=False)
    assert "--threshold" in p.stderr
    p = cli(*base, "r1", "--route", "rev-lora", "--fallback", "tiny", "--weight", "zh-lora=2", ok=False)
    assert "--weight" in p.stderr and "'zh-lora' is not a route" in p.stderr
    p = cli(*base, "r1", "--route", "rev-lora", "--fallback", "tiny", ok=False)
    assert "--fallback-data" in p.stderr  # one route, nothing to tell apart
    p = cli(*base, "tiny", "--route", "rev-lora", "--route", "zh-lora", "--fallback", "tiny", ok=False)
    assert "already the name of a model" in p.stderr
    cli("models", "add", "tiny2", tiny_model)
    p = cli(*base, "r1", "--route", "rev-lora", "--route", "tiny2=general", "--fallback", "tiny", ok=False)
    assert "share one base model" in p.stderr and "tiny2 (tiny2)" in p.stderr
    assert "r1" not in cli("apps", "list").stdout
    p = cli("apps", "route", "nope", "hello", ok=False)
    assert "no app named 'nope'" in p.stderr


def test_routers_over_rest(home):
    from fastapi.testclient import TestClient

    from modelmill.api.app import create_app
    from modelmill.config import Settings
    from modelmill.store import Store

    client = TestClient(create_app(Store(Settings(home=home))), base_url="http://localhost")
    body = {"name": "rest-router", "routes": ["rev-lora", "zh-lora"], "fallback": "tiny", "fallback_data": "general"}
    r = client.post("/api/apps/routers", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "router" and r.json()["metrics"]["held_out_accuracy"] > 0.5
    assert client.post("/api/apps/routers", json=body).status_code == 409
    r = client.post("/api/apps/rest-router/route", json={"text": "我想更换收货地址"})
    assert r.json()["model"] == "zh-lora"
    bad = client.post("/api/apps/routers", json={**body, "name": "r2", "weights": {"ghost": 2}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "weight"
    assert [a["name"] for a in client.get("/api/apps").json()["data"]] == ["rest-router", "support"]
    assert client.delete("/api/apps/rest-router").json() == {"deleted": "rest-router"}
    assert client.get("/api/apps/rest-router").status_code == 404
    assert httpx.codes.NOT_FOUND == client.post("/api/apps/ghost/route", json={"text": "x"}).status_code


def test_a_deployment_of_a_router_routes_and_answers_as_the_deployment(home):
    cli = CLI(home)
    cli("deploy", "set", "help-desk", "support", "--system", "Be brief.")
    assert "help-desk" in cli("deploy", "list").stdout
    s = Server(home)
    try:
        r = s.client().chat.completions.create(model="help-desk", max_tokens=3, temperature=0, messages=[
            {"role": "user", "content": "退款什么时候到账？"}])
        assert r.model == "help-desk" and r.model_extra["route"]["app"] == "support"
        assert r.model_extra["route"]["model"] == "zh-lora"
    finally:
        s.stop()
        cli("deploy", "remove", "help-desk")
