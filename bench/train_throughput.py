"""Training throughput: modelmill's LoRA trainer against plain ``transformers.Trainer`` + peft.

    .venv/bin/python bench/train_throughput.py --examples 128 --steps 6 --batch-size 8 --repeats 2

Both fine-tune the built-in SmolLM2-135M-Instruct with the same LoRA (r 16, alpha 32, dropout
0.05, all-linear) on the same tokenized examples of ``shared/data/reviews-en-drugs`` (sentiment
classification: loss on the answer tokens only), with the same batch size, learning rate,
schedule, seed and number of steps, in fp32 with SDPA attention:

- ours: ``modelmill.train.sft.build_trainer(job)`` then ``trainer.train()``, exactly what
  ``modelmill train`` runs (padding-free batches, per-sequence attention, answers-only LM head);
- baseline: ``transformers.Trainer`` on a peft model, each batch padded to its longest example
  (labels padded with -100), the model's own loss.

Each training runs in a fresh process ('spawn'), alternating baseline, ours, baseline, ours...
so both share whatever else the machine is doing; ratios are medians over the repeats.

- trained tokens/s: real (non-pad) tokens of the examples trained on in steps 2..N, divided by
  the time from the end of step 1 to the end of step N. Step 1 is warm-up (the first touch of
  every activation buffer, library start-up) that a run of hundreds of steps does once; the
  JSON also has the rate over all steps, from ``on_train_begin``. The final checkpoint save
  that ``modelmill train`` does is I/O, not training, and is left out of both;
- peak MB: the training process's peak RSS during ``trainer.train()`` (Linux resets the
  high-water mark just before it; elsewhere it is the whole process's ``ru_maxrss``).

Step 1's loss of both is checked to agree within 1e-4 on the same batch (LoRA B starts at zero,
so dropout cannot change it). Results also go to ``bench/results/train_throughput-<time>.json``.
The model folder comes from the registry (MODELMILL_HOME, default ~/.modelmill; converted once).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "reviews-en-drugs"
LABELS = ["negative", "neutral", "positive"]
LOSS_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=128, help="Training examples (the first N of train.jsonl).")
    p.add_argument("--steps", type=int, default=6, help="Optimizer steps each trainer takes (>= 2; step 1 is warm-up).")
    p.add_argument("--batch-size", type=int, default=8, help="Examples per step.")
    p.add_argument("--repeats", type=int, default=2, help="Baseline/ours pairs, run alternately.")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Torch threads of each training process (default: as `modelmill train` on one process, "
                        "every core). On a machine shared with other busy processes, 1 gives steadier numbers.")
    p.add_argument("--data", type=Path, default=DATA, help="Folder with train.jsonl (text, label).")
    p.add_argument("--base", default="smollm2-135m-instruct", help="The registered base model both trainers train.")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="Folder for the JSON results.")
    a = p.parse_args(argv)
    for flag in ("examples", "batch_size", "repeats", "threads"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if a.steps < 2:
        p.error("--steps must be >= 2 (step 1 is warm-up and is not timed)")
    return a


# ---- the two trainers, each in its own process ------------------------------------------------

def make_job(model_path: str, data_path: str, run_dir: str, steps: int, batch_size: int):
    """The job ``modelmill train`` would launch (runs.prepare: max_length = min(1024, context))."""
    from modelmill.train.sft import SFTConfig, SFTJob

    cfg = SFTConfig(data="reviews-en-drugs", name="bench", max_steps=steps, batch_size=batch_size,
                    max_length=1024, learning_rate=2e-4)
    return SFTJob(config=cfg, base_path=model_path, data_path=data_path, kind="classification",
                  run_dir=run_dir, labels=LABELS)


def build_ours(job):
    from modelmill.train.sft import build_trainer

    return build_trainer(job).trainer


def build_baseline(job):
    """Plain transformers.Trainer + peft, padded to the longest in each batch, same settings as ``job``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    from modelmill.train.sft import build_examples

    cfg = job.config
    tokenizer = AutoTokenizer.from_pretrained(job.base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 10**9
    examples, _ = build_examples(job, tokenizer)  # tokenize_record: the same ids and labels as ours
    model = AutoModelForCausalLM.from_pretrained(job.base_path, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(Path(job.run_dir) / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, save_strategy="no", seed=cfg.seed, report_to=[], disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples), data_collator=collator)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux 4.0+); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def step_clock(trainer) -> list[float]:
    """A list that gets the time training began, then the time each optimizer step ended."""
    from transformers import TrainerCallback

    clock: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            clock.append(time.perf_counter())

    trainer.add_callback(Clock())
    return clock


def train_once(which: str, model_path: str, data_path: str, steps: int, batch_size: int, threads: int,
               log_path: str, queue) -> None:
    """Child process: build one trainer, train it, report tokens, time, memory and step 1."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)  # progress bars and library warnings go to the log; the parent prints its tail on failure
    os.dup2(log, 2)
    import hashlib

    import torch

    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory(prefix=f"mm-bench-{which}-") as run_dir:
        job = make_job(model_path, data_path, run_dir, steps, batch_size)
        trainer = (build_ours if which == "ours" else build_baseline)(job)

        # Count real tokens per collated batch (from the examples, before any padding) ...
        batches: list[int] = []
        first_batch: list[str] = []
        collate = trainer.data_collator

        def counting_collator(features):
            batches.append(sum(len(f["input_ids"]) for f in features))
            if not first_batch:
                first_batch.append(hashlib.sha1(json.dumps([list(f["input_ids"]) for f in features]).encode())
                                   .hexdigest())
            return collate(features)

        trainer.data_collator = counting_collator
        # ... the loss of step 1 ...
        losses: list[float] = []
        compute_loss = trainer.compute_loss

        def first_loss(model, inputs, *a, **kw):
            loss = compute_loss(model, inputs, *a, **kw)
            if not losses:
                losses.append(float(loss.detach()))
            return loss

        trainer.compute_loss = first_loss

        # ... and when training began and each step ended
        clock = step_clock(trainer)
        reset = _reset_peak_rss()
        trainer.train()
        peak = _peak_rss_mb(reset)
        done = trainer.state.global_step
        accum = job.config.grad_accum
        # per optimizer step; the dataloader may collate one batch ahead, which is not counted
        step_tokens = [sum(batches[i * accum:(i + 1) * accum]) for i in range(done)]
    tokens, seconds = sum(step_tokens[1:]), clock[done] - clock[1]
    queue.put(dict(which=which, steps=done, tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds,
                   all_steps_tokens_per_s=sum(step_tokens) / (clock[done] - clock[0]),
                   step_seconds=[b - a for a, b in zip(clock, clock[1:])], step_tokens=step_tokens,
                   peak_rss_mb=peak, peak_rss_of_training=reset, step1_loss=losses[0] if losses else None,
                   first_batch=first_batch[0] if first_batch else None, threads=torch.get_num_threads()))


def run_child(which: str, model_path: str, data_path: str, steps: int, batch_size: int, threads: int,
              log_path: Path) -> dict:
    import queue as queues

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=train_once, args=(which, model_path, data_path, steps, batch_size, threads,
                                                str(log_path), results))
    proc.start()
    while True:
        try:
            result = results.get(timeout=2)
            break
        except queues.Empty:
            if not proc.is_alive():
                tail = log_path.read_text(errors="replace").splitlines()[-30:] if log_path.is_file() else []
                print("\n".join(tail), file=sys.stderr)
                raise SystemExit(f"the {which} training process failed (exit code {proc.exitcode}); "
                                 f"the end of its log is above")
    proc.join()
    return result


# ---- the parent: data, model, alternating runs, report ----------------------------------------

def write_records(src: Path, dest: Path, n: int) -> int:
    """The first ``n`` examples as canonical classification records; how many were written."""
    count = 0
    with src.open(encoding="utf-8") as f, dest.open("w", encoding="utf-8") as out:
        for line in f:
            if count == n:
                break
            if line.strip():
                r = json.loads(line)
                out.write(json.dumps({"text": r["text"], "label": r["label"], "meta": {}}, ensure_ascii=False) + "\n")
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    train_file = a.data / "train.jsonl"
    if not train_file.is_file():
        print(f"skipped: {train_file} not found (the bench needs shared/data/reviews-en-drugs next to the repo; "
              f"or pass --data FOLDER with a train.jsonl of text,label records)")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # as the launcher sets it for a training process

    from modelmill.models.registry import ModelRegistry
    from modelmill.store import open_store

    model_path = ModelRegistry(open_store()).ready(a.base).path
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        data_path = Path(tmp) / "train.jsonl"
        n = write_records(train_file, data_path, a.examples)
        print(f"{n} examples from {train_file}, {a.steps} steps of {a.batch_size}, {a.repeats} repeat(s), "
              f"{a.threads} thread(s), model {model_path}", flush=True)
        for i in range(a.repeats):
            for which in ("baseline", "ours"):
                r = run_child(which, str(model_path), str(data_path), a.steps, a.batch_size, a.threads,
                              Path(tmp) / f"{which}-{i + 1}.log")
                runs[which].append(r)
                print(f"  [{i + 1}/{a.repeats}] {which:8s} {r['tokens_per_s']:7.1f} tokens/s "
                      f"(all steps {r['all_steps_tokens_per_s']:6.1f})  {r['peak_rss_mb']:6.0f} MB  "
                      f"steps {' '.join(f'{t:.1f}' for t in r['step_seconds'])} s  "
                      f"step-1 loss {r['step1_loss']:.6f}", flush=True)

    pairs = list(zip(runs["baseline"], runs["ours"]))
    ratios = {k: [o[k] / b[k] for b, o in pairs] for k in ("tokens_per_s", "all_steps_tokens_per_s", "peak_rss_mb")}
    same_batch = all(b["first_batch"] == o["first_batch"] for b, o in pairs)
    loss_diff = max(abs(b["step1_loss"] - o["step1_loss"]) for b, o in pairs)
    keys = ("tokens_per_s", "all_steps_tokens_per_s", "peak_rss_mb", "tokens", "seconds")
    med = {w: {k: statistics.median(r[k] for r in rs) for k in keys} for w, rs in runs.items()}
    speed, all_speed, memory = (statistics.median(ratios[k]) for k in ratios)
    summary = dict(speed_ratio=speed, all_steps_speed_ratio=all_speed, memory_ratio=memory,
                   per_pair_speed_ratios=ratios["tokens_per_s"], per_pair_memory_ratios=ratios["peak_rss_mb"],
                   step1_loss_max_diff=loss_diff, same_first_batch=same_batch,
                   loss_ok=same_batch and loss_diff <= LOSS_TOLERANCE, goal_met=speed >= 1.5 and memory <= 1.1)

    print()
    print(f"{'':10s} {'tokens/s':>9s} {'(all steps)':>11s} {'peak MB':>8s}   timed: tokens, steps")
    for w in ("baseline", "ours"):
        m = med[w]
        print(f"{w:10s} {m['tokens_per_s']:9.1f} {m['all_steps_tokens_per_s']:11.1f} {m['peak_rss_mb']:8.0f}   "
              f"{m['tokens']:.0f} real tokens in steps 2-{a.steps} (of {n} examples)")
    print(f"{'ours/base':10s} {speed:8.2f}x {all_speed:10.2f}x {memory:7.2f}x   "
          f"medians over {len(pairs)} pair(s); speed per pair: "
          + ", ".join(f"{x:.2f}x" for x in ratios["tokens_per_s"]))
    print(f"goal >= 1.5x tokens/s at <= 1.1x peak memory: {'met' if summary['goal_met'] else 'NOT met'}")
    print(f"step-1 loss: max |ours - baseline| = {loss_diff:.2e} on "
          f"{'the same' if same_batch else 'a DIFFERENT'} first batch "
          f"({'ok' if summary['loss_ok'] else f'NOT within {LOSS_TOLERANCE}'})")

    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"train_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = dict(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, examples=n,
                  model=str(model_path), cpu_count=os.cpu_count(), runs=runs, median=med, summary=summary)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"results: {out}")
    return 0 if summary["loss_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
