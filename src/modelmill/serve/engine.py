"""The interface every serving engine implements, and the request/response types they share.

An engine serves one base model and any number of LoRA adapters of it. The HTTP layer turns
an OpenAI request into one :class:`GenerationRequest` per choice, calls
:meth:`Engine.generate`, and reads :class:`TokenOutput` deltas from the async iterator until
one carries a ``finish_reason``. ``transformers`` (``hf_engine.py``) and vLLM
(``vllm_engine.py``) engines share this interface.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from modelmill.errors import EngineError  # noqa: F401 - engines and their callers raise it from here too

FinishReason = Literal["stop", "length", "abort", "error"]


class QueueFull(EngineError):
    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message, status=429, code="queue_full", retry_after=retry_after)


@dataclass
class SamplingParams:
    """Per-request decoding controls; the same names and meanings as vLLM's."""

    max_tokens: int = 16
    temperature: float = 1.0        # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                  # 0 or -1: no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # vLLM/transformers style: divides the logits of seen tokens
    presence_penalty: float = 0.0    # OpenAI style: subtracted once from every generated token
    frequency_penalty: float = 0.0   # OpenAI style: subtracted per occurrence of a generated token
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None     # None: no logprobs; k >= 0: the chosen token's plus the top k
    prompt_logprobs: int | None = None  # the same for each prompt token (echo): sent on the first output
    json_schema: dict | None = None  # constrain output to JSON; {} means any JSON object
    skip_special_tokens: bool = True


@dataclass
class AdapterRef:
    """A LoRA adapter as the registry knows it."""

    name: str
    path: str          # folder with adapter_config.json and adapter_model.safetensors


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: AdapterRef | None = None   # None: the plain base model


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class TokenOutput:
    """What one step produced for one request: new token ids and the new text (a delta)."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[tuple[int, str, float, list[TopLogprob]]] | None = None  # per token: id, text, lp, top
    # on a request's first output when params.prompt_logprobs is set: one entry per prompt token, the
    # first None (nothing precedes it), the others as in logprobs
    prompt_logprobs: list[tuple[int, str, float, list[TopLogprob]] | None] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None    # the stop string or token that ended it
    prompt_tokens: int = 0
    completion_tokens: int = 0              # so far, cumulative
    error: EngineError | None = None        # set when finish_reason == "error"
    queue_time: float | None = None         # on a request's first output: seconds it waited for a row


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    resident_adapters: list[str] = field(default_factory=list)
    max_batch_size: int = 0
    max_loras: int = 0
    decode_steps: int = 0        # forward passes that decoded one token for every running row
    decoded_rows: int = 0        # rows summed over those passes (decoded_rows / decode_steps: mean batch)
    adapter_loads: int = 0
    adapter_evictions: int = 0
    prompt_tokens: int = 0           # prompt tokens prefilled, cached ones included
    prefix_cached_tokens: int = 0    # of those, read from the prefix cache instead of computed


class Engine(abc.ABC):
    """One base model (and its adapters) behind one interface."""

    name: str               # engine kind: "transformers" or "vllm"
    model_name: str         # the registry name of the base model
    max_context: int        # prompt + completion tokens
    supports_prompt_logprobs: bool = False   # honours SamplingParams.prompt_logprobs

    @property
    @abc.abstractmethod
    def tokenizer(self):
        """The Hugging Face tokenizer (with the registry's chat template)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; return when the engine can take requests."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOutput]:
        """Queue the request and yield its deltas. Raises :class:`QueueFull` at once when full.
        Closing the iterator early (client gone) aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request; its iterator ends with finish_reason 'abort'."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        ...

    @abc.abstractmethod
    async def shutdown(self) -> None:
        ...
