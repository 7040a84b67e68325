"""The rules of a workflow file and of a run, checked through the library on a real store: what the
loader refuses (with the line), how switches skip, what a check guards, how lookups treat empty
values, and what the HTTP guard does with redirects. No model is loaded: the nodes here are
switch, lookup, http and answer."""

from __future__ import annotations

import asyncio
import http.server
import json
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


# every required field of every node type, and a file that has it (node 'v'; 'reply' answers)
_NEEDS = {"llm": {"model": "m", "prompt": "hi"},
          "extract": {"model": "m", "text": "hi", "schema": "{type: object, properties: {a: {type: string}}}"},
          "retrieve": {"knowledge": "[policies]", "query": "q"},
          "lookup": {"table": "orders"},
          "http": {"url": "http://example.com/"},
          "switch": {"value": "x", "cases": "{x: [reply]}"},
          "check": {"draft": "d", "sources": "[reply]"},
          "answer": {"text": "hi"}}


@pytest.mark.parametrize("ntype, missing", [(t, k) for t, fields in _NEEDS.items() for k in fields])
def test_a_node_missing_a_required_field_is_one_problem_with_its_line(store, ntype, missing):
    """Every node type, every required field: the loader reports it (line, field, fix) and goes on
    checking the rest of the file without reading the field it lacks (no KeyError)."""
    from modelmill.apps.flow_spec import TYPES

    assert set(_NEEDS[ntype]) == set(TYPES[ntype][0])
    fields = "".join(f"    {k}: {v}\n" for k, v in _NEEDS[ntype].items() if k != missing)
    text = f"nodes:\n  - id: v\n    type: {ntype}\n{fields}"
    if ntype != "answer":
        text += "  - id: reply\n    type: answer\n    text: '{{ v.text }}'\n"
    if ntype == "check":
        text += "  - id: d\n    type: llm\n    model: m\n    prompt: hi\n"
    with pytest.raises(FlowError) as e:
        load_workflow(text, "f.yaml", store)
    got = [d for d in e.value.details if d["field"] == f"nodes.v.{missing}"]
    assert [(d["line"], d["message"]) for d in got] == [(2, f"node 'v' ({ntype}) is missing '{missing}'")]
    assert f"add '{missing}:' to node 'v'" in got[0]["fix"]
    assert str(e.value).startswith(f"f.yaml:2: field 'nodes.v.{missing}': node 'v' ({ntype}) is "
                                             f"missing '{missing}'")


def test_problems_in_templates_point_at_the_line_and_field_that_has_them():
    got = [(d["line"], d["field"], d["message"]) for d in _details(
        "nodes:\n"                     # 1
        "  - id: reply\n"              # 2
        "    type: answer\n"           # 3
        "    text: |\n"                # 4
        "      Hello\n"                # 5
        "      {{ nope }}\n")]         # 6
    assert got == [(6, "nodes.reply.text", "node 'reply' uses 'nope', which is not an input or a node")]
    for style in "|>":  # a template error, counted from where the text starts (not from `text:`)
        got = [(d["line"], d["field"]) for d in _details(
            f"nodes:\n  - id: reply\n    type: answer\n    text: {style}-\n      {{{{ a + }}}}\n")]
        assert got == [(5, "nodes.reply.text")], style
    got = [(d["line"], d["field"]) for d in _details(
        "nodes:\n  - id: reply\n    type: answer\n    text: |\n      Hello\n\n      {% for x in y %}{{ a + }}\n")]
    assert got == [(7, "nodes.reply.text")]
    got = [(d["line"], d["field"], d["message"]) for d in _details(
        "nodes:\n  - id: find\n    type: lookup\n    table: orders\n    where:\n"   # 1-5
        "      order_id: '{{ question }}'\n      status: '{{ stat }}'\n"             # 6-7
        "  - id: reply\n    type: answer\n    text: '{{ find.text }} {{ reply.x }}'\n")]  # 8-10
    assert got == [(7, "nodes.find.where", "node 'find' uses 'stat', which is not an input or a node"),
                   (10, "nodes.reply.text", "node 'reply' refers to itself")]


def _details(text: str) -> list[dict]:
    with pytest.raises(FlowError) as e:
        load_workflow(text, "f.yaml")
    return e.value.details


def test_a_trace_never_shows_credentials_in_headers(store, monkeypatch):
    """The headers an http node sent are kept in the run's trace (CLI, REST and web show it): every
    credential-bearing one as ***, by the same rule that keeps them from another origin on redirect."""
    from modelmill.apps.flows import FlowRuns
    from modelmill.apps.ssrf import SECRET_HEADERS, is_secret_header

    assert all(is_secret_header(h.upper()) for h in SECRET_HEADERS)
    assert not any(is_secret_header(h) for h in ("Accept", "Content-Type", "User-Agent", "X-Request-Id"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hops)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    monkeypatch.setenv("MODELMILL_HTTP_ALLOW", f"127.0.0.1:{port}")
    secret = {"Authorization": "Bearer A1", "Proxy-Authorization": "Basic B2", "Api-Key": "C3",
              "X-Auth-Token": "D4", "Cookie": "s=E5", "X-Session-Secret": "F6", "X-Client-Password": "G7",
              "x-upstream-token": "H8", "X-API-KEY": "I9"}
    headers = "{" + ", ".join(f"{k}: {v}" for k, v in {**secret, "Accept": "text/plain"}.items()) + "}"
    try:
        run = _run(store, f"inputs: []\nnodes:\n  - id: call\n    type: http\n    url: http://127.0.0.1:{port}/echo\n"
                          f"    headers: {headers}\n  - id: reply\n    type: answer\n    text: '{{{{ call.text }}}}'\n",
                   {})
    finally:
        srv.shutdown()
    assert run.output["text"] == "Bearer A1"  # sent as given
    for trace in (run.trace, FlowRuns(store).get(run.id).trace):
        shown = trace[0]["inputs"]["headers"]
        assert shown == {**{k: "***" for k in secret}, "Accept": "text/plain"}
        assert not any(v in json.dumps(trace[0]["inputs"]) for v in secret.values())


class _Answers:
    """Retrieval at our own seam (apps.rag.KnowledgeAnswers.retrieve): fixed hits per knowledge base."""

    def __init__(self, hits: dict):
        self.hits = hits

    async def retrieve(self, names, messages, k, mode):
        from modelmill.kb.base import Hit

        return [(n, Hit(id=f"{doc}#{i}", doc=doc, title=doc, section="", page=None, start=0, end=len(text),
                        text=text, score=1.0 - i / 10))
                for n in names for i, (doc, text) in enumerate(self.hits[n])][:k]


def test_citations_of_several_retrieve_nodes_are_numbered_as_the_model_saw_them(store):
    """An answer citing [pol, zh]: each retrieve node's text shows its items under the numbers the
    answer's citations give them, so the [n] a draft copies from zh's text is zh's item."""
    from modelmill.apps.flows import FlowServices, run_flow

    flow = ("inputs: [question]\nnodes:\n"
            "  - id: zh\n    type: retrieve\n    knowledge: [warranty]\n    query: '{{ question }}'\n    k: 2\n"
            "  - id: pol\n    type: retrieve\n    knowledge: [policies]\n    query: '{{ question }}'\n    k: 3\n"
            "  - id: draft\n    type: answer\n    citations: [pol, zh]\n"
            "    text: \"{{ zh.text | regex_search('\\\\[\\\\d+\\\\]') }} and {{ pol.text | regex_search('\\\\[\\\\d+\\\\]') }}\"\n")
    answers = _Answers({"policies": [("refunds.md", "Refunds take 14 days."), ("shipping.md", "Shipping is 4.90.")],
                        "warranty": [("warranty.txt", "电池保修六个月。"), ("care.txt", "保修期内免费维修。")]})
    wf = load_workflow(flow, "f.yaml", None, "cites")

    async def go():
        return await run_flow(FlowServices(store, None, None, answers), wf, {"question": "电池保修多久？"})

    run = asyncio.run(go())
    by = {t["node"]: t["output"] for t in run.trace}
    # pol (listed first) numbers from 1 and found 2 of its k=3; zh numbers from 4
    assert [i["index"] for i in by["pol"]["items"]] == [1, 2] and by["pol"]["text"].startswith("[1] (refunds.md")
    assert [i["index"] for i in by["zh"]["items"]] == [4, 5] and by["zh"]["text"].startswith("[4] (warranty.txt")
    assert run.output["text"] == "[4] and [1]"
    cites = {c["index"]: (c["document"], c["cited"]) for c in run.output["citations"]}
    assert cites == {1: ("refunds.md", True), 2: ("shipping.md", False), 4: ("warranty.txt", True),
                     5: ("care.txt", False)}
