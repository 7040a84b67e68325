"""Continued pre-training (CPT): teach a base model a domain's language from raw text, then the
tasks on top (``modelmill train --method lora --from ADAPTER``).

    modelmill train --method cpt --data fiqa-text --general-data chat-sample --general-ratio 0.1
    modelmill train --method cpt --data kb:policies          # a knowledge base's documents

Every document (and, mixed in by ratio, general text: a text dataset, or a chat dataset's
answers) ends with the end-of-text token; they are shuffled, joined and cut into blocks of
``--block-size`` tokens, and the loss is on every token. General text keeps the model's general
ability: ``bench/methods.py`` measures domain and general perplexity at several ratios.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

from modelmill.errors import InputError
from modelmill.train import common
from modelmill.train.common import TrainerSetup
from modelmill.train.config import TrainConfig, TrainJob, _f, check


@dataclass
class CPTConfig(TrainConfig):
    """CPT: next-token prediction on raw text, packed into blocks."""

    METHODS = ("cpt",)
    DATA = "raw text (the text format, or kb:NAME for a knowledge base's documents)"

    method: str = _f("cpt", "Training method.", choices=("cpt",), basic=True)
    epochs: float = _f(0.0, "Passes over the text (0: 1).", basic=True)
    learning_rate: float = _f(0.0, "Peak learning rate (0: 2e-4 for a LoRA adapter).", basic=True)
    block_size: int = _f(0, "Tokens per training block (0: --max-length).")
    general_data: str = _f("", "General text to mix in against forgetting: a text dataset, or a chat dataset "
                               "whose answers are used.", basic=True)
    general_ratio: float = _f(0.0, "Share of the training tokens taken from --general-data (0 <= r < 1; e.g. 0.1).",
                              basic=True)

    def __post_init__(self):
        super().__post_init__()
        check([
            (self.block_size == 0 or 16 <= self.block_size <= 1_048_576, "--block-size",
             f"must be 0 or in [16, 1048576], got {self.block_size}", "e.g. --block-size 512"),
            (0 <= self.general_ratio < 1, "--general-ratio", f"must be in [0, 1), got {self.general_ratio}",
             "e.g. --general-ratio 0.1"),
            (not (self.general_ratio > 0 and not self.general_data), "--general-data",
             f"--general-ratio {self.general_ratio} needs general text to mix in",
             "add --general-data NAME (text, or chat data whose answers are used)"),
            (not (self.general_data and self.general_ratio == 0), "--general-ratio",
             "--general-data is given but its share is 0", "add --general-ratio, e.g. 0.1"),
        ])


def texts_of(path: str) -> list[str]:
    """The texts of a text dataset, or the assistant answers of a chat dataset."""
    from modelmill.data.load import read_jsonl

    out = []
    for r in read_jsonl(path):
        if "text" in r:
            out.append(r["text"])
        else:
            out.extend(m["content"] for m in r.get("messages", []) if m["role"] == "assistant")
    return [t for t in out if t.strip()]


def pack(docs: list[list[int]], block: int) -> list[dict]:
    """Token lists joined end to end and cut into blocks of ``block`` tokens (the last may be shorter)."""
    flat = [t for d in docs for t in d]
    return [{"input_ids": flat[i:i + block]} for i in range(0, len(flat), block) if len(flat[i:i + block]) >= 2]


def mixed_documents(job: TrainJob, tokenizer) -> tuple[list[list[int]], int, int]:
    """The domain documents, general documents added until they are ``general_ratio`` of all
    tokens (repeated when there are too few), shuffled (seeded); and the domain and general token
    counts."""
    cfg = job.config
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(texts):
        return [tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in texts]

    docs = encode(texts_of(job.data_path))
    domain = sum(map(len, docs))
    general_docs, general = [], 0
    if cfg.general_ratio > 0 and job.general_path:
        want = cfg.general_ratio / (1 - cfg.general_ratio) * domain
        pool = encode(texts_of(job.general_path))
        if not pool:
            raise InputError("the general data has no text to mix in", file=job.general_path, field="--general-data",
                             fix="give a text dataset, or chat data with answers")
        rng = random.Random(cfg.seed)
        while general < want:  # a pool smaller than the share asked for is repeated, each pass reshuffled
            rng.shuffle(pool)
            for ids in pool:
                if general >= want:
                    break
                general_docs.append(ids)
                general += len(ids)
    docs = docs + general_docs
    random.Random(cfg.seed + 1).shuffle(docs)
    return docs, domain, general


def build_trainer(job: TrainJob) -> TrainerSetup:
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    cfg = job.config
    stop = common.start()
    tokenizer = common.load_tokenizer(job)
    tokenizer.model_max_length = 10**9  # blocks are cut here, not by the tokenizer
    block = cfg.block_size or cfg.max_length
    docs, domain, general = mixed_documents(job, tokenizer)
    blocks = common.require(pack(docs, block), "text block", job, field="--data", fix="give non-empty texts")
    eval_ds = None
    if job.eval_path:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        held = [tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in texts_of(job.eval_path)]
        eval_ds = Dataset.from_list(common.require(pack(held, block), "held-out text block", job, job.eval_path,
                                                   field="--eval-data", fix="give non-empty texts"))
    model, peft_config, dtype = common.load_model(job)
    args = TrlSFTConfig(**common.trainer_args(job, dtype, has_eval=eval_ds is not None),
                        prediction_loss_only=True, padding_free=False, max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(blocks), eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    common.fast_paths(trainer, job)
    common.add_callbacks(trainer, job, stop)
    return TrainerSetup(trainer=trainer, tokenizer=tokenizer, stop=stop, examples=len(blocks), dropped=0,
                        tokens=domain + general, extra={"domain_tokens": domain, "general_tokens": general,
                                                        "block_size": block})


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, build_trainer, "modelmill.train.cpt")


if __name__ == "__main__":
    sys.exit(main())
