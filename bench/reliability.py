"""The reliability campaign: fuzzing, a soak, chaos and storage faults against a real ``modelmill up``.

    .venv/bin/python bench/reliability.py                          # everything (about 15 minutes)
    .venv/bin/python bench/reliability.py --parts fuzz,chaos       # some parts
    .venv/bin/python bench/reliability.py --soak-seconds 60 --trickle-seconds 10 --disconnects 200   # shorter

Traffic goes to 127.0.0.1 only, every loop is bounded in count and time, and every process it
starts is stopped at the end. The server runs over a tiny random model built here (no download)
with four random LoRA adapters, as a user starts it: ``modelmill up --workers 1 --api-key KEY``.

- fuzz: a 20 MB chat body (413 expected, and /health's latency while it is refused), a body nested
  100,000 deep, integer overflow (2**64, -2**64, 10**400) in every numeric field of every JSON
  body and query of /openapi.json, invalid UTF-8, a body trickled over --trickle-seconds while
  /health and chat go on, and --disconnects clients that leave mid-request or mid-stream.
  Goal: 0 5xx, 0 requests without an answer, /health within 1 s throughout.
- soak: --clients streaming clients over 4 adapters and the base for --soak-seconds; goal 0
  errors, p95 latency and the server's RSS in the first and the last minute (RSS growth <= 5%),
  /health within 1 s throughout.
- chaos: --chaos-rounds training jobs, each hit by SIGKILL of its runner, its trainer, the worker
  or the whole platform at a random moment (before the first checkpoint, while one is written,
  later); goal: every job ends succeeded, each step's metrics once, the database passes its
  integrity check, no orphan process.
- storage (needs root for a tmpfs mount; skipped otherwise): a home on a small tmpfs filled up
  while a dataset is imported, a training run checkpoints and an adapter is published; then the
  home made read-only. Goal: a clear one-line error each time, nothing stored lost or half-written.

It prints a table per part and a JSON summary (``--out FILE`` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

KEY = "mm-bench-reliability-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELMILL = [sys.executable, "-m", "modelmill.cli"]
ADAPTERS = ["ad0", "ad1", "ad2", "ad3"]
CHAT_ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": str(2 * i)}]} for i in range(64)]


# ----------------------------------------------------------------------------- set-up

def run_cli(home: Path, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELMILL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([*MODELMILL, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"modelmill {' '.join(map(str, args))}: {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def seed_home(home: Path) -> None:
    """The tiny model, four random LoRA adapters of it, and a chat dataset."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelmill.models.tiny import make_tiny_model

    tiny = make_tiny_model(home.parent / "tiny")
    run_cli(home, "models", "add", "tiny", tiny)
    data = home.parent / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS))
    run_cli(home, "data", "import", data, "--name", "chat")
    os.environ["MODELMILL_HOME"] = str(home)
    from modelmill.adapters import AdapterRegistry
    from modelmill.store import open_store
    from modelmill.store.tables import Adapter

    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        path = home / "adapters" / name
        model.save_pretrained(path)
        AdapterRegistry(open_store()).add(Adapter(name=name, base_model="tiny", method="lora", dataset="random",
                                                  dataset_version="1", dataset_hash="0" * 64, path=str(path)))


class Up:
    """``modelmill up`` in its own process group."""

    def __init__(self, home: Path, log: Path, *flags):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.home, self.log, self.flags = home, log, flags
        self.start()

    def start(self) -> None:
        env = {**os.environ, "MODELMILL_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*MODELMILL, "up", "--port", str(self.port), "--api-key", KEY, *self.flags],
                                     env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelmill up exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"modelmill up did not answer in 180 s; see {self.log}")

    def rss_mib(self) -> float:
        """The server process's resident memory (workers and runners are separate processes)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class HealthWatch:
    """/health every 0.5 s from a process of its own (a thread here would wait on this process's
    GIL while thousands of bench clients run, and measure the bench, not the server)."""

    def __init__(self, url: str):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._p = ctx.Process(target=_watch_health, args=(url, self._stop, self._out), daemon=True)
        self._p.start()

    def stop(self) -> dict:
        self._stop.set()
        result = self._out.get(timeout=60)
        self._p.join(10)
        return result


def _watch_health(url, stop, out) -> None:
    worst, failed, n, slow = 0.0, 0, 0, []
    with httpx.Client(timeout=30) as c:
        while not stop.wait(0.5):
            t0 = time.monotonic()
            try:
                ok = c.get(url + "/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            n += 1
            took = time.monotonic() - t0
            worst = max(worst, took)
            failed += not ok
            if took > 1:  # when (wall clock, to line up with the part's phases) and how long
                slow.append((round(time.time(), 1), round(took, 2)))
    out.put({"health_checks": n, "health_worst_s": round(worst, 3), "health_failed": failed,
             "health_slow": slow[:50]})


# ----------------------------------------------------------------------------- fuzz

def _numeric_paths(schema: dict, defs: dict, prefix=(), depth=0):
    """Every (path, type) of an integer or number field in a JSON schema (refs resolved, 3 deep)."""
    if depth > 3 or not isinstance(schema, dict):
        return
    if "$ref" in schema:
        yield from _numeric_paths(defs.get(schema["$ref"].split("/")[-1], {}), defs, prefix, depth + 1)
        return
    for alt in schema.get("anyOf", []) + schema.get("allOf", []):
        yield from _numeric_paths(alt, defs, prefix, depth)
    if schema.get("type") in ("integer", "number") and prefix:
        yield prefix
    for name, sub in (schema.get("properties") or {}).items():
        yield from _numeric_paths(sub, defs, prefix + (name,), depth + 1)


def _set(body: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(body))
    cur = out
    for k in path[:-1]:
        cur = cur.setdefault(k, {}) if isinstance(cur.get(k), dict) or k not in cur else cur[k]
        if not isinstance(cur, dict):
            return out
    cur[path[-1]] = value
    return out


BASE_BODIES = {
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "all-minilm-l6-v2", "input": "hi"},
    "/api/jobs": {"kind": "train", "config": {"base": "tiny", "data": "chat", "max_steps": 1}},
    "/v1/fine_tuning/jobs": {"model": "tiny", "training_file": "file-none"},
}


def fuzz(up: Up, args, record) -> dict:
    out: dict = {"cases": 0, "statuses": {}, "5xx": 0, "no_answer": 0, "problems": [], "phases": {}}

    def phase(name: str) -> None:  # wall-clock start of each step, to place /health's slow answers
        out["phases"][name] = round(time.time(), 1)

    def count(what: str, status: int | None):
        out["cases"] += 1
        key = str(status) if status is not None else "none"
        out["statuses"][key] = out["statuses"].get(key, 0) + 1
        if status is None:
            out["no_answer"] += 1
            out["problems"].append(f"{what}: no answer")
        elif status >= 500:
            out["5xx"] += 1
            out["problems"].append(f"{what}: {status}")

    def send(what: str, method: str, path: str, **kw) -> httpx.Response | None:
        try:
            r = httpx.request(method, up.url + path, headers={**AUTH, **kw.pop("headers", {})}, timeout=120, **kw)
        except httpx.HTTPError as e:
            count(f"{what} ({type(e).__name__})", None)
            return None
        count(what, r.status_code)
        return r

    watch = HealthWatch(up.url)
    phase("huge body")
    # 1. a 20 MB body: refused before it is read
    big = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (20 * 2**20) + b'"}]}'
    t0 = time.monotonic()
    r = send("20 MB chat body", "POST", "/v1/chat/completions", content=big,
             headers={"Content-Type": "application/json"})
    out["huge_body"] = {"status": r.status_code if r is not None else None, "seconds": round(time.monotonic() - t0, 2)}
    phase("nested")
    # 2. nested 100,000 deep
    send("body nested 100k deep", "POST", "/v1/chat/completions", content=b"[" * 100_000 + b"]" * 100_000,
         headers={"Content-Type": "application/json"})
    phase("invalid utf-8")
    # 3. invalid UTF-8
    send("invalid UTF-8", "POST", "/v1/chat/completions",
         content=b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}',
         headers={"Content-Type": "application/json"})
    phase("overflow")
    # 4. integer overflow in every numeric field of every JSON body, and every integer query
    spec = httpx.get(up.url + "/openapi.json", headers=AUTH).json()
    defs = spec.get("components", {}).get("schemas", {})
    for path, ops in spec["paths"].items():
        if "{" in path:
            continue
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if param.get("in") == "query" and param.get("schema", {}).get("type") in ("integer", "number"):
                    for v in ("18446744073709551616", "-18446744073709551616", "1e400"):
                        send(f"{method.upper()} {path}?{param['name']}={v}", method.upper(), path,
                             params={param["name"]: v})
            body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
            if not body_schema:
                continue
            base = BASE_BODIES.get(path, {})
            for field in sorted(set(_numeric_paths(body_schema, defs))):
                for raw in ("18446744073709551616", "-18446744073709551616", "1" + "0" * 400):
                    body = json.dumps(_set(base, field, "__X__")).replace('"__X__"', raw)
                    send(f"{method.upper()} {path} {'.'.join(field)}={raw[:22]}", method.upper(), path,
                         content=body.encode(), headers={"Content-Type": "application/json"})
    phase("trickle")
    # 5. a body trickled over --trickle-seconds: it holds neither the loop nor a worker
    trickle = {"done": None}

    def slow_client():
        body = json.dumps(BASE_BODIES["/v1/chat/completions"]).encode()
        with socket.create_connection(("127.0.0.1", up.port), timeout=args.trickle_seconds + 60) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            step = args.trickle_seconds / len(body)
            for b in body:
                s.sendall(bytes([b]))
                time.sleep(step)
            trickle["done"] = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")

    t = threading.Thread(target=slow_client)
    t.start()
    while t.is_alive():
        send("chat while a body trickles", "POST", "/v1/chat/completions", json=BASE_BODIES["/v1/chat/completions"])
        time.sleep(1)
    t.join()
    out["trickle"] = {"seconds": args.trickle_seconds, "answer": trickle["done"]}
    count("the trickled request", int(trickle["done"].split()[1]) if trickle["done"] else None)

    phase("disconnects")
    # 6. clients that leave: half mid-request (headers sent, body not), half mid-stream
    async def leave(i: int):
        if i % 2:
            reader, writer = await asyncio.open_connection("127.0.0.1", up.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"mo")
            await writer.drain()
            writer.close()
            return
        body = {**BASE_BODIES["/v1/chat/completions"], "model": random.choice(ADAPTERS), "stream": True,
                "max_tokens": 64, "ignore_eos": True}
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as c:
            async with c.stream("POST", up.url + "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_lines():
                    break

    async def leavers():
        sem = asyncio.Semaphore(32)

        async def one(i):
            async with sem:
                try:
                    await leave(i)
                except (httpx.HTTPError, OSError) as e:
                    out["problems"].append(f"disconnect client {i}: {type(e).__name__}: {e}")

        await asyncio.gather(*(one(i) for i in range(args.disconnects)))

    rss0 = up.rss_mib()
    asyncio.run(leavers())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        eng = httpx.get(up.url + "/health", timeout=30).json().get("engines", {}).get("tiny", {})
        if not eng.get("running") and not eng.get("waiting"):
            break
        time.sleep(0.5)
    phase("end")
    out["disconnects"] = {"clients": args.disconnects, "engine_after": eng, "rss_before_mib": round(rss0, 1),
                          "rss_after_mib": round(up.rss_mib(), 1)}
    out.update(watch.stop())
    if out["health_worst_s"] > 1:
        out["problems"].append(f"/health took {out['health_worst_s']} s at worst")
    record("fuzz", out)
    return out


# ----------------------------------------------------------------------------- soak

def soak(up: Up, args, record) -> dict:
    models = ["tiny", *[f"tiny:{a}" for a in ADAPTERS]]
    lat: list[tuple[float, float]] = []  # (when, seconds)
    errors: list[str] = []
    rss = [(0.0, up.rss_mib())]
    t_start = time.monotonic()
    end = t_start + args.soak_seconds

    async def client(i: int):
        rng = random.Random(i)
        async with httpx.AsyncClient(timeout=300, headers=AUTH) as c:
            while time.monotonic() < end:
                body = {"model": rng.choice(models), "stream": True, "max_tokens": rng.randint(8, 48),
                        "messages": [{"role": "user", "content": f"client {i} says hello {rng.random()}"}]}
                t0 = time.monotonic()
                try:
                    async with c.stream("POST", up.url + "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                            continue
                        done = False
                        async for line in r.aiter_lines():
                            done = done or line == "data: [DONE]"
                        if not done:
                            errors.append("stream ended without [DONE]")
                            continue
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                lat.append((t0 - t_start, time.monotonic() - t0))

    async def sampler():
        while time.monotonic() < end:
            await asyncio.sleep(10)
            rss.append((time.monotonic() - t_start, up.rss_mib()))

    async def main():
        await asyncio.gather(sampler(), *(client(i) for i in range(args.clients)))

    watch = HealthWatch(up.url)
    asyncio.run(main())
    health = watch.stop()

    def p95(xs):
        xs = sorted(xs)
        return round(xs[int(0.95 * (len(xs) - 1))], 3) if xs else None

    window = min(60.0, args.soak_seconds / 3)
    first = [s for t, s in lat if t < window]
    last = [s for t, s in lat if t >= args.soak_seconds - window]
    rss_first = [m for t, m in rss if window / 2 <= t <= window * 1.5] or [rss[1][1] if len(rss) > 1 else rss[0][1]]
    out = {"clients": args.clients, "seconds": args.soak_seconds, "requests": len(lat), "errors": len(errors),
           "error_examples": errors[:5], "p95_first_s": p95(first), "p95_last_s": p95(last),
           "rss_start_mib": round(rss_first[0], 1), "rss_end_mib": round(rss[-1][1], 1), **health}
    out["rss_growth_pct"] = round(100 * (out["rss_end_mib"] / out["rss_start_mib"] - 1), 2)
    record("soak", out)
    return out


# ----------------------------------------------------------------------------- chaos

def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _pids_with(text: str) -> list[int]:
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmd.read_bytes().decode(errors="replace"):
                out.append(int(cmd.parent.name))
        except OSError:
            pass
    return [p for p in out if p != os.getpid()]


def chaos(up: Up, args, record) -> dict:
    rng = random.Random(args.seed)
    targets = ["runner", "trainer", "worker", "platform"]
    moments = ["before the first checkpoint", "while a checkpoint is written", "mid-run"]
    rounds = []
    c = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    for k in range(args.chaos_rounds):
        target, moment = targets[k % len(targets)], moments[(k // len(targets) + k) % len(moments)]
        name = f"chaos-{k}"
        steps = 400  # long enough on a fast CPU for the kill to land mid-run
        job = c.post("/api/jobs", json={"kind": "train", "config": {
            "base": "tiny", "data": "chat", "name": name, "max_steps": steps, "save_steps": 5, "logging_steps": 1,
            "batch_size": 2}}).json()
        run = up.home / "runs" / name / "checkpoints"
        deadline = time.monotonic() + 300
        hit = None
        while time.monotonic() < deadline and hit is None:
            j = c.get(f"/api/jobs/{job['id']}").json()
            if j["status"] in ("succeeded", "failed", "cancelled"):
                break
            ck = sorted(run.glob("checkpoint-*")) if run.is_dir() else []
            runners = [p for p in _pids_with("modelmill.jobs.runner") if job["id"] in _cmdline(p)]
            ready = j["status"] == "running" and runners
            if ready and ((moment == "before the first checkpoint" and not ck and rng.random() < 0.3)
                          or (moment == "while a checkpoint is written" and ck and not (ck[-1] / "trainer_state.json").exists())
                          or (moment == "mid-run" and len(ck) >= 2 and rng.random() < 0.3)):
                runner = runners[0]
                trainers = [p for p in _pids_with(str(up.home / "runs" / name)) if p != runner]
                if target == "runner":
                    os.kill(runner, signal.SIGKILL)
                elif target == "trainer" and trainers:
                    for p in trainers:
                        os.kill(p, signal.SIGKILL)
                elif target == "worker":
                    os.kill(int(_parent(runner)), signal.SIGKILL)
                elif target == "platform":
                    up.kill()  # the whole group: server, workers, runners, trainers
                    time.sleep(2)
                    up.start()
                    c = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
                else:
                    continue
                hit = time.monotonic()
            time.sleep(0.02)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            j = c.get(f"/api/jobs/{job['id']}").json()
            if j["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        events = c.get(f"/api/jobs/{job['id']}/events", params={"limit": 5000}).json()["data"]
        steps_seen = [e["data"]["step"] for e in events if e.get("type") == "metrics" and e.get("data")
                      and "loss" in e["data"]]
        resumable = j["status"] == "failed" and (up.home / "runs" / name / "checkpoints").is_dir()
        rounds.append({"job": name, "target": target, "moment": moment, "hit": hit is not None, "status": j["status"],
                       "attempts": j.get("attempts"), "steps_once": sorted(steps_seen) == list(range(1, steps + 1)),
                       "resumable": resumable, "error": (j.get("error") or {}).get("message")})
    time.sleep(3)
    orphans = [p for p in _pids_with(str(up.home / "runs")) if p not in _children(up.proc.pid)]
    check = run_cli(up.home, "db", "check", check=False)
    out = {"rounds": rounds, "ok": sum(r["status"] == "succeeded" or r["resumable"] for r in rounds),
           "steps_once": sum(r["steps_once"] for r in rounds), "orphans": orphans,
           "db_check": check.stdout.strip().splitlines()[-1:] if check.stdout else check.stderr.strip()[-200:]}
    record("chaos", out)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# ----------------------------------------------------------------------------- storage

def storage(args, record, base_home: Path) -> dict:
    mnt = Path(tempfile.mkdtemp(prefix="mm-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True).returncode:
        out = {"skipped": "cannot mount a tmpfs here (needs root)"}
        record("storage", out)
        return out
    cases = []
    try:
        home = mnt / "home"
        run_cli(home, "models", "add", "tiny", base_home.parent / "tiny")
        data = base_home.parent / "chat.jsonl"
        run_cli(home, "data", "import", data, "--name", "kept")
        run_cli(home, "train", "--base", "tiny", "--data", "kept", "--name", "kept-lora", "--max-steps", "2",
                "--batch-size", "2")

        def fill(leave_kib: int) -> Path:
            filler = mnt / "filler"
            filler.unlink(missing_ok=True)
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - leave_kib * 1024))
            return filler

        def case(what: str, *cli_args, leave_kib: int):
            filler = fill(leave_kib)
            p = run_cli(home, *cli_args, check=False)
            filler.unlink()
            err = [ln for ln in p.stderr.splitlines() if ln.strip()]
            intact = run_cli(home, "data", "list", check=False).stdout
            adapters = run_cli(home, "adapters", "list", check=False).stdout
            db = run_cli(home, "db", "check", check=False)
            leftovers = [str(x.relative_to(home)) for x in (home / "tmp").iterdir()] if (home / "tmp").is_dir() else []
            cases.append({"case": what, "exit": p.returncode, "error": err[-1][:300] if err else "",
                          "one_line": p.returncode != 0 and len(err) >= 1 and "Traceback" not in p.stderr,
                          "kept_data": "kept" in intact, "kept_adapter": "kept-lora" in adapters,
                          "db_ok": db.returncode == 0, "tmp_leftovers": leftovers})

        big = mnt.parent / "big.jsonl"
        big.write_text("".join(json.dumps({"text": f"review {i} " + "words " * 40, "label": "ok"}) + "\n"
                               for i in range(20000)))
        case("disk full while a dataset is imported", "data", "import", big, "--name", "big", leave_kib=256)
        case("disk full while training checkpoints", "train", "--base", "tiny", "--data", "kept", "--name",
             "full-ck", "--max-steps", "20", "--save-steps", "1", "--batch-size", "2", leave_kib=64)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        p = run_cli(home, "data", "import", data, "--name", "ro", check=False)
        err = [ln for ln in p.stderr.splitlines() if ln.strip()]
        cases.append({"case": "read-only home: import", "exit": p.returncode, "error": err[-1][:300] if err else "",
                      "one_line": p.returncode != 0 and len(err) >= 1 and "Traceback" not in p.stderr,
                      "kept_data": "kept" in run_cli(home, "data", "list", check=False).stdout,
                      "kept_adapter": True, "db_ok": True, "tmp_leftovers": []})
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    out = {"cases": cases}
    record("storage", out)
    return out


# ----------------------------------------------------------------------------- main

def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="fuzz,soak,chaos,storage")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--soak-seconds", type=float, default=300)
    ap.add_argument("--trickle-seconds", type=float, default=60)
    ap.add_argument("--disconnects", type=int, default=2000)
    ap.add_argument("--chaos-rounds", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    root = Path(tempfile.mkdtemp(prefix="mm-reliability-"))
    home = root / "home"
    summary: dict = {"cpu": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(), "args": vars(args)}

    def record(part, result):
        summary[part] = result
        print(f"\n== {part}\n" + json.dumps(result, indent=1, default=str)[:6000], flush=True)

    print(f"reliability campaign on {summary['cpu']}, {summary['cores']} cores; home {home}", flush=True)
    seed_home(home)
    up = Up(home, root / "up.log", "--workers", "1", "--poll", "0.5", "--max-batch-size", "32", "--max-loras", "4")
    try:
        if "fuzz" in parts:
            fuzz(up, args, record)
        if "soak" in parts:
            soak(up, args, record)
        if "chaos" in parts:
            chaos(up, args, record)
    finally:
        up.stop()
    if "storage" in parts:
        storage(args, record, home)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nserver log: {root / 'up.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
