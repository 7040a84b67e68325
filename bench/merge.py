"""Merging two task adapters into one: how much of each specialist's accuracy each merge keeps.

    .venv/bin/python bench/merge.py --home /tmp/mm-quality                       # SmolLM2's adapters
    .venv/bin/python bench/merge.py --home /tmp/mm-quality --base gemma3-270m    # Gemma's

Needs the adapters and datasets `bench/quality.py` leaves in the same home (the drug-review and
Chinese-review adapters and their test sets; run it first with the same --base). Each merge goes
through the library call `modelmill adapters merge` makes (peft's add_weighted_adapter) and is
scored with `modelmill eval`'s scoring (label likelihood) on both held-out sets; the specialists'
own scores are reused from the store when quality.py left them.

Goal (issue 15): the best merge keeps at least 95% of each specialist's accuracy on its own task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/mm-quality")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="The base quality.py trained on.")
    ap.add_argument("--how", default="linear,cat,svd,ties,dare_ties,magnitude_prune",
                    help="Comma-separated merge methods.")
    ap.add_argument("--weights", default="1,1", help="Weights of the drugs and the zh adapter.")
    ap.add_argument("--density", type=float, default=0.5, help="--density of the pruning methods.")
    ap.add_argument("--quick", action="store_true", help="The adapters quality.py --quick left.")
    args = ap.parse_args()
    os.environ["MODELMILL_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from modelmill.adapters import AdapterRegistry
    from modelmill.adapters.merge import MergeConfig, merge
    from modelmill.evaluate.candidates import LocalModel
    from modelmill.evaluate.runner import evaluate
    from modelmill.evaluate.tasks import task_from_dict
    from modelmill.store import open_store

    store = open_store()
    reg = AdapterRegistry(store)
    tag = "" if args.base == "smollm2-135m-instruct" else f"-{args.base}"
    suffix = "-quick" if args.quick else ""
    specialists = {"drugs": f"q-drugs-lora{tag}{suffix}", "zh": f"q-zh-lora{tag}{suffix}"}
    missing = [a for a in specialists.values() if reg.find(a) is None]
    if missing:
        print(f"needs {', '.join(missing)} in {args.home}: run bench/quality.py --home {args.home} "
              f"--base {args.base} first", file=sys.stderr)
        return 2
    specs = {n: task_from_dict({"name": f"q-{n}{suffix}", "kind": "classification", "data": f"q-{n}-test{suffix}",
                                "train": f"q-{n}-train{suffix}"}) for n in specialists}
    w = [float(x) for x in args.weights.split(",")]
    print(f"base {args.base}, CPU capability {torch.backends.cpu.get_cpu_capability()}; merging "
          f"{specialists['drugs']} x{w[0]:g} and {specialists['zh']} x{w[1]:g}", flush=True)

    scores: dict[str, dict] = {}
    for n, spec in specs.items():
        for name in specialists.values():
            r = evaluate(store, spec, [LocalModel(store, name)], progress=False)[0]
            scores.setdefault(name, {})[n] = r.metrics
    merges = {}
    for how in [h.strip() for h in args.how.split(",") if h.strip()]:
        name = f"mrg-{how}-{args.weights.replace(',', '-')}{tag}{suffix}"
        t = time.perf_counter()
        if reg.find(name) is None:
            merge(store, MergeConfig(name=name, sources=f"{specialists['drugs']}:{w[0]},{specialists['zh']}:{w[1]}",
                                     how=how, density=args.density))
        merges[how] = {"adapter": name, "merge_seconds": time.perf_counter() - t}
        for n, spec in specs.items():
            r = evaluate(store, spec, [LocalModel(store, name)], progress=False)[0]
            scores.setdefault(name, {})[n] = r.metrics
        print(f"  {how}: drugs {scores[name]['drugs']['accuracy']:.3f}, zh {scores[name]['zh']['accuracy']:.3f}",
              flush=True)

    print("\n| adapter | drugs accuracy / macro-F1 | zh accuracy / macro-F1 | kept of drugs | kept of zh |")
    print("|---|---|---|---|---|")
    sd, sz = scores[specialists["drugs"]]["drugs"]["accuracy"], scores[specialists["zh"]]["zh"]["accuracy"]
    rows = [(k, scores[v]) for k, v in (("specialist: drugs", specialists["drugs"]),
                                         ("specialist: zh", specialists["zh"]))]
    rows += [(f"merge: {how}", scores[m["adapter"]]) for how, m in merges.items()]
    best = None
    for label, s in rows:
        kd, kz = s["drugs"]["accuracy"] / sd, s["zh"]["accuracy"] / sz
        print(f"| {label} | {s['drugs']['accuracy']:.3f} / {s['drugs']['macro_f1']:.3f} | "
              f"{s['zh']['accuracy']:.3f} / {s['zh']['macro_f1']:.3f} | {100 * kd:.1f}% | {100 * kz:.1f}% |")
        if label.startswith("merge") and (best is None or min(kd, kz) > best[1]):
            best = (label, min(kd, kz))
    if best:
        print(f"\n{'PASS' if best[1] >= 0.95 else 'MISS'}  best merge ({best[0]}) keeps {100 * best[1]:.1f}% of "
              f"each specialist's accuracy at least (goal 95%)")
    out = ROOT / "bench" / "results" / f"merge{tag}{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "specialists": specialists, "merges": merges,
                               "scores": scores, "cpu": torch.backends.cpu.get_cpu_capability()}, indent=2),
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
