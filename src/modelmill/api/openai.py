"""The OpenAI-compatible routes: one FastAPI router over the serving engines and apps.

    GET  /v1/models, /v1/models/{id}       base models, adapters, deployments and the embedding model
    POST /v1/chat/completions              chat template, streaming (SSE), n, stop, logprobs, JSON mode,
                                           answers from knowledge bases with citations (see below)
    POST /v1/completions                   plain prompts (text or token ids), echo, logprobs
    POST /v1/embeddings                    the bundled all-MiniLM-L6-v2
    GET  /health, /metrics                 liveness; Prometheus metrics

The platform app (``api/app.py``) includes this router and puts a :class:`Serving` on
``app.state.serving``: the engines (``serve/``), the resolution of a model id to a model or an
app (``apps/resolve.py``) and retrieval-augmented answering (``apps/rag.py``).

Errors have OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``. vLLM's extra
body fields (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``,
``skip_special_tokens``) are accepted too.

Retrieval-augmented chat: a request that names knowledge bases (with the openai client,
``extra_body={"knowledge_bases": ["policies"], "rag": {"k": 4, "mode": "hybrid"}}``), or whose
model is a deployment with knowledge bases or is bound to some with ``modelmill serve
--knowledge MODEL=KB[+KB]``, is answered from the chunks retrieved for its last user message.
The response carries ``citations`` (top level: every retrieved item with its number, knowledge
base, document, section, chunk id and text span, and whether the answer cites it) and, per
choice, ``groundedness`` (which answer sentences the items support). A stream sends them in
one event with ``"choices": []`` just before ``data: [DONE]``. ``"knowledge_bases": []`` turns
a binding off for one request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from modelmill.errors import EngineError
from modelmill.serve.engine import Engine, GenerationRequest, SamplingParams, TokenOutput
from modelmill.serve.metrics import Metrics
from modelmill.serve.router import Router, ServeConfig, Target

log = logging.getLogger("modelmill.serve")


# ----------------------------------------------------------------------------- request bodies

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaSpec(_Body):
    name: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


# Whole numbers are bounded where they enter: a value past what the engine's C code holds (a seed
# past 64 bits, a token id past 32) is the request's fault, a 400 naming the field, never a 500.
INT32 = 2**31 - 1
TokenId = Annotated[int, Field(ge=0, le=INT32)]


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)     # 0: greedy, as OpenAI takes it
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra sampling parameters
    top_k: int = Field(default=0, ge=-1, le=INT32)
    min_p: float = Field(default=0.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool = True


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class RagOptions(_Body):
    k: int = Field(default=4, ge=1, le=50)                              # chunks put in the prompt
    mode: Literal["hybrid", "bm25", "vector"] = "hybrid"                # how they are retrieved


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    # modelmill's own: answer from these knowledge bases (None: the model's --knowledge binding)
    knowledge_bases: list[str] | None = None
    rag: RagOptions | None = None
    # modelmill's own, for a workflow (model flow:NAME): its inputs beyond `question` and `messages`
    inputs: dict | None = None
    # for a dialogue bot (model bot:NAME): the conversation to go on with (or metadata.conversation_id)
    conversation_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] | None = None

    def check_messages(self) -> None:
        """What OpenAI answers 400 to: a message with no content (only an assistant message that
        makes tool calls may have none), and a tool message that answers no assistant tool call."""
        for i, m in enumerate(self.messages):
            if m.content is None and not (m.role == "assistant" and m.tool_calls):
                raise EngineError(f"messages.{i}.content: a '{m.role}' message needs content (a string or a list "
                                  "of text parts)", param=f"messages.{i}.content", code="invalid_value")
            if m.role == "tool":
                prev = self.messages[i - 1] if i else None
                if prev is None or not (prev.role == "tool" or (prev.role == "assistant" and prev.tool_calls)):
                    raise EngineError(f"messages.{i}.role: a 'tool' message must answer a preceding assistant "
                                      "message with 'tool_calls'", param=f"messages.{i}.role", code="invalid_value")
                if not m.tool_call_id:
                    raise EngineError(f"messages.{i}.tool_call_id: a 'tool' message needs tool_call_id",
                                      param=f"messages.{i}.tool_call_id", code="invalid_value")


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int | None = Field(default=16, ge=1, le=INT32)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = None


# ----------------------------------------------------------------------------- helpers

def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          409: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 16 or any(not s for s in stops):
        raise EngineError("'stop' takes up to 16 non-empty strings", param="stop")
    return stops


def _json_schema(fmt: ResponseFormat | None) -> dict | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise EngineError("response_format of type 'json_schema' needs json_schema.schema", param="response_format")
    return fmt.json_schema.schema_


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise EngineError(f"content part {i} is of type '{part.get('type')}'; only text parts are supported",
                              param="messages")
        parts.append(part["text"])
    return "".join(parts)


_BYTE_DECODER: dict | None = None
_SPM_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tok, token_id: int) -> list[int]:
    """A token's own bytes, which its text cannot show when it holds part of a UTF-8 character
    (byte-level BPE splits most CJK characters, and emoji, over several tokens)."""
    global _BYTE_DECODER
    piece = tok.convert_ids_to_tokens(token_id)
    if piece is None:
        return []
    if token_id in getattr(tok, "all_special_ids", ()):
        return list(piece.encode("utf-8"))
    m = _SPM_BYTE.match(piece)
    if m:                                   # sentencepiece byte fallback: <0xE4>
        return [int(m.group(1), 16)]
    if _BYTE_DECODER is None:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        _BYTE_DECODER = {c: b for b, c in bytes_to_unicode().items()}
    if all(c in _BYTE_DECODER for c in piece):  # byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM)
        return [_BYTE_DECODER[c] for c in piece]
    return list(piece.replace("\u2581", " ").encode("utf-8"))  # sentencepiece: ▁ is a space


# ----------------------------------------------------------------------------- what the routes serve from

@dataclass
class Serving:
    """The engines, the resolver of model ids and the knowledge answers: one per app."""

    store: object
    config: ServeConfig
    router: Router           # model id -> engine, engines started on first use
    resolver: object         # apps.resolve.Resolver: apps first, then models
    metrics: Metrics
    answers: object          # apps.rag.KnowledgeAnswers
    flows: object = None     # apps.flows.FlowServices: workflows run on these same engines

    @classmethod
    def open(cls, store, config: ServeConfig) -> Serving:
        from modelmill.apps.flows import FlowServices
        from modelmill.apps.rag import KnowledgeAnswers
        from modelmill.apps.resolve import Resolver

        router = Router(store, config)
        resolver = Resolver(store, router, config.knowledge_bindings())
        answers = KnowledgeAnswers(store)
        return cls(store, config, router, resolver, Metrics(router), answers,
                   FlowServices(store, resolver, router, answers))

    async def start(self) -> None:
        """Load the ``--preload`` base models."""
        for name in [n.strip() for n in self.config.preload.split(",") if n.strip()]:
            target, spec = self.resolver.resolve(name)
            await self.router.engine_for(target, spec)

    async def stop(self) -> None:
        await self.router.shutdown()


def _serving(request: Request) -> Serving:
    return request.app.state.serving


router = APIRouter()


def install_errors(app) -> None:
    """OpenAI-shaped errors for what the routes raise: EngineError, invalid bodies, HTTP errors, bugs."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def err(e: EngineError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(e.retry_after)))} if e.retry_after else None
        return JSONResponse(error_body(e.message, _TYPES.get(e.status, "invalid_request_error"), e.param, e.code),
                            status_code=e.status, headers=headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request, e: EngineError):
        return err(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            msg = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
            return err(EngineError(msg, param=None, code="invalid_json"))
        param = ".".join(loc) or None
        msg = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if first.get("input") is not None and first.get("type") not in ("missing",):
            msg += f" (got {json.dumps(first.get('input'), default=str)[:80]})"
        return err(EngineError(msg, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), _TYPES.get(e.status_code, "invalid_request_error")),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)


# -- models, health, metrics

def _card(model_id: str, created, root: str, parent: str | None, **extra) -> dict:
    return {"id": model_id, "object": "model", "created": int(created.timestamp()) if created else 0,
            "owned_by": "modelmill", "root": root, "parent": parent, **extra}


def _model_cards(store) -> list[dict]:
    from modelmill.adapters import AdapterRegistry
    from modelmill.models.registry import ModelRegistry
    from modelmill.models.embedder import DEFAULT_NAME

    cards = [_card(m.name, m.created_at, m.name, None, max_model_len=(m.info or {}).get("context_length"))
             for m in ModelRegistry(store).list()]
    cards += [_card(a.name, a.created_at, a.base_model, a.base_model, method=a.method)
              for a in AdapterRegistry(store).list()]
    from modelmill.apps.deployments import Deployments

    cards += [_card(d.name, d.created_at, d.model.split(":")[0], d.model, type="deployment")
              for d in Deployments(store).list()]
    from modelmill.apps import Apps

    prefix = {"workflow": "flow:", "bot": "bot:"}
    cards += [_card(prefix.get(a.kind, "") + a.name, a.created_at, a.base_model or None, None,
                    type=a.kind) for a in Apps(store).list()]
    cards.append(_card(DEFAULT_NAME, None, DEFAULT_NAME, None, type="embedding"))
    return cards


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": await asyncio.to_thread(_model_cards, _serving(request).store)}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    s = _serving(request)
    cards = await asyncio.to_thread(_model_cards, s.store)
    for c in cards:
        if c["id"] == model_id:
            return c
    target, _ = await asyncio.to_thread(s.resolver.resolve, model_id)  # base:adapter ids
    return _card(model_id, None, target.base_name, target.base_name if target.adapter_name else None)


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "engines": {k: {"engine": e.name, **vars(e.stats())}
                                        for k, e in _serving(request).router.engines.items()}}


@router.get("/metrics")
async def prometheus(request: Request):
    body, content_type = _serving(request).metrics.render()
    return PlainTextResponse(body, media_type=content_type)


# -- generation

async def _prepare(s: Serving, model_id: str, messages: list[dict] | None) -> tuple[Target, Engine]:
    """The target of ``model_id`` (an app chooses by ``messages``) and its engine, started if need be."""
    target, spec = await s.resolver.resolve_request(model_id, messages)
    engine = await s.router.engine_for(target, spec)
    return target, engine


def _params(body: _Sampling, max_tokens: int | None, prompt_len: int, engine: Engine, logprobs: int | None,
            schema: dict | None, prompt_param: str, max_tokens_param: str = "max_tokens",
            prompt_logprobs: int | None = None) -> SamplingParams:
    if body.logit_bias:
        raise EngineError("logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
    limit = engine.max_context
    if prompt_len >= limit:
        raise EngineError(f"This model's maximum context length is {limit} tokens. However, your prompt is "
                          f"{prompt_len} tokens. Please reduce the length of the prompt.",
                          param=prompt_param, code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = limit - prompt_len
    elif prompt_len + max_tokens > limit:
        raise EngineError(f"This model's maximum context length is {limit} tokens. However, you requested "
                          f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
                          "completion). Please reduce the length of the prompt or the completion.",
                          param=max_tokens_param, code="context_length_exceeded")
    # top_p 0 keeps only the most likely token: greedy (a nucleus of no probability would hold nothing)
    greedy = body.top_p == 0
    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0 if greedy else body.temperature, top_p=1.0 if greedy else body.top_p,
        top_k=max(0, body.top_k), min_p=body.min_p, repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        seed=body.seed, stop=_stops(body.stop), stop_token_ids=list(body.stop_token_ids or []),
        ignore_eos=body.ignore_eos, logprobs=logprobs, json_schema=schema,
        skip_special_tokens=body.skip_special_tokens, prompt_logprobs=prompt_logprobs)


async def _start(s: Serving, engine: Engine, target: Target, endpoint: str, rid: str, prompts: list[list[int]],
                 params: SamplingParams, n: int, t0: float):
    """Submit one engine request per (prompt, choice) and wait for every first output, so that a
    request-level failure (a full queue, an adapter that cannot be loaded) is an HTTP error, not
    a broken stream. Returns [(prompt index, first output, stream)] and when they arrived."""
    import dataclasses

    _check_capacity(engine, target, len(prompts), n)
    streams, ids_sent = [], []
    try:
        for p_i, ids in enumerate(prompts):
            for c in range(n):
                p = dataclasses.replace(params, seed=None if params.seed is None else params.seed + c,
                                        stop=list(params.stop))
                req_id = f"{rid}-{p_i * n + c}"
                streams.append((p_i, engine.generate(GenerationRequest(req_id, ids, p, target.adapter))))
                ids_sent.append(req_id)
        firsts = await asyncio.gather(*(anext(s, None) for _, s in streams), return_exceptions=True)
        failed = next((f if isinstance(f, BaseException) else f.error for f in firsts
                       if isinstance(f, BaseException) or (f is not None and f.finish_reason == "error"
                                                           and f.error is not None)), None)
        if failed is not None:
            raise failed
    except BaseException as e:
        # a stream never iterated runs no cleanup of its own: abort every submitted request here
        for req_id in ids_sent:
            await engine.abort(req_id)
        if isinstance(e, EngineError):
            _record(s.metrics, target, endpoint, str(e.status), t0)
        raise
    return [(p_i, f, s) for (p_i, s), f in zip(streams, firsts)], time.monotonic()


def _check_capacity(engine: Engine, target: Target, prompts: int, n: int) -> None:
    """400, not 429, for a request with more generations (prompts x n) than the engine can ever hold at
    once: retrying it would never succeed, and clients retry a 429."""
    batch, waiting = getattr(engine, "max_batch_size", None), getattr(engine, "max_waiting", None)
    if not isinstance(batch, int) or not isinstance(waiting, int):
        return
    cap = batch + waiting
    if prompts * n <= cap:
        return
    param = "n" if n > 1 else "prompt"
    raise EngineError(f"this request asks for {prompts * n} generations ({prompts} prompt(s) x n={n}), but the "
                      f"engine serving '{target.base_name}' holds at most {cap} at once ({batch} running + {waiting} "
                      "waiting; serve --max-batch-size/--max-waiting); send fewer prompts or a smaller n",
                      param=param, code="invalid_value")


async def _collect(started) -> list[list[TokenOutput]]:
    async def drain(first, stream):
        outs = [first] if first is not None else []
        if first is None or first.finish_reason is None:
            async for o in stream:
                outs.append(o)
        return outs
    return await asyncio.gather(*(drain(f, s) for _, f, s in started))


async def _until_disconnect(request: Request, coro):
    """Run ``coro``; cancel it (which aborts its generations) if the client goes away."""
    task = asyncio.ensure_future(coro)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise EngineError("the client disconnected", status=499)


async def _merged(started) -> AsyncIterator[tuple[int, TokenOutput]]:
    """Outputs of all choices as they come: (choice index, output)."""
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i, first, stream):
        try:
            if first is not None:
                await q.put((i, first))
            if first is None or first.finish_reason is None:
                async for o in stream:
                    await q.put((i, o))
        except Exception as e:  # noqa: BLE001 - reported to the client as an error event
            await q.put((i, e))
        finally:
            await q.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, f, s)) for i, (_, f, s) in enumerate(started)]
    open_ = len(tasks)
    try:
        while open_:
            i, item = await q.get()
            if item is None:
                open_ -= 1
                continue
            yield i, item
    finally:
        # Shielded: when the client leaves, the response's cancel scope re-cancels every await in
        # here. The pumps end first (a stream being iterated cannot be closed), then the streams
        # close, which aborts their generations in the engine.
        import anyio

        with anyio.CancelScope(shield=True):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _, _, s in started:
                await s.aclose()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chat_logprobs(outs: list[TokenOutput], tok) -> list[dict]:
    items = []
    for o in outs:
        for tid, text, lp, top in o.logprobs or []:
            items.append({"token": text, "logprob": lp, "bytes": token_bytes(tok, tid),
                          "top_logprobs": [{"token": t.token, "logprob": t.logprob,
                                            "bytes": token_bytes(tok, t.token_id)} for t in top]})
    return items


def _record(metrics: Metrics, target: Target, endpoint: str, status: str, started: float, prompt_tokens: int = 0,
            completion_tokens: int = 0, outs: list[list[TokenOutput]] | None = None, first_token_at=None):
    metrics.request(endpoint, target.engine_key, target.adapter_name, status, time.monotonic() - started,
                    prompt_tokens, completion_tokens)
    for choice in outs or []:
        if choice and choice[0].queue_time is not None:
            metrics.queue_time(target.engine_key, target.adapter_name, choice[0].queue_time)
    if first_token_at is not None:
        metrics.first_token(target.engine_key, target.adapter_name, first_token_at - started)
        if completion_tokens > 1:
            per_token = (time.monotonic() - first_token_at) / max(1, completion_tokens - 1)
            metrics.per_token(target.engine_key, target.adapter_name, per_token)


async def _respond(s: Serving, request: Request, body, endpoint: str, target: Target, rid: str, objects: tuple[str, str],
                   started, prompt_tokens: int, t0: float, first_at: float, choice, chunk, preamble: list,
                   finish=None):
    """The response of chat and completions: one JSON body, or SSE chunks ending in [DONE].
    ``choice(i, outputs)`` and ``chunk(i, output)`` (None: nothing to send) shape the choices.
    ``await finish(texts)``, if given, returns (top-level fields, one dict per choice) added to
    the body, or sent in one last event of a stream."""
    created = _now()
    head = {"id": rid, "created": created, "model": body.model, "system_fingerprint": None}
    if target.route is not None:  # an app chose the model that answers: say which
        head["route"] = target.route

    if not body.stream:
        outs = await _until_disconnect(request, _collect(started))
        choices, completion = [], 0
        for i, o in enumerate(outs):
            err_out = next((x for x in o if x.finish_reason == "error"), None)
            if err_out is not None and err_out.error is not None:
                raise err_out.error
            completion += o[-1].completion_tokens if o else 0
            c = choice(i, o)
            if o and o[-1].stop_reason is not None:
                c["stop_reason"] = o[-1].stop_reason
            choices.append(c)
        top: dict = {}
        if finish is not None:
            top, per_choice = await finish(["".join(x.text for x in o) for o in outs])
            for c, extra_fields in zip(choices, per_choice):
                c.update(extra_fields)
        _record(s.metrics, target, endpoint, "200", t0, prompt_tokens, completion, outs, first_at)
        return {**head, "object": objects[0], "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}, **top}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {**head, "object": objects[1]}
    extra = {"usage": None} if include_usage else {}

    async def events():
        completion: dict[int, int] = {}
        texts = [""] * len(started)
        status = "200"
        try:
            for c in preamble:
                yield _sse({**base, "choices": [c], **extra})
            async for i, o in _merged(started):
                if isinstance(o, Exception) or o.finish_reason == "error":
                    e = o if isinstance(o, Exception) else o.error
                    status = "500"
                    yield _sse(error_body(getattr(e, "message", str(e)), "server_error"))
                    continue
                completion[i] = o.completion_tokens
                texts[i] += o.text
                c = chunk(i, o)
                if c is None:
                    continue
                if o.stop_reason is not None:
                    c["stop_reason"] = o.stop_reason
                yield _sse({**base, "choices": [c], **extra})
            if finish is not None:
                top, per_choice = await finish(texts)
                yield _sse({**base, "choices": [], **extra, **top,
                            **_per_choice_event(per_choice)})
            if include_usage:
                total = sum(completion.values())
                yield _sse({**base, "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": total,
                    "total_tokens": prompt_tokens + total}})
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            # the client went away: the response was cancelled, or it closed this generator at a
            # yield; _merged's cleanup aborted the generations
            status = "499"
            log.warning("%s: the client disconnected mid-stream; its generation was aborted", rid)
            raise
        except BaseException:
            status = "500"  # a bug: the server's own error, logged by the app
            raise
        finally:
            _record(s.metrics, target, endpoint, status, t0, prompt_tokens, sum(completion.values()), None, first_at)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    s = _serving(request)
    t0 = time.monotonic()
    body.check_messages()
    if body.tools:
        raise EngineError("tools (function calling) are not supported yet", param="tools",
                          code="unsupported_parameter")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text_of(m.content)}
                for m in body.messages]
    from modelmill.apps.flows import flow_name

    if flow_name(body.model) is not None:
        return await _flow_chat(s, request, body, flow_name(body.model), messages, t0)
    from modelmill.apps.bots import bot_name

    if bot_name(body.model) is not None:
        return await _bot_chat(s, request, body, bot_name(body.model), messages, t0)
    target, engine = await _prepare(s, body.model, messages)
    tok = engine.tokenizer
    if target.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": target.system_prompt})
    if body.top_logprobs is not None and not body.logprobs:
        raise EngineError("top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens

    def encode(msgs: list[dict]) -> list[int]:
        try:
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template error is the request's fault
            raise EngineError(f"the model's chat template rejected these messages: {e}",
                              param="messages") from None
        return tok(text, add_special_tokens=False)["input_ids"]

    # knowledge bases: the request's own (an empty list turns a binding off), else the model's
    names = list(body.knowledge_bases) if body.knowledge_bases is not None else list(target.knowledge or [])
    opts = body.rag or RagOptions()
    items = await s.answers.retrieve(names, messages, opts.k, opts.mode)

    def prompt_ids(items):
        if items is None:
            return encode(messages), items
        from modelmill.kb import rag

        # The lowest-ranked items leave the prompt until it fits with room for the answer.
        room = max_tokens or min(256, engine.max_context // 4)
        ids = encode(rag.build_messages(messages, items))
        while len(items) > 1 and len(ids) + room > engine.max_context:
            items = items[:-1]
            ids = encode(rag.build_messages(messages, items))
        return ids, items

    # a long prompt takes the tokenizer seconds: off the event loop, so other clients go on
    ids, items = await asyncio.to_thread(prompt_ids, items)
    params = _params(body, max_tokens, len(ids), engine, (body.top_logprobs or 0) if body.logprobs else None,
                     _json_schema(body.response_format), "messages",
                     "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    rid = _new_id("chatcmpl")
    started, first_at = await _start(s, engine, target, "chat", rid, [ids], params, body.n, t0)

    def choice(i, o):
        return {"index": i, "message": {"role": "assistant", "content": "".join(x.text for x in o)},
                "logprobs": {"content": _chat_logprobs(o, tok)} if body.logprobs else None,
                "finish_reason": o[-1].finish_reason if o else "stop"}

    def chunk(i, o):
        if not o.text and o.finish_reason is None and not (body.logprobs and o.logprobs):
            return None
        return {"index": i, "delta": {"content": o.text} if o.text else {},
                "logprobs": {"content": _chat_logprobs([o], tok)} if body.logprobs else None,
                "finish_reason": o.finish_reason}

    preamble = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(len(started))]
    finish = None if items is None else (lambda texts: s.answers.finish(texts, items))
    return await _respond(s, request, body, "chat", target, rid, ("chat.completion", "chat.completion.chunk"),
                          started, len(ids), t0, first_at, choice, chunk, preamble, finish)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    s = _serving(request)
    t0 = time.monotonic()
    if body.suffix:
        raise EngineError("suffix is not supported", param="suffix", code="unsupported_parameter")
    if body.best_of not in (None, body.n):
        raise EngineError("best_of must equal n (beam search is not supported)", param="best_of")
    from modelmill.apps.flows import flow_name

    if flow_name(body.model) is not None:
        raise EngineError(f"'{body.model}' is a workflow, which answers chat completions (/v1/chat/completions)",
                          param="model", code="unsupported_model")
    p = body.prompt
    first = p if isinstance(p, str) else p[0] if isinstance(p, list) and p and isinstance(p[0], str) else None
    target, engine = await _prepare(s, body.model, None if first is None else [{"role": "user", "content": first}])
    tok = engine.tokenizer
    texts: list[str | None]     # each prompt as sent, when it was text (what echo returns)
    if isinstance(p, str):
        texts = [p]
    elif p and all(isinstance(x, str) for x in p):
        texts = list(p)
    elif p and all(isinstance(x, int) for x in p):
        prompts, texts = [list(p)], [None]
    elif p and all(isinstance(x, list) for x in p):
        prompts = [list(x) for x in p]
        texts = [None] * len(prompts)
    else:
        raise EngineError("prompt must be a non-empty string, list of strings, or token ids", param="prompt")
    if texts[0] is not None:
        prompts = await asyncio.to_thread(lambda: [tok(x, add_special_tokens=True)["input_ids"] for x in texts])
    vocab = max(len(tok), getattr(engine, "vocab_size", 0))
    for i, ids in enumerate(prompts):
        if not ids:
            raise EngineError(f"prompt {i} is empty", param="prompt")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise EngineError(f"prompt {i} has token id {bad}, outside the vocabulary", param="prompt")
    longest = max(len(x) for x in prompts)
    # echo with logprobs returns the prompt's tokens with their logprobs too (the first has none: null),
    # as OpenAI's legacy API and vLLM do; evaluation harnesses score a continuation from them
    prompt_lp = body.echo and body.logprobs is not None
    if prompt_lp and not getattr(engine, "supports_prompt_logprobs", False):
        raise EngineError(f"echo with logprobs needs the logprobs of the prompt's tokens, which the {engine.name} "
                          "engine does not compute; send echo or logprobs, not both", param="echo",
                          code="unsupported_parameter")
    params = _params(body, body.max_tokens, longest, engine, body.logprobs,
                     _json_schema(body.response_format), "prompt",
                     prompt_logprobs=body.logprobs if prompt_lp else None)
    rid = _new_id("cmpl")
    started, first_at = await _start(s, engine, target, "completions", rid, prompts, params, body.n, t0)
    prompt_tokens = sum(len(x) for x in prompts)
    # the prompt as sent; token ids decoded without the tokenizer's own markers (<bos>)
    prompt_texts = ([t if t is not None else tok.decode(ids, skip_special_tokens=True)
                     for t, ids in zip(texts, prompts)] if body.echo else None)
    prompt_offsets = (await asyncio.to_thread(lambda: [_text_offsets(tok, t, ids, pt) for t, ids, pt
                                                        in zip(texts, prompts, prompt_texts)])
                      if prompt_lp else None)

    def prompt_logprobs(i: int) -> dict:
        """Choice i's prompt tokens in the legacy shape (echo with logprobs)."""
        p_i, first_out, _ = started[i]
        entries = list((first_out.prompt_logprobs if first_out is not None else None) or [])
        tokens, lps, tops = [], [], []
        for j, tid in enumerate(prompts[p_i]):
            e = entries[j] if j < len(entries) else None
            if e is None:
                tokens.append(tok.decode([tid]))
                lps.append(None)
                tops.append(None)
            else:
                tokens.append(e[1])
                lps.append(e[2])
                tops.append({t.token: t.logprob for t in e[3]} if body.logprobs else None)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                "text_offset": list(prompt_offsets[p_i])}

    def legacy_logprobs(outs: list[TokenOutput], offset0: int) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        pos = offset0
        for o in outs:
            for tid, text, lp, top in o.logprobs or []:
                tokens.append(text)
                lps.append(lp)
                tops.append({t.token: t.logprob for t in top} if body.logprobs else None)
                offsets.append(pos)
                pos += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    sent: dict[int, int] = {}   # characters streamed per choice (logprobs' text offsets)

    def choice(i, o):
        prefix = prompt_texts[started[i][0]] if prompt_texts else ""
        lp = legacy_logprobs(o, len(prefix)) if body.logprobs is not None else None
        if prompt_lp:
            lp = {k: v + lp[k] for k, v in prompt_logprobs(i).items()}
        return {"index": i, "text": prefix + "".join(x.text for x in o), "logprobs": lp,
                "finish_reason": o[-1].finish_reason if o else "stop"}

    def chunk(i, o):
        if not o.text and o.finish_reason is None and not (body.logprobs is not None and o.logprobs):
            return None
        lp = legacy_logprobs([o], sent.get(i, 0)) if body.logprobs is not None else None
        sent[i] = sent.get(i, 0) + len(o.text)
        return {"index": i, "text": o.text, "logprobs": lp, "finish_reason": o.finish_reason}

    preamble = []
    if prompt_texts:
        for i, (p_i, _, _) in enumerate(started):
            sent[i] = len(prompt_texts[p_i])
            preamble.append({"index": i, "text": prompt_texts[p_i],
                             "logprobs": prompt_logprobs(i) if prompt_lp else None, "finish_reason": None})
    return await _respond(s, request, body, "completions", target, rid, ("text_completion", "text_completion"),
                          started, prompt_tokens, t0, first_at, choice, chunk, preamble)


def _text_offsets(tok, text: str | None, ids: list[int], echoed: str) -> list[int]:
    """Where each prompt token starts in the echoed text: the tokenizer's own offsets for a text
    prompt, else (token ids) the running length of each token's text. Special tokens take no room."""
    if text is not None and getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [int(a) for a, _ in enc["offset_mapping"]]
    offsets, pos = [], 0
    for tid in ids:
        offsets.append(min(pos, len(echoed)))
        pos += len(tok.decode([tid], skip_special_tokens=True))
    return offsets


# -- workflows

async def _flow_chat(s: Serving, request: Request, body: ChatRequest, name: str, messages: list[dict], t0: float):
    """A chat completion answered by workflow ``name``: its answer node's text is the message. The
    response names the run (``flow``: name, run id, status, ms), so its trace can be fetched; a stream
    sends each node's end as an event with ``"choices": []`` (``flow_event``) before the answer.
    The request's sampling fields (max_tokens, temperature, stop, seed) do not apply: each llm node
    of the workflow has its own. ``inputs`` (extra body) gives the workflow's other inputs."""
    from modelmill.apps.flows import FlowFailed, chat_inputs, run_flow
    from modelmill.errors import ModelmillError, NotFoundError

    if body.n != 1:
        raise EngineError("a workflow gives one answer: n must be 1", param="n")
    for unsupported in ("logprobs", "tools", "response_format"):
        if getattr(body, unsupported):
            raise EngineError(f"'{unsupported}' does not apply to a workflow", param=unsupported,
                              code="unsupported_parameter")
    try:
        wf = await asyncio.to_thread(s.flows.flow, name)
    except NotFoundError as e:
        raise EngineError(f"The model '{body.model}' does not exist: {e.message}", status=404,
                          code="model_not_found", param="model") from None
    except ModelmillError as e:  # a stored workflow that no longer checks (a model removed since)
        raise EngineError(f"workflow '{name}' cannot run: {e}", status=409, code="flow_invalid",
                          param="model") from None
    try:
        inputs = chat_inputs(wf, messages, body.inputs)
    except ModelmillError as e:
        raise EngineError(str(e), param="inputs") from None
    rid = _new_id("chatcmpl")
    head = {"id": rid, "created": _now(), "model": body.model, "system_fingerprint": None}

    def summary(run) -> dict:
        return {"name": name, "run_id": run.id, "status": run.status, "ms": round(run.ms, 2)}

    def failed(e: FlowFailed) -> EngineError:
        return EngineError(str(e), status=424, code="flow_failed", param="model")

    def record(status: str, run=None):
        s.metrics.request("chat", body.model, None, status, time.monotonic() - t0,
                          run.usage()["prompt_tokens"] if run else 0, run.usage()["completion_tokens"] if run else 0)

    if not body.stream:
        try:
            run = await _until_disconnect(request, run_flow(s.flows, wf, inputs))
        except FlowFailed as e:
            record("424", e.run)
            raise failed(e) from None
        record("200", run)
        extra = {"citations": run.output["citations"]} if "citations" in run.output else {}
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": run.output["text"]},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": run.usage(), "flow": summary(run), **extra}

    base = {**head, "object": "chat.completion.chunk"}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}

    async def events():
        q: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(run_flow(s.flows, wf, inputs, on_event=q.put))
        task.add_done_callback(lambda _: q.put_nowait(None))
        status = "200"
        try:
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}], **extra})
            while (event := await q.get()) is not None:
                yield _sse({**base, "choices": [], **extra, "flow_event": {
                    k: event.get(k) for k in ("node", "type", "status", "ms", "error") if event.get(k) is not None}})
            try:
                run = task.result()
            except FlowFailed as e:
                status = "424"
                record(status, e.run)
                yield _sse(error_body(str(e), "invalid_request_error", "model", "flow_failed"))
                yield "data: [DONE]\n\n"
                return
            except Exception as e:  # noqa: BLE001 - a bug: said in the stream (its headers are sent), and logged
                log.exception("workflow %s failed", name)
                status = "500"
                record(status)
                yield _sse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
                yield "data: [DONE]\n\n"
                return
            record(status, run)
            yield _sse({**base, "choices": [{"index": 0, "delta": {"content": run.output["text"]}, "logprobs": None,
                                             "finish_reason": None}], **extra})
            top = {"citations": run.output["citations"]} if "citations" in run.output else {}
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                        **extra, "flow": summary(run), **top})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": run.usage()})
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client left: stop the run (its generations are aborted)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _bot_chat(s: Serving, request: Request, body: ChatRequest, name: str, messages: list[dict], t0: float):
    """A chat completion answered by dialogue bot ``name``: the last user message is the turn; the
    conversation (state carried across turns) is ``conversation_id`` (or ``metadata.conversation_id``),
    a new one when left out, and comes back in the response with the turn's acts (``bot``). The bot's
    modules have their own decoding settings; the request's sampling fields do not apply."""
    from modelmill.apps.bots import bot_turn, get_bot, usage_of
    from modelmill.errors import ModelmillError, NotFoundError

    if body.n != 1:
        raise EngineError("a bot gives one answer: n must be 1", param="n")
    for unsupported in ("logprobs", "tools", "response_format"):
        if getattr(body, unsupported):
            raise EngineError(f"'{unsupported}' does not apply to a bot", param=unsupported,
                              code="unsupported_parameter")
    try:
        bot = await asyncio.to_thread(get_bot, s.store, name)
    except NotFoundError as e:
        raise EngineError(f"The model '{body.model}' does not exist: {e.message}", status=404,
                          code="model_not_found", param="model") from None
    except ModelmillError as e:
        raise EngineError(f"bot '{name}' cannot run: {e}", status=409, code="bot_invalid", param="model") from None
    from modelmill.api.auth import require_model

    for m in bot.modules.values():
        require_model(request, m.model)
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users or not users[-1].strip():
        raise EngineError("a bot answers the last user message; there is none", param="messages")
    cid = body.conversation_id or (body.metadata or {}).get("conversation_id")
    try:
        r = await _until_disconnect(request, bot_turn(s.flows, bot, users[-1], cid))
    except NotFoundError as e:
        if e.field == "conversation_id":
            raise EngineError(str(e), status=404, code="conversation_not_found", param="conversation_id") from None
        raise EngineError(str(e), status=404, param=e.field or "model") from None  # a table removed since
    except ModelmillError as e:  # a model removed since the bot was published, a prompt too long
        from modelmill.api.errors import status_of

        raise EngineError(str(e), status=status_of(e), param=e.field or "model") from None
    usage = usage_of(r)
    s.metrics.request("chat", body.model, None, "200", time.monotonic() - t0, usage["prompt_tokens"],
                      usage["completion_tokens"])
    rid = _new_id("chatcmpl")
    head = {"id": rid, "created": _now(), "model": body.model, "system_fingerprint": None}
    summary = {"conversation_id": r["conversation_id"], "kind": r["kind"], "domain": r["domain"],
               "record": r["record"], "user_acts": r["user_acts"], "system_acts": r["system_acts"], "ms": r["ms"]}
    if not body.stream:
        return {**head, "object": "chat.completion", "conversation_id": r["conversation_id"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r["reply"]},
                             "logprobs": None, "finish_reason": "stop"}], "usage": usage, "bot": summary}
    base = {**head, "object": "chat.completion.chunk"}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}

    async def events():
        yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}], **extra})
        yield _sse({**base, "choices": [{"index": 0, "delta": {"content": r["reply"]}, "logprobs": None,
                                         "finish_reason": None}], **extra})
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                    **extra, "conversation_id": r["conversation_id"], "bot": summary})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- embeddings

@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    from modelmill.models.embedder import DEFAULT_NAME, Embedder, embedding_executor, encode_base64

    t0 = time.monotonic()
    if body.model != DEFAULT_NAME:
        raise EngineError(f"The model '{body.model}' does not exist or is not an embedding model; "
                          f"use '{DEFAULT_NAME}'", status=404, code="model_not_found", param="model")
    embedder = Embedder.default()
    inp = body.input
    if isinstance(inp, str):
        texts = [inp]
    elif inp and all(isinstance(x, str) for x in inp):
        texts = list(inp)
    elif isinstance(inp, list) and not inp:
        raise EngineError("input must not be empty", param="input")
    else:
        raise EngineError("token-id input is not supported; send strings", param="input",
                          code="unsupported_parameter")
    if len(texts) > 2048:
        raise EngineError(f"input has {len(texts)} items; at most 2048 per request", param="input")
    vectors, counts = await asyncio.get_running_loop().run_in_executor(embedding_executor(), embedder.encode,
                                                                       texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise EngineError(f"{DEFAULT_NAME} has {vectors.shape[1]} dimensions; 'dimensions' cannot change that",
                          param="dimensions", code="unsupported_parameter")
    data = [{"object": "embedding", "index": i,
             "embedding": encode_base64(v) if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    total = sum(counts)
    _serving(request).metrics.request("embeddings", DEFAULT_NAME, None, "200", time.monotonic() - t0, total, 0)
    return {"object": "list", "data": data, "model": DEFAULT_NAME,
            "usage": {"prompt_tokens": total, "total_tokens": total}}


def _per_choice_event(per_choice: list[dict]) -> dict:
    """Per-choice fields of a stream's last event: {"groundedness": [{"index": 0, ...}, ...]}."""
    out: dict = {}
    for i, fields in enumerate(per_choice):
        for key, value in fields.items():
            out.setdefault(key, []).append(None if value is None else {"index": i, **value})
    return out
