"""Shared fixtures: an isolated MODELMILL_HOME per test, a tiny model built locally, and a
way to run the real ``modelmill`` command. No test needs a network or a download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
