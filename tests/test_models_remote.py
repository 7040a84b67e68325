"""Remote OpenAI-compatible endpoints registered as models: the `modelmill models` commands,
the `RemoteModel` client and the refusals of everything that needs local weights. The remote
end is a real `modelmill serve` over the tiny model on localhost.

    HF_HUB_OFFLINE=1 .venv/bin/pytest tests/test_models_remote.py -q
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import CLI, Server

from modelmill.errors import InputError
from modelmill.models.remote import RemoteError, RemoteModel

HELLO = [{"role": "user", "content": "hello there"}]
CLOSED = "http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("remote-serve-home")
    CLI(home)("models", "add", "tiny", tiny_model)
    return home


@pytest.fixture(scope="module")
def server(serve_home):
    s = Server(serve_home)
    yield s
    s.stop()


def _store_of(home, monkeypatch):
    from modelmill.store import open_store

    monkeypatch.setenv("MODELMILL_HOME", str(home))
    return open_store()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the registry, through the CLI

def test_add_list_show_remove_a_remote_model(cli: CLI, monkeypatch):
    monkeypatch.setenv("MM_TEST_REMOTE_KEY", "very-secret-value-123")
    out = cli("models", "add", "gpt", "--endpoint", "http://127.0.0.1:1/v1/", "--remote-model", "org/model-1",
              "--api-key-env", "MM_TEST_REMOTE_KEY").stdout
    assert "added gpt" in out and "org/model-1" in out and "http://127.0.0.1:1/v1" in out
    # registration does not contact the endpoint: port 1 answers nothing, and that is fine

    row = next(line for line in cli("models", "list").stdout.splitlines() if line.startswith("gpt "))
    assert row.split()[1] == "remote" and row.split()[-1] == "remote"

    shown = cli("models", "show", "gpt").stdout
    for needle in ("endpoint:       http://127.0.0.1:1/v1", "remote model:   org/model-1",
                   "api key env:    MM_TEST_REMOTE_KEY (set)"):
        assert needle in shown, shown
    assert "chat template" not in shown and "sha256" not in shown

    from modelmill.models.registry import ModelRegistry

    reg = ModelRegistry(_store_of(cli.home, monkeypatch))
    stored = reg.get("gpt")
    assert (stored.source_type, stored.source, stored.path) == ("remote", "http://127.0.0.1:1/v1", None)
    assert stored.info == {"remote_model": "org/model-1", "api_key_env": "MM_TEST_REMOTE_KEY",
                           "endpoint": "http://127.0.0.1:1/v1"}
    assert "gpt" not in [r.name for r in reg.list()], "code that expects weights must not meet a remote model"
    assert "gpt" in [r.name for r in reg.list(include_remote=True)]
    assert b"very-secret-value-123" not in (cli.home / "modelmill.db").read_bytes(), "the key must never be stored"

    # the remote model id defaults to the name; no key variable means no key
    cli("models", "add", "plain", "--endpoint", "https://example.invalid/api/v1")
    assert reg.get("plain").info == {"remote_model": "plain", "api_key_env": None,
                                     "endpoint": "https://example.invalid/api/v1"}
    assert "(none: no key is sent)" in cli("models", "show", "plain").stdout
    assert cli("models", "add", "gpt", "--endpoint", "http://h/v1", ok=False).returncode == 4

    cli("models", "remove", "gpt")
    cli("models", "remove", "plain")
    listed = cli("models", "list").stdout
    assert "gpt " not in listed and "plain " not in listed


def test_bad_endpoint_urls_and_key_variables(cli: CLI):
    cases = [("ftp://host/v1", "not an http:// or https:// URL"),
             ("localhost:8000/v1", "not an http:// or https:// URL"),
             ("http:///v1", "not an http:// or https:// URL"),
             ("http://host:port/v1", "not a valid URL"),
             ("http://host/v1?x=1", "query string"),
             ("http://host:8000/v1/chat/completions", "use http://host:8000/v1")]
    for url, needle in cases:
        p = cli("models", "add", "r", "--endpoint", url, ok=False)
        assert p.returncode == 2 and "--endpoint" in p.stderr and needle in p.stderr and "Fix:" in p.stderr, p.stderr
    p = cli("models", "add", "r", "--endpoint", "https://bob:hunter2@host/v1", ok=False)
    assert "user name or password" in p.stderr and "hunter2" not in p.stderr and "--api-key-env" in p.stderr
    # the key pasted where its variable's name belongs is refused, and not echoed back
    p = cli("models", "add", "r", "--endpoint", "http://host/v1", "--api-key-env", "sk-abc-123456", ok=False)
    assert "--api-key-env" in p.stderr and "not an environment variable name" in p.stderr
    assert "sk-abc-123456" not in p.stderr
    assert "r " not in cli("models", "list").stdout


def test_path_or_endpoint_exactly_one(cli: CLI, tiny_model):
    p = cli("models", "add", "r", ok=False)
    assert p.returncode == 2 and "no PATH and no --endpoint" in p.stderr and "Fix:" in p.stderr
    p = cli("models", "add", "r", tiny_model, "--endpoint", "http://host/v1", ok=False)
    assert p.returncode == 2 and "both PATH and --endpoint" in p.stderr
    p = cli("models", "add", "r", tiny_model, "--remote-model", "x", ok=False)
    assert "--remote-model" in p.stderr and "only goes with --endpoint" in p.stderr
    p = cli("models", "add", "r", "--endpoint", "http://host/v1", "--chat-template", "chatml", ok=False)
    assert "--chat-template" in p.stderr
    assert "r " not in cli("models", "list").stdout


def test_check_asks_the_live_server(cli: CLI, server):
    out = cli("models", "add", "local-tiny", "--endpoint", server.url + "/v1", "--remote-model", "tiny", "--check").stdout
    assert "checked:" in out and "lists 'tiny'" in out

    p = cli("models", "add", "typo", "--endpoint", server.url + "/v1", "--remote-model", "tinyy", "--check", ok=False)
    assert p.returncode == 2 and "does not list model 'tinyy'" in p.stderr and "tiny" in p.stderr
    assert "--remote-model" in p.stderr

    p = cli("models", "add", "down", "--endpoint", CLOSED.format(port=_closed_port()), "--check", ok=False)
    assert p.returncode == 5 and "cannot reach" in p.stderr and "Fix:" in p.stderr
    listed = cli("models", "list").stdout
    assert "local-tiny" in listed and "typo" not in listed and "down" not in listed, "a failed check stores nothing"


# ---------------------------------------------------------------- the client

def test_chat_and_chat_many_against_the_live_server(server):
    with RemoteModel(server.url + "/v1", "tiny") as m:
        r = m.chat(HELLO, max_tokens=8)
        assert isinstance(r["text"], str) and r["seconds"] > 0 and r["finish_reason"] in ("stop", "length")
        assert r["usage"]["prompt_tokens"] > 0 and 0 < r["usage"]["completion_tokens"] <= 8

        convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
        convs[2] = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
        out = m.chat_many(convs, concurrency=3, max_tokens=6, seed=1)
    assert len(out) == 5
    for i, item in enumerate(out):
        if i == 2:  # the server rejects this one; the others still come back, in order
            assert isinstance(item, RemoteError) and item.status == 400 and item.attempts == 1
            assert "only text parts" in str(item)
        else:
            assert isinstance(item, dict) and isinstance(item["text"], str), item
            assert 0 < item["usage"]["completion_tokens"] <= 6
    assert m.chat_many([]) == []


def test_a_registered_remote_model_is_called_but_never_served(serve_home, server, monkeypatch):
    """from_row calls the endpoint; the serving side neither lists nor proxies remote models."""
    from modelmill.models.registry import ModelRegistry

    reg = ModelRegistry(_store_of(serve_home, monkeypatch))
    reg.add_remote("tiny-remote", server.url + "/v1", "tiny")
    try:
        with RemoteModel.from_row(reg.get("tiny-remote")) as m:
            assert m.chat(HELLO, max_tokens=4)["usage"]["completion_tokens"] > 0
        ids = [c["id"] for c in httpx.get(server.url + "/v1/models").json()["data"]]
        assert "tiny" in ids and "tiny-remote" not in ids
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny-remote", "messages": HELLO}, timeout=30)
        assert r.status_code == 404 and "remote endpoint" in r.json()["error"]["message"]
        assert server.url not in r.json()["error"]["message"]
    finally:
        reg.remove("tiny-remote")


def test_api_key_sent_from_the_named_variable(cli: CLI, serve_home, monkeypatch):
    s = Server(serve_home, "--api-key", "sekret")
    try:
        monkeypatch.setenv("MM_REMOTE_KEY", "sekret")
        out = cli("models", "add", "keyed", "--endpoint", s.url + "/v1", "--remote-model", "tiny",
                  "--api-key-env", "MM_REMOTE_KEY", "--check").stdout
        assert "checked:" in out
        from modelmill.models.registry import ModelRegistry

        row = ModelRegistry(_store_of(cli.home, monkeypatch)).get("keyed")
        with RemoteModel.from_row(row, timeout=30) as m:
            assert m.chat(HELLO, max_tokens=4)["usage"]["completion_tokens"] > 0
            assert "sekret" not in repr(m)

        monkeypatch.setenv("MM_REMOTE_KEY", "not-the-key-42")
        with RemoteModel.from_row(row) as m, pytest.raises(RemoteError) as e:
            m.chat(HELLO, max_tokens=4)
        assert e.value.status == 401 and e.value.attempts == 1
        assert "HTTP 401" in str(e.value) and "MM_REMOTE_KEY" in str(e.value) and "not-the-key-42" not in str(e.value)

        with RemoteModel(s.url + "/v1", "tiny") as m, pytest.raises(RemoteError) as e:  # no key at all
            m.chat(HELLO, max_tokens=4)
        assert e.value.status == 401 and "--api-key-env" in str(e.value)

        monkeypatch.delenv("MM_REMOTE_KEY")
        with pytest.raises(InputError) as e:
            RemoteModel.from_row(row)
        assert "MM_REMOTE_KEY" in str(e.value) and "not set" in str(e.value) and "export MM_REMOTE_KEY" in str(e.value)
        p = cli("models", "add", "keyed2", "--endpoint", s.url + "/v1", "--remote-model", "tiny",
                "--api-key-env", "MM_REMOTE_KEY", "--check", ok=False)
        assert p.returncode == 2 and "MM_REMOTE_KEY" in p.stderr and "not set" in p.stderr
    finally:
        s.stop()


def test_unknown_model_is_a_clear_404_and_not_retried(server):
    with RemoteModel(server.url + "/v1", "no-such-model", max_retries=3) as m, pytest.raises(RemoteError) as e:
        m.chat(HELLO)
    err = e.value
    assert err.status == 404 and err.attempts == 1 and err.model == "no-such-model"
    text = str(err)
    for needle in (server.url + "/v1", "'no-such-model'", "HTTP 404", "does not exist", "Fix:", "/models"):
        assert needle in text, text


def test_closed_port_is_retried_then_fails_clearly():
    url = CLOSED.format(port=_closed_port())
    with RemoteModel(url, "x", timeout=2, max_retries=1) as m, pytest.raises(RemoteError) as e:
        m.chat(HELLO)
    assert e.value.status is None and e.value.attempts == 2
    assert url in str(e.value) and "cannot reach" in str(e.value) and "2 attempts" in str(e.value)
    assert "reachable" in str(e.value)


class _Flaky(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, headers) of the server's script, then a completion."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        srv = self.server
        srv.seen.append(self.headers.get("authorization"))
        status, headers = srv.script.pop(0) if srv.script else (200, {})
        body = ({"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}} if status == 200
                else {"error": {"message": f"scripted {status}", "type": "x"}})
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky():
    """A plain HTTP server that fails as scripted: the faults a real provider shows now and then."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.script, srv.seen = [], []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_429_and_5xx_are_retried_other_4xx_are_not(flaky, monkeypatch):
    import modelmill.models.remote as remote

    monkeypatch.setattr(remote, "BACKOFF_BASE", 0.01)
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    flaky.script = [(429, {"Retry-After": "0"}), (503, {}), (502, {})]
    with RemoteModel(url, "m", max_retries=3) as m:
        assert m.chat(HELLO)["text"] == "ok"
    assert len(flaky.seen) == 4 and flaky.seen[0] is None, "no Authorization header without a key"

    flaky.seen.clear()
    flaky.script = [(500, {}), (500, {})]
    with RemoteModel(url, "m", "k3y", max_retries=1) as m, pytest.raises(RemoteError) as e:
        m.chat(HELLO)
    assert e.value.status == 500 and e.value.attempts == 2 and "scripted 500" in str(e.value)
    assert flaky.seen == ["Bearer k3y", "Bearer k3y"]

    flaky.seen.clear()
    flaky.script = [(400, {})]
    with RemoteModel(url, "m", max_retries=3) as m, pytest.raises(RemoteError) as e:
        m.chat(HELLO)
    assert e.value.status == 400 and e.value.attempts == 1 and len(flaky.seen) == 1


# ---------------------------------------------------------------- what needs local weights refuses

def test_train_chat_and_token_counts_refuse_a_remote_model(cli: CLI, reviews_file, monkeypatch):
    cli("models", "add", "r", "--endpoint", "http://127.0.0.1:1/v1")
    cli("data", "import", reviews_file, "--name", "reviews")
    for args in (("chat", "r", "--prompt", "hi"),
                 ("train", "--data", "reviews", "--base", "r", "--name", "r-lora"),
                 ("data", "stats", "reviews", "--model", "r")):
        p = cli(*args, ok=False)
        assert p.returncode == 2 and "'r' is a remote endpoint" in p.stderr and "Fix:" in p.stderr, (args, p.stderr)
    assert not (cli.home / "runs" / "r-lora").exists() and not (cli.home / "adapters" / "r-lora").exists()

    from modelmill.models.registry import ModelRegistry

    reg = ModelRegistry(_store_of(cli.home, monkeypatch))
    for fn in (lambda: reg.ready("r"), lambda: reg.base_hash(reg.get("r"))):
        with pytest.raises(InputError, match="remote endpoint"):
            fn()
    with pytest.raises(InputError, match="local model"):
        RemoteModel.from_row(reg.get("smollm2-135m-instruct"))


@pytest.mark.parametrize("url, needle", [
    ("http://ho st/v1", "white space"),
    ("http://host:0/v1", "port 0"),
    ("http://a..b/v1", "empty part in its host name"),
    ("http://.host/v1", "empty part in its host name"),
    ("http://host:8000/v1/models", "use http://host:8000/v1"),
    ("http://host/v1/models/", "use http://host/v1"),
])
def test_endpoints_with_spaces_empty_labels_port_0_or_a_route_are_refused(url, needle):
    from modelmill.models.remote import normalize_endpoint

    with pytest.raises(InputError) as err:
        normalize_endpoint(url)
    assert needle in str(err.value) and "--endpoint" in str(err.value) and "Fix:" in str(err.value)
    assert normalize_endpoint("http://[::1]:8000/v1/") == "http://[::1]:8000/v1"
