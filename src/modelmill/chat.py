"""Chat with a base model or an adapter: one-shot or interactive, streamed token by token.

    modelmill chat smollm2-135m-instruct:reviews-lora --prompt "Classify: great product"
    modelmill chat smollm2-135m-instruct            # interactive; /reset clears, /exit leaves
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

from modelmill.errors import InputError


@dataclass
class Sampling:
    """Decoding controls, shared by chat, evaluation and serving."""

    temperature: float = field(default=0.7, metadata={"help": "0 is greedy; higher is more random."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling: keep the smallest set of tokens with this much probability."})
    top_k: int = field(default=50, metadata={"help": "Keep only the k most likely tokens (0: no limit)."})
    repetition_penalty: float = field(default=1.1, metadata={"help": "Above 1 discourages repeating tokens."})
    max_tokens: int = field(default=256, metadata={"help": "Most new tokens to generate."})
    seed: int | None = field(default=None, metadata={"help": "Seed for reproducible sampling."})

    def __post_init__(self):
        if not 0 <= self.temperature <= 5:
            raise InputError(f"must be in [0, 5], got {self.temperature}", field="--temperature", fix="e.g. --temperature 0.7")
        if not 0 < self.top_p <= 1:
            raise InputError(f"must be in (0, 1], got {self.top_p}", field="--top-p", fix="e.g. --top-p 0.9")
        if self.top_k < 0:
            raise InputError(f"must be >= 0, got {self.top_k}", field="--top-k", fix="e.g. --top-k 50")
        if not 0 < self.repetition_penalty <= 10:
            raise InputError(f"must be in (0, 10], got {self.repetition_penalty}", field="--repetition-penalty",
                             fix="e.g. --repetition-penalty 1.1")
        if not 1 <= self.max_tokens <= 1_000_000:
            raise InputError(f"must be >= 1, got {self.max_tokens}", field="--max-tokens", fix="e.g. --max-tokens 256")

    def generate_kwargs(self) -> dict:
        greedy = self.temperature == 0
        kw = {"max_new_tokens": self.max_tokens, "do_sample": not greedy,
              "repetition_penalty": self.repetition_penalty}
        if not greedy:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        return kw


def stream_reply(model, tokenizer, messages: list[dict], sampling: Sampling) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated."""
    import torch
    from transformers import TextIteratorStreamer

    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx and enc["input_ids"].shape[1] >= ctx:
        raise InputError(f"the conversation is {enc['input_ids'].shape[1]} tokens, the model's context is {ctx}",
                         field="--prompt", fix="shorten it, or /reset the conversation")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **sampling.generate_kwargs())
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)
            streamer.on_finalized_text("", stream_end=True)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    yield from streamer
    t.join()
    if errors:
        raise errors[0]


def reply(model, tokenizer, messages: list[dict], sampling: Sampling) -> str:
    return "".join(stream_reply(model, tokenizer, messages, sampling))
