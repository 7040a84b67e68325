"""Jobs on a real local Ray cluster: a head and a second node on this machine, one CPU each, started
with `ray start --node-ip-address 127.0.0.1 --disable-usage-stats` as a user starts them, PostgreSQL
as the database, and the platform started as `modelmill up --executor ray --ray-address ...`.
Everything goes through the platform's own REST API. Skipped, saying why, where Ray (or the
PostgreSQL server) is not installed. The cluster is stopped at the end (`ray stop`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import MODELMILL, Server, postgres_server, wait_until, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'modelmill[ray]')")

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
CHAT = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(40)]
REVIEWS = [{"text": f"{w} product, {'would buy again' if p else 'sent it back'} #{i}", "label": "pos" if p else "neg"}
           for i, (w, p) in enumerate([("great", 1), ("awful", 0), ("lovely", 1), ("broken", 0)] * 6)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, timeout=120):
    p = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV})
    assert p.returncode == 0, f"ray {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p


class Cluster:
    def __init__(self, tmp: Path):
        self.port, self.node2_port = _port(), _port()
        self.address = f"127.0.0.1:{self.port}"
        _ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port), "--num-cpus", "1",
             "--disable-usage-stats", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(_port()),
             "--ray-client-server-port", str(_port()), "--temp-dir", str(tmp))
        self.start_node2()

    def start_node2(self):
        _ray("start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--node-manager-port", str(self.node2_port), "--disable-usage-stats")

    def kill_node2(self):
        """SIGKILL the second node's raylet: the node is lost, as when its machine goes."""
        out = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={self.node2_port}( |$)"],
                             capture_output=True, text=True).stdout.split()
        assert out, "the second node's raylet is not running"
        for pid in out:
            os.kill(int(pid), signal.SIGKILL)

    def stop(self):
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env={**os.environ, **ENV})


_wait = wait_until


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_model):
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep is not installed (procps)")
    tmp = tmp_path_factory.mktemp("ray")
    with postgres_server() as url:
        home = tmp / "home"
        env = {**os.environ, **ENV, "MODELMILL_HOME": str(home), "MODELMILL_DATABASE_URL": url}
        for args in (["models", "add", "tiny", str(tiny_model)],
                     ["data", "import", str(write_jsonl(tmp / "chat.jsonl", CHAT)), "--name", "chat"],
                     ["data", "import", str(write_jsonl(tmp / "rev.jsonl", REVIEWS)), "--name", "rev"]):
            subprocess.run([*MODELMILL, *args], check=True, capture_output=True, env=env)
        cluster = Cluster(Path("/tmp") / f"mm-ray-{os.getpid()}")  # Ray's socket paths must stay short
        server = None
        try:
            server = Server(home, "--workers", "1", "--poll", "0.3", "--executor", "ray", "--ray-address",
                            cluster.address, command="up", env={**ENV, "MODELMILL_DATABASE_URL": url})
            yield {"server": server, "cluster": cluster, "home": home, "env": env, "tmp": tmp}
        finally:
            if server is not None:
                server.stop()
            cluster.stop()


def _submit(h, kind, config, **extra) -> str:
    r = h.post("/api/jobs", json={"kind": kind, "config": config, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _finished(h, jid, timeout=300) -> dict:
    job = _wait(lambda: (j := h.get(f"/api/jobs/{jid}").json())["status"] in ("succeeded", "failed", "cancelled")
                and j, timeout, f"job {jid}")
    job["events"] = h.get(f"/api/jobs/{jid}/events", params={"limit": 5000}).json()["data"]
    return job


def _losses(events) -> list[tuple[int, float]]:
    return [(e["data"]["step"], e["data"]["train_loss"]) for e in events
            if e["type"] == "metrics" and "train_loss" in (e["data"] or {})]


def test_two_ray_train_workers_give_the_loss_of_two_local_processes(platform):
    with httpx.Client(base_url=platform["server"].url, timeout=60) as h:
        job = _finished(h, _submit(h, "train", {"base": "tiny", "data": "chat", "name": "ray-2w", "num_workers": 2,
                                                "max_steps": 6, "batch_size": 4, "logging_steps": 1}))
    assert job["status"] == "succeeded", job
    started = [e["message"] for e in job["events"] if e["message"].startswith("Started on worker")]
    assert started and "Ray node" in started[0], started
    assert any("Ray Train: 2 worker(s) (CPU)" in e["message"] for e in job["events"])
    ray_curve = _losses(job["events"])
    # the same run on one host: accelerate's 2 processes (gloo), the same global batch
    subprocess.run([*MODELMILL, "train", "--base", "tiny", "--data", "chat", "--name", "local-2p", "--num-processes",
                    "2", "--max-steps", "6", "--batch-size", "4", "--logging-steps", "1"], check=True,
                   capture_output=True, env=platform["env"], timeout=600)
    rows = [json.loads(x) for x in (platform["home"] / "adapters" / "local-2p" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    local_curve = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in ray_curve] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in local_curve] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in ray_curve] == pytest.approx([v for _, v in local_curve], rel=1e-5), (ray_curve, local_curve)
    lineage = json.loads((platform["home"] / "adapters" / "ray-2w" / "lineage.json").read_text())
    assert lineage["metrics"]["num_processes"] == 2 and lineage["config"]["num_workers"] == 2


def test_a_grid_of_four_cells_runs_side_by_side_on_the_cluster(platform, tmp_path):
    task = tmp_path / "rev.yaml"
    task.write_text("kind: classification\ndata: rev\n")
    with httpx.Client(base_url=platform["server"].url, timeout=60) as h:
        grid = _finished(h, _submit(h, "grid", {"bases": "tiny", "data": "rev", "task": str(task), "baselines": "",
                                                "methods": "lora-r2,lora-r4,lora-r8,lora-r16", "max_steps": 2}), 600)
        assert grid["status"] == "succeeded", grid
        children = [e["data"]["child_job"] for e in grid["events"] if (e["data"] or {}).get("child_job")
                    and e["message"].startswith("Cells") and " run as job " in e["message"]]
        assert len(children) == 4
        jobs = [h.get(f"/api/jobs/{c}").json() for c in children]
        assert all(j["status"] == "succeeded" and j["kind"] == "grid" for j in jobs), jobs
        # side by side: some cell's job started before another's had finished (two nodes, one CPU each)
        spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
        board = h.get("/api/leaderboard", params={"task": "rev"}).json()["tasks"][0]["rows"]
    names = {r["candidate"] for r in board}
    assert {"tiny:rev-tiny-lora-r2", "tiny:rev-tiny-lora-r4", "tiny:rev-tiny-lora-r8", "tiny:rev-tiny-lora-r16"} <= names, board
    assert len(grid["result"]["results"]) == 4


def test_cancel_stops_the_jobs_ray_work(platform):
    with httpx.Client(base_url=platform["server"].url, timeout=60) as h:
        jid = _submit(h, "train", {"base": "tiny", "data": "chat", "name": "ray-cancel", "max_steps": 100000,
                                   "batch_size": 4, "logging_steps": 1})
        _wait(lambda: any(e["type"] == "metrics" for e in h.get(f"/api/jobs/{jid}/events").json()["data"]), 180,
              "the first training step")
        runner = f"modelmill.jobs.runner {jid}"
        assert subprocess.run(["pgrep", "-f", runner], capture_output=True).returncode == 0
        assert h.post(f"/api/jobs/{jid}/cancel").status_code == 200
        job = _finished(h, jid, 120)
    assert job["status"] == "cancelled", job
    _wait(lambda: subprocess.run(["pgrep", "-f", runner], capture_output=True).returncode != 0, 60,
          "the job's runner on its Ray node to leave")


def test_bad_input_says_which_setting_and_how_to_fix_it(platform):
    from modelmill.jobs.ray_executor import STORE_ID, node_check

    p = subprocess.run([*MODELMILL, "worker", "--executor", "ray", "--ray-address", f"127.0.0.1:{_port()}"],
                       capture_output=True, text=True, env=platform["env"], timeout=120)
    assert p.returncode != 0 and "--ray-address" in p.stderr and "no Ray cluster answers" in p.stderr, p.stderr
    home = platform["home"]
    sid = (home / STORE_ID).read_text()
    assert node_check(str(home), platform["env"]["MODELMILL_DATABASE_URL"], sid, "0.0.0-other") \
        .startswith("node ") and "modelmill==0.0.0-other" in node_check(str(home), None, sid, "0.0.0-other")
    with httpx.Client(base_url=platform["server"].url, timeout=60) as h:
        # more GPUs than the cluster has: queued, with the reason said, until nodes with them join
        jid = _submit(h, "train", {"base": "tiny", "data": "chat", "name": "ray-gpus", "num_nodes": 1,
                                   "gpus_per_node": 2, "max_steps": 2})
        ev = _wait(lambda: [e for e in h.get(f"/api/jobs/{jid}/events").json()["data"]
                            if e["message"].startswith("Waiting:")], 60, "the waiting reason")
        assert "2 GPUs (the cluster has 0)" in ev[0]["message"], ev
        assert h.get(f"/api/jobs/{jid}").json()["status"] == "queued"
        assert h.post(f"/api/jobs/{jid}/cancel").json()["status"] == "cancelled"
        big = _submit(h, "eval", {"models": "tiny", "data": "rev", "limit": 2}, resources={"cpu": 1, "memory": 65536})
        ev = _wait(lambda: [e for e in h.get(f"/api/jobs/{big}/events").json()["data"]
                            if e["message"].startswith("Waiting:")], 60, "the waiting reason")
        assert "65536 GiB of memory (the cluster has" in ev[0]["message"], ev
        assert h.post(f"/api/jobs/{big}/cancel").json()["status"] == "cancelled"
        # a node that sees another folder at MODELMILL_HOME (its own disk, not the shared store)
        (home / STORE_ID).write_text("another-store")
        try:
            job = _finished(h, _submit(h, "train", {"base": "tiny", "data": "chat", "name": "ray-nostore",
                                                    "max_steps": 2}), 120)
        finally:
            (home / STORE_ID).write_text(sid)
    assert job["status"] == "failed" and job["error"]["param"] == "MODELMILL_HOME", job
    assert "another store at MODELMILL_HOME" in job["error"]["message"], job["error"]


def test_a_lost_node_resumes_on_the_other_from_its_checkpoint(platform):
    """Kept last: it kills the second node (and starts it again at the end)."""
    cluster = platform["cluster"]
    ray.init(address=cluster.address, logging_level="ERROR", namespace="test")
    try:
        head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=1)
        class Hold:
            def ready(self):
                return True

        # the head's CPU is held, so the job starts on the second node
        hold = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
        ray.get(hold.ready.remote(), timeout=60)
        with httpx.Client(base_url=platform["server"].url, timeout=60) as h:
            jid = _submit(h, "train", {"base": "tiny", "data": "chat", "name": "ray-lost", "max_steps": 400,
                                       "batch_size": 4, "save_steps": 20, "logging_steps": 5})
            _wait(lambda: any((e["data"] or {}).get("checkpoint") for e in
                              h.get(f"/api/jobs/{jid}/events").json()["data"]), 240, "the first checkpoint")
            cluster.kill_node2()
            ray.kill(hold)  # room on the head for the next attempt
            job = _finished(h, jid, 600)
    finally:
        ray.shutdown()
        cluster.start_node2()
    assert job["status"] == "succeeded", [e["message"] for e in job["events"]]
    assert job["attempts"] == 2
    started = [e for e in job["events"] if e["message"].startswith("Started on worker")]
    assert len(started) == 2 and started[0]["data"]["ray_node"] != started[1]["data"]["ray_node"], started
    steps = [s for s, _ in _losses(job["events"])]
    assert steps == sorted(set(steps)) and steps[-1] == 400, steps  # each step's metrics once
    assert any("resumes from the last checkpoint" in e["message"] for e in job["events"])
