"""What every method's training process shares: loading the tokenizer and the model (fresh LoRA, an
adapter to continue, or QLoRA), the trainer arguments, our callbacks, and train -> resume -> save.

A method's file builds its trl trainer with these and hands ``run`` its ``build_trainer``:

    def main(argv=None):
        return common.main(argv, build_trainer)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from modelmill.errors import InputError
from modelmill.train.config import TrainJob


@dataclass
class TrainerSetup:
    """A trainer ready to ``train()``, with what ``run`` reports and saves afterwards."""

    trainer: object
    tokenizer: object
    stop: object
    examples: int
    dropped: int
    tokens: int
    extra: dict = field(default_factory=dict)  # the method's own figures for the metrics (CPT: its token mix)


def use_cuda(cfg) -> bool:
    import torch

    return torch.cuda.is_available() and cfg.device != "cpu"


def load_tokenizer(job: TrainJob):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.base_path)  # a --from adapter saved this same one
    if job.chat_template:
        tokenizer.chat_template = job.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(job: TrainJob, attn: str = "sdpa"):
    """The model to train and the LoRA config to give the trainer (None when the model already holds
    its adapter: a ``--from`` adapter loaded trainable, or a full fine-tune), and the dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = job.config
    cuda = use_cuda(cfg)
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    kw = {}
    if cfg.quantize == "4bit":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(job.base_path, dtype=dtype, attn_implementation=attn, **kw)
    if cfg.quantize == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing != "off")
    if job.from_path:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, job.from_path, is_trainable=True), None, dtype
    if cfg.full_weights:
        return model, None, dtype
    from peft import LoraConfig

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    return model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, task_type="CAUSAL_LM"), dtype


def trainer_args(job: TrainJob, dtype, *, has_eval: bool) -> dict:
    """The TrainingArguments every method passes to its trl config (output, schedule, batch, saving,
    logging, runtime); a method adds its own part."""
    import torch

    cfg = job.config
    run_dir = Path(job.run_dir)
    cuda = use_cuda(cfg)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tb")
    return dict(
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if has_eval else None,
        per_device_eval_batch_size=cfg.batch_size,
        seed=cfg.seed,
        report_to=["tensorboard"],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=dtype == torch.bfloat16,
        activation_checkpointing=cfg.gradient_checkpointing == "on" or (
            cfg.gradient_checkpointing == "auto" and cfg.full_weights and cuda),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if cfg.world_size > 1 else None,
    )


def start():
    """Our Ctrl-C handling (installed first: Ctrl-C while loading still stops cleanly), and the
    Hugging Face progress bars off (ours, callbacks.ProgressCallback, is the one that counts)."""
    from transformers.utils import logging as hf_logging

    from modelmill.train.callbacks import GracefulStop

    stop = GracefulStop()
    hf_logging.disable_progress_bar()
    try:  # trl's dataset preparation (tokenizing, truncating) draws bars of its own
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    return stop


def fast_paths(trainer, job: TrainJob) -> None:
    """The speed-ups every method's step takes, same loss and gradients: trl's fused LM head scores
    only the positions the loss reads on CPU too (``answer_head``: a DPO pair's answer is a few of
    its hundreds of tokens), and peft's LoRA layers run fused (``fused_lora``). Each leaves trl or
    peft as they are when their internals no longer look as expected."""
    from modelmill.train.answer_head import score_answers_only

    score_answers_only()
    if not job.config.full_weights:
        try:
            from modelmill.train.fused_lora import fuse_lora_layers
        except ImportError:  # this peft has moved its LoRA layer
            return
        fuse_lora_layers(trainer.model)


def add_callbacks(trainer, job: TrainJob, stop) -> None:
    """Our progress bar, metrics log, time budget and graceful stop in place of the Trainer's printers."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

    from modelmill.train.callbacks import MetricsLogCallback, ProgressCallback, TimeBudget

    cfg, run_dir = job.config, Path(job.run_dir)
    trainer.remove_callback(HFProgress)
    trainer.remove_callback(PrinterCallback)
    # the time budget first: the bar and the metrics log then see the step count it sets
    budget = [TimeBudget(cfg.time_budget * 60, run_dir / "time_budget.json")] if cfg.time_budget else []
    for cb in (*budget, ProgressCallback(), MetricsLogCallback(run_dir / "metrics.jsonl"), stop):
        trainer.add_callback(cb)


def require(records: list, what: str, job: TrainJob, path: str | None = None, field: str = "--max-length",
            fix: str = "raise --max-length") -> list:
    if not records:
        raise InputError(f"no {what} is left after truncation", file=path or job.data_path, field=field, fix=fix)
    return records


def datasets(job: TrainJob, rows_of, what: str):
    """The training rows ``rows_of(path)`` gives for the job's data (refused when empty), as a
    Dataset, and the held-out ones (or None)."""
    from datasets import Dataset

    rows = require(rows_of(job.data_path), what, job)
    held = Dataset.from_list(rows_of(job.eval_path)) if job.eval_path else None
    return Dataset.from_list(rows), held


def run(job: TrainJob, build_trainer) -> dict:
    """Build the trainer, train (or resume), save: what ``modelmill train`` runs in each training process."""
    p = build_trainer(job)
    trainer, stop, run_dir = p.trainer, p.stop, Path(job.run_dir)

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
        metrics.update({k: v for k, v in final.items() if k.startswith("eval_") and isinstance(v, (int, float))
                        and "runtime" not in k and "per_second" not in k})
    metrics.update(examples=p.examples, dropped_examples=p.dropped, example_tokens=p.tokens,
                   global_step=trainer.state.global_step, num_processes=trainer.args.world_size,
                   interrupted=stop.stopped, **p.extra)

    # save (main process only): the adapter, or full weights, plus the tokenizer
    if trainer.is_world_process_zero():
        if not stop.stopped:
            final = run_dir / "final"
            model = trainer.accelerator.unwrap_model(trainer.model)
            if len(getattr(model, "peft_config", {}) or {}) > 1:
                # DPO from an adapter trains "default" against a frozen copy named "ref": only the first is ours
                model.save_pretrained(str(final), selected_adapters=["default"])
            else:
                trainer.save_model(str(final))
            p.tokenizer.save_pretrained(str(final))
        (run_dir / "result.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


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


def drop_partial_checkpoints(folder: Path) -> None:
    """A checkpoint the disk could not finish has no trainer_state.json (the Trainer writes it last):
    it goes, so that --resume starts from the last whole one."""
    import shutil

    for ck in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (ck / "trainer_state.json").is_file():
            shutil.rmtree(ck, ignore_errors=True)


def main(argv: list[str] | None, build_trainer, module: str) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {module} JOB.json", file=sys.stderr)
        return 2
    job = TrainJob.load(Path(argv[0]))
    try:
        metrics = run(job, build_trainer)
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


def _leave_process_group() -> None:
    """Wait for every rank (rank 0 may still be saving), then shut the group down cleanly: a rank
    that exits with the gloo group still up can abort in its destructor ("terminate called ...")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
