"""Chinese extraction on CrossWOZ: what the user asks for (slot -> value), scored per entity, for the
base model zero-shot, a LoRA adapter fine-tuned with modelmill's defaults, and the classical
baselines learned from the same training dialogues (gazetteer, CRF).

    .venv/bin/python bench/extraction.py --home /tmp/mm-extract             # about 30 min on 2 CPU cores
    .venv/bin/python bench/extraction.py --home /tmp/mm-extract --quick     # small subsets, a few minutes

Needs ../shared/data/crosswoz. The dialogues are split by dialogue (seeded), never by turn. Every
user turn's Inform acts whose value stands word for word in the turn become one item: the text is
the turn, the answer a JSON object {"domain-slot": [values]} (e.g. {"餐馆-推荐菜": ["驴杂汤"],
"餐馆-人均消费": ["100-150元"]}). Values the user only implies, or that are one character long, are
left out, since no extractor can copy them; a facility asked for ("酒店设施-租车": 是) becomes
its name under "酒店-酒店设施" where the turn names it. Training and scoring are the grid a user runs
(`modelmill grid --bases ... --baselines zero-shot,classical`, the same library call), which names
the winner; results land in the home, so `modelmill leaderboard` and `modelmill report` show them
afterwards.

Goal (issue 16): the best fine-tuned base beats the dictionary (gazetteer) baseline by 10 points
of entity F1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Short on purpose: SmolLM2's tokenizer spends 2 tokens on a Chinese character, and the prompt is
# in every training example (the fine-tune learns the 17 keys from the answers).
INSTRUCTION = "抽取用户提出的条件，输出JSON：{{\"领域-槽位\": [原文词语]}}。"


def turns(dialogues: list[dict]) -> list[dict]:
    """One item per user turn with at least one Inform value found word for word in it."""
    out = []
    for d in dialogues:
        for m in d["messages"]:
            if m["role"] != "user":
                continue
            got: dict[str, list[str]] = {}
            for act, domain, slot, value in m.get("dialog_act") or []:
                if act == "Inform" and slot.startswith("酒店设施-") and value == "是":
                    slot, value = "酒店设施", slot.split("-", 1)[1]  # a facility asked for: its name
                if act != "Inform" or not isinstance(value, str) or len(value.strip()) < 2 or value not in m["content"]:
                    continue
                vals = got.setdefault(f"{domain}-{slot}", [])
                if value not in vals:
                    vals.append(value)
            if got:
                out.append({"dialogue": d["id"], "text": m["content"], "output": got})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/mm-extract")
    ap.add_argument("--quick", action="store_true", help="Small subsets: checks the bench, measures little.")
    ap.add_argument("--test-dialogues", type=int, default=100, help="Dialogues held out for testing (of 500).")
    ap.add_argument("--test-items", type=int, default=200, help="Score at most this many held-out turns.")
    ap.add_argument("--train-minutes", type=float, default=15.0, help="--time-budget of the fine-tune.")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="Comma-separated registered bases to fine-tune.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = SHARED / "crosswoz" / "dialogues.jsonl"
    if not src.is_file():
        print(f"needs the CrossWOZ dialogues at {src}", file=sys.stderr)
        return 2
    if args.quick:
        args.test_dialogues, args.test_items, args.train_minutes = 20, 30, 2.0
    os.environ["MODELMILL_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from modelmill.data.catalog import DatasetCatalog
    from modelmill.evaluate import grid
    from modelmill.evaluate.tasks import task_from_dict
    from modelmill.store import open_store
    from modelmill.train.runs import train
    from modelmill.train.sft import SFTConfig

    dialogues = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    random.Random(args.seed).shuffle(dialogues)
    test_d, train_d = dialogues[:args.test_dialogues], dialogues[args.test_dialogues:]
    if args.quick:
        train_d = train_d[:80]
    train_items, test_items = turns(train_d), turns(test_d)[:args.test_items]
    keys = sorted({k for it in train_items for k in it["output"]})
    instruction = INSTRUCTION.format()
    suffix = "-quick" if args.quick else ""
    folder = Path(args.home) / "bench-data"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, rows):
        p = folder / f"{name}{suffix}.jsonl"
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return p

    # the eval files (text + output), and the same training turns as instruction data for the fine-tune:
    # the prompt a fine-tune sees is the one evaluation asks (instruction, blank line, "Text: ...")
    train_file = write("crosswoz-extract-train", [{"instruction": instruction, "text": r["text"], "output": r["output"]}
                                                  for r in train_items])
    test_file = write("crosswoz-extract-test", [{"instruction": instruction, "text": r["text"], "output": r["output"]}
                                                for r in test_items])
    sft_file = write("crosswoz-extract-sft", [{"instruction": instruction, "input": f"Text: {r['text']}",
                                               "output": json.dumps(r["output"], ensure_ascii=False)}
                                              for r in train_items])
    store = open_store()
    DatasetCatalog(store).import_file(sft_file, f"xwoz-extract{suffix}")
    print(f"CrossWOZ: {len(train_d)} training dialogues -> {len(train_items)} turns; {len(test_d)} test dialogues -> "
          f"{len(test_items)} turns scored; {len(keys)} domain-slot keys. CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, torch threads {torch.get_num_threads()}", flush=True)

    # the grid a user runs (`modelmill grid --bases a,b --baselines zero-shot,classical`), through the
    # same library call; each cell keeps the adapter name earlier runs of this bench gave it
    bases = [b.strip() for b in args.base.split(",") if b.strip()]
    template = SFTConfig(epochs=1, time_budget=args.train_minutes)
    cells = [replace(c, config=replace(c.config, name=f"xwoz-{c.base}{suffix}"))
             for c in grid.plan(bases, [f"xwoz-extract{suffix}"], ["lora"], template)]
    trained = {}

    def train_cell(cfg, resume):
        print(f"\n== fine-tuning {cfg.name}: {len(train_items)} turns, 1 epoch, time budget "
              f"{args.train_minutes:g} min", flush=True)
        t = time.perf_counter()
        row = train(store, cfg, resume=resume)
        trained[cfg.name] = {"seconds": time.perf_counter() - t, "steps": (row.metrics or {}).get("global_step")}

    spec = task_from_dict({"name": f"crosswoz-extract{suffix}", "kind": "extraction", "data": str(test_file),
                           "train": str(train_file), "max_new_tokens": 96})
    print(f"\n== the grid: {len(cells)} cells, then {len(test_items)} held-out turns scored", flush=True)
    out = grid.run(store, spec, cells, baselines=["zero-shot", "classical"], train_fn=train_cell, progress=False)
    rows = out.rows

    print("\n| candidate | kind | entity F1 | precision | recall | field F1 | exact | valid JSON | ms/item |")
    print("|---|---|---|---|---|---|---|---|---|")
    res = {}
    for r in sorted(rows, key=lambda r: -r.metrics["entity_f1"]):
        m = r.metrics
        res[r.candidate] = {k: m[k] for k in ("entity_f1", "entity_precision", "entity_recall", "field_f1",
                                              "exact_match", "valid_json")}
        res[r.candidate]["ms_per_item"] = 1000 * r.seconds / max(1, r.n_done)
        print(f"| {r.candidate} | {r.candidate_kind} | {m['entity_f1']:.3f} | {m['entity_precision']:.3f} | "
              f"{m['entity_recall']:.3f} | {m['field_f1']:.3f} | {m['exact_match']:.3f} | {m['valid_json']:.3f} | "
              f"{res[r.candidate]['ms_per_item']:.0f} |")
    print()
    for line in grid.summary_lines(out.summary):
        print(line)
    best = max((v["entity_f1"], k) for k, v in res.items() if ":" in k)
    gaz = res["gazetteer"]["entity_f1"]
    ok = best[0] - gaz >= 0.10
    print(f"\n{'PASS' if ok else 'MISS'}  best fine-tune ({best[1]}) {best[0]:.3f} vs gazetteer {gaz:.3f}: "
          f"{100 * (best[0] - gaz):+.1f} points (goal +10)")
    path = ROOT / "bench" / "results" / ("extraction-quick.json" if args.quick else "extraction.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "train_turns": len(train_items), "test_turns": len(test_items),
                               "keys": keys, "trained": trained, "results": res, "summary": out.summary,
                               "cpu": torch.backends.cpu.get_cpu_capability()}, indent=2, ensure_ascii=False),
                   encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
