"""Odds-ratio preference optimisation (ORPO) with trl's ORPOTrainer: supervised and preference
learning in one loss, with no reference model at all.

    modelmill train --method orpo --data prefs --beta 0.1
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modelmill.train import common
from modelmill.train.common import TrainerSetup
from modelmill.train.config import TrainConfig, TrainJob, _f, check
from modelmill.train.dpo import preference_rows


@dataclass
class ORPOConfig(TrainConfig):
    """ORPO: learn the chosen answers and prefer them over the rejected ones, in one pass."""

    METHODS = ("orpo",)
    DATA = "preference pairs (prompt, chosen, rejected)"

    method: str = _f("orpo", "Training method.", choices=("orpo",), basic=True)
    epochs: float = _f(0.0, "Passes over the pairs (0: 1).", basic=True)
    learning_rate: float = _f(0.0, "Peak learning rate (0: 5e-5 for a LoRA adapter).", basic=True)
    beta: float = _f(0.1, "Weight of the odds-ratio (preference) term beside the supervised loss (0 < beta <= 10).",
                     basic=True)

    def __post_init__(self):
        super().__post_init__()
        check([(0 < self.beta <= 10, "--beta", f"must be in (0, 10], got {self.beta}", "e.g. --beta 0.1")])

    def default_lr(self, kind: str) -> float:
        return 5e-5


def build_trainer(job: TrainJob) -> TrainerSetup:
    from trl.experimental.orpo import ORPOConfig as TrlORPOConfig
    from trl.experimental.orpo import ORPOTrainer

    cfg = job.config
    stop = common.start()
    tokenizer = common.load_tokenizer(job)
    train_ds, eval_ds = common.datasets(job, preference_rows, "preference pair")
    model, peft_config, dtype = common.load_model(job)  # no reference model at all
    args = TrlORPOConfig(**common.trainer_args(job, dtype, has_eval=eval_ds is not None), beta=cfg.beta,
                         max_length=cfg.max_length, remove_unused_columns=False)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=peft_config)
    common.fast_paths(trainer, job)
    common.add_callbacks(trainer, job, stop)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(train_ds), dropped=0, tokens=0)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, build_trainer, "modelmill.train.orpo")


if __name__ == "__main__":
    sys.exit(main())
