"""Workflows the way a user meets them: a YAML file checked by `modelmill apps flow check` (every
problem with its line), published with `apps flow create`, run with `apps flow run`, served as model
`flow:NAME` by `modelmill serve` (the official client, streaming too) and over REST, each run
kept with its trace. The nodes call real parts: the tiny model on the serving engine, a knowledge
base, a business table (CSV and SQLite), an HTTP service on this machine behind the SSRF guard."""

from __future__ import annotations

import asyncio
import http.server
import json
import sqlite3
import threading
import time

import httpx
import pytest

from conftest import CLI, Server

ORDERS = "order_id,status,city,total\n1042,shipped,Paris,35.5\n1043,processing,Lyon,120\n1044,delivered,Paris,80\n"
POLICY = "# Refunds\n\nRefunds are paid within 14 days of the return reaching our warehouse.\n"

FLOW = """\
name: support
description: orders from the table and the order service, refunds from the policy
inputs:
  question: {}
  kind: {default: other}
nodes:
  - id: intent
    type: llm
    model: tiny
    prompt: "Classify: {{ question }}"
    schema: {type: object, properties: {intent: {enum: [order, refund, other]}}, required: [intent]}
    max_tokens: 160
  - id: route
    type: switch
    value: "{{ kind }}"
    cases:
      order: [slots, row, status]
      refund: [policy, draft, verify]
    default: [general]
  - id: slots
    type: extract
    model: tiny
    text: "{{ question }}"
    schema: {type: object, properties: {order_id: {type: string}}}
    max_tokens: 12
  - id: row
    type: lookup
    table: orders
    where: {order_id: "{{ question }}"}
  - id: status
    type: http
    url: "{{ service }}/orders/{{ row.first.order_id }}"
    timeout: 5
  - id: policy
    type: retrieve
    knowledge: [policies]
    query: "{{ question }}"
    k: 2
  - id: draft
    type: llm
    model: tiny
    prompt: "Answer from: {{ policy.text }} Question: {{ question }}"
    max_tokens: 8
  - id: verify
    type: check
    draft: draft
    sources: [policy]
    retries: 1
  - id: general
    type: llm
    model: tiny
    prompt: "{{ question }}"
    max_tokens: 4
  - id: reply
    type: answer
    text: >-
      {% if row %}Order {{ row.first.order_id }} is {{ status.json.state }} ({{ row.first.city }}).
      {%- elif draft %}{{ draft.text }}{% else %}{{ general.text }}{% endif %}
    citations: policy
"""


class _Service(http.server.BaseHTTPRequestHandler):
    """An order service on this machine: /orders/N answers JSON, /slow sleeps, /big sends 3 MB,
    /hop redirects to /orders/1042, /away redirects to another port."""

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/orders/"):
            body = json.dumps({"order": self.path.rsplit("/", 1)[1], "state": "in transit"}).encode()
            self._send(200, body, "application/json")
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"late")
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()  # no Content-Length: the size shows only as it streams
            for _ in range(300):
                self.wfile.write(b"x" * 10_000)
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/orders/1042")
            self.end_headers()
        elif self.path.startswith("/away"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.path.rsplit('/', 1)[1]}/")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def service():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def flow_text(service: str) -> str:
    return FLOW.replace("{{ service }}", service)  # the order service's address is a constant of the file


@pytest.fixture(scope="module")
def flow_home(tmp_path_factory, tiny_model, service):
    home = tmp_path_factory.mktemp("flow-home")
    d = tmp_path_factory.mktemp("flow-data")
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    (d / "orders.csv").write_text(ORDERS)
    cli("apps", "table", "add", "orders", d / "orders.csv")
    (d / "refunds.md").write_text(POLICY)
    cli("kb", "create", "policies")
    cli("kb", "add", "policies", d / "refunds.md")
    (d / "support.yaml").write_text(flow_text(service))
    out = cli("apps", "flow", "create", "support", d / "support.yaml").stdout
    assert "workflow flow:support: 10 nodes" in out
    return home


def test_a_workflow_runs_from_the_command_line_with_its_trace(flow_home, service, monkeypatch):
    import re

    cli = CLI(flow_home)
    monkeypatch.setenv("MODELMILL_HTTP_ALLOW", service.removeprefix("http://"))
    # the order branch: the table's row, the order service's JSON, the answer
    p = cli("apps", "flow", "run", "support", "--input", "question=1042", "--input", "kind=order")
    assert p.stdout.strip() == "Order 1042 is in transit (Paris)."
    trace = {line.split()[0]: line.split()[2] for line in p.stderr.splitlines() if line.startswith("  ")
             and len(line.split()) > 2 and line.split()[1] in ("llm", "switch", "extract", "lookup", "http",
                                                                "retrieve", "check", "answer")}
    assert trace == {"intent": "ok", "route": "ok", "slots": "ok", "row": "ok", "status": "ok", "policy": "skipped",
                     "draft": "skipped", "verify": "skipped", "general": "skipped", "reply": "ok"}
    run_id = re.search(r"run (run-[0-9a-f]+): ok", p.stderr).group(1)
    shown = cli("apps", "flow", "trace", run_id, "--json").stdout
    run = json.loads(shown)
    assert run["status"] == "ok" and run["output"]["text"] == "Order 1042 is in transit (Paris)."
    by = {t["node"]: t for t in run["trace"]}
    assert by["intent"]["output"]["json"]["intent"] in ("order", "refund", "other")  # constrained to the schema
    assert by["intent"]["tokens"]["completion"] > 0 and by["intent"]["inputs"]["messages"][-1]["content"] == (
        "Classify: 1042")
    assert by["status"]["inputs"]["url"] == f"{service}/orders/1042" and by["status"]["output"]["status"] == 200
    assert by["row"]["inputs"]["where"] == {"order_id": "1042"} and set(by["slots"]["output"]) == {"order_id", "text"}
    assert run_id in cli("apps", "flow", "runs", "support").stdout


def test_problems_of_a_workflow_file_are_named_by_line_and_nothing_is_stored(flow_home, tmp_path):
    cli = CLI(flow_home)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n"
                   "  - id: a\n    type: llm\n    model: no-such-model\n    promt: hi\n"     # lines 2-5
                   "  - id: b\n    type: frobnicate\n"                                     # 6-7
                   "  - id: c\n    type: answer\n    text: '{{ d.text }} {{ e }}'\n"      # 8-10
                   "  - id: d\n    type: lookup\n    table: nope\n"                        # 11-13
                   "  - id: f\n    type: llm\n    model: tiny\n    prompt: '{{ c.text }}'\n"  # 14-17
                   "  - id: v\n    type: check\n    sources: [d]\n")                  # 18-20: no draft
    p = cli("apps", "flow", "create", "broken", bad, ok=False)
    err = p.stderr
    assert "bad.yaml:2: field 'nodes.a.prompt': node 'a' (llm) is missing 'prompt'" in err
    assert "bad.yaml:4: field 'nodes.a.model': node 'a': model 'no-such-model' does not exist" in err
    assert "bad.yaml:5: field 'nodes.a.promt': node 'a' (llm) has unknown field 'promt'" in err
    assert "bad.yaml:7: field 'nodes.b.type': node 'b' has unknown type 'frobnicate'" in err
    assert "bad.yaml:10: field 'nodes.c.text': node 'c' uses 'e', which is not an input or a node" in err  # the line of `text:`
    assert "bad.yaml:18: field 'nodes.v.draft': node 'v' (check) is missing 'draft' Fix: add 'draft:' to node 'v'" in err
    assert "Traceback" not in err
    assert "bad.yaml:13: field 'nodes.d.table': node 'd': no lookup table named 'nope'" in err
    assert "flow:broken" not in cli("apps", "list").stdout
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("nodes:\n  - id: a\n    type: llm\n    model: tiny\n    prompt: '{{ b.text }}'\n"
                     "  - id: b\n    type: answer\n    text: '{{ a.text }}'\n")
    assert "cycle.yaml:2: field 'nodes.a': the nodes form a cycle: a -> b -> a" in cli(
        "apps", "flow", "check", cycle, ok=False).stderr
    yaml_err = tmp_path / "indent.yaml"
    yaml_err.write_text("nodes:\n  - id: a\n    type: answer\n   text: x\n")
    assert "indent.yaml:4: not valid YAML" in cli("apps", "flow", "check", yaml_err, ok=False).stderr
    # a published workflow is not replaced by accident, and a bad new version leaves the old one serving
    good = tmp_path / "support-copy.yaml"
    good.write_text("nodes:\n  - id: reply\n    type: answer\n    text: 'hi {{ question }}'\n")
    assert "exists" in cli("apps", "flow", "create", "support", good, ok=False).stderr
    assert "bad.yaml" in cli("apps", "flow", "create", "support", bad, "--replace", ok=False).stderr
    assert "no file" in cli("apps", "flow", "create", "support", tmp_path / "missing.yaml", "--replace",
                            ok=False).stderr
    assert "verify" in cli("apps", "show", "support").stdout  # still the ten-node version


VERDICT = """\
name: verdict
inputs:
  question: {}
nodes:
  - id: guess
    type: llm
    model: tiny
    prompt: "{{ question }}"
    max_tokens: 2
  - id: reply
    type: answer
    text: "{% if 'awful' in question %}negative{% else %}positive{% endif %}{{ guess.text[:0] }}"
"""


def test_a_workflow_is_scored_and_ranked_like_any_model(flow_home, tmp_path):
    """`modelmill eval --models flow:NAME` runs the workflow on each item's conversation (its llm
    node on this process's engine) and scores the answer node's text: this one's rule says
    negative for 'awful' and positive otherwise, so it gets exactly the items that rule gets."""
    from conftest import write_jsonl

    cli = CLI(flow_home)
    (tmp_path / "verdict.yaml").write_text(VERDICT)
    cli("apps", "flow", "create", "verdict", tmp_path / "verdict.yaml")
    rows = [{"text": "Awful pills, awful nights.", "label": "negative"}, {"text": "Great, it worked.", "label": "positive"},
            {"text": "It was fine, nothing more.", "label": "neutral"}, {"text": "awful taste", "label": "negative"},
            {"text": "Terrible headaches.", "label": "negative"}]
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    cli("eval", "--data", test, "--kind", "classification", "--name", "verdict-test", "--models", "flow:verdict,tiny")
    from modelmill.config import Settings
    from modelmill.evaluate.results import latest
    from modelmill.store import Store

    got = {r.candidate: r for r in latest(Store(Settings(home=flow_home)), "verdict-test")}
    assert got["flow:verdict"].metrics["accuracy"] == pytest.approx(3 / 5)  # 'Awful', 'Great', 'awful'
    assert got["flow:verdict"].n_done == 5 and "tiny" in got
    assert "flow:verdict" in cli("leaderboard", "--task", "verdict-test").stdout
    p = cli("eval", "--data", test, "--kind", "classification", "--name", "verdict-test", "--models", "flow:nope",
            ok=False)
    assert "no workflow named 'nope'" in p.stderr


def test_a_workflow_is_served_as_a_model_and_over_rest(flow_home, service):
    s = Server(flow_home, env={"MODELMILL_HTTP_ALLOW": service.removeprefix("http://")})
    try:
        client = s.client()
        assert {"id": "flow:support", "type": "workflow"}.items() <= next(
            m for m in client.models.list().model_dump()["data"] if m["id"] == "flow:support").items()
        r = client.chat.completions.create(model="flow:support", messages=[{"role": "user", "content": "1043"}],
                                           extra_body={"inputs": {"kind": "order"}})
        assert r.choices[0].message.content == "Order 1043 is in transit (Lyon)."
        flow = r.model_extra["flow"]
        assert flow["name"] == "support" and flow["status"] == "ok" and r.usage.total_tokens > 0
        run = httpx.get(f"{s.url}/api/apps/runs/{flow['run_id']}").json()
        assert [t["status"] for t in run["trace"] if t["node"] in ("row", "status", "general")] == ["ok", "ok",
                                                                                                     "skipped"]
        # the refund branch: retrieval, a draft, its check against the retrieved policy, citations
        r = client.chat.completions.create(model="flow:support", messages=[
            {"role": "user", "content": "How long do refunds take?"}], extra_body={"inputs": {"kind": "refund"}})
        cites = r.model_extra["citations"]
        assert cites and cites[0]["document"] == "refunds.md" and r.model_extra["flow"]["status"] in ("ok", "flagged")
        run = httpx.get(f"{s.url}/api/apps/runs/{r.model_extra['flow']['run_id']}").json()
        verify = next(t for t in run["trace"] if t["node"] == "verify")
        assert verify["status"] == "ok" and 1 <= verify["output"]["attempts"] <= 2
        assert verify["output"]["passed"] == (run["status"] == "ok")  # a tiny model's draft is flagged, not hidden
        # streaming: the role, one event per node, the answer, the run
        chunks = list(client.chat.completions.create(model="flow:support", stream=True, messages=[
            {"role": "user", "content": "1044"}], extra_body={"inputs": {"kind": "order"}}))
        events = [c.model_extra["flow_event"] for c in chunks if c.model_extra.get("flow_event")]
        assert len(events) == 10 and {e["node"] for e in events if e["status"] == "ok"} == {
            "intent", "route", "slots", "row", "status", "reply"}  # intent, needed by nobody, runs beside the rest
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Order 1044 is in transit (Paris).")
        assert chunks[-1].model_extra["flow"]["status"] == "ok"
        # REST: the same run endpoint, the runs list
        r = httpx.post(f"{s.url}/api/apps/support/run", json={"inputs": {"question": "1042", "kind": "order"}},
                       timeout=120)
        assert r.status_code == 200 and r.json()["output"]["text"] == "Order 1042 is in transit (Paris)."
        runs = httpx.get(f"{s.url}/api/apps/support/runs").json()["data"]
        assert runs[0]["id"] == r.json()["id"] and "trace" not in runs[0]
        # bad input: an unknown input, a missing one, an unknown workflow; n > 1
        r = httpx.post(f"{s.url}/api/apps/support/run", json={"inputs": {"question": "x", "colour": "red"}})
        assert r.status_code == 400 and "has no input 'colour'" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/api/apps/support/run", json={"inputs": {}})
        assert r.status_code == 400 and "needs input 'question'" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "flow:nope", "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "support", "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "flow:support" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "flow:support", "n": 2, "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "flow:support", "prompt": "hi"})
        assert r.status_code == 400
    finally:
        s.stop()


def test_failing_nodes_give_4xx_with_the_run_stored_and_nothing_deployed_changes(flow_home, service, tmp_path):
    """A node that times out, a body over the size limit, a call to an address the guard refuses, a
    template that reaches for Python internals: each fails its run with 424 (the run and its trace
    kept), never a 500; the workflow that serves stays as it was."""
    cli = CLI(flow_home)
    port = service.rsplit(":", 1)[1]

    def flow(name, node: str) -> None:
        f = tmp_path / f"{name}.yaml"
        f.write_text(f"nodes:\n{node}  - id: reply\n    type: answer\n    text: '{{{{ call.text }}}}'\n")
        cli("apps", "flow", "create", name, f)

    flow("slow", f"  - id: call\n    type: http\n    url: {service}/slow\n    timeout: 1\n")
    flow("big", f"  - id: call\n    type: http\n    url: {service}/big\n    max_bytes: 1000000\n")
    flow("meta", "  - id: call\n    type: http\n    url: http://169.254.169.254/latest/meta-data/\n")
    flow("away", f"  - id: call\n    type: http\n    url: {service}/away/{int(port) + 1}\n")
    flow("hop", f"  - id: call\n    type: http\n    url: {service}/hop\n")
    flow("escape", "  - id: call\n    type: lookup\n    table: orders\n"
                   "    where: {city: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"}\n")
    s = Server(flow_home, env={"MODELMILL_HTTP_ALLOW": f"127.0.0.1:{port}"})
    try:
        def run(name):
            return httpx.post(f"{s.url}/api/apps/{name}/run", json={"inputs": {"question": "q"}}, timeout=60)

        t0 = time.monotonic()
        r = run("slow")
        assert r.status_code == 424 and "no answer within 1 s" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 2.9  # the 3 s reply was not waited for
        assert "more than 1,000,000 bytes" in run("big").json()["error"]["message"]
        r = run("meta")
        assert r.status_code == 424 and "169.254.169.254 is link-local" in r.json()["error"]["message"]
        r = run("away")  # the allowed service redirects to a port the allow-list does not name
        assert r.status_code == 424 and "127.0.0.1 is loopback" in r.json()["error"]["message"]
        r = run("hop")  # a redirect within what is allowed is followed
        assert r.status_code == 200 and "in transit" in r.json()["output"]["text"]
        r = run("escape")
        assert r.status_code == 424 and "unsafe" in r.json()["error"]["message"].lower()
        run_id = r.json()["error"]["message"].split("(run ")[1].split(")")[0]
        stored = httpx.get(f"{s.url}/api/apps/runs/{run_id}").json()
        assert stored["status"] == "failed" and stored["trace"][0]["status"] == "failed"
        assert stored["trace"][1]["status"] == "not run"
        # the workflow that serves is untouched by its neighbours' failures
        r = httpx.post(f"{s.url}/api/apps/support/run", json={"inputs": {"question": "1042", "kind": "order"}},
                       timeout=120)
        assert r.status_code == 200 and r.json()["output"]["text"] == "Order 1042 is in transit (Paris)."
    finally:
        s.stop()


def test_the_ssrf_guard_refuses_every_inner_address():
    import ipaddress

    from modelmill.apps.ssrf import check_url, why_refused
    from modelmill.errors import InputError

    inner = ["127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",
             "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "224.0.0.1", "255.255.255.255",
             "192.0.0.192", "192.0.0.1", "192.0.2.1", "192.88.99.1", "198.18.0.1", "198.51.100.7", "203.0.113.9",
             "240.0.0.1", "0.1.2.3", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
             "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe",
             "2002:7f00:1::1", "2002:a9fe:a9fe::", "2001:db8::1", "::ffff:192.0.0.192", "64:ff9b::c000:c0",
             "64:ff9b:1::1", "fec0::1", "100::1", "::a9fe:a9fe", "3fff::1"]
    public = ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450:4001:81c::200e"]
    assert [a for a in inner if why_refused(ipaddress.ip_address(a)) is None] == []
    assert [a for a in public if why_refused(ipaddress.ip_address(a)) is not None] == []
    assert "Oracle Cloud" in why_refused(ipaddress.ip_address("192.0.0.192"))
    # an IPv6 form reads as a sentence after "... resolves to ADDR, which is"
    assert why_refused(ipaddress.ip_address("::ffff:169.254.169.254")) == (
        "an IPv4-mapped address carrying 169.254.169.254, which is link-local (where cloud metadata services answer)")

    async def refused(url: str, allow: str = "") -> str:
        try:
            await check_url(url, allow)
        except InputError as e:  # Refused, or FetchFailed for a name that does not resolve
            return str(e)
        return ""

    # names and spellings that resolve to loopback: every form is resolved, then checked
    for url in ["http://localhost/", "http://LOCALHOST:8000/admin", "http://2130706433/", "http://0x7f.1/",
                "http://127.1/", "http://017700000001/", "http://[::1]:80/", "http://[::ffff:7f00:1]/",
                "https://127.0.0.1.nip.io.localhost/"]:
        msg = asyncio.run(refused(url))
        assert "loopback" in msg or "does not resolve" in msg, url
    assert "metadata" in asyncio.run(refused("http://169.254.169.254/latest/"))
    assert "address 192.0.0.192 is reserved for IETF protocol assignments (Oracle Cloud" in asyncio.run(
        refused("http://192.0.0.192/opc/v2/instance/"))
    msg = asyncio.run(refused("http://[::ffff:169.254.169.254]/latest/"))
    assert "resolves to ::ffff:a9fe:a9fe, which is an IPv4-mapped address carrying 169.254.169.254, which is " \
           "link-local" in msg and "MODELMILL_HTTP_ALLOW=[::ffff:169.254.169.254]:80" in msg
    assert "not an http(s) URL" in asyncio.run(refused("file:///etc/passwd"))
    assert "not an http(s) URL" in asyncio.run(refused("gopher://127.0.0.1:6379/_INFO"))
    assert "user name or password" in asyncio.run(refused("http://evil.example@127.0.0.1/"))
    # the operator's allow-list: a host:port pair lets that port through, not another
    assert asyncio.run(refused("http://127.0.0.1:9000/", "127.0.0.1:9000")) == ""
    assert "loopback" in asyncio.run(refused("http://127.0.0.1:9001/", "127.0.0.1:9000"))
    assert asyncio.run(refused("http://10.2.3.4/", "10.0.0.0/8")) == ""


def test_a_name_with_one_inner_address_among_public_ones_is_refused(monkeypatch):
    """DNS rebinding: a name that answers a public and an inner address (or changes its answer) is refused
    when any answer is inner, and the connection goes to the address checked, not to a second lookup."""
    import socket

    from modelmill.apps import ssrf

    answers = {"mixed.example": ["93.184.215.14", "10.0.0.5"], "public.example": ["93.184.215.14"]}

    async def fake_getaddrinfo(self, host, port, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(ssrf.Refused, match="'mixed.example' resolves to 10.0.0.5, which is private"):
        asyncio.run(ssrf.check_url("http://mixed.example/"))
    assert asyncio.run(ssrf.check_url("https://public.example/x")) == ("public.example", 443, "93.184.215.14")


def test_business_tables_from_files_and_sql_filter_the_same_way(cli, tmp_path):
    """A CrossWOZ-shaped JSON ([name, {...}] pairs, list cells), a CSV and an SQLite table: one filter
    language (equal without case, a list cell matching one item, numeric comparisons, contains), an
    empty value leaving its column out, and bad files named by line."""
    hotels = tmp_path / "hotel_db.json"
    hotels.write_text(json.dumps([
        ["北京贵都大酒店", {"名称": "北京贵都大酒店", "价格": 464, "设施": ["wifi", "吹风机"], "区域": "西城区"}],
        ["汉庭酒店", {"名称": "汉庭酒店", "价格": 238, "设施": ["wifi"], "区域": "朝阳区"}],
        ["如家酒店", {"名称": "如家酒店", "价格": 199, "设施": ["吹风机"], "区域": "朝阳区"}]], ensure_ascii=False))
    cli("apps", "table", "add", "hotels", hotels)
    p = cli("apps", "table", "lookup", "hotels", "--where", "区域=朝阳区", "--where", "价格<=220")
    assert [json.loads(x)["名称"] for x in p.stdout.splitlines()] == ["如家酒店"] and "1 rows match" in p.stderr
    p = cli("apps", "table", "lookup", "hotels", "--where", "设施=WIFI")
    assert [json.loads(x)["名称"] for x in p.stdout.splitlines()] == ["北京贵都大酒店", "汉庭酒店"]
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as c:
        c.execute("create table orders (order_id text, status text, total real)")
        c.executemany("insert into orders values (?, ?, ?)", [("1042", "shipped", 35.5), ("1043", "processing", 120),
                                                              ("1044", "delivered", 80)])
    cli("apps", "table", "add", "orders", "--sql", f"sqlite:///{db}", "--sql-table", "orders")
    p = cli("apps", "table", "lookup", "orders", "--where", "total>50", "--where", "status~ver")
    assert [json.loads(x)["order_id"] for x in p.stdout.splitlines()] == ["1044"]
    p = cli("apps", "table", "lookup", "orders", "--where", "status=x' OR '1'='1")
    assert p.stdout == "" and "0 rows match" in p.stderr  # a bound parameter, not SQL
    from modelmill.apps.tables import LookupTables
    from modelmill.store import open_store

    tables = LookupTables(open_store())
    assert tables.lookup("orders", {"status": "", "order_id": None})[1] == 3  # unheard slots do not narrow
    assert "has no column 'colour'" in cli("apps", "table", "lookup", "orders", "--where", "colour=red",
                                           ok=False).stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n[1, 2]\n')
    assert "bad.jsonl:2: a row must be a JSON object" in cli("apps", "table", "add", "bad", bad, ok=False).stderr
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b\n1,2\n3,4,5\n")
    assert "wide.csv:3: 1 more cells than the header has columns" in cli("apps", "table", "add", "w", wide,
                                                                         ok=False).stderr
    assert "exists" in cli("apps", "table", "add", "hotels", hotels, ok=False).stderr
    assert "no table 'nope'" in cli("apps", "table", "add", "n", "--sql", f"sqlite:///{db}", "--sql-table", "nope",
                                    ok=False).stderr
    listing = cli("apps", "table", "list").stdout
    assert "hotels" in listing and "orders" in listing and "bad" not in listing
