"""Eval-gated promotion the way a user meets it: a deployment with a gate task (`modelmill deploy
set ... --gate-data`), a new adapter promoted only when it beats the current one by the margin
(refused with both scores otherwise, nothing served changes), its history, rollback; the same over
REST on a running server, where the deployment name keeps answering chat completions."""

from __future__ import annotations

import httpx

from conftest import CLI, REVIEWS, Server, register_random_adapter, write_jsonl

TARGETS = ["q_proj", "v_proj"]


def setup(home, tiny_model, tmp_path) -> CLI:
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    register_random_adapter(home, tiny_model, "v1", 1, TARGETS)
    register_random_adapter(home, tiny_model, "v2", 2, TARGETS)
    cli("data", "import", write_jsonl(tmp_path / "test.jsonl", [{"text": f"{t} ({i})", "label": lab}
                                                                for i, (t, lab) in enumerate(REVIEWS * 2)]),
        "--name", "reviews-test")
    return cli


def test_a_gated_deployment_moves_only_to_a_model_that_wins(home, tiny_model, tmp_path):
    cli = setup(home, tiny_model, tmp_path)
    cli("deploy", "set", "bot", "tiny:v1", "--gate-data", "reviews-test", "--margin", "1")
    assert "reviews-test (+1)" in cli("deploy", "list").stdout
    # a margin of 1 (100 points of accuracy) cannot be won: refused, with both scores, and bot stays on v1
    p = cli("deploy", "promote", "bot", "tiny:v2", ok=False)
    assert p.returncode == 4 and "'tiny:v2' scores accuracy" in p.stderr and "the current 'tiny:v1'" in p.stderr
    assert "so 'bot' stays on 'tiny:v1'" in p.stderr
    assert "bot" in cli("deploy", "list").stdout and "tiny:v1" in cli("deploy", "list").stdout
    # a gated deployment is not repointed around its gate
    assert "has a gate" in cli("deploy", "set", "bot", "tiny:v2", ok=False).stderr
    # an easy gate: promoted, the scores in the history (the current model's score was reused)
    cli("deploy", "gate", "bot", "--gate-data", "reviews-test", "--margin", "-1")
    out = cli("deploy", "promote", "bot", "tiny:v2").stdout
    assert "promoted" in out and "tiny:v2  (was tiny:v1)  accuracy" in out
    hist = cli("deploy", "history", "bot").stdout.splitlines()
    assert [line.split()[1] for line in hist] == ["promoted", "refused", "created"]
    # rollback: back to v1 without a gate; then history names it
    assert "rolled back tiny:v1 (was tiny:v2)" in " ".join(cli("deploy", "rollback", "bot").stdout.split())
    assert cli("deploy", "history", "bot").stdout.split()[1:3] == ["rolled", "back"]
    assert "never pointed at 'tiny'" in cli("deploy", "rollback", "bot", "--to", "tiny", ok=False).stderr
    # bad input: no such deployment, a workflow as target, no gate without --force
    assert "no deployment 'nope'" in cli("deploy", "promote", "nope", "tiny:v2", ok=False).stderr
    cli("deploy", "set", "free", "tiny:v1")
    assert "has no gate" in cli("deploy", "promote", "free", "tiny:v2", ok=False).stderr
    assert "forced" in cli("deploy", "promote", "free", "tiny:v2", "--force").stdout


def test_promotion_over_rest_keeps_serving_the_deployment(home, tiny_model, tmp_path):
    setup(home, tiny_model, tmp_path)
    s = Server(home)
    try:
        r = httpx.post(f"{s.url}/api/deployments", json={"name": "bot", "model": "tiny:v1",
                                                         "gate": {"data": "reviews-test", "margin": 1}})
        assert r.status_code == 201 and r.json()["gate"]["margin"] == 1
        r = httpx.post(f"{s.url}/api/deployments/bot/promote", json={"model": "tiny:v2"}, timeout=300)
        assert r.status_code == 409
        d = r.json()["error"]["details"][0]
        assert d["metric"] == "accuracy" and d["previous"] == "tiny:v1" and d["score"] < d["previous_score"] + 1
        # the deployment still answers, from v1
        c = s.client()
        reply = c.chat.completions.create(model="bot", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert reply.model == "bot"
        assert httpx.get(f"{s.url}/api/deployments").json()["data"][0]["model"] == "tiny:v1"
        r = httpx.post(f"{s.url}/api/deployments/bot/promote", json={"model": "tiny:v2", "force": True}, timeout=300)
        assert r.status_code == 200 and r.json()["action"] == "forced" and r.json()["score"] is not None
        assert httpx.get(f"{s.url}/api/deployments/bot").json()["rollback_targets"] == ["tiny:v1"]
        r = httpx.post(f"{s.url}/api/deployments/bot/rollback", json={})
        assert r.status_code == 200 and r.json()["model"] == "tiny:v1"
        hist = httpx.get(f"{s.url}/api/deployments/bot/history").json()["data"]
        assert [e["action"] for e in hist] == ["rolled back", "forced", "refused", "created"]
        r = httpx.put(f"{s.url}/api/deployments/bot/gate", json={"data": "reviews-test", "margin": 0.5})
        assert r.status_code == 200 and r.json()["gate"]["margin"] == 0.5 and r.json()["model"] == "tiny:v1"
        assert httpx.put(f"{s.url}/api/deployments/bot/gate").json()["gate"] is None
        bad = httpx.post(f"{s.url}/api/deployments/bot/promote", json={"model": "nope"})
        assert bad.status_code == 404
        bad = httpx.post(f"{s.url}/api/deployments", json={"name": "bot2", "model": "tiny",
                                                           "gate": {"data": "reviews-test", "margin": 5}})
        assert bad.status_code == 400
    finally:
        s.stop()


def test_concurrent_creates_of_one_deployment_make_one_and_fail_none(home, tiny_model):
    """Whether a deployment's name is new is decided under its lock: six threads creating 'live' at
    once make one deployment (created once, updated after), not a 409 'already a deployment'."""
    import threading

    from modelmill.apps.deployments import Deployments
    from modelmill.store import open_store

    CLI(home)("models", "add", "tiny", tiny_model)
    store = open_store()
    errors, start = [], threading.Barrier(6)

    def create():
        start.wait()
        try:
            Deployments(store).put("live", "tiny")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [d.name for d in Deployments(store).list()] == ["live"]
