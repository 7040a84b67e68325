"""Which engine serves a ``model`` id, started on first use.

Ids are resolved against the registry on every request, so an adapter trained after the
server started is servable at once: ``BASE``, ``ADAPTER`` or ``BASE:ADAPTER``. One engine
runs per base model and serves all of that base's LoRA adapters; a full fine-tune is a model
of its own and gets its own engine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from modelmill.errors import ModelmillError
from modelmill.serve.engine import AdapterRef, Engine, EngineError

log = logging.getLogger("modelmill.serve")


@dataclass
class ServeConfig:
    """Settings of ``modelmill serve``; each field is also a command-line flag."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    engine: str = field(default="auto", metadata={
        "help": "'transformers' (CPU or CUDA), 'vllm' (CUDA, needs `pip install vllm`), or 'auto': vLLM when "
                "it and a GPU are present; or an engine a plugin registers."})
    device: str = field(default="auto", metadata={"help": "transformers engine: 'auto', 'cpu' or 'cuda'.",
                                                  "choices": ["auto", "cpu", "cuda"]})
    dtype: str = field(default="auto", metadata={
        "help": "Weights and activations: 'auto' is bfloat16 where the GPU or CPU computes it natively "
                "(AVX512-BF16/AMX), else float32.", "choices": ["auto", "float32", "bfloat16", "float16"]})
    quantize: str = field(default="none", metadata={
        "help": "transformers engine on a CPU: 'int8' runs the base model's attention and gate/up projections in "
                "int8 (SmoothQuant-smoothed, float32 elsewhere; LoRA adapters still apply), for a CPU without native "
                "bfloat16: measured on AVX2 with SmolLM2-135M, a 32-row decode step 1.2x faster and perplexity "
                "+0.9%. 'none': as loaded.",
        "choices": ["none", "int8"]})
    max_batch_size: int = field(default=32, metadata={"help": "Most requests decoded together, per base model."})
    max_waiting: int = field(default=256, metadata={
        "help": "Most requests queued per base model beyond the batch; more get 429 with Retry-After."})
    max_loras: int = field(default=8, metadata={"help": "Most adapters resident per base model (LRU eviction)."})
    max_lora_rank: int = field(default=64, metadata={"help": "vLLM engine: largest adapter rank it reserves room for."})
    max_context: int = field(default=0, metadata={"help": "Cap on prompt + completion tokens (0: the model's own)."})
    max_prefill_tokens: int = field(default=4096, metadata={
        "help": "transformers engine: most (padded) prompt tokens prefilled in one step."})
    prefix_cache_mb: int = field(default=256, metadata={
        "help": "transformers engine: memory for the keys and values of prompt prefixes kept between requests "
                "(a shared system prompt, instruction or few-shot examples is computed once per adapter and "
                "copied after that). 0: off (with --engine vllm too, which otherwise sizes its own)."})
    preload: str = field(default="", metadata={
        "help": "Comma-separated base models to load at start-up (others load on first request)."})
    api_key: str = field(default="", metadata={
        "help": "If set, every /v1 request must send 'Authorization: Bearer KEY' (also MODELMILL_API_KEY)."})
    knowledge: str = field(default="", metadata={
        "help": "Bind models to knowledge bases: 'MODEL=KB[+KB...]', pairs separated by ';' or ',' (e.g. "
                "'smollm2-135m-instruct:policy-lora=policies+faq'). Chat requests to MODEL answer from them, "
                "with citations, unless the request names knowledge_bases itself."})
    keep_alive: float = field(default=75.0, metadata={
        "help": "Seconds an idle HTTP connection stays open. Keep it above your clients' own idle limit (httpx and "
                "the openai client: 5 s; a proxy's upstream keep-alive): the side that waits longer never closes a "
                "connection just as the other sends a request on it, which the client sees as no answer at all."})

    def __post_init__(self):
        from modelmill.errors import InputError

        if not 1 <= self.keep_alive <= 3600:
            raise InputError(f"must be in [1, 3600] seconds, got {self.keep_alive:g}", field="--keep-alive")
        if self.prefix_cache_mb < 0:
            raise InputError(f"must be 0 (off) or more megabytes, got {self.prefix_cache_mb}", field="--prefix-cache-mb")
        self.knowledge_bindings()  # a malformed --knowledge fails at start-up, naming the flag

    def knowledge_bindings(self) -> dict[str, list[str]]:
        """``--knowledge`` as {model id: [knowledge base, ...]}."""
        from modelmill.errors import InputError

        out: dict[str, list[str]] = {}
        for pair in (p.strip() for p in (self.knowledge or "").replace(";", ",").split(",")):
            if not pair:
                continue
            model, sep, kbs = (x.strip() for x in pair.partition("="))
            names = [n.strip() for n in kbs.split("+") if n.strip()]
            if not sep or not model or not names:
                raise InputError(f"'{pair}' is not MODEL=KB[+KB...]", field="--knowledge",
                                 fix="e.g. --knowledge 'smollm2-135m-instruct:policy-lora=policies+faq'")
            if model in out:
                raise InputError(f"model '{model}' is bound twice", field="--knowledge",
                                 fix=f"bind it once, joining its knowledge bases with '+': {model}=A+B")
            out[model] = names
        return out


@dataclass
class Target:
    """What a request's ``model`` resolved to."""

    model_id: str                 # as the client sent it
    engine_key: str               # base model name, or the full fine-tune's name
    adapter: AdapterRef | None
    base_name: str
    adapter_name: str | None
    knowledge: list[str] | None = None  # knowledge bases it answers from (a deployment's, --knowledge)
    system_prompt: str | None = None    # a deployment's system prompt
    route: dict | None = None           # an app's choice for this request: {"app", "model", "route", ...}


class Router:
    def __init__(self, store, config: ServeConfig):
        self.store = store
        self.config = config
        self.engines: dict[str, Engine] = {}
        self._starting: dict[str, asyncio.Task] = {}

    def resolve(self, model_id: str) -> tuple[Target, dict]:
        """Resolve a model id (BASE, ADAPTER, BASE:ADAPTER) to an engine key and adapter; raise a 404
        EngineError when unknown. Apps (deployments, ...) are resolved above this, in apps/resolve.py."""
        from modelmill.adapters import AdapterRegistry

        if not isinstance(model_id, str) or not model_id:
            raise EngineError("'model' is required", status=400, param="model")
        try:
            base, adapter = AdapterRegistry(self.store).resolve_ref(model_id)
        except ModelmillError as e:
            raise EngineError(f"The model '{model_id}' does not exist: {e.message if hasattr(e, 'message') else e}. "
                              "GET /v1/models lists what is served.", status=404, code="model_not_found",
                              param="model") from None
        if base.source_type == "remote":
            # A remote endpoint is registered for benchmarks only. Serving it would mean proxying
            # someone else's API (and spending its key) for whoever can reach this server, so it is
            # neither listed in /v1/models (ModelRegistry.list() leaves remote models out) nor served;
            # the endpoint's URL is not told either.
            raise EngineError(f"The model '{model_id}' is registered as a remote endpoint, which this server does "
                              "not serve or proxy; call that endpoint directly. GET /v1/models lists what is served.",
                              status=404, code="model_not_found", param="model")
        if adapter is not None and adapter.method == "full":
            spec = {"name": adapter.name, "path": adapter.path, "tokenizer_path": adapter.path,
                    "chat_template": base.chat_template}
            return Target(model_id, adapter.name, None, base.name, adapter.name), spec
        # the base's folder (a built-in converts on first use) is looked up when its engine starts
        spec = {"name": base.name, "chat_template": base.chat_template}
        ref = AdapterRef(adapter.name, adapter.path) if adapter is not None else None
        return Target(model_id, base.name, ref, base.name, adapter.name if adapter else None), spec

    def _base_folder(self, name: str) -> str:
        from modelmill.models.registry import ModelRegistry

        try:
            return ModelRegistry(self.store).ready(name).path
        except ModelmillError as e:
            raise EngineError(f"model '{name}' cannot be loaded: {e}", status=500, code="model_unavailable",
                              param="model") from None

    async def engine_for(self, target: Target, spec: dict) -> Engine:
        eng = self.engines.get(target.engine_key)
        if eng is not None:
            return eng
        task = self._starting.get(target.engine_key)
        if task is None:
            task = asyncio.ensure_future(self._start(target.engine_key, spec))
            self._starting[target.engine_key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._starting.pop(target.engine_key, None)

    async def _start(self, key: str, spec: dict) -> Engine:
        if "path" not in spec:
            folder = await asyncio.to_thread(self._base_folder, spec["name"])
            spec = {**spec, "path": folder, "tokenizer_path": folder}
        # off the event loop: building an engine imports torch and transformers (seconds on a slow
        # host), and /health and every other request must keep answering meanwhile
        eng = await asyncio.to_thread(make_engine, self.config, spec)
        log.info("starting the %s engine for %s", eng.name, key)
        await eng.start()
        self.engines[key] = eng
        return eng

    async def shutdown(self):
        for eng in list(self.engines.values()):
            await eng.shutdown()
        self.engines.clear()


# name -> factory(config, spec) -> Engine. Built-ins register below; a plugin registers through the
# ``modelmill.engines`` entry point group (its module calls register_engine when imported).
ENGINES: dict = {}


def register_engine(name: str, factory, available=None) -> None:
    """Make ``--engine NAME`` build an engine with ``factory(config, spec)``. ``available()``, if
    given, says whether ``--engine auto`` may pick it (tried in registration order, newest first)."""
    ENGINES[name] = (factory, available)


def _load_plugins() -> None:
    from modelmill.plugins import load_plugins

    load_plugins("modelmill.engines")


def check_engine(name: str) -> None:
    """Raise InputError unless ``name`` is 'auto' or a registered engine."""
    from modelmill.errors import InputError

    _load_plugins()
    if name != "auto" and name not in ENGINES:
        raise InputError(f"unknown engine '{name}'", field="--engine", fix="use auto, " + ", ".join(ENGINES))


def make_engine(config: ServeConfig, spec: dict) -> Engine:
    _load_plugins()
    kind = config.engine
    if kind == "auto":
        kind = next((name for name, (_, ok) in reversed(ENGINES.items()) if ok is not None and ok()), "transformers")
    if kind not in ENGINES:
        raise EngineError(f"unknown engine '{kind}'; registered: {', '.join(ENGINES)}", status=500)
    return ENGINES[kind][0](config, spec)


def _transformers_engine(config: ServeConfig, spec: dict) -> Engine:
    from modelmill.serve.hf_engine import HFEngine

    return HFEngine(spec["name"], spec["path"], chat_template=spec.get("chat_template"),
                    tokenizer_path=spec.get("tokenizer_path"), device=config.device, dtype=config.dtype,
                    max_batch_size=config.max_batch_size, max_waiting=config.max_waiting,
                    max_loras=config.max_loras, max_context=config.max_context or None,
                    max_prefill_tokens=config.max_prefill_tokens, quantize=config.quantize,
                    prefix_cache_mb=config.prefix_cache_mb)


def _vllm_engine(config: ServeConfig, spec: dict) -> Engine:
    from transformers import AutoTokenizer

    if config.quantize != "none":
        raise EngineError(f"--quantize {config.quantize} is for the transformers engine on a CPU; vLLM quantizes "
                          "with its own model formats (AWQ, GPTQ, FP8)", status=500, code="model_unavailable")

    from modelmill.serve.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(spec["tokenizer_path"])
    if spec.get("chat_template"):
        tok.chat_template = spec["chat_template"]
    return VLLMEngine(spec["name"], spec["path"], tok, max_loras=config.max_loras,
                      max_lora_rank=config.max_lora_rank, max_batch_size=config.max_batch_size,
                      max_waiting=config.max_waiting, max_context=config.max_context or None, dtype=config.dtype,
                      prefix_caching=config.prefix_cache_mb > 0)


def _vllm_available() -> bool:
    from modelmill.serve.vllm_engine import vllm_available

    return vllm_available()


register_engine("transformers", _transformers_engine)
register_engine("vllm", _vllm_engine, _vllm_available)
