"""The vLLM engine without vLLM: the request/response mapping, adapter ids, and the engine's
queueing/abort logic against a stand-in for vLLM's AsyncLLM (vLLM needs a CUDA GPU)."""

from __future__ import annotations

import asyncio
import enum
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from modelmill.serve import vllm_engine as ve
from modelmill.serve.engine import (
    AdapterRef,
    EngineError,
    GenerationRequest,
    QueueFull,
    SamplingParams,
    TopLogprob,
)
from modelmill.serve.vllm_engine import (
    LoraIds,
    VLLMEngine,
    convert_logprobs,
    finish_from_vllm,
    json_constraint,
    lora_request_args,
    sampling_kwargs,
    structured_output_kwarg,
    to_vllm_sampling_params,
    vllm_available,
)

# --- stand-ins for vLLM's classes ----------------------------------------------------------------


@dataclass
class Logprob:                      # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Completion:                   # vllm.outputs.CompletionOutput (a DELTA)
    token_ids: list[int]
    text: str
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    index: int = 0


@dataclass
class RequestOutput:                # vllm.outputs.RequestOutput
    outputs: list[Completion]
    finished: bool = False
    request_id: str = ""


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class StructuredOutputsParams:
    json: Any = None
    json_object: bool | None = None


@dataclass
class GuidedDecodingParams:
    json: Any = None
    json_object: bool | None = None


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


def sp_module(structured: bool = True, guided: bool = False):
    """A stand-in for ``vllm.sampling_params`` (new: StructuredOutputsParams; old: GuidedDecodingParams)."""
    mod = types.SimpleNamespace(SamplingParams=FakeSamplingParams, RequestOutputKind=RequestOutputKind)
    if structured:
        mod.StructuredOutputsParams = StructuredOutputsParams
    if guided:
        mod.GuidedDecodingParams = GuidedDecodingParams
    return mod


class FakeAsyncLLM:
    """Plays back scripted outputs per request like vLLM's AsyncLLM.generate. ``hang=True`` waits
    after the script until aborted; ``final_on_abort`` mimics vLLM >= 0.10.2 (a last 'abort' output)
    versus older ones (the stream just ends)."""

    def __init__(self, script: list, hang: bool = False, final_on_abort: bool = True):
        self.script = script
        self.hang = hang
        self.final_on_abort = final_on_abort
        self.calls: list[tuple] = []
        self.aborted: list[str] = []
        self.closed: list[str] = []
        self.shut = False
        self._abort_events: dict[str, asyncio.Event] = {}

    async def generate(self, prompt, sampling_params, request_id, *, lora_request=None):
        self.calls.append((prompt, sampling_params, request_id, lora_request))
        ev = self._abort_events.setdefault(request_id, asyncio.Event())
        try:
            for item in self.script:
                if isinstance(item, BaseException):
                    raise item
                yield item
            if self.hang:
                await ev.wait()
                if self.final_on_abort:
                    yield RequestOutput([Completion([], "", finish_reason="abort")], finished=True)
        except GeneratorExit:
            self.closed.append(request_id)
            raise

    async def abort(self, request_id):
        self.aborted.append(request_id)
        self._abort_events.setdefault(request_id, asyncio.Event()).set()

    def shutdown(self):
        self.shut = True


class Tok:
    name_or_path = "/nonexistent/tokenizer"

    def decode(self, ids):
        return f"<{ids[0]}>"


def started(script, hang=False, final_on_abort=True, **kw) -> tuple[VLLMEngine, FakeAsyncLLM]:
    """An engine "started" on the stand-in, as start() would leave it with real vLLM."""
    eng = VLLMEngine("base", "/models/base", Tok(), **kw)
    fake = FakeAsyncLLM(script, hang=hang, final_on_abort=final_on_abort)
    eng._engine, eng._sp_module, eng._lora_cls = fake, sp_module(), FakeLoRARequest
    return eng, fake


def req(rid="r1", prompt=(1, 2, 3), adapter=None, **params) -> GenerationRequest:
    return GenerationRequest(rid, list(prompt), SamplingParams(**params), adapter)


async def collect(it):
    return [x async for x in it]


# --- request mapping ------------------------------------------------------------------------------


def test_sampling_kwargs_greedy_defaults():
    kw = sampling_kwargs(SamplingParams(max_tokens=7, temperature=0.0))
    assert kw == {
        "n": 1, "max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
        "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None,
        "stop": [], "stop_token_ids": [], "ignore_eos": False, "logprobs": None, "skip_special_tokens": True,
    }


def test_sampling_kwargs_sampling_passes_every_field():
    p = SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05,
                       repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.25, seed=123,
                       stop=["\n\n", "###"], stop_token_ids=[2, 7],
                       ignore_eos=True, logprobs=3, skip_special_tokens=False)
    kw = sampling_kwargs(p)
    assert kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["top_k"] == 40
    assert kw["min_p"] == 0.05 and kw["repetition_penalty"] == 1.1 and kw["seed"] == 123
    assert kw["presence_penalty"] == 0.5 and kw["frequency_penalty"] == 0.25
    assert kw["stop"] == ["\n\n", "###"] and kw["stop_token_ids"] == [2, 7]
    assert kw["ignore_eos"] is True and kw["logprobs"] == 3 and kw["skip_special_tokens"] is False
    # copies: vLLM normalises its lists in place, ours must not change
    assert kw["stop"] is not p.stop and kw["stop_token_ids"] is not p.stop_token_ids
    assert "structured_outputs" not in kw and "guided_decoding" not in kw


@pytest.mark.parametrize("ours, theirs", [(0, -1), (-1, -1), (1, 1), (50, 50)])
def test_top_k_no_limit_is_minus_one(ours, theirs):
    assert sampling_kwargs(SamplingParams(top_k=ours))["top_k"] == theirs


@pytest.mark.parametrize("logprobs", [None, 0, 5])
def test_logprobs_passed_as_is(logprobs):
    assert sampling_kwargs(SamplingParams(logprobs=logprobs))["logprobs"] == logprobs


def test_json_constraint_object_vs_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert json_constraint(SamplingParams()) is None
    assert json_constraint(SamplingParams(json_schema={})) == {"json_object": True}
    assert json_constraint(SamplingParams(json_schema=schema)) == {"json": schema}


def test_structured_output_kwarg_new_and_old_vllm():
    new = structured_output_kwarg({"json_object": True}, sp_module(structured=True, guided=True))
    assert list(new) == ["structured_outputs"]
    assert new["structured_outputs"] == StructuredOutputsParams(json_object=True)
    old = structured_output_kwarg({"json": {"type": "object"}}, sp_module(structured=False, guided=True))
    assert old == {"guided_decoding": GuidedDecodingParams(json={"type": "object"})}
    with pytest.raises(EngineError) as e:
        structured_output_kwarg({"json_object": True}, sp_module(structured=False))
    assert e.value.status == 400 and e.value.param == "response_format"


def test_to_vllm_sampling_params_streams_deltas_with_constraint():
    sp = to_vllm_sampling_params(SamplingParams(max_tokens=5, json_schema={}), sp_module())
    assert sp.kwargs["output_kind"] is RequestOutputKind.DELTA
    assert sp.kwargs["structured_outputs"] == StructuredOutputsParams(json_object=True)
    assert sp.kwargs["max_tokens"] == 5
    plain = to_vllm_sampling_params(SamplingParams(), sp_module())
    assert "structured_outputs" not in plain.kwargs and plain.kwargs["output_kind"] is RequestOutputKind.DELTA


# --- adapter ids ----------------------------------------------------------------------------------


def _adapter_dir(root, name):
    d = root / name
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    return d


def test_lora_ids_stable_per_path(tmp_path, monkeypatch):
    a, b = _adapter_dir(tmp_path, "a"), _adapter_dir(tmp_path, "b")
    ids = LoraIds()
    ia, ib = ids.id_for(str(a)), ids.id_for(str(b))
    assert ia > 0 and ib > 0 and ia != ib
    assert ids.id_for(str(a)) == ia and ids.id_for(str(b)) == ib
    monkeypatch.chdir(tmp_path)
    assert ids.id_for("a") == ia                      # the same folder spelled relatively


def test_lora_ids_new_id_when_weights_rewritten(tmp_path):
    a = _adapter_dir(tmp_path, "a")
    ids = LoraIds()
    first = ids.id_for(str(a))
    st = os.stat(a / "adapter_model.safetensors")
    os.utime(a / "adapter_model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ids.id_for(str(a)) != first


def test_lora_request_args_retrained_adapter_gets_new_id(tmp_path):
    v1, v2 = _adapter_dir(tmp_path, "v1"), _adapter_dir(tmp_path, "v2")
    ids = LoraIds()
    name1, id1, path1 = lora_request_args(AdapterRef("reviews", str(v1)), ids)
    assert (name1, path1) == ("reviews", str(v1))
    assert lora_request_args(AdapterRef("reviews", str(v1)), ids)[1] == id1
    name2, id2, path2 = lora_request_args(AdapterRef("reviews", str(v2)), ids)
    assert name2 == "reviews" and path2 == str(v2) and id2 != id1


# --- output mapping -------------------------------------------------------------------------------


def test_finish_from_vllm_plain_delta():
    out = finish_from_vllm(Completion([5, 6], " hi"), "r", prompt_tokens=4, completion_tokens=3, top_n=None)
    assert out.request_id == "r" and out.token_ids == [5, 6] and out.text == " hi"
    assert out.finish_reason is None and out.stop_reason is None and out.logprobs is None
    assert out.prompt_tokens == 4 and out.completion_tokens == 5


def test_finish_from_vllm_ignores_logprobs_not_asked_for():
    c = Completion([5], "a", logprobs=[{5: Logprob(-0.1, 1, "a")}])
    assert finish_from_vllm(c, "r", 1, 0, top_n=None).logprobs is None


@pytest.mark.parametrize("raw, ours, stop", [("stop", "stop", "###"), ("length", "length", None),
                                             ("abort", "abort", None), ("error", "error", None)])
def test_finish_reasons(raw, ours, stop):
    c = Completion([9], "x", finish_reason=raw, stop_reason="###" if raw == "stop" else None)
    out = finish_from_vllm(c, "r", 1, 0, top_n=None)
    assert out.finish_reason == ours and out.stop_reason == stop
    assert (out.error is not None) == (ours == "error")


def test_eos_stop_has_no_stop_reason_and_token_stop_keeps_id():
    eos = finish_from_vllm(Completion([2], "", finish_reason="stop"), "r", 1, 0, None)
    assert eos.finish_reason == "stop" and eos.stop_reason is None
    tok = finish_from_vllm(Completion([7], "", finish_reason="stop", stop_reason=7), "r", 1, 0, None)
    assert tok.stop_reason == 7


def test_logprobs_top_ordered_by_rank_and_chosen_outside_top_left_out():
    # position 0: chosen 11 is the best; position 1: chosen 99 is rank 6, outside the top 2
    lps = [
        {12: Logprob(-1.5, 2, "b"), 11: Logprob(-0.2, 1, "a"), 13: Logprob(-2.5, 3, "c")},
        {31: Logprob(-0.9, 2, "y"), 99: Logprob(-4.0, 6, "z"), 30: Logprob(-0.3, 1, "x")},
    ]
    out = finish_from_vllm(Completion([11, 99], "az", logprobs=lps), "r", 3, 0, top_n=2)
    assert out.logprobs == [
        (11, "a", -0.2, [TopLogprob(11, "a", -0.2), TopLogprob(12, "b", -1.5)]),
        (99, "z", -4.0, [TopLogprob(30, "x", -0.3), TopLogprob(31, "y", -0.9)]),
    ]


def test_logprobs_ties_ordered_by_rank():
    lps = [{8: Logprob(-0.7, 2, "q"), 4: Logprob(-0.7, 1, "p"), 9: Logprob(-3.0, None, "r")}]
    out = convert_logprobs([9], lps, top_n=3)
    assert [t.token_id for t in out[0][3]] == [4, 8, 9]      # rank None (unranked) goes last


def test_logprobs_zero_top_and_decode_fallback():
    lps = [{4: Logprob(-0.5, 1, None), 8: Logprob(-1.0, 2, None)}]
    out = convert_logprobs([4], lps, top_n=0, decode=lambda t: f"<{t}>")
    assert out == [(4, "<4>", -0.5, [])]
    out = convert_logprobs([4], lps, top_n=1, decode=lambda t: f"<{t}>")
    assert out == [(4, "<4>", -0.5, [TopLogprob(4, "<4>", -0.5)])]
    assert convert_logprobs([4], None, top_n=1) is None


# --- availability and start without vLLM ----------------------------------------------------------


def test_vllm_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)      # as if not installed, even where it is
    assert vllm_available() is False
    monkeypatch.delitem(sys.modules, "vllm")
    monkeypatch.setattr(ve.importlib.util, "find_spec", lambda name: object())
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_available() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_available() is True


def test_start_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    eng = VLLMEngine("base", "/models/base", Tok())
    with pytest.raises(EngineError) as e:
        asyncio.run(eng.start())
    msg = str(e.value)
    assert "vLLM is not installed" in msg and "pip install vllm" in msg and "CUDA" in msg
    assert e.value.status == 503
    with pytest.raises(EngineError) as e2:       # not started: no requests
        eng.generate(req())
    assert e2.value.code == "engine_unavailable" and e2.value.status == 503


def test_engine_args_enable_lora_and_limits():
    eng = VLLMEngine("base", "/models/base", Tok(), max_loras=4, max_lora_rank=32, max_batch_size=64,
                     max_context=2048, gpu_memory_utilization=0.5, dtype="bfloat16")
    args = eng._engine_args()
    assert args["enable_lora"] is True and args["max_loras"] == 4 and args["max_lora_rank"] == 32
    assert args["max_num_seqs"] == 64 and args["max_model_len"] == 2048
    assert args["gpu_memory_utilization"] == 0.5 and args["dtype"] == "bfloat16"
    assert args["model"] == "/models/base" and args["tokenizer"] == "/models/base"  # tokenizer dir absent
    assert eng.name == "vllm" and eng.max_context == 2048
    assert args["enable_prefix_caching"] is True
    off = VLLMEngine("base", "/models/base", Tok(), prefix_caching=False)._engine_args()
    assert off["enable_prefix_caching"] is False          # serve --prefix-cache-mb 0


# --- the engine against a stand-in AsyncLLM -------------------------------------------------------


def test_generate_streams_deltas_with_adapter(tmp_path):
    ad = AdapterRef("reviews", str(_adapter_dir(tmp_path, "reviews")))
    eng, fake = started([
        RequestOutput([Completion([10], "He")]),
        RequestOutput([Completion([11, 12], "llo!")]),
        RequestOutput([Completion([13], "", finish_reason="stop", stop_reason="\n")], finished=True),
    ])
    outs = asyncio.run(collect(eng.generate(req("r1", adapter=ad, max_tokens=9, temperature=0))))
    assert "".join(o.text for o in outs) == "Hello!"
    assert [o.completion_tokens for o in outs] == [1, 3, 4]
    assert all(o.prompt_tokens == 3 for o in outs)
    assert [o.finish_reason for o in outs] == [None, None, "stop"] and outs[-1].stop_reason == "\n"
    prompt, sp, rid, lora = fake.calls[0]
    assert prompt == {"prompt_token_ids": [1, 2, 3]} and rid == "r1"
    assert sp.kwargs["output_kind"] is RequestOutputKind.DELTA and sp.kwargs["max_tokens"] == 9
    assert lora.lora_name == "reviews" and lora.lora_path == ad.path and lora.lora_int_id > 0
    assert eng.stats().running == 0 and eng.stats().resident_adapters == ["reviews"]
    assert fake.aborted == []                    # finished normally: nothing to abort


def test_queue_full_raises_at_once():
    eng, _ = started([], max_batch_size=1, max_waiting=1)
    a, b = eng.generate(req("a")), eng.generate(req("b"))
    st = eng.stats()
    assert (st.running, st.waiting) == (1, 1)
    with pytest.raises(QueueFull) as e:
        eng.generate(req("c"))
    assert e.value.status == 429
    with pytest.raises(EngineError) as dup:
        eng.generate(req("a"))
    assert dup.value.code == "duplicate_request_id"
    del a, b                                     # never iterated: their slots come back when collected
    import gc

    gc.collect()
    assert eng.stats().running == 0
    eng.generate(req("c"))


def test_prompt_over_context_rejected():
    eng, _ = started([], max_context=3)
    with pytest.raises(EngineError) as e:
        eng.generate(req(prompt=(1, 2, 3)))
    assert e.value.code == "context_length_exceeded" and e.value.status == 400


def test_early_close_aborts_vllm_request():
    eng, fake = started([RequestOutput([Completion([10], "a")])], hang=True)

    async def go():
        it = eng.generate(req("gone"))
        first = await it.__anext__()
        await it.aclose()                        # the client went away
        return first

    first = asyncio.run(go())
    assert first.text == "a"
    assert fake.aborted == ["gone"] and fake.closed == ["gone"]
    assert eng.stats().running == 0


def test_cancelled_consumer_aborts_vllm_request():
    eng, fake = started([RequestOutput([Completion([10], "a")])], hang=True)

    async def go():
        async def consume():
            async for _ in eng.generate(req("cx")):
                pass
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert "cx" in fake.aborted and eng.stats().running == 0


@pytest.mark.parametrize("final_on_abort", [True, False])
def test_abort_ends_stream_with_abort(final_on_abort):
    eng, fake = started([RequestOutput([Completion([10], "a")])], hang=True, final_on_abort=final_on_abort)

    async def go():
        it = eng.generate(req("ab"))
        outs = [await it.__anext__()]
        await eng.abort("ab")
        outs += [o async for o in it]
        return outs

    outs = asyncio.run(go())
    assert outs[-1].finish_reason == "abort" and outs[-1].error is None
    assert outs[-1].completion_tokens == 1 and fake.aborted == ["ab"]


def test_error_before_tokens_is_a_400_and_after_is_an_error_output():
    eng, _ = started([ValueError("max_tokens is too large")])
    with pytest.raises(EngineError) as e:
        asyncio.run(collect(eng.generate(req("bad"))))
    assert e.value.status == 400 and "max_tokens" in str(e.value)

    eng, _ = started([RequestOutput([Completion([10], "a")]), RuntimeError("CUDA error")])
    outs = asyncio.run(collect(eng.generate(req("boom"))))
    assert outs[-1].finish_reason == "error" and outs[-1].error.status == 500
    assert "CUDA error" in outs[-1].error.message and eng.stats().running == 0


def test_resident_adapters_lru_trimmed_to_max_loras(tmp_path):
    eng, _ = started([RequestOutput([Completion([1], "x", finish_reason="length")], finished=True)],
                     max_loras=2)
    for i, name in enumerate(["a", "b", "c", "b"]):
        d = tmp_path / name
        if not d.exists():
            _adapter_dir(tmp_path, name)
        asyncio.run(collect(eng.generate(req(f"r{i}", adapter=AdapterRef(name, str(d))))))
    assert eng.stats().resident_adapters == ["c", "b"]
    assert eng.stats().max_loras == 2


def test_shutdown_stops_vllm():
    eng, fake = started([])
    asyncio.run(eng.shutdown())
    assert fake.shut is True
    with pytest.raises(EngineError):
        eng.generate(req())

