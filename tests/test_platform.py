"""The platform as users meet it: `modelmill up` with the official openai client, the queue's
workers (one killed with SIGKILL mid-training), API keys, and bad input over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import MODELMILL, Server, wait_until, write_jsonl

CHAT = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


_wait = wait_until


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line mentions ``text``."""
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmd.read_bytes().decode(errors="replace") and _alive(int(cmd.parent.name)):
                out.append(int(cmd.parent.name))
        except OSError:
            continue
    return out


def _workers_left(home: Path) -> list[str]:
    """Workers of this home still marked alive in its database."""
    from modelmill.jobs.queue import JobQueue
    from modelmill.store import open_store

    os.environ["MODELMILL_HOME"] = str(home)
    return [w.id for w in JobQueue(open_store()).workers() if w.status == "alive"]


@pytest.fixture()
def up(cli_tiny, home):
    server = Server(home, "--workers", "1", "--poll", "0.3", command="up")
    yield server
    server.stop()  # SIGTERM: `up` leaves, and its workers with it (no orphan keeps polling)
    _wait(lambda: not _workers_left(home), 30, "the workers of `up` to stop")


def test_openai_client_fine_tunes_and_the_model_answers_at_once(up, tmp_path):
    """files.create -> fine_tuning.jobs.create -> poll -> events/checkpoints -> chat with fine_tuned_model."""
    client = up.client()
    path = write_jsonl(tmp_path / "train.jsonl", CHAT)
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.id.startswith("file-") and f.filename == "train.jsonl" and f.bytes == path.stat().st_size
    assert [x.id for x in client.files.list().data] == [f.id]
    assert client.files.content(f.id).read() == path.read_bytes()

    held = write_jsonl(tmp_path / "valid.jsonl", [{"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}]}
        for i in range(30, 36)])
    v = client.files.create(file=held.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, validation_file=v.id, suffix="sums",
                                         hyperparameters={"n_epochs": 2, "batch_size": 4})
    assert job.status in ("queued", "running") and job.model == "tiny" and job.user_provided_suffix == "sums"
    job = _wait(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                180, "the fine-tuning job")
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"tiny:sums-{job.id.removeprefix('ftjob-')[:8]}"
    assert job.hyperparameters.n_epochs == 2 and job.finished_at >= job.created_at

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=200))
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"  # newest first, as OpenAI's
    assert any(m.startswith("Validating training file") for m in messages)
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert metrics and all(e.data["train_loss"] > 0 for e in metrics)
    # the validation file's loss, of the final weights (at every --save-steps too, none in 12 steps)
    valid = [e.data for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert [(d["step"], d["valid_loss"] > 0) for d in valid] == [(12, True)]
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)  # paging with `after`
    older = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert [e.id for e in page.data + older.data] == [e.id for e in events[:4]]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 12 and checkpoints[0].fine_tuning_job_id == job.id

    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "What is 2 plus 2?"}])
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens >= 1
    assert job.fine_tuned_model.split(":")[1] in {m.id for m in client.models.list().data}
    assert client.fine_tuning.jobs.list().data[0].id == job.id
    assert client.files.delete(f.id).deleted is True and client.files.delete(v.id).deleted is True
    assert client.files.list().data == []


def test_fine_tuning_bad_input_is_refused_with_what_and_where(up, tmp_path):
    import openai

    client = up.client()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CHAT[0]) + "\n" + '{"messages": [{"role": "user"}]}\n' + "not json\n")
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=bad.open("rb"), purpose="fine-tune")
    body = e.value.body
    assert "bad.jsonl" in body["message"] and [d["line"] for d in body["details"]] == [2, 3]

    with httpx.Client(base_url=up.url) as h:
        r = h.post("/v1/files", files={"file": ("model.bin", b"\x00\x01", "application/octet-stream")},
                   data={"purpose": "fine-tune"})
        assert r.status_code == 415 and ".jsonl" in r.json()["error"]["message"]
        r = h.post("/v1/files", files={"file": ("../../etc/passwd.jsonl", b"{}\n", "application/jsonl")},
                   data={"purpose": "fine-tune"})
        assert r.status_code == 400 and "plain file name" in r.json()["error"]["message"]
        r = h.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "assistants"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-nope"})
        assert r.status_code == 404 and "file-nope" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "training_file"
        good = client.files.create(file=write_jsonl(tmp_path / "ok.jsonl", CHAT).open("rb"), purpose="fine-tune")
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id,
                                                 "validation_file": "file-nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "validation_file"
        r = h.post("/v1/fine_tuning/jobs", json={"model": "no-such-model", "training_file": good.id})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        # metadata: OpenAI's limits (16 pairs, keys up to 64 characters, values up to 512)
        for metadata, param in (({f"k{i}": "v" for i in range(17)}, "metadata"), ({"k" * 65: "v"}, "metadata"),
                                ({"team": "x" * 513}, "metadata.team")):
            r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id, "metadata": metadata})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id,
                                                 "hyperparameters": {"n_epochs": 0}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.n_epochs"
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id, "method": {"type": "dpo"}})
        assert r.status_code == 400 and "preference pairs" in r.json()["error"]["message"]  # a chat file for DPO
        assert r.json()["error"]["param"] == "training_file"
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id,
                                                 "method": {"type": "reinforcement"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "method.type"
        r = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": good.id, "suffix": "../x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
        # nothing half-made: no job was queued by any of these
        assert h.get("/api/jobs").json()["data"] == []
        r = h.get("/v1/fine_tuning/jobs/ftjob-unknown")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_native_jobs_cancel_and_upload_limit(cli_tiny, home, tmp_path):
    server = Server(home, "--workers", "1", "--poll", "0.3", command="up",
                    env={"MODELMILL_MAX_UPLOAD_MB": "0.01"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as h:
            data = write_jsonl(tmp_path / "sums.jsonl", CHAT).read_bytes()
            r = h.post("/api/datasets", files={"file": ("sums.jsonl", data)}, data={"name": "sums"})
            assert r.status_code == 201 and r.json()["num_records"] == 24 and r.json()["kind"] == "chat"
            r = h.post("/api/datasets", files={"file": ("big.jsonl", data * 20)}, data={"name": "big"})
            assert r.status_code == 413 and "upload limit" in r.json()["error"]["message"]
            assert [d["name"] for d in h.get("/api/datasets").json()["data"]] == ["sums"]

            schema = {f["name"]: f for f in h.get("/api/schema/train").json()["fields"]}
            assert schema["epochs"]["advanced"] is False and schema["lora_r"]["advanced"] is True
            assert schema["method"]["choices"] == ["lora", "full", "dpo", "orpo", "kto", "cpt"]
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "sums",
                                                                      "batch_size": "eight"}})
            assert r.status_code == 400 and r.json()["error"]["param"] == "batch_size"
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "nope"}})
            assert r.status_code == 404 and "nope" in r.json()["error"]["message"]

            # a long job, cancelled while it runs: its run folder goes, and its name is free again
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "sums", "name": "long",
                                                                      "max_steps": 5000, "logging_steps": 1}})
            assert r.status_code == 201, r.text
            jid = r.json()["id"]
            r = h.post("/api/jobs", json={"kind": "train", "config": {"base": "tiny", "data": "sums", "name": "long"}})
            assert r.status_code == 409
            _wait(lambda: h.get(f"/api/jobs/{jid}").json()["progress"], 120, "the first training step")
            assert h.post(f"/api/jobs/{jid}/cancel").json()["cancel_requested"] is True
            job = _wait(lambda: (j := h.get(f"/api/jobs/{jid}").json())["status"] == "cancelled" and j, 120,
                        "the cancel")
            assert job["finished_at"] and not (home / "runs" / "long").exists()
            assert h.post(f"/api/jobs/{jid}/cancel").status_code == 409
            # the event stream replays the job's history and ends
            with h.stream("GET", f"/api/jobs/{jid}/events/stream") as s:
                text = "".join(s.iter_text())
            assert "event: end" in text and '"type": "metrics"' in text
    finally:
        server.stop()


def test_a_worker_killed_mid_training_is_replaced_and_the_job_resumes(cli_tiny, home, tmp_path):
    """SIGKILL the worker: the job is re-queued on heartbeat timeout and finishes from its checkpoint."""
    from modelmill.jobs.queue import JobQueue
    from modelmill.store import open_store

    cli_tiny("data", "import", write_jsonl(tmp_path / "sums.jsonl", CHAT), "--name", "sums")
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    os.environ["MODELMILL_HOME"] = str(home)
    q = JobQueue(open_store())
    steps = 150  # the tiny model trains at 3 to 70 steps/s here: the kill must land well before the end
    job = q.submit("train", {"base": "tiny", "data": "sums", "name": "survivor", "max_steps": steps,
                             "save_steps": 5, "logging_steps": 1, "batch_size": 2})
    worker_args = [*MODELMILL, "worker", "--poll", "0.3", "--stale-after", "10"]
    log_a = (tmp_path / "worker-a.log").open("wb")
    a = subprocess.Popen(worker_args, env=env, stdout=log_a, stderr=subprocess.STDOUT)
    try:
        ckdir = home / "runs" / "survivor" / "checkpoints"
        first = _wait(lambda: sorted(ckdir.glob("checkpoint-*/trainer_state.json")), 180, "a first checkpoint",
                      every=0.02)
        a.send_signal(signal.SIGKILL)  # no goodbye: no final state, no re-queue by the worker itself
        a.wait()
        saved_at = int(first[0].parent.name.split("-")[1])
        time.sleep(1.5)
        runner_pid = q.get(job.id).pid
        run_dir = str(home / "runs" / "survivor")
        # the dead worker's runner notices, kills its trainer and leaves: no orphan keeps training
        _wait(lambda: not _alive(runner_pid) and not _pids_with(run_dir), 15, "the orphaned runner and trainer to stop")
        assert q.get(job.id).status == "running"  # until a worker notices the silence
        b = subprocess.Popen(worker_args, env=env, stdout=(tmp_path / "worker-b.log").open("wb"),
                             stderr=subprocess.STDOUT)
        try:
            done = _wait(lambda: (j := q.get(job.id)).status in ("succeeded", "failed") and j, 240, "the resumed job")
        finally:
            b.send_signal(signal.SIGINT)
            b.wait(60)
    finally:
        if a.poll() is None:
            a.kill()
    events = q.events(job.id)
    text = "\n".join(e.message for e in events)
    assert done.status == "succeeded", text
    assert done.attempts == 2 and "stopped heartbeating" in text
    resumed = [e for e in events if e.message.startswith("Resuming from checkpoint-")]
    assert resumed and int(resumed[0].data["checkpoint"].split("-")[1]) >= saved_at
    # nothing lost: every step's loss is in the history once, from step 1 to the last
    logged = [e.data["step"] for e in events if e.type == "metrics"]
    assert logged == list(range(1, steps + 1))
    state = json.loads((home / "adapters" / "survivor" / "lineage.json").read_text())
    assert state["config"]["max_steps"] == steps


def test_api_keys_scopes_and_model_limits(cli_tiny, home):
    admin = cli_tiny("keys", "create", "root", "--scope", "admin").stdout.strip()
    infer = cli_tiny("keys", "create", "app", "--scope", "infer", "--model", "tiny").stdout.strip()
    assert admin.startswith("mm-") and admin != infer
    listed = cli_tiny("keys", "list").stdout
    assert "root" in listed and admin not in listed  # only a prefix is ever shown again
    from sqlalchemy import select

    from modelmill.store import open_store
    from modelmill.store.tables import ApiKey

    os.environ["MODELMILL_HOME"] = str(home)
    with open_store().session() as s:
        assert all(admin not in json.dumps([k.hash, k.prefix]) for k in s.scalars(select(ApiKey)))

    server = Server(home, "--host", "0.0.0.0", "--workers", "0", command="up")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            assert h.get("/health").status_code == 200
            assert h.get("/openapi.json").status_code == 200
            r = h.get("/v1/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert h.get("/api/jobs", headers={"Authorization": "Bearer mm-wrong"}).status_code == 401
            as_infer = {"Authorization": f"Bearer {infer}"}
            assert h.get("/v1/models", headers=as_infer).status_code == 200
            r = h.get("/api/datasets", headers=as_infer)
            assert r.status_code == 403 and "train" in r.json()["error"]["message"]
            body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
            assert h.post("/v1/chat/completions", json=body, headers=as_infer).status_code == 200
            r = h.post("/v1/chat/completions", json={**body, "model": "smollm2-135m-instruct"}, headers=as_infer)
            assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
            as_admin = {"Authorization": f"Bearer {admin}"}
            assert h.get("/api/datasets", headers=as_admin).status_code == 200
            r = h.post("/api/keys", json={"name": "ci", "scopes": ["train"]}, headers=as_admin)
            assert r.status_code == 201 and r.json()["key"].startswith("mm-")
            as_train = {"Authorization": f"Bearer {r.json()['key']}"}
            # a bot build reads files on the server's disk: not with the train scope alone
            r = h.post("/api/jobs", headers=as_train, json={"kind": "bot-build", "config": {
                "name": "b", "dialogues": "/etc/passwd", "database": "/etc", "base": "tiny"}})
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
            assert h.post("/api/keys", json={"name": "x", "scopes": ["train"]}, headers=as_infer).status_code == 403

            # a key limited to other models touches neither this model's jobs nor another key's files
            def upload(headers, name):
                r = h.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                           files={"file": (name, "".join(json.dumps(x) + "\n" for x in CHAT[:8]))})
                assert r.status_code == 200, r.text
                return r.json()["id"]

            fid = upload(as_train, "a.jsonl")
            r = h.post("/v1/fine_tuning/jobs", headers=as_train, json={
                "model": "tiny", "training_file": fid, "metadata": {"team": "support", "ticket": "T-1"}})
            assert r.status_code == 200 and r.json()["metadata"] == {"team": "support", "ticket": "T-1"}, r.text
            jid = r.json()["id"]  # no workers: it stays queued
            assert h.get(f"/v1/fine_tuning/jobs/{jid}", headers=as_train).json()["metadata"]["team"] == "support"
            assert h.get("/v1/fine_tuning/jobs", headers=as_train).json()["data"][0]["metadata"]["ticket"] == "T-1"
            r = h.post("/api/keys", json={"name": "other", "scopes": ["train"], "models": ["smollm2-135m-instruct"]},
                       headers=as_admin)
            as_other = {"Authorization": f"Bearer {r.json()['key']}"}
            for method, url in (("POST", f"/v1/fine_tuning/jobs/{jid}/cancel"), ("POST", f"/api/jobs/{jid}/cancel"),
                                ("DELETE", f"/v1/files/{fid}"), ("GET", f"/v1/files/{fid}/content")):
                r = h.request(method, url, headers=as_other)
                assert r.status_code == 403, (method, url, r.text)
            assert h.get(f"/v1/fine_tuning/jobs/{jid}", headers=as_train).json()["status"] == "queued"
            own = upload(as_other, "b.jsonl")  # its own upload it may read and delete
            assert h.get(f"/v1/files/{own}/content", headers=as_other).status_code == 200
            assert h.delete(f"/v1/files/{own}", headers=as_other).json()["deleted"] is True
            # an unlimited key keeps full access
            assert h.post(f"/v1/fine_tuning/jobs/{jid}/cancel", headers=as_train).json()["status"] == "cancelled"
            assert h.delete(f"/v1/files/{fid}", headers=as_admin).json()["deleted"] is True
            cli_tiny("keys", "revoke", "app")
            assert h.get("/v1/models", headers=as_infer).status_code == 401
            for name in ("root", "ci", "other"):  # every key gone: the server still asks for one (fails closed)
                cli_tiny("keys", "revoke", name)
            time.sleep(2.5)
            assert h.get("/api/keys").status_code == 401
    finally:
        server.stop()


def test_without_keys_the_server_stays_on_localhost_and_says_so(cli_tiny, home):
    server = Server(home, "--host", "0.0.0.0", "--workers", "0", command="up")
    try:
        assert httpx.get(server.url + "/v1/models").status_code == 200  # no key needed: local only
        # ... and only for requests addressed to localhost: a page on a rebound DNS name gets nothing
        r = httpx.post(server.url + "/api/keys", json={"name": "x", "scopes": ["admin"]},
                       headers={"Host": "evil.example"})
        assert r.status_code == 403 and "localhost" in r.json()["error"]["message"]
    finally:
        server.stop()
    log = server.log.read_text()
    assert "listens on 127.0.0.1 only, not 0.0.0.0" in log and "Uvicorn running on http://127.0.0.1" in log


def test_eval_jobs_and_deployments_over_rest(cli_tiny, home, tmp_path, reviews_file):
    """An evaluation queued over REST lands on the leaderboard; a deployment name answers chat."""
    cli_tiny("data", "import", reviews_file, "--name", "reviews")
    server = Server(home, "--workers", "1", "--poll", "0.3", command="up")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            r = h.post("/api/jobs", json={"kind": "eval", "config": {"models": "tfidf", "data": "reviews",
                                                                     "train": "reviews", "name": "rev"}})
            assert r.status_code == 201, r.text
            jid = r.json()["id"]
            job = _wait(lambda: (j := h.get(f"/api/jobs/{jid}").json())["status"] in ("succeeded", "failed") and j,
                        180, "the eval job")
            assert job["status"] == "succeeded", h.get(f"/api/jobs/{jid}/events").text
            assert job["result"]["task"] == "rev" and job["result"]["results"][0]["candidate"].startswith("tfidf")
            board = h.get("/api/leaderboard", params={"task": "rev"}).json()["tasks"][0]
            assert board["rows"][0]["candidate"] == job["result"]["results"][0]["candidate"]
            assert h.post("/api/jobs", json={"kind": "eval", "config": {"models": "tiny"}}).status_code == 400
            # a command that fails inside the job fails the job, with the command's own message
            r = h.post("/api/jobs", json={"kind": "eval", "config": {"models": "ghost", "data": "reviews"}})
            jid = r.json()["id"]
            job = _wait(lambda: (j := h.get(f"/api/jobs/{jid}").json())["status"] in ("succeeded", "failed") and j,
                        120, "the failing eval job")
            assert job["status"] == "failed" and "ghost" in job["error"]["message"], job

            # a grid job: the same library call as `modelmill grid`, its result names the winner
            (tmp_path / "rev.yaml").write_text("kind: classification\ndata: reviews\ntrain: reviews\n")
            r = h.post("/api/jobs", json={"kind": "grid", "config": {
                "bases": "tiny", "data": "reviews", "task": str(tmp_path / "rev.yaml"), "baselines": "tfidf",
                "max_steps": 1}})
            assert r.status_code == 201, r.text
            jid = r.json()["id"]
            job = _wait(lambda: (j := h.get(f"/api/jobs/{jid}").json())["status"] in ("succeeded", "failed") and j,
                        300, "the grid job")
            assert job["status"] == "succeeded", h.get(f"/api/jobs/{jid}/events").text
            summary = job["result"]["summary"]
            assert summary["winner"] == "reviews-tiny-lora" and summary["baseline"] == "tfidf-lr", summary
            assert summary["per_base"]["tiny"]["best"] == "reviews-tiny-lora"
            assert any(e["message"].startswith("winner: reviews-tiny-lora")
                       for e in h.get(f"/api/jobs/{jid}/events").json()["data"])

            r = h.post("/api/deployments", json={"name": "support", "model": "tiny",
                                                 "system_prompt": "You answer in one word."})
            assert r.status_code == 201, r.text
            assert h.post("/api/deployments", json={"name": "tiny", "model": "tiny"}).status_code == 409
            assert h.post("/api/deployments", json={"name": "x", "model": "missing"}).status_code == 404
            assert "support" in {m["id"] for m in h.get("/v1/models").json()["data"]}
            body = {"model": "support", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
            r = h.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["model"] == "support"
            direct = h.post("/v1/chat/completions", json={**body, "model": "tiny", "temperature": 0,
                                                          "messages": [{"role": "system",
                                                                        "content": "You answer in one word."},
                                                                       *body["messages"]]}).json()
            again = h.post("/v1/chat/completions", json={**body, "temperature": 0}).json()
            # the deployment's system prompt is in front of the user's messages
            assert again["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
            assert again["choices"][0]["message"] == direct["choices"][0]["message"]
            assert h.delete("/api/deployments/support").status_code == 200
            assert h.post("/v1/chat/completions", json=body).status_code == 404
    finally:
        server.stop()


def test_a_database_locked_by_another_process_gets_503_then_works(cli_tiny, home):
    import sqlite3

    server = Server(home, "--workers", "0", command="up", env={"MODELMILL_DB_TIMEOUT": "1"})
    try:
        other = sqlite3.connect(home / "modelmill.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
        try:
            r = httpx.post(server.url + "/api/deployments", json={"name": "bot", "model": "tiny"}, timeout=30)
            assert r.status_code == 503 and r.headers["Retry-After"] and "locked" in r.json()["error"]["message"]
            assert httpx.get(server.url + "/api/jobs").status_code == 200  # reads go on (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        r = httpx.post(server.url + "/api/deployments", json={"name": "bot", "model": "tiny"}, timeout=30)
        assert r.status_code == 201
    finally:
        server.stop()


def test_stale_jobs_are_judged_by_the_watchers_clock_not_the_writers(home):
    """Workers on hosts whose clocks disagree: a job beaten by a host an hour behind stays with
    its worker while it beats, and one last beaten by a host an hour ahead is re-queued once its
    beats stop -- each after ``stale_after`` seconds of the watching worker's own clock."""
    from datetime import timedelta

    from modelmill.jobs.queue import JobQueue, now
    from modelmill.store import open_store
    from modelmill.store.tables import Job, Worker

    store = open_store()
    with store.session() as s:
        for wid in ("slow-host:1", "fast-host:2"):
            s.add(Worker(id=wid, host=wid.split(":")[0], pid=1, resources={}))
        s.add(Job(id="ftjob-slow", kind="eval", status="running", spec={}, worker="slow-host:1", attempts=1,
                  heartbeat_at=now() - timedelta(hours=1)))
        s.add(Job(id="ftjob-fast", kind="eval", status="running", spec={}, worker="fast-host:2", attempts=1,
                  heartbeat_at=now() + timedelta(hours=1)))
    watcher, slow = JobQueue(store), JobQueue(store)
    deadline = time.monotonic() + 1.5
    requeued = []
    while time.monotonic() < deadline:
        with store.session() as s:  # the slow host beats every 0.1 s with its own (late) clock
            s.get(Job, "ftjob-slow").heartbeat_at = now() - timedelta(hours=1)
        requeued += watcher.requeue_stale(0.5)
        time.sleep(0.1)
    assert requeued == ["ftjob-fast"]
    assert slow.get("ftjob-slow").status == "running" and slow.get("ftjob-fast").status == "queued"
    assert slow.get("ftjob-fast").worker is None


def test_a_job_past_the_workers_job_timeout_is_stopped_and_fails(cli_tiny, home, tmp_path):
    from modelmill.jobs.queue import JobQueue
    from modelmill.store import open_store

    cli_tiny("data", "import", write_jsonl(tmp_path / "sums.jsonl", CHAT), "--name", "sums")
    env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    os.environ["MODELMILL_HOME"] = str(home)
    q = JobQueue(open_store())
    job = q.submit("train", {"base": "tiny", "data": "sums", "name": "endless", "max_steps": 100000,
                             "save_steps": 2, "logging_steps": 1, "batch_size": 2})
    # long enough for the trainer to start and save a checkpoint on a loaded CI host (it took >20 s there)
    w = subprocess.Popen([*MODELMILL, "worker", "--poll", "0.3", "--job-timeout", "40"], env=env,
                         stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        done = _wait(lambda: (j := q.get(job.id)).status in ("succeeded", "failed", "cancelled") and j, 180,
                     "the job to be stopped")
        assert w.poll() is None, "the worker goes on after stopping a job"
    finally:
        w.send_signal(signal.SIGINT)
        w.wait(60)
    assert done.status == "failed" and done.error["code"] == "timeout", done.error
    assert "--job-timeout (40 s)" in done.error["message"] and "--name endless --resume" in done.error["message"]
    assert any(e.message.startswith("Running for more than --job-timeout") for e in q.events(job.id))
    assert list((home / "runs" / "endless" / "checkpoints").glob("checkpoint-*"))  # kept, resumable
    assert not _pids_with(str(home / "runs" / "endless")), "no trainer left running"


def test_fine_tuning_checkpoints_are_all_listed_past_the_newest_1000_events(home):
    """A long job: 1,200 log lines came after its first checkpoints. Every checkpoint is listed,
    newest first, one step once (a later attempt's report of it counts), and `after`/`limit` page
    through them as OpenAI's API does (the list read only the newest 1,000 events)."""
    from fastapi.testclient import TestClient

    from modelmill.api.app import create_app
    from modelmill.jobs.queue import JobQueue
    from modelmill.store import open_store
    from modelmill.store.tables import Job, JobEvent

    store = open_store()
    with store.session() as s:
        s.add(Job(id="ftjob-long", kind="train", status="running", spec={"name": "long"}, model="tiny", resources={},
                  attempts=2, cancel_requested=False, result={}))
        for step in (10, 20, 30):
            s.add(JobEvent(job_id="ftjob-long", type="message", message=f"Saved checkpoint at step {step}",
                           data={"checkpoint": f"checkpoint-{step}", "step": step, "metrics": {"train_loss": step / 10}}))
        s.add(JobEvent(job_id="ftjob-long", type="message", message="Resuming from checkpoint-30",
                       data={"checkpoint": "checkpoint-30"}))  # no step: not a checkpoint saved
        s.add(JobEvent(job_id="ftjob-long", type="message", message="Saved checkpoint at step 30",
                       data={"checkpoint": "checkpoint-30", "step": 30, "metrics": {"train_loss": None}}))
        s.add_all([JobEvent(job_id="ftjob-long", type="message", message=f"line {i}") for i in range(1200)])
        s.add(JobEvent(job_id="ftjob-long", type="message", message="Saved checkpoint at step 40",
                       data={"checkpoint": "checkpoint-40", "step": 40, "metrics": {"train_loss": 4.0}}))
    assert len(JobQueue(store).events("ftjob-long", newest_first=True)) == 1000  # one read: 40 and the rest
    c = TestClient(create_app(store), base_url="http://localhost")
    url = "/v1/fine_tuning/jobs/ftjob-long/checkpoints"
    every = c.get(url).json()
    assert [d["step_number"] for d in every["data"]] == [40, 30, 20, 10] and every["has_more"] is False
    assert [d["id"] for d in every["data"]] == [f"ftckpt-long-{n}" for n in (40, 30, 20, 10)]
    assert every["data"][1]["metrics"] == {} and every["data"][2]["metrics"] == {"train_loss": 2.0}
    assert every["data"][0]["fine_tuned_model_checkpoint"] == "tiny:long:ckpt-step-40"
    first = c.get(url, params={"limit": 2}).json()
    assert [d["step_number"] for d in first["data"]] == [40, 30] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == ("ftckpt-long-40", "ftckpt-long-30")
    rest = c.get(url, params={"limit": 2, "after": first["last_id"]}).json()
    assert [d["step_number"] for d in rest["data"]] == [20, 10] and rest["has_more"] is False
    assert c.get(url, params={"after": "ftckpt-long-999"}).json()["data"] == []
