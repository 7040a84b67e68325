"""The web UI's Apps page in a real headless Chromium against `modelmill serve`, the way a
non-expert meets workflows: upload a business table, paste a workflow with a mistake and see the
line named, fix and publish it, read its graph, run it from a form and read the coloured trace,
open an earlier run from the list, publish an edited version.

Uses the browser set-up of test_web_ui.py (Debian's /usr/bin/chromium driven by playwright; the
module is skipped where either is missing) and the tiny model: nothing is downloaded.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from conftest import Server
from test_web_ui import page, sync_api  # noqa: F401  (the browser fixture; skips this module without chromium)

PRODUCTS = "sku,name,stock\nA-1,Widget,7\nB-2,Gadget,0\n"

# switch on an input -> a table lookup or the tiny model -> the answer
FLOW = """\
name: stock
description: stock levels from the products table, anything else from the model
inputs:
  question: {description: "a SKU like A-1, or a question"}
  kind: {default: chat}
nodes:
  - id: route
    type: switch
    value: "{{ kind }}"
    cases:
      stock: [row]
      chat: [general]
    default: [general]
  - id: row
    type: lookup
    table: products
    where: {sku: "{{ question }}"}
  - id: general
    type: llm
    model: tiny
    prompt: "{{ question }}"
    max_tokens: 4
  - id: reply
    type: answer
    text: "{% if row %}{{ row.first.name }}: {{ row.first.stock }} in stock{% else %}{{ general.text }}{% endif %}"
"""
BAD_FLOW = FLOW.replace('    prompt: "{{ question }}"', '    promt: "{{ question }}"')  # line 21


def _get(url: str) -> dict:
    r = httpx.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture()
def server(cli_tiny, home, tmp_path):
    """`modelmill serve` with the tiny model registered and a products table added from the CLI."""
    products = tmp_path / "products.csv"
    products.write_text(PRODUCTS)
    cli_tiny("apps", "table", "add", "products", products)
    s = Server(home)
    try:
        yield s.url
    finally:
        s.stop()
        s.log.unlink(missing_ok=True)


def _x(node) -> float:
    return float(re.match(r"translate\(([-\d.]+)", node.get_attribute("transform")).group(1))


def test_web_apps_tables_workflow_graph_run_trace(server, page, tmp_path):  # noqa: F811
    expect = sync_api.expect
    url = server
    by = page.get_by_test_id

    page.goto(url + "/ui/#/apps")
    expect(by("nav-apps")).to_have_class(re.compile(r"\bactive\b"))
    expect(by("apps-table-empty")).to_be_visible()

    # ---- business tables: the one the CLI added, and one uploaded here
    expect(page.locator('[data-testid="table-row"][data-name="products"]')).to_contain_text("sku, name, stock")
    suppliers = tmp_path / "suppliers.json"
    suppliers.write_text(json.dumps([{"id": 1, "name": "Acme"}, {"id": 2, "name": "Globex <b>"}]))
    by("table-file").set_input_files(suppliers)
    by("table-submit").click()
    expect(by("table-status")).to_contain_text("Stored table “suppliers”: 2 rows")
    row = page.locator('[data-testid="table-row"][data-name="suppliers"]')
    expect(row.locator("td").nth(2)).to_have_text("2")
    row.get_by_test_id("table-preview").click()
    expect(by("table-preview-rows")).to_contain_text("Globex <b>")  # shown as text, not markup

    # ---- a workflow with a typo: every problem with its line, and nothing is published
    by("flow-yaml").fill(BAD_FLOW)
    by("flow-check").click()
    expect(page.locator('[data-testid="flow-problem-row"][data-line="21"]')).to_contain_text("unknown field 'promt'")
    expect(page.locator('[data-testid="flow-problem-row"][data-line="18"]')).to_contain_text("missing 'prompt'")
    page.locator('[data-testid="flow-problem-row"][data-line="21"] [data-testid="flow-problem-line"]').click()
    assert page.evaluate("(() => { const t = document.querySelector('[data-testid=flow-yaml]');"
                         " return t.value.slice(t.selectionStart, t.selectionEnd); })()") == '    promt: "{{ question }}"'
    by("flow-publish").click()
    expect(page.locator('[data-testid="flow-problem-row"][data-line="21"]')).to_be_visible()
    assert _get(url + "/api/apps")["data"] == []

    # ---- fixed: the check draws it, publishing lists it
    by("flow-yaml").fill(FLOW)
    by("flow-check").click()
    expect(by("flow-status")).to_contain_text("No problems")
    expect(page.locator('[data-testid="flow-check-graph"] [data-testid="flow-node"]')).to_have_count(4)
    by("flow-publish").click()  # the name comes from the file's `name:` line
    expect(by("flow-status")).to_contain_text("flow:stock")
    app_row = page.locator('[data-testid="app-row"][data-name="stock"]')
    expect(app_row).to_contain_text("flow:stock")
    expect(app_row).to_contain_text("stock levels from the products table")
    expect(app_row).to_contain_text("4 nodes")

    # ---- its graph: one box per node in layers by dependency, the switch's arrows labelled
    by("flow-open").click()
    page.wait_for_url(re.compile(r".*#/apps/stock$"))
    graph = by("flow-graph")
    nodes = graph.get_by_test_id("flow-node")
    expect(nodes).to_have_count(4)
    assert sorted(nodes.evaluate_all("els => els.map(e => e.dataset.node)")) == ["general", "reply", "route", "row"]
    expect(graph.locator('[data-node="general"]')).to_contain_text("llm · tiny")
    expect(graph.get_by_test_id("flow-edge")).to_have_count(4)
    labels = graph.get_by_test_id("flow-edge-label")
    expect(labels).to_have_count(2)
    assert {(labels.nth(i).get_attribute("data-to"), labels.nth(i).text_content()) for i in range(2)} == {
        ("row", "stock"), ("general", "chat / default")}
    x = {n: _x(graph.locator(f'[data-node="{n}"]')) for n in ("route", "row", "general", "reply")}
    assert x["route"] < x["row"] == x["general"] < x["reply"]

    # ---- run it: a missing input is named, then the table branch (the model is skipped)
    by("run-submit").click()
    expect(by("run-error")).to_contain_text("needs input 'question'")
    page.locator('[data-testid="run-input"][data-name="question"]').fill("A-1")
    page.locator('[data-testid="run-input"][data-name="kind"]').fill("stock")
    by("run-submit").click()
    expect(by("run-answer")).to_have_text("Widget: 7 in stock", timeout=120_000)
    expect(by("run-status")).to_have_attribute("data-status", "ok")
    first_run = by("run-id").text_content()
    trace = by("trace-graph")
    expect(trace.locator('[data-node="row"]')).to_have_attribute("data-status", "ok")
    expect(trace.locator('[data-node="general"]')).to_have_attribute("data-status", "skipped")
    ok_class = trace.locator('[data-node="row"]').get_attribute("class")
    skipped_class = trace.locator('[data-node="general"]').get_attribute("class")
    assert "status-ok" in ok_class and "status-skipped" in skipped_class and ok_class != skipped_class
    expect(trace.locator('[data-testid="flow-edge"][data-to="general"]')).to_have_class(re.compile(r"\bflow-edge-idle\b"))
    expect(trace.locator('[data-testid="flow-edge"][data-to="row"]')).not_to_have_class(re.compile(r"\bflow-edge-idle\b"))
    expect(by("trace-row")).to_have_count(4)
    lookup = page.locator('[data-testid="trace-row"][data-node="row"]')
    lookup.get_by_test_id("trace-details").locator("summary").click()
    expect(lookup.locator("pre").first).to_contain_text('"sku": "A-1"')

    # ---- the model's branch (kind left to its default): tokens in the trace
    page.locator('[data-testid="run-input"][data-name="kind"]').fill("")
    page.locator('[data-testid="run-input"][data-name="question"]').fill("hello")
    by("run-submit").click()
    expect(by("run-id")).not_to_have_text(first_run, timeout=120_000)
    expect(by("run-status")).to_have_attribute("data-status", "ok")
    expect(by("trace-graph").locator('[data-node="general"]')).to_have_attribute("data-status", "ok")
    expect(by("trace-graph").locator('[data-node="row"]')).to_have_attribute("data-status", "skipped")
    expect(page.locator('[data-testid="trace-row"][data-node="general"] td').nth(4)).to_contain_text("out")

    # ---- the runs list, newest first; the earlier run opens with its trace
    expect(by("run-row")).to_have_count(2)
    expect(by("run-row").first).not_to_have_attribute("data-id", first_run)
    page.locator(f'[data-testid="run-row"][data-id="{first_run}"] [data-testid="run-link"]').click()
    page.wait_for_url(re.compile(rf".*#/apps/stock\?run={first_run}$"))
    expect(by("run-result")).to_have_attribute("data-run", first_run)
    expect(by("run-answer")).to_have_text("Widget: 7 in stock")
    expect(by("trace-graph").locator('[data-node="general"]')).to_have_class(re.compile(r"\bstatus-skipped\b"))
    expect(page.locator(f'[data-testid="run-row"][data-id="{first_run}"]')).to_have_class(re.compile(r"\bselected\b"))

    # ---- a new version from the page: the form comes filled in; markup in it stays text
    by("flow-edit").click()
    expect(by("flow-name")).to_have_value("stock")
    expect(by("flow-replace")).to_be_checked()
    expect(by("flow-yaml")).to_have_value(FLOW)
    by("flow-yaml").fill(FLOW.replace("description: stock levels from the products table, anything else from the model",
                                      'description: "<b>v2</b> & more"'))
    by("flow-publish").click()
    expect(by("flow-status")).to_contain_text("flow:stock")
    expect(app_row).to_contain_text("<b>v2</b> & more")
    assert app_row.locator("b").count() == 0
    assert _get(url + "/api/apps/stock")["description"] == "<b>v2</b> & more"

    assert page.crashes == [], page.crashes
