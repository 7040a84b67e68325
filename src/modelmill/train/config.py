"""What every training method has: base, data, optimiser, schedule, batch, LoRA settings, runtime.

Each method's file (``sft.py``, ``dpo.py``, ``orpo.py``, ``kto.py``, ``cpt.py``) subclasses
``TrainConfig`` with its own small part (DPO's beta, CPT's general-text mix) and lists the method
names it serves in ``METHODS``; ``methods.py`` maps a name to its config and entry module. CLI
flags, YAML keys, REST fields and the web form are all built from these dataclasses. Light: no
torch at import.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from modelmill.errors import InputError


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


def check(rules) -> None:
    """Raise the first failed ``(ok, flag, message, fix)`` rule as an InputError naming the flag."""
    for ok, flag, msg, fix in rules:
        if not ok:
            raise InputError(msg, field=flag, fix=fix)


@dataclass
class TrainConfig:
    """Settings every training method shares. CLI flags, YAML config keys and REST fields are built from these."""

    METHODS: ClassVar[tuple[str, ...]] = ()  # the --method values this config serves
    DATA: ClassVar[str] = "chat or classification data"  # what --data must hold, for error messages

    base: str = _f("smollm2-135m-instruct", "Base model name from `modelmill models list`.", basic=True)
    data: str = _f("", "Training dataset: NAME or NAME@VERSION from `modelmill data list`.", basic=True)
    name: str = _f("", "Name of the adapter to create (default: <data>-<method>).", basic=True)
    method: str = _f("lora", "Training method (see `modelmill train --help`).", basic=True)
    from_adapter: str = _f("", "Start from this adapter of the same base (e.g. an SFT adapter before DPO, a CPT "
                               "adapter before SFT) instead of fresh LoRA weights.", basic=True, flag="--from")
    epochs: float = _f(0.0, "Passes over the training data (0: the method's default).", basic=True)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use --epochs).")
    time_budget: float = _f(0.0, "Minutes to fit the training into (0: no limit): a few steps are timed, then "
                                 "the step count is cut to what fits and the learning-rate schedule fitted to it.")
    eval_data: str = _f("", "Held-out dataset NAME[@VERSION] whose loss is logged as eval_loss during training.")
    eval_steps: int = _f(0, "Compute the --eval-data loss every N steps, and at the end (0: every --save-steps).")
    learning_rate: float = _f(0.0, "Peak learning rate (0: the method's default).", basic=True)
    batch_size: int = _f(8, "Examples per optimizer step on each process (before accumulation).")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    max_length: int = _f(0, "Longest example in tokens; longer ones are cut at the end (0: the model's context, at most 1024).")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling alpha.")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path.")
    target_modules: str = _f("all-linear", "Modules that get LoRA: all-linear, or comma-separated names (q_proj,v_proj).")
    quantize: str = _f("none", "Load the base in 4 bits and train LoRA on top (QLoRA): needs CUDA and bitsandbytes.",
                       choices=("none", "4bit"))
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
    num_processes: int = _f(1, "Training processes (CPU: gloo data parallel; GPU: one per device).")
    num_workers: int = _f(0, "Ray Train workers, data parallel across a Ray cluster's nodes, one CPU each (a job "
                             "on `modelmill worker --executor ray`, or RAY_ADDRESS set); 0: train on this host.")
    num_nodes: int = _f(0, "With --gpus-per-node: Ray Train workers on N GPU nodes, one per GPU.")
    gpus_per_node: int = _f(0, "GPUs used on each of --num-nodes nodes (one Ray Train worker each).")
    device: str = _f("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))

    def __post_init__(self):
        check([
            (self.method in self.METHODS, "--method", f"unknown method '{self.method}' for {type(self).__name__}",
             "use one of " + ", ".join(self.METHODS)),
            (0 <= self.epochs <= 10**6, "--epochs", f"must be a number of passes from 0 (auto) to 1000000, got "
             f"{self.epochs}", "e.g. --epochs 1"),
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
            (math.isfinite(self.warmup) and self.warmup >= 0, "--warmup", f"must be a finite number >= 0, got "
             f"{self.warmup}", "e.g. --warmup 0.03 (a share of the steps) or --warmup 10 (steps)"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "--weight-decay",
             f"must be a finite number >= 0, got {self.weight_decay}", "e.g. --weight-decay 0.01"),
            (self.save_steps >= 1, "--save-steps", f"must be >= 1, got {self.save_steps}", "e.g. --save-steps 50"),
            (self.save_total_limit >= 1, "--save-total-limit", f"must be >= 1, got {self.save_total_limit}", "e.g. --save-total-limit 2"),
            (self.logging_steps >= 1, "--logging-steps", f"must be >= 1, got {self.logging_steps}", "e.g. --logging-steps 5"),
            (1 <= self.num_processes <= 64, "--num-processes", f"must be in [1, 64], got {self.num_processes}", "e.g. --num-processes 2"),
            (0 <= self.num_workers <= 4096, "--num-workers", f"must be in [0, 4096], got {self.num_workers}", "e.g. --num-workers 2"),
            (0 <= self.num_nodes <= 1024 and 0 <= self.gpus_per_node <= 64 and (self.num_nodes > 0) == (self.gpus_per_node > 0),
             "--num-nodes", f"--num-nodes and --gpus-per-node go together, got {self.num_nodes} and {self.gpus_per_node}",
             "e.g. --num-nodes 2 --gpus-per-node 8"),
            (not (self.num_workers and self.num_nodes), "--num-workers", "give --num-workers (CPU workers) or "
             "--num-nodes with --gpus-per-node (GPU workers), not both", "drop one of them"),
            (not (self.ray_workers and self.num_processes > 1), "--num-processes", "--num-processes runs on one host; "
             "--num-workers/--num-nodes run on a Ray cluster", "drop --num-processes"),
            (self.scheduler in ("cosine", "linear", "constant", "constant_with_warmup"), "--scheduler",
             f"unknown schedule '{self.scheduler}'", "use cosine, linear, constant or constant_with_warmup"),
            (self.gradient_checkpointing in ("auto", "on", "off"), "--gradient-checkpointing",
             f"must be auto, on or off, got '{self.gradient_checkpointing}'", "e.g. --gradient-checkpointing off"),
            (self.device in ("auto", "cpu", "cuda"), "--device", f"must be auto, cpu or cuda, got '{self.device}'",
             "e.g. --device cpu"),
            (self.quantize in ("none", "4bit"), "--quantize", f"must be none or 4bit, got '{self.quantize}'",
             "e.g. --quantize 4bit"),
            (not (self.quantize != "none" and self.full_weights), "--quantize",
             "a 4-bit base cannot be fine-tuned in full", "use --method lora with --quantize 4bit (QLoRA)"),
            (not (self.from_adapter and self.full_weights), "--from",
             "a full fine-tune starts from the base's weights, not an adapter", "drop --from, or use --method lora"),
        ])

    @property
    def ray_workers(self) -> int:
        """Ray Train workers this run uses (0: it runs on this host)."""
        return self.num_workers or self.num_nodes * self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.ray_workers or self.num_processes

    @property
    def full_weights(self) -> bool:
        """True when every weight trains (no adapter)."""
        return False

    @property
    def lr(self) -> float:
        return self.lr_for("chat")

    def lr_for(self, kind: str) -> float:
        """The learning rate to use on data of ``kind``: the one asked for, else the method's default."""
        return self.learning_rate or self.default_lr(kind)

    def default_lr(self, kind: str) -> float:
        return 2e-4

    def epochs_for(self, kind: str) -> float:
        """Passes over data of ``kind``: the ones asked for, else 1."""
        return self.epochs or 1.0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class TrainJob:
    """Everything a training process needs, resolved by ``runs.prepare``: no registry look-ups there."""

    config: TrainConfig
    base_path: str
    data_path: str
    kind: str
    run_dir: str
    labels: list[str] | None = None
    chat_template: str | None = None
    resume: bool = False
    eval_path: str | None = None  # the held-out records of config.eval_data, the same kind as data_path
    from_path: str | None = None  # the adapter folder of config.from_adapter
    general_path: str | None = None  # CPT: general text mixed in by config.general_ratio

    def save(self, path: Path) -> None:
        d = asdict(self)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(d, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "TrainJob":
        from modelmill.train.methods import config_class

        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d["config"] = config_class(d["config"].get("method", "lora"))(**d["config"])
        return cls(**d)
