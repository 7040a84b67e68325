"""Dialogue bots on CrossWOZ, measured: understanding against two baselines, whole dialogues, and what
serving the four modules together costs.

    # the bot: data from the annotations, tables, three module adapters (about 55 min on 2 AVX2 cores)
    MODELMILL_HOME=/tmp/mm-bot modelmill apps bot build cw --dialogues ../shared/data/crosswoz/dialogues.jsonl \
        --database ../shared/data/crosswoz/database --time-budget 35
    .venv/bin/python bench/bots.py --home /tmp/mm-bot --bot cw            # ~25 min on 2 AVX2 cores

The split is the bot's own (by dialogue, 403 to train on, 97 held out). On the first --dialogues held-out
dialogues (every user turn, the dataset's previous system turn as context):

1. User dialogue-act F1 (act, domain, slot, value all right) for (a) the base model prompted with the
   same instructions and a few examples per module, (b) TF-IDF over character n-grams + one-vs-rest
   logistic regression, values from a lexicon of every training value and the tables' own cells, and
   (c) the bot's fine-tuned intent and extract modules. The baseline (b) is also scored on every held-out turn.
2. Whole dialogues replayed through the fine-tuned bot (state, lookup, policy, answer module): database-
   query match (the tracked constraints equal the wizard's search at each system turn), inform and success.
3. Serving: one module's request alone against the four modules' requests at once (each the module's real
   prompt for the next held-out user turn, 32 tokens forced), on one engine: the ratio of wall times,
   medians of repeats, with the engine's prefix cache on (the modules' instructions and examples are
   computed once) and off, in turn.

Goals (issue 17): (c) beats (a) and (b) by 10 F1 points or more; four modules cost at most 1.3x one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


async def module_latency(services, bot, dialogues, repeats: int, tokens: int = 32) -> dict:
    """One module's request alone vs the four modules' requests together, each with its real prompt.
    Every repeat takes the next user turn of the held-out dialogues (a bot's modules see a new turn
    each time, after the same instructions and examples), with the engines' prefix cache on and
    off in turn."""
    import uuid

    from modelmill.apps import dialogue as dlg
    from modelmill.apps.bot_data import user_turns
    from modelmill.serve.engine import GenerationRequest, SamplingParams

    turns = [t for d in dialogues for t in user_turns(d)][:2 * repeats + 2]
    if len(turns) < 2 * repeats + 2:
        raise SystemExit(f"latency: {len(turns)} user turns in the held-out dialogues, {2 * repeats + 2} needed")

    async def prepare(prev, turn):
        prompts = {
            "intent": dlg.module_messages("intent", user=turn["content"], previous=prev),
            "extract": dlg.module_messages("extract", user=turn["content"], previous=prev),
            "followup": dlg.module_messages("followup", user=turn["content"], domain="出租", missing=["出发地"],
                                            examples=bot.modules["followup"].examples),
            "answer": dlg.module_messages("answer", user=turn["content"], acts=[["Inform", "酒店", "名称", "北京饭店"]]),
        }
        prepared = {}
        for m, msgs in prompts.items():
            model = bot.modules[m].model
            target, spec = await services.resolver.resolve_request(model, msgs)
            engine = await services.router.engine_for(target, spec)
            text = engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
            prepared[m] = (engine, ids, target.adapter)
        return prepared

    async def gen(prepared, m):
        engine, ids, adapter = prepared[m]
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        n = 0
        async for o in engine.generate(GenerationRequest(f"bench-{uuid.uuid4().hex[:12]}", ids, params, adapter)):
            n = o.completion_tokens
        return n

    async def timed(prepared, mods):
        t = time.perf_counter()
        counts = await asyncio.gather(*(gen(prepared, m) for m in mods))
        return time.perf_counter() - t, counts

    first = await prepare(*turns[0])
    engines = {id(p[0]): p[0] for p in first.values()}
    budgets = {k: getattr(getattr(e, "prefix_cache", None), "budget", None) for k, e in engines.items()}

    def cache(on: bool):
        for k, e in engines.items():
            if budgets[k] is not None:
                e.prefix_cache.budget = budgets[k] if on else 0

    await timed(first, ["extract"])
    await timed(await prepare(*turns[1]), list(first))  # warm: every adapter loaded, the prefixes cached
    times = {True: ([], []), False: ([], [])}
    for r in range(repeats):
        for on in (True, False):
            cache(on)
            prepared = await prepare(*turns[2 + 2 * r + (0 if on else 1)])
            times[on][0].append((await timed(prepared, ["extract"]))[0])
            times[on][1].append((await timed(prepared, list(prepared)))[0])
    cache(True)
    out = {"tokens": tokens, "repeats": repeats, "engines": len(engines),
           "prefix_cache": any(b for b in budgets.values())}
    for on, key in ((True, ""), (False, "no_cache_")):
        a, b = statistics.median(times[on][0]), statistics.median(times[on][1])
        out.update({f"{key}one_ms": round(a * 1000, 1), f"{key}four_ms": round(b * 1000, 1),
                    f"{key}ratio": round(b / a, 3)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--bot", default="cw")
    ap.add_argument("--split-of", default="", help="The built bot whose train/test split to use (default: --bot), "
                                                 "for a bot made with `apps bot create` from another's modules.")
    ap.add_argument("--dialogues", type=int, default=40, help="Held-out dialogues scored by the models.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parts", default="nlu,prompted,replay,latency",
                    help="nlu: TF-IDF and the fine-tuned modules; prompted: the base with a few examples a module.")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bots.json"))
    args = ap.parse_args()
    os.environ["MODELMILL_HOME"] = args.home
    import torch

    from modelmill.apps import bot_data
    from modelmill.apps.bot_eval import (
        TfidfActs,
        evaluate_dialogues,
        evaluate_nlu,
        prf,
        prf_by_act,
        table_lexicon,
        turns_of,
    )
    from modelmill.apps.bots import Module, get_bot
    from modelmill.apps.flows import FlowServices
    from modelmill.store import open_store

    store = open_store()
    bot = get_bot(store, args.bot)
    folder = Path(args.home) / "files" / "bots" / (args.split_of or args.bot)
    train = bot_data.read_dialogues(folder / "train.jsonl")
    test_all = bot_data.read_dialogues(folder / "test.jsonl")
    test = test_all[: args.dialogues]
    test_turns = turns_of(test)
    gold = [g for _, _, g in test_turns]
    parts = set(args.parts.split(","))
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {cap}, {os.cpu_count()} CPUs; bot {args.bot} on {bot.base}: "
          + ", ".join(f"{m.name}={m.model}{' (prompt)' if m.examples else ''}" for m in bot.modules.values()))
    print(f"{len(train)} training dialogues, {len(test_all)} held out; models scored on the first {len(test)} "
          f"({len(test_turns)} user turns)")
    result: dict = {"cpu": cap, "bot": args.bot, "train_dialogues": len(train), "test_dialogues": len(test),
                    "test_turns": len(test_turns)}

    async def run():
        services = FlowServices.local(store)
        try:
            if "nlu" in parts:
                t = time.perf_counter()
                base = TfidfActs.fit(train, lexicon=table_lexicon(store, {d: s.table for d, s in bot.domains.items()}))
                pred = [base.predict(p, u) for p, u, _ in test_turns]
                result["tfidf"] = {**prf(pred, gold), "by_act": prf_by_act(pred, gold)}
                every = turns_of(test_all)
                result["tfidf_all_test"] = prf([base.predict(p, u) for p, u, _ in every], [g for _, _, g in every])
                print(f"  TF-IDF + one-vs-rest: F1 {result['tfidf']['f1']:.3f} (every held-out turn: "
                      f"{result['tfidf_all_test']['f1']:.3f}) [{time.perf_counter() - t:.0f} s]")
                print("    by act: " + ", ".join(f"{k} F1 {v['f1']:.3f}" for k, v in result["tfidf"]["by_act"].items()))
            if "prompted" in parts:
                data = bot_data.examples(train)
                prompted = type(bot)(bot.name, bot.base, dict(bot.modules), bot.domains, bot.description, bot.max_rows)
                for m in ("intent", "extract"):
                    prompted.modules[m] = Module(m, bot.base, bot_data.few_shot(data[m], 4), bot.modules[m].max_tokens)
                t = time.perf_counter()
                result["prompted"] = await evaluate_nlu(services, prompted, test)
                print(f"  prompted {bot.base} (4 examples a module): F1 {result['prompted']['f1']:.3f} "
                      f"[{time.perf_counter() - t:.0f} s]")
            if "nlu" in parts:
                t = time.perf_counter()
                result["fine_tuned"] = await evaluate_nlu(services, bot, test, examples=len(test_turns))
                print(f"  fine-tuned modules: F1 {result['fine_tuned']['f1']:.3f} "
                      f"(P {result['fine_tuned']['precision']:.3f} R {result['fine_tuned']['recall']:.3f}) "
                      f"[{time.perf_counter() - t:.0f} s]")
                print("    by act: " + ", ".join(f"{k} F1 {v['f1']:.3f} (P {v['precision']:.3f} R {v['recall']:.3f})"
                                            for k, v in result["fine_tuned"]["by_act"].items()))
                for ex in result["fine_tuned"]["examples"][:3]:
                    print(f"    {ex['user'][:50]}\n      gold: {ex['gold'].replace(chr(10), '; ')}\n"
                          f"      ours: {ex['predicted'].replace(chr(10), '; ')}")
            if "replay" in parts:
                t = time.perf_counter()
                result["replay"] = await evaluate_dialogues(services, bot, test)
                r = result["replay"]
                print(f"  whole dialogues ({r['scored_dialogues']} with a table sub-goal): db-query match "
                      f"{r['db_query_match']} over {r['db_query_turns']} turns (slots {r['db_slot_accuracy']}), "
                      f"inform {r['inform']}, success {r['success_acts']} (acts) / {r['success_words']} (words), "
                      f"turn p50 {r['turn_ms_p50']} ms [{time.perf_counter() - t:.0f} s]")
            if "latency" in parts:
                result["latency"] = await module_latency(services, bot, test, args.repeats)
                lat = result["latency"]
                print(f"  one module {lat['one_ms']} ms, four modules together {lat['four_ms']} ms: "
                      f"{lat['ratio']:.2f}x ({lat['tokens']} tokens each, {lat['engines']} engine, "
                      f"median of {lat['repeats']}, a new user turn each)")
                print(f"  without the prefix cache: one module {lat['no_cache_one_ms']} ms, four "
                      f"{lat['no_cache_four_ms']} ms: {lat['no_cache_ratio']:.2f}x")
        finally:
            await services.close()

    asyncio.run(run())
    print()
    ok = True
    if "fine_tuned" in result:
        f = result["fine_tuned"]["f1"]
        for name in (n for n in ("prompted", "tfidf") if n in result):
            gain = (f - result[name]["f1"]) * 100
            met = gain >= 10
            ok &= met
            print(f"{'MET ' if met else 'MISS'}  fine-tuned vs {name}: {gain:+.1f} F1 points (goal +10)")
    if "latency" in result:
        met = result["latency"]["ratio"] <= 1.3
        ok &= met
        print(f"{'MET ' if met else 'MISS'}  four modules in one batch: {result['latency']['ratio']:.2f}x one "
              f"(goal <= 1.3x) [{cap}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
