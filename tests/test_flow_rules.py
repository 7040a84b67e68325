"""The rules of a workflow file and of a run, checked through the library on a real store: what the
loader refuses (with the line), how switches skip, what a check guards, how lookups treat empty
values, and what the HTTP guard does with redirects. No model is loaded: the nodes here are
switch, lookup, http and answer."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from modelmill.apps.flow_spec import FlowError, load_workflow


def problems(text: str, store=None) -> list[tuple[int | None, str]]:
    with pytest.raises(FlowError) as e:
        load_workflow(text, "f.yaml", store)
    return [(d["line"], d["message"]) for d in e.value.details]


def test_malformed_values_are_problems_with_lines_never_crashes():
    assert (3, "node 'a' has unknown type ['llm']") in problems("nodes:\n  - id: a\n    type: [llm]\n")
    got = problems("nodes:\n  - id: a\n    type: answer\n    text: hi\n    after: [[x]]\n")
    assert got == [(5, "node 'a' names '['x']' in 'after', and there is no such node")]
    got = problems("nodes:\n  - id: s\n    type: switch\n    value: x\n    cases: {yes: [r]}\n"
                   "  - id: r\n    type: answer\n    text: hi\n")
    assert got[0][0] == 5 and "case label True, which YAML read as a bool" in got[0][1]
    assert problems("a: &x [1]\nnodes: *x\n")[0] == (2, "YAML aliases (*name) are not supported in workflow files")
    assert problems("nodes: " + "[" * 3000 + "]" * 3000)[0][1] == "the file nests too deeply"
    got = problems("nodes:\n  - id: r\n    type: answer\n    text: \"{% for x in y %}\"\n")
    assert got[0][0] == 4 and "template error" in got[0][1]
    assert (2, "node id 'self' is also the name of an input or a reserved name") in problems(
        "nodes:\n  - id: self\n    type: answer\n    text: hi\n")
    # a date stays the text it was written as (JSON keeps it)
    wf = load_workflow("inputs: {since: {default: 2024-01-01}}\nnodes:\n  - id: r\n    type: answer\n"
                       "    text: '{{ since }}'\n")
    assert wf.inputs["since"]["default"] == "2024-01-01"


def test_what_reads_a_checked_draft_runs_after_its_check():
    wf = load_workflow("""
nodes:
  - id: facts
    type: switch
    value: x
    cases: {x: [draft]}
  - id: draft
    type: llm
    model: m
    prompt: "{{ facts.text }}"
  - id: verify
    type: check
    draft: draft
    sources: [facts]
  - id: reply
    type: answer
    text: "{{ draft.text }}"
""")
    assert "verify" in wf.nodes["reply"].deps and "verify" not in wf.nodes["draft"].deps


def _run(store, text: str, inputs: dict):
    from modelmill.apps.flows import FlowServices, run_flow

    async def go():
        services = FlowServices.local(store)
        try:
            return await run_flow(services, load_workflow(text, "f.yaml", store, "t"), inputs)
        finally:
            await services.close()

    return asyncio.run(go())


@pytest.fixture()
def store(home, tmp_path):
    from modelmill.apps.tables import LookupTables
    from modelmill.store import open_store

    s = open_store()
    (tmp_path / "orders.csv").write_text("order_id,status\n1042,shipped\n1043,processing\n")
    LookupTables(s).add("orders", tmp_path / "orders.csv")
    return s


NESTED = """
inputs: [outer, inner]
nodes:
  - id: first
    type: switch
    value: "{{ outer }}"
    cases: {a: [second], b: [other]}
  - id: second
    type: switch
    value: "{{ inner }}"
    cases: {x: [deep]}
  - id: deep
    type: lookup
    table: orders
    where: {order_id: "{{ inner }}"}
  - id: other
    type: lookup
    table: orders
    where: {order_id: "1043"}
  - id: reply
    type: answer
    text: "{{ (deep or other).first.status }}"
"""


def test_a_skipped_switch_skips_its_cases_and_labels_match_whole_words(store):
    run = _run(store, NESTED, {"outer": "b", "inner": "x"})
    status = {t["node"]: t["status"] for t in run.trace}
    assert status == {"first": "ok", "second": "skipped", "deep": "skipped", "other": "ok", "reply": "ok"}
    assert run.output["text"] == "processing"
    # a model's longer answer picks the label it names as a word: "Reorder" is not "order"
    flow = ("inputs: [v]\nnodes:\n  - id: s\n    type: switch\n    value: '{{ v }}'\n    cases: {order: [o]}\n"
            "    default: [d]\n  - id: o\n    type: answer\n    text: order\n  - id: d\n    type: switch\n"
            "    value: x\n    cases: {x: []}\n")
    for value, case in [("The category is: Order.", "order"), ("Reorder request", "default"), ("disorder", "default")]:
        run = _run(store, flow, {"v": value})
        assert run.trace[0]["output"]["case"] == case, value


def test_a_lookup_with_an_empty_value_finds_nothing_unless_told_to_ignore_it(store):
    flow = ("inputs: [id]\nnodes:\n  - id: find\n    type: lookup\n    table: orders\n"
            "    where: {order_id: '{{ id }}'}\n  - id: reply\n    type: answer\n    text: '{{ find.count }}'\n")
    assert _run(store, flow, {"id": ""}).output["text"] == "0"   # no number given: not every customer's order
    assert _run(store, flow, {"id": "1042"}).output["text"] == "1"
    assert _run(store, flow.replace("    where:", "    if_empty: ignore\n    where:"), {"id": ""}).output["text"] == "2"


def test_templates_are_bounded_and_bad_inputs_are_refused(store):
    from modelmill.apps.flows import FlowFailed
    from modelmill.errors import InputError

    # huge numbers, strings and lists load (nothing is computed then) and fail the run, not the server
    for tpl in ["{{ 10**5000 }}", "{{ 'a' * 50000000 }}", "{{ 9**9**9 }}", "{{ [1] * 10**7 }}"]:
        with pytest.raises(FlowFailed, match="is over"):
            _run(store, f"inputs: []\nnodes:\n  - id: r\n    type: answer\n    text: \"{tpl}\"\n", {})
    flow = "inputs: [n]\nnodes:\n  - id: r\n    type: answer\n    text: '{% for i in range(n | int) %}x{% endfor %}'\n"
    assert len(_run(store, flow, {"n": "500"}).output["text"]) == 500
    with pytest.raises(FlowFailed, match="range\\(\\) of 100,000 items"):
        _run(store, flow, {"n": "100000"})
    with pytest.raises(InputError, match="'messages' is a list"):
        _run(store, flow, {"n": "1", "messages": 5})
    with pytest.raises(InputError, match="has no input 'm'"):
        _run(store, flow, {"n": "1", "m": 5})


class _Hops(http.server.BaseHTTPRequestHandler):
    """/to/PORT redirects to the other server; /loop redirects to itself; /echo answers the
    Authorization header it got."""

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.path.split('/')[2]}/echo")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            body = (self.headers.get("Authorization") or "none").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_redirects_leave_credentials_behind_and_are_bounded():
    from modelmill.apps.ssrf import FetchFailed, fetch

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hops) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    a, b = (s.server_address[1] for s in servers)
    allow = f"127.0.0.1:{a},127.0.0.1:{b}"
    try:
        auth = {"Authorization": "Bearer SECRET", "host": "evil.example"}
        same = asyncio.run(fetch("GET", f"http://127.0.0.1:{a}/echo", headers=auth, allow=allow))
        assert same.text == "Bearer SECRET"   # the origin it was meant for gets it
        other = asyncio.run(fetch("GET", f"http://127.0.0.1:{a}/to/{b}", headers=auth, allow=allow))
        assert other.status == 200 and other.text == "none"   # another origin does not
        with pytest.raises(FetchFailed, match="more than 3 redirects"):
            asyncio.run(fetch("GET", f"http://127.0.0.1:{a}/loop", max_redirects=3, allow=allow))
        from modelmill.errors import InputError

        with pytest.raises(InputError, match="characters HTTP headers cannot carry"):
            asyncio.run(fetch("GET", f"http://127.0.0.1:{a}/echo", headers={"X-Name": "名前"}, allow=allow))
    finally:
        for s in servers:
            s.shutdown()
