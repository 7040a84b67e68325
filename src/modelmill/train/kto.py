"""Kahneman-Tversky optimisation (KTO) with trl's KTOTrainer: learns from unpaired thumbs up and
down, the shape reviewers' feedback really has (no "B is better than A" needed).

    modelmill train --method kto --data thumbs --from support-lora
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modelmill.train import common
from modelmill.train.common import TrainerSetup
from modelmill.train.config import TrainConfig, TrainJob, _f, check


@dataclass
class KTOConfig(TrainConfig):
    """KTO: raise the answers marked good, lower the ones marked bad."""

    METHODS = ("kto",)
    DATA = "feedback records (prompt, completion, label true/false)"

    method: str = _f("kto", "Training method.", choices=("kto",), basic=True)
    epochs: float = _f(0.0, "Passes over the feedback (0: 1).", basic=True)
    learning_rate: float = _f(0.0, "Peak learning rate (0: 5e-5 for a LoRA adapter).", basic=True)
    beta: float = _f(0.1, "How far the model may move from the reference: higher stays closer (0 < beta <= 10).",
                     basic=True)
    desirable_weight: float = _f(1.0, "Weight of the answers marked good (raise it when they are the fewer).")
    undesirable_weight: float = _f(1.0, "Weight of the answers marked bad (raise it when they are the fewer).")

    def __post_init__(self):
        super().__post_init__()
        check([
            (0 < self.beta <= 10, "--beta", f"must be in (0, 10], got {self.beta}", "e.g. --beta 0.1"),
            (0 < self.desirable_weight <= 100, "--desirable-weight", f"must be in (0, 100], got {self.desirable_weight}",
             "e.g. --desirable-weight 1.33"),
            (0 < self.undesirable_weight <= 100, "--undesirable-weight",
             f"must be in (0, 100], got {self.undesirable_weight}", "e.g. --undesirable-weight 1"),
        ])

    def default_lr(self, kind: str) -> float:
        return 5e-5


def feedback_rows(path: str) -> list[dict]:
    """Our feedback records as trl's conversational unpaired rows."""
    from modelmill.data.load import read_jsonl

    return [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}],
             "label": bool(r["label"])} for r in read_jsonl(path)]


def build_trainer(job: TrainJob) -> TrainerSetup:
    from trl import KTOConfig as TrlKTOConfig
    from trl import KTOTrainer

    from modelmill.errors import InputError

    cfg = job.config
    if cfg.batch_size * cfg.grad_accum < 2:
        # KTO's reference point is the KL of mismatched prompt/answer pairs within a batch
        raise InputError("KTO needs at least 2 records per batch", field="--batch-size", fix="use --batch-size 2 or more")
    stop = common.start()
    tokenizer = common.load_tokenizer(job)
    train_ds, eval_ds = common.datasets(job, feedback_rows, "feedback record")
    model, peft_config, dtype = common.load_model(job)
    args = TrlKTOConfig(**common.trainer_args(job, dtype, has_eval=eval_ds is not None), beta=cfg.beta,
                        desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
                        max_length=cfg.max_length)
    trainer = KTOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    common.fast_paths(trainer, job)
    common.add_callbacks(trainer, job, stop)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(train_ds), dropped=0, tokens=0)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, build_trainer, "modelmill.train.kto")


if __name__ == "__main__":
    sys.exit(main())
