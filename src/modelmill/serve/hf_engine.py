"""The transformers engine: continuous batching of mixed-adapter requests on CPU or CUDA.

One scheduler thread owns the model. Each iteration it

1. takes in new requests, aborts and adapters the loader thread has finished reading;
2. admits waiting requests while there are free rows (first come, first served; a request
   whose adapter is still loading waits without holding back the others);
3. prefills the newcomers together (right-padded, causal) and samples their first token;
4. runs one decode step for every running row, each with its own adapter and sampling
   parameters, and streams the new tokens out.

A row that finishes leaves at once and the last row moves into its place, so the running rows
are always rows ``0..n-1`` of the key/value buffers and attention reads them without a copy.
Adapters are read from disk by a loader thread (never by the scheduler), kept resident up to
``max_loras`` and evicted least-recently-used among those no running row needs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from modelmill.models.loading import native_dtype, pick_device
from modelmill.models.threads import default_threads
from modelmill.serve.engine import (
    AdapterRef,
    Engine,
    EngineError,
    EngineStats,
    GenerationRequest,
    QueueFull,
    SamplingParams,
    TokenOutput,
    TopLogprob,
)
from modelmill.serve.prefix_cache import PrefixCache
from modelmill.serve.multilora import (
    LoadedAdapter,
    LoraContext,
    load_adapter,
    weights_first,
    wrap_linears,
)

log = logging.getLogger("modelmill.serve")

ATTENTION_NAME = "modelmill_serve"
PROMPT_LOGPROB_CHUNK = 256     # prompt positions whose logits are computed at once (echo with logprobs)


# ----------------------------------------------------------------------------- attention

class _StepState:
    """What the attention function needs for one forward: passed through the model's kwargs."""

    def __init__(self, engine: HFEngine, mode: str, first_row: int, rows: int, length: int,
                 positions: torch.Tensor | None = None, keys: int = 0):
        self.engine = engine
        self.keys = keys            # prefill after cached prefixes: keys to attend (longest cached + length)
        self.mode = mode            # "prefill" (rows first_row.. with fresh prompts) or "decode"
        self.first_row = first_row
        self.rows = rows
        self.length = length        # prefill: padded prompt length; decode: keys to attend (max len + 1)
        self.positions = positions  # decode: [rows] cache position of each row's new token;
        #                             prefill after cached prefixes: [rows, tokens] of each new token
        self._masks: dict = {}

    def row_index(self) -> torch.Tensor:
        """[rows]: the buffer rows of this forward (first_row ..), made once for all its layers."""
        r = self._masks.get("rows")
        if r is None:
            r = self._masks["rows"] = torch.arange(self.first_row, self.first_row + self.rows,
                                                   device=self.positions.device)
        return r

    def offset_mask(self, window: int | None) -> torch.Tensor:
        """Prefill after cached prefixes: [rows, 1, tokens, keys] bool, each new token against its
        row's cached and new keys up to itself (and within the window)."""
        m = self._masks.get(("o", window))
        if m is None:
            keys = torch.arange(self.keys, device=self.positions.device)[None, None, :]
            pos = self.positions[:, :, None]
            m = keys <= pos
            if window:
                m &= keys > pos - window
            m = self._masks[("o", window)] = m[:, None]
        return m

    def decode_bias(self, window: int | None) -> torch.Tensor:
        """[rows, 1, 1, keys] float32: 0 where a row may attend, -inf elsewhere (its own length, window)."""
        m = self._masks.get(window)
        if m is None:
            keys = torch.arange(self.length, device=self.positions.device)[None, :]
            pos = self.positions[:, None]
            ok = keys <= pos
            if window:
                ok &= keys > pos - window
            m = torch.zeros(ok.shape, dtype=torch.float32, device=ok.device).masked_fill_(~ok, float("-inf"))
            m = m[:, None, None, :]
            self._masks[window] = m
        return m

    def prefill_mask(self, window: int) -> torch.Tensor:
        m = self._masks.get(("p", window))
        if m is None:
            i = torch.arange(self.length, device=self.engine.device)
            m = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            self._masks[("p", window)] = m
        return m


def serve_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    sliding_window=None, **kwargs):
    """SDPA over our slot key/value buffers. query: [rows, heads, tokens, dim]."""
    st: _StepState | None = kwargs.get("serve_state")
    if st is None:
        raise RuntimeError("the serving attention runs only inside the serving engine")
    eng = st.engine
    layer = module.layer_idx
    window = sliding_window or getattr(module, "sliding_window", None)
    gqa = key.shape[1] != query.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    softcap = kwargs.get("softcap")

    def attend(k, v, mask):
        """Prefill attention; ``mask`` bool [.., tokens, keys], or None for plain causal."""
        if not softcap:
            if mask is None:
                return sdpa(query, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
            return sdpa(query, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        # Gemma 2 caps the scores (tanh(s / c) * c) before the softmax, which SDPA cannot do
        if gqa:
            k = k.repeat_interleave(query.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(query.shape[1] // v.shape[1], dim=1)
        scores = torch.matmul(query, k.transpose(-1, -2)).float()
        scores *= scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = torch.tanh(scores / softcap) * softcap
        if mask is None:
            n = query.shape[2]
            mask = torch.ones(n, k.shape[2], dtype=torch.bool, device=query.device).tril(k.shape[2] - n)
        scores.masked_fill_(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)

    if st.mode == "prefill" and st.positions is not None:
        # some rows begin with cached prefix blocks: write the new keys after them, attend to both
        a, b = st.first_row, st.first_row + st.rows
        rows = st.row_index()[:, None]
        eng.k_cache[layer, rows, :, st.positions] = key.transpose(1, 2)
        eng.v_cache[layer, rows, :, st.positions] = value.transpose(1, 2)
        k = eng.k_cache[layer, a:b, :, :st.keys]
        v = eng.v_cache[layer, a:b, :, :st.keys]
        out = attend(k, v, st.offset_mask(window))
    elif st.mode == "prefill":
        a, b = st.first_row, st.first_row + st.rows
        eng.k_cache[layer, a:b, :, :st.length] = key
        eng.v_cache[layer, a:b, :, :st.length] = value
        out = attend(key, value, st.prefill_mask(window) if window and window < st.length else None)
    else:
        # One new token per row, against that row's cached keys. Plain matrix products with the query
        # heads grouped by their key/value head (no copy of the cache for GQA) and a float32 softmax:
        # 4-5x faster than CPU SDPA in bfloat16 (and ~1.3x in float32) at these shapes.
        rows = st.row_index()
        eng.k_cache[layer, rows, :, st.positions] = key[:, :, 0]
        eng.v_cache[layer, rows, :, st.positions] = value[:, :, 0]
        k = eng.k_cache[layer, :st.rows, :, :st.length]          # [rows, kv_heads, keys, dim]
        v = eng.v_cache[layer, :st.rows, :, :st.length]
        n, heads, _, dim = query.shape
        kv_heads = k.shape[1]
        q = query.reshape(n, kv_heads, heads // kv_heads, dim)   # heads h*g..h*g+g-1 share kv head h
        scores = torch.matmul(q, k.transpose(-1, -2)).float()    # [rows, kv_heads, group, keys]
        scores *= scaling if scaling is not None else dim ** -0.5
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        scores += st.decode_bias(window)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).reshape(n, heads, 1, dim)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, serve_attention)
    return ATTENTION_NAME


# ----------------------------------------------------------------------------- sequences

@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    arrival: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    adapter: LoadedAdapter | None = None
    row: int = -1
    ids: list[int] = field(default_factory=list)       # prompt + generated
    prompt_len: int = 0
    cached: int = 0                                     # tokens in the key/value buffers
    generated: int = 0
    text: str = ""                                      # generated text so far (stop strings cut)
    emitted: int = 0                                    # characters of text already sent
    prefix_offset: int = 0
    read_offset: int = 0
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None                    # token ids for the repetition penalty
    counts: dict[int, int] | None = None                # generated token counts (presence/frequency)
    constraint: object = None
    prefix_blocks: list | None = None                   # cached prefix blocks found at admission
    prompt_lp: list | None = None                       # the prompt's logprobs (params.prompt_logprobs)
    done: bool = False

    def __post_init__(self):
        self.ids = list(self.req.prompt_token_ids)
        self.prompt_len = len(self.ids)
        self.prefix_offset = max(0, self.prompt_len - 6)
        self.read_offset = self.prompt_len

    @property
    def adapter_key(self) -> tuple[str, str] | None:
        a = self.req.adapter
        return None if a is None else (a.name, a.path)


# ----------------------------------------------------------------------------- engine

class HFEngine(Engine):
    """Serve one base model and its LoRA adapters with transformers (see the module docstring)."""

    name = "transformers"
    supports_prompt_logprobs = True

    def __init__(self, model_name: str, model_path: str, chat_template: str | None = None,
                 tokenizer_path: str | None = None, device: str = "auto", dtype: str = "auto", max_batch_size: int = 32, max_waiting: int = 256,
                 max_loras: int = 8, max_context: int | None = None, max_prefill_tokens: int = 4096,
                 quantize: str = "none", prefix_cache_mb: float = 256):
        if max_batch_size < 1 or max_waiting < 0 or max_loras < 1:
            raise ValueError("max_batch_size and max_loras must be >= 1, max_waiting >= 0")
        self.model_name = model_name
        self.model_path = model_path
        self.chat_template = chat_template
        self.tokenizer_path = tokenizer_path or model_path
        self.device_name = device
        self.dtype_name = dtype
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_loras = max_loras
        self.max_prefill_tokens = max_prefill_tokens
        if quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be 'none' or 'int8', not {quantize!r}")
        self.quantize = quantize
        if prefix_cache_mb < 0:
            raise ValueError("prefix_cache_mb must be >= 0 (0: no prefix cache)")
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20), block=PREFIX_BLOCK)
        self.input_scales: dict = {}           # int8: what smoothing divided each linear's input by
        self._max_context_setting = max_context
        self.max_context = max_context or 0
        self._tokenizer = None
        self.model = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._joining: list[_Seq] = []
        self._outbox: list | None = None
        self._by_id: dict[str, _Seq] = {}
        self._pending = 0                      # submitted, not yet admitted (read across threads)
        self._resident: collections.OrderedDict[tuple, LoadedAdapter] = collections.OrderedDict()
        self._loading: set[tuple] = set()
        self._staged: dict[tuple, LoadedAdapter] = {}     # read from disk, not yet resident
        self._count_lock = threading.Lock()
        self._threads = default_threads()     # read before the loader's thread lowers it
        # one OpenMP thread: a second multi-threaded pool slows the scheduler's every op (see start())
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelmill-adapter-loader",
                                          initializer=torch.set_num_threads, initargs=(1,))
        self._lora = LoraContext()
        self._rng = random.Random()
        self.adapter_loads = 0
        self.adapter_evictions = 0
        self.decode_steps = 0
        self.decoded_rows = 0
        self.threads = 0                       # OpenMP threads of the engine's thread, once started

    # -- public interface

    @property
    def tokenizer(self):
        return self._tokenizer

    async def start(self) -> None:
        # The scheduler thread loads the model itself and is the only thread that runs its torch ops:
        # libgomp keeps one OpenMP pool per calling thread, and once more pool threads exist than
        # cores it stops spinning between parallel regions, so every small op then pays a futex
        # wake-up (~120 us instead of ~9 us here; decoding ran 1.5-2x slower).
        loaded = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(target=self._main, args=(loaded,), daemon=True,
                                        name=f"modelmill-engine-{self.model_name}")
        self._thread.start()
        try:
            await loaded
        except BaseException:
            self._thread = None
            raise

    def _main(self, loaded: asyncio.Future):
        loop = loaded.get_loop()
        torch.set_num_threads(self._threads)   # not what the last set_num_threads left (models/threads.py)
        self.threads = torch.get_num_threads()
        try:
            self._load()
        except BaseException as e:  # noqa: BLE001 - reported to start()'s caller
            loop.call_soon_threadsafe(loaded.set_exception, e)
            return
        loop.call_soon_threadsafe(loaded.set_result, None)
        self._run()

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOutput]:
        if self._stopping or self._thread is None:
            raise EngineError("the engine is not running", status=503, code="engine_unavailable", retry_after=5)
        if request.request_id in self._by_id:
            raise EngineError(f"request id {request.request_id} is already running", status=409)
        if self._pending >= self.max_waiting + self.max_batch_size - len(self._running):
            raise QueueFull(f"{self.model_name}: {self._pending} requests are already waiting "
                            f"(limit {self.max_waiting}); retry shortly", retry_after=1.0)
        if request.params.json_schema is not None:
            self.json_grammars().compiled(request.params.json_schema)  # a bad schema is a 400 now, not later
        loop = asyncio.get_running_loop()
        seq = _Seq(request, loop, asyncio.Queue())
        self._by_id[request.request_id] = seq
        with self._count_lock:
            self._pending += 1
        self._inbox.put(("add", seq))
        self._wake.set()
        return self._stream(seq)

    async def _stream(self, seq: _Seq) -> AsyncIterator[TokenOutput]:
        finished = False
        try:
            while True:
                out: TokenOutput = await seq.out.get()
                if out.finish_reason is not None:
                    finished = True
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self._inbox.put(("abort", seq.req.request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=self._pending,
                           resident_adapters=[k[0] for k in list(self._resident)],
                           max_batch_size=self.max_batch_size, max_loras=self.max_loras,
                           decode_steps=self.decode_steps, decoded_rows=self.decoded_rows,
                           adapter_loads=self.adapter_loads, adapter_evictions=self.adapter_evictions,
                           prompt_tokens=self.prefix_cache.queried_tokens,
                           prefix_cached_tokens=self.prefix_cache.hit_tokens)

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- loading

    def _load(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        device = pick_device(self.device_name)
        self.device = torch.device(device)
        if self.quantize == "int8":
            if device != "cpu" or self.dtype_name not in ("auto", "float32"):
                raise EngineError(f"--quantize int8 runs on a CPU in float32, not on {device} in {self.dtype_name}; "
                                  "use --quantize none there", status=500, code="model_unavailable")
            dtype = torch.float32
        elif self.dtype_name == "auto":
            dtype = native_dtype(device)
        else:
            dtype = getattr(torch, self.dtype_name)
        self.dtype = dtype
        tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        if self.chat_template:
            tok.chat_template = self.chat_template
        self._tokenizer = tok
        attn = register_attention()
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype, attn_implementation=attn)
        model.to(self.device).eval()
        model.requires_grad_(False)
        if self.quantize == "int8":
            from modelmill.errors import InputError
            from modelmill.models.int8 import quantize_int8

            try:
                self.input_scales = quantize_int8(model, tok)
            except InputError as e:
                raise EngineError(f"{self.model_name}: {e.message}; {e.fix}", status=500,
                                  code="model_unavailable") from None
        self.model = model
        self.decoder = model.get_decoder()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        ctx = getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_context = min(self._max_context_setting or ctx, ctx)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        # the model's own forward caps its logits with this (Gemma 2: 30); sampling must see the same
        self.logit_softcap = getattr(cfg, "final_logit_softcapping", None)
        wrap_linears(model, self._lora, self.max_batch_size, self.device)
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.cache_len = 0
        self.k_cache = self.v_cache = None
        self._ensure_cache(256)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in eos:
            eos.append(tok.eos_token_id)
        self.eos_ids = set(eos)
        self._json = None

    def _ensure_cache(self, needed: int):
        """Grow the key/value buffers (doubling) so that every row can hold ``needed`` tokens."""
        if needed <= self.cache_len:
            return
        new_len = max(256, self.cache_len)
        while new_len < needed:
            new_len *= 2
        new_len = min(new_len, self.max_context)
        shape = (self.num_layers, self.max_batch_size, self.kv_heads, new_len, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.k_cache is not None:
            k[:, :, :, :self.cache_len] = self.k_cache
            v[:, :, :, :self.cache_len] = self.v_cache
        self.k_cache, self.v_cache, self.cache_len = k, v, new_len

    def json_grammars(self):
        if self._json is None:
            from modelmill.serve.structured import JsonGrammars

            self._json = JsonGrammars(self._tokenizer, self.vocab_size)
        return self._json

    # -- the scheduler thread

    def _run(self):
        torch.set_grad_enabled(False)
        while not self._stopping:
            self._drain_inbox()
            if not self._running and not self._waiting:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                with torch.inference_mode():
                    self._joining = joiners = self._admit()
                    if joiners:
                        self._prefill(joiners)
                    if self._running:
                        self._decode()
                    elif not joiners:
                        # everything waits on adapters being read: sleep until one arrives
                        self._wake.wait(0.05)
                        self._wake.clear()
            except Exception as e:  # a failed step fails its rows, never the server
                log.exception("engine step failed")
                err = EngineError(f"generation failed: {type(e).__name__}: {e}", status=500, code="engine_error")
                for seq in list(self._running) + [j for j in self._joining if not j.done]:
                    self._finish(seq, "error", error=err)
                self._running = [r for r in self._running if not r.done]
            self._joining = []
        for seq in list(self._running) + list(self._waiting):
            self._finish(seq, "abort", error=EngineError("the server is shutting down", status=503))

    def _drain_inbox(self):
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._waiting.append(item)
            elif kind == "abort":
                seq = self._by_id.get(item)
                if seq is not None and not seq.done:
                    self._finish(seq, "abort")
            elif kind == "loaded":
                key, adapter, error = item
                self._loading.discard(key)
                if error is not None:
                    for seq in [s for s in self._waiting if s.adapter_key == key]:
                        self._finish(seq, "error", error=error)
                else:
                    self._staged[key] = adapter

    def _start_load(self, seq: _Seq):
        key = seq.adapter_key
        if key in self._loading:
            return
        self._loading.add(key)
        ref: AdapterRef = seq.req.adapter

        def work():
            try:
                adapter = load_adapter(ref.name, ref.path, self._lora.rows.shapes, device=self.device,
                                       input_scales=self.input_scales, shared=self._lora.rows.shared)
                result = (key, adapter, None)
            except EngineError as e:
                result = (key, None, e)
            except Exception as e:  # noqa: BLE001 - any failure fails only this adapter's requests
                result = (key, None, EngineError(f"adapter '{ref.name}' could not be loaded: {e}", status=500,
                                                 code="adapter_unavailable", param="model"))
            self._inbox.put(("loaded", result))
            self._wake.set()

        self._loader.submit(work)

    def _make_resident(self, key, joining: list[_Seq]) -> bool:
        """Move a staged adapter into the resident set, evicting one that no running or joining
        request uses if it is full."""
        if key in self._resident:
            self._resident.move_to_end(key)
            return True
        if key not in self._staged:
            return False
        if len(self._resident) >= self.max_loras:
            in_use = {s.adapter_key for s in self._running} | {s.adapter_key for s in joining}
            victim = next((k for k in self._resident if k not in in_use), None)
            if victim is None:
                return False
            del self._resident[victim]
            self.prefix_cache.drop(victim)   # a reload reads the files again: its prefixes may differ
            self.adapter_evictions += 1
        self._resident[key] = self._staged.pop(key)
        self.adapter_loads += 1
        return True

    def _admit(self) -> list[_Seq]:
        free = self.max_batch_size - len(self._running)
        joiners: list[_Seq] = []
        longest = 0
        skipped: list[_Seq] = []
        while self._waiting and len(joiners) < free:
            seq = self._waiting.popleft()
            key = seq.adapter_key
            if key is not None:
                if key not in self._resident and key not in self._staged:
                    self._start_load(seq)
                    skipped.append(seq)
                    continue
                if not self._make_resident(key, joiners):
                    skipped.append(seq)
                    continue
                seq.adapter = self._resident[key]
            n = len(seq.ids)
            if joiners and max(longest, n) * (len(joiners) + 1) > self.max_prefill_tokens:
                skipped.append(seq)
                break
            longest = max(longest, n)
            joiners.append(seq)
        self._waiting.extendleft(reversed(skipped))
        with self._count_lock:
            self._pending -= len(joiners)
        ready = []
        for seq in joiners:
            seq.admitted = time.monotonic()
            try:
                self._prepare_sampling(seq)
                ready.append(seq)
            except Exception as e:  # noqa: BLE001 - fails this request only
                err = e if isinstance(e, EngineError) else EngineError(f"{type(e).__name__}: {e}", status=500)
                self._finish(seq, "error", error=err)
        joiners = ready
        # an adapter read for nobody (its requests aborted) is dropped
        for key in [k for k in self._staged if not any(s.adapter_key == k for s in self._waiting)]:
            del self._staged[key]
        return joiners

    def _prepare_sampling(self, seq: _Seq):
        p = seq.req.params
        if p.temperature > 0:
            g = torch.Generator(device="cpu")
            g.manual_seed(p.seed if p.seed is not None else self._rng.getrandbits(63))
            seq.generator = g
        if p.repetition_penalty != 1.0:
            seq.seen = torch.tensor(sorted(set(seq.ids)), dtype=torch.long, device=self.device)
        if p.presence_penalty or p.frequency_penalty:
            seq.counts = {}
        if p.json_schema is not None:
            seq.constraint = self.json_grammars().constraint(p.json_schema)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, state: _StepState) -> torch.Tensor:
        """The decoder over rows state.first .. + state.rows, each with its own LoRA slot."""
        rows = self._lora.rows
        rows.select(state.first_row, state.rows)
        self._lora.on = True
        try:
            return self.decoder(input_ids=ids, position_ids=positions, use_cache=False,
                                serve_state=state).last_hidden_state
        finally:
            self._lora.on = False

    def _prefill(self, joiners: list[_Seq]):
        """Prefill the newcomers. A prompt that begins with cached prefix blocks (same adapter) gets
        them copied into its row and computes only the rest. When several newcomers share a prefix
        that is not cached yet, one of them (the shortest) is prefilled first so that the others
        find it. Each pass groups its prompts by the length left to compute (``length_groups``)."""
        first = len(self._running)
        pc = self.prefix_cache
        leaders = self._prefix_leaders(joiners) if pc.enabled else []
        rest = [s for s in joiners if s not in leaders]
        hidden = []
        ordered: list[_Seq] = []
        for part in (leaders, rest):
            for s in part:
                # prompt logprobs need every prompt position's hidden state: computed, not copied
                s.prefix_blocks = [] if s.req.params.prompt_logprobs is not None else pc.match(s.adapter_key, s.ids)
                s.cached = len(s.prefix_blocks) * pc.block
            part.sort(key=lambda s: len(s.ids) - s.cached)
            if part:
                hidden.append(self._prefill_rows(part, first + len(ordered)))
                ordered += part
        logits = self._logits(torch.cat(hidden))
        self._running.extend(ordered)
        self._sample_and_emit(ordered, logits)

    def _prefix_leaders(self, joiners: list[_Seq]) -> list[_Seq]:
        """Newcomers to prefill before the others: for each set of two or more that share uncached
        prefix blocks, its shortest member, where the blocks the others would then read save more
        than a forward's fixed cost."""
        pc = self.prefix_cache
        b = pc.block
        sets: dict[tuple, list[_Seq]] = {}
        for s in joiners:
            m = pc.peek(s.adapter_key, s.ids)
            if len(s.ids) - 1 >= (m + 1) * b:
                sets.setdefault((s.adapter_key, m, tuple(s.ids[m * b:(m + 1) * b])), []).append(s)
        leaders = []
        for (_, m, _), members in sets.items():
            if len(members) < 2:
                continue
            lead = min(members, key=lambda s: len(s.ids))
            saved = 0
            for s in members:
                if s is not lead:
                    shared = 0
                    for x, y in zip(lead.ids, s.ids[:len(s.ids) - 1]):
                        if x != y:
                            break
                        shared += 1
                    saved += (shared // b - m) * b
            if saved > PREFILL_GROUP_COST:
                leaders.append(lead)
        return leaders

    def _prefill_rows(self, seqs: list[_Seq], first: int) -> torch.Tensor:
        """Prefill ``seqs`` (sorted by the length they have left to compute; ``s.cached`` tokens of
        each already come from prefix blocks) into rows ``first..``; return their last hidden states."""
        pc = self.prefix_cache
        b = pc.block
        self._ensure_cache(max(len(s.ids) + 1 for s in seqs + self._running))
        pad = self._tokenizer.pad_token_id or 0
        for i, s in enumerate(seqs):
            s.row = first + i
            self._lora.rows.assign(s.row, s.adapter)
            for j, blk in enumerate(s.prefix_blocks or ()):
                self.k_cache[:, s.row, :, j * b:(j + 1) * b] = blk.k
                self.v_cache[:, s.row, :, j * b:(j + 1) * b] = blk.v
            s.prefix_blocks = None
        last_hidden = []
        start = 0
        for end in length_groups([len(s.ids) - s.cached for s in seqs], PREFILL_GROUP_COST):
            group = seqs[start:end]
            length = max(len(s.ids) - s.cached for s in group)
            ids = torch.full((len(group), length), pad, dtype=torch.long)
            for i, s in enumerate(group):
                ids[i, :len(s.ids) - s.cached] = torch.tensor(s.ids[s.cached:])
            ids = ids.to(self.device)
            offsets = [s.cached for s in group]
            if any(offsets):
                keys = max(offsets) + length
                self._ensure_cache(keys)
                keys = min(keys, self.cache_len)
                # a short row's padding past its prompt may run beyond the buffer: clamp it there (its
                # outputs are never read, and what it writes lies past the row's own tokens)
                positions = (torch.tensor(offsets, device=self.device)[:, None]
                             + torch.arange(length, device=self.device)[None, :]).clamp_(max=self.cache_len - 1)
                state = _StepState(self, "prefill", first + start, len(group), length, positions=positions,
                                   keys=keys)
            else:
                positions = torch.arange(length, device=self.device)[None, :].expand(len(group), -1)
                state = _StepState(self, "prefill", first + start, len(group), length)
            hidden = self._forward(ids, positions, state)
            for i, s in enumerate(group):
                if s.req.params.prompt_logprobs is not None:
                    s.prompt_lp = self._prompt_logprobs(s, hidden[i])
            last = torch.tensor([len(s.ids) - s.cached - 1 for s in group], device=self.device)
            last_hidden.append(hidden[torch.arange(len(group), device=self.device), last])
            start = end
        for s in seqs:
            s.cached = len(s.ids)
            if pc.enabled:
                pc.insert(s.adapter_key, s.ids, self.k_cache[:, s.row], self.v_cache[:, s.row])
        return torch.cat(last_hidden)

    def _prompt_logprobs(self, s: _Seq, hidden: torch.Tensor) -> list:
        """Each prompt token's logprob given the tokens before it (the first has none: None), with the
        top ``prompt_logprobs`` alternatives. ``hidden``: [length, d], this row's prefill (s.cached == 0)."""
        k = s.req.params.prompt_logprobs
        ids = s.ids[:s.prompt_len]
        dec = self._tokenizer.decode
        out: list = [None]
        for a in range(0, len(ids) - 1, PROMPT_LOGPROB_CHUNK):   # [chunk, vocab] at a time, not [length, vocab]
            b = min(len(ids) - 1, a + PROMPT_LOGPROB_CHUNK)
            lp = torch.log_softmax(self._logits(hidden[a:b]), dim=-1)
            nxt = torch.tensor(ids[a + 1:b + 1], device=lp.device)
            chosen = lp.gather(1, nxt[:, None])[:, 0].tolist()
            tops = torch.topk(lp, k) if k else None
            for j, tid in enumerate(ids[a + 1:b + 1]):
                top = [] if tops is None else [TopLogprob(int(t), dec([int(t)]), float(v)) for v, t in
                                               zip(tops.values[j].tolist(), tops.indices[j].tolist())]
                out.append((tid, dec([tid]), float(chosen[j]), top))
        return out

    def _decode(self):
        seqs = self._running
        n = len(seqs)
        self._ensure_cache(max(s.cached + 1 for s in seqs))
        ids = torch.tensor([[s.ids[-1]] for s in seqs], dtype=torch.long, device=self.device)
        pos = torch.tensor([s.cached for s in seqs], dtype=torch.long, device=self.device)
        state = _StepState(self, "decode", 0, n, int(pos.max()) + 1, positions=pos)
        hidden = self._forward(ids, pos[:, None], state)
        logits = self._logits(hidden[:, -1])
        for s in seqs:
            s.cached += 1
        self.decode_steps += 1
        self.decoded_rows += n
        self._sample_and_emit(list(seqs), logits)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] float32 logits of the last hidden states. On a CPU the output layer is
        applied in blocks of HEAD_BLOCK vocabulary rows: each block's output stays in cache, which
        made SmolLM2's 49k-word head 1.5x faster at 8-32 rows (bench/serve_multilora.py). At 2-4
        rows in float32 it multiplies weights first instead: 8.5 ms against 18 ms in blocks for 4
        rows on AVX2, the head read from memory (see multilora.WEIGHTS_FIRST_MAX_ROWS)."""
        head = self.model.get_output_embeddings()
        w = getattr(head, "weight", None)
        if (self.device.type != "cpu" or type(head) is not torch.nn.Linear or w is None
                or w.shape[0] < 4 * HEAD_BLOCK or hidden.shape[0] < 2):
            out = head(hidden).float()
        elif hidden.shape[0] <= self._lora.weights_first_max and head.bias is None:
            out = weights_first(head, hidden)                 # a few rows: weights first (see multilora)
        else:
            out = torch.empty(hidden.shape[0], w.shape[0], dtype=torch.float32, device=hidden.device)
            bias = head.bias
            for i in range(0, w.shape[0], HEAD_BLOCK):
                j = i + HEAD_BLOCK
                out[:, i:j] = torch.nn.functional.linear(hidden, w[i:j], None if bias is None else bias[i:j])
        if self.logit_softcap:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out

    # -- sampling

    def _sample_and_emit(self, seqs: list[_Seq], logits: torch.Tensor):
        self._outbox = []
        try:
            self._sample_rows(seqs, logits)
        finally:
            items, self._outbox = self._outbox, None
            self._deliver(items)

    def _sample_rows(self, seqs: list[_Seq], logits: torch.Tensor):
        want_lp = [s.req.params.logprobs is not None for s in seqs]
        logprobs = torch.log_softmax(logits, dim=-1) if any(want_lp) else None
        for i, s in enumerate(seqs):
            p = s.req.params
            if s.seen is not None:
                row = logits[i]
                vals = row[s.seen]
                row[s.seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if s.counts:
                idx = torch.tensor(list(s.counts), device=logits.device)
                cnt = torch.tensor(list(s.counts.values()), device=logits.device, dtype=logits.dtype)
                logits[i, idx] -= p.frequency_penalty * cnt + p.presence_penalty
        constraints = [s.constraint for s in seqs]
        if any(c is not None for c in constraints):
            from modelmill.serve.structured import apply_constraints

            apply_constraints(logits, constraints)
        tokens = sample_rows(logits, [s.req.params for s in seqs], [s.generator for s in seqs])
        for i, s in enumerate(seqs):
            tok = int(tokens[i])
            lp = None
            if want_lp[i]:
                k = s.req.params.logprobs
                top = []
                if k:
                    vals, idx = torch.topk(logprobs[i], k)
                    top = [TopLogprob(int(t), self._tokenizer.decode([int(t)]), float(v))
                           for v, t in zip(vals.tolist(), idx.tolist())]
                lp = [(tok, self._tokenizer.decode([tok]), float(logprobs[i, tok]), top)]
            self._advance(s, tok, lp)
        self._retire()

    def _advance(self, s: _Seq, tok: int, lp):
        p = s.req.params
        s.generated += 1
        first = s.generated == 1
        finish, stop_reason = None, None
        is_eos = tok in self.eos_ids and not p.ignore_eos
        if s.constraint is not None and not is_eos:
            s.constraint.accept(tok)
        if is_eos or tok in p.stop_token_ids:
            finish, stop_reason = "stop", (None if is_eos else tok)
            delta = ""
        else:
            s.ids.append(tok)
            if s.counts is not None:
                s.counts[tok] = s.counts.get(tok, 0) + 1
            if s.seen is not None:
                s.seen = torch.unique(torch.cat([s.seen, torch.tensor([tok], device=s.seen.device)]))
            delta = self._detokenize(s)
            s.text += delta
            if p.stop:
                hit = _find_stop(s.text, p.stop, max(0, s.emitted - max(len(x) for x in p.stop)))
                if hit is not None:
                    at, stop = hit
                    s.text = s.text[:at]
                    finish, stop_reason = "stop", stop
            if finish is None:
                if s.constraint is not None and s.constraint.done:
                    finish = "stop"
                elif s.generated >= p.max_tokens or len(s.ids) >= self.max_context:
                    finish = "length"
        if finish is not None and not (finish == "stop" and isinstance(stop_reason, str)):
            # flush bytes held back as an incomplete character: the final text is the plain decode
            full = self._tokenizer.decode(s.ids[s.prompt_len:], skip_special_tokens=p.skip_special_tokens)
            if len(full) > len(s.text) and full.startswith(s.text[:s.emitted]):
                s.text = full
        hold = 0 if finish is not None or not p.stop else max(len(x) for x in p.stop) - 1
        end = max(s.emitted, len(s.text) - hold)
        text, s.emitted = s.text[s.emitted:end], end
        out = TokenOutput(request_id=s.req.request_id, token_ids=[tok], text=text, logprobs=lp,
                          finish_reason=finish, stop_reason=stop_reason, prompt_tokens=s.prompt_len,
                          completion_tokens=s.generated)
        if first:
            out.queue_time = (s.admitted or s.arrival) - s.arrival
            out.prompt_logprobs, s.prompt_lp = s.prompt_lp, None
        self._send(s, out)
        if finish is not None:
            s.done = True

    def _detokenize(self, s: _Seq) -> str:
        skip = s.req.params.skip_special_tokens
        tok = self._tokenizer
        prefix = tok.decode(s.ids[s.prefix_offset:s.read_offset], skip_special_tokens=skip)
        full = tok.decode(s.ids[s.prefix_offset:], skip_special_tokens=skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            s.prefix_offset, s.read_offset = s.read_offset, len(s.ids)
            return full[len(prefix):]
        return ""

    def _send(self, s: _Seq, out: TokenOutput):
        if self._outbox is not None:  # inside a step: delivered together at its end
            self._outbox.append((s, out))
            return
        self._deliver([(s, out)])

    def _deliver(self, items: list[tuple[_Seq, TokenOutput]]):
        """Hand outputs to their event loops: one wake-up per loop and step, not one per row (32 wake-ups
        a step cost the decode threads measurable time on a 2-core machine)."""
        by_loop: dict = {}
        for s, out in items:
            by_loop.setdefault(s.loop, []).append((s.out, out))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the client's event loop is gone
                for s, _ in items:
                    if s.loop is loop:
                        s.done = True

    def _finish(self, s: _Seq, reason: str, error: EngineError | None = None):
        """End a request from outside the sampling path (abort, error, shutdown)."""
        if not s.done:
            self._send(s, TokenOutput(request_id=s.req.request_id, token_ids=[], text="", finish_reason=reason,
                                      prompt_tokens=s.prompt_len, completion_tokens=s.generated, error=error))
        s.done = True
        if s in self._waiting:
            self._waiting.remove(s)
            with self._count_lock:
                self._pending -= 1
        self._retire()
        self._by_id.pop(s.req.request_id, None)

    def _retire(self):
        """Drop finished rows; move the last running row into each freed row (one copy of its cache)."""
        if not any(s.done for s in self._running):
            return
        keep = self._running
        i = 0
        while i < len(keep):
            s = keep[i]
            if s.done:
                last = keep.pop()
                self._by_id.pop(s.req.request_id, None)
                if last is not s:
                    n = last.cached
                    self.k_cache[:, i, :, :n] = self.k_cache[:, last.row, :, :n]
                    self.v_cache[:, i, :, :n] = self.v_cache[:, last.row, :, :n]
                    self._lora.rows.move(last.row, i)
                    last.row = i
                    keep[i] = last
                continue
            i += 1
        # adapters only finished rows used stay resident (LRU) until room is needed


HEAD_BLOCK = 1024          # vocabulary rows per block of the output layer on a CPU (see _logits)
PREFILL_GROUP_COST = 64   # a forward's fixed cost, in padded tokens, when grouping prompts by length
PREFIX_BLOCK = 8          # tokens per cached prefix block (see serve/prefix_cache.py)


def length_groups(lengths: list[int], group_cost: int) -> list[int]:
    """Split prompts sorted by length into contiguous groups, each prefilled as one right-padded
    forward of ``len(group) x longest`` tokens, minimising padded tokens plus ``group_cost`` per
    group (an exact dynamic programme, O(n^2)). Returns each group's end index."""
    n = len(lengths)
    best = [0] + [None] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            c = best[start] + (end - start) * lengths[end - 1] + group_cost
            if best[end] is None or c < best[end]:
                best[end], cut[end] = c, start
    ends = []
    end = n
    while end:
        ends.append(end)
        end = cut[end]
    return ends[::-1]


def _put_all(batch):
    for q, out in batch:
        q.put_nowait(out)


def _find_stop(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    best = None
    for stop in stops:
        at = text.find(stop, start)
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    return best


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row: greedy where temperature is 0, else temperature, top-k, top-p and
    min-p filtering and a draw from the row's own generator (so a seed reproduces a request
    whatever else shares its batch). ``logits``: [rows, vocab] float32, modified in place."""
    tokens = torch.argmax(logits, dim=-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return tokens.cpu()
    idx = torch.tensor(sampled, device=logits.device)
    x = logits[idx]
    temp = torch.tensor([params[i].temperature for i in sampled], device=x.device, dtype=x.dtype)
    x = x / temp[:, None]
    top_k = [params[i].top_k for i in sampled]
    if any(k > 0 for k in top_k):
        kmax = min(max(top_k), x.shape[-1])
        vals = torch.topk(x, kmax, dim=-1).values
        ks = torch.tensor([min(k, kmax) if k > 0 else kmax for k in top_k], device=x.device)
        kth = vals.gather(1, (ks - 1)[:, None])
        limited = torch.tensor([k > 0 for k in top_k], device=x.device)[:, None]
        x = torch.where(limited & (x < kth), torch.full_like(x, float("-inf")), x)
    probs = torch.softmax(x, dim=-1)
    min_p = torch.tensor([params[i].min_p for i in sampled], device=x.device, dtype=x.dtype)
    if bool((min_p > 0).any()):
        probs = torch.where(probs < probs.max(dim=-1, keepdim=True).values * min_p[:, None],
                            torch.zeros_like(probs), probs)
    top_p = torch.tensor([params[i].top_p for i in sampled], device=x.device, dtype=x.dtype)
    if bool((top_p < 1).any()):
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        drop_sorted = (cum - sorted_p) > top_p[:, None] * cum[:, -1:]  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    probs = probs.cpu()
    out = tokens.cpu().clone()
    for j, i in enumerate(sampled):
        row = probs[j]
        if float(row.sum()) <= 0:  # everything filtered: fall back to the most likely token
            continue
        out[i] = torch.multinomial(row, 1, generator=generators[i])[0]
    return out
