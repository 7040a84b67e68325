"""Shared fixtures: an isolated MODELMILL_HOME per test, a tiny model built locally, and a
way to run the real ``modelmill`` command. No test needs a network or a download."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A suite started as a background job (`make test &` in a script) inherits SIGINT ignored, and so
# would every command a test starts: the tests that press Ctrl-C need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELMILL = [sys.executable, "-m", "modelmill.cli"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from modelmill.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh MODELMILL_HOME for this test (the built-in model's conversion is shared, see below)."""
    h = tmp_path / "home"
    monkeypatch.setenv("MODELMILL_HOME", str(h))
    monkeypatch.delenv("MODELMILL_DATABASE_URL", raising=False)
    return h


class CLI:
    """Runs ``python -m modelmill.cli ARGS`` as a user would, in the test's home."""

    def __init__(self, home: Path):
        self.home = home

    def __call__(self, *args, ok: bool | None = True, timeout: float = 600, input: str | None = None):
        env = {**os.environ, "MODELMILL_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        p = subprocess.run([*MODELMILL, *map(str, args)], capture_output=True, text=True, env=env,
                           timeout=timeout, input=input)
        if ok is True and p.returncode != 0:
            raise AssertionError(f"modelmill {' '.join(map(str, args))} exited {p.returncode}\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        if ok is False and p.returncode == 0:
            raise AssertionError(f"modelmill {' '.join(map(str, args))} should have failed\n{p.stdout}\n{p.stderr}")
        return p


@pytest.fixture()
def cli(home) -> CLI:
    return CLI(home)


@pytest.fixture()
def cli_tiny(cli, tiny_model) -> CLI:
    """A CLI whose registry has the tiny model as 'tiny'."""
    cli("models", "add", "tiny", tiny_model)
    return cli


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


REVIEWS = [
    ("The medicine worked well and I feel much better now.", "positive"),
    ("Terrible side effects, I had to stop after two days.", "negative"),
    ("It did nothing for me, not good and not bad.", "neutral"),
    ("Great relief from pain within an hour, highly recommend.", "positive"),
    ("Made my headaches worse and I could not sleep.", "negative"),
    ("Some days it helps, some days it does not.", "neutral"),
    ("Best treatment I have tried in ten years.", "positive"),
    ("Awful nausea every morning, would not take again.", "negative"),
]


@pytest.fixture()
def reviews_file(tmp_path) -> Path:
    """Hand-written review lines in the classification format (a few, for fast tests)."""
    rows = [{"text": t, "label": l, "id": i} for i, (t, l) in enumerate(REVIEWS * 3)]
    # make the repeats differ so that cleaning keeps them
    for i, r in enumerate(rows):
        r["text"] = f"{r['text']} (visit {i})"
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


class Server:
    """``modelmill serve`` (or ``up``) started as a user starts it, on a free localhost port."""

    def __init__(self, home: Path, *flags, env: dict | None = None, timeout: float = 120, command: str = "serve"):
        import socket
        import tempfile
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])
        full_env = {**os.environ, "MODELMILL_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([*MODELMILL, command, "--port", str(self.port), *map(str, flags)],
                                     env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"modelmill serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"modelmill serve did not answer /health in {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), **kw)

    def metric(self, name: str, **labels) -> float:
        """The value of one Prometheus sample on /metrics (0 when absent)."""
        import urllib.request

        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, lab = key.partition("{")
            if metric == name and ",".join(sorted(lab.rstrip("}").split(","))) == want:
                return float(value)
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def register_random_adapter(home: Path, base_folder: Path, name: str, seed: int, targets, rank: int = 4,
                            base_name: str = "tiny") -> Path:
    """A real peft LoRA adapter with random (non-zero) weights, registered like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelmill.adapters import AdapterRegistry
    from modelmill.store import open_store
    from modelmill.store.tables import Adapter

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                  init_lora_weights=False))
    path = home / "adapters" / name
    peft_model.save_pretrained(path)
    old = os.environ.get("MODELMILL_HOME")
    os.environ["MODELMILL_HOME"] = str(home)
    try:
        AdapterRegistry(open_store()).add(Adapter(name=name, base_model=base_name, method="lora", dataset="random",
                                                  dataset_version="1", dataset_hash="0" * 64, path=str(path)))
    finally:
        if old is None:
            os.environ.pop("MODELMILL_HOME", None)
        else:
            os.environ["MODELMILL_HOME"] = old
    return path


def wait_until(pred, timeout: float, what: str, every: float = 0.5):
    """``pred()``'s first truthy value, polled every ``every`` seconds; fails naming ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_job(client, job_id: str, timeout: float = 300) -> dict:
    """Poll GET /api/jobs/ID until the job succeeds or fails; the job, with its events' text when it failed."""
    import time

    deadline = time.monotonic() + timeout
    while (job := client.get(f"/api/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    if job["status"] != "succeeded":
        job["events"] = client.get(f"/api/jobs/{job_id}/events").text
    return job


def _pg_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_server():
    """A real PostgreSQL server (Debian's binaries) on a free localhost port, removed afterwards;
    the test skips, saying why, where psycopg or the server binaries are missing."""
    import shutil
    import socket
    import tempfile

    pytest.importorskip("psycopg")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="modelmill-pg-"))  # not under pytest's private tmp: the server must reach it
    data = root / "pg"
    data.mkdir()
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
