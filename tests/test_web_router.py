"""The web UI's router form in a real headless Chromium against `modelmill serve`, the way a
non-expert makes a router: tick two adapters on the Apps page, let the fallback follow their base
model, add general prompts as the fallback's data, watch it learn, read the held-out routing
accuracy per class, try a Chinese text on the router's page and see it go to the Chinese adapter,
and see a taken name refused with its field marked.

Set up from the CLI as test_apps_router.py does (the tiny model, two adapters trained one step);
uses the browser of test_web_ui.py (skipped where chromium or playwright is missing).
"""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import REVIEWS, Server, write_jsonl
from test_apps_router import CHINESE, FAST, GENERAL
from test_web_ui import page, sync_api  # noqa: F401  (the browser fixture; skips this module without chromium)


@pytest.fixture()
def server(cli_tiny, home, tmp_path):
    """`modelmill serve` over the tiny model, a reviews adapter, a Chinese chat adapter and general prompts."""
    cli = cli_tiny
    cli("data", "import", write_jsonl(tmp_path / "reviews.jsonl", [
        {"text": f"{t} (visit {i})", "label": lab} for i, (t, lab) in enumerate(REVIEWS * 3)]), "--name", "reviews")
    cli("data", "import", write_jsonl(tmp_path / "zh.jsonl", [
        {"messages": [{"role": "user", "content": f"{q}（第{i}次）"}, {"role": "assistant", "content": "好的。"}]}
        for i, q in enumerate(CHINESE * 2)]), "--name", "zh-chat")
    cli("data", "import", write_jsonl(tmp_path / "general.jsonl", [
        {"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": "Sure."}]}
        for i, q in enumerate(GENERAL * 2)]), "--name", "general")
    cli("train", "--base", "tiny", "--data", "reviews", "--name", "rev-lora", *FAST)
    cli("train", "--base", "tiny", "--data", "zh-chat", "--name", "zh-lora", *FAST)
    s = Server(home)
    try:
        yield s.url
    finally:
        s.stop()
        s.log.unlink(missing_ok=True)


def test_web_router_create_accuracy_try_and_taken_name(server, page):  # noqa: F811
    expect = sync_api.expect
    url = server
    by = page.get_by_test_id

    page.goto(url + "/ui/#/apps")
    expect(by("apps-table-empty")).to_be_visible()

    # ---- the form: one row per adapter, each learning from its own training data unless told otherwise
    by("router-form-open").click()
    expect(by("router-route-row")).to_have_count(2)
    expect(page.locator('[data-testid="router-route-data"][data-name="rev-lora"] option').first).to_contain_text(
        "its training data (reviews@")
    expect(by("router-threshold")).to_have_value("0.5")  # the server's default, read from its schema
    by("router-name").fill("support")
    page.locator('[data-testid="router-route"][data-name="rev-lora"]').check()
    page.locator('[data-testid="router-route"][data-name="zh-lora"]').check()
    expect(by("router-fallback")).to_have_value("tiny")  # follows the routes' base model
    by("router-fallback-data").select_option("general")

    # ---- learning: progress while it runs, then the held-out accuracy of each class
    by("router-submit").click()
    expect(by("router-progress")).to_be_visible()
    expect(by("router-progress-text")).to_contain_text("Learning “support”")
    created = by("router-created")
    expect(created).to_be_visible(timeout=300_000)
    assert float(by("router-created-accuracy").text_content()) > 0.5
    classes = created.get_by_test_id("router-class-row")
    expect(classes).to_have_count(3)
    assert sorted(classes.evaluate_all("els => els.map(e => e.dataset.class)")) == ["(fallback)", "rev-lora", "zh-lora"]
    expect(created.locator('[data-class="zh-lora"]')).to_contain_text("zh-chat@")
    expect(created.locator('[data-class="(fallback)"]')).to_contain_text("fallback tiny")
    expect(by("router-ngram")).to_be_visible()
    row = page.locator('[data-testid="app-row"][data-name="support"]')
    expect(row).to_have_attribute("data-kind", "router")
    expect(row.get_by_test_id("router-accuracy")).to_have_text(re.compile(r"^\d\.\d{3}$"))
    app = httpx.get(url + "/api/apps/support", timeout=30).json()
    assert sorted(app["routes"]) == ["rev-lora", "zh-lora"] and app["fallback"] == "tiny" and app["fallback_data"] == "general"

    # ---- try it on the router's page: a Chinese text goes to the Chinese adapter, a general one to the fallback
    by("router-open").click()
    page.wait_for_url(re.compile(r".*#/apps/support$"))
    expect(by("router-detail").get_by_test_id("router-class-row")).to_have_count(3)
    by("route-text").fill("请问这个商品什么时候能到？")
    by("route-submit").click()
    expect(by("route-model")).to_have_text("zh-lora", timeout=120_000)
    expect(by("route-result")).to_have_attribute("data-route", "zh-lora")
    expect(by("route-confidence")).to_have_text(re.compile(r"^\d+\.\d% sure$"))
    expect(by("route-why")).to_contain_text("zh-lora")
    by("route-text").fill("Who painted the Mona Lisa?")
    by("route-text").press("Control+Enter")
    expect(by("route-model")).to_have_text("tiny", timeout=60_000)
    expect(by("route-result")).to_contain_text("(the fallback)")

    # ---- a taken name: refused before anything is learned, the name field marked, nothing stored
    page.goto(url + "/ui/#/apps")
    by("router-form-open").click()
    expect(by("router-route-row")).to_have_count(2)
    by("router-name").fill("support")
    page.locator('[data-testid="router-route"][data-name="rev-lora"]').check()
    page.locator('[data-testid="router-route"][data-name="zh-lora"]').check()
    by("router-submit").click()
    expect(by("router-error")).to_contain_text("'support' is already the name of an app")
    expect(by("router-name").locator("xpath=..")).to_have_class(re.compile(r"\binvalid\b"))
    assert [a["name"] for a in httpx.get(url + "/api/apps", timeout=30).json()["data"]] == ["support"]

    assert page.crashes == [], page.crashes
