"""The vLLM engine: one base model, many LoRA adapters in the same continuous batch, on a CUDA GPU.

vLLM is imported only in :meth:`VLLMEngine.start`, so this module (and its pure mapping
functions, which the tests cover) imports fine on machines without vLLM or a GPU.
Targets vLLM's V1 ``AsyncLLM`` (0.10 and later; ``AsyncLLMEngine`` as a fallback for older ones).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from modelmill.serve.engine import (
    AdapterRef,
    Engine,
    EngineError,
    EngineStats,
    FinishReason,
    GenerationRequest,
    QueueFull,
    SamplingParams,
    TokenOutput,
    TopLogprob,
)

log = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed. Install it with `pip install vllm` (it needs an NVIDIA GPU "
                "with CUDA), or serve with `--engine transformers`.")


def vllm_available() -> bool:
    """True when vLLM can run here: the package is installed and a CUDA GPU is visible (``--engine auto``)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# --- request -> vLLM ------------------------------------------------------------------------------

def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """The keyword arguments for ``vllm.SamplingParams``, minus ``output_kind`` and the JSON
    constraint (those need vLLM's own classes: see :func:`to_vllm_sampling_params`)."""
    return {
        "n": 1,                                  # the HTTP layer sends one request per choice
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,       # 0: vLLM switches to greedy itself
        "top_p": params.top_p,
        # -1 means "no limit" in every vLLM: old ones reject 0, current ones accept both.
        "top_k": params.top_k if params.top_k > 0 else -1,
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "seed": params.seed,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "ignore_eos": params.ignore_eos,
        "logprobs": params.logprobs,
        "skip_special_tokens": params.skip_special_tokens,
    }


def json_constraint(params: SamplingParams) -> dict[str, Any] | None:
    """Arguments for vLLM's structured-output params: ``{}`` asks for any JSON object, a schema
    for JSON that matches it, None for no constraint."""
    if params.json_schema is None:
        return None
    if params.json_schema == {}:
        return {"json_object": True}
    return {"json": params.json_schema}


def structured_output_kwarg(constraint: dict[str, Any], sp_module: Any) -> dict[str, Any]:
    """The ``SamplingParams`` keyword that carries the JSON constraint in this vLLM:
    ``structured_outputs=StructuredOutputsParams(...)`` (0.10.2+; the only one from 0.12) or
    ``guided_decoding=GuidedDecodingParams(...)`` (older)."""
    cls = getattr(sp_module, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(**constraint)}
    cls = getattr(sp_module, "GuidedDecodingParams", None)
    if cls is not None:
        return {"guided_decoding": cls(**constraint)}
    raise EngineError("this vLLM supports no structured outputs (JSON mode); upgrade vLLM",
                      status=400, code="unsupported_parameter", param="response_format")


def to_vllm_sampling_params(params: SamplingParams, sp_module: Any) -> Any:
    """Our params as a ``vllm.SamplingParams`` streaming deltas; ``sp_module`` is
    ``vllm.sampling_params`` (passed in so tests can use a stand-in)."""
    kwargs = sampling_kwargs(params)
    kwargs["output_kind"] = sp_module.RequestOutputKind.DELTA
    constraint = json_constraint(params)
    if constraint is not None:
        kwargs.update(structured_output_kwarg(constraint, sp_module))
    return sp_module.SamplingParams(**kwargs)


def _weights_stamp(path: str) -> int | None:
    """The adapter weights' mtime, so an adapter re-trained in place gets a new id."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        try:
            return os.stat(os.path.join(path, name)).st_mtime_ns
        except OSError:
            continue
    return None


class LoraIds:
    """Stable positive int ids for adapters. vLLM caches loaded LoRA weights by ``lora_int_id``,
    so one id must always mean the same weights: same folder (and same weights file) -> same id;
    a new folder (or re-written weights), even under an old name -> a new id."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, int | None], int] = {}

    def id_for(self, path: str) -> int:
        key = (os.path.abspath(path), _weights_stamp(path))
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
        return self._ids[key]


def lora_request_args(adapter: AdapterRef, ids: LoraIds) -> tuple[str, int, str]:
    """``(lora_name, lora_int_id, lora_path)`` for ``vllm.lora.request.LoRARequest``."""
    return adapter.name, ids.id_for(adapter.path), adapter.path


# --- vLLM output -> TokenOutput -------------------------------------------------------------------

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


def convert_logprobs(token_ids: Sequence[int], logprobs: Sequence[dict[int, Any]] | None, top_n: int,
                     decode: Callable[[int], str] | None = None,
                     ) -> list[tuple[int, str, float, list[TopLogprob]]] | None:
    """vLLM's per-token ``{token_id: Logprob(logprob, rank, decoded_token)}`` -> ours:
    ``(id, text, logprob, top)`` with ``top`` the ``top_n`` best by rank. vLLM also puts the
    chosen token in the dict when it is outside the top n; that one is left out of ``top``."""
    if logprobs is None:
        return None

    def text(tid: int, lp: Any) -> str:
        tok = getattr(lp, "decoded_token", None)
        if tok is None and decode is not None:
            tok = decode(tid)
        return tok or ""

    def order(item: tuple[int, Any]) -> tuple[float, float]:
        rank = getattr(item[1], "rank", None)
        return (float("inf") if rank is None else rank, -item[1].logprob)

    out = []
    for tid, position in zip(token_ids, logprobs):
        position = position or {}
        chosen = position.get(tid)
        top = [TopLogprob(int(t), text(t, v), float(v.logprob))
               for t, v in sorted(position.items(), key=order)[:max(top_n, 0)]]
        out.append((int(tid), text(tid, chosen),
                    float(chosen.logprob) if chosen is not None else float("-inf"), top))
    return out


def finish_from_vllm(completion: Any, request_id: str, prompt_tokens: int, completion_tokens: int,
                     top_n: int | None, decode: Callable[[int], str] | None = None) -> TokenOutput:
    """One vLLM ``CompletionOutput`` delta (duck-typed: ``token_ids``, ``text``, ``logprobs``,
    ``finish_reason``, ``stop_reason``) -> our :class:`TokenOutput`. ``completion_tokens`` is the
    count before this delta; ``top_n`` is the request's ``logprobs`` (None: none wanted)."""
    token_ids = [int(t) for t in completion.token_ids]
    logprobs = None
    if top_n is not None:
        logprobs = convert_logprobs(token_ids, completion.logprobs or [], top_n, decode)
    finish, error = None, None
    raw = completion.finish_reason
    if raw is not None:
        finish = _FINISH.get(str(raw).lower(), "stop")
        if finish == "error":
            error = EngineError("vLLM stopped the request with an error", status=500, code="engine_error")
    return TokenOutput(request_id=request_id, token_ids=token_ids, text=completion.text or "",
                       logprobs=logprobs, finish_reason=finish,
                       stop_reason=completion.stop_reason if finish == "stop" else None,
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens + len(token_ids),
                       error=error)


def _engine_error(exc: BaseException) -> EngineError:
    """A vLLM exception as ours: a 400 for a rejected request (vLLM's ``VLLMValidationError`` and
    ``VLLMClientError`` are ValueErrors, or named so), a 500 for anything else."""
    if isinstance(exc, ValueError) or any(
            c.__name__ in ("VLLMClientError", "VLLMValidationError") for c in type(exc).__mro__):
        return EngineError(str(exc), status=400, code="invalid_request", param=getattr(exc, "parameter", None))
    return EngineError(f"vLLM failed: {exc}", status=500, code="engine_error")


# --- the engine -----------------------------------------------------------------------------------

class VLLMEngine(Engine):
    """vLLM's async engine behind our :class:`Engine` interface, with LoRA enabled."""

    name = "vllm"

    def __init__(self, model_name: str, model_path: str, tokenizer, max_loras: int = 8,
                 max_lora_rank: int = 64, max_batch_size: int = 256, max_waiting: int = 1024,
                 max_context: int | None = None, gpu_memory_utilization: float = 0.85,
                 dtype: str = "auto", prefix_caching: bool = True):
        self.model_name = model_name
        self.prefix_caching = prefix_caching   # vLLM sizes its own cache; --prefix-cache-mb 0 turns it off
        self.model_path = model_path
        self._tokenizer = tokenizer
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_context = max_context or 0      # 0 until start() reads the model's own limit
        self._max_context_arg = max_context
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self._engine: Any = None                 # vLLM's AsyncLLM, once started
        self._sp_module: Any = None              # vllm.sampling_params
        self._lora_cls: Any = None               # vllm.lora.request.LoRARequest
        self._ids = LoraIds()
        self._inflight: set[str] = set()
        self._aborted: set[str] = set()
        self._adapters: OrderedDict[str, None] = OrderedDict()

    @property
    def tokenizer(self):
        return self._tokenizer

    def _engine_args(self) -> dict[str, Any]:
        """Arguments for ``AsyncEngineArgs``. We send token ids, so vLLM's tokenizer only detokenizes;
        use the folder the registry's tokenizer came from when there is one."""
        tok_path = getattr(self._tokenizer, "name_or_path", None)
        return {
            "model": self.model_path,
            "tokenizer": tok_path if tok_path and os.path.isdir(tok_path) else self.model_path,
            "served_model_name": self.model_name,
            "enable_lora": True,
            "max_loras": self.max_loras,
            "max_lora_rank": self.max_lora_rank,
            "max_num_seqs": self.max_batch_size,
            "max_model_len": self._max_context_arg,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "disable_log_stats": True,
            "enable_prefix_caching": self.prefix_caching,
        }

    async def start(self) -> None:
        if self._engine is not None:
            return
        if importlib.util.find_spec("vllm") is None:
            raise EngineError(INSTALL_HINT, status=503, code="engine_unavailable")
        try:
            from vllm import sampling_params as sp_module
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.lora.request import LoRARequest
            try:
                from vllm.v1.engine.async_llm import AsyncLLM as engine_cls
            except ImportError:                  # vLLM before the V1 engine
                from vllm.engine.async_llm_engine import AsyncLLMEngine as engine_cls
        except ImportError as e:
            raise EngineError(f"{INSTALL_HINT} (importing it failed: {e})", status=503,
                              code="engine_unavailable") from e
        engine = engine_cls.from_engine_args(AsyncEngineArgs(**self._engine_args()))
        self._engine, self._sp_module, self._lora_cls = engine, sp_module, LoRARequest
        if not self.max_context:
            config = getattr(engine, "model_config", None)
            if config is None and hasattr(engine, "get_model_config"):
                config = await engine.get_model_config()
            self.max_context = int(getattr(config, "max_model_len", 0) or 0)

    def _admit(self, request: GenerationRequest) -> None:
        """Checks done before the request is queued, so errors reach the caller at once."""
        if self._engine is None:
            raise EngineError("the vLLM engine is not running", status=503, code="engine_unavailable",
                              retry_after=5)
        if request.request_id in self._inflight:
            raise EngineError(f"request id {request.request_id!r} is already running", status=409,
                              code="duplicate_request_id")
        if self.max_context and len(request.prompt_token_ids) >= self.max_context:
            raise EngineError(f"the prompt is {len(request.prompt_token_ids)} tokens; this model takes "
                              f"at most {self.max_context} (prompt + completion)", status=400,
                              code="context_length_exceeded", param="messages")
        if len(self._inflight) >= self.max_batch_size + self.max_waiting:
            raise QueueFull(f"{len(self._inflight)} requests in flight ({self.max_batch_size} running, "
                            f"{self.max_waiting} waiting); try again shortly")

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOutput]:
        self._admit(request)
        try:
            sp = to_vllm_sampling_params(request.params, self._sp_module)
            lora = None
            if request.adapter is not None:
                lora = self._lora_cls(*lora_request_args(request.adapter, self._ids))
        except EngineError:
            raise
        except Exception as e:
            raise _engine_error(e) from e
        self._inflight.add(request.request_id)
        if request.adapter is not None:
            self._adapters[request.adapter.name] = None
            self._adapters.move_to_end(request.adapter.name)
            while len(self._adapters) > self.max_loras:
                self._adapters.popitem(last=False)
        stream = self._stream(request, sp, lora)
        # A stream that is never iterated runs no `finally`; free its slot when it is collected.
        weakref.finalize(stream, self._inflight.discard, request.request_id)
        return stream

    async def _stream(self, request: GenerationRequest, sp: Any, lora: Any) -> AsyncIterator[TokenOutput]:
        rid, top_n = request.request_id, request.params.logprobs
        prompt_tokens, completion_tokens = len(request.prompt_token_ids), 0
        finished = False
        engine = self._engine                # shutdown() clears self._engine; abort on the one we used
        inner = engine.generate({"prompt_token_ids": list(request.prompt_token_ids)}, sp, rid,
                                      lora_request=lora)
        try:
            try:
                async for out in inner:
                    for completion in out.outputs[:1]:
                        delta = finish_from_vllm(completion, rid, prompt_tokens, completion_tokens, top_n,
                                                 self._decode)
                        completion_tokens = delta.completion_tokens
                        finished = delta.finish_reason is not None
                        yield delta
                    if finished:
                        return
            except (GeneratorExit, asyncio.CancelledError):
                raise
            except Exception as e:
                err = _engine_error(e)
                if completion_tokens == 0 and err.status == 400:
                    raise err from e         # a rejected request: the caller reports it as a 400
                log.exception("vLLM request %s failed", rid)
                finished = True
                yield TokenOutput(rid, [], "", finish_reason="error", prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, error=err)
                return
            # Some older vLLMs end an aborted request's stream without a final output.
            finished = True
            aborted = rid in self._aborted
            yield TokenOutput(rid, [], "", finish_reason="abort" if aborted else "error",
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              error=None if aborted else EngineError(
                                  "vLLM ended the request without a finish reason", status=500,
                                  code="engine_error"))
        finally:
            self._inflight.discard(rid)
            self._aborted.discard(rid)
            if not finished:
                # The consumer left early (client gone): stop the work on the GPU.
                try:
                    await inner.aclose()     # vLLM aborts on GeneratorExit itself ...
                    await engine.abort(rid)  # ... and this covers versions that do not
                except Exception:
                    log.warning("could not abort vLLM request %s", rid, exc_info=True)

    def _decode(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id]) if self._tokenizer is not None else ""

    async def abort(self, request_id: str) -> None:
        if request_id not in self._inflight or self._engine is None:
            return
        self._aborted.add(request_id)
        await self._engine.abort(request_id)

    def stats(self) -> EngineStats:
        n = len(self._inflight)
        return EngineStats(running=min(n, self.max_batch_size), waiting=max(0, n - self.max_batch_size),
                           resident_adapters=list(self._adapters), max_batch_size=self.max_batch_size,
                           max_loras=self.max_loras)

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        for rid in list(self._inflight):
            self._aborted.add(rid)
            try:
                await engine.abort(rid)
            except Exception:
                log.warning("could not abort vLLM request %s at shutdown", rid, exc_info=True)
        stop = getattr(engine, "shutdown", None) or getattr(engine, "shutdown_background_loop", None)
        if stop is not None:
            result = stop()
            if asyncio.iscoroutine(result):
                await result
