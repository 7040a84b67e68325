"""Merging two task adapters into one: how much of each specialist's score each merge keeps.

    .venv/bin/python bench/merge.py --home /tmp/mm-quality                         # SmolLM2: drugs + zh
    .venv/bin/python bench/merge.py --home /tmp/mm-extract --base gemma3-270m --tasks drugs,xwoz --limit 120
    .venv/bin/python bench/merge.py --home /tmp/mm-methods --specialists drugs=m-drugs-sft --limit 200

Needs the adapters and test sets the other benches leave in the same home: `bench/quality.py`
(tasks `drugs` and `zh`: the drug-review and Chinese-review classifiers) and
`bench/extraction.py` (task `xwoz`: CrossWOZ slot extraction); run them first with the same
--base. Each merge goes through the library call `modelmill adapters merge` makes (peft's
add_weighted_adapter) and is scored with `modelmill eval`'s scoring on both tasks (each by its
headline metric: accuracy, entity F1); scores already in the store are reused.

Goal (issue 15): the best merge keeps at least 95% of each specialist's score on its own task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def task_table(home: Path, tag: str, suffix: str) -> dict:
    """task -> (specialist adapter, task settings), as quality.py and extraction.py name them."""
    data = home / "bench-data"
    return {
        "drugs": (f"q-drugs-lora{tag}{suffix}", {"name": f"q-drugs{suffix}", "kind": "classification",
                                                 "data": f"q-drugs-test{suffix}", "train": f"q-drugs-train{suffix}"}),
        "zh": (f"q-zh-lora{tag}{suffix}", {"name": f"q-zh{suffix}", "kind": "classification",
                                           "data": f"q-zh-test{suffix}", "train": f"q-zh-train{suffix}"}),
        "xwoz": (f"xwoz-{tag.lstrip('-') or 'smollm2-135m-instruct'}{suffix}",
                 {"name": f"crosswoz-extract{suffix}", "kind": "extraction", "max_new_tokens": 96,
                  "data": str(data / f"crosswoz-extract-test{suffix}.jsonl"),
                  "train": str(data / f"crosswoz-extract-train{suffix}.jsonl")}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/mm-quality")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="The base the adapters were trained on.")
    ap.add_argument("--tasks", default="drugs,zh", help="Two of: drugs, zh (quality.py), xwoz (extraction.py).")
    ap.add_argument("--how", default="linear,cat,svd,ties,dare_ties,magnitude_prune",
                    help="Comma-separated merge methods.")
    ap.add_argument("--weights", default="1,1", help="Weights of the two adapters, in --tasks order.")
    ap.add_argument("--density", type=float, default=0.5, help="--density of the pruning methods.")
    ap.add_argument("--limit", type=int, default=0, help="Score only the first N items of each test set (0: all).")
    ap.add_argument("--quick", action="store_true", help="The adapters the benches' --quick runs left.")
    ap.add_argument("--specialists", default="",
                    help="TASK=ADAPTER,... for specialists named otherwise (e.g. drugs=m-drugs-sft, the SFT adapter "
                         "bench/methods.py trains on the same reviews with the same defaults).")
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
    table = task_table(Path(args.home), tag, "-quick" if args.quick else "")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if len(tasks) != 2 or any(t not in table for t in tasks):
        print(f"--tasks: name two of {', '.join(table)}", file=sys.stderr)
        return 2
    specialists = {t: table[t][0] for t in tasks}
    for pair in [p.strip() for p in args.specialists.split(",") if p.strip()]:
        t, _, adapter = pair.partition("=")
        if t not in specialists or not adapter:
            print(f"--specialists: '{pair}' is not TASK=ADAPTER for a task of --tasks", file=sys.stderr)
            return 2
        specialists[t] = adapter
    missing = [a for a in specialists.values() if reg.find(a) is None]
    if missing:
        print(f"needs {', '.join(missing)} in {args.home}: run bench/quality.py or bench/extraction.py there "
              f"with --base {args.base} first", file=sys.stderr)
        return 2
    specs = {t: task_from_dict({**table[t][1], **({"limit": args.limit} if args.limit else {})}) for t in tasks}
    w = [float(x) for x in args.weights.split(",")]
    print(f"base {args.base}, CPU capability {torch.backends.cpu.get_cpu_capability()}; merging "
          + " and ".join(f"{specialists[t]} x{x:g}" for t, x in zip(tasks, w)), flush=True)

    def score(adapter: str) -> dict:
        out = {}
        for t, spec in specs.items():
            r = evaluate(store, spec, [LocalModel(store, adapter)], progress=False)[0]
            out[t] = {"score": r.score, "metric": r.primary, "ms_per_item": 1000 * r.seconds / max(1, r.n_done)}
        return out

    scores = {a: score(a) for a in specialists.values()}
    merges = {}
    for how in [h.strip() for h in args.how.split(",") if h.strip()]:
        name = f"mrg-{'-'.join(tasks)}-{how}-{args.weights.replace(',', '-')}{tag}"
        t0 = time.perf_counter()
        if reg.find(name) is None:
            merge(store, MergeConfig(name=name, how=how, density=args.density,
                                     sources=",".join(f"{specialists[t]}:{x}" for t, x in zip(tasks, w))))
        merges[how] = {"adapter": name, "merge_seconds": time.perf_counter() - t0}
        scores[name] = score(name)
        print(f"  {how}: " + ", ".join(f"{t} {scores[name][t]['score']:.3f}" for t in tasks), flush=True)

    own = {t: scores[specialists[t]][t]["score"] for t in tasks}
    metric = {t: scores[specialists[t]][t]["metric"] for t in tasks}
    print("\n| adapter | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | "
          + " | ".join(f"kept of {t}" for t in tasks) + " |")
    print("|---" * (1 + 2 * len(tasks)) + "|")
    rows = [(f"specialist: {t}", scores[specialists[t]]) for t in tasks]
    rows += [(f"merge: {how}", scores[m["adapter"]]) for how, m in merges.items()]
    best = None
    for label, s in rows:
        kept = [s[t]["score"] / own[t] if own[t] else 0.0 for t in tasks]
        print(f"| {label} | " + " | ".join(f"{s[t]['score']:.3f}" for t in tasks) + " | "
              + " | ".join(f"{100 * k:.1f}%" for k in kept) + " |")
        if label.startswith("merge") and (best is None or min(kept) > best[1]):
            best = (label, min(kept))
    if best:
        print(f"\n{'PASS' if best[1] >= 0.95 else 'MISS'}  best merge ({best[0]}) keeps at least {100 * best[1]:.1f}% "
              f"of each specialist's score (goal 95%)")
    out = ROOT / "bench" / "results" / f"merge-{'-'.join(tasks)}{tag}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "specialists": specialists, "merges": merges, "scores": scores,
                               "cpu": torch.backends.cpu.get_cpu_capability()}, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
