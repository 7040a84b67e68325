"""Scaling out on Ray, measured on a local 2-node cluster (a head and a second node, one CPU each,
`ray start --node-ip-address 127.0.0.1 --disable-usage-stats`), beside the local worker, in one run:

  overhead  the time from `queued` to the first training step of the same job (the built-in
            SmolLM2-135M, LoRA on drug reviews) through `modelmill up --executor ray` and through
            `modelmill up` (the local worker), timed by this script (events polled every 0.1 s). Goal:
            Ray adds at most 5 s.
  train     a 2-worker CPU training run through Ray Train (`modelmill train --num-workers 2`) against
            the same 2-process run launched by accelerate on this host (`--num-processes 2`): both train
            on the very same tokens, so tokens/s compare as the training loops' times (the Trainer's
            train_runtime), in alternating order by round. Goal: >= 0.9x.
  grid      a grid of 4 cells (lora-r2,r4,r8,r16), trained and scored, on the cluster (the cells fan out
            as jobs of their own over the 2 nodes) against one local worker running them one after
            another: wall time from submit to the board.

    python bench/scale.py --home /tmp/mm-scale [--parts overhead,train,grid] [--steps 10]

The metadata stays in SQLite here: every node is this host (a cluster of several hosts needs PostgreSQL,
which the executor checks). It prints the CPU's capability beside the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MM = [sys.executable, "-m", "modelmill.cli"]
RAY = str(Path(sys.executable).with_name("ray"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, env=None, check=True):
    p = subprocess.run([*map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


class Up:
    """`modelmill up` started as a user starts it; stopped with SIGTERM."""

    def __init__(self, env, *flags):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["MODELMILL_HOME"]) / f"up-{self.port}.log", "wb")
        self.proc = subprocess.Popen([*MM, "up", "--port", str(self.port), "--poll", "0.3", *flags], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"modelmill up did not start; see {self.log.name}")
            time.sleep(0.3)
        self.h = httpx.Client(base_url=self.url, timeout=60)

    def job(self, kind, config) -> dict:
        """Submit, wait; the job with its events and, on this bench's clock (polled every 0.1 s), the
        seconds from `queued` to its start event and to its first metrics event."""
        r = self.h.post("/api/jobs", json={"kind": kind, "config": config})
        if r.status_code != 201:
            raise SystemExit(r.text)
        jid, t0, seen = r.json()["id"], time.monotonic(), {}
        while (j := self.h.get(f"/api/jobs/{jid}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            if "step" not in seen:
                for e in self.h.get(f"/api/jobs/{jid}/events", params={"limit": 10000}).json()["data"]:
                    if e["message"].startswith("Started on worker"):
                        seen.setdefault("start", time.monotonic() - t0)
                    if e["type"] == "metrics":
                        seen.setdefault("step", time.monotonic() - t0)
            time.sleep(0.1)
        j["clock"] = seen
        j["events"] = self.h.get(f"/api/jobs/{jid}/events", params={"limit": 10000}).json()["data"]
        if j["status"] != "succeeded":
            raise SystemExit(f"{kind} job {jid} {j['status']}: {j.get('error')}")
        return j

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(150)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def loop_seconds(home: Path, name: str) -> float:
    """The training loop's own time (the Trainer's train_runtime, measured on rank 0)."""
    return json.loads((home / "adapters" / name / "lineage.json").read_text())["metrics"]["train_runtime"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/mm-scale")
    ap.add_argument("--parts", default="overhead,train,grid")
    ap.add_argument("--steps", type=int, default=10, help="training steps of the train part")
    ap.add_argument("--grid-steps", type=int, default=4, help="training steps of each grid cell")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the overhead and train parts (each path once)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))

    import torch

    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MODELMILL_HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    env.pop("MODELMILL_DATABASE_URL", None)
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"host: {cap}, {os.cpu_count()} CPUs; model smollm2-135m-instruct; Ray {sh(RAY, '--version').stdout.split()[-1]}")
    data = home / "drugs"
    if not (data / "train.jsonl").is_file():
        sh(sys.executable, ROOT / "examples" / "drug_reviews.py", data, env=env)
    names = sh(*MM, "data", "list", env=env).stdout
    for split in ("train", "test"):
        if f"drugs-{split}" not in names:
            sh(*MM, "data", "import", data / f"{split}.jsonl", "--name", f"drugs-{split}", env=env)
    sh(*MM, "models", "show", "smollm2-135m-instruct", "--no-template", env=env)

    head, node2 = _port(), _port()
    address = f"127.0.0.1:{head}"
    sh(RAY, "stop", "--force", env=env, check=False)
    sh(RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", head, "--num-cpus", 1,
       "--disable-usage-stats", "--dashboard-host", "127.0.0.1", "--dashboard-port", _port(),
       "--ray-client-server-port", _port(), "--temp-dir", f"/tmp/mm-scale-ray-{os.getpid()}", env=env)
    sh(RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", 1,
       "--node-manager-port", node2, "--disable-usage-stats", env=env)
    out: dict = {"host": cap}
    stamp = str(int(time.time()))[-6:]
    base = {"base": "smollm2-135m-instruct", "data": "drugs-train", "batch_size": 4, "max_length": 256,
            "logging_steps": 1, "save_steps": 1000}
    try:
        if "overhead" in parts:
            # A Ray task holding 1 CPU runs with OMP_NUM_THREADS=1 (Ray sets it); the local worker's runner
            # gets the same, so that the first step itself costs the same on both paths
            waits = {"local": [], "ray": []}
            starts = {"local": [], "ray": []}
            for r in range(args.rounds):
                for how, flags in (("local", ["--workers", "1", "--cpu-slots", "1"]),
                                   ("ray", ["--workers", "1", "--executor", "ray", "--ray-address", address])):
                    up = Up({**env, "OMP_NUM_THREADS": "1"}, *flags)
                    try:
                        job = up.job("train", {**base, "name": f"ov-{how}-{stamp}-{r}", "max_steps": 2})
                    finally:
                        up.stop()
                    waits[how].append(job["clock"]["step"])
                    starts[how].append(job["clock"]["start"])
                    print(f"overhead round {r + 1}, {how}: queued -> started {starts[how][-1]:.1f} s, -> first step "
                          f"{waits[how][-1]:.1f} s", flush=True)
            med = {k: sorted(w)[(len(w) - 1) // 2] for k, w in waits.items()}
            out["overhead"] = {"local_s": waits["local"], "ray_s": waits["ray"], "local_start_s": starts["local"],
                               "ray_start_s": starts["ray"], "median_extra_s": med["ray"] - med["local"]}
            print(f"overhead: Ray adds {med['ray'] - med['local']:+.1f} s from queued to the first step (median of "
                  f"{args.rounds}: local {med['local']:.1f} s, Ray {med['ray']:.1f} s; goal <= 5 s) [{cap}]", flush=True)
        if "train" in parts:
            # the same seed, data and global batch: both runs train on the very same tokens, so the ratio of
            # tokens/s is the inverse ratio of the training loops' times
            flags = sum([[f"--{k.replace('_', '-')}", str(v)] for k, v in base.items()], [])
            loops = {"accelerate": [], "ray": []}
            for r in range(args.rounds):
                for how in (("accelerate", "ray") if r % 2 == 0 else ("ray", "accelerate")):
                    name = f"{how}2-{stamp}-{r}"
                    extra = ["--num-processes", 2] if how == "accelerate" else ["--num-workers", 2]
                    t0 = time.monotonic()
                    sh(*MM, "train", *flags, "--name", name, "--max-steps", args.steps, *extra,
                       env={**env, "RAY_ADDRESS": address} if how == "ray" else env)
                    loops[how].append(loop_seconds(home, name))
                    print(f"train round {r + 1}, {how}: loop {loops[how][-1]:.1f} s for {args.steps} steps (command "
                          f"{time.monotonic() - t0:.0f} s)", flush=True)
            ratios = [a / b for a, b in zip(loops["accelerate"], loops["ray"])]
            out["train"] = {"accelerate_loop_s": loops["accelerate"], "ray_loop_s": loops["ray"], "ratios": ratios,
                            "steps": args.steps}
            print(f"train (2 workers, {args.steps} steps): Ray Train's tokens/s / accelerate's = "
                  f"{', '.join(f'{x:.2f}' for x in ratios)} by round (goal >= 0.9x) [{cap}]", flush=True)
        if "grid" in parts:
            task = home / "drugs-task.yaml"
            task.write_text("kind: classification\ndata: drugs-test\ntrain: drugs-train\nlimit: 40\n")
            grid = {"bases": "smollm2-135m-instruct", "data": "drugs-train", "task": str(task), "baselines": "",
                    "methods": "lora-r2,lora-r4,lora-r8,lora-r16", "max_steps": args.grid_steps}
            walls = {}
            for how, flags, extra in (
                    ("local", ["--workers", "1", "--cpu-slots", "1"], {"fan_out": False}),
                    ("ray", ["--workers", "1", "--executor", "ray", "--ray-address", address], {"fan_out": True})):
                up = Up(env, *flags)
                try:
                    t0 = time.monotonic()
                    up.job("grid", {**grid, **extra, "prefix": f"{how}{stamp}"})
                    walls[how] = time.monotonic() - t0
                finally:
                    up.stop()
                print(f"grid of 4 cells, {how}: {walls[how]:.0f} s", flush=True)
            out["grid"] = {**{f"{k}_s": v for k, v in walls.items()}, "speedup": walls["local"] / walls["ray"]}
            print(f"grid: 4 cells in {walls['ray']:.0f} s on the 2-node cluster vs {walls['local']:.0f} s on one "
                  f"local worker: {walls['local'] / walls['ray']:.2f}x [{cap}]", flush=True)
    finally:
        sh(RAY, "stop", "--force", env=env, check=False)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
