"""Workflows: stored, run node by node on the serving engines, each run kept with its trace.

    create_flow(store, "support", open("support.yaml").read(), source="support.yaml")   # checked, stored
    services = FlowServices.local(store)              # or the server's own (api/openai.py)
    run = await run_flow(services, load_flow(store, "support"), {"question": "Where is order 1042?"})
    run.output["text"], run.status, run.trace          # ok | flagged | failed; one entry per node

The file format is in :mod:`modelmill.apps.flow_spec`. Nodes whose inputs are ready run
together (two llm nodes of one base go into the same engine batch). A run's trace holds, per
node: status (ok, skipped, failed, not run), what it was given (rendered prompt, query, URL,
filter), its output, milliseconds and tokens. Runs are stored (``workflow_runs``), newest
:data:`KEEP_RUNS` per workflow, so the API and the web page show them afterwards.

Served as model id ``flow:NAME`` (``/v1/chat/completions``, streaming too) and as
``POST /api/apps/NAME/run``; ``modelmill apps flow run`` runs one in-process.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field

from modelmill.apps.flow_spec import Node, Workflow, _ids, load_workflow, render
from modelmill.errors import EngineError, InputError, ModelmillError, NotFoundError

KEEP_RUNS = 1000          # newest runs kept per workflow (up to PRUNE_EVERY more between prunes)
PRUNE_EVERY = 50
_SAVES: dict = {}         # workflow -> runs saved by this process
TRACE_TEXT = 20_000       # characters of one traced string
FLOW_PREFIX = "flow:"


class FlowFailed(ModelmillError):
    """A run that stopped at a failing node; the run (with its trace) is stored and named."""

    status = 424
    code = "flow_failed"

    def __init__(self, run: FlowRun, node: str, message: str):
        self.run = run
        self.node = node
        super().__init__(f"workflow '{run.app}' failed at node '{node}': {message} (run {run.id})",
                         field=f"nodes.{node}", fix=f"see the trace: `modelmill apps flow trace {run.id}`")
        # the REST error body's details: which run and node, so a client fetches the trace without parsing
        self.details = [{"run_id": run.id, "node": node, "field": f"nodes.{node}", "message": message,
                         "fix": self.fix}]


# ----------------------------------------------------------------------------- what nodes call

@dataclass
class FlowServices:
    """The engines and stores a run uses: the server's own, or a process's (``local``)."""

    store: object
    resolver: object           # apps.resolve.Resolver
    router: object             # serve.router.Router
    answers: object            # apps.rag.KnowledgeAnswers
    http_allow: str | None = None  # None: MODELMILL_HTTP_ALLOW
    own_router: bool = False
    _flows: dict = field(default_factory=dict)

    @classmethod
    def local(cls, store, config=None) -> FlowServices:
        from modelmill.apps.rag import KnowledgeAnswers
        from modelmill.apps.resolve import Resolver
        from modelmill.serve.router import Router, ServeConfig

        router = Router(store, config or ServeConfig())
        return cls(store, Resolver(store, router), router, KnowledgeAnswers(store), own_router=True)

    async def close(self) -> None:
        if self.own_router:
            await self.router.shutdown()

    def flow(self, name: str) -> Workflow:
        """The stored workflow ``name``, checked once per version."""
        from modelmill.apps import Apps

        row = Apps(self.store).find(name)
        if row is None or row.kind != "workflow":
            raise NotFoundError(f"no workflow named '{name}'", field="model",
                                fix="`modelmill apps list` shows the workflows (model id flow:NAME)")
        cached = self._flows.get(name)
        if cached is None or cached[0] != row.updated_at:
            cached = (row.updated_at, load_workflow(row.spec["yaml"], row.spec.get("source"), self.store, row.name))
            self._flows[name] = cached
        return cached[1]

    async def complete(self, model: str, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, stop=None, schema: dict | None = None) -> dict:
        """One chat completion on the serving engines: {"text", "model", "prompt_tokens", "completion_tokens"}."""
        from modelmill.serve.engine import GenerationRequest, SamplingParams

        target, spec = await self.resolver.resolve_request(model, messages)
        engine = await self.router.engine_for(target, spec)
        msgs = list(messages)
        if target.system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": target.system_prompt})
        tok = engine.tokenizer

        def encode():
            try:
                text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            except Exception:  # noqa: BLE001 - a template without a system role: fold it into the first user turn
                if msgs[0]["role"] != "system" or len(msgs) < 2:
                    raise
                folded = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}, *msgs[2:]]
                text = tok.apply_chat_template(folded, add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]

        ids = await asyncio.to_thread(encode)
        room = engine.max_context - len(ids)
        if room < 1:
            raise InputError(f"the prompt is {len(ids)} tokens; model '{model}' takes {engine.max_context}",
                             field="prompt", fix="shorten the prompt or retrieve fewer items")
        params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p, seed=seed,
                                stop=[stop] if isinstance(stop, str) else list(stop or []),
                                json_schema=schema)
        text, completion = "", 0
        stream = engine.generate(GenerationRequest(f"flow-{uuid.uuid4().hex[:16]}", ids, params, target.adapter))
        try:
            async for o in stream:
                if o.finish_reason == "error":
                    raise o.error or EngineError("generation failed", status=500)
                text += o.text
                completion = o.completion_tokens
        finally:
            await stream.aclose()
        return {"text": text, "model": (target.route or {}).get("model", model), "prompt_tokens": len(ids),
                "completion_tokens": completion}


# ----------------------------------------------------------------------------- a run

@dataclass
class FlowRun:
    id: str
    app: str
    inputs: dict
    status: str = "running"        # ok | flagged | failed
    output: dict | None = None
    trace: list = field(default_factory=list)
    error: str | None = None
    ms: float = 0.0
    created_at: object = None

    def usage(self) -> dict:
        return usage_of(self.trace)

    def as_json(self) -> dict:
        return {"id": self.id, "app": self.app, "status": self.status, "inputs": self.inputs, "output": self.output,
                "error": self.error, "ms": round(self.ms, 2), "usage": self.usage(),
                "created_at": self.created_at.isoformat() if self.created_at else None, "trace": self.trace}


def usage_of(trace: list) -> dict:
    """Tokens of every model call of a run."""
    p = sum((t.get("tokens") or {}).get("prompt", 0) for t in trace)
    c = sum((t.get("tokens") or {}).get("completion", 0) for t in trace)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _clip(value):
    """A value as the trace keeps it: JSON-able, long strings cut."""
    if isinstance(value, str):
        return value if len(value) <= TRACE_TEXT else value[:TRACE_TEXT] + f"… [{len(value) - TRACE_TEXT} more]"
    if isinstance(value, dict):
        return {str(k): _clip(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clip(v) for v in value]
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return str(value)


def check_inputs(wf: Workflow, given: dict) -> dict:
    """The run's inputs: given values, defaults filled in; InputError for a missing or unknown one."""
    given = dict(given or {})
    unknown = [k for k in given if k not in wf.inputs and k != "messages"]
    if unknown:
        raise InputError(f"workflow '{wf.name}' has no input '{unknown[0]}'", field="inputs",
                         fix=f"its inputs: {', '.join(wf.inputs) or 'none'}")
    out = {}
    for k, spec in wf.inputs.items():
        if k in given and given[k] is not None:
            out[k] = given[k]
        elif spec.get("required"):
            raise InputError(f"workflow '{wf.name}' needs input '{k}'", field="inputs",
                             fix=f"give it: --input {k}=... (REST: {{\"inputs\": {{\"{k}\": ...}}}})")
        else:
            out[k] = spec.get("default")
    messages = given.get("messages") or []
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise InputError("'messages' is a list of {\"role\": ..., \"content\": \"...\"} objects", field="inputs",
                         fix='e.g. [{"role": "user", "content": "Where is my order?"}]')
    out["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    return out


def chat_inputs(wf: Workflow, messages: list[dict], given: dict | None = None) -> dict:
    """The inputs of a run that answers a chat (``/v1/chat/completions`` with ``flow:NAME``, or a
    workflow scored by ``modelmill eval``): the inputs given, ``question`` (where the workflow has
    one and none was given) the conversation's question, and the messages; checked."""
    from modelmill.kb.rag import question_of

    inputs = dict(given or {})
    if "question" in wf.inputs and "question" not in inputs:
        inputs["question"] = question_of(messages)
    inputs["messages"] = messages
    check_inputs(wf, inputs)
    return inputs


async def run_flow(services: FlowServices, wf: Workflow, inputs: dict, *, on_event=None,
                   store_run: bool = True) -> FlowRun:
    """Run ``wf`` on ``inputs``; ``await on_event(trace_entry)`` after each node. Raises
    :class:`FlowFailed` (the run stored) when a node fails; returns the run otherwise."""
    import graphlib

    values = check_inputs(wf, inputs)
    from modelmill.store.tables import utcnow

    run = FlowRun(f"run-{uuid.uuid4().hex[:20]}", wf.name, _clip(values), created_at=utcnow())
    t_run = time.perf_counter()
    ctx = {**values, "inputs": {k: v for k, v in values.items() if k != "messages"}}
    private: dict = {}     # per node: what later nodes need but templates do not (retrieved items, messages)
    skipped: set[str] = set()
    entries: dict[str, dict] = {}
    sorter = graphlib.TopologicalSorter({k: n.deps for k, n in wf.nodes.items()})
    sorter.prepare()
    flagged = False
    failure: tuple[str, str] | None = None

    async def run_node(node: Node) -> tuple[str, dict | None, dict]:
        t0 = time.perf_counter()
        entry = {"node": node.id, "type": node.type, "status": "ok", "started_ms": round((t0 - t_run) * 1000, 2)}
        try:
            out, info = await NODE_RUNNERS[node.type](services, wf, node, ctx, private)
            entry.update(_clip(info))
            entry["output"] = _clip(out)
            return node.id, out, entry
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded in the trace, the run fails with it
            entry["status"] = "failed"
            entry["error"] = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            if not isinstance(e, (ModelmillError, EngineError)):
                import logging

                logging.getLogger("modelmill.apps").exception("workflow node %s failed", node.id)
            return node.id, None, entry
        finally:
            entry["ms"] = round((time.perf_counter() - t0) * 1000, 2)

    def skip(node: Node) -> bool:
        """Skipped: a case of a switch that chose another, every upstream node skipped, a check of a
        skipped draft. A skipped switch skips all its cases."""
        ups = node.deps
        if not (node.id in skipped or (ups and all(d in skipped for d in ups))
                or (node.type == "check" and _ids(node.fields["draft"])[0] in skipped)):
            return False
        skipped.add(node.id)
        if node.type == "switch":
            for ids in [*node.fields["cases"].values(), node.fields["default"]]:
                skipped.update(_ids(ids))
        return True

    async def settle(done) -> None:
        nonlocal failure, flagged
        for task in done:
            nid, out, entry = task.result()
            entries[nid] = entry
            if entry["status"] == "failed":
                failure = failure or (nid, entry["error"])
                ctx[nid] = None
            else:
                ctx[nid] = out
                node = wf.nodes[nid]
                if node.type == "switch":
                    chosen = set(_ids(out["nodes"]))
                    for ids in [*node.fields["cases"].values(), node.fields["default"]]:
                        skipped.update(x for x in _ids(ids) if x not in chosen)
                if node.type == "check" and not out["passed"]:
                    flagged = True
                    if node.fields["on_fail"] == "fail":
                        entry["status"] = "failed"
                        entry["error"] = f"the draft did not pass its check (score {out['score']})"
                        failure = failure or (nid, entry["error"])
            if on_event:
                await on_event(entry)
            sorter.done(nid)

    pending: set = set()
    started: dict = {}  # task -> node id
    try:
        while sorter.is_active() and failure is None:
            for nid in sorter.get_ready():
                node = wf.nodes[nid]
                if skip(node):
                    ctx[nid] = None
                    entries[nid] = {"node": nid, "type": node.type, "status": "skipped", "ms": 0.0}
                    if on_event:
                        await on_event(entries[nid])
                    sorter.done(nid)
                    continue
                task = asyncio.ensure_future(run_node(node))
                started[task] = nid
                pending.add(task)
            if not pending:
                continue
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await settle(done)
    finally:  # a node failed, or the run was cancelled (the client left): stop what still runs
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            for t in pending:
                nid = started[t]
                entries.setdefault(nid, {"node": nid, "type": wf.nodes[nid].type, "status": "cancelled", "ms": 0.0})
    run.trace = [entries.get(nid) or {"node": nid, "type": n.type, "status": "not run", "ms": 0.0}
                 for nid, n in wf.nodes.items()]
    run.ms = (time.perf_counter() - t_run) * 1000
    if failure is not None:
        run.status, run.error = "failed", f"node '{failure[0]}': {failure[1]}"
    else:
        run.status = "flagged" if flagged else "ok"
        run.output = _clip(ctx.get(wf.answer) or {"text": ""})
    if store_run:
        await asyncio.to_thread(FlowRuns(services.store).save, run)
    if failure is not None:
        raise FlowFailed(run, failure[0], failure[1])
    return run


# ----------------------------------------------------------------------------- the nodes

async def _r(value, ctx: dict):
    """A node's template rendered off the event loop (a heavy template must not stall other requests);
    plain values need no thread."""
    from modelmill.apps.flow_spec import _Tpl

    def has_template(v) -> bool:
        if isinstance(v, _Tpl):
            return True
        if isinstance(v, dict):
            return any(has_template(x) for x in v.values())
        if isinstance(v, list):
            return any(has_template(x) for x in v)
        return False

    return await asyncio.to_thread(render, value, ctx) if has_template(value) else value


def _tokens(r: dict) -> dict:
    return {"prompt": r["prompt_tokens"], "completion": r["completion_tokens"]}


def _parse_json(text: str):
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").partition("\n")[2] if "\n" in text else text.strip("`")
    try:
        return json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(text[start:end + 1])
            except ValueError:
                return None
    return None


async def _llm(services, wf, node, ctx, private):
    f = node.fields
    prompt = await _r(node.templates["prompt"], ctx)
    messages = []
    if f.get("system") is not None:
        messages.append({"role": "system", "content": await _r(node.templates["system"], ctx)})
    if f.get("history"):
        messages += [m for m in ctx.get("messages") or [] if m.get("role") in ("user", "assistant")][:-1]
    messages.append({"role": "user", "content": prompt})
    kw = {"max_tokens": f["max_tokens"], "temperature": f["temperature"], "top_p": f["top_p"], "seed": f["seed"],
          "stop": f["stop"], "schema": f["schema"]}
    r = await services.complete(f["model"], messages, **kw)
    private[node.id] = {"messages": messages, "kw": kw}
    out = {"text": r["text"].strip(), "model": r["model"]}
    if f["schema"] is not None:
        out["json"] = _parse_json(r["text"])
    return out, {"inputs": {"model": f["model"], "messages": messages}, "tokens": _tokens(r)}


async def _extract(services, wf, node, ctx, private):
    f = node.fields
    schema = f["schema"]
    text = await _r(node.templates["text"], ctx)
    fields = ", ".join(f"{k} ({v.get('description') or v.get('type', 'string')})" if isinstance(v, dict) else k
                       for k, v in schema["properties"].items())
    instruction = (await _r(node.templates["instruction"], ctx) if f.get("instruction") is not None else
                   f"Extract these fields from the text: {fields}. Answer with one JSON object; use null for a field "
                   "the text does not give.")
    messages = [{"role": "user", "content": f"{instruction}\n\nText: {text}"}]
    r = await services.complete(f["model"], messages, max_tokens=f["max_tokens"], temperature=0.0, schema=schema)
    parsed = _parse_json(r["text"])
    out = {k: (parsed.get(k) if isinstance(parsed, dict) else None) for k in schema["properties"]}
    out["text"] = r["text"].strip()
    return out, {"inputs": {"model": f["model"], "messages": messages}, "tokens": _tokens(r),
                 **({} if isinstance(parsed, dict) else {"warning": "the model's answer was not a JSON object"})}


async def _retrieve(services, wf, node, ctx, private):
    from modelmill.kb import rag

    f = node.fields
    query = await _r(node.templates["query"], ctx)
    names = [str(x) for x in _ids(f["knowledge"])]
    items = (await services.answers.retrieve(names, [{"role": "user", "content": query}], f["k"], f["mode"]))[:f["k"]]
    # numbered from the node's place among the answer's citations (flow_spec._number_citations), so the
    # [n] the model sees is the [n] of the answer's citations
    numbered = list(enumerate(items, node.cite_from))
    private[node.id] = {"items": items, "numbered": numbered}
    listed = [{"index": n, "kb": kb, "doc": hit.doc, "section": hit.section, "text": hit.text,
               "score": round(hit.score, 4)} for n, (kb, hit) in numbered]
    text = "\n\n".join(f"[{n}] ({rag.item_label(kb, hit)}) {' '.join(hit.text.split())}"
                         for n, (kb, hit) in numbered)
    return {"text": text, "items": listed, "count": len(items)}, {"inputs": {"query": query, "knowledge": names}}


async def _lookup(services, wf, node, ctx, private):
    from modelmill.apps.tables import LookupTables

    f = node.fields
    where = await _r(node.templates.get("where", {}), ctx)
    from modelmill.apps.tables import conditions

    if f["if_empty"] == "no_rows" and len(conditions(where)) < sum(
            len(v) if isinstance(v, dict) else 1 for v in where.values()):
        # a value rendered empty (the customer gave no order number): find nothing, rather than every row
        return ({"rows": [], "first": None, "count": 0, "text": ""},
                {"inputs": {"table": f["table"], "where": where}, "note": "a filter value was empty: no rows"})
    rows, total = await asyncio.to_thread(LookupTables(services.store).lookup, str(f["table"]), where, f["limit"])
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    return ({"rows": rows, "first": rows[0] if rows else None, "count": total, "text": text},
            {"inputs": {"table": f["table"], "where": where}})


async def _http(services, wf, node, ctx, private):
    from modelmill.apps.ssrf import fetch, is_secret_header

    f = node.fields
    url = (await _r(node.templates["url"], ctx)).strip()
    headers = {str(k): str(v) for k, v in (await _r(node.templates.get("headers", {}), ctx)).items()}
    body = None
    if f.get("json") is not None:
        body = json.dumps(await _r(node.templates["json"], ctx), ensure_ascii=False).encode()
        headers.setdefault("Content-Type", "application/json")
    elif f.get("body") is not None:
        body = str(await _r(node.templates["body"], ctx)).encode()
    resp = await fetch(str(f["method"]), url, headers=headers, body=body, timeout=float(f["timeout"]),
                       max_bytes=int(f["max_bytes"]), allow=services.http_allow)
    shown = {k: ("***" if is_secret_header(k) else v) for k, v in headers.items()}
    return ({"status": resp.status, "text": resp.text, "json": resp.json, "url": resp.url},
            {"inputs": {"method": str(f["method"]).upper(), "url": url, "headers": shown, "bytes": resp.bytes}})


def _norm(s) -> str:
    return " ".join(str(s).casefold().replace("_", " ").split()).strip(" .,:;!?'\"`()[]{}。，：；！？")


def _names(text: str, label: str) -> bool:
    """Whether ``text`` names ``label``: as a whole word, or anywhere for a label in CJK script."""
    from modelmill.text import has_cjk

    if has_cjk(label):
        return label in text
    return re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text) is not None


async def _switch(services, wf, node, ctx, private):
    value = await _r(node.templates["value"], ctx)
    cases = node.fields["cases"]
    v = _norm(value)
    chosen = next((label for label in cases if _norm(label) == v), None)
    if chosen is None:  # a model's longer answer ("The category is refund."): the one label it names
        named = [label for label in cases if _norm(label) and _names(v, _norm(label))]
        chosen = named[0] if len(named) == 1 else None
    nodes = _ids(cases[chosen]) if chosen is not None else _ids(node.fields["default"])
    return ({"value": value, "case": chosen if chosen is not None else "default", "nodes": nodes,
             "text": str(chosen if chosen is not None else "default")}, {"inputs": {"value": value}})


def _source_items(ctx, private, sources: list[str]) -> list:
    from modelmill.kb.base import Hit

    items = []
    for s in sources:
        if s in private and "items" in private[s]:
            items += private[s]["items"]
        elif ctx.get(s):
            text = str(ctx[s].get("text", ""))
            items.append((s, Hit(id=s, doc=s, title=s, section="", page=None, start=0, end=len(text), text=text,
                                 score=0.0)))
    return items


async def _check(services, wf, node, ctx, private):
    from modelmill.kb import rag
    from modelmill.models.embedder import embedding_executor

    f = node.fields
    draft_id = _ids(f["draft"])[0]
    items = _source_items(ctx, private, [str(s) for s in _ids(f["sources"])])
    attempts, tokens = [], {"prompt": 0, "completion": 0}

    async def judge(text: str) -> tuple[bool, float | None, list[str]]:
        if f["method"] == "llm":
            sources = "\n\n".join(f"[{n}] {hit.text}" for n, (_, hit) in enumerate(items, 1)) or "(none)"
            r = await services.complete(f["model"], [{"role": "user", "content": (
                f"Sources:\n{sources}\n\nAnswer:\n{text}\n\nIs every claim of the answer supported by the sources? "
                "Reply with one word: yes or no.")}], max_tokens=3, temperature=0.0)
            tokens["prompt"] += r["prompt_tokens"]
            tokens["completion"] += r["completion_tokens"]
            ok = r["text"].strip().lower().startswith("yes")
            return ok, 1.0 if ok else 0.0, []
        g = await asyncio.get_running_loop().run_in_executor(
            embedding_executor(), lambda: rag.groundedness(text, items, services.answers.embedder()))
        score = g["score"]
        bad = [s["text"] for s in g["sentences"] if not s["supported"]]
        return score is not None and score >= f["min_score"], score, bad

    draft = ctx.get(draft_id) or {}
    text = str(draft.get("text", ""))
    for attempt in range(int(f["retries"]) + 1):
        ok, score, bad = await judge(text)
        attempts.append({"text": text, "passed": ok, "score": score, "unsupported": bad})
        if ok or attempt == int(f["retries"]) or draft_id not in private:
            break
        # ask the drafting model again, told what was not supported
        p = private[draft_id]
        feedback = ("These statements of your answer are not supported by the sources: " + "; ".join(bad[:5])
                    if bad else "Your answer is not supported by the sources.")
        messages = [*p["messages"], {"role": "assistant", "content": text},
                    {"role": "user", "content": feedback + " Answer again, using only what the sources say."}]
        r = await services.complete(wf.nodes[draft_id].fields["model"], messages, **p["kw"])
        tokens["prompt"] += r["prompt_tokens"]
        tokens["completion"] += r["completion_tokens"]
        text = r["text"].strip()
        ctx[draft_id] = {**draft, "text": text}  # the nodes that read the draft run after this check
        if "json" in draft:
            ctx[draft_id]["json"] = _parse_json(text)
    last = attempts[-1]
    return ({"passed": last["passed"], "score": last["score"], "attempts": len(attempts), "text": last["text"],
             "flagged": not last["passed"], "unsupported": last["unsupported"]},
            {"inputs": {"draft": draft_id, "sources": len(items), "method": f["method"]}, "tokens": tokens,
             "attempts": attempts})


async def _answer(services, wf, node, ctx, private):
    from modelmill.kb import rag

    text = str(await _r(node.templates["text"], ctx)).strip()
    out: dict = {"text": text}
    cites = [str(c) for c in dict.fromkeys(_ids(node.fields.get("citations")))]
    if cites:
        # each item keeps the number its retrieve node showed it with (the ranges follow this list's order)
        numbered = [p for c in cites for p in (private.get(c) or {}).get("numbered", [])]
        out["citations"] = rag.citations(text, [it for _, it in numbered], [n for n, _ in numbered])
    return out, {}


NODE_RUNNERS = {"llm": _llm, "extract": _extract, "retrieve": _retrieve, "lookup": _lookup, "http": _http,
                "switch": _switch, "check": _check, "answer": _answer}


# ----------------------------------------------------------------------------- stored workflows and runs

def create_flow(store, name: str, text: str, source: str | None = None, *, replace: bool = False):
    """Check a workflow file against the store and publish it as ``flow:NAME`` (``replace``: a new version
    of an existing workflow; its runs stay). Nothing is stored when the file has a problem."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.apps import publish_app
    from modelmill.names import check_name

    check_name(name, "NAME")
    wf = load_workflow(text, source, store, name)
    spec = {"yaml": text, "source": source, "description": wf.description, "inputs": wf.inputs,
            "nodes": wf.outline(), "answer": wf.answer}
    base = ""
    for m in wf.models():
        try:
            base = AdapterRegistry(store).resolve_ref(m)[0].name
            break
        except ModelmillError:
            continue
    return publish_app(store, name, "workflow", spec, base, replace=replace)


def load_flow(store, name: str) -> Workflow:
    from modelmill.apps import Apps

    row = Apps(store).get(name)
    if row.kind != "workflow":
        raise InputError(f"app '{name}' is a {row.kind}, not a workflow", field="NAME")
    return load_workflow(row.spec["yaml"], row.spec.get("source"), store, row.name)


def flow_name(model_id: str) -> str | None:
    """NAME of a ``flow:NAME`` model id (None for any other id)."""
    return model_id[len(FLOW_PREFIX):] if isinstance(model_id, str) and model_id.startswith(FLOW_PREFIX) else None


class FlowRuns:
    def __init__(self, store):
        self.store = store

    def save(self, run: FlowRun) -> None:
        from sqlalchemy import delete, select

        from modelmill.store.tables import WorkflowRun

        with self.store.session() as s:
            s.add(WorkflowRun(id=run.id, app=run.app, status=run.status, inputs=run.inputs, output=run.output,
                              trace=run.trace, error=run.error, ms=run.ms, created_at=run.created_at))
            n = _SAVES[run.app] = _SAVES.get(run.app, -1) + 1
            if n % PRUNE_EVERY == 0:  # the oldest runs past KEEP_RUNS go now and then (a prune costs a scan)
                old = select(WorkflowRun.id).where(WorkflowRun.app == run.app).order_by(
                    WorkflowRun.created_at.desc()).offset(KEEP_RUNS)
                s.execute(delete(WorkflowRun).where(WorkflowRun.id.in_(old)))

    def list(self, app: str | None = None, limit: int = 50) -> list:
        from sqlalchemy import select

        from modelmill.store.tables import WorkflowRun

        q = select(WorkflowRun).order_by(WorkflowRun.created_at.desc()).limit(limit)
        if app is not None:
            q = q.where(WorkflowRun.app == app)
        with self.store.session() as s:
            return list(s.scalars(q))

    def get(self, run_id: str):
        from modelmill.store.tables import WorkflowRun

        with self.store.session() as s:
            row = s.get(WorkflowRun, run_id)
        if row is None:
            raise NotFoundError(f"no workflow run '{run_id}'", field="RUN",
                                fix="`modelmill apps flow runs NAME` lists a workflow's runs")
        return row


def run_json(row) -> dict:
    """A stored run, in the shape a run answers with (FlowRun.as_json)."""
    return {"id": row.id, "app": row.app, "status": row.status, "inputs": row.inputs, "output": row.output,
            "error": row.error, "ms": round(row.ms, 2), "usage": usage_of(row.trace or []),
            "created_at": row.created_at.isoformat() if row.created_at else None, "trace": row.trace}
