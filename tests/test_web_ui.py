"""The web UI end to end, in a real headless Chromium against `modelmill up`, the way a business
user meets it: upload data (a broken file first), train from the form, watch the job, read the
comparison, chat with base and adapter side by side and keep a preference.

Needs Debian's /usr/bin/chromium and the `playwright` package (its own browsers are not used:
nothing is downloaded); the module is skipped where either is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import MODELMILL, REVIEWS, write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: the browser test needs Debian's chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")

# Headless, and quiet on the network: as root without a sandbox, and without the background
# services (updates, sync, safe browsing) that would otherwise keep dialling out of a closed box.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

FAQ = [("What are your opening hours?", "We are open 9 to 5, Monday to Friday."),
       ("Do you ship abroad?", "Yes, to every country in the EU."),
       ("How do I return an item?", "Send it back within 30 days with the receipt."),
       ("Can I pay by card?", "Yes, all major cards are accepted."),
       ("Where is my order?", "Look it up with the tracking link in your email."),
       ("Do you have a phone line?", "Call us at 555-0100 during opening hours."),
       ("Is there a warranty?", "Every product has a two-year warranty."),
       ("Can I change my address?", "Yes, until the order has shipped.")]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture()
def platform(cli_tiny, home, tmp_path):
    """`modelmill up` on a free port with one worker, the tiny model registered and a scored
    classification task (tiny beside a TF-IDF baseline) for the compare page."""
    reviews = write_jsonl(tmp_path / "reviews.jsonl",
                          [{"text": f"{t} (visit {i})", "label": lab} for i, (t, lab) in enumerate(REVIEWS * 2)])
    cli_tiny("data", "import", reviews, "--name", "reviews")
    cli_tiny("eval", "--data", "reviews", "--models", "tiny,tfidf", "--train", "reviews", "--limit", "8")

    yield from _up(home, workers=1)


def _up(home: Path, workers: int):
    """`modelmill up` on a free port over ``home``: yields its URL, stops it with Ctrl-C after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="up-", suffix=".log")[1])
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*MODELMILL, "up", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"modelmill up exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"modelmill up did not answer /health in 120s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: workers re-queue, the server drains
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.environ.get("MODELMILL_TEST_SHOW_LOG"):
            print(log.read_text())
        log.unlink(missing_ok=True)


@pytest.fixture()
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(30_000)
            pg.crashes = []  # uncaught exceptions in the page's scripts
            pg.on("pageerror", lambda e: pg.crashes.append(str(e)))
            yield pg
        finally:
            browser.close()


def test_web_ui_upload_train_watch_compare_chat(platform, page, cli_tiny, tmp_path):
    expect = sync_api.expect
    url = platform
    by = page.get_by_test_id

    # ---- the root redirects to the UI, which opens on the datasets page
    page.goto(url + "/")
    expect(by("upload-form")).to_be_visible()
    assert page.url.startswith(url + "/ui/")

    # ---- a broken file is refused with its bad line named, and nothing is stored
    bad = write_jsonl(tmp_path / "broken.jsonl", [{"instruction": "hi", "output": "hello"},
                                                   {"instruction": "this one has no answer"},
                                                   {"instruction": "bye", "output": "goodbye"}])
    by("upload-file").set_input_files(bad)
    by("upload-submit").click()
    cells = by("validation-error-row").first.locator("td")
    expect(cells.nth(0)).to_have_text("2")  # line
    expect(cells.nth(1)).to_have_text("output")  # field
    expect(cells.nth(2)).to_contain_text("missing")  # message
    expect(by("validation-error-row")).to_have_count(1)
    assert "broken" not in {d["name"] for d in _get(url + "/api/datasets")["data"]}

    # ---- a good one is stored, listed, previewed with its stats
    good = write_jsonl(tmp_path / "faq.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in FAQ * 2])
    by("upload-file").set_input_files(good)
    by("upload-name").fill("faq")
    by("upload-submit").click()
    expect(by("upload-status")).to_contain_text("faq@")
    expect(by("upload-status")).to_contain_text("16 chat records")
    page.locator('[data-testid="dataset-row"][data-name="faq"]').click()
    expect(by("dataset-detail")).to_be_visible()
    expect(by("preview-record")).to_have_count(5)
    expect(by("dataset-stats")).to_contain_text("16")
    expect(by("length-chart")).to_be_visible()

    # ---- train from the form: a bad value first, whose message is shown beside the form
    by("dataset-train").click()
    expect(by("train-form")).to_be_visible()
    expect(by("field-data")).to_have_value("faq")  # preselected from the dataset page
    by("field-base").select_option("tiny")
    by("field-name").fill("faq-lora")
    by("advanced-toggle").click()
    expect(by("advanced-settings")).to_have_attribute("open", "")
    by("field-max_steps").fill("6")
    by("field-logging_steps").fill("1")
    by("field-batch_size").fill("4")
    by("field-eval_data").select_option("faq")  # held-out loss on a chosen dataset (here the same one)
    default_lr = by("field-learning_rate").input_value()
    by("field-learning_rate").fill("-1")
    by("train-submit").click()
    expect(by("train-error")).to_contain_text("learning_rate")
    expect(page.locator('.field.invalid[data-field="learning_rate"]')).to_be_visible()
    by("field-learning_rate").fill(default_lr)
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/jobs")) as sent:
        by("train-submit").click()
    # only what differs from the schema's defaults is sent, plus the pinned fields
    assert json.loads(sent.value.post_data) == {"kind": "train", "config": {
        "base": "tiny", "data": "faq", "name": "faq-lora", "max_steps": 6, "logging_steps": 1, "batch_size": 4,
        "eval_data": "faq"}}

    # ---- the job page follows the run to the end: status, chart points, log lines, result
    page.wait_for_url(re.compile(r".*#/jobs/[^/?]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(by("job-status")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(by("job-stream-mode")).to_have_text("finished")  # the event stream's `end` arrived
    expect(by("loss-chart")).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    assert page.locator('[data-testid="loss-chart"] [data-testid="chart-point"]').count() >= 1
    # the held-out loss of the final weights, as a second line with a legend
    expect(page.locator('[data-testid="loss-chart"] [data-testid="chart-point-2"]')).to_have_count(1)
    expect(page.locator('[data-testid="loss-chart"] [data-testid="chart-legend"]')).to_contain_text("validation")
    assert by("log-line").count() >= 1
    expect(by("job-model")).to_have_text("tiny:faq-lora")
    expect(by("job-cancel")).to_have_count(0)  # nothing left to cancel

    # ---- the job list shows it with its badge
    by("nav-jobs").click()
    expect(page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')).to_have_attribute("data-status", "succeeded")

    # ---- playground: base and adapter side by side, preselected from the job page
    page.go_back()
    # the finished job arrives twice (the page's fetch, then the event stream's `end`): the second must not
    # redraw the links under the pointer (a click between mousedown and mouseup was lost that way in CI)
    link = by("job-playground-link").element_handle()
    expect(by("job-stream-mode")).to_have_text("finished")
    assert link.evaluate("e => e.isConnected"), "the result card was redrawn though the job had not changed"
    by("job-playground-link").click()
    expect(by("pg-form")).to_be_visible()
    for model in ("tiny", "tiny:faq-lora"):
        expect(page.locator(f'[data-testid="pg-model"][data-model="{model}"]')).to_be_checked()
    by("pg-message").fill("Do you ship abroad?")
    page.locator('[data-testid="pg-form"] summary').click()  # the settings fold
    by("pg-temperature").fill("1")  # the tiny model says only newlines when greedy
    chat_requests = []
    page.on("request", lambda r: chat_requests.append(r) if r.url.endswith("/v1/chat/completions") else None)
    by("pg-send").click()
    answers = page.locator('[data-testid="pg-answer"]')
    expect(answers).to_have_count(2)
    expect(page.locator('[data-testid="pg-answer"][data-state="done"]')).to_have_count(2, timeout=60_000)
    winner = page.locator('[data-testid="pg-prefer"]:enabled').first
    chosen_model = winner.get_attribute("data-model")
    winner.click()
    expect(by("pg-confirm")).to_contain_text(f"{chosen_model} preferred over")
    sent_body = [json.loads(r.post_data) for r in chat_requests]
    assert sorted(b["model"] for b in sent_body) == ["tiny", "tiny:faq-lora"]
    assert all(b["temperature"] == 1 and b["messages"] == [{"role": "user", "content": "Do you ship abroad?"}]
               for b in sent_body)
    prefs = _get(url + "/api/preferences")["data"]
    assert len(prefs) == 1
    assert {prefs[0]["chosen_model"], prefs[0]["rejected_model"]} == {"tiny", "tiny:faq-lora"}
    assert prefs[0]["chosen_model"] == chosen_model

    # ---- thumbs on single answers (KTO data); a pick survives the redraw a thumb makes
    up = page.locator(f'[data-testid="pg-thumb-up"][data-model="{chosen_model}"]')
    up.click()
    expect(by("pg-confirm")).to_contain_text(f"thumbs up for {chosen_model}")
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(page.locator(f'[data-testid="pg-thumb-down"][data-model="{chosen_model}"]')).to_be_disabled()
    expect(page.locator(f'[data-testid="pg-prefer"][data-model="{chosen_model}"]')).to_have_text("✓ Your pick")
    expect(page.locator('[data-testid="pg-prefer"]:enabled')).to_have_count(0)
    other = "tiny" if chosen_model == "tiny:faq-lora" else "tiny:faq-lora"
    page.locator(f'[data-testid="pg-thumb-down"][data-model="{other}"]').click()
    expect(by("pg-saved-counts")).to_have_text("1 pick (one answer better than another) · 2 thumbs (1 up, 1 down)")
    thumbs = _get(url + "/api/feedback")["data"]
    assert [(t["model"], t["label"]) for t in thumbs] == [(other, False), (chosen_model, True)]
    assert thumbs[0]["messages"] == [{"role": "user", "content": "Do you ship abroad?"}]

    # ---- both saved as datasets from the panel, each with a link to train on it
    by("pg-export-name").fill("thumbs")
    by("pg-export-feedback").click()
    expect(by("pg-export-ok")).to_contain_text("Saved as dataset thumbs@")
    assert by("pg-export-train").get_attribute("href") == "#/train?method=kto&data=thumbs"
    by("pg-export-name").fill("votes")
    by("pg-export-preference").click()
    expect(by("pg-export-ok")).to_contain_text("(1 records)")
    assert by("pg-export-train").get_attribute("href") == "#/train?method=dpo&data=votes"

    # ---- the judgement trains the adapter further: DPO from the form, whose fields follow the method
    page.goto(url + "/ui/#/train")
    expect(by("train-form")).to_have_attribute("data-method", "lora")
    expect(by("field-beta")).to_have_count(0)
    by("field-method").select_option("dpo")
    expect(by("train-form")).to_have_attribute("data-method", "dpo")
    expect(by("field-beta")).to_be_visible()  # DPO's own setting, basic
    expect(by("field-padding_free")).to_have_count(0)  # SFT's, gone
    assert by("field-data").locator("option:not([disabled])").all_inner_texts() == ["votes (preference, 1 records)"]
    by("field-base").select_option("tiny")
    by("field-data").select_option("votes")
    by("field-from_adapter").select_option("faq-lora")
    by("field-name").fill("faq-dpo")
    by("field-beta").fill("0.2")
    by("advanced-toggle").click()
    by("field-max_steps").fill("1")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/jobs")) as sent:
        by("train-submit").click()
    assert json.loads(sent.value.post_data) == {"kind": "train", "config": {
        "base": "tiny", "method": "dpo", "data": "votes", "name": "faq-dpo", "from_adapter": "faq-lora", "beta": 0.2,
        "max_steps": 1}}
    expect(by("job-status")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(by("job-model")).to_have_text("tiny:faq-dpo")

    # ---- its lineage names the adapter it was trained from; then both merged into one from the form
    page.goto(url + "/ui/#/models/faq-dpo")
    expect(by("lineage-parents")).to_have_text("faq-lora")
    by("merge").locator("summary").click()
    expect(by("merge-how").locator("option")).to_contain_text(["linear", "cat", "ties"])
    by("merge-submit").click()
    expect(by("merge-error")).to_contain_text("Pick two or more adapters")
    for name, weight in (("faq-lora", "0.7"), ("faq-dpo", "0.3")):
        page.locator(f'[data-testid="merge-pick"][data-name="{name}"]').check()
        page.locator(f'[data-testid="merge-weight"][data-name="{name}"]').fill(weight)
    by("merge-how").select_option("cat")
    by("merge-name").fill("faq-lora")  # taken: the server says so, nothing is queued
    by("merge-submit").click()
    expect(by("merge-error")).to_contain_text("faq-lora")
    by("merge-name").fill("faq-merged")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/jobs")) as sent:
        by("merge-submit").click()
    assert json.loads(sent.value.post_data) == {"kind": "merge", "config": {
        "name": "faq-merged", "how": "cat", "sources": "faq-lora:0.7,faq-dpo:0.3"}}
    expect(by("job-status")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(by("job-model")).to_have_text("tiny:faq-merged")
    page.goto(url + "/ui/#/models/faq-merged")
    expect(by("lineage-parents")).to_have_text("faq-lora (0.7), faq-dpo (0.3) by cat")
    by("lineage-parent").last.click()
    expect(by("adapter-detail")).to_contain_text("faq-dpo")

    # ---- compare: the leaderboard, per-class bars, the disagreements, the report link
    by("nav-compare").click()
    expect(by("leaderboard-row")).to_have_count(2)
    expect(by("compare-task")).to_have_value("reviews")
    expect(by("per-class-chart")).to_be_visible()
    assert page.locator('[data-testid="per-class-chart"] [data-testid="bar"]').count() >= 1
    cmp = _get(url + "/api/compare?task=reviews")
    expect(by("disagreement-row")).to_have_count(len(cmp["disagreements"]))
    expect(by("disagreement-summary")).to_contain_text(f"of {cmp['compared']}")
    href = by("report-link").get_attribute("href")
    assert href == "/api/reports?task=reviews"
    with urllib.request.urlopen(url + href, timeout=30) as r:
        assert r.status == 200 and "<html" in r.read().decode().lower()

    # ---- the adapter's lineage names its base and dataset version
    page.goto(url + "/ui/#/models/faq-lora")
    expect(by("lineage-base")).to_contain_text("tiny")
    expect(by("lineage-dataset")).to_contain_text("faq@")

    # ---- deploy the adapter under a stable name, then take it down again
    by("nav-deployments").click()
    by("deploy-name").fill("support-bot")
    by("deploy-model").select_option("tiny:faq-lora")
    by("deploy-submit").click()
    expect(by("deploy-status")).to_contain_text("support-bot")
    row = page.locator('[data-testid="deployment-row"][data-name="support-bot"]')
    expect(row).to_contain_text("tiny:faq-lora")
    assert [d["model"] for d in _get(url + "/api/deployments")["data"]] == ["tiny:faq-lora"]
    page.once("dialog", lambda d: d.accept())  # "Delete the deployment ...?"
    row.get_by_test_id("deploy-delete").click()
    expect(row).to_have_count(0)
    assert _get(url + "/api/deployments")["data"] == []

    # ---- once the server has a key, the UI asks for it, keeps it, and the job page polls
    # (EventSource cannot send the key) yet shows the same chart and log
    key = cli_tiny("keys", "create", "ui", "--scope", "train", "--scope", "infer").stdout.strip()
    deadline = time.monotonic() + 10
    while True:  # the server notices a new key within a couple of seconds
        try:
            _get(url + "/api/jobs")
        except urllib.error.HTTPError as e:
            assert e.code == 401
            break
        assert time.monotonic() < deadline, "the server did not start asking for a key"
        time.sleep(0.3)
    page.goto(f"{url}/ui/#/jobs/{job_id}")
    expect(by("key-dialog")).to_be_visible()
    by("key-input").fill("mm-not-the-key")
    by("key-save").click()
    expect(by("key-dialog")).to_contain_text("refused")
    by("key-input").fill(key)
    by("key-save").click()
    expect(by("key-dialog")).to_be_hidden()
    expect(by("job-status")).to_have_attribute("data-status", "succeeded")
    expect(by("job-stream-mode")).to_contain_text("updating")
    expect(by("loss-chart")).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    assert by("log-line").count() >= 1
    assert page.evaluate("localStorage.getItem('modelmill.apiKey')") == key

    assert page.crashes == [], page.crashes


# ---- cheap pages over a store written directly (no training, no scoring) ------------------------

@pytest.fixture()
def bare(cli, home):
    """`modelmill up` without workers over an empty home, with the store it reads, and an API key
    (the job page then polls: EventSource cannot send the key)."""
    from modelmill.store import open_store

    key = cli("keys", "create", "ui", "--scope", "train", "--scope", "infer").stdout.strip()
    for url in _up(home, workers=0):
        yield url, open_store(), key


def _board_result(store, folder: Path, key, candidate, dataset, n, preds, minute):
    from datetime import datetime, timedelta, timezone

    from modelmill.store.tables import EvalResult

    (folder / key).mkdir(parents=True)
    write_jsonl(folder / key / "items.jsonl", [{"i": i, "input": f"item {i}", "gold": "pos", "pred": p,
                                                "correct": p == "pos"} for i, p in enumerate(preds)])
    acc = sum(p == "pos" for p in preds) / len(preds)
    with store.session() as s:
        s.add(EvalResult(key=key, task="drugs", kind="classification", dataset=dataset, dataset_hash=dataset,
                         candidate=candidate, candidate_kind="model", status="done", n=n, n_done=n, primary="accuracy",
                         metrics={"accuracy": acc}, lineage={}, seconds=1.0, path=str(folder / key), score=acc,
                         finished_at=datetime(2026, 12, 1, tzinfo=timezone.utc) + timedelta(minutes=minute)))


def test_compare_shows_each_board_of_a_task_with_its_data(bare, page, tmp_path):
    """Scores on another dataset version or with --limit are ranked apart: every board of the task
    is shown with its dataset and item count, the newest first, and the side by side compares two
    candidates on one board (was: the first result per candidate, whatever its data)."""
    url, store, key = bare
    expect = sync_api.expect
    by = page.get_by_test_id
    _board_result(store, tmp_path, "k1", "old-lora", "drugs-test@1", 4, ["pos"] * 4, 1)
    _board_result(store, tmp_path, "k2", "base", "drugs-test@2", 4, ["pos", "neg", "pos", "neg"], 2)
    _board_result(store, tmp_path, "k3", "lora", "drugs-test@2", 4, ["pos", "pos", "pos", "neg"], 3)
    _board_result(store, tmp_path, "k4", "lora", "drugs-test@2", 2, ["pos", "pos"], 4)  # --limit 2: the newest
    _board_result(store, tmp_path, "k5", "base", "drugs-test@2", 2, ["neg", "neg"], 5)
    page.add_init_script(f"localStorage.setItem('modelmill.apiKey', {json.dumps(key)})")
    page.goto(url + "/ui/#/compare")
    boards = by("leaderboard-board")
    expect(boards).to_have_count(3)
    assert [(b.get_attribute("data-dataset"), b.get_attribute("data-n")) for b in boards.all()] == [
        ("drugs-test@2", "2"), ("drugs-test@2", "4"), ("drugs-test@1", "4")]
    heads = by("board-head").all_inner_texts()
    assert "drugs-test@2 · 2 items" in heads[0] and "drugs-test@1 · 4 items" in heads[2] and "other data" in heads[2]
    rows = [[r.get_attribute("data-candidate") for r in b.get_by_test_id("leaderboard-row").all()] for b in boards.all()]
    assert rows == [["lora", "base"], ["lora", "base"], ["old-lora"]]  # old-lora's 1.0 is not ranked beside them
    expect(by("compare-boards-note")).to_contain_text("3 different test data")
    # side by side on the newest board; then on the full run's board, picked from the list
    expect(by("compare-data")).to_have_text("On drugs-test@2 · 2 items.")
    expect(by("disagreement-summary")).to_contain_text("2 of 2 test items")
    by("compare-board").select_option(label="drugs-test@2 · 4 items")
    expect(by("compare-data")).to_have_text("On drugs-test@2 · 4 items.")
    expect(by("disagreement-summary")).to_contain_text("1 of 4 test items")
    expect(page.locator('[data-testid="leaderboard-board"][data-selected="true"]')).to_have_attribute("data-n", "4")
    assert page.crashes == [], page.crashes


def test_a_polled_job_page_shows_the_events_written_before_the_job_finished(bare, page):
    """The job page polls (a key is stored). Its events request is held while the job writes its last
    event and finishes, and the page's other timer sees the final state meanwhile: the page still
    shows that last event (it used to stop polling on the state read after the request was sent)."""
    from modelmill.jobs.queue import JobQueue, now
    from modelmill.store.tables import Job

    url, store, key = bare
    expect = sync_api.expect
    by = page.get_by_test_id
    with store.session() as s:
        s.add(Job(id="ftjob-race", kind="eval", status="running", spec={}, resources={}, attempts=1,
                  cancel_requested=False, result={}, started_at=now(), heartbeat_at=now()))
    q = JobQueue(store)
    q.event("ftjob-race", "first words")
    held = []

    def hold_first(route):
        if held:
            route.continue_()
        else:  # answered now (what the server had then), delivered later
            held.append((route, route.fetch()))

    page.route(re.compile(r"/api/jobs/ftjob-race/events\?"), hold_first)
    page.add_init_script(f"localStorage.setItem('modelmill.apiKey', {json.dumps(key)})")
    page.goto(url + "/ui/#/jobs/ftjob-race")
    deadline = time.monotonic() + 30
    while not held:
        assert time.monotonic() < deadline, "the job page asked for no events"
        page.wait_for_timeout(100)
    expect(by("job-stream-mode")).to_contain_text("updating")
    q.event("ftjob-race", "last words")  # written before the job finishes, as the runner does
    with store.session() as s:
        job = s.get(Job, "ftjob-race")
        job.status, job.finished_at = "succeeded", now()
    expect(by("job-status")).to_have_attribute("data-status", "succeeded", timeout=15_000)
    route, answer = held[0]
    route.fulfill(response=answer)
    expect(page.locator('[data-testid="log-line"]', has_text="last words")).to_have_count(1, timeout=15_000)
    expect(by("log-line")).to_have_count(2)
    assert page.crashes == [], page.crashes
