"""Direct preference optimisation (DPO) with trl's DPOTrainer, on chosen/rejected pairs.

    modelmill train --method dpo --data prefs --from drugs-lora --beta 0.1

The reference model costs no second copy of the weights: from a fresh LoRA, the reference is the
base (the adapter switched off); from ``--from ADAPTER``, trl keeps a frozen copy of that adapter
(a few MB) beside the trained one and switches to it for the reference pass.

Reads top to bottom: settings, ``preference_rows`` (our records in trl's conversational shape),
``build_trainer``, ``main``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modelmill.train import common
from modelmill.train.common import TrainerSetup
from modelmill.train.config import TrainConfig, TrainJob, _f, check

LOSSES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass
class PreferenceConfig(TrainConfig):
    """DPO: learn from pairs of answers, one chosen over the other."""

    METHODS = ("dpo",)
    DATA = "preference pairs (prompt, chosen, rejected)"

    method: str = _f("dpo", "Training method.", choices=("dpo",), basic=True)
    epochs: float = _f(0.0, "Passes over the pairs (0: 1).", basic=True)
    learning_rate: float = _f(0.0, "Peak learning rate (0: 5e-5 for a LoRA adapter).", basic=True)
    beta: float = _f(0.1, "How far the model may move from the reference: higher stays closer (0 < beta <= 10).",
                     basic=True)
    loss: str = _f("sigmoid", "DPO loss: sigmoid (the paper's), ipo, hinge or robust.", choices=LOSSES)
    label_smoothing: float = _f(0.0, "Robust DPO: the chance a pair's preference is flipped (0 <= x < 0.5).")
    sft_weight: float = _f(0.0, "Weight of a supervised loss on the chosen answers, added to the preference "
                                "loss (RPO; keeps the policy on the right answers when pairs are few; 0: none).")

    def __post_init__(self):
        super().__post_init__()
        check([
            (0 < self.beta <= 10, "--beta", f"must be in (0, 10], got {self.beta}", "e.g. --beta 0.1"),
            (self.loss in LOSSES, "--loss", f"unknown DPO loss '{self.loss}'", "use " + ", ".join(LOSSES)),
            (0 <= self.label_smoothing < 0.5, "--label-smoothing", f"must be in [0, 0.5), got {self.label_smoothing}",
             "e.g. --label-smoothing 0.1 (with --loss robust)"),
            (0 <= self.sft_weight <= 100, "--sft-weight", f"must be in [0, 100], got {self.sft_weight}",
             "e.g. --sft-weight 1"),
        ])

    def default_lr(self, kind: str) -> float:
        return 5e-5


def preference_rows(path: str) -> list[dict]:
    """Our preference records as trl's conversational pairs: the prompt's messages, and each answer
    as one assistant message (trl renders them with the model's chat template)."""
    from modelmill.data.load import read_jsonl

    return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in read_jsonl(path)]


def build_trainer(job: TrainJob) -> TrainerSetup:
    from trl import DPOConfig, DPOTrainer

    cfg = job.config
    stop = common.start()

    # 1. tokenizer and pairs
    tokenizer = common.load_tokenizer(job)
    train_ds, eval_ds = common.datasets(job, preference_rows, "preference pair")

    # 2. model: fresh LoRA (reference: the base) or the --from adapter (reference: a frozen copy of it)
    model, peft_config, dtype = common.load_model(job)

    # 3. trainer
    args = DPOConfig(**common.trainer_args(job, dtype, has_eval=eval_ds is not None),
                     beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                     # RPO: trl adds the chosen answers' negative log-likelihood, weighed, to the preference loss
                     loss_type=[cfg.loss, *(["sft"] if cfg.sft_weight else [])],
                     loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None,
                     max_length=cfg.max_length)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    common.fast_paths(trainer, job)
    common.add_callbacks(trainer, job, stop)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(train_ds), dropped=0,
                        tokens=0)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, build_trainer, "modelmill.train.dpo")


if __name__ == "__main__":
    sys.exit(main())
