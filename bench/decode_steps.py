"""Where a decode step's time goes: the serving engine's median decode-step time for batches of a
given adapter mix, in-process (no HTTP), alternating the mixes round by round.

    .venv/bin/python bench/decode_steps.py                                  # ~3 min on 2 AVX2 cores
    .venv/bin/python bench/decode_steps.py --mixes 1x1ad,32x1ad,32x8ad --profile 32x8ad
    .venv/bin/python bench/decode_steps.py --quantize int8
    .venv/bin/python bench/decode_steps.py --compare unjoined,rows-first   # ours vs before each change

A mix is ROWSx(1ad | 3ad+base | 8ad | base): ROWS requests decoded together, on one adapter, on
three adapters and one on the base model, round-robin over eight, or all on the base. The adapters
are rank 16 on all linear layers (what `modelmill train` makes), random weights, written under
--home. Every request has the same 80-token prompt and decodes --tokens tokens (ignore_eos,
greedy); only steps where all of a mix's rows decode count. --profile MIX prints torch's operator
table for one such step. The bots' "four modules at once" is 4x3ad+base; serve_multilora's
mixed and (a) are 32x8ad and 32x1ad.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def mix_rows(mix: str) -> list[int | None]:
    """Each row's adapter index (None: the base model) for a mix name such as 4x3ad+base."""
    try:
        rows_s, kind = mix.split("x", 1)
        rows = int(rows_s)
    except ValueError:
        raise SystemExit(f"--mixes: '{mix}' is not ROWSxKIND (e.g. 4x3ad+base)") from None
    table = {"1ad": lambda i: 0, "8ad": lambda i: i % 8, "base": lambda i: None,
             "3ad+base": lambda i: None if i % 4 == 3 else i % 4}
    if kind not in table or rows < 1:
        raise SystemExit(f"--mixes: unknown mix '{mix}' (kinds: {', '.join(table)})")
    return [table[kind](i) for i in range(rows)]


async def measure(a) -> dict:
    import torch

    import serve_multilora as sm
    from modelmill.models.registry import ModelRegistry
    from modelmill.serve.engine import AdapterRef, GenerationRequest, SamplingParams
    from modelmill.serve.hf_engine import HFEngine
    from modelmill.store import open_store

    model_path = ModelRegistry(open_store()).ready(a.base, progress=False).path
    layers, shapes = sm.module_shapes(model_path, TARGETS)
    adapters = []
    for i in range(8):
        folder = Path(a.home) / "decode-steps" / f"ad{i}"
        sm.write_adapter(folder, 16, TARGETS, layers, shapes, model_path, i)
        adapters.append(AdapterRef(name=f"decode-steps-{i}", path=str(folder)))
    mixes = {m: mix_rows(m) for m in a.mixes.split(",")}
    from modelmill.serve import multilora

    # baselines: a setting of the engine's multilora module as it was before a change
    baselines = {"unjoined": {"SHARED_INPUT": ()},             # every linear layer on its own
                 "rows-first": {"WEIGHTS_FIRST_MAX_ROWS": 0}}  # x @ W.T at every row count
    variants = ["ours"] + [v for v in a.compare.split(",") if v]
    engines = {}
    for v in variants:
        if v != "ours" and v not in baselines:
            raise SystemExit(f"--compare: unknown '{v}' (known: {', '.join(baselines)})")
        saved = {k: getattr(multilora, k) for k in baselines.get(v, {})}
        for k, val in baselines.get(v, {}).items():
            setattr(multilora, k, val)
        try:
            engines[v] = HFEngine(a.base, model_path, dtype=a.dtype, quantize=a.quantize, prefix_cache_mb=0)
            await engines[v].start()
        finally:
            for k, val in saved.items():
                setattr(multilora, k, val)
    steps: list = []
    threads: set = set()                 # OpenMP threads of the engines' threads, where the steps run
    tables: dict = {}
    profile_now: list = [None]

    def timed(engine):
        decode = engine._decode

        def timed_decode():  # runs on the engine's thread
            mix = profile_now[0]
            if mix and len(engine._running) == len(mixes[mix]) and len(steps) == 8:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as pr:
                    t = time.perf_counter()
                    decode()
                tables[mix] = pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
                steps.append((time.perf_counter() - t, -1))
                return
            threads.add(torch.get_num_threads())
            t = time.perf_counter()
            decode()
            steps.append((time.perf_counter() - t, len(engine._running)))
        return timed_decode

    for engine in engines.values():
        engine._decode = timed(engine)
    prompt = engines["ours"].tokenizer("The quick brown fox jumps over the lazy dog. " * 10,
                                       add_special_tokens=False)["input_ids"][:80]

    async def one(engine, adapter):
        params = SamplingParams(max_tokens=a.tokens, temperature=0.0, ignore_eos=True)
        ref = None if adapter is None else adapters[adapter]
        async for _ in engine.generate(GenerationRequest(uuid.uuid4().hex, prompt, params, ref)):
            pass

    async def run(mix: str, v: str = "ours") -> float:
        steps.clear()
        await asyncio.gather(*(one(engines[v], x) for x in mixes[mix]))
        full = [t for t, n in steps if n == len(mixes[mix])]
        return 1000 * statistics.median(full) if full else float("nan")

    try:
        for m in mixes:  # warm: adapters read, buffers grown
            for v in variants:
                await run(m, v)
        rounds = {(m, v): [] for m in mixes for v in variants}
        for _ in range(a.repeats):
            for m in mixes:
                for v in variants:
                    rounds[m, v].append(await run(m, v))
        for m in [x for x in a.profile.split(",") if x]:
            if m not in mixes:
                raise SystemExit(f"--profile: '{m}' is not one of --mixes")
            profile_now[0] = m
            await run(m)
            profile_now[0] = None
    finally:
        for engine in engines.values():
            await engine.shutdown()
    return {"capability": torch.backends.cpu.get_cpu_capability(), "threads": sorted(threads),
            "rounds": rounds, "tables": tables}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default="/tmp/mm-steps")
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--mixes", default="1xbase,1x1ad,4xbase,4x1ad,4x3ad+base")
    ap.add_argument("--repeats", type=int, default=3, help="Rounds, each mix once per round.")
    ap.add_argument("--tokens", type=int, default=24, help="New tokens per request.")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantize", default="none", choices=("none", "int8"))
    ap.add_argument("--profile", default="", help="Mixes to print an operator table for (one step each).")
    ap.add_argument("--compare", default="",
                    help="Also time engines set as before a change, alternating with ours round by round: "
                         "unjoined (q/k/v and gate/up as separate layers), rows-first (x @ W.T at every "
                         "row count). Comma-separated.")
    a = ap.parse_args(argv)
    os.environ.setdefault("MODELMILL_HOME", a.home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(a.home).mkdir(parents=True, exist_ok=True)
    r = asyncio.run(measure(a))
    for m, t in r["tables"].items():
        print(f"\n== one decode step of {m}\n{t}")
    print(f"\nCPU capability {r['capability']}, engine threads {r['threads']}, {a.dtype}, quantize {a.quantize}")
    print("| mix | engine | decode step, ms by round | median | / first mix | baseline / ours, by round |\n"
          "|---|---|---|---|---|---|")
    first = None
    for (m, v), ts in r["rounds"].items():
        med = statistics.median(ts)
        first = first or med
        ratio = ""
        if v != "ours":
            ours = r["rounds"][m, "ours"]
            ratio = " / ".join(f"{u / o:.2f}" for u, o in zip(ts, ours)) + \
                f" (median {statistics.median(u / o for u, o in zip(ts, ours)):.2f}x)"
        print(f"| {m} | {v} | {' / '.join(f'{t:.1f}' for t in ts)} | {med:.1f} | {med / first:.2f}x | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
