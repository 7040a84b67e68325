"""Reliability of the HTTP API under load and under fuzzing, against a real ``modelmill up``.

1. 200 mixed API calls fired at once (reads, uploads, job submissions and cancels, chat,
   bad input, unknown ids, the same name submitted concurrently): no answer is a 5xx, every
   bad request gets the 4xx docs/platform.md gives, nothing stored is lost to a race, and
   afterwards every job reaches a final state (one of them cancelled mid-training) with the
   worker still up.
2. schemathesis fuzzes every operation of /openapi.json (examples, coverage and fuzzing phases,
   a bounded number of examples): no answer is a 5xx, and declared response bodies fit.

Both run against one server, started as a user starts it (``modelmill up --workers 1``) on a
home seeded through the CLI (the tiny model, a chat dataset) and through the API (an uploaded
fine-tuning file, a finished training job), so routes with ids have something real to hit.
The server runs with an admin API key: a fuzzed ``POST /api/keys`` creates keys, and without
an admin key every later request would be refused with 401 and test nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

import pytest
import schemathesis
from conftest import CLI, MODELMILL, write_jsonl

FINISHED = ("succeeded", "failed", "cancelled")
KEY = "mm-reliability-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


# ----------------------------------------------------------------------------- the server

class Up:
    """``modelmill up`` in its own process group; stopped like Ctrl-C (SIGINT), killed if it hangs."""

    def __init__(self, home: Path, *flags, timeout: float = 120):
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / "up.log"
        env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen([*MODELMILL, "up", "--port", str(self.port), *map(str, flags)], env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"modelmill up exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"modelmill up did not answer /health in {timeout}s:\n{self.log_text()}")
            time.sleep(0.2)

    def log_text(self, tail: int = 20000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def log_size(self) -> int:
        return self.log.stat().st_size

    def tracebacks(self, start: int = 0) -> str:
        """The server's tracebacks logged since byte ``start``: modelmill's own frames and the exception
        lines of each, once (the app logs each error, then uvicorn logs it again)."""
        with self.log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        blocks: list[list[str]] = []
        keep = code = False
        for line in text.splitlines():
            if line.startswith("INFO:"):
                keep = False
            elif line.startswith(("unexpected error", "ERROR:")):
                keep, code = True, False
                blocks.append([])
            elif keep:
                if line.startswith("  File "):
                    code = "/modelmill/" in line
                    if code:
                        blocks[-1].append(line[:600])
                elif line.startswith("    "):
                    if code:
                        blocks[-1].append(line[:300])
                    code = False
                elif line.strip() and not line.startswith("Traceback"):
                    blocks[-1].append(line[:600])
        out = []
        for block in blocks:
            if block and (not out or block != out[-1]):
                out.append(block)
        return "\n\n".join("\n".join(b) for b in out) + f"\n(full log: {self.log})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C sends: the server, its worker, the runners
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of the group still there
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._out.close()


def chat_rows(tag: str, n: int = 8) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say hello to {tag} number {i}"},
                          {"role": "assistant", "content": f"Hello, {tag} {i}!"}]} for i in range(n)]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait_job(client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_model):
    """A running ``modelmill up`` whose store holds the tiny model, a chat dataset, an uploaded
    fine-tuning file and a finished (succeeded) training job."""
    import httpx

    root = tmp_path_factory.mktemp("reliability")
    home = root / "home"
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)  # what the cli_tiny fixture does, for a module-wide home
    cli("data", "import", write_jsonl(root / "chat.jsonl", chat_rows("seed", 16)), "--name", "chat")
    server = Up(home, "--workers", 1, "--poll", 0.5, "--api-key", KEY)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            r = c.post("/v1/files", files={"file": ("seed.jsonl", jsonl(chat_rows("file")))},
                       data={"purpose": "fine-tune"})
            assert r.status_code == 200, r.text
            file_id = r.json()["id"]
            r = c.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "chat", "name": "seed-lora",
                                                                      "max_steps": 2, "batch_size": 4}})
            assert r.status_code == 201, r.text
            job = wait_job(c, r.json()["id"])
            assert job["status"] == "succeeded", (job, server.log_text())
        server.seed = {"file": file_id, "job": job["id"], "adapter": "seed-lora", "dataset": "chat"}
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------- 200 calls at once

class Burst:
    """The calls of the burst: each one's route label, status, and what to expect of it."""

    def __init__(self, client):
        self.client = client
        self.results: list[tuple[str, int, str]] = []  # (route, status, expectation)
        self.bad: list[str] = []  # every 5xx or unexpected status, with request and response

    async def call(self, expect: str | int | tuple, method: str, path: str, route: str | None = None, **kw):
        """``expect``: "ok" (any 2xx), a status (the one docs/platform.md gives), or a tuple of
        statuses (a race decides which, e.g. 201 for one caller and 409 for the others)."""
        import httpx

        route = route or f"{method} {path}"
        try:
            r = await self.client.request(method, path, **kw)
        except httpx.HTTPError as e:  # no answer at all counts as a failure too
            self.results.append((route, 0, expect))
            self.bad.append(f"{method} {path}: no response ({type(e).__name__}: {e})")
            return None
        self.results.append((route, r.status_code, expect))
        s = r.status_code
        if s >= 500 or (expect == "ok" and not 200 <= s < 300) or (isinstance(expect, int) and s != expect) \
                or (isinstance(expect, tuple) and s not in expect):
            sent = kw.get("json") if "json" in kw else {k: v for k, v in kw.get("data", {}).items()}
            if "files" in kw:
                name, content = kw["files"]["file"][:2]
                sent = {"form": sent, "file": name, "content": content[:200]}
            self.bad.append(f"{method} {path} (expected {expect}) -> {s}\n  request: {sent}\n  response: {r.text[:2000]}")
        return r

    def table(self) -> str:
        per: dict[str, Counter] = {}
        for route, status, _ in self.results:
            per.setdefault(route, Counter())[status] += 1
        width = max(len(r) for r in per)
        lines = [f"{'route':<{width}}  statuses"]
        for route in sorted(per):
            lines.append(f"{route:<{width}}  " + ", ".join(f"{s}x{n}" for s, n in sorted(per[route].items())))
        total = Counter(s for _, s, _ in self.results)
        lines.append(f"{'all ' + str(len(self.results)) + ' calls':<{width}}  "
                     + ", ".join(f"{s}x{n}" for s, n in sorted(total.items())))
        return "\n".join(lines)


def _burst_calls(b: Burst, seed: dict) -> list:
    """The coroutines of the burst: 200 HTTP calls in all (a few tasks make two calls in a row)."""
    job, file_id = seed["job"], seed["file"]
    up = "/api/datasets"
    calls = []

    def add(n, what, *args, **kw):
        """``n`` calls: ``what(i)`` for a task of its own, or ``b.call(what, *args)`` (what = the expectation)."""
        for i in range(n):
            calls.append(what(i) if callable(what) else b.call(what, *args, **kw))

    # things created by name, the same name at once (first, so that they arrive together): 15.
    # A deployment is created or updated, the same mix is stored once (201 with "created": false
    # for the others), one key gets the name (409 for the others)
    add(6, lambda i: b.call("ok", "POST", "/api/deployments", json={"name": "live", "model": "tiny"}))
    add(4, lambda i: b.call("ok", "POST", "/api/datasets/mix",
                            json={"name": "mixed", "sources": [{"dataset": seed["dataset"], "ratio": 1}]}))
    add(5, lambda i: b.call((201, 409), "POST", "/api/keys", json={"name": "ci", "scopes": ["infer"]}))

    # reads: 62
    add(8, "ok", "GET", "/health")
    add(8, "ok", "GET", "/v1/models")
    add(6, "ok", "GET", "/api/datasets")
    add(8, "ok", "GET", "/api/jobs")
    add(4, "ok", "GET", "/api/models")
    add(6, "ok", "GET", "/api/schema/train")
    add(4, "ok", "GET", "/openapi.json")
    add(3, "ok", "GET", "/v1/files")
    add(3, "ok", "GET", "/v1/fine_tuning/jobs")
    add(4, "ok", "GET", f"/api/datasets/{seed['dataset']}", route="GET /api/datasets/{ref}")
    add(2, "ok", "GET", "/api/workers")
    add(2, "ok", "GET", "/api/adapters")
    add(4, "ok", "GET", f"/api/jobs/{job}", route="GET /api/jobs/{id}")
    # the finished job's events, the uploaded file: 10
    add(4, "ok", "GET", f"/api/jobs/{job}/events", route="GET /api/jobs/{id}/events")
    add(3, "ok", "GET", f"/v1/fine_tuning/jobs/{job}/events", route="GET /v1/fine_tuning/jobs/{id}/events")
    add(2, "ok", "GET", f"/api/jobs/{job}/events/stream", route="GET /api/jobs/{id}/events/stream")
    add(1, "ok", "GET", f"/v1/files/{file_id}", route="GET /v1/files/{id}")

    # dataset uploads and validation: 28
    def upload(i, expect, name, filename, content, route="POST /api/datasets"):
        return b.call(expect, "POST", up, route=route, files={"file": (filename, content)}, data={"name": name})

    add(6, lambda i: upload(i, "ok", f"burst-{i}", "data.jsonl", jsonl(chat_rows(f"burst {i}"))))
    # the same name and content at once: one creates it, the others find it (201, "created": false)
    add(5, lambda i: upload(i, "ok", "shared", "data.jsonl", jsonl(chat_rows("shared"))))
    # the same name, different content at once: new versions of one dataset
    add(4, lambda i: upload(i, "ok", "versions", "data.jsonl", jsonl(chat_rows(f"version {i}"))))
    bad_line = jsonl(chat_rows("bad", 3)) + b'{"messages": [{"role": "user"}]}\n{not json\n'
    add(5, lambda i: upload(i, 400, f"bad-{i}", "data.jsonl", bad_line))
    add(2, lambda i: upload(i, 415, f"exe-{i}", "data.exe", b"MZ\x90\x00"))
    add(1, lambda i: upload(i, 400, "empty", "data.jsonl", b""))
    add(1, lambda i: upload(i, 400, "no/such name!", "data.jsonl", jsonl(chat_rows("badname"))))
    add(2, lambda i: b.call("ok", "POST", "/api/datasets/validate", files={"file": ("v.jsonl", jsonl(chat_rows("v")))}))
    add(2, lambda i: b.call("ok", "POST", "/api/datasets/validate", files={"file": ("v.jsonl", bad_line)}))

    # fine-tuning files: 12
    def ft_file(i, expect, content, purpose="fine-tune", filename="train.jsonl"):
        return b.call(expect, "POST", "/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})

    add(6, lambda i: ft_file(i, "ok", jsonl(chat_rows(f"ft {i}"))))
    add(3, lambda i: ft_file(i, 400, bad_line))
    add(2, lambda i: ft_file(i, 400, jsonl(chat_rows("p")), purpose="assistants"))
    add(1, lambda i: ft_file(i, 400, jsonl([{"text": "plain text, no chat"}] * 3)))

    # jobs: 36 calls. 2 run to the end, 6 are cancelled right after they are queued, 4 share one name at once
    def train(name, **extra):
        return {"kind": "train", "config": {"base": "tiny", "data": "chat", "name": name, "max_steps": 2,
                                            "batch_size": 4, **extra}}

    async def submit_then_cancel(i, name, expect):
        r = await b.call(expect, "POST", "/api/jobs", json=train(name))
        jid = r.json()["id"] if r is not None and r.status_code == 201 else "ftjob-refused"
        # cancelling a queued or running job: 200; the refused one's made-up id: 404
        await b.call("ok" if jid != "ftjob-refused" else 404, "POST", f"/api/jobs/{jid}/cancel",
                     route="POST /api/jobs/{id}/cancel")

    add(2, lambda i: b.call("ok", "POST", "/api/jobs", json=train(f"keep-{i}")))  # 2 calls
    add(6, lambda i: submit_then_cancel(i, f"cancel-{i}", "ok"))  # 12 calls
    add(4, lambda i: submit_then_cancel(i, "dup", (201, 409)))  # 8 calls
    bad_configs = [({"max_steps": 0}, 400), ({"lora_r": 0}, 400), ({"learning_rate": 5}, 400),
                   ({"method": "qlora"}, 400), ({"base": "no-such-model"}, 404), ({"data": "no-such-data"}, 404),
                   ({"bogus_field": 1}, 400), ({"batch_size": "many"}, 400)]
    add(len(bad_configs), lambda i: b.call(bad_configs[i][1], "POST", "/api/jobs",
                                           json=train(f"bad-{i}", **bad_configs[i][0])))
    add(1, lambda i: b.call(400, "POST", "/api/jobs", json={"kind": "nope", "config": {}}))
    add(1, lambda i: b.call(400, "POST", "/api/jobs", json={"kind": "train", "config": "not an object"}))
    add(1, lambda i: b.call(400, "POST", "/api/jobs", json={**train("res"), "resources": {"cpu": -1}}))
    # a finished job cannot be cancelled: 409
    add(3, 409, "POST", f"/api/jobs/{job}/cancel", route="POST /api/jobs/{id}/cancel")

    # OpenAI-style fine-tuning jobs on one uploaded file at once (it is imported as one dataset), cancelled: 6
    async def ft_job_then_cancel(i):
        r = await b.call("ok", "POST", "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id,
                                                                      "hyperparameters": {"n_epochs": 1}})
        jid = r.json()["id"] if r is not None and r.status_code == 200 else "ftjob-refused"
        await b.call("ok" if jid != "ftjob-refused" else 404, "POST", f"/v1/fine_tuning/jobs/{jid}/cancel",
                     route="POST /v1/fine_tuning/jobs/{id}/cancel")

    add(3, ft_job_then_cancel)

    # chat: 17
    def chat(i, expect, model="tiny", max_tokens=4):
        return b.call(expect, "POST", "/v1/chat/completions",
                      json={"model": model, "messages": [{"role": "user", "content": f"Hello number {i}"}],
                            "max_tokens": max_tokens})

    add(14, lambda i: chat(i, "ok"))
    add(2, lambda i: chat(i, 404, model="no-such-model"))
    add(1, lambda i: chat(i, 400, max_tokens=-1))

    # unknown ids: 14
    for path, route in (("/api/jobs/ftjob-doesnotexist", "GET /api/jobs/{id}"),
                        ("/api/jobs/ftjob-doesnotexist/events", "GET /api/jobs/{id}/events"),
                        ("/api/datasets/no-such-dataset", "GET /api/datasets/{ref}"),
                        ("/v1/files/file-doesnotexist", "GET /v1/files/{id}"),
                        ("/api/adapters/no-such-adapter", "GET /api/adapters/{name}"),
                        ("/v1/fine_tuning/jobs/ftjob-doesnotexist", "GET /v1/fine_tuning/jobs/{id}"),
                        ("/api/schema/nope", "GET /api/schema/{command}")):
        add(2, 404, "GET", path, route=route)
    return calls


def test_200_concurrent_mixed_calls_get_no_5xx_and_leave_no_job_stuck(platform, record_property):
    import httpx

    async def fire():
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=platform.url, headers=AUTH, timeout=180, limits=limits) as client:
            b = Burst(client)
            calls = _burst_calls(b, platform.seed)
            t0 = time.monotonic()
            await asyncio.gather(*calls)
            return b, time.monotonic() - t0

    log_start = platform.log_size()
    b, seconds = asyncio.run(fire())
    table = b.table()
    print(f"\n200 concurrent calls in {seconds:.1f}s against modelmill up:\n{table}")
    record_property("status_counts", table)
    assert len(b.results) == 200, len(b.results)
    problems = list(b.bad)

    with httpx.Client(base_url=platform.url, headers=AUTH, timeout=60) as c:
        # one more job, cancelled while it trains (queued behind the burst's two): it must end cancelled
        r = c.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "chat", "name": "stop-me",
                                                                  "max_steps": 5000, "batch_size": 4}})
        assert r.status_code == 201, r.text
        stop_me = r.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # running, and its runner has started (it then stops on SIGTERM)
            if c.get(f"/api/jobs/{stop_me}").json()["status"] in FINISHED or any(
                    e["message"].startswith("Started on worker")
                    for e in c.get(f"/api/jobs/{stop_me}/events").json()["data"]):
                break
            time.sleep(0.5)
        r = c.post(f"/api/jobs/{stop_me}/cancel")
        if r.status_code != 200:
            problems.append(f"POST /api/jobs/{stop_me}/cancel (running) -> {r.status_code}: {r.text[:500]}")

        # every job reaches a final state, with the worker still running
        deadline = time.monotonic() + 240
        while True:
            jobs = c.get("/api/jobs", params={"limit": 1000}).json()["data"]
            open_jobs = [j for j in jobs if j["status"] not in FINISHED]
            if not open_jobs or time.monotonic() > deadline:
                break
            time.sleep(1)
        workers = c.get("/api/workers").json()["data"]
        # every dataset stored is still readable (racing imports must not delete each other's files)
        for d in c.get("/api/datasets", params={"all": "true"}).json()["data"]:
            r = c.get(f"/api/datasets/{d['ref']}", params={"n": 1})
            if r.status_code != 200:
                problems.append(f"GET /api/datasets/{d['ref']} -> {r.status_code}: {r.text[:500]}")
    states = Counter(j["status"] for j in jobs)
    print(f"jobs after the burst: {dict(states)}")
    record_property("job_states", json.dumps(states))
    problems += [f"job stuck: {j['id']} {j['status']} {j['spec'].get('name')}" for j in open_jobs]
    if not any(w["status"] == "alive" for w in workers):
        problems.append(f"no worker alive: {workers}")
    by_name = {j["spec"].get("name"): j for j in jobs}
    for name in ("keep-0", "keep-1"):
        if by_name.get(name, {}).get("status") != "succeeded":
            problems.append(f"{name} did not succeed: {by_name.get(name)}")
    for name in [f"cancel-{i}" for i in range(6)] + ["stop-me"]:
        if by_name.get(name, {}).get("status") != "cancelled":
            problems.append(f"{name} was cancelled but did not end cancelled: {by_name.get(name)}")
    # a stopped run's tracebacks stay in its log: its events are for people
    with httpx.Client(base_url=platform.url, headers=AUTH, timeout=60) as c:
        said = [e["message"] for e in c.get(f"/api/jobs/{stop_me}/events", params={"limit": 1000}).json()["data"]]
    frames = [m for m in said if m.startswith(("File ", "Traceback", "raise ", "^^^"))]
    if frames:
        problems.append(f"stop-me's events hold {len(frames)} traceback lines, e.g. {frames[:3]}")
    n5xx = sum(1 for _, s, _ in b.results if s >= 500 or s == 0)
    assert not problems, (f"{n5xx} of 200 calls got a 5xx or no answer; {len(problems)} problems:\n"
                          + "\n".join(problems) + "\n---- server tracebacks ----\n"
                          + platform.tracebacks(log_start))


# ----------------------------------------------------------------------------- schemathesis

# Bounds: the fuzzing phase's examples per operation; schemathesis's examples and coverage phases
# (boundary values, wrong types, missing fields) add their own few cases per operation on top.
FUZZ_EXAMPLES = 25
GENERATE = ("/v1/chat/completions", "/v1/completions")


def _openapi() -> dict:
    """The OpenAPI document of ``create_app(store)``, over a throwaway store. schemathesis 4's
    fixture-loaded schemas (``schemathesis.pytest.from_fixture``) break on pytest 9 (they set
    ``node._nodeid``), so the schema is loaded when this module is collected; the test checks that
    the live server's /openapi.json is this same document, and sends every case to that server."""
    import atexit
    import shutil
    import tempfile

    from modelmill.api.app import create_app
    from modelmill.config import Settings
    from modelmill.store import Store

    tmp = tempfile.mkdtemp(prefix="modelmill-openapi-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return create_app(Store(Settings(home=Path(tmp) / "home"))).openapi()


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


@pytest.fixture(scope="module")
def fuzz_log(platform):
    """What the fuzzing sent: requests and statuses per operation, printed when the module ends."""
    import httpx

    assert httpx.get(platform.url + "/openapi.json").json() == json.loads(json.dumps(OPENAPI))
    start = platform.log_size()
    log: dict[str, Counter] = {}
    yield log
    if any(s >= 500 for c in log.values() for s in c):
        print("\nserver tracebacks while fuzzing:\n" + platform.tracebacks(start))
    if log:
        width = max(len(k) for k in log)
        lines = [f"{op:<{width}}  {sum(c.values()):>4}  " + ", ".join(f"{s}x{n}" for s, n in sorted(c.items()))
                 for op, c in sorted(log.items())]
        total = sum(sum(c.values()) for c in log.values())
        print(f"\nschemathesis {schemathesis.SCHEMATHESIS_VERSION}: {len(log)} operations, {total} requests\n"
              + "\n".join(lines))


def _steer(case, seed: dict) -> None:
    """Point half the cases at things that exist, so the fuzzed query and body reach the real code
    past the 404 (chosen from the generated data itself, so a failing example replays the same)."""
    import zlib

    if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2:
        return
    if case.method.upper() != "DELETE" and case.path_parameters:
        real = {"job_id": seed["job"], "fine_tuning_job_id": seed["job"], "file_id": seed["file"],
                "ref": seed["dataset"], "name": seed["adapter"], "model_id": "tiny", "command": "train"}
        for k in case.path_parameters:
            if k in real:
                case.path_parameters[k] = real[k]
    if case.path == "/v1/embeddings" and isinstance(case.body, dict):
        case.body["model"] = "all-minilm-l6-v2"  # the bundled embedding model
    if case.path in GENERATE and isinstance(case.body, dict):
        # the tiny model really generates; lengths and choices bounded so the run stays short
        case.body["model"] = "tiny"
        for k in ("max_tokens", "max_completion_tokens"):
            v = case.body.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 8:
                case.body[k] = 8
        v = case.body.get("n")
        if isinstance(v, int) and not isinstance(v, bool) and v > 4:
            case.body["n"] = 4
        case.body.setdefault("max_tokens", 8)


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_5xx(case, platform, fuzz_log):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    _steer(case, platform.seed)
    response = case.call(base_url=platform.url, headers=AUTH, timeout=120)
    # per operation (the coverage phase also sends it other methods: those answer 405)
    fuzz_log.setdefault(case.operation.label, Counter())[response.status_code] += 1
    # no 5xx (the demand); and where the schema declares a response body, the answer fits it
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
