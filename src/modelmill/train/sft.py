"""Supervised fine-tuning (LoRA by default, or full) with trl + peft, run as one process per device.

    modelmill train --base smollm2-135m-instruct --data reviews-train --name reviews-lora
    # what the launcher runs underneath (one job file per run):
    accelerate launch [--multi_gpu --num_processes N] -m modelmill.train.sft ~/.modelmill/runs/reviews-lora/job.json

Reads top to bottom: settings, then ``build_trainer`` (load tokenizer and data, load model, build the
trainer), then ``run`` (train, save). Speed: sequences are packed padding-free (no pad tokens are
ever computed; see ``varlen_attention``), and only answer tokens go through the LM head (see
``answer_head``). ``bench/train_throughput.py`` measures both against plain ``transformers.Trainer``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modelmill.train import common
from modelmill.train.common import TrainerSetup, drop_partial_checkpoints  # noqa: F401  (benches, jobs use them)
from modelmill.train.config import TrainConfig, TrainJob, _f

METHODS = ("lora", "full")
SFTJob = TrainJob  # the name benches and older code use


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: LoRA (default) or all weights, on chat or classification data."""

    METHODS = METHODS

    method: str = _f("lora", "Training method: lora or full (supervised fine-tuning), dpo, orpo, kto or cpt.",
                     choices=("lora", "full", "dpo", "orpo", "kto", "cpt"), basic=True)
    epochs: float = _f(0.0, "Passes over the training data (0: 1, or 2 for LoRA on classification data).",
                       basic=True)
    learning_rate: float = _f(0.0, "Peak learning rate (0: 2e-4 for lora, 5e-4 for lora on classification data, "
                                   "2e-5 for full).", basic=True)
    padding_free: bool = _f(True, "Pack examples without pad tokens (faster); off pads to the longest in a batch.")

    @property
    def full_weights(self) -> bool:
        return self.method == "full"

    def default_lr(self, kind: str) -> float:
        """Classification answers are a few label tokens, so LoRA gets a higher rate: on 2,000 Chinese
        reviews, 5e-4 passed TF-IDF + LR (0.823 vs 0.803 accuracy on 300 held-out) where 2e-4 on 1,000
        had stayed below it."""
        if self.method != "lora":
            return 2e-5
        return 5e-4 if kind == "classification" else 2e-4

    def epochs_for(self, kind: str) -> float:
        """Passes over data of ``kind``: the ones asked for, else 1, or 2 for LoRA on
        classification data, where a label of a few tokens per example gives one pass little
        signal (see bench/quality.py in the README)."""
        if self.epochs:
            return self.epochs
        return 2.0 if kind == "classification" and self.method == "lora" else 1.0


def build_examples(job: TrainJob, tokenizer, path: str | None = None) -> tuple[list[dict], int]:
    """Tokenized examples (input_ids, labels) of ``path`` (default: the training data) and how many
    were dropped for having no answer left."""
    from modelmill.data.load import read_jsonl
    from modelmill.data.chat_tokens import tokenize_record

    out, dropped = [], 0
    for rec in read_jsonl(path or job.data_path):
        ex = tokenize_record(rec, job.kind, tokenizer, job.config.max_length, labels=job.labels,
                             chat_template=job.chat_template)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


def build_trainer(job: TrainJob) -> TrainerSetup:
    """Everything up to ``trainer.train()``: tokenizer and data, model, trainer. Benchmarks
    (bench/train_throughput.py) call it to time exactly the training that ``run`` does."""
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from modelmill.train.varlen_attention import register as register_varlen

    cfg = job.config
    stop = common.start()

    # 1. tokenizer and data
    tokenizer = common.load_tokenizer(job)
    tokenizer.model_max_length = 10**9  # truncation is ours (build_examples), not the tokenizer's
    examples, dropped = build_examples(job, tokenizer)
    common.require(examples, "training example with an answer token", job)
    train_ds = Dataset.from_list(examples)
    eval_ds = None
    if job.eval_path:
        held_out, _ = build_examples(job, tokenizer, job.eval_path)
        common.require(held_out, "held-out example with an answer token", job, job.eval_path)
        eval_ds = Dataset.from_list(held_out)

    # 2. model: fresh LoRA, the --from adapter, or all weights
    model, peft_config, dtype = common.load_model(job, attn=register_varlen() if cfg.padding_free else "sdpa")

    # 3. trainer. The loss reads only answer tokens, so only they go through the LM head
    # (common.fast_paths; trl does so on CUDA only), and LoRA runs fused
    args = TrlSFTConfig(
        **common.trainer_args(job, dtype, has_eval=eval_ds is not None),
        prediction_loss_only=True,  # the loss is all we read; no logits gathered over the vocabulary
        padding_free=cfg.padding_free,
        max_length=None,  # examples are already cut to cfg.max_length in build_examples
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    common.fast_paths(trainer, job)
    common.add_callbacks(trainer, job, stop)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(examples), dropped=dropped,
                        tokens=sum(len(e["input_ids"]) for e in examples))


def run(job: TrainJob) -> dict:
    """Build the trainer, train, save: what ``modelmill train --method lora|full`` runs in each process."""
    return common.run(job, build_trainer)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, build_trainer, "modelmill.train.sft")


if __name__ == "__main__":
    sys.exit(main())
