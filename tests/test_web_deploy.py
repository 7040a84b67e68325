"""Eval-gated promotion on the Deployments page, in a real headless Chromium against `modelmill
serve`, the way a non-expert meets it: create a deployment with a gate nobody can win (margin 1),
propose the second adapter and watch it score, read the refusal with both scores while the
deployment stays on the first; lower the margin and see it promoted; read the history; roll back;
edit the deployment and remove its gate.

Uses the browser set-up of test_web_ui.py (Debian's /usr/bin/chromium driven by playwright; the
module is skipped where either is missing), the tiny model and two random adapters: nothing is
downloaded.
"""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import CLI, REVIEWS, Server, register_random_adapter, write_jsonl
from test_web_ui import page, sync_api  # noqa: F401  (the browser fixture; skips this module without chromium)

SCORING = 600_000  # ms: two models answer the test set on a busy 2-core machine


def _get(url: str) -> dict:
    r = httpx.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture()
def server(home, tiny_model, tmp_path):
    """`modelmill serve` with the tiny model, adapters v1 and v2 and a classification test set."""
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    register_random_adapter(home, tiny_model, "v1", 1, ["q_proj", "v_proj"])
    register_random_adapter(home, tiny_model, "v2", 2, ["q_proj", "v_proj"])
    cli("data", "import", write_jsonl(tmp_path / "test.jsonl", [{"text": f"{t} ({i})", "label": lab}
                                                                for i, (t, lab) in enumerate(REVIEWS * 2)]),
        "--name", "reviews-test")
    s = Server(home)
    try:
        yield s.url
    finally:
        s.stop()
        s.log.unlink(missing_ok=True)


def test_web_gated_promotion_refused_promoted_history_rollback(server, page):  # noqa: F811
    expect = sync_api.expect
    url = server
    by = page.get_by_test_id

    # ---- create "bot" on v1 behind a gate of margin 1: a hundred points of accuracy, unwinnable
    page.goto(url + "/ui/#/deployments")
    by("deploy-name").fill("bot")
    by("deploy-model").select_option("tiny:v1")
    expect(by("deploy-gate-data")).to_be_hidden()
    by("deploy-gate-on").check()
    by("deploy-gate-data").select_option("reviews-test")
    by("deploy-gate-margin").fill("1")
    by("deploy-submit").click()
    expect(by("deploy-status")).to_contain_text("“bot”")
    expect(by("deploy-status")).to_contain_text("reviews-test · headline metric · margin +1")
    row = page.locator('[data-testid="deployment-row"][data-name="bot"]')
    expect(row.get_by_test_id("deployment-model")).to_have_text("tiny:v1")
    expect(row.get_by_test_id("deployment-gate")).to_contain_text("reviews-test")
    assert _get(url + "/api/deployments")["data"][0]["gate"]["margin"] == 1

    # ---- its page: propose v2; while both are scored the page says so
    row.get_by_test_id("deploy-manage").click()
    expect(by("deployment-current")).to_have_text("tiny:v1")
    expect(by("promote-force")).to_be_hidden()  # with a gate, moving without scores is not the first offer
    by("promote-model").select_option("tiny:v2")
    held = []  # hold the request until the progress has been seen (scoring may be quick)
    page.route("**/api/deployments/bot/promote", lambda route: held.append(route))
    by("promote-submit").click()
    expect(by("promote-progress")).to_be_visible()
    expect(by("promote-progress-text")).to_contain_text("Scoring tiny:v2 and tiny:v1 on reviews-test")
    expect(by("promote-submit")).to_be_disabled()
    assert len(held) == 1
    held[0].continue_()
    page.unroute("**/api/deployments/bot/promote")

    # ---- refused: both scores and the margin, and the deployment stays on v1
    refused = by("promote-refused")
    expect(refused).to_be_visible(timeout=SCORING)
    expect(by("promote-progress")).to_have_count(0)
    expect(refused).to_contain_text("Refused.")
    expect(by("refused-stays")).to_have_text("tiny:v1")
    expect(refused).to_contain_text("(+1)")
    event = _get(url + "/api/deployments/bot/history")["data"][0]
    assert event["action"] == "refused" and event["metric"] == "accuracy"
    expect(refused.get_by_test_id("score-proposed")).to_contain_text(f"tiny:v2{event['score']:.3f}")
    expect(refused.get_by_test_id("score-current")).to_contain_text(f"tiny:v1{event['previous_score']:.3f}")
    expect(refused.get_by_test_id("score-needed")).to_contain_text(f"{event['previous_score'] + 1:.3f}")
    expect(refused.locator("th").nth(2)).to_have_text("accuracy")
    expect(by("promote-anyway")).to_be_visible()  # offered, not taken
    expect(by("deployment-current")).to_have_text("tiny:v1")
    assert _get(url + "/api/deployments")["data"][0]["model"] == "tiny:v1"
    expect(by("history-action")).to_have_text(["refused", "created"])

    # ---- lower the margin to -1 and promote again: promoted, with both scores
    expect(by("gate-gate-margin")).to_have_value("1")
    expect(by("gate-gate-data")).to_have_value("reviews-test")
    by("gate-gate-margin").fill("-1")
    by("gate-save").click()
    expect(by("gate-status")).to_contain_text("margin -1")
    expect(by("deployment-gate-text")).to_contain_text("margin -1")
    by("promote-model").select_option("tiny:v2")
    by("promote-submit").click()
    moved = by("promote-result")
    expect(moved).to_be_visible(timeout=SCORING)
    expect(moved).to_have_attribute("data-action", "promoted")
    expect(moved).to_contain_text("Promoted. “bot” now answers with tiny:v2 (was tiny:v1).")
    expect(moved.get_by_test_id("score-proposed")).to_contain_text(f"tiny:v2{event['score']:.3f}")  # stored score reused
    expect(moved.get_by_test_id("score-current")).to_contain_text(f"tiny:v1{event['previous_score']:.3f}")
    expect(by("deployment-current")).to_have_text("tiny:v2")
    expect(by("promote-refused")).to_have_count(0)

    # ---- the history, newest first: when, action, model, was, scores with metric and margin
    expect(by("history-action")).to_have_text(["promoted", "refused", "created"])
    promoted = page.locator('[data-testid="history-row"][data-action="promoted"]')
    expect(promoted.get_by_test_id("history-model")).to_have_text("tiny:v2")
    expect(promoted.get_by_test_id("history-previous")).to_have_text("tiny:v1")
    expect(promoted.get_by_test_id("history-scores")).to_have_text(
        f"accuracy {event['score']:.3f} vs {event['previous_score']:.3f} (margin -1)")
    expect(page.locator('[data-testid="history-row"][data-action="refused"]').get_by_test_id("history-scores")) \
        .to_contain_text("(margin +1)")
    expect(page.locator('[data-testid="history-row"][data-action="refused"]')).to_contain_text("stays on 'tiny:v1'")

    # ---- roll back: to the model before, without scores
    expect(by("rollback-to")).to_have_value("tiny:v1")
    by("rollback-submit").click()
    expect(by("rollback-status")).to_contain_text("Rolled back. “bot” now answers with tiny:v1 (was tiny:v2).")
    expect(by("deployment-current")).to_have_text("tiny:v1")
    expect(by("promote-result")).to_have_count(0)  # "now answers with tiny:v2" would be stale
    expect(by("history-action")).to_have_text(["rolled back", "promoted", "refused", "created"])
    assert _get(url + "/api/deployments")["data"][0]["model"] == "tiny:v1"
    expect(by("rollback-to")).to_have_value("tiny:v2")  # the way forward again, from the history

    # ---- edit from the list: a gated deployment's model is fixed there; unticking removes the gate
    page.goto(url + "/ui/#/deployments")
    row.get_by_test_id("deploy-edit").click()
    expect(by("deploy-name")).to_have_value("bot")
    expect(by("deploy-gate-on")).to_be_checked()
    expect(by("deploy-gate-margin")).to_have_value("-1")
    expect(by("deploy-model")).to_be_disabled()
    expect(by("deploy-model")).to_have_value("tiny:v1")
    by("deploy-gate-on").uncheck()
    expect(by("deploy-gate-note")).to_contain_text("Saving removes the gate")
    by("deploy-submit").click()
    expect(by("deploy-status")).to_contain_text("Saved")
    expect(row.get_by_test_id("deployment-gate")).to_have_text("–")
    assert _get(url + "/api/deployments")["data"][0]["gate"] is None
    # without a gate, the name can be re-pointed from the form again
    by("deploy-name").fill("bot")
    expect(by("deploy-model")).to_be_enabled()
    expect(by("deploy-mode")).to_contain_text(re.compile(r"Updates the existing deployment “bot” \(now on tiny:v1\)"))
    assert page.crashes == []
