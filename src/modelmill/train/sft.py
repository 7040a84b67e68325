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

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from modelmill.errors import InputError

METHODS = ("lora", "full")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings. CLI flags, YAML config keys and REST fields are built from these."""

    base: str = _f("smollm2-135m-instruct", "Base model name from `modelmill models list`.", basic=True)
    data: str = _f("", "Training dataset: NAME or NAME@VERSION from `modelmill data list`.", basic=True)
    name: str = _f("", "Name of the adapter to create (default: <data>-<method>).", basic=True)
    method: str = _f("lora", "lora (adapter weights only) or full (all weights).", choices=METHODS, basic=True)
    epochs: float = _f(0.0, "Passes over the training data (0: 1, or 2 for LoRA on classification data).",
                       basic=True)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use --epochs).")
    time_budget: float = _f(0.0, "Minutes to fit the training into (0: no limit): a few steps are timed, then "
                                 "the step count is cut to what fits and the learning-rate schedule fitted to it.")
    eval_data: str = _f("", "Held-out dataset NAME[@VERSION] whose loss is logged as eval_loss during training.")
    eval_steps: int = _f(0, "Compute the --eval-data loss every N steps, and at the end (0: every --save-steps).")
    learning_rate: float = _f(0.0, "Peak learning rate (0: 2e-4 for lora, 5e-4 for lora on classification data, 2e-5 for full).", basic=True)
    batch_size: int = _f(8, "Examples per optimizer step on each process (before accumulation).")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    max_length: int = _f(0, "Longest example in tokens; longer ones are cut at the end (0: the model's context, at most 1024).")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling alpha.")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path.")
    target_modules: str = _f("all-linear", "Modules that get LoRA: all-linear, or comma-separated names (q_proj,v_proj).")
    warmup: float = _f(0.03, "Warm-up: a fraction of the steps (<1) or a number of steps.")
    scheduler: str = _f("cosine", "Learning-rate schedule: cosine, linear or constant.",
                        choices=("cosine", "linear", "constant", "constant_with_warmup"))
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    save_steps: int = _f(50, "Save a resumable checkpoint every N steps.")
    save_total_limit: int = _f(2, "Checkpoints kept (older ones are deleted).")
    logging_steps: int = _f(5, "Log loss and learning rate every N steps.")
    seed: int = _f(42, "Random seed (data order, LoRA init, dropout).")
    gradient_checkpointing: str = _f("auto", "on, off, or auto (on only for full fine-tuning on CUDA).",
                                     choices=("auto", "on", "off"))
    padding_free: bool = _f(True, "Pack examples without pad tokens (faster); off pads to the longest in a batch.")
    num_processes: int = _f(1, "Training processes (CPU: gloo data parallel; GPU: one per device).")
    device: str = _f("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))

    def __post_init__(self):
        checks = [
            (self.method in METHODS, "--method", f"unknown method '{self.method}'", "use lora or full"),
            (self.epochs >= 0, "--epochs", f"must be >= 0 (0: auto), got {self.epochs}", "e.g. --epochs 1"),
            (self.eval_steps >= 0, "--eval-steps", f"must be >= 0, got {self.eval_steps}", "e.g. --eval-steps 50"),
            (self.max_steps == -1 or self.max_steps > 0, "--max-steps", f"must be -1 or > 0, got {self.max_steps}", "e.g. --max-steps 100"),
            (0 <= self.time_budget <= 10**6, "--time-budget", f"must be minutes >= 0, got {self.time_budget}", "e.g. --time-budget 10"),
            (0 <= self.learning_rate < 1, "--learning-rate", f"must be in [0, 1), got {self.learning_rate}", "e.g. --learning-rate 2e-4"),
            (self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}", "e.g. --batch-size 8"),
            (self.grad_accum >= 1, "--grad-accum", f"must be >= 1, got {self.grad_accum}", "e.g. --grad-accum 1"),
            (self.max_length == 0 or 16 <= self.max_length <= 1_048_576, "--max-length", f"must be 0 or in [16, 1048576], got {self.max_length}", "e.g. --max-length 1024"),
            (1 <= self.lora_r <= 1024, "--lora-r", f"must be in [1, 1024], got {self.lora_r}", "e.g. --lora-r 16"),
            (self.lora_alpha >= 1, "--lora-alpha", f"must be >= 1, got {self.lora_alpha}", "e.g. --lora-alpha 32"),
            (0 <= self.lora_dropout < 1, "--lora-dropout", f"must be in [0, 1), got {self.lora_dropout}", "e.g. --lora-dropout 0.05"),
            (self.warmup >= 0, "--warmup", f"must be >= 0, got {self.warmup}", "e.g. --warmup 0.03"),
            (self.save_steps >= 1, "--save-steps", f"must be >= 1, got {self.save_steps}", "e.g. --save-steps 50"),
            (self.save_total_limit >= 1, "--save-total-limit", f"must be >= 1, got {self.save_total_limit}", "e.g. --save-total-limit 2"),
            (self.logging_steps >= 1, "--logging-steps", f"must be >= 1, got {self.logging_steps}", "e.g. --logging-steps 5"),
            (1 <= self.num_processes <= 64, "--num-processes", f"must be in [1, 64], got {self.num_processes}", "e.g. --num-processes 2"),
        ]
        for ok, flag, msg, fix in checks:
            if not ok:
                raise InputError(msg, field=flag, fix=fix)
        if self.scheduler not in ("cosine", "linear", "constant", "constant_with_warmup"):
            raise InputError(f"unknown schedule '{self.scheduler}'", field="--scheduler",
                             fix="use cosine, linear, constant or constant_with_warmup")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise InputError(f"must be auto, on or off, got '{self.gradient_checkpointing}'",
                             field="--gradient-checkpointing", fix="e.g. --gradient-checkpointing off")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"must be auto, cpu or cuda, got '{self.device}'", field="--device", fix="e.g. --device cpu")

    @property
    def lr(self) -> float:
        return self.lr_for("chat")

    def lr_for(self, kind: str) -> float:
        """The learning rate to use on data of ``kind``. Classification answers are a few label
        tokens, so LoRA gets a higher rate: on 2,000 Chinese reviews, 5e-4 passed TF-IDF + LR
        (0.823 vs 0.803 accuracy on 300 held-out) where 2e-4 on 1,000 had stayed below it."""
        if self.learning_rate:
            return self.learning_rate
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

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class SFTJob:
    """Everything the training process needs, resolved by the launcher: no registry look-ups here."""

    config: SFTConfig
    base_path: str
    data_path: str
    kind: str
    run_dir: str
    labels: list[str] | None = None
    chat_template: str | None = None
    resume: bool = False
    eval_path: str | None = None  # the held-out records of config.eval_data, the same kind as data_path

    def save(self, path: Path) -> None:
        d = asdict(self)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(d, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "SFTJob":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d["config"] = SFTConfig(**d["config"])
        return cls(**d)


def build_examples(job: SFTJob, tokenizer, path: str | None = None) -> tuple[list[dict], int]:
    """Tokenized examples (input_ids, labels) of ``path`` (default: the training data) and how many
    were dropped for having no answer left."""
    from modelmill.data.load import read_jsonl
    from modelmill.train.chat_tokens import tokenize_record

    out, dropped = [], 0
    for rec in read_jsonl(path or job.data_path):
        ex = tokenize_record(rec, job.kind, tokenizer, job.config.max_length, labels=job.labels,
                             chat_template=job.chat_template)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


@dataclass
class TrainerSetup:
    """A trainer ready to ``train()``, with what ``run`` reports and saves afterwards."""

    trainer: object
    tokenizer: object
    stop: object
    examples: int
    dropped: int
    tokens: int


def build_trainer(job: SFTJob) -> TrainerSetup:
    """Steps 1-3 of ``run``: tokenizer, data, model and trainer, everything up to ``trainer.train()``.
    Benchmarks (bench/train_throughput.py) call it to time exactly the training that ``run`` does."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TrlSFTConfig
    from transformers.utils import logging as hf_logging
    from trl import SFTTrainer

    from modelmill.train.answer_head import score_answers_only
    from modelmill.train.callbacks import GracefulStop, MetricsLogCallback, ProgressCallback, TimeBudget
    from modelmill.train.varlen_attention import register as register_varlen

    cfg = job.config
    run_dir = Path(job.run_dir)
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    stop = GracefulStop()  # installed first: Ctrl-C while loading still stops cleanly
    hf_logging.disable_progress_bar()  # our own bar (callbacks.ProgressCallback) is the one that counts

    # 1. tokenizer and data
    tokenizer = AutoTokenizer.from_pretrained(job.base_path)
    if job.chat_template:
        tokenizer.chat_template = job.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 10**9  # truncation is ours (build_examples), not the tokenizer's
    examples, dropped = build_examples(job, tokenizer)
    if not examples:
        raise InputError("no training example has an answer token left after truncation",
                         file=job.data_path, field="--max-length", fix="raise --max-length")
    train_ds = Dataset.from_list(examples)
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    eval_ds = None
    if job.eval_path:
        held_out, _ = build_examples(job, tokenizer, job.eval_path)
        if not held_out:
            raise InputError("no held-out example has an answer token left after truncation",
                             file=job.eval_path, field="--eval-data", fix="raise --max-length")
        eval_ds = Dataset.from_list(held_out)

    # 2. model
    dtype = torch.bfloat16 if use_cuda and torch.cuda.is_bf16_supported() else torch.float32
    attn = register_varlen() if cfg.padding_free else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(job.base_path, dtype=dtype, attn_implementation=attn)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
            t.strip() for t in cfg.target_modules.split(",") if t.strip()]
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=targets, task_type="CAUSAL_LM")
    checkpointing = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and cfg.method == "full" and use_cuda)

    # 3. trainer
    # The loss reads only answer tokens, so only they go through the LM head (trl does so on CUDA only)
    score_answers_only()
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tb")
    args = TrlSFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if eval_ds is not None else None,
        per_device_eval_batch_size=cfg.batch_size,
        prediction_loss_only=True,  # the loss is all we read; no logits gathered over the vocabulary
        seed=cfg.seed,
        report_to=["tensorboard"],
        disable_tqdm=True,
        use_cpu=not use_cuda,
        bf16=dtype == torch.bfloat16,
        activation_checkpointing=checkpointing,
        padding_free=cfg.padding_free,
        max_length=None,  # examples are already cut to cfg.max_length in build_examples
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if cfg.num_processes > 1 else None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    if peft_config is not None:
        _fuse_lora(trainer.model)  # the same LoRA, in fewer passes over memory
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

    trainer.remove_callback(HFProgress)
    trainer.remove_callback(PrinterCallback)
    # the time budget first: the bar and the metrics log then see the step count it sets
    budget = [TimeBudget(cfg.time_budget * 60, run_dir / "time_budget.json")] if cfg.time_budget else []
    for cb in (*budget, ProgressCallback(), MetricsLogCallback(run_dir / "metrics.jsonl"), stop):
        trainer.add_callback(cb)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(examples), dropped=dropped,
                        tokens=n_tokens)


def run(job: SFTJob) -> dict:
    """Build the trainer, train, save: what ``modelmill train`` runs in each training process."""
    p = build_trainer(job)
    trainer, stop, run_dir = p.trainer, p.stop, Path(job.run_dir)

    # 4. train
    last = _last_checkpoint(run_dir / "checkpoints") if job.resume else None
    done = _finished(last)
    if done is not None:
        # Stopped after its last step's checkpoint but before publishing: the weights are final.
        # (Trainer would run one more step on a resume from max_steps.)
        trainer._load_from_checkpoint(last)
        trainer.state = done
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics = {"train_runtime": 0.0, "epoch": trainer.state.epoch, "resumed_at_last_step": True,
                   **({"train_loss": sum(losses) / len(losses)} if losses else {})}
    else:
        result = trainer.train(resume_from_checkpoint=True if last is not None else None)
        metrics = dict(result.metrics)
    if job.eval_path and not stop.stopped:
        # the final weights' held-out loss (also logged to metrics.jsonl as the last eval_loss)
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        final = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
        metrics.update({k: v for k, v in final.items() if k in ("eval_loss", "eval_mean_token_accuracy")})
    metrics.update(examples=p.examples, dropped_examples=p.dropped, example_tokens=p.tokens,
                   global_step=trainer.state.global_step, num_processes=trainer.args.world_size,
                   interrupted=stop.stopped)

    # 5. save (main process only): the adapter, or full weights, plus the tokenizer
    if trainer.is_world_process_zero():
        if not stop.stopped:
            final = run_dir / "final"
            trainer.save_model(str(final))
            p.tokenizer.save_pretrained(str(final))
        (run_dir / "result.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _fuse_lora(model) -> int:
    """``fused_lora.fuse_lora_layers``, or nothing when this peft has moved its LoRA layer."""
    try:
        from modelmill.train.fused_lora import fuse_lora_layers
    except ImportError:
        return 0
    return fuse_lora_layers(model)


def _finished(checkpoint: str | None):
    """The TrainerState saved with ``checkpoint`` when it was saved at the run's last step, else None."""
    from transformers.trainer_callback import TrainerState

    if checkpoint is None:
        return None
    try:
        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    except (OSError, ValueError, TypeError):
        return None
    return state if state.max_steps and state.global_step >= state.max_steps else None


def _last_checkpoint(folder: Path):
    """The newest whole checkpoint. One a killed trainer or a full disk left half-written (no
    trainer_state.json: the Trainer writes it last) is removed first; Trainer would fail on it."""
    from transformers.trainer_utils import get_last_checkpoint

    drop_partial_checkpoints(folder)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m modelmill.train.sft JOB.json", file=sys.stderr)
        return 2
    job = SFTJob.load(Path(argv[0]))
    try:
        metrics = run(job)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a full or read-only disk while saving: one line, the checkpoints before it stay
        from modelmill.errors import storage_error

        err = storage_error(e)
        if err is None:
            raise
        drop_partial_checkpoints(Path(job.run_dir) / "checkpoints")
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()
    return 130 if metrics.get("interrupted") else 0


def drop_partial_checkpoints(folder: Path) -> None:
    """A checkpoint the disk could not finish has no trainer_state.json (the Trainer writes it last):
    it goes, so that --resume starts from the last whole one."""
    import shutil

    for ck in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (ck / "trainer_state.json").is_file():
            shutil.rmtree(ck, ignore_errors=True)


def _leave_process_group() -> None:
    """Wait for every rank (rank 0 may still be saving), then shut the group down cleanly: a rank
    that exits with the gloo group still up can abort in its destructor ("terminate called ...")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
